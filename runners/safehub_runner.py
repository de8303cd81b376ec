"""The sandboxed runner: the only safehub code that ever imports a repo's hubconf.

It runs inside the sandbox, under the repo's venv interpreter, in isolated mode::

    <venv>/bin/python -I -B safehub_runner.py <job_dir>

It uses the standard library and torch only, and never imports
safehub. It reads ``<job_dir>/in/`` (written by the host, read-only here) and
writes only into ``<job_dir>/out/``. The protocol (file names, request and result
shapes, error categories) is ``_contract.py``, the very file the host imports.

Exit codes: 0 result written (status ok or a reported error); anything else
means the host gets no usable result.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import traceback
import warnings

# -I drops the script folder from sys.path; the runner's own helpers live beside it.
_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import _confine  # noqa: E402  (must run before anything from the repo)
from _contract import (  # noqa: E402
    ARGS_FILE,
    EXAMPLE_INPUTS_FILE,
    MAX_WARNING_CHARS,
    MAX_WARNINGS,
    PROTOCOL,
    REQUEST_FILE,
    RESULT_FILE,
    Request,
    Result,
    RunnerError,
    RunnerWarning,
    WARNING_CATEGORIES,
)

MAX_TRACEBACK = 16_000

# Warnings raised while repo code ran (see _collect_warnings), reported in result.json.
_WARNINGS: list[RunnerWarning] = []
# The audit telemetry module (_audit_hook) when the request asked for it, else None.
_AUDIT = None


def _audit_phase(phase: str) -> None:
    if _AUDIT is not None:
        _AUDIT.set_phase(phase)


def _audit_exception(exc: BaseException) -> None:
    if _AUDIT is not None:
        _AUDIT.note_exception(exc)


def _warning_category(cls: type) -> str:
    """The nearest built-in category of a warning class (a repo's own subclass of
    FutureWarning is reported as FutureWarning)."""
    for base in getattr(cls, "__mro__", ()):
        if getattr(base, "__module__", None) == "builtins" and base.__name__ in WARNING_CATEGORIES:
            return base.__name__
    return "UserWarning"


@contextlib.contextmanager
def _collect_warnings():
    """Record every warning raised inside (repo code, or libraries on its behalf) so
    the host can raise it again; distinct ones only, at most MAX_WARNINGS."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            for record in caught:
                try:
                    text = str(record.message)[:MAX_WARNING_CHARS]
                except Exception:  # noqa: BLE001 - a hostile __str__
                    text = "(a warning whose message could not be read)"
                entry: RunnerWarning = {"category": _warning_category(record.category), "message": text}
                if entry not in _WARNINGS and len(_WARNINGS) < MAX_WARNINGS:
                    _WARNINGS.append(entry)


def _type_name(exc: BaseException) -> str:
    """The exception's qualified type name (``mypkg.errors.ShapeError``); built-ins by
    their plain name, as Python prints them."""
    cls = type(exc)
    module = getattr(cls, "__module__", None)
    name = getattr(cls, "__qualname__", None) or cls.__name__
    if not isinstance(module, str) or module == "builtins":
        return str(name)[:200]
    return f"{module}.{name}"[:200]


def _write_json(path: str, payload: Result) -> None:
    tmp = path + ".partial"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(payload, f, allow_nan=False)
    os.replace(tmp, path)


