"""The runner's ``result.json``: read it strictly, and turn a reported error into one
typed exception.

Hostile input like everything under ``out/``: read through the bounded
:func:`~safehub._channel._files.read_output_file` and the strict
:func:`~safehub._channel._json.load_json`; every field that leaves this module is
checked for type and size, and every sandbox string is escaped.

Error categories (``safehub._contract.ERROR_CATEGORIES``) map to exceptions in
exactly one place, :func:`raise_for_runner_error` (like huggingface_hub's
``hf_raise_for_status``): nothing is decided from the text of a message.
"""

from __future__ import annotations

import re
import sys
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .._contract import (
    ERROR_CATEGORIES,
    MAX_DOWNLOAD_URLS,
    MAX_TIMING_S,
    MAX_WARNING_CHARS,
    MAX_WARNINGS,
    PROTOCOL,
    RESULT_FILE,
    RUNNER_TIMINGS,
    Result,
    RunnerError,
)
from .._errors import (
    EntrypointFailedError,
    EntrypointNotFoundError,
    ExportError,
    HubconfError,
    RunnerEnvironmentError,
    SandboxError,
    UnsafeSpecError,
    UnsupportedReturnError,
    escape_untrusted,
)
from ._files import read_output_file
from ._json import load_json

__all__ = [
    "read_result",
    "raise_for_runner_error",
    "raise_runner_warnings",
    "needs_download_urls",
    "downloads_used",
    "read_summary",
    "stderr_tail",
    "MAX_RESULT_JSON_BYTES",
    "MAX_DOWNLOAD_URLS",
]

MAX_RESULT_JSON_BYTES = 4 * 1024 * 1024
# The fixed classes a sandbox warning may come back as (contract.WARNING_CATEGORIES):
# looked up in this table, never by resolving a name.
_WARNING_CLASSES: dict[str, type[Warning]] = {
    "UserWarning": UserWarning,
    "DeprecationWarning": DeprecationWarning,
    "PendingDeprecationWarning": PendingDeprecationWarning,
    "FutureWarning": FutureWarning,
    "RuntimeWarning": RuntimeWarning,
    "SyntaxWarning": SyntaxWarning,
    "ImportWarning": ImportWarning,
    "UnicodeWarning": UnicodeWarning,
    "BytesWarning": BytesWarning,
    "ResourceWarning": ResourceWarning,
}
# A remote exception's type name: dotted identifiers (anything else is shown escaped).
_TYPE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_<>][A-Za-z0-9_<>]*)*$")
# Top-level modules the runner's own code (and torch's lazy imports under it) can
# need: the torch family's import names and numpy. result.json is written by code
# the repo controls, so an "environment" report naming anything else is the
# repo's text, and the host must not tell the user to pip-install it on the host.
RUNNER_IMPORTS = frozenset({
    "torch", "torchvision", "torchaudio", "functorch", "torchgen", "triton", "numpy", "sympy", "mpmath",
    "networkx", "jinja2", "markupsafe", "fsspec", "filelock", "typing_extensions", "setuptools", "pkg_resources",
})
_MODULE_RE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.")


def read_result(out_dir: Path) -> Result:
    """``out/result.json`` as a :class:`~safehub._contract.Result`: protocol and status
    checked, ``error`` (when present) an object of strings with a known shape."""
    raw = read_output_file(out_dir, RESULT_FILE, max_bytes=MAX_RESULT_JSON_BYTES)
    doc = load_json(raw, f"the runner's {RESULT_FILE}", cap_bytes=MAX_RESULT_JSON_BYTES)
    if not isinstance(doc, dict) or doc.get("protocol") != PROTOCOL or doc.get("status") not in ("ok", "error"):
        raise UnsafeSpecError(f"the runner's {RESULT_FILE} does not follow protocol {PROTOCOL}")
    if doc["status"] == "error" and not isinstance(doc.get("error"), dict):
        raise UnsafeSpecError("the runner reported an error without details")
    result: Result = doc  # type: ignore[assignment]  # fields below are checked where they are read
    return result


def _error_of(result: Result) -> RunnerError | None:
    if result["status"] != "error":
        return None
    return result.get("error")


