"""The download broker inside a whole load: safehub.load with the fake sandbox backend
(see tests/test_api_fake.py for what is faked and why) against real loopback HTTP
servers. The deadline and the disk budget span the sandbox runs and the downloads;
a failed load leaves no downloaded file; safehub_info lists what was fetched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from github_server import FakeGitHub, LoopbackService
from torch import nn

import safehub
import specgen
from safehub._env import host_env
from safehub._errors import SandboxLimitError, SandboxTimeoutError, UnsafeSpecError
from safehub._fetch import _http
from safehub._sandbox import FakeBackend, FakeJob, Limits

KIB = 1024


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "hubconf.py").write_text("dependencies = []\n\ndef tiny():\n    raise AssertionError('never imported')\n")
    monkeypatch.setattr("safehub._env.ensure_env", lambda *a, **k: host_env())
    monkeypatch.setattr(_http, "BACKOFF_BASE_S", 0.0)
    monkeypatch.setenv("SAFEHUB_HOME", str(tmp_path / "home"))
    return repo


@pytest.fixture
def gh(monkeypatch: pytest.MonkeyPatch):
    with FakeGitHub() as server:
        repo = server.add_repo("alice", "model")
        repo.commit({"hubconf.py": b""})
        for i in range(16):
            repo.release_asset("v1", f"w{i}.bin", bytes([i]) * (100 * KIB))
        for key, value in server.env().items():
            monkeypatch.setenv(key, value)
        yield server


def asset(gh: FakeGitHub, i: int) -> str:
    return f"{gh.url}/alice/model/releases/download/v1/w{i}.bin"


def by_url() -> list[str]:
    folder = safehub._config.hub_path(None) / "checkpoints" / "by-url"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


class Runner:
    """Plays the runner: asks for ``urls`` until they are staged in in/downloads, then
    writes a model (or ``spec`` bytes instead of a valid spec.json)."""

    def __init__(self, urls: list[str], spec: bytes | None = None) -> None:
        self.urls, self.spec, self.limits = urls, spec, []

    def __call__(self, job: FakeJob) -> None:
        self.limits.append(job.sandbox_request.limits)
        manifest = job.in_dir / "downloads" / "manifest.json"
        if not manifest.exists():
            job.write_result({"status": "error", "error": {"category": "needs_download", "urls": self.urls}})
            return
        staged = json.loads(manifest.read_text())
        assert sorted(staged) == sorted(self.urls)
        spec, weights = specgen.full_spec(nn.Linear(2, 2))
        specgen.write(job.out_dir, spec, weights, raw_spec=self.spec)
        job.write_result({"status": "ok", "summary": {"root": "module", "modules": {}}})


def test_downloads_are_listed_and_later_runs_get_what_is_left(hub, gh):
    runner = Runner([asset(gh, 0), asset(gh, 1)])
    limits = Limits(timeout_s=600, disk_bytes=10 << 20)
    model = safehub.load(str(hub), "tiny", source="local", sandbox=FakeBackend(runner), verbose=False, limits=limits)
    assert isinstance(model, torch.nn.Module)
    listed = model.safehub_info.downloads
    assert [d["url"] for d in listed] == runner.urls
    assert all(d["bytes"] == 100 * KIB and d["cached"] is False and len(d["sha256"]) == 64 for d in listed)
    first, second = runner.limits
    assert first == limits
    assert second.disk_bytes == (10 << 20) - 200 * KIB  # the downloads count against the disk limit
    assert 0 < second.timeout_s < 600  # ...and their time against the time limit
    assert len(by_url()) == 4  # kept for the next load (file + record each)


def test_sixteen_downloads_over_the_disk_limit_fail_the_load_and_leave_nothing(hub, gh):
    runner = Runner([asset(gh, i) for i in range(16)])
    with pytest.raises(SandboxLimitError, match="the download of .* disk limit") as info:
        safehub.load(str(hub), "tiny", source="local", sandbox=FakeBackend(runner), verbose=False,
                     limits=Limits(disk_bytes=350 * KIB))
    assert info.value.limit == "disk"
    assert by_url() == []
    assert len(runner.limits) == 1  # no second run


def test_a_drip_fed_download_ends_at_the_load_deadline(hub):
    with LoopbackService() as service:
        runner = Runner([f"{service.origin}/drip"])
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("SAFEHUB_DOWNLOAD_ALLOW_HOSTS", service.origin)
            with pytest.raises(SandboxTimeoutError, match="time limit"):
                safehub.load(str(hub), "tiny", source="local", sandbox=FakeBackend(runner), verbose=False,
                             limits=Limits(timeout_s=0.5))
        assert service._alive(), "the server stopped first: the deadline did not end the download"
    assert by_url() == []


def test_a_load_refused_after_its_downloads_removes_them(hub, gh):
    runner = Runner([asset(gh, 2)], spec=b'{"format": "nonsense"}')
    with pytest.raises(UnsafeSpecError):
        safehub.load(str(hub), "tiny", source="local", sandbox=FakeBackend(runner), verbose=False)
    assert len(runner.limits) == 2
    assert by_url() == []
