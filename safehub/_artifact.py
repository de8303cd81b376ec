"""Code-free model artifacts: ``safehub.save``, ``safehub.load_artifact``, ``inspect_artifact``.

An artifact is a folder holding exactly ``spec.json`` (the validated spec the
model was rebuilt from), ``weights.safetensors`` (the model's *current*
tensors) and ``provenance.json`` (where it came from, and the sha256 of both
files). Loading one needs no sandbox, no env and no network: the hashes are
checked, then the folder goes through ``rebuild_from_output``, the same entry
point and the same checks as a sandbox's output. Layout and versioning:
docs/architecture-format.md, *Artifacts*.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._artifact_format import (
    ARTIFACT_FORMAT,
    ARTIFACT_VERSION,
    PROVENANCE_FILE,
    SOURCE_KEYS,
    check_hashes,
    check_listing,
    describe_arguments,
    parse_provenance,
    read_provenance,
    read_provenance_bytes,
    write_safetensors,
)
from ._channel import _DEFAULT_HINT as REBUILD_HINT
from ._channel import SPEC_FILE, WEIGHTS_FILE, ChannelLimits, rebuild_from_output
from ._channel._names import show
from ._channel._origin import BuildOrigin, BuildRecord, origin_of
from ._errors import ArtifactError, ArtifactSaveError, UnsafeSpecError
from ._records import record

__all__ = ["save", "load_artifact", "load_checked", "inspect_artifact", "ArtifactInfo", "note_load"]

logger = logging.getLogger("safehub")
_MAX_DEPTH = 8
_TAMPERED_HINT = ("nothing was built. This artifact's files match its recorded hashes but fail the checks every "
                  "model gets: it was not written by safehub.save, or was edited and re-hashed. Do not use it")


@record(frozen=True)
class ArtifactInfo:
    """``safehub_info`` of a model loaded from an artifact: its provenance, as recorded."""

    path: str
    repo: str | None
    source: str | None
    sha: str | None
    entrypoint: str | None
    provenance: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


# --- saving ------------------------------------------------------------------


def save(model: Any, path: str | os.PathLike[str]) -> Path:
    """Write ``model`` (or a tuple/list/dict of models) as an artifact folder at ``path``.

    The model must be one safehub rebuilt (``safehub.load`` or ``load_artifact``);
    its current parameter and buffer values are saved, so a fine-tuned model saves
    its new weights. ``path`` must not exist yet. Returns the folder.
    """
    return _save(model, path, deferred=False)


def _save(model: Any, path: str | os.PathLike[str], *, deferred: bool) -> Path:
    """``save``; ``deferred=True`` (the artifact cache only) also keeps modules whose
    graph is exported at their first call: their tree and tensors, no graph. Such an
    entry is only useful to a load that can run export jobs again (safehub/_deferred_jobs.py)."""
    dest = Path(path)
    if os.path.lexists(dest):
        raise ArtifactSaveError(f"{str(dest)!r} already exists", hint="save to a new folder, or remove the old one first")
    picked: dict[str, tuple[Any, BuildOrigin]] = {}
    root = _structure(model, picked, 0, deferred=deferred)
    record = _common_record(picked)
    tensors: dict[str, Any] = {}
    for mid, (module, origin) in picked.items():
        tensors.update(_current_tensors(module, origin))
    spec_raw = _spec_for(record, root, picked)

    parent = dest.parent if str(dest.parent) else Path(".")
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".partial", dir=parent))
    try:
        with open(tmp / SPEC_FILE, "xb") as f:
            f.write(spec_raw)
            f.flush()
            os.fsync(f.fileno())
        weights_sha, weights_bytes = write_safetensors(tmp / WEIGHTS_FILE, tensors)
        provenance = _provenance(record, root, picked)
        provenance["files"] = {SPEC_FILE: {"sha256": hashlib.sha256(spec_raw).hexdigest(), "bytes": len(spec_raw)},
                               WEIGHTS_FILE: {"sha256": weights_sha, "bytes": weights_bytes}}
        with open(tmp / PROVENANCE_FILE, "x", encoding="ascii") as f:
            f.write(json.dumps(provenance, indent=2, ensure_ascii=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o755)  # mkdtemp made it 0700; an artifact is for sharing (its files follow the umask)
        os.rename(tmp, dest)  # all three files appear at once, or none
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("saved %d module(s), %d tensors, to %s", len(picked), len(tensors), dest)
    return dest


def _provenance(record: BuildRecord, root: dict[str, Any], picked: dict[str, tuple[Any, BuildOrigin]]) -> dict[str, Any]:
    """provenance.json without ``files`` (the hashes of what is written)."""
    import torch

    provenance: dict[str, Any] = {"format": ARTIFACT_FORMAT, "version": ARTIFACT_VERSION}
    provenance.update({key: record.provenance.get(key) for key in SOURCE_KEYS})
    provenance.update({
        "root": "module" if "module" in root else next(iter(root)),
        # training: the mode the spec restores at load (as exported), not the current one
        "modules": {mid: {"mode": o.mspec.mode, "graphs": builtins.list(o.mspec.graphs), "training": o.mspec.training}
                    for mid, (_m, o) in sorted(picked.items())},
        "torch_version": torch.__version__,
        # The package is always imported before its submodules; no import edge up to it.
        "safehub_version": str(getattr(sys.modules.get("safehub"), "__version__", "unknown")),
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    })  # fmt: skip
    return provenance


def load_record(model: Any) -> tuple[bytes, dict[str, Any]] | None:
    """(spec.json bytes, provenance without ``files``) of everything one load returned,
    as it was validated and built; None when ``model`` is only a part of what its load
    returned (then only ``save`` can write it, from its current tensors). The artifact
    cache writes these beside the weights the load was built from, before the load returns."""
    picked: dict[str, tuple[Any, BuildOrigin]] = {}
    root = _structure(model, picked, 0, deferred=True)
    record = _common_record(picked)
    spec_raw = _spec_for(record, root, picked)
    if spec_raw is not record.spec_raw:
        return None
    return spec_raw, _provenance(record, root, picked)


def _structure(value: Any, picked: dict[str, tuple[Any, BuildOrigin]], depth: int, *,
               deferred: bool = False) -> dict[str, Any]:
    """The spec's ``root`` Value for ``value``; collects the modules it names."""
    from torch import nn

    from ._channel._module import SafehubGraphModule
    from ._deferred import DeferredModule
    from ._namespace import SafehubNamespace

    if depth > _MAX_DEPTH:
        raise ArtifactSaveError(f"the containers nest deeper than {_MAX_DEPTH} levels")
    if isinstance(value, SafehubNamespace) and deferred and depth == 0:
        # The object a load returned (artifact cache only): its modules, and the load's own
        # spec as it was validated (_spec_for); the namespace is read-only, so it is that spec's.
        for module in _modules(value):
            _structure(module, picked, depth + 1, deferred=deferred)
        return {"object": value.safehub_type}
    if isinstance(value, DeferredModule) and not deferred:
        raise ArtifactSaveError(
            "this model's graph is exported at its first call (deferred export), so there is no graph to save yet",
            hint="load it with example_inputs=(...) of the call you make, so its graph is exported at load time; "
                 "then save that model",
        )
    if isinstance(value, nn.Module):
        origin = origin_of(value)
        is_built = isinstance(value, DeferredModule if origin is not None and origin.mspec.mode == "deferred"
                              else SafehubGraphModule)
        if origin is None or not is_built:
            raise ArtifactSaveError(
                f"safehub.save can only save a model safehub rebuilt; this is a {type(value).__name__} "
                "safehub did not build",
                hint="load it with safehub.load (or safehub.load_artifact) first; for other modules use "
                "torch.save(model.state_dict()) or safetensors",
            )
        seen = picked.get(origin.mid)
        if seen is not None and seen[0] is not value:
            raise ArtifactSaveError(f"two different modules were built as module {origin.mid} (a copy and its original?)",
                                    hint="save them to separate artifacts")
        picked[origin.mid] = (value, origin)
        return {"module": origin.mid}
    if isinstance(value, (tuple, builtins.list)):
        return {type(value).__name__: [_structure(v, picked, depth + 1, deferred=deferred) for v in value]}
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise ArtifactSaveError("a dict of models needs string keys to be saved")
        return {"dict": {k: _structure(v, picked, depth + 1, deferred=deferred) for k, v in value.items()}}
    raise ArtifactSaveError(f"safehub.save got a {type(value).__qualname__}; it saves a model safehub rebuilt "
                            "or a tuple/list/dict of them")


