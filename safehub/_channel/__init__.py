"""The host end of the return channel: everything the sandbox wrote is read here.

* ``read_result`` / ``raise_for_runner_error`` / ``needs_download_urls`` /
  ``read_summary`` / ``read_listing``: the runner's ``result.json`` (_result.py,
  _listing.py); ``stderr_tail``: its captured stderr, for messages;
* ``read_converted_checkpoint`` / ``load_safetensors_checked``: checkpoints
  (_checkpoint.py);
* ``rebuild_from_output``: a model, below.

``rebuild_from_output(out_dir)`` reads exactly ``spec.json`` and
``weights.safetensors`` (docs/architecture-format.md) (or, given a job's weights
memfd, the weights from that memfd only, sealed first: _memfd.py), checks *everything*
(caps, names, allowlists, literals, the safetensors header, the leaves built on
``meta``), and only then loads tensors and builds ``SafehubGraphModule``s.
Any violation raises an :class:`~safehub._errors.UnsafeSpecError` subclass and
nothing is built.

This package imports torch lazily: ``import safehub`` stays torch-free.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Callable

from .._contract import SPEC_FILE, WEIGHTS_FILE
from .._errors import DeviceUnavailableError, UnsafeSpecError, escape_untrusted
from ._checkpoint import load_safetensors_checked, read_converted_checkpoint
from ._limits import ChannelLimits
from ._listing import read_listing
from ._result import (
    downloads_used,
    needs_download_urls,
    raise_for_runner_error,
    raise_runner_warnings,
    read_result,
    read_summary,
    stderr_tail,
)

__all__ = [
    "rebuild_from_output",
    "read_result",
    "raise_for_runner_error",
    "raise_runner_warnings",
    "check_device",
    "needs_download_urls",
    "downloads_used",
    "read_summary",
    "read_listing",
    "stderr_tail",
    "read_converted_checkpoint",
    "load_safetensors_checked",
    "ChannelLimits",
    "SafehubGraphModule",
    "SPEC_FILE",
    "WEIGHTS_FILE",
]

_DEFAULT_HINT = (
    "nothing was built. The repo's model could not be carried out of the sandbox as validated data; "
    "if the repo is trusted and unmodified, report this message to the safehub maintainers"
)


def check_device(device: Any) -> Any:
    """``device`` as a ``torch.device`` this torch can use, else DeviceUnavailableError.
    ``load`` calls it before fetching anything, so a missing GPU fails in
    milliseconds, not after the sandbox run."""
    import torch

    try:
        dev = torch.device(device if device is not None else "cpu")
    except (RuntimeError, TypeError, ValueError) as exc:
        raise DeviceUnavailableError(
            f"device={escape_untrusted(repr(device), limit=80)} is not a device torch knows ({exc})",
            hint="pass device='cpu', 'cuda' or 'cuda:N'",
        ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailableError(
                f"device={str(dev)!r} was requested but this torch has no usable CUDA device",
                hint="pass device='cpu', or install a CUDA build of torch on a machine with a GPU",
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceUnavailableError(
                f"device={str(dev)!r} was requested but this machine has {torch.cuda.device_count()} CUDA device(s)",
                hint="pass device='cuda' or an index below the device count",
            )
    return dev


def rebuild_from_output(out_dir: Path, *, device: Any = None, limits: ChannelLimits | None = None,
                        before_load: Callable[[], None] | None = None,
                        expect: dict[str, dict[str, Any]] | None = None, weights: Any = None,
                        weights_memo: Any = None) -> Any:
    """Rebuild what the entrypoint returned from a job's ``out/`` folder.

    Returns a ``SafehubGraphModule`` (an ``fx.GraphModule``), or a tuple/list/dict
    of them as recorded in the spec's ``root``. ``device`` is where weights are
    loaded and what device literals in the graphs point to (None: cpu).
    ``before_load`` runs after every check and before any tensor data is read.
    ``expect`` (artifacts: file name -> ``{"sha256", "bytes"}``): the exact bytes
    read and built from are hashed, the spec before it is parsed, the weights
    as they are read into memory this process owns, and nothing is built unless
    both match (a file changed or swapped after the check cannot reach the model).
    ``weights`` (a job's ``_memfd.WeightsMemfd``): the weights are read from that
    memfd, sealed first and mapped copy-on-write, and ``out_dir``'s
    weights.safetensors is never opened; None: from the file.
    ``weights_memo`` (an artifact-cache hit, with ``expect``: a
    ``WeightsStatMemo``): the weights file is mapped copy-on-write instead of
    read, and not hashed when the memo knows its exact stat (see
    ``safehub/_artifact_stat_memo.py``); every other check still runs.
    """
    import torch

    from ._build import build_graphs, build_module
    from ._files import open_output_file, read_output_file
    from ._leaves import build_leaves_on_meta
    from ._origin import attach_origin
    from ._spec import ModuleRef, ObjectRoot, PlainValue, parse_spec
    from ._weights import check_against_spec, load_tensors, read_header_bytes

    limits = limits or ChannelLimits()
    device = check_device(device)
    out_dir = Path(out_dir)

    try:
        # 1. Validate everything that needs no tensor data.
        spec_raw = read_output_file(out_dir, SPEC_FILE, max_bytes=limits.spec_bytes)
        if expect is not None:
            _check_digest(SPEC_FILE, hashlib.sha256(spec_raw), len(spec_raw), expect[SPEC_FILE])
        spec = parse_spec(spec_raw, limits=limits, device=device)
        graphs = {mid: build_graphs(mspec) for mid, mspec in spec.modules.items()}
        if weights is not None:  # sealed, size-capped; the job owns (and closes) it
            fd = weights.sealed_fd(limits)
        else:
            fd = open_output_file(out_dir, WEIGHTS_FILE, max_bytes=limits.weights_bytes)
        try:
            entries, header_raw = read_header_bytes(fd, limits)
            check_against_spec(entries, spec)
            meta_leaves = {mid: build_leaves_on_meta(mspec) for mid, mspec in spec.modules.items()}
            # 2. Only now read tensor data and build.
            if before_load is not None:
                before_load()
            digest = None
            before = os.fstat(fd) if weights_memo is not None else None
            if expect is not None and not (before is not None and weights_memo.known(before)):
                digest = hashlib.sha256(header_raw)
            loaded = load_tensors(fd, entries, device, digest=digest,
                                  mapped=weights is not None or weights_memo is not None)
            if digest is not None:  # header and tensors tile the file: this is the file built from
                size = len(header_raw) + sum(e.end - e.begin for e in entries.values())
                _check_digest(WEIGHTS_FILE, digest, size, expect[WEIGHTS_FILE])  # type: ignore[index]
                if before is not None:
                    weights_memo.remember(before, os.fstat(fd))
        finally:
            if weights is None:
                os.close(fd)
        built: dict[str, Any] = {}
        for mid, mspec in spec.modules.items():
            tensors = {p: loaded.pop(f"{mid}.{p}") for p in mspec.tensors}
            built[mid] = build_module(mspec, meta_leaves[mid], tensors, graphs[mid])
        # What safehub.save and the artifact cache need (the validated spec), deferred modules included.
        attach_origin(built, spec, spec_raw)
    except UnsafeSpecError as exc:
        if exc.hint is not None:
            raise
        raise type(exc)(exc.message, hint=_DEFAULT_HINT) from None

    def materialize(value: Any) -> Any:
        if isinstance(value, ModuleRef):
            return built[value.mid]
        if isinstance(value, tuple):
            return tuple(materialize(v) for v in value)
        if isinstance(value, list):
            return [materialize(v) for v in value]
        if isinstance(value, ObjectRoot):
            from .._namespace import SafehubNamespace

            return SafehubNamespace(value.type_name, {
                k: v.value if isinstance(v, PlainValue) else materialize(v) for k, v in value.attrs.items()
            })
        return {k: materialize(v) for k, v in value.items()}

    return materialize(spec.root)


def _check_digest(name: str, digest: Any, size: int, expected: dict[str, Any]) -> None:
    from .._errors import ArtifactError

    if size != expected["bytes"]:
        raise ArtifactError(f"artifact file {name} is {size} bytes; provenance.json recorded {expected['bytes']}",
                            hint="the artifact was changed or truncated after it was saved; export it again")
    if digest.hexdigest() != expected["sha256"]:
        raise ArtifactError(
            f"artifact file {name} has sha256 {digest.hexdigest()}; provenance.json recorded {expected['sha256']}",
            hint="the artifact was changed after it was saved; export it again",
        )


def __getattr__(name: str) -> Any:
    # Lazy, so that importing this package does not import torch.
    if name == "SafehubGraphModule":
        from ._module import SafehubGraphModule

        return SafehubGraphModule
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
