"""The download broker: host-side prefetch (URL checks, caching, offline, token
scope) and the sandbox half in runners/_downloads.py (run in a real subprocess
so patching torch.hub never leaks into this test process)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from github_server import FakeGitHub

from safehub._errors import FetchError, OfflineError, UnsafeSpecError
from safehub._channel import needs_download_urls
from safehub._fetch import _http, download_url_to_file, prefetch_downloads, stage_downloads
from safehub._fetch._downloads import checkpoint_path

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def gh():
    with FakeGitHub(token="tok-123") as server:
        repo = server.add_repo("alice", "model")
        repo.commit({"hubconf.py": b""})
        repo.release_asset("v1", "w.bin", b"weights-v1")
        repo.release_asset("v2", "w.bin", b"weights-v2")
        yield server


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch):
    monkeypatch.setattr(_http, "BACKOFF_BASE_S", 0.0)


def asset(gh, tag="v1"):
    return f"{gh.url}/alice/model/releases/download/{tag}/w.bin"


def test_prefetch_downloads_caches_by_url_not_basename(gh, tmp_path):
    u1, u2 = asset(gh, "v1"), asset(gh, "v2")
    files = prefetch_downloads([u1, u2], hub_dir=tmp_path, verbose=False, env=gh.env())
    # torch.hub would store both as checkpoints/w.bin and serve v1 for v2.
    assert files[u1] != files[u2]
    assert files[u1].read_bytes() == b"weights-v1" and files[u2].read_bytes() == b"weights-v2"
    assert files[u1].parent == tmp_path / "checkpoints" / "by-url"
    record = json.loads(files[u1].with_name(files[u1].name + ".json").read_text())
    assert record["url"] == u1 and record["bytes"] == 10
    seen = len(gh.log)
    assert prefetch_downloads([u1], hub_dir=tmp_path, verbose=False, env=gh.env()) == {u1: files[u1]}
    assert len(gh.log) == seen  # reused, not refetched
    assert not list((tmp_path / "checkpoints" / "by-url").glob("*.partial"))


def test_prefetch_token_only_for_github_hosts(gh, tmp_path):
    env = gh.env(GITHUB_TOKEN="tok-123")
    prefetch_downloads([asset(gh)], hub_dir=tmp_path, verbose=False, env=env, repo=("alice", "model"))
    main = [e for e in gh.log if e["role"] == "main"]
    codeload = [e for e in gh.log if e["role"] == "codeload"]
    assert main[0]["auth"] == "Bearer tok-123"
    assert codeload and codeload[0]["auth"] is None  # the asset redirect leaves the GitHub host
    # The token is lent only to the loaded repo's own release assets: not to another
    # repo's (repo code chooses these URLs), and never for a local repo.
    for i, repo in enumerate((("mallory", "model"), None)):
        gh.log.clear()
        prefetch_downloads([asset(gh, "v2")], hub_dir=tmp_path / f"fresh{i}", verbose=False, env=env, repo=repo)
        assert gh.log and all(e["auth"] is None for e in gh.log), repo
    # A non-GitHub URL never gets the token (the codeload port is another origin,
    # allowed for downloads by gh.env()).
    gh.log.clear()
    with pytest.raises(FetchError):
        prefetch_downloads([f"{gh.codeload_url}/x"], hub_dir=tmp_path, verbose=False, env=env)
    assert gh.log and all(e["auth"] is None for e in gh.log)


@pytest.mark.parametrize("url", [
    "file:///etc/passwd", "ftp://example.com/x", "http://user:pw@example.com/x", "http://exa mple.com/x",
    "http://example.com/\x00", "https://exämple.com/x", "http://example.com:99999/x", "x" * 3000, "", 7,
])
def test_prefetch_rejects_bad_urls(tmp_path, url):
    with pytest.raises(UnsafeSpecError):
        prefetch_downloads([url], hub_dir=tmp_path, verbose=False, env={})


def test_prefetch_refuses_private_addresses_from_repo_code(tmp_path):
    # Repo code picks these URLs: the host must not probe its own network for it.
    for url in ("http://127.0.0.1:9/x", "http://169.254.169.254/latest/meta-data/", "http://10.0.0.1/x",
                "http://[::1]/x", "http://localhost/x"):
        with pytest.raises(FetchError, match="non-public address"):
            prefetch_downloads([url], hub_dir=tmp_path, verbose=False, env={})


def test_prefetch_checks_redirect_targets(gh, tmp_path):
    # The GitHub host (named "localhost" here) is allowed; its redirect to the asset
    # server at 127.0.0.1 is checked like any URL and refused.
    env = {"SAFEHUB_GITHUB_URL": gh.url.replace("127.0.0.1", "localhost"),
           "SAFEHUB_GITHUB_API_URL": gh.api_url.replace("127.0.0.1", "localhost")}
    url = asset(gh).replace("127.0.0.1", "localhost")
    with pytest.raises(FetchError, match="non-public address"):
        prefetch_downloads([url], hub_dir=tmp_path, verbose=False, env=env)
    assert any(e["role"] == "main" for e in gh.log)
    assert not any(e["role"] == "codeload" for e in gh.log)


def test_prefetch_count_cap_and_offline(gh, tmp_path):
    with pytest.raises(UnsafeSpecError, match="at most 16"):
        prefetch_downloads([f"https://example.com/{i}" for i in range(17)], hub_dir=tmp_path, verbose=False, env={})
    with pytest.raises(OfflineError, match="w.bin"):
        prefetch_downloads([asset(gh)], hub_dir=tmp_path, verbose=False, env=gh.env(SAFEHUB_OFFLINE="1"))
    assert gh.log == []
    files = prefetch_downloads([asset(gh)], hub_dir=tmp_path, verbose=False, env=gh.env())
    assert prefetch_downloads([asset(gh)], hub_dir=tmp_path, verbose=False, env=gh.env(SAFEHUB_OFFLINE="1")) == files


def test_prefetch_size_cap(gh, tmp_path):
    with pytest.raises(FetchError, match="cap"):
        prefetch_downloads([asset(gh)], hub_dir=tmp_path, verbose=False, env=gh.env(SAFEHUB_MAX_DOWNLOAD_BYTES="5"))
    assert not checkpoint_path(tmp_path / "checkpoints", asset(gh)).exists()


def test_download_url_to_file_hash_prefix(gh, tmp_path, monkeypatch):
    for k, v in gh.env().items():
        monkeypatch.setenv(k, v)
    import hashlib

    digest = hashlib.sha256(b"weights-v1").hexdigest()
    dst = tmp_path / "out.bin"
    download_url_to_file(asset(gh), str(dst), hash_prefix=digest[:10], progress=False)
    assert dst.read_bytes() == b"weights-v1"
    with pytest.raises(RuntimeError, match="invalid hash value"):
        download_url_to_file(asset(gh), str(tmp_path / "bad.bin"), hash_prefix="0000", progress=False)
    assert not (tmp_path / "bad.bin").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]  # no .partial left behind


def _needs(**error):
    return {"protocol": 1, "status": "error", "error": {"category": "needs_download", "type": "NeedsDownload",
                                                          "message": "", **error}}


def test_needs_download_urls():
    assert needs_download_urls(_needs(urls=["https://a/x", "https://a/x", "https://a/y"])) == ["https://a/x", "https://a/y"]
    assert needs_download_urls({"protocol": 1, "status": "ok"}) == []
    for bad in ({}, {"urls": []}, {"urls": "https://a"}, {"urls": [1]}, {"urls": ["https://a"] * 17}):
        with pytest.raises(UnsafeSpecError):
            needs_download_urls(_needs(**bad))


SANDBOX_SIDE = textwrap.dedent("""
    import json, sys, warnings, zipfile, io
    sys.path.insert(0, sys.argv[1])
    import torch
    import _downloads
    in_dir = sys.argv[2]
    _downloads.install(in_dir)
    out = {}
    # 1. a listed URL is served from the file, through every alias
    sd = torch.hub.load_state_dict_from_url("https://h/ones.pt")
    out["served"] = float(sum(v.sum() for v in sd.values()))
    out["alias"] = float(sum(v.sum() for v in torch.utils.model_zoo.load_url("https://h/ones.pt").values()))
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        legacy = torch.hub.load_state_dict_from_url("https://h/legacy.zip")
    out["legacy"] = float(sum(v.sum() for v in legacy.values()))
    out["legacy_warned"] = any("deprecated in favor of default zipfile" in str(x.message) for x in w)
    torch.hub.download_url_to_file("https://h/ones.pt", in_dir + "/../copy.pt", progress=False)
    out["copied"] = float(sum(v.sum() for v in torch.load(in_dir + "/../copy.pt").values()))
    # 2. an unlisted URL raises, and is remembered even if the repo swallows it
    try:
        torch.hub.load_state_dict_from_url("https://h/missing.pt")
    except BaseException as exc:
        out["raised"] = type(exc).__name__
    try:
        torch.hub.load_state_dict_from_url("https://h/also-missing.pt")
    except Exception:
        out["swallowed"] = True  # not reached: NeedsDownload is not an Exception
    except BaseException:
        pass
    out["check"] = _downloads.check()
    # 3. check_hash works on the served file
    try:
        torch.hub.load_state_dict_from_url("https://h/ones-00000000.pt", check_hash=True)
    except RuntimeError as exc:
        out["hash"] = str(exc)[:40]
    print(json.dumps(out))