def _common_record(picked: dict[str, tuple[Any, BuildOrigin]]) -> BuildRecord:
    if not picked:
        raise ArtifactSaveError("there is no model to save in an empty container")
    records = {id(o.record): o.record for _m, o in picked.values()}
    if len(records) != 1:
        raise ArtifactSaveError("these models come from different loads; one artifact holds what one load returned",
                                hint="save each load's models to their own artifact")
    return next(iter(records.values()))


def _current_tensors(module: Any, origin: BuildOrigin) -> dict[str, Any]:
    """The module's tensors keyed as in the weights file, after checking that the
    module still is what its spec describes (same graphs, tensors, shapes, dtypes,
    leaf classes, tied weights). Values may differ: that is fine-tuning."""
    mspec, mid = origin.mspec, origin.mid
    where = f"module {mid}"
    if mspec.mode != "deferred" and (module.code != origin.code or module.train_code != origin.train_code):
        raise ArtifactSaveError(f"{where}: its graph was edited after safehub built it; an artifact saves the validated graph",
                                hint="save the model as loaded (its weights may change, its graph may not)")
    params = dict(module.named_parameters(remove_duplicate=False))
    buffers = dict(module.named_buffers(remove_duplicate=False))
    expected = set(mspec.tensors) | set(mspec.aliases)
    have = set(params) | set(buffers)
    if have != expected:
        extra, missing = sorted(have - expected)[:5], sorted(expected - have)[:5]
        raise ArtifactSaveError(f"{where}: its tensors changed since safehub built it (added: {extra}, removed: {missing})",
                                hint="an artifact carries the tensors of the validated spec; only their values may change")

    def tensor_at(path: str) -> Any:
        return params[path] if path in params else buffers[path]

    out: dict[str, Any] = {}
    for path, info in mspec.tensors.items():
        t = tensor_at(path)
        if (info.kind == "parameter") != (path in params):
            raise ArtifactSaveError(f"{where}: {show(path)} was a {info.kind} and is not any more")
        dtype = str(t.dtype).removeprefix("torch.")
        if dtype != info.dtype or tuple(t.shape) != tuple(info.shape):
            raise ArtifactSaveError(
                f"{where}: {show(path)} is {dtype}{builtins.list(t.shape)}; the spec says {info.dtype}{builtins.list(info.shape)}",
                hint="an artifact keeps each tensor's dtype and shape; convert the model back (e.g. .float()) before saving",
            )
        out[f"{mid}.{path}"] = t
    for alias, target in mspec.aliases.items():
        if tensor_at(alias) is not tensor_at(target):
            raise ArtifactSaveError(f"{where}: {show(alias)} is no longer tied to {show(target)}",
                                    hint="tie them again (assign the same Parameter) before saving")
    for path, leaf in mspec.leaves.items():
        try:
            sub = module.get_submodule(path)
        except AttributeError:
            sub = None
        if type(sub) is not leaf.cls:
            raise ArtifactSaveError(f"{where}: layer {show(path)} was a {leaf.cls_name} and is now {type(sub).__name__}")
    return out


