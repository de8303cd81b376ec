"""The download broker's bounds, against real loopback servers: exact origins
(scheme, host and port), an overall deadline shared with the job's time limit,
a byte budget shared with its disk limit, and no files left by a failed load.

The hostile servers here are threads that stop by themselves (a few seconds at
most), so a broker without the bound fails the test instead of hanging it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from github_server import FakeGitHub, LoopbackService

from safehub._errors import FetchError, SandboxLimitError, SandboxTimeoutError
from safehub._fetch import _http, prefetch_downloads
from safehub._fetch._downloads import DownloadBudget
from safehub._sandbox import Limits

KIB = 1024


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch):
    monkeypatch.setattr(_http, "BACKOFF_BASE_S", 0.0)


def by_url(hub: Path) -> list[str]:
    folder = hub / "checkpoints" / "by-url"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# --- exact origins ---------------------------------------------------------------


def test_another_port_on_the_github_host_is_refused(tmp_path):
    """The red-team case: GitHub Enterprise at 127.0.0.1:<A> is allowed although it
    is a private address; a repo asks for 127.0.0.1:<B>, another service there."""
    with FakeGitHub() as gh, LoopbackService() as service:
        env = gh.env()
        with pytest.raises(FetchError, match="non-public address"):
            prefetch_downloads([f"{service.origin}/secret"], hub_dir=tmp_path, verbose=False, env=env)
        # The same host name under the other scheme, or on the API's port with
        # https, is another origin too.
        with pytest.raises(FetchError, match="non-public address"):
            prefetch_downloads([gh.url.replace("http://", "https://") + "/x"], hub_dir=tmp_path, verbose=False,
                               env=env)
    assert service.requests == []
    assert by_url(tmp_path) == []


@pytest.mark.parametrize("entry, allowed", [
    ("127.0.0.1", False),  # a bare host means https://host:443
    ("https://127.0.0.1:{port}", False),  # other scheme
    ("http://127.0.0.1:{port}", True),
    ("http://127.0.0.1:{port}/", True),
])
def test_allow_hosts_entries_match_exact_origins(tmp_path, entry, allowed):
    with LoopbackService() as service:
        port = service.origin.rsplit(":", 1)[1]
        env = {"SAFEHUB_DOWNLOAD_ALLOW_HOSTS": "example.invalid," + entry.format(port=port)}
        url = f"{service.origin}/secret"
        if allowed:
            files = prefetch_downloads([url], hub_dir=tmp_path, verbose=False, env=env)
            assert files[url].read_bytes() == b"INTERNAL-SERVICE-SECRET"
        else:
            with pytest.raises(FetchError, match="non-public address"):
                prefetch_downloads([url], hub_dir=tmp_path, verbose=False, env=env)
            assert service.requests == []


@pytest.mark.parametrize("entry", ["ftp://h", "http://h/path", "http://h:99999", "http://"])
def test_bad_allow_hosts_entries_are_refused(tmp_path, entry):
    with pytest.raises(FetchError, match="SAFEHUB_DOWNLOAD_ALLOW_HOSTS"):
        prefetch_downloads(["http://127.0.0.1:9/x"], hub_dir=tmp_path, verbose=False,
                           env={"SAFEHUB_DOWNLOAD_ALLOW_HOSTS": entry})


# --- the deadline ----------------------------------------------------------------


@pytest.mark.parametrize("path", ["/drip", "/silent"])
def test_a_slow_server_cannot_hold_a_load(tmp_path, path):
    """One byte every 50 ms, or nothing at all: the load's deadline (its time limit,
    here 0.5 s) ends the download with a typed error; the server would go on for 8 s."""
    with LoopbackService() as service:
        env = {"SAFEHUB_DOWNLOAD_ALLOW_HOSTS": service.origin}
        budget = DownloadBudget(Limits(timeout_s=0.5))
        with pytest.raises(SandboxTimeoutError, match="time limit") as info:
            prefetch_downloads([f"{service.origin}{path}"], hub_dir=tmp_path, verbose=False, env=env, budget=budget)
        assert service._alive(), "the server stopped first: the deadline did not end the download"
    assert info.value.limit == "timeout"
    assert by_url(tmp_path) == []  # no .partial left


def test_the_deadline_covers_sandbox_runs_and_downloads(tmp_path):
    budget = DownloadBudget(Limits(timeout_s=3600, disk_bytes=1000))
    assert budget.round_limits() == budget.limits  # the first run: the limits as given
    budget.charge("https://h/w", nbytes=400, sha256=None, cached=False, seconds=0.1)
    later = budget.round_limits()
    assert later.disk_bytes == 600 and 0 < later.timeout_s <= 3600
    budget.deadline = time.monotonic() - 1  # the time is used up
    with pytest.raises(SandboxTimeoutError, match="covers the sandbox runs"):
        budget.round_limits()


# --- the disk budget and cleanup -------------------------------------------------


@pytest.fixture
def gh16():
    with FakeGitHub() as gh:
        repo = gh.add_repo("alice", "model")
        repo.commit({"hubconf.py": b""})
        for i in range(16):
            repo.release_asset("v1", f"w{i}.bin", bytes([i]) * (100 * KIB))
        yield gh


def test_sixteen_files_over_the_disk_limit_are_refused_and_removed(gh16, tmp_path):
    urls = [f"{gh16.url}/alice/model/releases/download/v1/w{i}.bin" for i in range(16)]
    budget = DownloadBudget(Limits(disk_bytes=250 * KIB))
    with pytest.raises(SandboxLimitError, match="disk limit") as info:
        prefetch_downloads(urls, hub_dir=tmp_path, verbose=False, env=gh16.env(), budget=budget)
    assert info.value.limit == "disk"
    assert by_url(tmp_path) == []  # the two that fitted are gone with the failed load
    assert budget.used_bytes <= 250 * KIB


def test_a_body_of_unknown_size_is_cut_at_the_disk_limit(tmp_path):
    with LoopbackService() as service:
        env = {"SAFEHUB_DOWNLOAD_ALLOW_HOSTS": service.origin}
        budget = DownloadBudget(Limits(disk_bytes=200 * KIB))
        with pytest.raises(SandboxLimitError, match="disk limit"):
            prefetch_downloads([f"{service.origin}/bytes/{1024 * KIB}"], hub_dir=tmp_path, verbose=False, env=env,
                               budget=budget)
    assert by_url(tmp_path) == []


def test_a_failed_load_removes_its_downloads_but_keeps_the_cache(gh16, tmp_path):
    urls = [f"{gh16.url}/alice/model/releases/download/v1/w{i}.bin" for i in range(3)]
    kept = prefetch_downloads(urls[:1], hub_dir=tmp_path, verbose=False, env=gh16.env())  # an earlier, good load
    budget = DownloadBudget(Limits(disk_bytes=1024 * KIB))
    with pytest.raises(RuntimeError, match="rebuild failed"):
        with budget.discard_on_error():
            files = prefetch_downloads(urls, hub_dir=tmp_path, verbose=False, env=gh16.env(), budget=budget)
            assert len(files) == 3
            raise RuntimeError("rebuild failed")  # e.g. the spec was refused after the downloads
    left = by_url(tmp_path)
    assert left == sorted([kept[urls[0]].name, kept[urls[0]].name + ".json"])
    # What the load used is listed, cached or not.
    records = {r["url"]: r for r in budget.summary()}
    assert records[urls[0]]["cached"] is True and records[urls[1]]["cached"] is False
    assert records[urls[1]]["bytes"] == 100 * KIB and len(records[urls[1]]["sha256"]) == 64


def test_cached_files_count_against_the_disk_limit(gh16, tmp_path):
    urls = [f"{gh16.url}/alice/model/releases/download/v1/w{i}.bin" for i in range(3)]
    prefetch_downloads(urls, hub_dir=tmp_path, verbose=False, env=gh16.env())
    budget = DownloadBudget(Limits(disk_bytes=150 * KIB))
    with pytest.raises(SandboxLimitError, match="disk limit"):
        prefetch_downloads(urls, hub_dir=tmp_path, verbose=False, env=gh16.env(SAFEHUB_OFFLINE="1"), budget=budget)
    assert len(by_url(tmp_path)) == 6  # the cache is not the failed load's to remove


def test_partials_of_a_killed_download_are_swept(gh16, tmp_path):
    """A download whose process was killed leaves a .partial its own cleanup never
    removed: the next fetch removes it once it is a day old (a fresh one may be a
    concurrent download's)."""
    import os

    folder = tmp_path / "checkpoints" / "by-url"
    folder.mkdir(parents=True)
    old, fresh = folder / ".x.bin.aaaa.partial", folder / ".y.bin.bbbb.partial"
    old.write_bytes(b"half")
    fresh.write_bytes(b"half")
    os.utime(old, (time.time() - 2 * 24 * 3600,) * 2)
    prefetch_downloads([f"{gh16.url}/alice/model/releases/download/v1/w0.bin"], hub_dir=tmp_path, verbose=False,
                       env=gh16.env())
    assert not old.exists() and fresh.exists()
