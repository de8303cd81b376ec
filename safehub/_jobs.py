"""The host end of one sandboxed job: lay out the job folder, run the runner in a
sandbox backend, and hand back the result document for validation.

Protocol (version 1) between the host and ``runners/safehub_runner.py``::

    <job>/in/request.json        written by the host, read-only for the runner
        {"protocol": 1, "action": "load" | "list", "repo_dir": str,
         "entrypoint": str | null, "export": {...}, "confine": {...}}
    <job>/in/args.pkl            cloudpickle of (args, kwargs)   host -> sandbox only
    <job>/in/example_inputs.pkl  cloudpickle of example inputs   host -> sandbox only
    <job>/out/                   the only folder the runner may write
        result.json              {"protocol": 1, "status": "ok" | "error", ...}
        spec.json, weights.safetensors   (action "load", see docs/architecture-format.md)
    <job>/home, <job>/tmp        scratch HOME and TMPDIR, thrown away afterwards

Nothing under ``out/`` is ever unpickled, imported or executed by the host.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._channel._files import read_output_file
from ._env._types import PythonEnv
from ._fsutil import remove_tree
from ._errors import (
    EntrypointFailedError,
    EntrypointNotFoundError,
    ExportError,
    HubconfError,
    SandboxError,
    SandboxLimitError,
    SandboxTimeoutError,
    SpecTooLargeError,
    UnsafeSpecError,
    UnsupportedReturnError,
    escape_untrusted,
)
from ._sandbox import Limits, SandboxBackend, SandboxRequest, SandboxResult

__all__ = ["Job", "run_job", "runner_dir", "PROTOCOL"]

logger = logging.getLogger("safehub")

PROTOCOL = 1
MAX_RESULT_JSON_BYTES = 4 * 1024 * 1024


def runner_dir() -> Path:
    """The folder holding the runner scripts, located without importing them."""
    from ._resources import shipped_folder

    found = shipped_folder("safehub._runners", "runners", "safehub_runner.py")
    if found is not None:
        return found
    raise SandboxError("safehub's runner scripts are missing", hint="reinstall safehub")


@dataclass
class Job:
    root: Path
    result: dict[str, Any]
    sandbox: SandboxResult
    out_dir: Path = field(init=False)

    def __post_init__(self) -> None:
        self.out_dir = self.root / "out"

    def needs_download(self) -> list[str]:
        """URLs the entrypoint asked for (category ``needs_download``), validated; else []."""
        from ._fetch._downloads import parse_needs_download, validate_url

        error = self.result.get("error")
        if self.result.get("status") != "error" or not isinstance(error, dict):
            return []
        if error.get("category") != "needs_download":
            return []
        return [validate_url(url) for url in parse_needs_download(error)]

    def cleanup(self) -> None:
        # Never raises: the job folder holds what the sandbox left (deep chains,
        # locked folders, FIFOs), and a model already built must not be lost to it.
        try:
            remove_tree(self.root)
        except Exception:  # noqa: BLE001 - logged; a leftover folder beats a lost model
            logger.warning("could not remove the job folder %s", self.root, exc_info=True)

    def __enter__(self) -> "Job":
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


def sandbox_environment(job_root: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The whole environment the runner sees: nothing is inherited from the host,
    so no token, proxy or cloud credential can leak in."""
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(job_root / "home"),
        "TMPDIR": str(job_root / "tmp"),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "TORCH_HOME": str(job_root / "home" / ".cache" / "torch"),
        "OMP_NUM_THREADS": str(min(4, os.cpu_count() or 1)),
    }
    if extra:
        env.update(extra)
    return env


def run_job(
    *,
    action: str,
    repo_dir: Path | None,
    python_env: PythonEnv,
    backend: SandboxBackend,
    hub_dir: Path,
    entrypoint: str | None = None,
    args: tuple[Any, ...] = (),
    kwargs: Mapping[str, Any] | None = None,
    example_inputs: Any = None,
    export_options: Mapping[str, Any] | None = None,
    limits: Limits | None = None,
    allow_gpu: bool = False,
    downloads: Mapping[str, Path] | None = None,
    extra_request: Mapping[str, Any] | None = None,
    extra_ro_paths: tuple[Path, ...] = (),
) -> Job:
    """Run one job and return it with its validated ``result.json``.

    Raises a typed error if the runner failed, was killed, or reported an error.
    The caller must ``cleanup()`` the returned job (it is a context manager).
    """
    import cloudpickle

    limits = limits or Limits()
    jobs = hub_dir / "jobs"
    jobs.mkdir(parents=True, exist_ok=True)
    root = jobs / f"job-{secrets.token_hex(8)}"
    root.mkdir(mode=0o700)
    try:
        for sub in ("in", "out", "home", "tmp"):
            (root / sub).mkdir(mode=0o700)
        request = {
            "protocol": PROTOCOL,
            "action": action,
            "repo_dir": str(repo_dir) if repo_dir is not None else None,
            "entrypoint": entrypoint,
            "export": dict(export_options or {}),
            **dict(extra_request or {}),
        }
        with open(root / "in" / "args.pkl", "wb") as f:
            cloudpickle.dump((tuple(args), dict(kwargs or {})), f)
        if example_inputs is not None:
            with open(root / "in" / "example_inputs.pkl", "wb") as f:
                cloudpickle.dump(example_inputs, f)

        if downloads:
            from ._fetch._downloads import stage_downloads

            # Files the host fetched for this entrypoint, linked into in/ (read-only there).
            stage_downloads(downloads, root / "in")

        rdir = runner_dir()
        sandbox_request = SandboxRequest(
            argv=[str(python_env.python), "-I", "-B", str(rdir / "safehub_runner.py"), str(root)],
            env=sandbox_environment(root),
            cwd=root / "tmp",
            ro_paths=(
                *python_env.ro_paths,
                *([repo_dir] if repo_dir is not None else []),
                rdir,
                root / "in",
                *extra_ro_paths,
            ),
            rw_paths=(root / "out",),
            scratch_paths=(root / "home", root / "tmp"),
            limits=limits,
            allow_gpu=allow_gpu,
        )
        # What the runner applies to itself before repo code (rlimits, Landlock).
        request["confine"] = backend.confine_config(sandbox_request)
        (root / "in" / "request.json").write_text(json.dumps(request), encoding="utf-8")
        _share_read_only(root / "in")
        logger.debug("running %s job for %s in the %s sandbox", action, repo_dir, backend.name)
        sandbox_result = backend.run(sandbox_request)
        result = _read_result(root / "out", sandbox_result)
        job = Job(root=root, result=result, sandbox=sandbox_result)
        _raise_for_reported_error(job, entrypoint=entrypoint, repo_dir=repo_dir)
        return job
    except BaseException:
        remove_tree(root)
        raise


