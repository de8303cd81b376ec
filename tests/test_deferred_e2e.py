"""Deferred export through the real path (venv, sandbox, host rebuild): zoo models
fx cannot trace load with the plain call and match torch.hub.load(source="local")
at several batch sizes and input sizes, in eval and train mode (issue 11)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import torch

import safehub
from conftest import close, outputs_of, torch_hub_load_local
from safehub._deferred import MAX_GRAPHS, DeferredModule
from safehub._errors import ExportError

pytestmark = pytest.mark.slow

ZOO = Path(__file__).resolve().parent / "zoo"

# entrypoint -> inputs(batch, size); sizes change non-batch dims where the model allows it.
CASES = {
    "size_branch": lambda b, s: (torch.randn(b, 3, s, s),),
    "len_of_tensor": lambda b, s: (torch.randn(b, 6),),
    "iter_proxy": lambda b, s: (torch.randn(b, 6),),
    "script_helper": lambda b, s: (torch.randn(b, 5),),
    "scalar_arg": lambda b, s: (torch.randn(b, 4), s // 4),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_fx_failures_load_with_the_plain_call(name: str) -> None:
    ours = safehub.load(str(ZOO), name, source="local", verbose=False)
    assert isinstance(ours, DeferredModule)
    assert ours.safehub_info.summary["modules"]["m0"]["mode"] == "deferred"
    ref = torch_hub_load_local(ZOO, name)
    assert ours.training == ref.training
    assert ours.state_dict().keys() == ref.state_dict().keys()
    make = CASES[name]
    for batch, size in ((2, 16), (5, 16), (3, 8)):
        x = make(batch, size)
        with torch.no_grad():
            assert close(outputs_of(ref, x, train=False), outputs_of(ours, x, train=False)), (name, batch, size)
    x = make(4, 16)
    y_ref = outputs_of(ref, x, train=True, seed=3)
    y_ours = outputs_of(ours, x, train=True, seed=3)
    assert close(y_ref, y_ours), name
    y_ref.square().sum().backward()
    y_ours.square().sum().backward()
    for (k, p), (k2, q) in zip(ref.named_parameters(), ours.named_parameters()):
        assert k == k2 and q.grad is not None
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=f"{name}: gradient of {k}")
    # BatchNorm running statistics moved in our module as in torch.hub's.
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[k], v, rtol=1e-5, atol=1e-6, msg=f"{name}: {k} after train step")
    graphs = ours.safehub_graphs
    assert graphs and all(g["seconds"] > 0 for g in graphs)
    assert ours.safehub_info.summary["modules"]["m0"]["exports"] == graphs
    assert any(g["training"] for g in graphs) and any(not g["training"] for g in graphs)


def test_first_call_is_thread_safe_and_exports_once() -> None:
    ours = safehub.load(str(ZOO), "len_of_tensor", source="local", verbose=False).eval()
    x = torch.randn(3, 6)
    results: list = []
    threads = [threading.Thread(target=lambda: results.append(ours(x))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4 and all(torch.equal(r, results[0]) for r in results)
    assert len(ours.safehub_graphs) == 1


def test_graph_cache_has_a_cap() -> None:
    ours = safehub.load(str(ZOO), "scalar_arg", source="local", verbose=False).eval()
    x = torch.randn(2, 4)
    for steps in range(MAX_GRAPHS):  # an int argument is part of the signature
        ours(x, steps)
    assert len(ours.safehub_graphs) == MAX_GRAPHS
    ours(x, 3)  # cached: no new export
    with pytest.raises(ExportError, match=f"{MAX_GRAPHS} call signatures"):
        ours(x, MAX_GRAPHS + 1)


def test_gan_wrapper_comes_back_as_a_namespace_through_the_sandbox() -> None:
    from safehub._namespace import SafehubNamespace

    ns = safehub.load(str(ZOO), "gan", source="local", verbose=False)
    ref = torch_hub_load_local(ZOO, "gan")
    assert isinstance(ns, SafehubNamespace)
    assert (ns.image_size, ns.name, ns.scale, ns.flags) == (ref.image_size, ref.name, ref.scale, ref.flags)
    assert ns.netG.safehub_info.summary["root"] == "object"
    z = torch.randn(3, 4)
    assert close(ns.netG(z), ref.netG(z))
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():  # netD is fx-untraceable: exported at this first call
        assert close(outputs_of(ref.netD, (x,), train=False), outputs_of(ns.netD, (x,), train=False))
    with pytest.raises(AttributeError, match="methods are code"):
        ns.generate