""")


@pytest.mark.slow
def test_sandbox_half_serves_listed_urls_and_reports_the_rest(tmp_path):
    import io
    import zipfile

    import torch

    state = {"w": torch.ones(3, 4), "b": torch.ones(4)}
    host_files = tmp_path / "host"
    host_files.mkdir()
    torch.save(state, host_files / "ones.pt")
    buf = io.BytesIO()
    torch.save(state, buf, _use_new_zipfile_serialization=False)
    with zipfile.ZipFile(host_files / "legacy.zip", "w") as zf:
        zf.writestr("legacy", buf.getvalue())
    in_dir = tmp_path / "job" / "in"
    in_dir.mkdir(parents=True)
    stage_downloads({"https://h/ones.pt": host_files / "ones.pt", "https://h/legacy.zip": host_files / "legacy.zip",
                     "https://h/ones-00000000.pt": host_files / "ones.pt"}, in_dir)
    manifest = json.loads((in_dir / "downloads" / "manifest.json").read_text())
    assert sorted(manifest) == ["https://h/legacy.zip", "https://h/ones-00000000.pt", "https://h/ones.pt"]
    proc = subprocess.run([sys.executable, "-I", "-c", SANDBOX_SIDE, str(ROOT / "runners"), str(in_dir)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["served"] == out["alias"] == out["legacy"] == out["copied"] == 16.0
    assert out["legacy_warned"] is True
    assert out["raised"] == "NeedsDownload" and "swallowed" not in out
    assert out["check"]["status"] == "error"
    assert out["check"]["error"]["category"] == "needs_download"
    assert out["check"]["error"]["urls"] == ["https://h/missing.pt", "https://h/also-missing.pt"]
    assert out["hash"].startswith("invalid hash value")


@pytest.mark.slow
def test_runner_reports_needs_download_even_if_the_repo_swallows_it(tmp_path):
    """The real runner, no sandbox backend: an entrypoint that catches every error
    around load_state_dict_from_url still yields needs_download, never a model."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "hubconf.py").write_text(textwrap.dedent("""
        import torch
        def m(pretrained=True):
            net = torch.nn.Linear(2, 2)
            try:
                net.load_state_dict(torch.hub.load_state_dict_from_url("https://example.com/w.pt"))
            except BaseException:
                pass  # "weights optional"
            return net
    """))
    job = tmp_path / "job"
    for sub in ("in", "out", "tmp"):
        (job / sub).mkdir(parents=True)
    (job / "in" / "request.json").write_text(json.dumps(
        {"protocol": 1, "action": "load", "repo_dir": str(repo), "entrypoint": "m", "export": {}, "confine": {}}))
    proc = subprocess.run([sys.executable, "-I", "-B", str(ROOT / "runners" / "safehub_runner.py"), str(job)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((job / "out" / "result.json").read_text())
    assert result["status"] == "error"
    assert result["error"]["category"] == "needs_download"
    assert result["error"]["urls"] == ["https://example.com/w.pt"]
    assert not (job / "out" / "spec.json").exists()


# --- the download memo (safehub/_fetch/_download_memo.py) ---------------------------


def _checkout(tmp_path: Path, sha: str | None = "a" * 40):
    from safehub._fetch import RepoCheckout

    return RepoCheckout(path=tmp_path, sha=sha, host="github.com" if sha else None, owner="Alice" if sha else None,
                        name="net" if sha else None, ref=None, source="github" if sha else "local")


def test_the_download_memo_round_trips_per_snapshot_and_entrypoint(tmp_path):
    from safehub._fetch._download_memo import remember_urls, remembered_urls

    hub, repo = tmp_path / "hub", _checkout(tmp_path)
    urls = ["https://example.com/a.pth", "https://example.com/b.pth", "https://example.com/a.pth"]
    remember_urls(hub, repo, "net", urls)
    assert remembered_urls(hub, repo, "net") == urls[:2]  # once each, in order
    assert remembered_urls(hub, repo, "other") == []  # per entrypoint
    assert remembered_urls(hub, _checkout(tmp_path, "b" * 40), "net") == []  # per snapshot
    local = _checkout(tmp_path, None)
    remember_urls(hub, local, "net", urls[:1])
    assert remembered_urls(hub, local, "net") == urls[:1]
    assert remembered_urls(hub, repo, "net") == urls[:2]


def _forged(key: dict, fields: dict) -> dict:
    return {"version": 1, "key": key, "urls": ["https://example.com/a.pth"], **fields}


@pytest.mark.parametrize("change", [
    {"version": 2},  # another format
    {"key": None},  # no key
    {"key": "other"},  # another memo's key
    {"urls": ["https://example.com/a b.pth"]},  # a URL the broker refuses outright
    {"urls": [f"https://example.com/{i}.pth" for i in range(17)]},  # more than MAX_DOWNLOAD_URLS
    {"urls": "https://example.com/a.pth"},  # not a list
    {"urls": [7]},  # not a string
])
def test_a_forged_or_odd_download_memo_is_no_hint(tmp_path, change):
    from safehub._fetch import _download_memo as memo

    hub, repo = tmp_path / "hub", _checkout(tmp_path)
    key = memo._key(repo, "net")
    path = memo._path(hub, key)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(_forged(key, {})))
    assert memo.remembered_urls(hub, repo, "net") == ["https://example.com/a.pth"]  # the unforged form is a hint
    path.write_text(json.dumps(_forged(key, change)))
    assert memo.remembered_urls(hub, repo, "net") == []
    path.write_bytes(b"x" * (memo.MAX_BYTES + 1))
    assert memo.remembered_urls(hub, repo, "net") == []


def test_a_hint_the_broker_refuses_is_dropped_and_the_load_goes_on(tmp_path):
    """The hint's fetch is the broker's: a private address is refused there, and the
    load continues without it (the entrypoint asks for what it needs)."""
    from safehub._api import _hinted_downloads
    from safehub._fetch._download_memo import remember_urls
    from safehub._fetch._downloads import DownloadBudget
    from safehub._guard import LoadGuard
    from safehub._jobs import JobRequest
    from safehub._sandbox import Limits

    hub, repo = tmp_path / "hub", _checkout(tmp_path)
    remember_urls(hub, repo, "net", ["http://169.254.169.254/latest/meta-data"])
    job = JobRequest(action="load", repo_dir=tmp_path, entrypoint="net")
    timings: dict[str, float] = {}
    got = _hinted_downloads(job, repo=repo, hub_dir=hub, verbose=False, budget=DownloadBudget(Limits()),
                            guard=LoadGuard.for_call(), timings=timings)
    assert got == {} and "downloads" in timings
