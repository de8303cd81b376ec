"""The torch.hub-compatible entry points: load, list, help.

Each call goes: find the repo (cache or fetch) -> read hubconf statically -> build
or reuse the repo's venv -> run the runner in a sandbox -> validate what came back
-> rebuild. Nothing from the repo runs in this process.
"""

from __future__ import annotations

import builtins
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._config import hub_path
from ._errors import EntrypointNotFoundError, HubconfError, SafehubError
from ._hubconf import Hubconf, read_hubconf

if TYPE_CHECKING:
    from ._sandbox import SandboxBackend

__all__ = ["load", "list", "help", "LoadInfo"]

logger = logging.getLogger("safehub")

_SOURCES = ("github", "local")
MAX_DOWNLOAD_ROUNDS = 2


@dataclass(frozen=True)
class _Repo:
    path: Path
    source: str
    sha: str | None = None
    name: str = ""


@dataclass(frozen=True)
class LoadInfo:
    """What a load used; attached to the returned module as ``safehub_info``."""

    repo: str
    source: str
    sha: str | None
    entrypoint: str
    backend: str
    limits: dict[str, Any]
    env_key: str
    env_backend: str
    dependencies: dict[str, Any]  # mode, installed "name==version" and the sha256 of each RECORD
    summary: dict[str, Any]
    sandbox_details: dict[str, Any]
    # Files the host fetched for the entrypoint: url, bytes, sha256, cached, seconds.
    downloads: tuple[dict[str, Any], ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _check_source(source: str) -> str:
    if source not in _SOURCES:
        raise ValueError(f'Unknown source: "{source}". Allowed values: "github" | "local".')
    return source


def _resolve_repo(
    repo_or_dir: str | os.PathLike[str],
    *,
    source: str,
    force_reload: bool,
    trust_repo: Any,
    calling_fn: str,
    verbose: bool,
    skip_validation: bool,
    revision: str | None,
    hub_dir: Path,
    env: Mapping[str, str] | None,
) -> _Repo:
    if source == "local":
        path = Path(repo_or_dir).expanduser().resolve()
        if not path.is_dir():
            raise HubconfError(f"local repo {path} is not a folder", hint="pass the folder that holds hubconf.py")
        return _Repo(path=path, source="local", name=str(path))
    from ._fetch import get_repo

    checkout = get_repo(
        str(repo_or_dir),
        source=source,
        force_reload=force_reload,
        trust_repo=trust_repo,
        calling_fn=calling_fn,
        verbose=verbose,
        skip_validation=skip_validation,
        revision=revision,
        hub_dir=hub_dir,
        env=env,
    )
    return _Repo(
        path=Path(checkout.path),
        source=source,
        sha=checkout.sha,
        name=f"{checkout.owner}/{checkout.name}",
    )


def _prepare(
    repo_or_dir: str | os.PathLike[str],
    *,
    source: str,
    trust_repo: Any,
    force_reload: bool,
    verbose: bool,
    skip_validation: bool,
    revision: str | None,
    calling_fn: str,
    env: Mapping[str, str] | None,
) -> tuple[_Repo, Hubconf, Path]:
    _check_source(source)
    hub_dir = hub_path(env)
    repo = _resolve_repo(
        repo_or_dir,
        source=source,
        force_reload=force_reload,
        trust_repo=trust_repo,
        calling_fn=calling_fn,
        verbose=verbose,
        skip_validation=skip_validation,
        revision=revision,
        hub_dir=hub_dir,
        env=env,
    )
    return repo, read_hubconf(repo.path), hub_dir


def _run(
    *,
    action: str,
    repo: _Repo,
    hub: Hubconf,
    hub_dir: Path,
    verbose: bool,
    sandbox: str | SandboxBackend | None,
    limits: Any,
    entrypoint: str | None = None,
    args: tuple[Any, ...] = (),
    kwargs: Mapping[str, Any] | None = None,
    example_inputs: Any = None,
    export_options: Mapping[str, Any] | None = None,
    allow_gpu: bool = False,
    env: Mapping[str, str] | None = None,
    budget: Any = None,
    dependencies_mode: str | None = None,
    extra_dependencies: Any = None,
):
    """``budget`` (a DownloadBudget) is one deadline and one disk budget for the
    sandbox runs and the downloads between them; the caller discards it on failure."""
    from ._env import ensure_env, plan_for_repo
    from ._jobs import run_job
    from ._sandbox import get_backend

    backend = get_backend(sandbox, env=env)
    plan = plan_for_repo(repo.path, hub.dependencies, hub_dir=hub_dir, mode=dependencies_mode,
                         extra=extra_dependencies, env=env, pinned=repo.source == "github" and bool(repo.sha))
    python_env = ensure_env(plan.entries, hub_dir=hub_dir, verbose=verbose, env=env, mode=plan.mode)
    if budget is None:
        from ._fetch._downloads import DownloadBudget

        budget = DownloadBudget(limits)
    downloads: dict[str, Path] = {}
    for _round in range(MAX_DOWNLOAD_ROUNDS + 1):
        job = run_job(
            action=action,
            repo_dir=repo.path,
            python_env=python_env,
            backend=backend,
            hub_dir=hub_dir,
            entrypoint=entrypoint,
            args=args,
            kwargs=kwargs,
            example_inputs=example_inputs,
            export_options=export_options,
            limits=budget.round_limits(),
            allow_gpu=allow_gpu,
            downloads=downloads,
        )
        needed = job.needs_download()
        if not needed:
            return job, backend, python_env
        job.cleanup()
        if _round == MAX_DOWNLOAD_ROUNDS:
            break
        from ._fetch import prefetch_downloads

        logger.info("the entrypoint asked for %d file(s); downloading them on the host", len(needed))
        owner_name = tuple(repo.name.split("/", 1)) if repo.source == "github" else None
        downloads.update(prefetch_downloads(needed, hub_dir=hub_dir, verbose=verbose, env=env,
                                            repo=owner_name, budget=budget))  # type: ignore[arg-type]
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

    Returns an ``nn.Module`` (or the tuple/list/dict of modules the entrypoint returned).
    Its ``safehub_info`` attribute records the repo SHA, the sandbox backend and limits used.
    """
    if export not in ("auto", "fx", "aten"):
        raise ValueError(f"export={export!r}: use 'auto', 'fx' or 'aten'")
    repo, hub, hub_dir = _prepare(
        repo_or_dir,
        source=source,
        trust_repo=trust_repo,
        force_reload=force_reload,
        verbose=verbose,
        skip_validation=skip_validation,
        revision=revision,
        calling_fn="load",
        env=None,
    )
    hub.require(model)
    if example_inputs is not None and not isinstance(example_inputs, tuple):
        example_inputs = (example_inputs,)
    from ._fetch._downloads import DownloadBudget

    budget = DownloadBudget(limits)
    with budget.discard_on_error():  # a failed load keeps none of the files it fetched
        job, backend, python_env = _run(
            action="load",
            repo=repo,
            hub=hub,
            hub_dir=hub_dir,
            verbose=verbose,
            sandbox=sandbox,
            limits=limits,
            entrypoint=model,
            args=args,
            kwargs=kwargs,
            example_inputs=example_inputs,
            export_options={"mode": export},
            allow_gpu=False,
            budget=budget,
            dependencies_mode=dependencies_mode,
            extra_dependencies=extra_dependencies,
        )
    from ._channel import rebuild_from_output

    with job:
        with budget.discard_on_error():
            obj = rebuild_from_output(job.out_dir, device=device)
        info = LoadInfo(
            repo=repo.name,
            source=repo.source,
            sha=repo.sha,
            entrypoint=model,
            backend=job.sandbox.backend,
            limits=job.sandbox.limits.as_dict(),
            env_key=python_env.key,
            env_backend=python_env.backend,
            dependencies={"mode": python_env.mode, "distributions": builtins.list(python_env.distributions),
                          "records": dict(python_env.records)},
            summary=_clean_summary(job.result.get("summary")),
            sandbox_details=dict(job.sandbox.details),  # measured by the host-side watchdog
            downloads=budget.summary(),
        )
    _attach_info(obj, info)
    _record(hub_dir, info)
    return obj


_SUMMARY_INTS = ("nodes", "tensors", "leaves")


def _clean_summary(raw: Any) -> dict[str, Any]:
    """Keep only the known, typed fields of the runner's summary: it came from the
    sandbox, and it ends up in logs, the CLI and ``safehub_info``."""
    out: dict[str, Any] = {"root": None, "modules": {}}
    if not isinstance(raw, dict):
        return out
    if raw.get("root") in ("module", "tuple", "list", "dict"):
        out["root"] = raw["root"]
    if isinstance(raw.get("weight_bytes"), int) and not isinstance(raw.get("weight_bytes"), bool):
        out["weight_bytes"] = raw["weight_bytes"]
    modules = raw.get("modules")
    if not isinstance(modules, dict):
        return out
    for mid, info in builtins.list(modules.items())[:1024]:
        if not (isinstance(mid, str) and mid[:1] == "m" and mid[1:].isdigit() and len(mid) <= 8):
            continue
        if not isinstance(info, dict):
            continue
        clean: dict[str, Any] = {}
        if info.get("mode") in ("fx", "aten"):
            clean["mode"] = info["mode"]
        graphs = info.get("graphs")
        if isinstance(graphs, builtins.list):
            clean["graphs"] = [g for g in graphs if g in ("eval", "train")][:2]
        for key in _SUMMARY_INTS:
            value = info.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**53:
                clean[key] = value
        seconds = info.get("seconds")
        if isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and 0 <= seconds < 1e7:
            clean["seconds"] = float(seconds)
        if isinstance(info.get("dynamic_batch"), bool):
            clean["dynamic_batch"] = info["dynamic_batch"]
        out["modules"][mid] = clean
    return out


def _attach_info(obj: Any, info: LoadInfo) -> None:
    import torch

    def visit(value: Any) -> None:
        if isinstance(value, torch.nn.Module):
            # object.__setattr__ keeps it a plain attribute, not a submodule or buffer.
            object.__setattr__(value, "safehub_info", info)
        elif isinstance(value, (tuple, builtins.list)):
            for item in value:
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
        logger.warning("could not record the load in %s: %s", hub_dir / "history.jsonl", exc)


def list(  # noqa: A001 - torch.hub's name
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
) -> builtins.list[str]:
    """Entrypoint names of a repo, like ``torch.hub.list``.

    Answered from hubconf.py's syntax tree when that is exact; otherwise (star imports,
    imported names) the sandbox imports hubconf and reports ``dir()``.
    """
    repo, hub, hub_dir = _prepare(
        github,
        source=source,
        trust_repo=trust_repo,
        force_reload=force_reload,
        verbose=verbose,
        skip_validation=skip_validation,
        revision=revision,
        calling_fn="list",
        env=None,
    )
    if hub.static_list_is_exact:
        return hub.names()
    return [e["name"] for e in _sandbox_listing(repo, hub, hub_dir, verbose=verbose, sandbox=sandbox,
                                                dependencies_mode=dependencies_mode,
                                                extra_dependencies=extra_dependencies)]


def _sandbox_listing(repo: _Repo, hub: Hubconf, hub_dir: Path, *, verbose: bool, sandbox: str | SandboxBackend | None,
                     dependencies_mode: str | None = None, extra_dependencies: Any = None) -> builtins.list[dict[str, Any]]:
    from ._channel._listing import validate_listing

    logger.info("hubconf of %s cannot be listed statically (%s); asking the sandbox",
                repo.name, "; ".join(hub.reasons) or "imported names")
    from ._fetch._downloads import DownloadBudget

    budget = DownloadBudget()
    with budget.discard_on_error():
        job, _backend, _env = _run(
            action="list", repo=repo, hub=hub, hub_dir=hub_dir, verbose=verbose, sandbox=sandbox, limits=None,
            budget=budget, dependencies_mode=dependencies_mode, extra_dependencies=extra_dependencies,
        )
    with job:
        return validate_listing(job.result)


def help(  # noqa: A001 - torch.hub's name
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
    """The docstring of an entrypoint, like ``torch.hub.help``."""
    repo, hub, hub_dir = _prepare(
        github,
        source=source,
        trust_repo=trust_repo,
        force_reload=force_reload,
        verbose=True,
        skip_validation=skip_validation,
        revision=revision,
        calling_fn="help",
        env=None,
    )
    ep = hub.require(model)
    if ep is not None and ep.kind in ("function", "class"):
        return ep.doc
    for entry in _sandbox_listing(repo, hub, hub_dir, verbose=True, sandbox=sandbox,
                                  dependencies_mode=dependencies_mode, extra_dependencies=extra_dependencies):
        if entry["name"] == model:
            return entry["doc"]
    raise EntrypointNotFoundError(f"Cannot find callable {model} in hubconf")

