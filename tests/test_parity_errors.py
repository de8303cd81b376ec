"""Errors and warnings from the sandbox, as a torch.hub user meets them (issue 16):
the remote exception's qualified type and message, its traceback under ``-v``,
warnings raised by repo code coming back as warnings, a missing GPU caught before
anything runs, ``source=`` in any case.

The sandbox is a FakeBackend (the handler writes what a runner would) and the env
the host interpreter, as in tests/test_api_fake.py; the runner's own helpers are
run in process. The slow tier (test_torch_hub_port) covers the real sandbox."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest
import torch
from test_api_fake import HUBCONF, ok_handler

import safehub
from safehub._cli import main
from safehub._env import host_env
from safehub._errors import DeviceUnavailableError, EntrypointFailedError, UnsafeSpecError
from safehub._sandbox import FakeBackend, FakeJob

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "runners"))
import safehub_runner  # noqa: E402  (the runner's module: stdlib + torch only)


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "repo"
    d.mkdir()
    (d / "hubconf.py").write_text(HUBCONF)
    monkeypatch.setattr("safehub._env.ensure_env", lambda *a, **k: host_env())
    monkeypatch.setenv("SAFEHUB_HOME", str(tmp_path / "hub"))
    return d


class ShapeError(ValueError):
    pass


def _raise_and_report(exc: BaseException) -> dict:
    try:
        raise exc
    except BaseException as caught:  # noqa: BLE001
        return safehub_runner._error("entrypoint", caught)["error"]


def test_runner_reports_the_qualified_type_name() -> None:
    assert _raise_and_report(ShapeError("bad"))["type"] == f"{__name__}.ShapeError"
    assert _raise_and_report(ValueError("bad"))["type"] == "ValueError"  # built-ins as Python prints them


def entry_error(type_: str, message: str = "width must be even", tb: str = "Traceback ...\n  File hubconf.py\nX: y"):
    def handler(job: FakeJob) -> None:
        job.write_result({"status": "error", "error": {"category": "entrypoint", "type": type_, "message": message,
                                                       "traceback": tb}})

    return handler


def test_entrypoint_error_keeps_qualified_type_and_message(repo: Path) -> None:
    with pytest.raises(EntrypointFailedError) as info:
        safehub.load(str(repo), "tiny", source="local", sandbox=FakeBackend(entry_error("mypkg.errors.ShapeError")),
                     verbose=False)
    err = info.value
    assert (err.remote_type, err.remote_message) == ("mypkg.errors.ShapeError", "width must be even")
    assert "raised mypkg.errors.ShapeError inside the sandbox: width must be even" in str(err)
    # a type name that is not dotted identifiers is shown escaped, never trusted as a name
    with pytest.raises(EntrypointFailedError) as info:
        safehub.load(str(repo), "tiny", source="local", sandbox=FakeBackend(entry_error("a\x1b[2Jb")), verbose=False)
    assert "\x1b" not in info.value.remote_type and "\\x1b" in info.value.remote_type


def test_cli_shows_the_remote_traceback_with_v(repo: Path, monkeypatch, capsys) -> None:
    backend = FakeBackend(entry_error("mypkg.ShapeError", tb="Traceback (most recent call last):\n  File \"hubconf.py\", line 3\nmypkg.ShapeError: odd\x1b[31m"))
    monkeypatch.setattr("safehub._sandbox.get_backend", lambda *a, **k: backend)
    assert main(["load", str(repo), "tiny"]) == EntrypointFailedError.exit_code
    err = capsys.readouterr().err
    assert "run again with -v to see the sandbox traceback" in err and "File \"hubconf.py\"" not in err
    assert main(["-v", "load", str(repo), "tiny"]) == EntrypointFailedError.exit_code
    err = capsys.readouterr().err
    assert "the sandbox's traceback:\nTraceback (most recent call last):\n  File \"hubconf.py\", line 3" in err
    assert "\x1b" not in err
    assert main(["load", str(repo), "tiny", "--json"]) == EntrypointFailedError.exit_code
    assert '"remote_type": "mypkg.ShapeError"' in capsys.readouterr().out


# --- warnings ---------------------------------------------------------------------


class RepoWarning(FutureWarning):
    pass


def test_runner_records_warnings_with_builtin_categories() -> None:
    safehub_runner._WARNINGS.clear()
    try:
        with safehub_runner._collect_warnings():
            warnings.warn("old format", RepoWarning)
            warnings.warn("old format", RepoWarning)  # distinct ones only
            warnings.warn("plain")
            warnings.warn("deprecated", DeprecationWarning)
        assert safehub_runner._WARNINGS == [
            {"category": "FutureWarning", "message": "old format"},
            {"category": "UserWarning", "message": "plain"},
            {"category": "DeprecationWarning", "message": "deprecated"},
        ]
        with safehub_runner._collect_warnings():
            for i in range(100):
                warnings.warn(f"w{i}")
        assert len(safehub_runner._WARNINGS) == safehub_runner.MAX_WARNINGS
    finally:
        safehub_runner._WARNINGS.clear()


def ok_with_warnings(entries: object):
    def handler(job: FakeJob) -> None:
        ok_handler(job)
        import json

        result = json.loads((job.out_dir / "result.json").read_text())
        result["warnings"] = entries
        (job.out_dir / "result.json").write_text(json.dumps(result))

    return handler


def test_sandbox_warnings_come_back_as_warnings(repo: Path) -> None:
    entries = [
        {"category": "FutureWarning", "message": "will be deprecated in favor of default zipfile"},
        {"category": "builtins.eval", "message": "unknown category \x1b[2J"},
    ]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        safehub.load(str(repo), "tiny", source="local", sandbox=FakeBackend(ok_with_warnings(entries)), verbose=False)
    ours = [w for w in caught if "inside the sandbox" in str(w.message)]
    assert [w.category for w in ours] == [FutureWarning, UserWarning]  # unknown names: UserWarning, never resolved
    assert "will be deprecated in favor of default zipfile (raised inside the sandbox by" in str(ours[0].message)
    assert "\x1b" not in str(ours[1].message) and "\\x1b[2J" in str(ours[1].message)


@pytest.mark.parametrize("entries", [
    "not a list",
    [{"category": "UserWarning"}],
    [{"category": 3, "message": "x"}],
    [{"category": "UserWarning", "message": "x"}] * 33,
])
def test_forged_warnings_are_refused(repo: Path, entries: object) -> None:
    with pytest.raises(UnsafeSpecError, match="warning"):
        safehub.load(str(repo), "tiny", source="local", sandbox=FakeBackend(ok_with_warnings(entries)), verbose=False)


# --- device and source ------------------------------------------------------------


def test_missing_gpu_fails_before_anything_runs(repo: Path, monkeypatch, capsys) -> None:
    # "No GPU" is simulated so this holds on a GPU machine too.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    backend = FakeBackend(lambda job: pytest.fail("the sandbox must not run"))
    monkeypatch.setattr("safehub._env.ensure_env", lambda *a, **k: pytest.fail("no env may be built"))
    with pytest.raises(DeviceUnavailableError, match="no usable CUDA device") as info:
        safehub.load("nobody/nothing", "tiny", sandbox=backend, device="cuda")  # not even fetched
    assert isinstance(info.value, RuntimeError) and backend.jobs == []
    with pytest.raises(DeviceUnavailableError, match="is not a device torch knows"):
        safehub.load(str(repo), "tiny", source="local", sandbox=backend, device="gpu0")
    monkeypatch.setattr("safehub._sandbox.get_backend", lambda *a, **k: backend)
    assert main(["load", str(repo), "tiny", "--device", "cuda"]) == DeviceUnavailableError.exit_code
    err = capsys.readouterr().err
    assert "hint: pass --device cpu" in err and "Traceback" not in err


def test_source_is_case_insensitive(repo: Path, monkeypatch, capsys) -> None:
    for source in ("LOCAL", "Local"):
        got = safehub.load(str(repo), "tiny", source=source, sandbox=FakeBackend(ok_handler), verbose=False)
        assert got.safehub_info.source == "local"
    assert safehub.list(str(repo), source="LOCAL") == ["tiny"]
    backend = FakeBackend(ok_handler)
    monkeypatch.setattr("safehub._sandbox.get_backend", lambda *a, **k: backend)
    assert main(["list", "--source", "LOCAL", str(repo)]) == 0
    assert capsys.readouterr().out.strip() == "tiny"