def needs_download_urls(result: Result) -> list[str]:
    """The URLs of a ``needs_download`` report (shape only: the download broker
    validates each URL before fetching), else ``[]``."""
    error = _error_of(result)
    if error is None or error.get("category") != "needs_download":
        return []
    urls: Any = error.get("urls")
    if not isinstance(urls, list) or not urls or not all(isinstance(u, str) for u in urls):
        raise UnsafeSpecError("the runner's needs_download report has no list of URL strings")
    if len(urls) > MAX_DOWNLOAD_URLS:
        raise UnsafeSpecError(
            f"the entrypoint asked for {len(urls)} downloads, more than the {MAX_DOWNLOAD_URLS} allowed",
        )
    return list(dict.fromkeys(urls))


def downloads_used(result: Result, staged: Iterable[str]) -> list[str] | None:
    """The staged URLs a load's entrypoint was served (for the download memo), or None
    when the result does not say (a runner from before the field). Each must be one the
    host staged; anything else is refused."""
    raw: Any = result.get("downloads_used")
    if raw is None:
        return None
    allowed = set(staged)
    if not isinstance(raw, list) or len(raw) > MAX_DOWNLOAD_URLS or not all(
        isinstance(u, str) and u in allowed for u in raw
    ):
        raise UnsafeSpecError(
            f"the runner's downloads_used is not a list of at most {MAX_DOWNLOAD_URLS} URLs the host staged"
        )
    return list(dict.fromkeys(raw))


def raise_runner_warnings(result: Result, *, repo: str) -> None:
    """Raise again, on the host, the warnings repo code raised in the sandbox: each
    as one of a fixed set of built-in categories (unknown: UserWarning), its message
    escaped and bounded, with where it came from."""
    raw: Any = result.get("warnings")
    if raw is None:
        return
    if not isinstance(raw, list) or len(raw) > MAX_WARNINGS:
        raise UnsafeSpecError(f"the runner's warnings are not a list of at most {MAX_WARNINGS} entries")
    for item in raw:
        if not isinstance(item, dict) or not isinstance(item.get("message"), str) \
                or not isinstance(item.get("category"), str):
            raise UnsafeSpecError("a warning in the runner's result is not {category, message} strings")
        category = _WARNING_CLASSES.get(item["category"], UserWarning)
        text = escape_untrusted(item["message"], limit=MAX_WARNING_CHARS)
        where = escape_untrusted(repo, limit=200)
        warnings.warn(f"{text} (raised inside the sandbox by {where})", category, stacklevel=2)


def _type_name(error: RunnerError) -> str:
    value: Any = error.get("type", "")
    if isinstance(value, str) and len(value) <= 200 and _TYPE_NAME.match(value):
        return value
    return escape_untrusted(value if isinstance(value, str) else str(value), limit=200)


def _text(error: RunnerError, key: str, limit: int) -> str:
    value: Any = error.get(key, "")
    return escape_untrusted(value if isinstance(value, str) else str(value), limit=limit)


def _module_name(error: RunnerError) -> str:
    """The missing module's dotted name, only if it looks like one."""
    name: Any = error.get("module")
    if isinstance(name, str) and 0 < len(name) <= 200 and set(name) <= _MODULE_RE_CHARS and not name.startswith("."):
        return name
    return ""


NESTED_HUB_HINT = (
    "this repo loads another hub repo (for a backbone) with torch.hub.load, which safehub does not support yet: "
    "look for an entrypoint argument that skips it, or load the other repo with safehub.load on its own; "
    "torch.hub.load runs both repos' code in your process, so use it only if you trust both"
)


