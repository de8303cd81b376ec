"""The job side of deferred export (safehub/_deferred.py): keep what a load
needs for later export jobs, and run one export job.

Holds no repo code and no repo objects: the load's JobRequest (repo folder,
entrypoint, env, limits, staged downloads) with its arguments replaced by the
bytes the host pickled for the load, and the load's weights file.
"""

from __future__ import annotations

import logging
import weakref
from pathlib import Path
from typing import Any

import torch

from ._deferred import deferred_modules
from ._errors import ExportError
from ._records import record

__all__ = ["DeferredJob", "attach_cached_jobs", "attach_jobs", "keep_weights", "sweep_kept_weights"]

logger = logging.getLogger("safehub")


class _Keep:
    """Removes the kept weights folder when the last module of a load is gone, or at
    interpreter exit. After a crash, the folder's owner lock is gone with the
    process and the next keep_weights sweeps it (safehub/_owned.py)."""

    def __init__(self, owned: Any) -> None:
        self.folder = owned.path
        self._finalizer = weakref.finalize(self, owned.release)


_SWEPT: set[Path] = set()


def sweep_kept_weights(hub_dir: Path) -> int:
    """Remove kept-weights folders of processes that died without cleaning up."""
    from ._owned import sweep_unowned

    return sweep_unowned(Path(hub_dir) / "deferred", "load-")


@record
class DeferredJob:
    """What the host needs to re-run the sandbox: never repo code or repo objects.
    ``request`` is the load's own JobRequest (repo folder, entrypoint, limits,
    staged downloads) with its arguments replaced by the bytes the host pickled."""

    request: Any  # JobRequest: args=() and args_pickle set, or (a cache hit) the load's own args
    sha: str | None
    python_env: Any  # PythonEnv
    backend: Any  # SandboxBackend, or (a cache hit) the load's ``sandbox=`` choice, resolved at the first export
    hub_dir: Path
    weights: Path  # the weights.safetensors the first load returned (kept under <hub>/deferred/)
    # The load's artifact-cache key (None: not cacheable): each exported graph is cached
    # under a key made of it and the call's signature.
    cache_key: str | None = None
    export_mode: str = "auto"
    # A load answered by the artifact cache never ran the entrypoint here, so it does not
    # know which files the entrypoint fetches: an export job may ask, once, and the host
    # fetches them as a load would (from the checkpoint cache when it has them).
    # ``fetch_for``: the (owner, name) whose release assets may get the GitHub token.
    fetch_downloads: bool = False
    fetch_for: tuple[str, str] | None = None

    @property
    def entrypoint(self) -> str:
        return str(self.request.entrypoint)

    def export(self, mid: str, training: bool, structure: list[dict], device: torch.device) -> tuple[Any, dict]:
        return run_export(self, mid, training, structure, device)


def run_export(job: DeferredJob, mid: str, training: bool, structure: list[dict], device: torch.device) -> tuple[Any, dict]:
    """The graph of one call signature: from the artifact cache when an earlier
    process exported it (validated like any hit), else from a sandboxed export
    job, then cached."""
    from ._artifact_cache import graph_cache

    cached = graph_cache(job.hub_dir, job.cache_key, mid=mid, training=training, structure=structure,
                         entrypoint=job.entrypoint, export=job.export_mode)
    if cached is not None:
        gm = cached.lookup(device=device)
        if gm is not None:
            return _one_graph(gm[0]), {"cached": True}
    gm, info = _run_export_job(job, mid, training, structure, device)
    if cached is not None:
        from ._artifact import note_graph

        note_graph(gm, entrypoint=job.entrypoint, export=job.export_mode)
        cached.store(gm)
    return gm, info


def _one_graph(gm: Any) -> Any:
    from ._channel._module import SafehubGraphModule
    from ._errors import UnsafeSpecError

    if not isinstance(gm, SafehubGraphModule):  # not a container, not another deferred module
        raise UnsafeSpecError("the deferred export job returned something other than one graph module")
    return gm


def _run_export_job(job: DeferredJob, mid: str, training: bool, structure: list[dict],
                    device: torch.device) -> tuple[Any, dict]:
    """One sandboxed "export" job; returns the validated, built graph module and its summary."""
    import dataclasses

    from ._channel import rebuild_from_output
    from ._contract import WEIGHTS_FILE
    from ._jobs import run_job
    from ._summary import clean_attempts

    repo_dir = job.request.repo_dir
    if repo_dir is None or not Path(repo_dir).joinpath("hubconf.py").is_file():
        raise ExportError(
            f"the repo folder {repo_dir} this model was loaded from is gone, so its graph cannot be exported",
            hint="load the model again (github checkouts live under the hub cache, one folder per commit)",
        )
    if not job.weights.is_file():
        raise ExportError(f"the weights kept for this model's export ({job.weights}) are gone", hint="load the model again")
    from ._sandbox import SandboxBackend, get_backend

    if not isinstance(job.backend, SandboxBackend):
        job.backend = get_backend(job.backend)
    for attempt in range(2):
        request = dataclasses.replace(
            job.request, action="export", in_files={WEIGHTS_FILE: job.weights},
            deferred={"mid": mid, "training": training, "args": structure},
        )
        with run_job(request, python_env=job.python_env, backend=job.backend, hub_dir=job.hub_dir) as result:
            needed = result.needs_download()
            if not needed:
                gm = rebuild_from_output(result.out_dir, device=device, weights=result.weights)
                raw = result.result.get("summary")
                break
        if attempt or not job.fetch_downloads:
            raise ExportError(
                "the entrypoint asked for a new download when it ran again for the deferred export",
                hint="load with example_inputs=(...) so the graph is exported in the first run",
            )
        job.request = dataclasses.replace(job.request, downloads={**job.request.downloads,
                                                                  **_fetch(job, needed)})
    info: dict[str, Any] = {}
    mod = raw.get("modules", {}).get("m0") if isinstance(raw, dict) and isinstance(raw.get("modules"), dict) else None
    if isinstance(mod, dict):
        if isinstance(mod.get("dynamic_batch"), bool):
            info["dynamic_batch"] = mod["dynamic_batch"]
        info["attempts"] = clean_attempts(mod.get("attempts"))
    return _one_graph(gm), info


