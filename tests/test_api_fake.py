"""The host's side of a load (safehub._api, safehub._jobs, the return channel) with a
fake sandbox backend: no sandbox, no venv, no second interpreter, so this runs in the
fast tier. The handler plays the runner and writes what a runner would.

What is faked, and why: the sandbox (FakeBackend runs nothing) and the env (the host
interpreter stands in for the repo's venv). Both are covered for real by the slow
tests (test_load_local, test_sandbox*, test_env); here only the host logic between
them is under test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

import safehub
import specgen
from safehub._env import host_env
from safehub._errors import (
    RunnerEnvironmentError,
    EntrypointFailedError,
    EntrypointNotFoundError,
    ExportError,
    HubconfError,
    SandboxError,
    SandboxLimitError,
    SandboxTimeoutError,
    UnsafeSpecError,
    UnsupportedReturnError,
)
from safehub._sandbox import FakeBackend, FakeJob, FakeOutcome, Limits

HUBCONF = '''
dependencies = []


def tiny(depth=1, width=4):
    """A tiny model."""
    raise AssertionError("the host never imports this")
'''


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    d = tmp_path / "repo"
    d.mkdir()
    (d / "hubconf.py").write_text(HUBCONF)
    # The env layer is faked too: the host interpreter stands in for the repo's venv.
    monkeypatch.setattr("safehub._env.ensure_env", lambda *a, **k: host_env())
    return d


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).eval()


def ok_handler(job: FakeJob) -> None:
    spec, weights = specgen.full_spec(model())
    specgen.write(job.out_dir, spec, weights)
    job.write_result({"status": "ok", "summary": {"root": "module", "modules": {"m0": {"mode": "fx", "graphs": ["eval"]}}}})


def error_handler(category: str, type_: str = "RuntimeError", message: str = "boom"):
    def handler(job: FakeJob) -> None:
        job.write_result({"status": "error", "error": {"category": category, "type": type_, "message": message, "traceback": "tb"}})

    return handler


def test_load_through_the_fake_backend_rebuilds_what_the_handler_wrote(repo: Path) -> None:
    backend = FakeBackend(ok_handler)
    got = safehub.load(str(repo), "tiny", 7, width=5, source="local", sandbox=backend, verbose=False)
    x = torch.randn(2, 3)
    with torch.no_grad():
        assert torch.allclose(got(x), model()(x))
    assert got.safehub_info.backend == "fake" and got.safehub_info.summary["modules"]["m0"]["mode"] == "fx"
    (job,) = backend.jobs
    assert job.request["action"] == "load" and job.request["entrypoint"] == "tiny"
    assert not job.root.exists(), "the job folder must be removed after the load"


def test_the_request_carries_limits_and_read_only_paths(repo: Path) -> None:
    backend = FakeBackend(ok_handler)
    limits = Limits(timeout_s=12.0, memory_bytes=2**30)
    safehub.load(str(repo), "tiny", source="local", sandbox=backend, limits=limits, verbose=False)
    req = backend.jobs[0].sandbox_request
    assert req.limits == limits
    assert repo.resolve() in [Path(p).resolve() for p in req.ro_paths]
    assert [Path(p).name for p in req.rw_paths] == ["out"]
    assert "GITHUB_TOKEN" not in req.env and "HOME" in req.env


@pytest.mark.parametrize(
    "handler, error",
    [
        (error_handler("hubconf", "ModuleNotFoundError", "No module named 'x'"), HubconfError),
        (error_handler("entrypoint_missing", "RuntimeError", "Cannot find callable tiny in hubconf"), EntrypointNotFoundError),
        # the category decides, not the message text
        (error_handler("entrypoint", "RuntimeError", "Cannot find callable tiny in hubconf"), EntrypointFailedError),
        (error_handler("environment", "ModuleNotFoundError", "No module named 'numpy'"), RunnerEnvironmentError),
        (error_handler("entrypoint", "ValueError", "bad width"), EntrypointFailedError),
        (error_handler("unsupported_return", "UnsupportedReturn", "a function"), UnsupportedReturnError),
        (error_handler("export", "ExportFailed", "cannot export"), ExportError),
        (error_handler("no_such_category"), SandboxError),
    ],
)
def test_reported_errors_become_typed_errors(repo: Path, handler, error) -> None:
    with pytest.raises(error):
        safehub.load(str(repo), "tiny", source="local", sandbox=FakeBackend(handler), verbose=False)


def test_entrypoint_failure_keeps_the_remote_type(repo: Path) -> None:
    with pytest.raises(EntrypointFailedError) as info:
        safehub.load(str(repo), "tiny", source="local", sandbox=FakeBackend(error_handler("entrypoint", "ValueError")), verbose=False)
    assert info.value.remote_type == "ValueError"


@pytest.mark.parametrize(
    "outcome, error",
    [
        (FakeOutcome(killed_by="timeout"), SandboxTimeoutError),
        (FakeOutcome(killed_by="memory"), SandboxLimitError),
        (FakeOutcome(returncode=-9, stderr=b"Segmentation fault\x1b[2J"), SandboxError),
    ],
)
def test_a_killed_or_crashed_runner_is_a_typed_error(repo: Path, outcome: FakeOutcome, error) -> None:
    with pytest.raises(error) as info:
        safehub.load(str(repo), "tiny", source="local", sandbox=FakeBackend(lambda job: outcome), verbose=False)
    assert "\x1b" not in str(info.value), "sandbox stderr must reach the message escaped"


@pytest.mark.parametrize(
    "raw",
    [b"", b"{", b"[1]", b'{"protocol": 99, "status": "ok"}', b'{"protocol": 1, "status": "maybe"}', b"[" * 100_000],
)
def test_a_bad_result_document_is_refused(repo: Path, raw: bytes) -> None:
    def handler(job: FakeJob) -> None:
        (job.out_dir / "result.json").write_bytes(raw)

    with pytest.raises((UnsafeSpecError, safehub.SpecTooLargeError)):
        safehub.load(str(repo), "tiny", source="local", sandbox=FakeBackend(handler), verbose=False)


def test_no_result_document_at_all_is_refused(repo: Path) -> None:
    with pytest.raises(safehub.SafehubError):
        safehub.load(str(repo), "tiny", source="local", sandbox=FakeBackend(lambda job: None), verbose=False)


def test_hostile_summary_text_never_reaches_safehub_info(repo: Path) -> None:
    def handler(job: FakeJob) -> None:
        ok_handler(job)
        job.write_result({"status": "ok", "summary": {
            "root": "module\x1b]0;pwned\x07", "weight_bytes": True,
            "modules": {"m0": {"mode": "fx; rm -rf /", "graphs": ["eval", "\x1b[2J"], "nodes": -1, "seconds": 1e300},
                        "../../etc": {"mode": "fx"}}}})

    got = safehub.load(str(repo), "tiny", source="local", sandbox=FakeBackend(handler), verbose=False)
    summary = got.safehub_info.summary
    assert summary == {"root": None, "modules": {"m0": {"graphs": ["eval"]}}}
    assert "\x1b" not in json.dumps(got.safehub_info.as_dict(), default=str)


def test_a_misspelt_entrypoint_fails_before_any_sandbox_runs(repo: Path) -> None:
    backend = FakeBackend(ok_handler)
    with pytest.raises(EntrypointNotFoundError):
        safehub.load(str(repo), "tinny", source="local", sandbox=backend, verbose=False)
    assert backend.jobs == []


def test_list_is_static_and_runs_nothing(repo: Path) -> None:
    backend = FakeBackend(ok_handler)
    assert safehub.list(str(repo), source="local", sandbox=backend) == ["tiny"]
    assert backend.jobs == []


def test_a_backend_that_says_it_cannot_work_is_refused(repo: Path) -> None:
    class Broken(FakeBackend):
        def check(self) -> str | None:
            return "no isolation layer here"

    with pytest.raises(safehub.SandboxUnavailableError, match="no isolation layer here"):
        safehub.load(str(repo), "tiny", source="local", sandbox=Broken(ok_handler), verbose=False)


def test_the_fake_is_never_chosen_by_name(monkeypatch: pytest.MonkeyPatch) -> None:
    from safehub._sandbox import get_backend

    monkeypatch.setenv("SAFEHUB_SANDBOX", "fake")
    with pytest.raises(safehub.SandboxUnavailableError):
        get_backend()


def test_safehub_info_has_a_timing_breakdown_with_the_runners_parts(repo: Path) -> None:
    def handler(job: FakeJob) -> None:
        ok_handler(job)
        job.write_result({"status": "ok", "summary": {"root": "module", "modules": {"m0": {"mode": "fx"}},
                          "timings": {"import_torch": 1.5, "hubconf": 0.25, "entrypoint": 0.5, "export": 2}}})

    got = safehub.load(str(repo), "tiny", source="local", sandbox=FakeBackend(handler), verbose=False)
    timings = got.safehub_info.timings
    assert {"host_imports", "host_import_torch", "fetch_and_static_checks", "env", "sandbox", "validation", "weights_and_build", "total"} <= set(timings)
    assert (timings["runner_import_torch"], timings["runner_hubconf"], timings["runner_entrypoint"],
            timings["runner_export"]) == (1.5, 0.25, 0.5, 2.0)
    assert "sandbox_overhead" in timings
    assert all(isinstance(v, float) and v >= 0 for v in timings.values())
    assert got.safehub_info.as_dict()["timings"] == timings


@pytest.mark.parametrize(
    "raw",
    [
        {"import_torch": -0.5, "hubconf": 1e7, "entrypoint": -1, "export": True},
        {"import_torch": "1.0", "hubconf": [1], "entrypoint": 1e300, "export": None},
        {"\x1b[2J": 1.0, "../../x": 2.0, "__class__": 3.0},
        [1.0, 2.0],
        "fast",
    ],
)
def test_hostile_runner_timings_are_dropped(repo: Path, raw) -> None:
    def handler(job: FakeJob) -> None:
        ok_handler(job)
        job.write_result({"status": "ok", "summary": {"root": "module", "modules": {}, "timings": raw}})

    got = safehub.load(str(repo), "tiny", source="local", sandbox=FakeBackend(handler), verbose=False)
    assert "timings" not in got.safehub_info.summary
    assert not any(k.startswith("runner_") for k in got.safehub_info.timings)
    assert "sandbox_overhead" not in got.safehub_info.timings


def test_non_finite_runner_timings_are_dropped() -> None:
    from safehub._channel import read_summary

    nan, inf = float("nan"), float("inf")
    summary = read_summary({"protocol": 1, "status": "ok", "summary": {
        "timings": {"import_torch": nan, "hubconf": inf, "entrypoint": -inf, "export": 0.5}}})
    assert summary["timings"] == {"export": 0.5}