def raise_for_runner_error(
    result: Result, *, entrypoint: str | None, repo: str, import_hint: Callable[[str, str], str | None] | None = None
) -> None:
    """Raise the typed exception for the runner's reported error; return if it
    reported success or a ``needs_download`` (the caller fetches and retries).

    ``import_hint(type, message)``: the fix for repo code that failed to import a
    module (safehub._env knows the packages), or None; given by the caller so that
    this layer does not import the environment layer."""
    error = _error_of(result)
    if error is None:
        return
    raw_category: Any = error.get("category")
    category = raw_category if raw_category in ERROR_CATEGORIES else ""
    if category == "needs_download":
        needs_download_urls(result)  # its shape is checked even here
        return
    remote_type = _type_name(error)
    message = _text(error, "message", 2000)
    tb = _text(error, "traceback", 8000)
    missing = import_hint(remote_type, message) if import_hint is not None else None
    if remote_type == "_downloads.NestedHubLoad":  # the runner's own refusal (runners/_downloads.py)
        missing = NESTED_HUB_HINT
    if category == "hubconf":
        raise HubconfError(
            f"importing hubconf.py of {repo} failed inside the sandbox: {remote_type}: {message}\n{tb}",
            hint=missing or "the repo may need a dependency its hubconf does not declare",
        )
    if category == "entrypoint_missing":
        raise EntrypointNotFoundError(message, hint="run safehub.list() on the repo to see its entrypoints")
    if category == "entrypoint":
        raise EntrypointFailedError(
            f"entrypoint {entrypoint!r} raised {remote_type} inside the sandbox: {message}",
            remote_type=remote_type,
            remote_message=message,
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
        raise ExportError(message, hint="pass example_inputs=... or choose export='aten' / 'fx'")
    if category == "environment":
        module = _module_name(error)
        top = module.split(".")[0] if module else ""
        if module and top not in RUNNER_IMPORTS:
            raise RunnerEnvironmentError(
                f"the sandbox reported that safehub's code could not import {module!r} ({remote_type}: {message}); "
                "safehub's runner imports only the standard library, torch and torch's own requirements, so this "
                "report came from the repo's code",
                module=None,
                hint=f"do not install {module!r} on the host for this; the repo {repo} may be broken or hostile",
            )
        raise RunnerEnvironmentError(
            f"safehub's sandbox code could not import {module or 'a module'!r} in the environment it runs in "
            f"({remote_type}: {message}). This is a problem of the Python environment, not of the repo or its export",
            module=module or None,
            hint=(
                f"install the package that provides {top or 'it'!r} into the Python safehub runs on "
                f"(`{sys.executable} -m pip install {top or '<package>'}`): every repo's venv shares that "
                "Python's torch and the packages installed beside it. Then retry"
            ),
        )
    shown = escape_untrusted(str(raw_category), limit=40) if raw_category is not None else "unknown"
    raise SandboxError(f"the runner failed ({shown or 'unknown'}): {remote_type}: {message}\n{tb}")


def stderr_tail(stderr: bytes) -> str:
    """The end of what the runner wrote to stderr (captured, already cut by the
    backend), escaped for a message."""
    return escape_untrusted(stderr, limit=3000)


_SUMMARY_INTS = ("nodes", "tensors", "leaves")


def _seconds(value: Any) -> bool:
    # `0 <= v < MAX` is False for NaN; bool is an int subclass and is refused.
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < MAX_TIMING_S


def read_summary(result: Result) -> dict[str, Any]:
    """Only the known, typed fields of the runner's summary: it came from the
    sandbox, and it ends up in logs, the CLI and ``safehub_info``."""
    raw: Any = result.get("summary")
    out: dict[str, Any] = {"root": None, "modules": {}}
    if not isinstance(raw, dict):
        return out
    if raw.get("root") in ("module", "tuple", "list", "dict", "object"):
        out["root"] = raw["root"]
    if isinstance(raw.get("weight_bytes"), int) and not isinstance(raw.get("weight_bytes"), bool):
        out["weight_bytes"] = raw["weight_bytes"]
    timings = raw.get("timings")
    if isinstance(timings, dict):
        # Only the contract's names, only finite seconds in range: the rest is dropped.
        clean_t = {key: float(timings[key]) for key in RUNNER_TIMINGS if _seconds(timings.get(key))}
        if clean_t:
            out["timings"] = clean_t
    modules = raw.get("modules")
    if not isinstance(modules, dict):
        return out
    for mid, info in list(modules.items())[:1024]:
        if not (isinstance(mid, str) and mid[:1] == "m" and mid[1:].isascii() and mid[1:].isdigit() and len(mid) <= 8):
            continue
        if not isinstance(info, dict):
            continue
        clean: dict[str, Any] = {}
        if info.get("mode") in ("fx", "aten", "deferred"):
            clean["mode"] = info["mode"]
        graphs = info.get("graphs")
        if isinstance(graphs, list):
            clean["graphs"] = [g for g in graphs if g in ("eval", "train")][:2]
        for key in _SUMMARY_INTS:
            value = info.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**53:
                clean[key] = value
        seconds = info.get("seconds")
        if isinstance(seconds, (int, float)) and not isinstance(seconds, bool) and 0 <= seconds < 1e7:
            clean["seconds"] = float(seconds)
        for flag in ("dynamic_batch", "deferred"):
            if isinstance(info.get(flag), bool):
                clean[flag] = info[flag]
        from .._summary import clean_attempts, clean_text

        if "attempts" in info:
            clean["attempts"] = clean_attempts(info["attempts"])
        if clean_text(info.get("fx_error")) is not None:
            clean["fx_error"] = clean_text(info["fx_error"])
        out["modules"][mid] = clean
    return out