def _spec_for(record: BuildRecord, root: dict[str, Any], picked: dict[str, Any]) -> bytes:
    """The validated spec bytes as they were, or (for part of what a load
    returned) the same spec with only those modules and that root."""
    from ._channel._spec import ModuleRef, ObjectRoot

    def encode(value: Any) -> Any:
        if isinstance(value, ModuleRef):
            return {"module": value.mid}
        if isinstance(value, (tuple, builtins.list)):
            return {type(value).__name__: [encode(v) for v in value]}
        return {"dict": {k: encode(v) for k, v in value.items()}}

    if "object" in root:  # a load's whole namespace (_structure): the load's spec, every module in it
        if not isinstance(record.root, ObjectRoot) or set(picked) != set(_refs(record.root)):
            raise ArtifactSaveError("this namespace is not what its load returned")
        return record.spec_raw
    if encode(record.root) == root:
        return record.spec_raw
    doc = json.loads(record.spec_raw)  # bytes this process validated when it built the model
    doc["root"] = root
    doc["modules"] = {mid: doc["modules"][mid] for mid in sorted(picked)}
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def note_load(obj: Any, info: Any, *, repo_path: Path, args: tuple[Any, ...], kwargs: dict[str, Any],
              export: str) -> None:
    """Called by ``safehub.load``: remember where the model came from, for ``save``."""
    record = _record_of(obj)
    if record is None:
        return
    archive_sha256 = None
    if info.source == "github" and info.sha:
        archive_sha256 = _archive_sha256(Path(repo_path), info.sha)
    record.provenance.update({
        "repo": info.repo, "source": info.source, "sha": info.sha, "archive_sha256": archive_sha256,
        "entrypoint": info.entrypoint, "arguments": describe_arguments(args, dict(kwargs)), "export": export,
    })  # fmt: skip