def _share_read_only(folder: Path) -> None:
    """in/ is bound read-only into the sandbox, whose uid may differ from ours (as
    root, bwrap runs the job as a fresh uid): make it readable whatever the umask.
    The job root above it stays 0700, so nobody else on the host gets in."""
    for dirpath, dirnames, filenames in os.walk(folder):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o644, follow_symlinks=False)


def _stderr_tail(result: SandboxResult) -> str:
    return escape_untrusted(result.stderr, limit=3000)


def _read_result(out_dir: Path, sandbox: SandboxResult) -> dict[str, Any]:
    if sandbox.killed_by is not None:
        limit = sandbox.killed_by
        message = f"the sandboxed runner was killed: it hit the {limit} limit ({_limit_text(sandbox.limits, limit)})"
        hint = "raise the limit if this repo legitimately needs more"
        if limit == "timeout":
            raise SandboxTimeoutError(message, hint=hint)
        raise SandboxLimitError(message, limit=limit, hint=hint)
    if sandbox.returncode != 0:
        raise SandboxError(
            f"the sandboxed runner exited with status {sandbox.returncode} before reporting a result "
            f"({sandbox.backend} backend). Its stderr ends with:\n{_stderr_tail(sandbox)}",
            hint="if the repo crashed the interpreter, check its native dependencies",
        )
    raw = read_output_file(out_dir, "result.json", max_bytes=MAX_RESULT_JSON_BYTES)
    try:
        result = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except RecursionError:
        raise SpecTooLargeError("the runner's result.json nests deeper than Python can parse") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise UnsafeSpecError(f"the runner's result.json is not valid JSON: {escape_untrusted(str(exc), limit=200)}") from None
    if not isinstance(result, dict) or result.get("protocol") != PROTOCOL or result.get("status") not in ("ok", "error"):
        raise UnsafeSpecError("the runner's result.json does not follow protocol 1")
    return result


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not allowed")


def _limit_text(limits: Limits, limit: str) -> str:
    return {
        "timeout": f"{limits.timeout_s:g} s wall clock",
        "memory": f"{limits.memory_bytes} bytes of memory",
        "pids": f"{limits.max_pids} processes",
        "disk": f"{limits.max_file_bytes} bytes per file / {limits.tmpfs_bytes} bytes of scratch",
        "cpu": f"{limits.cpu_time_s} s of CPU time",
    }.get(limit, limit)


def _raise_for_reported_error(job: Job, *, entrypoint: str | None, repo_dir: Path) -> None:
    result = job.result
    if result["status"] == "ok" or job.needs_download():
        return
    error = result.get("error")
    if not isinstance(error, dict):
        raise UnsafeSpecError("the runner reported an error without details")
    category = escape_untrusted(str(error.get("category", "")), limit=40)
    remote_type = escape_untrusted(str(error.get("type", "")), limit=200)
    message = escape_untrusted(str(error.get("message", "")), limit=2000)
    tb = escape_untrusted(str(error.get("traceback", "")), limit=8000)
    from ._env._hints import missing_module_hint

    missing = missing_module_hint(remote_type, message)  # None unless an import failed
    if category == "hubconf":
        raise HubconfError(
            f"importing hubconf.py of {repo_dir} failed inside the sandbox: {remote_type}: {message}\n{tb}",
            hint=missing or "the repo may need a dependency its hubconf does not declare",
        )
    if category == "entrypoint" and remote_type == "RuntimeError" and message.startswith("Cannot find callable"):
        raise EntrypointNotFoundError(message, hint="run safehub.list() on the repo to see its entrypoints")
    if category == "entrypoint":
        raise EntrypointFailedError(
            f"entrypoint {entrypoint!r} raised {remote_type} inside the sandbox: {message}",
            remote_type=remote_type,
            remote_traceback=tb,
            hint=missing or "the sandbox traceback is in .remote_traceback",
        )
    if category == "unsupported_return":
        raise UnsupportedReturnError(message, hint="safehub carries nn.Modules and tuples/lists/dicts of them")
    if category == "checkpoint":
        raise SandboxError(
            f"the checkpoint could not be read inside the sandbox: {remote_type}: {message}",
            hint="is it a torch.save file? With weights_only=True, objects other than tensors and containers are refused",
        )
    if category == "export":
        raise ExportError(f"{message}", hint="pass example_inputs=... or choose export='aten' / 'fx'")
    raise SandboxError(f"the runner failed ({category or 'unknown'}): {remote_type}: {message}\n{tb}")
