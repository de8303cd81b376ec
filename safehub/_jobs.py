"""The host end of one sandboxed job: lay out the job folder, run the runner in a
sandbox backend, and hand what it wrote to the return channel.

A thin orchestrator: the protocol (file names, request and result shapes, error
categories) is ``safehub/_contract.py``, the file the runner imports too; every
byte the runner wrote is read by ``safehub/_channel``. Job folder::

    <job>/in/      request.json, args.pkl, example_inputs.pkl, staged downloads
                   (written by the host, read-only in the sandbox)
    <job>/out/     the only folder the runner may write (result.json, spec.json,
                   weights.safetensors, checkpoint.json)
    <job>/home, <job>/tmp   scratch HOME and TMPDIR, thrown away afterwards

A ``load`` or ``export`` job on a backend that passes descriptors (bubblewrap, the
warm worker, landlock, process) returns its weights in memory the host created
(``Job.weights``) instead of out/weights.safetensors: a file on the host's
huge-page tmpfs when every process of the sandbox ends with it (bubblewrap and its
warm worker: safehub/_channel/_huge_tmpfs.py), else a memfd (_memfd.py). Once the
sandbox has ended the host makes it unwritable (proves no writer is left, or seals
it) and maps it copy-on-write. The host decides per job, and then reads the
weights only from where it decided.

Each job folder is owned by this process (safehub/_owned.py): a crash leaves it
behind, and the next run_job in any process sweeps it.

Nothing under ``out/`` is ever unpickled, imported or executed by the host.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import field
from pathlib import Path
from typing import Any

from ._channel import needs_download_urls, raise_for_runner_error, raise_runner_warnings, read_result, stderr_tail
from ._contract import (ARGS_FILE, EXAMPLE_INPUTS_FILE, PROTOCOL, REQUEST_FILE, WEIGHTS_FD_ENV, ExportOptions, Request,
                        Result)
from ._env._hints import missing_module_hint
from ._env._types import PythonEnv
from ._errors import SandboxError, SandboxLimitError, SandboxTimeoutError
from ._records import record
from ._resources import runner_dir
from ._sandbox import Limits, SandboxBackend, SandboxRequest, SandboxResult
from ._fsutil import remove_tree
from ._owned import make_owned_dir, sweep_unowned

__all__ = ["Job", "JobRequest", "run_job", "PROTOCOL"]

logger = logging.getLogger("safehub")

_SWEPT: set[Path] = set()


@record(frozen=True)
class JobRequest:
    """What one sandboxed job should do (see ``safehub._contract.Request``)."""

    action: str  # "load" | "list" | "convert" | "export"
    repo_dir: Path | None = None  # None only for "convert"
    entrypoint: str | None = None
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    example_inputs: Any = None
    export: ExportOptions = field(default_factory=lambda: ExportOptions())
    limits: Limits = field(default_factory=Limits)
    allow_gpu: bool = False
    downloads: Mapping[str, Path] = field(default_factory=dict)  # URL -> host file fetched for it
    checkpoint: Path | None = None  # "convert": the pickled file, exposed read-only
    weights_only: bool = False
    # "export" (safehub/_deferred.py): the first load's pickled (args, kwargs), sent
    # again byte for byte; host files linked into in/ by name; the call structure.
    args_pickle: bytes | None = None
    in_files: Mapping[str, Path] = field(default_factory=dict)
    deferred: Mapping[str, Any] | None = None
    # "load" for ``safehub audit``: the runner records what repo code does (out/audit.jsonl).
    audit: bool = False


@record
class Job:
    """A finished sandboxed job: its folder, checked result and sandbox record."""

    root: Path
    result: Result
    sandbox: SandboxResult
    owned: Any = None  # safehub._owned.OwnedDir: the folder's owner lock (run_job's jobs)
    # The job's weights memfd (safehub._channel._memfd.WeightsMemfd), or None: the
    # weights are out/weights.safetensors. Pass it to rebuild_from_output(weights=).
    weights: Any = None
    # Whether the weights' size goes to the weights pool once the host is done with
    # the job (its backend's jobs take the pool's files: _note_channel).
    sizes_pool: bool = False
    out_dir: Path = field(init=False)

    def __post_init__(self) -> None:
        self.out_dir = self.root / "out"

    def needs_download(self) -> list[str]:
        """URLs the entrypoint asked for (category ``needs_download``), validated; else []."""
        from ._fetch._downloads import validate_url

        return [validate_url(url) for url in needs_download_urls(self.result)]

    def cleanup(self) -> None:
        # Never raises: the job folder holds what the sandbox left (deep chains,
        # locked folders, FIFOs), and a model already built must not be lost to it.
        size = 0
        if self.weights is not None:
            if self.sizes_pool:
                try:
                    size = self.weights.size()
                except OSError:  # already closed
                    pass
            self.weights.close()  # tensors mapped from it keep their pages
        try:
            if self.owned is not None:
                self.owned.release()
            else:
                remove_tree(self.root)
        except Exception:  # noqa: BLE001 - logged; a leftover folder beats a lost model
            logger.warning("could not remove the job folder %s", self.root, exc_info=True)
        if size:
            # Last, the model built, the cache store handed to its writer and the folder
            # gone: the spare's fill (hypervisor faults on a reporting VM) overlaps none of it.
            from ._channel._huge_tmpfs import note_job_weights

            note_job_weights(size)

    def __enter__(self) -> "Job":
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


def sandbox_environment(job_root: Path) -> dict[str, str]:
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
    return env


def _request_json(job: JobRequest) -> Request:
    request: Request = {
        "protocol": PROTOCOL,
        "action": job.action,
        "repo_dir": str(job.repo_dir) if job.repo_dir is not None else None,
        "entrypoint": job.entrypoint,
        "export": job.export,
    }
    if job.checkpoint is not None:
        request["checkpoint"] = str(job.checkpoint)
        request["weights_only"] = job.weights_only
    if job.deferred is not None:
        request["deferred"] = dict(job.deferred)  # type: ignore[typeddict-item]
    if job.audit:
        request["audit"] = True
    return request


Observer = Callable[[Path, SandboxResult], None]


def run_job(
    job: JobRequest, *, python_env: PythonEnv, backend: SandboxBackend, hub_dir: Path, observe: Observer | None = None,
) -> Job:
    """Run ``job`` with ``python_env``'s interpreter in ``backend``, under ``hub_dir``/jobs,
    and return it with its validated ``result.json``.

    ``observe(out_dir, sandbox_result)`` is called once the sandbox has ended and before
    anything is judged (so also for a run that failed or hit a limit, before its folder
    goes): ``safehub audit`` reads its telemetry there. It must treat out/ as hostile.

    A job a warm worker can take (safehub/_worker.py) runs there, in a child forked
    for it; otherwise, or when the worker cannot take it, in a fresh sandbox.
    Raises a typed error if the runner failed, was killed, or reported an error.
    The caller must ``cleanup()`` the returned job (it is a context manager).
    """
    from . import _worker
    from ._guard import confine_job

    job = confine_job(job, backend)  # the organisation policy's sandbox minimum and limits, before any spawn
    # An audited job runs cold: its resource figures are then its own, not a worker's.
    why_not = "an audited job" if job.audit else _worker.eligible(
        job.action, backend=backend, limits=job.limits, allow_gpu=job.allow_gpu,
        checkpoint=job.checkpoint is not None, staged_bytes=_staged_bytes(job))
    if why_not is None and job.repo_dir is not None:
        weights = _weights_memfd(job, backend)
        try:
            ran = _worker.run_in_worker(
                limits=job.limits, python_env=python_env, repo_dir=job.repo_dir, backend=backend,
                hub_dir=hub_dir, layout=lambda root, confine: _layout(job, root, confine=confine, copy_files=True),
                environment=sandbox_environment, weights_fd=weights.fd if weights is not None else None,
                after_send=getattr(weights, "drop_writer", None),
            )
        except BaseException:
            if weights is not None:
                weights.close()
            raise
        if ran is None:
            # A job the worker did not take runs cold with a memfd of its own: nothing
            # the worker may have done with this one can reach it.
            if weights is not None:
                weights.close()
        else:
            root, sandbox_result = ran
            sizes_pool = _note_channel(job, backend, sandbox_result, weights)
            try:
                return _finish(job, root, sandbox_result, observe=observe, weights=weights, sizes_pool=sizes_pool)
            except BaseException:
                remove_tree(root)
                if weights is not None:
                    weights.close()
                raise
    jobs = hub_dir / "jobs"
    if jobs not in _SWEPT:  # once per process and hub: folders of crashed loads (args, weights)
        _SWEPT.add(jobs)
        sweep_unowned(jobs, "job-")
    owned = make_owned_dir(jobs, "job-")
    root = owned.path
    weights = None
    try:
        weights = _weights_memfd(job, backend)
        env = sandbox_environment(root)
        if weights is not None:
            env[WEIGHTS_FD_ENV] = str(weights.fd)  # the number survives: subprocess pass_fds keeps it
        for sub in ("in", "out", "home", "tmp"):
            (root / sub).mkdir(mode=0o700)
        rdir = runner_dir()
        sandbox_request = SandboxRequest(
            argv=[str(python_env.python), "-I", "-B", str(rdir / "safehub_runner.py"), str(root)],
            env=env,
            cwd=root / "tmp",
            ro_paths=(
                *python_env.ro_paths,
                *([job.repo_dir] if job.repo_dir is not None else []),
                rdir,
                root / "in",
                *([job.checkpoint] if job.checkpoint is not None else []),
            ),
            rw_paths=(root / "out",),
            scratch_paths=(root / "home", root / "tmp"),
            limits=job.limits,
            allow_gpu=job.allow_gpu,
            runner_dir=rdir,
            hidden_paths=python_env.hidden_paths,
            pass_fds=(weights.fd,) if weights is not None else (),
            after_spawn=getattr(weights, "drop_writer", None),
        )
        # What the runner applies to itself before repo code (rlimits, Landlock).
        _layout(job, root, confine=backend.confine_config(sandbox_request))
        logger.debug("running %s job for %s in the %s sandbox", job.action, job.repo_dir, backend.name)
        sandbox_result = backend.run(sandbox_request)
        sandbox_result.details.setdefault("worker", {"used": False, **({"why_not": why_not} if why_not else {})})
        sizes_pool = _note_channel(job, backend, sandbox_result, weights)
        return _finish(job, root, sandbox_result, owned=owned, observe=observe, weights=weights, sizes_pool=sizes_pool)
    except BaseException:
        if weights is not None:
            weights.close()
        owned.release()
        raise


def _weights_memfd(job: JobRequest, backend: SandboxBackend) -> Any:
    """Where the job's weights go when its backend passes descriptors to the runner
    (see the module docstring): a file on the host's huge-page tmpfs when every
    process of the sandbox ends with it, else (or where there is no such tmpfs) a
    fresh memfd; None for other backends: out/weights.safetensors."""
    if job.action not in ("load", "export") or not getattr(backend, "passes_fds", False):
        return None
    if getattr(backend, "ends_every_process", False):
        from ._channel._huge_tmpfs import weights_tmpfile

        tmpfile = weights_tmpfile()
        if tmpfile is not None:
            return tmpfile
    from ._channel._memfd import WeightsMemfd

    return WeightsMemfd()


def _note_channel(job: JobRequest, backend: SandboxBackend, sandbox_result: SandboxResult, weights: Any) -> bool:
    """Which way the weights came back ("huge-tmpfs", "memfd", "file"), for
    safehub_info's sandbox details. True when their size should go to the weights
    pool (Job.sizes_pool): a backend whose jobs take its spares."""
    if job.action not in ("load", "export"):
        return False
    sandbox_result.details["weights_channel"] = weights.channel if weights is not None else "file"
    if getattr(weights, "warm_spare", False):
        sandbox_result.details["weights_warm_spare"] = True
    return weights is not None and bool(getattr(backend, "ends_every_process", False))


_PLAIN_SCALARS = (type(None), bool, int, float, complex, str, bytes)


def _plain(value: object, depth: int = 0) -> bool:
    """Only builtin scalars in tuples, lists and dicts: the standard pickle writes
    them as well as cloudpickle does, without importing it (a few ms per process)."""
    if type(value) in _PLAIN_SCALARS:
        return True
    if depth > 20:
        return False
    if isinstance(value, (tuple, list)) and type(value) in (tuple, list):
        return all(_plain(v, depth + 1) for v in value)
    if isinstance(value, dict) and type(value) is dict:
        return all(_plain(k, depth + 1) and _plain(v, depth + 1) for k, v in value.items())
    return False


def _dump_args(value: object, f: Any) -> None:
    """Host -> sandbox: pickle what the caller passed (cloudpickle for anything but
    plain data: functions, classes and tensors by value)."""
    if _plain(value):
        import pickle

        pickle.dump(value, f, protocol=pickle.HIGHEST_PROTOCOL)  # what cloudpickle uses
    else:
        import cloudpickle

        cloudpickle.dump(value, f)


def _staged_bytes(job: JobRequest) -> int:
    """The size of the host files ``job`` stages in in/, downloads included (a
    missing one counts as 0: staging it fails the job either way)."""
    total = 0
    for src in (*job.in_files.values(), *job.downloads.values()):
        try:
            total += os.stat(src).st_size
        except OSError:
            pass
    return total


def _layout(job: JobRequest, root: Path, *, confine: dict[str, object], copy_files: bool = False) -> None:
    """Write the job's in/ folder: request.json (with ``confine``), the pickled
    arguments, example inputs and staged files (``copy_files``: copies, never hard
    links, for a warm worker's job, whose in/ its child can write)."""
    request = _request_json(job)
    with open(root / "in" / ARGS_FILE, "wb") as f:
        if job.args_pickle is not None:
            f.write(job.args_pickle)
        else:
            _dump_args((tuple(job.args), dict(job.kwargs)), f)
    for name, src in job.in_files.items():
        _stage_file(Path(src), root / "in" / name, copy=copy_files)
    if job.example_inputs is not None:
        with open(root / "in" / EXAMPLE_INPUTS_FILE, "wb") as f:
            _dump_args(job.example_inputs, f)

    if job.downloads:
        from ._fetch._downloads import stage_downloads

        # Files the host fetched for this entrypoint, linked into in/ (read-only there).
        stage_downloads(job.downloads, root / "in", copy=copy_files)
    request["confine"] = confine
    (root / "in" / REQUEST_FILE).write_text(json.dumps(request), encoding="utf-8")
    _share_read_only(root / "in")


def _finish(job: JobRequest, root: Path, sandbox_result: SandboxResult, owned: Any = None,
            observe: Observer | None = None, weights: Any = None, sizes_pool: bool = False) -> Job:
    """Check how the run ended and read its result.json (the caller removes
    ``root`` on error)."""
    if observe is not None:
        observe(root / "out", sandbox_result)
    _raise_for_sandbox(sandbox_result)
    result = read_result(root / "out")
    if not needs_download_urls(result):  # the retry's run reports them, once
        raise_runner_warnings(result, repo=str(job.repo_dir or job.checkpoint or "the job"))
    raise_for_runner_error(result, entrypoint=job.entrypoint, repo=str(job.repo_dir), import_hint=missing_module_hint)
    done = Job(root=root, result=result, sandbox=sandbox_result, owned=owned, weights=weights, sizes_pool=sizes_pool)
    done.needs_download()  # validates the URLs now: a bad report fails here, and the folder goes
    return done


def _stage_file(src: Path, dst: Path, *, copy: bool = False) -> None:
    """A host file into in/ (read-only there): a hard link where possible, else a
    copy; always a copy with ``copy`` (an in/ the job can write: a link would let it
    write the host's file)."""
    import shutil

    if dst.name in (REQUEST_FILE, ARGS_FILE, EXAMPLE_INPUTS_FILE, "downloads") or dst.name.startswith("."):
        raise ValueError(f"in/ file name {dst.name!r} is taken")
    if not copy:
        try:
            os.link(src, dst)
            return
        except OSError:
            pass
    shutil.copyfile(src, dst)


def _share_read_only(folder: Path) -> None:
    """in/ is bound read-only into the sandbox, whose uid may differ from ours (as
    root, bwrap runs the job as a fresh uid): make it readable whatever the umask.
    The job root above it stays 0700, so nobody else on the host gets in."""
    for dirpath, dirnames, filenames in os.walk(folder):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), 0o644, follow_symlinks=False)


def _raise_for_sandbox(sandbox: SandboxResult) -> None:
    """A run the backend ended, or a runner that died before reporting."""
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
            f"({sandbox.backend} backend). Its stderr ends with:\n{stderr_tail(sandbox.stderr)}",
            hint="if the repo crashed the interpreter, check its native dependencies",
        )


def _limit_text(limits: Limits, limit: str) -> str:
    return {
        "timeout": f"{limits.timeout_s:g} s wall clock",
        "memory": f"{limits.memory_bytes} bytes of memory",
        "pids": f"{limits.max_pids} processes",
        "disk": f"{limits.max_file_bytes} bytes per file / {limits.tmpfs_bytes} bytes of scratch",
        "cpu": f"{limits.cpu_time_s} s of CPU time",
    }.get(limit, limit)