def _error(category: str, exc: BaseException, repo_dir: str | None = None) -> Result:
    """The error result; ``category`` is one of _contract.ERROR_CATEGORIES, chosen
    by where the error happened. In phases the runner drives (export, convert), an
    ImportError raised on behalf of the runner's own code is "environment"."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    if category in ("export", "checkpoint") and isinstance(exc, ImportError) and _imported_for_runner(exc, repo_dir):
        category = "environment"
    error: RunnerError = {
        "category": category,
        "type": _type_name(exc),
        "message": str(exc)[:4000],
        "traceback": tb[-MAX_TRACEBACK:],
    }
    if category == "environment" and isinstance(exc, ImportError) and isinstance(exc.name, str):
        error["module"] = exc.name[:200]
    return {"protocol": PROTOCOL, "status": "error", "error": error}


def _imported_for_runner(exc: ImportError, repo_dir: str | None) -> bool:
    """True when the import that failed was made for the runner's code, not the
    repo's: walking out from where it was raised, the first frame that belongs to
    either is the runner's. Library frames in between (torch importing sympy for
    torch.export) count for whoever called the library. The repo owns its folder
    and the packages its venv installed (all but the site folder torch comes from)."""
    frames = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append(os.path.realpath(tb.tb_frame.f_code.co_filename))
        tb = tb.tb_next
    repo_owned = _repo_prefixes(repo_dir) if repo_dir else []
    here = os.path.realpath(_HERE) + os.sep
    for filename in reversed(frames):
        if filename.startswith(here):
            return True
        if any(filename.startswith(prefix) for prefix in repo_owned):
            return False
    return False


def _repo_prefixes(repo_dir: str) -> list[str]:
    import site

    torch = sys.modules.get("torch")
    torch_file = getattr(torch, "__file__", None)
    torch_site = os.path.realpath(os.path.dirname(os.path.dirname(torch_file))) + os.sep if torch_file else None
    venv_sites = [os.path.realpath(p) + os.sep for p in site.getsitepackages()]
    return [os.path.realpath(repo_dir) + os.sep, *(p for p in venv_sites if p != torch_site)]


def _import_hubconf(repo_dir: str):
    """Import hubconf the way torch.hub does: repo on sys.path, module named hubconf."""
    import importlib.util

    sys.path.insert(0, repo_dir)
    path = os.path.join(repo_dir, "hubconf.py")
    spec = importlib.util.spec_from_file_location("hubconf", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["hubconf"] = module
    spec.loader.exec_module(module)
    return module


def _list_entrypoints(hub) -> list[dict[str, str | None]]:
    # Same rule as torch.hub.list: public callables in hubconf's namespace.
    out = []
    for name in dir(hub):
        if name.startswith("_"):
            continue
        obj = getattr(hub, name)
        if callable(obj):
            doc = getattr(obj, "__doc__", None)
            out.append({"name": name, "doc": doc if isinstance(doc, str) else None})
    return out


def _read_args(in_dir: str):
    import pickle

    # Host -> sandbox only: the host pickled these (cloudpickle) for us. Nothing the
    # sandbox writes is ever unpickled by the host.
    path = os.path.join(in_dir, ARGS_FILE)
    if not os.path.exists(path):
        return (), {}
    with open(path, "rb") as f:
        args, kwargs = pickle.load(f)
    return tuple(args), dict(kwargs)


def _read_example_inputs(in_dir: str):
    import pickle

    path = os.path.join(in_dir, EXAMPLE_INPUTS_FILE)
    if not os.path.exists(path):
        return None
    with open(path, "rb") as f:
        return pickle.load(f)


# Set by a warm worker (safehub_worker.py) in the process its job children fork
# from: the seccomp filter the host gave it for every job ("worker_child"), applied
# with the job's own confinement. Empty in a cold run.
WORKER_CONFINE: dict = {}


def run(job_dir: str) -> Result:
    in_dir = os.path.join(job_dir, "in")
    out_dir = os.path.join(job_dir, "out")
    with open(os.path.join(in_dir, REQUEST_FILE), encoding="utf-8") as f:
        request: Request = json.load(f)
    if request.get("protocol") != PROTOCOL:
        raise RuntimeError(f"runner speaks protocol {PROTOCOL}, host sent {request.get('protocol')!r}")

    confine = {**WORKER_CONFINE, **dict(request.get("confine") or {})}
    if request.get("action") in ("load", "export"):
        import _safetensors_write

        wfd = _safetensors_write.weights_fd()  # the host's weights memfd survives close_fds
        if wfd is not None and confine.get("close_fds"):
            confine["keep_fd"] = wfd
    _confine.apply(confine)

    action = request["action"]
    if action == "convert":
        try:
            import _convert  # imports torch

            with _collect_warnings():
                summary = _convert.convert(
                    request["checkpoint"], out_dir, weights_only=bool(request.get("weights_only")),
                    scratch=os.environ.get("TMPDIR", "/tmp"),
                )
        except BaseException as exc:  # noqa: BLE001
            return _error("checkpoint", exc)
        return {"protocol": PROTOCOL, "status": "ok", "summary": summary}

    import _downloads  # serves host-fetched weight URLs; unlisted ones -> needs_download

    timings: dict[str, float] = {}  # seconds per part, reported in the load summary
    mark = time.perf_counter()

    def lap(part: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        timings[part] = round(now - mark, 6)
        mark = now

    try:
        _downloads.install(in_dir)  # the runner's first import of torch
    except ImportError as exc:
        return _error("environment", exc)
    lap("import_torch")
    repo_dir = request["repo_dir"]
    assert repo_dir is not None, "the host sends repo_dir for list and load"
    if request.get("audit") and action == "load":
        global _AUDIT
        import _audit_hook  # the hook goes in before any repo code runs

        _audit_hook.start(out_dir, repo_dir, job_dir)
        _AUDIT = _audit_hook
    try:
        with _collect_warnings():
            hub = _import_hubconf(repo_dir)
    except BaseException as exc:  # noqa: BLE001 - everything is reported, nothing escapes
        _audit_exception(exc)
        return _downloads.check() or _error("hubconf", exc)

    if action == "list":
        return {"protocol": PROTOCOL, "status": "ok", "entrypoints": _list_entrypoints(hub)}

    if action not in ("load", "export"):
        raise RuntimeError(f"unknown action {action!r}")
    lap("hubconf")

    name = request["entrypoint"] or ""
    entry = getattr(hub, name, None)
    if entry is None or name.startswith("_") or not callable(entry):
        return _error("entrypoint_missing", RuntimeError(f"Cannot find callable {name} in hubconf"))
    _audit_phase("entrypoint")
    try:
        with _AUDIT.runner_only() if _AUDIT is not None else contextlib.nullcontext():
            args, kwargs = _read_args(in_dir)
        with _collect_warnings():
            obj = entry(*args, **kwargs)
    except BaseException as exc:  # noqa: BLE001
        _audit_exception(exc)
        return _downloads.check() or _error("entrypoint", exc)
    swallowed = _downloads.check()
    if swallowed:  # the repo swallowed the NeedsDownload: never export without its weights
        return swallowed
    lap("entrypoint")
    _audit_phase("export")

    try:
        import _export  # imported late: it imports torch
    except BaseException as exc:  # noqa: BLE001
        return _error("export", exc, repo_dir)
    if action == "export":  # deferred export at the module's first forward (_export_deferred)
        try:
            summary = _export.export_call(obj, out_dir, dict(request.get("deferred") or {}), in_dir)
        except _export.UnsupportedReturn as exc:
            return _error("unsupported_return", exc)
        except BaseException as exc:  # noqa: BLE001
            return _error("export", exc, repo_dir)
        return {"protocol": PROTOCOL, "status": "ok", "summary": summary}
    try:
        example_inputs = _read_example_inputs(in_dir)
        summary = _export.export_object(
            obj,
            out_dir,
            options=dict(request.get("export") or {}),
            example_inputs=example_inputs,
            hubconf=hub,
            entrypoint=name,
        )
    except _export.UnsupportedReturn as exc:
        return _error("unsupported_return", exc)
    except BaseException as exc:  # noqa: BLE001
        return _error("export", exc, repo_dir)
    lap("export")
    if isinstance(summary, dict):
        summary["timings"] = timings
    return {"protocol": PROTOCOL, "status": "ok", "summary": summary, "downloads_used": _downloads.served()}


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: safehub_runner.py <job_dir>", file=sys.stderr)
        return 2
    job_dir = argv[1]
    result = run(job_dir)
    if _AUDIT is not None:
        _AUDIT.finish()  # the closing counts; the runner's own result writing is not recorded
    result["protocol"] = PROTOCOL
    if _WARNINGS:
        result["warnings"] = list(_WARNINGS)
    _write_json(os.path.join(job_dir, "out", RESULT_FILE), result)
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown (~0.7 s with torch loaded) and any atexit hooks the
    # repo registered: the result is already on disk.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