def note_graph(gm: Any, *, entrypoint: str, export: str) -> None:
    """A deferred module's exported graph, before the artifact cache keeps it."""
    origin = origin_of(gm)
    if origin is not None:
        origin.record.provenance.update({"entrypoint": entrypoint, "export": export})


def _archive_sha256(repo_path: Path, sha: str) -> str | None:
    """The sha256 of the archive the checkout was extracted from, from the cache's
    metadata next to it (``<sha>.json``); None when not known."""
    from ._fetch._cache import _read_json

    try:
        meta = _read_json(repo_path.with_name(f"{sha}.json"))
    except (OSError, ValueError):
        return None
    value = meta.get("archive_sha256") if isinstance(meta, dict) else None
    return value if isinstance(value, str) and re.fullmatch(r"[0-9a-f]{64}", value) else None


def _record_of(obj: Any) -> BuildRecord | None:
    for module in _modules(obj):
        origin = origin_of(module)
        if origin is not None:
            return origin.record
    return None


def _modules(obj: Any) -> builtins.list[Any]:
    from ._namespace import SafehubNamespace

    if isinstance(obj, (tuple, builtins.list)):
        return [m for v in obj for m in _modules(v)]
    if isinstance(obj, dict):
        return [m for v in obj.values() for m in _modules(v)]
    if isinstance(obj, SafehubNamespace):  # its modules; its plain values are not modules
        return [m for v in obj.safehub_attrs().values() if not _plain(v) for m in _modules(v)]
    return [obj]


def _plain(value: Any) -> bool:
    return value is None or type(value) in (bool, int, float, str) or (
        type(value) is tuple and all(_plain(v) for v in value))


def _refs(root: Any) -> builtins.list[str]:
    """The module ids a validated spec root names."""
    from ._channel._spec import ModuleRef, ObjectRoot, PlainValue

    if isinstance(root, ModuleRef):
        return [root.mid]
    if isinstance(root, ObjectRoot):
        return [m for v in root.attrs.values() for m in _refs(v)]
    if isinstance(root, PlainValue):
        return []
    values = root.values() if isinstance(root, dict) else root
    return [m for v in values for m in _refs(v)]


# --- loading -----------------------------------------------------------------


def _caps(limits: ChannelLimits) -> dict[str, int]:
    return {SPEC_FILE: limits.spec_bytes, WEIGHTS_FILE: limits.weights_bytes}


def _check_size(folder: Path, name: str, expected: dict[str, Any], cap: int) -> None:
    """A cheap first look (a changed size says "changed" before a failed parse can say
    anything more confusing); the hashes are checked on the bytes actually read."""
    from ._channel._files import open_output_file

    fd = open_output_file(folder, name, max_bytes=cap)
    try:
        size = os.fstat(fd).st_size
    finally:
        os.close(fd)
    if size != expected["bytes"]:
        raise ArtifactError(f"artifact file {name} is {size} bytes; provenance.json recorded {expected['bytes']}",
                            hint="the artifact was changed or truncated after it was saved; export it again")


def load_artifact(path: str | os.PathLike[str], *, device: Any = None, limits: ChannelLimits | None = None,
                  policy: str | os.PathLike[str] | None = None, lock: str | os.PathLike[str] | None = None) -> Any:
    """Load an artifact folder written by ``safehub.save``. No sandbox, env or network.

    The folder is untrusted input: its layout, ``provenance.json`` and the sha256 of
    both files are checked, then it is validated and rebuilt exactly like a sandbox's
    output. Returns what was saved (a module or a tuple/list/dict of modules), each
    with ``safehub_info`` (an :class:`ArtifactInfo`).

    The organisation policy applies (``policy=``/``lock=`` as for ``load``): under a
    ``[repos]`` rule or a lock an artifact is refused, since its provenance is
    self-declared (docs/policy.md).
    """
    from ._guard import LoadGuard

    LoadGuard.for_call(policy=policy, lock=lock).check_artifact(str(path))
    folder = Path(path)
    obj, provenance = load_checked(folder, device=device, limits=limits)
    if provenance["root"] == "object" or any(m["mode"] == "deferred" for m in provenance["modules"].values()):
        # Only the artifact cache writes these; without the load that made it, no graph can be exported.
        raise ArtifactError("this artifact holds a module with no graph (deferred export) or a namespace: it is an "
                            "artifact-cache entry, which only safehub.load can use",
                            hint="load the model with safehub.load, or with example_inputs=(...) and save that")
    info = ArtifactInfo(path=str(folder), repo=provenance["repo"], source=provenance["source"], sha=provenance["sha"],
                        entrypoint=provenance["entrypoint"], provenance=provenance)
    for module in _modules(obj):
        object.__setattr__(module, "safehub_info", info)
    return obj


