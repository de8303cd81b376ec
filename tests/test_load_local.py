"""End to end through the real path: real uv venv, real sandbox, real runner, and the
host rebuilding from data only. The reference is torch.hub.load(source="local") on the
same repo and weights."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

import safehub
from conftest import DEMO, REPOS, ROOT, torch_hub_load_local

# Runs real sandboxes (or a torch subprocess per case): the slow tier.
pytestmark = pytest.mark.slow

SPINE = REPOS / "spine"

CASES = [
    # (repo, entrypoint, kwargs, input factory)
    (SPINE, "residual_cnn", {}, lambda: torch.randn(4, 3, 16, 16)),
    (SPINE, "transformer_block", {}, lambda: torch.randn(3, 7, 16)),
    (SPINE, "functional_net", {}, lambda: torch.randn(5, 8)),
    (DEMO, "tinynet", {}, lambda: torch.randn(3, 3, 32, 32)),  # non-torch dependency (PyYAML)
]


def _ids(case):
    return f"{case[0].name}:{case[1]}"


@pytest.fixture(scope="module")
def loaded():
    """Load every case once through safehub (the expensive part) and keep both models."""
    out = {}
    for repo, entry, kwargs, _ in CASES:
        ours = safehub.load(str(repo), entry, source="local", **kwargs)
        ref = torch_hub_load_local(repo, entry, **kwargs)
        out[(repo, entry)] = (ours, ref)
    return out


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_outputs_match_in_eval_and_train_mode(case, loaded):
    repo, entry, _, make_input = case
    ours, ref = loaded[(repo, entry)]
    assert isinstance(ours, torch.nn.Module)
    assert not isinstance(ours, type(ref)), "the host must not hold the repo's own class"
    assert ours.training == ref.training, "the model comes back in the mode it was in"
    torch.manual_seed(0)
    x = make_input()
    ours.eval(), ref.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x))
    # Train mode: dropout is p=0 or absent in these fixtures except tinynet; fork the RNG
    # identically so dropout masks match too.
    ours.train(), ref.train()
    with torch.random.fork_rng():
        torch.manual_seed(123)
        y_ref = ref(x)
    with torch.random.fork_rng():
        torch.manual_seed(123)
        y_ours = ours(x)
    torch.testing.assert_close(y_ours, y_ref)
    ours.eval(), ref.eval()


@pytest.mark.parametrize("case", CASES, ids=_ids)
def test_gradients_flow_and_match(case, loaded):
    repo, entry, _, make_input = case
    ours, ref = loaded[(repo, entry)]
    ours.eval(), ref.eval()
    torch.manual_seed(0)
    x = make_input()
    ours.zero_grad(), ref.zero_grad()
    ours(x).square().sum().backward()
    ref(x).square().sum().backward()
    ref_grads = {n: p.grad for n, p in ref.named_parameters()}
    our_grads = {n: p.grad for n, p in ours.named_parameters()}
    assert set(our_grads) == set(ref_grads)
    for name, grad in ref_grads.items():
        assert our_grads[name] is not None, f"no gradient reached {name}"
        torch.testing.assert_close(our_grads[name], grad, msg=f"gradient of {name}")


def test_state_dict_matches_reference(loaded):
    ours, ref = loaded[(DEMO, "tinynet")]
    ref_sd, our_sd = ref.state_dict(), ours.state_dict()
    assert set(our_sd) == set(ref_sd)
    for k, v in ref_sd.items():
        assert our_sd[k].dtype == v.dtype and torch.equal(our_sd[k], v), k
    assert {n for n, p in ours.named_parameters() if p.requires_grad} == {
        n for n, p in ref.named_parameters() if p.requires_grad
    }


def test_leaf_replacement_and_finetuning():
    model = safehub.load(str(SPINE), "residual_cnn", source="local", verbose=False)
    model.fc = torch.nn.Linear(8, 3)
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 3)
    model.train()
    running_before = model.bn_in.running_mean.clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = model(torch.randn(4, 3, 16, 16)).sum()
    loss.backward()
    opt.step()
    assert not torch.equal(model.bn_in.running_mean, running_before), "BatchNorm stats update in train mode"
    model.eval()
    assert model(torch.randn(2, 3, 16, 16)).shape == (2, 3)


def test_load_records_backend_limits_and_history(loaded, safehub_home):
    ours, _ = loaded[(DEMO, "tinynet")]
    info = ours.safehub_info
    assert info.entrypoint == "tinynet" and info.source == "local"
    assert info.backend in {"bwrap", "landlock", "process"}
    assert info.limits["timeout_s"] > 0
    # The timing breakdown: the host's parts and the runner's own, from a real sandbox run.
    assert {"host_imports", "host_import_torch", "fetch_and_static_checks", "env", "sandbox", "validation", "weights_and_build",
            "runner_import_torch", "runner_hubconf", "runner_entrypoint", "runner_export", "sandbox_overhead",
            "total"} <= set(info.timings)
    assert info.timings["total"] >= info.timings["sandbox"] >= info.timings["runner_export"] >= 0
    history = [json.loads(line) for line in (safehub_home / "history.jsonl").read_text().splitlines()]
    assert any(h["entrypoint"] == "tinynet" and h["backend"] == info.backend for h in history)


def test_kwargs_reach_the_entrypoint():
    model = safehub.load(str(DEMO), "tinynet", source="local", verbose=False, num_classes=3)
    assert model.head.out_features == 3
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)


def test_missing_entrypoint_is_a_runtime_error():
    with pytest.raises(safehub.EntrypointNotFoundError) as info:
        safehub.load(str(SPINE), "nope", source="local")
    assert isinstance(info.value, RuntimeError)
    assert "Cannot find callable nope in hubconf" in str(info.value)


def test_entrypoint_error_comes_back_typed_with_the_remote_traceback():
    with pytest.raises(safehub.EntrypointFailedError) as info:
        safehub.load(str(DEMO), "tinynet", source="local", verbose=False, num_classes="many")
    assert info.value.remote_type == "TypeError"
    assert "tinynet" in info.value.remote_traceback or "hubconf" in info.value.remote_traceback


def test_unknown_source_is_a_value_error():
    with pytest.raises(ValueError, match="Unknown source"):
        safehub.load(str(DEMO), "tinynet", source="gitlab")


AUDIT_SCRIPT = textwrap.dedent(
    """
    import json, sys
    events = []
    def hook(event, args):
        if event == "import":
            events.append(("import", str(args[0]), str(args[1] or "")))
        elif event == "pickle.find_class":
            events.append(("pickle", str(args[0]), str(args[1])))
        elif event in ("exec", "compile") and event == "exec":
            pass
    sys.addaudithook(hook)
    import safehub, torch
    model = safehub.load(sys.argv[1], "tinynet", source="local", verbose=False)
    y = model(torch.randn(2, 3, 32, 32))
    print(json.dumps({"events": events, "shape": list(y.shape),
                      "modules": sorted(m for m in sys.modules if m in ("hubconf", "tinynet", "yaml"))}))
    """
)


def test_no_repo_module_imported_and_nothing_unpickled_in_the_host(tmp_path):
    """An audit hook in a fresh host process watches the whole load."""
    script = tmp_path / "audit.py"
    script.write_text(AUDIT_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), str(DEMO)], capture_output=True, text=True, timeout=600,
                          cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["shape"] == [2, 10]
    assert report["modules"] == [], "repo modules (or its dependency) were imported in the host"
    pickles = [e for e in report["events"] if e[0] == "pickle"]
    assert pickles == [], f"the host unpickled something: {pickles[:5]}"
    repo_imports = [e for e in report["events"] if e[0] == "import" and (str(DEMO) in e[2] or e[1] in ("hubconf", "tinynet"))]
    assert repo_imports == []


FRESH_MODULES_SCRIPT = (
    "import sys, safehub; safehub.load(sys.argv[1], 'tinynet', source='local', verbose=False); "
    "print(sorted(m for m in ('psutil', 'packaging', 'cloudpickle', 'pyseccomp') if m in sys.modules))"
)


def test_a_fresh_load_imports_none_of_the_slow_helpers(loaded, tmp_path):
    """A fresh process's load (env built, warm worker) pays for no psutil (the watchdog
    reads /proc), packaging (plain requirement lines), cloudpickle (plain arguments) or
    pyseccomp (the worker holds its children's filter): each was 5-20 ms of every
    fresh process. Twice: the first may build or start things."""
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-c", FRESH_MODULES_SCRIPT, str(DEMO)], capture_output=True,
                              text=True, timeout=600, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]", proc.stdout
