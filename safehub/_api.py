"""The torch.hub-compatible entry points: load, list, help.

Each call goes: find the repo (cache or fetch) -> read hubconf statically -> build
or reuse the repo's venv -> run the runner in a sandbox -> validate what came back
-> rebuild. Nothing from the repo runs in this process.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._errors import EntrypointNotFoundError, SafehubError

# `import safehub` imports this module and little else: what a load needs (logging,
# dataclasses, the fetcher, the hubconf reader...) it imports after it has started
# loading torch's native libraries on a thread (safehub/_host_torch.py), so that
# their import overlaps that load instead of coming before it.

if TYPE_CHECKING:
    import logging

    from ._hubconf import Hubconf
    from ._load_info import LoadInfo
    from ._env import PythonEnv
    from ._fetch import RepoCheckout, RepoRequest
    from ._fetch._downloads import DownloadBudget
    from ._guard import LoadGuard
    from ._jobs import Job, JobRequest
    from ._sandbox import SandboxBackend

__all__ = ["load", "list_entrypoints", "entrypoint_help"]


def _logger() -> logging.Logger:
    import logging

    return logging.getLogger("safehub")

MAX_DOWNLOAD_ROUNDS = 2


def _prepare(request: RepoRequest, guard: LoadGuard) -> tuple[RepoCheckout, Hubconf, Path]:
    """Fetch (or find) the repo through its source and read its hubconf statically.
    The organisation policy and lockfiles (``guard``) judge the request before any network."""
    from ._config import hub_path
    from ._fetch import fetch_repo
    from ._hubconf import read_hubconf

    hub_dir = hub_path()
    repo = fetch_repo(guard.check_request(request), hub_dir=hub_dir)
    guard.check_checkout(repo, hub_dir)
    return repo, read_hubconf(repo.path), hub_dir


def _ensure_env(repo: RepoCheckout, hub: Hubconf, hub_dir: Path, *, verbose: bool, dependencies_mode: str | None,
                extra_dependencies: Any, timings: dict[str, float], guard: LoadGuard) -> PythonEnv:
    """The repo's env, built once (its key is part of the artifact cache's key); the
    policy judges its packages before the install and what was installed after it."""
    from ._env import ensure_env, plan_for_repo

    env_started = time.perf_counter()
    plan = plan_for_repo(repo.path, hub.dependencies, hub_dir=hub_dir, mode=guard.dependencies_mode(dependencies_mode),
                         extra=extra_dependencies, pinned=repo.source == "github" and bool(repo.sha))
    guard.check_plan(plan)
    python_env = ensure_env(plan.entries, hub_dir=hub_dir, verbose=verbose, mode=plan.mode, **guard.env_options())
    guard.check_env(python_env)
    timings["env"] = time.perf_counter() - env_started
    return python_env


def _owner_name(repo: RepoCheckout) -> tuple[str, str] | None:
    """The repo whose release assets may get the GitHub token in a download (None: a local repo)."""
    return (repo.owner, repo.name) if repo.owner is not None and repo.name is not None else None


def _broker_fetch(urls: list[str], *, repo: RepoCheckout, hub_dir: Path, verbose: bool, budget: DownloadBudget,
                  guard: LoadGuard) -> dict[str, Path]:
    """Fetch ``urls`` for an entrypoint of ``repo`` through the broker, under the load's
    budget and policy (the GitHub token lent only for the repo's own release assets)."""
    from ._fetch import prefetch_downloads

    found = prefetch_downloads(urls, hub_dir=hub_dir, verbose=verbose, repo=_owner_name(repo), budget=budget,
                               url_policy=guard.check_url, host_policy=guard.check_host)
    guard.check_downloads(found)
    return dict(found)


def _remember_downloads(done: Job, staged: dict[str, Any], hinted: set[str], *, repo: RepoCheckout, hub_dir: Path,
                        entrypoint: str) -> None:
    """Keep what the next load of ``entrypoint`` should stage ahead: the staged URLs its
    entrypoint was served this time (so a hint it no longer asks for is dropped), or,
    from a runner that does not say, everything staged once it asked for more."""
    from ._channel import downloads_used

    used = downloads_used(done.result, staged)
    keep = list(staged) if used is None else used
    if set(keep) != hinted:
        from ._fetch._download_memo import remember_urls

        remember_urls(hub_dir, repo, entrypoint, keep)


def _hinted_downloads(job: JobRequest, *, repo: RepoCheckout, hub_dir: Path, verbose: bool, budget: DownloadBudget,
                      guard: LoadGuard, timings: dict[str, float]) -> dict[str, Path]:
    """The files the last load of this entrypoint from this snapshot asked for, fetched
    (from the checkpoint cache, usually) with every check an asked-for file gets, so
    the first sandbox run has them (safehub/_fetch/_download_memo.py). A hint that
    fails is dropped: the entrypoint then asks for what it needs."""
    if job.action != "load" or not job.entrypoint:
        return {}
    from ._fetch._download_memo import remembered_urls

    urls = remembered_urls(hub_dir, repo, job.entrypoint)
    if not urls:
        return {}
    started = time.perf_counter()
    try:
        found = _broker_fetch(urls, repo=repo, hub_dir=hub_dir, verbose=verbose, budget=budget, guard=guard)
    except SafehubError as exc:
        _logger().info("the files this entrypoint asked for last time are not staged ahead (%s)", exc)
        return {}
    finally:
        timings["downloads"] = timings.get("downloads", 0.0) + time.perf_counter() - started
    return found


def _run(
    job: JobRequest,
    *,
    repo: RepoCheckout,
    hub: Hubconf,
    hub_dir: Path,
    verbose: bool,
    sandbox: str | SandboxBackend | None,
    budget: DownloadBudget,
    dependencies_mode: str | None = None,
    extra_dependencies: Any = None,
    timings: dict[str, float] | None = None,
    guard: LoadGuard | None = None,
    python_env: PythonEnv | None = None,
    observe: Any = None,
) -> tuple[Job, PythonEnv]:
    """Run ``job`` in the repo's env and sandbox, fetching on the host whatever
    files the entrypoint asks for (at most MAX_DOWNLOAD_ROUNDS times). ``budget`` is
    one deadline and one disk budget for the sandbox runs and the downloads between
    them; the caller discards it on failure. ``observe``: see ``run_job`` (every round)."""
    import dataclasses

    from ._guard import LoadGuard
    from ._jobs import run_job
    from ._sandbox import get_backend
    from ._status import status

    timings = {} if timings is None else timings
    guard = guard or LoadGuard.for_call()
    guard.check_sandbox(sandbox)  # policy: sandbox, packages and limits before anything is spawned
    backend = get_backend(sandbox)
    guard.check_backend(backend, job)
    if python_env is None:
        python_env = _ensure_env(repo, hub, hub_dir, verbose=verbose, dependencies_mode=dependencies_mode,
                                 extra_dependencies=extra_dependencies, timings=timings, guard=guard)
    downloads = _hinted_downloads(job, repo=repo, hub_dir=hub_dir, verbose=verbose, budget=budget, guard=guard,
                                  timings=timings)
    hinted = set(downloads)
    for _round in range(MAX_DOWNLOAD_ROUNDS + 1):
        this_round = dataclasses.replace(job, downloads=dict(downloads), limits=budget.round_limits())
        what = f"{job.entrypoint} (the entrypoint, then its export)" if job.action == "load" else f"a {job.action} job"
        status("running %s in the %s sandbox", what, backend.name, verbose=verbose)
        started = time.monotonic()
        done = run_job(this_round, python_env=python_env, backend=backend, hub_dir=hub_dir, observe=observe)
        elapsed = time.monotonic() - started
        timings["sandbox"] = timings.get("sandbox", 0.0) + elapsed
        status("sandbox run finished in %.1f s", elapsed, verbose=verbose)
        needed = done.needs_download()
        if not needed:
            done.rerun = (this_round, backend)  # type: ignore[attr-defined]  # a deferred export runs it again
            if job.action == "load" and job.entrypoint:
                _remember_downloads(done, downloads, hinted, repo=repo, hub_dir=hub_dir, entrypoint=job.entrypoint)
            return done, python_env
        done.cleanup()
        if _round == MAX_DOWNLOAD_ROUNDS:
            break
        _logger().info("the entrypoint asked for %d file(s); downloading them on the host", len(needed))
        fetch_started = time.perf_counter()
        downloads.update(_broker_fetch(needed, repo=repo, hub_dir=hub_dir, verbose=verbose, budget=budget, guard=guard))
        timings["downloads"] = timings.get("downloads", 0.0) + time.perf_counter() - fetch_started
    raise SafehubError(
        f"the entrypoint kept asking for new downloads after {MAX_DOWNLOAD_ROUNDS} rounds",
        hint="ship the weights in the repo or as release assets with fixed URLs",
    )


def load(
    repo_or_dir: str | os.PathLike[str],
    model: str,
    *args: Any,
    source: str = "github",
    trust_repo: bool | str | None = "check",
    force_reload: bool = False,
    verbose: bool = True,
    skip_validation: bool = False,
    device: Any = None,
    revision: str | None = None,
    example_inputs: Any = None,
    export: str = "auto",
    sandbox: str | SandboxBackend | None = None,
    limits: Any = None,
    dependencies_mode: str | None = None,
    extra_dependencies: Any = None,
    policy: str | os.PathLike[str] | None = None,
    lock: str | os.PathLike[str] | None = None,
    **kwargs: Any,
) -> Any:
    """Load a model from a hub repo, like ``torch.hub.load``, without running its code here.

    Args mirror torch.hub 2.13. safehub adds keyword-only options:
        device: where the rebuilt model lives ("cpu", "cuda", a torch.device). Default CPU.
        revision: a full commit SHA to load exactly, whatever the ref says now.
        example_inputs: a tuple of inputs used to export models fx cannot trace.
        export: "auto" (fx, then aten), "fx" or "aten".
        sandbox: "auto", "bwrap", "landlock" or "process" (default ``$SAFEHUB_SANDBOX`` or auto).
        limits: a :class:`safehub.Limits` for the sandboxed run.
        dependencies_mode: which packages the repo's env gets: "scan" (default: hubconf's
            ``dependencies`` plus the third-party imports a static scan of the repo finds),
            "declared" (``dependencies`` only) or "requirements" (plus requirements.txt /
            pyproject dependencies). Default ``$SAFEHUB_DEPENDENCIES`` or "scan".
        extra_dependencies: more requirements for the env (["timm>=0.9"]), or a dict
            import name -> requirement for imports the scan cannot name ({"cv2": "opencv-python"}).
        policy: a user policy file (TOML, docs/policy.md), narrowing the system policy; default
            ``$SAFEHUB_POLICY`` or the user config dir's ``safehub/policy.toml``.
        lock: a lockfile (``safehub lock``, docs/lockfile.md) the load must match; default ``$SAFEHUB_LOCK``.

    Returns an ``nn.Module`` (or the tuple/list/dict of modules the entrypoint returned).
    Its ``safehub_info`` attribute records the repo SHA, the sandbox backend and limits used.

    A load that succeeded once is answered again from the artifact cache (no env build,
    no sandbox), checked exactly like a sandbox's output; ``safehub_info.cache`` says
    whether it was a hit. A hit is the first load's result (``pretrained=False``: the
    same random init). ``force_reload=True`` bypasses the cache and refreshes it.
    """
    load_started = time.perf_counter()
    from . import _host_torch

    _host_torch.start()  # torch's libraries load now, its import once a sandbox runs (a thread; see there)
    from ._contract import EXPORT_MODES
    from ._fetch import RepoRequest
    from ._fetch._downloads import DownloadBudget
    from ._guard import LoadGuard
    from ._jobs import JobRequest
    from ._load_info import LoadInfo
    from ._status import status

    from ._channel import check_device

    if export not in EXPORT_MODES:
        raise ValueError(f"export={export!r}: use 'auto', 'fx' or 'aten'")
    if device is not None:  # before any fetch, env build or sandbox run (None is the cpu: no torch import yet)
        check_device(device)
    mark = time.perf_counter()
    timings: dict[str, float] = {"host_imports": mark - load_started}  # safehub's own modules; torch if a device was given
    guard = LoadGuard.for_call(policy=policy, lock=lock)
    repo, hub, hub_dir = _prepare(
        RepoRequest(
            repo_or_dir=str(repo_or_dir), source=source, trust_repo=trust_repo, force_reload=force_reload,
            verbose=verbose, skip_validation=skip_validation, revision=revision, calling_fn="load",
        ), guard,
    )
    hub.require(model)
    guard.check_entrypoint(model)
    hub.check_call(model, args, kwargs)  # milliseconds, before any env build or sandbox run
    timings["fetch_and_static_checks"] = time.perf_counter() - mark
    if example_inputs is not None and not isinstance(example_inputs, tuple):
        example_inputs = (example_inputs,)
    # Policy: the sandbox (by name before it is probed, then the backend chosen) and explicit
    # limits, before any env build.
    guard.check_sandbox(sandbox)
    if guard.active:  # (with no policy, a cache hit needs no sandbox and does not probe one)
        from ._sandbox import get_backend

        sandbox = get_backend(sandbox)
        guard.check_backend(sandbox, None)
    run_limits = guard.limits(limits, explicit=limits is not None)
    python_env = _ensure_env(repo, hub, hub_dir, verbose=verbose, dependencies_mode=dependencies_mode,
                             extra_dependencies=extra_dependencies, timings=timings, guard=guard)
    from ._artifact_cache import plan_cache

    mark = time.perf_counter()
    cache = plan_cache(hub_dir, repo=repo, entrypoint=model, args=args, kwargs=kwargs, example_inputs=example_inputs,
                       export=export, env_key=python_env.key, force_reload=force_reload,
                       policy_active=guard.active)
    timings["cache_key"] = time.perf_counter() - mark
    mark = time.perf_counter()
    checked: list[float] = []
    hit = cache.lookup(device=device, before_load=lambda: checked.append(time.perf_counter()))
    if hit is not None:
        if checked:  # as for a sandbox's output: every check, then the tensor data and the build
            timings["validation"] = checked[0] - mark
            timings["weights_and_build"] = time.perf_counter() - checked[0]
    request = JobRequest(
        action="load", repo_dir=repo.path, entrypoint=model, args=args, kwargs=kwargs,
        example_inputs=example_inputs, export={"mode": export, "deferred": True}, limits=run_limits,
    )
    if hit is not None:
        return _from_cache(hit[0], repo=repo, model=model, python_env=python_env, cache=cache, request=request,
                           sandbox=sandbox, export=export, hub_dir=hub_dir, verbose=verbose, timings=timings,
                           started=load_started)
    # What checks and builds the sandbox's output, less what needs torch: imported while
    # the thread still loads torch's native libraries, not after its import.
    from . import _namespace, _summary  # noqa: F401
    from ._artifact import note_load
    from ._channel import _huge_tmpfs

    _huge_tmpfs.prepare()  # the weights' huge-page tmpfs, mounted by a helper on the other core meanwhile
    from ._channel import _build, _leaves, _weights  # noqa: F401

    budget = DownloadBudget(run_limits)
    with budget.discard_on_error():  # a failed load keeps none of the files it fetched
        job, python_env = _run(
            request,
            repo=repo, hub=hub, hub_dir=hub_dir, verbose=verbose, sandbox=sandbox, budget=budget,
            dependencies_mode=dependencies_mode, extra_dependencies=extra_dependencies, timings=timings,
            guard=guard,
            python_env=python_env,
        )
    from ._channel import read_summary, rebuild_from_output

    with job:
        mark = time.perf_counter()
        _host_torch.wait()  # what is left of the host's import torch, started on a thread above
        import torch  # noqa: F401  (timed on its own: the first load in a process pays ~1 s here)

        timings["host_import_torch"] = time.perf_counter() - mark
        mark = time.perf_counter()
        checked.clear()
        with budget.discard_on_error():
            obj = rebuild_from_output(job.out_dir, device=device, weights=job.weights,
                                      before_load=lambda: checked.append(time.perf_counter()))
            guard.check_result(obj)  # a lockfile's weights hash
        if checked:  # before_load runs once every check has passed and before tensor data is read
            timings["validation"] = checked[0] - mark
            timings["weights_and_build"] = time.perf_counter() - checked[0]
        summary = read_summary(job.result)
        info = LoadInfo(
            repo=repo.display_name,
            source=repo.source,
            sha=repo.sha,
            entrypoint=model,
            backend=job.sandbox.backend,
            limits=job.sandbox.limits.as_dict(),
            env_key=python_env.key,
            env_backend=python_env.backend,
            summary=summary,
            sandbox_details=dict(job.sandbox.details),  # measured by the host-side watchdog
            dependencies={"mode": python_env.mode, "distributions": list(python_env.distributions),
                          "records": dict(python_env.records)},
            downloads=budget.summary(),
            timings=_timings(timings, summary, total=time.perf_counter() - load_started),
            policy=guard.describe(),
            cache=cache.info,
        )
        from ._deferred import deferred_modules

        if deferred_modules(obj):  # (its job module is imported only then)
            from ._deferred_jobs import attach_jobs

            attach_jobs(obj, job=job, python_env=python_env, hub_dir=hub_dir, sha=repo.sha, summary=info.summary,
                        cache_key=cache.key, export_mode=export)
        modes = sorted({str(m.get("mode")) for m in info.summary.get("modules", {}).values() if m.get("mode")})
        status("rebuilt %s here from the sandbox's export (%s)", model, ", ".join(modes) or "no graphs", verbose=verbose)
        _attach_info(obj, info)
        # (note_load: provenance for safehub.save, imported above)

        note_load(obj, info, repo_path=repo.path, args=args, kwargs=kwargs, export=export)
        mark = time.perf_counter()
        # Before the caller can change the model, and while the job's sealed weights memfd
        # (the bytes it was built from) is open: a background writer copies it from there.
        from ._channel import ChannelLimits

        cache.store(obj, weights_fd=job.weights.sealed_fd(ChannelLimits()) if job.weights is not None else None)
    if "stored" in cache.info:  # tried (a cacheable load): its cost is part of this load's
        info.timings["cache_store"] = round(time.perf_counter() - mark, 4)
        info.timings.pop("total", None)  # re-added last, as --profile prints the table in order
        info.timings["total"] = round(time.perf_counter() - load_started, 4)
    _record(hub_dir, info)
    return obj


def _from_cache(obj: Any, *, repo: RepoCheckout, model: str, python_env: PythonEnv, cache: Any,
                request: JobRequest, sandbox: str | SandboxBackend | None, export: str, hub_dir: Path,
                verbose: bool, timings: dict[str, float], started: float) -> Any:
    """Finish a load answered by the artifact cache (validated like a sandbox's output).
    Its deferred modules export from ``request`` (the load's job) when the cache has
    no graph for a call."""
    from ._artifact import _modules, note_load
    from ._artifact_cache import ARTIFACT_DIR
    from ._channel._origin import origin_of
    from ._contract import WEIGHTS_FILE
    from ._deferred_jobs import attach_cached_jobs
    from ._load_info import LoadInfo
    from ._status import status

    modules: dict[str, Any] = {o.mid: {"mode": o.mspec.mode, "graphs": list(o.mspec.graphs)}
                               for o in map(origin_of, _modules(obj)) if o is not None}
    summary = {"modules": modules}
    attach_cached_jobs(obj, request=request, sandbox=sandbox, hub_dir=hub_dir, sha=repo.sha, summary=summary,
                       entry_weights=cache.cache.entry_path(cache.key) / ARTIFACT_DIR / WEIGHTS_FILE,
                       python_env=python_env, cache_key=cache.key, export_mode=export,
                       fetch_for=_owner_name(repo))
    info = LoadInfo(
        repo=repo.display_name, source=repo.source, sha=repo.sha, entrypoint=model, backend="artifact-cache",
        limits={}, env_key=python_env.key, env_backend=python_env.backend, summary=summary,
        sandbox_details={}, dependencies={"mode": python_env.mode, "distributions": list(python_env.distributions),
                                          "records": dict(python_env.records)},
        timings=_timings(timings, {}, total=time.perf_counter() - started), cache=cache.info,
    )
    status("rebuilt %s here from the artifact cache (entry %s)", model, str(cache.key)[:16], verbose=verbose)
    _attach_info(obj, info)
    note_load(obj, info, repo_path=repo.path, args=tuple(request.args), kwargs=dict(request.kwargs), export=export)
    _record(hub_dir, info)
    return obj


def _timings(host: dict[str, float], summary: dict[str, Any], *, total: float) -> dict[str, float]:
    """One flat table of seconds: the host's parts, the runner's reported parts as
    ``runner_*``, and ``sandbox_overhead``: the sandbox run minus what the runner timed
    (sandbox and interpreter start, reading the request, writing the result, exit)."""
    out = {key: round(value, 4) for key, value in host.items()}
    runner = summary.get("timings") or {}
    for key, value in runner.items():
        out[f"runner_{key}"] = round(value, 4)
    if runner and "sandbox" in host:
        out["sandbox_overhead"] = round(max(0.0, host["sandbox"] - sum(runner.values())), 4)
    out["total"] = round(total, 4)
    return out


def _attach_info(obj: Any, info: LoadInfo) -> None:
    import torch

    from ._namespace import SafehubNamespace

    def visit(value: Any) -> None:
        if isinstance(value, torch.nn.Module):
            # object.__setattr__ keeps it a plain attribute, not a submodule or buffer.
            object.__setattr__(value, "safehub_info", info)
        elif isinstance(value, (tuple, list)):
            for item in value:
                visit(item)
        elif isinstance(value, SafehubNamespace):
            for item in value.safehub_attrs().values():
                visit(item)
        elif isinstance(value, dict):
            for item in value.values():
                visit(item)

    visit(obj)


def _record(hub_dir: Path, info: LoadInfo) -> None:
    """Append the load to ``<hub>/history.jsonl``: which SHA, backend and limits were used."""
    import json
    import time

    try:
        with open(hub_dir / "history.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps({"time": time.time(), **info.as_dict()}, default=str) + "\n")
    except OSError as exc:  # the model is loaded; a read-only cache must not fail the load
        _logger().warning("could not record the load in %s: %s", hub_dir / "history.jsonl", exc)


def list_entrypoints(
    github: str | os.PathLike[str],
    force_reload: bool = False,
    skip_validation: bool = False,
    trust_repo: bool | str | None = "check",
    verbose: bool = True,
    *,
    source: str = "github",
    revision: str | None = None,
    sandbox: str | SandboxBackend | None = None,
    dependencies_mode: str | None = None,
    extra_dependencies: Any = None,
) -> list[str]:
    """Entrypoint names of a repo, like ``torch.hub.list`` (exported as ``safehub.list``).

    Answered from hubconf.py's syntax tree when that is exact; otherwise (star imports,
    imported names) the sandbox imports hubconf and reports ``dir()``.
    """
    from ._fetch import RepoRequest
    from ._guard import LoadGuard

    repo, hub, hub_dir = _prepare(
        RepoRequest(
            repo_or_dir=str(github), source=source, trust_repo=trust_repo, force_reload=force_reload,
            verbose=verbose, skip_validation=skip_validation, revision=revision, calling_fn="list",
        ), LoadGuard.for_call(),
    )
    if hub.static_list_is_exact:
        return hub.names()
    return [e["name"] for e in _sandbox_listing(repo, hub, hub_dir, verbose=verbose, sandbox=sandbox,
                                                dependencies_mode=dependencies_mode,
                                                extra_dependencies=extra_dependencies)]


def _sandbox_listing(
    repo: RepoCheckout, hub: Hubconf, hub_dir: Path, *, verbose: bool, sandbox: str | SandboxBackend | None,
    dependencies_mode: str | None = None, extra_dependencies: Any = None,
) -> list[dict[str, Any]]:
    from ._channel import read_listing
    from ._fetch._downloads import DownloadBudget
    from ._jobs import JobRequest

    _logger().info("hubconf of %s cannot be listed statically (%s); asking the sandbox",
                repo.display_name, "; ".join(hub.reasons) or "imported names")
    budget = DownloadBudget()
    with budget.discard_on_error():
        job, _env = _run(JobRequest(action="list", repo_dir=repo.path), repo=repo, hub=hub, hub_dir=hub_dir,
                         verbose=verbose, sandbox=sandbox, budget=budget, dependencies_mode=dependencies_mode,
                         extra_dependencies=extra_dependencies)
    with job:
        return read_listing(job.result)


def entrypoint_help(
    github: str | os.PathLike[str],
    model: str,
    force_reload: bool = False,
    skip_validation: bool = False,
    trust_repo: bool | str | None = "check",
    *,
    source: str = "github",
    revision: str | None = None,
    sandbox: str | SandboxBackend | None = None,
    dependencies_mode: str | None = None,
    extra_dependencies: Any = None,
) -> str | None:
    """The docstring of an entrypoint, like ``torch.hub.help`` (exported as ``safehub.help``)."""
    from ._fetch import RepoRequest
    from ._guard import LoadGuard

    repo, hub, hub_dir = _prepare(
        RepoRequest(
            repo_or_dir=str(github), source=source, trust_repo=trust_repo, force_reload=force_reload,
            verbose=True, skip_validation=skip_validation, revision=revision, calling_fn="help",
        ), LoadGuard.for_call(),
    )
    ep = hub.require(model)
    if ep is not None and ep.kind in ("function", "class"):
        return ep.doc
    for entry in _sandbox_listing(repo, hub, hub_dir, verbose=True, sandbox=sandbox,
                                  dependencies_mode=dependencies_mode, extra_dependencies=extra_dependencies):
        if entry["name"] == model:
            return entry["doc"]
    raise EntrypointNotFoundError(f"Cannot find callable {model} in hubconf")