def load_checked(folder: Path, *, device: Any = None, limits: ChannelLimits | None = None,
                 provenance_sha256: str | None = None,
                 before_load: Callable[[], None] | None = None,
                 weights_memo: Callable[[str], Any] | None = None) -> tuple[Any, dict[str, Any]]:
    """``load_artifact`` without the info: (what was saved, its provenance).
    ``provenance_sha256``: the provenance bytes must hash to it (the artifact cache
    binds its key record to the artifact this way); they are hashed and parsed once.
    ``weights_memo`` (the artifact cache): given the weights' expected sha256, the
    ``WeightsStatMemo`` that maps them and may skip their hash."""
    limits = limits or ChannelLimits()
    check_listing(folder)
    raw = read_provenance_bytes(folder)
    if provenance_sha256 is not None and hashlib.sha256(raw).hexdigest() != provenance_sha256:
        raise ArtifactError("provenance.json is not the one its record names (sha256 differs)",
                            hint="the artifact was changed or swapped after it was saved")
    provenance = parse_provenance(raw)
    files, caps = provenance["files"], _caps(limits)
    # The spec is hashed before it is parsed and the weights as they are read: the
    # hashes cover exactly the bytes the model is built from (no second open).
    for name in (SPEC_FILE, WEIGHTS_FILE):
        _check_size(folder, name, files[name], caps[name])
    try:
        memo = weights_memo(files[WEIGHTS_FILE]["sha256"]) if weights_memo is not None else None
        obj = rebuild_from_output(folder, device=device, limits=limits, expect=files, before_load=before_load,
                                  weights_memo=memo)
    except ArtifactError:
        raise
    except UnsafeSpecError as exc:
        # A failed check before the bytes were hashed: a changed file explains it
        # better, so say that if so (only to choose the message; nothing is built).
        check_hashes(folder, files, caps)
        if exc.hint == REBUILD_HINT:
            raise type(exc)(exc.message, hint=_TAMPERED_HINT) from None
        raise
    record = _record_of(obj)
    assert record is not None  # rebuild_from_output attaches one to every module
    described = {mid: (m["mode"], m["graphs"], m["training"]) for mid, m in provenance["modules"].items()}
    built = {o.mid: (o.mspec.mode, builtins.list(o.mspec.graphs), o.mspec.training)
             for o in map(origin_of, _modules(obj)) if o}
    if described != built:
        raise ArtifactError("provenance.json describes other modules than spec.json holds",
                            hint="the artifact was assembled from different saves; export it again")
    record.provenance.update({key: provenance[key] for key in SOURCE_KEYS})
    return obj, provenance


def inspect_artifact(path: str | os.PathLike[str], *, limits: ChannelLimits | None = None) -> dict[str, Any]:
    """Provenance, graphs, parameter counts and sizes of an artifact, after the same
    checks as ``load_artifact`` short of loading tensor data and building modules."""
    from ._channel._files import open_output_file, read_output_file
    from ._channel._spec import parse_spec
    from ._channel._weights import check_against_spec, read_header

    folder = Path(path)
    limits = limits or ChannelLimits()
    check_listing(folder)
    provenance = read_provenance(folder)
    check_hashes(folder, provenance["files"], _caps(limits))
    spec = parse_spec(read_output_file(folder, SPEC_FILE, max_bytes=limits.spec_bytes), limits=limits)
    fd = open_output_file(folder, WEIGHTS_FILE, max_bytes=limits.weights_bytes)
    try:
        check_against_spec(read_header(fd, limits), spec)
    finally:
        os.close(fd)
    modules: dict[str, Any] = {}
    for mid, mspec in spec.modules.items():
        params = [t for t in mspec.tensors.values() if t.kind == "parameter"]
        numel = [_numel(t.shape) for t in mspec.tensors.values()]
        modules[mid] = {
            "mode": mspec.mode,
            "graphs": {name: len(g.nodes) for name, g in mspec.graphs.items()},
            "parameters": sum(_numel(t.shape) for t in params),
            "tensors": len(mspec.tensors),
            "tensor_elements": sum(numel),
            "leaves": len(mspec.leaves),
        }
    return {"path": str(folder), "provenance": provenance, "modules": modules,
            "parameters": sum(m["parameters"] for m in modules.values()),
            "weights_bytes": provenance["files"][WEIGHTS_FILE]["bytes"],
            "spec_bytes": provenance["files"][SPEC_FILE]["bytes"]}


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
