"""The sandboxed runner: the only safehub code that ever imports a repo's hubconf.

It runs inside the sandbox, under the repo's venv interpreter, in isolated mode::

    <venv>/bin/python -I -B safehub_runner.py <job_dir>

It uses the standard library and torch only, and never imports
safehub. It reads ``<job_dir>/in/`` (written by the host, read-only here) and
writes only into ``<job_dir>/out/``. See ``safehub/_jobs.py`` for the protocol.

Exit codes: 0 result written (status ok or a reported error); anything else
means the host gets no usable result.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

# -I drops the script folder from sys.path; the runner's own helpers live beside it.
_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import _confine  # noqa: E402  (must run before anything from the repo)

PROTOCOL = 1
MAX_TRACEBACK = 16_000


def _write_json(path: str, payload: dict) -> None:
    tmp = path + ".partial"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(payload, f, allow_nan=False)
    os.replace(tmp, path)


def _error(category: str, exc: BaseException) -> dict:
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return {
        "status": "error",
        "error": {
            "category": category,
            "type": type(exc).__name__,
            "message": str(exc)[:4000],
            "traceback": tb[-MAX_TRACEBACK:],
        },
    }


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


def _list_entrypoints(hub) -> list[dict]:
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
    path = os.path.join(in_dir, "args.pkl")
    if not os.path.exists(path):
        return (), {}
    with open(path, "rb") as f:
        args, kwargs = pickle.load(f)
    return tuple(args), dict(kwargs)


def _read_example_inputs(in_dir: str):
    import pickle

    path = os.path.join(in_dir, "example_inputs.pkl")
    if not os.path.exists(path):
        return None
    with open(path, "rb") as f:
        return pickle.load(f)


def run(job_dir: str) -> dict:
    in_dir = os.path.join(job_dir, "in")
    out_dir = os.path.join(job_dir, "out")
    with open(os.path.join(in_dir, "request.json"), encoding="utf-8") as f:
        request = json.load(f)
    if request.get("protocol") != PROTOCOL:
        raise RuntimeError(f"runner speaks protocol {PROTOCOL}, host sent {request.get('protocol')!r}")

    _confine.apply(request.get("confine") or {})

    action = request["action"]
    if action == "convert":
        import _convert  # imports torch

        try:
            summary = _convert.convert(
                request["checkpoint"], out_dir, weights_only=bool(request.get("weights_only")),
                scratch=os.environ.get("TMPDIR", "/tmp"),
            )
        except BaseException as exc:  # noqa: BLE001
            return _error("checkpoint", exc)
        return {"status": "ok", "summary": summary}

    import _downloads  # serves host-fetched weight URLs; unlisted ones -> needs_download

    _downloads.install(in_dir)
    try:
        hub = _import_hubconf(request["repo_dir"])
    except BaseException as exc:  # noqa: BLE001 - everything is reported, nothing escapes
        return _downloads.check() or _error("hubconf", exc)

    if action == "list":
        return {"status": "ok", "entrypoints": _list_entrypoints(hub)}

    if action != "load":
        raise RuntimeError(f"unknown action {action!r}")

    name = request["entrypoint"]
    entry = getattr(hub, name, None)
    if entry is None or name.startswith("_") or not callable(entry):
        return _error("entrypoint", RuntimeError(f"Cannot find callable {name} in hubconf"))
    try:
        args, kwargs = _read_args(in_dir)
        obj = entry(*args, **kwargs)
    except BaseException as exc:  # noqa: BLE001
        return _downloads.check() or _error("entrypoint", exc)
    if _downloads.check():  # the repo swallowed the NeedsDownload: never export without its weights
        return _downloads.check()

    import _export  # imported late: it imports torch

    try:
        example_inputs = _read_example_inputs(in_dir)
        summary = _export.export_object(
            obj,
            out_dir,
            options=request.get("export") or {},
            example_inputs=example_inputs,
            hubconf=hub,
            entrypoint=name,
        )
    except _export.UnsupportedReturn as exc:
        return _error("unsupported_return", exc)
    except BaseException as exc:  # noqa: BLE001
        return _error("export", exc)
    return {"status": "ok", "summary": summary}


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: safehub_runner.py <job_dir>", file=sys.stderr)
        return 2
    job_dir = argv[1]
    result = run(job_dir)
    result["protocol"] = PROTOCOL
    _write_json(os.path.join(job_dir, "out", "result.json"), result)
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown (~0.7 s with torch loaded) and any atexit hooks the
    # repo registered: the result is already on disk.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