def _fetch(job: DeferredJob, urls: list[str]) -> dict[str, Path]:
    """The files an export job asked for, fetched on the host as ``safehub.load`` does
    (no policy is in force: a load under a policy is never answered by the cache)."""
    from ._fetch import prefetch_downloads
    from ._fetch._downloads import DownloadBudget

    logger.info("the export job asked for %d file(s); fetching them on the host", len(urls))
    budget = DownloadBudget(job.request.limits)
    with budget.discard_on_error():
        return dict(prefetch_downloads(urls, hub_dir=job.hub_dir, verbose=False, repo=job.fetch_for, budget=budget))


def keep_weights(out_dir: Path, hub_dir: Path, weights: Any = None) -> tuple[Path, _Keep]:
    """Keep the first load's weights for later export jobs: a copy of the job's
    sealed weights memfd (``weights``, the bytes the model was built from), else a
    hard link to (or copy of) out/weights.safetensors."""
    import os
    import shutil

    import stat

    src = Path(out_dir) / "weights.safetensors"
    if weights is None and not stat.S_ISREG(os.lstat(src).st_mode):  # the sandbox wrote it: a plain file or nothing
        raise ExportError("the load job's weights.safetensors is not a regular file")
    from ._owned import make_owned_dir

    hub_dir = Path(hub_dir)
    if hub_dir not in _SWEPT:  # once per process and hub: crashed loads' leftovers
        _SWEPT.add(hub_dir)
        sweep_kept_weights(hub_dir)
    owned = make_owned_dir(hub_dir / "deferred", "load-")
    keep = _Keep(owned)
    dst = owned.path / "weights.safetensors"
    if weights is not None:
        from ._channel import ChannelLimits

        _copy_fd(weights.sealed_fd(ChannelLimits()), dst)  # sealed: already so when the model was built
    else:
        try:
            os.link(src, dst, follow_symlinks=False)
        except OSError:
            shutil.copyfile(src, dst, follow_symlinks=False)
    os.chmod(dst, 0o644)  # read by the sandbox uid through in/
    return dst, keep


def _copy_fd(src_fd: int, dst: Path) -> None:
    """The whole of ``src_fd`` into the new file ``dst`` (in the kernel: sendfile)."""
    import os

    size = os.fstat(src_fd).st_size
    out = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        offset = 0
        while offset < size:
            n = os.sendfile(out, src_fd, offset, size - offset)
            if n <= 0:
                raise ExportError("could not copy the load job's weights for later export")
            offset += n
    finally:
        os.close(out)


def attach_cached_jobs(obj: Any, *, request: Any, sandbox: Any, entry_weights: Path, python_env: Any,
                       hub_dir: Path, sha: str | None, summary: dict, cache_key: str | None, export_mode: str,
                       fetch_for: tuple[str, str] | None) -> None:
    """``attach_jobs`` for a load the artifact cache answered: no job ran, so an
    export reruns the entrypoint from ``request`` (the load's JobRequest, its
    arguments copied) on a link to the entry's weights. Graphs the cache holds for
    a call's signature need neither (``run_export`` looks there first)."""
    import copy
    import dataclasses

    modules = deferred_modules(obj)
    if not modules:
        return
    # A hard link: the entry is never written in place, so the link keeps the bytes it was
    # built from even if the entry is replaced or removed later.
    weights, keep = keep_weights(entry_weights.parent, hub_dir)
    args, kwargs = copy.deepcopy((tuple(request.args), dict(request.kwargs)))  # plain values: the key required it
    spec = DeferredJob(
        request=dataclasses.replace(request, args=args, kwargs=kwargs, example_inputs=None),
        sha=sha, python_env=python_env, backend=sandbox, hub_dir=hub_dir, weights=weights,
        cache_key=cache_key, export_mode=export_mode, fetch_downloads=True, fetch_for=fetch_for,
    )
    for m in modules:
        exports = summary.setdefault("modules", {}).setdefault(m._safehub_mid, {}).setdefault("exports", [])
        m.attach(spec, m._safehub_mid, keep, exports)


def attach_jobs(obj: Any, *, job: Any, python_env: Any, hub_dir: Path, sha: str | None, summary: dict,
                cache_key: str | None = None, export_mode: str = "auto") -> None:
    """Give every DeferredModule of a fresh load what it needs to export later.
    Must run before the load's job folder is removed (it keeps the weights and
    the pickled arguments from it)."""
    import dataclasses

    from ._contract import ARGS_FILE

    modules = deferred_modules(obj)
    if not modules:
        return
    request, backend = job.rerun
    weights, keep = keep_weights(job.out_dir, hub_dir, getattr(job, "weights", None))
    args_pickle = (job.root / "in" / ARGS_FILE).read_bytes()
    spec = DeferredJob(
        request=dataclasses.replace(request, args=(), kwargs={}, example_inputs=None, args_pickle=args_pickle),
        sha=sha, python_env=python_env, backend=backend, hub_dir=hub_dir, weights=weights,
        cache_key=cache_key, export_mode=export_mode,
    )
    for m in modules:
        exports = summary.setdefault("modules", {}).setdefault(m._safehub_mid, {}).setdefault("exports", [])
        m.attach(spec, m._safehub_mid, keep, exports)
