"""get_repo against the loopback GitHub: each torch.hub 2.13 weak spot from the
issue, ref resolution, the cache, offline mode, trust and HTTP failure handling."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from github_server import FakeGitHub

from safehub._errors import (
    ConfigError,
    CacheCorruptedError,
    FetchError,
    HubconfError,
    InvalidRepoError,
    OfflineError,
    RateLimitError,
    RepoNotFoundError,
    UntrustedRepoError,
)
from safehub._fetch import _http, get_repo, parse_repo
from safehub._fetch._cache import RepoCache
from safehub._fetch._trust import TrustStore, check_trust

ROOT = Path(__file__).resolve().parent.parent


def hubconf(marker: str) -> bytes:
    return f"dependencies = []\nMARKER = {marker!r}\ndef m():\n    return MARKER\n".encode()


def marker(checkout) -> str:
    text = (checkout.path / "hubconf.py").read_text()
    return text.split("MARKER = ")[1].splitlines()[0].strip("'")


@pytest.fixture
def gh():
    with FakeGitHub(token="s3cret-token-value") as server:
        yield server


@pytest.fixture
def hub(tmp_path: Path) -> Path:
    return tmp_path / "hub"


@pytest.fixture(autouse=True)
def no_backoff(monkeypatch):
    monkeypatch.setattr(_http, "BACKOFF_BASE_S", 0.0)


def load(gh, hub, repo, **kw):
    env = kw.pop("env", None) or gh.env()
    kw.setdefault("trust_repo", True)
    return get_repo(repo, hub_dir=hub, env=env, verbose=False, **kw)


# --- the weak spots listed in the issue ------------------------------------------


def test_cache_names_do_not_collide(gh, hub):
    # torch.hub caches both as <hub>/alice_model_v2_main and serves the first's code.
    a = gh.add_repo("alice", "model")
    a.commit({"hubconf.py": hubconf("model@v2_main")}, branch="v2_main")
    b = gh.add_repo("alice", "model_v2")
    b.commit({"hubconf.py": hubconf("model_v2@main")}, branch="main")
    first = load(gh, hub, "alice/model:v2_main")
    second = load(gh, hub, "alice/model_v2:main")
    assert first.path != second.path
    assert marker(first) == "model@v2_main"
    assert marker(second) == "model_v2@main"


def test_short_sha_is_expanded_and_checked_not_prefix_matched(gh, hub):
    repo = gh.add_repo("alice", "model")
    head = repo.commit({"hubconf.py": hubconf("head")})
    # torch.hub accepts any ref a branch head merely starts with, even 1 hex digit.
    with pytest.raises(InvalidRepoError, match="too short"):
        load(gh, hub, f"alice/model:{head[:3]}")
    co = load(gh, hub, f"alice/model:{head[:9]}")
    assert co.sha == head
    # The archive is fetched by the full SHA, never by the short one.
    zipballs = [e["path"] for e in gh.log if "zipball" in e["path"]]
    assert zipballs == [f"/alice/model/zipball/{head}"]


def test_ambiguous_short_sha_is_refused(gh, hub):
    repo = gh.add_repo("alice", "model")
    one = repo.commit({"hubconf.py": hubconf("1")}, sha="abcdef1" + "1" * 33)
    repo.commit({"hubconf.py": hubconf("2")}, sha="abcdef1" + "2" * 33)
    with pytest.raises(RepoNotFoundError, match="no unique commit"):
        load(gh, hub, "alice/model:abcdef1")
    assert load(gh, hub, f"alice/model:{one[:8]}").sha == one


def test_fork_commit_is_refused(gh, hub):
    parent = gh.add_repo("pytorch", "vision")
    parent.commit({"hubconf.py": hubconf("upstream")})
    fork = gh.fork(parent, "mallory")
    evil = fork.commit({"hubconf.py": hubconf("evil")}, branch="main")
    # GitHub serves the fork's commit through the parent's URLs; torch.hub's check
    # only rejects it when no head starts with it. safehub checks reachability.
    for ref in (evil, evil[:7]):
        with pytest.raises(ValueError, match="If it's a commit from a forked repo"):
            load(gh, hub, f"pytorch/vision:{ref}")
    assert not (hub / "repos" / gh.host_key / "pytorch").exists()
    # From the fork itself it is fine.
    assert marker(load(gh, hub, f"mallory/vision:{evil}")) == "evil"
    # skip_validation=True is the explicit opt-out, and its unchecked resolution or
    # cache entry is never reused by a later validated load.
    assert marker(load(gh, hub, f"pytorch/vision:{evil[:7]}", skip_validation=True)) == "evil"
    for ref in (evil, evil[:7]):
        with pytest.raises(ValueError, match="If it's a commit from a forked repo"):
            load(gh, hub, f"pytorch/vision:{ref}")


def test_old_commit_on_a_branch_is_accepted(gh, hub):
    repo = gh.add_repo("alice", "model")
    old = repo.commit({"hubconf.py": hubconf("old")})
    repo.commit({"hubconf.py": hubconf("new")})
    assert marker(load(gh, hub, f"alice/model:{old}")) == "old"


def test_private_repo_token_goes_to_api_and_archive_but_not_other_hosts(gh, hub):
    repo = gh.add_repo("corp", "secret", private=True)
    sha = repo.commit({"hubconf.py": hubconf("private")})
    co = load(gh, hub, "corp/secret", env=gh.env(GITHUB_TOKEN=gh.token))
    assert co.sha == sha and marker(co) == "private"
    main = [e for e in gh.log if e["role"] == "main"]
    codeload = [e for e in gh.log if e["role"] == "codeload"]
    assert main and all(e["auth"] == f"Bearer {gh.token}" for e in main)
    assert any("zipball" in e["path"] for e in main)
    # The archive redirect goes to another port (another origin): no token there.
    assert codeload and all(e["auth"] is None for e in codeload)
    # SAFEHUB_GITHUB_TOKEN works too (and wins over GITHUB_TOKEN).
    load(gh, hub, "corp/secret", env=gh.env(SAFEHUB_GITHUB_TOKEN=gh.token, GITHUB_TOKEN="wrong"), force_reload=True)


def test_private_repo_without_token_gives_a_clear_error(gh, hub):
    repo = gh.add_repo("corp", "secret", private=True)
    repo.commit({"hubconf.py": hubconf("private")})
    with pytest.raises(RepoNotFoundError) as info:
        load(gh, hub, "corp/secret:main")
    assert "GITHUB_TOKEN" in str(info.value)  # torch.hub: KeyError: 'Authorization'


def test_token_never_appears_in_errors(gh, hub):
    gh.add_repo("corp", "secret", private=True).commit({"hubconf.py": hubconf("x")})
    with pytest.raises(FetchError) as info:
        load(gh, hub, "corp/secret:main", env=gh.env(GITHUB_TOKEN="wrong-token-123"))
    assert "wrong-token-123" not in str(info.value)


def test_tampered_cache_entry_is_detected(gh, hub):
    repo = gh.add_repo("alice", "model")
    repo.commit({"hubconf.py": hubconf("good"), "pkg/util.py": b"X = 1\n"})
    co = load(gh, hub, "alice/model")
    target = co.path / "pkg" / "util.py"
    assert target.stat().st_mode & 0o222 == 0 and target.parent.stat().st_mode & 0o222 == 0  # read-only tree
    os.chmod(target.parent, 0o755)
    os.chmod(target, 0o644)
    target.write_text("import os; os.system('evil')\n")
    with pytest.raises(CacheCorruptedError, match="modified after download"):
        load(gh, hub, "alice/model")
    (co.path / "pkg" / "new.py").write_text("")  # an added file is tampering too
    with pytest.raises(CacheCorruptedError):
        load(gh, hub, "alice/model")
    fixed = load(gh, hub, "alice/model", force_reload=True)
    assert (fixed.path / "pkg" / "util.py").read_text() == "X = 1\n"
    assert not (fixed.path / "pkg" / "new.py").exists()


def test_moved_ref_and_revision_pinning(gh, hub):
    repo = gh.add_repo("alice", "model")
    first = repo.commit({"hubconf.py": hubconf("v1")})
    co1 = load(gh, hub, "alice/model:main")
    assert co1.sha == first and co1.resolved_ref == "main"
    second = repo.commit({"hubconf.py": hubconf("v2")})
    # Within the short ref lifetime the resolution is reused...
    assert load(gh, hub, "alice/model:main").sha == first
    # ...after it (here: lifetime 0) the moved branch is seen.
    co2 = load(gh, hub, "alice/model:main", env=gh.env(SAFEHUB_REF_CACHE_TTL="0"))
    assert co2.sha == second and marker(co2) == "v2"
    # revision= loads exactly the recorded tree, whatever the branch says now.
    pinned = load(gh, hub, "alice/model:main", revision=co1.sha, env=gh.env(SAFEHUB_REF_CACHE_TTL="0"))
    assert pinned.sha == first and marker(pinned) == "v1"
    history = RepoCache(hub).history()
    assert [h["sha"] for h in history] == [first, first, second, first]
    assert history[-1]["revision"] == first
    with pytest.raises(InvalidRepoError, match="40-character"):
        load(gh, hub, "alice/model", revision=first[:10])


def test_force_reload_refetches(gh, hub):
    repo = gh.add_repo("alice", "model")
    sha = repo.commit({"hubconf.py": hubconf("x")})
    load(gh, hub, "alice/model")
    load(gh, hub, "alice/model")
    assert gh.archive_requests == [sha]
    load(gh, hub, "alice/model", force_reload=True)
    assert gh.archive_requests == [sha, sha]


def test_offline_mode_uses_only_the_cache(gh, hub):
    repo = gh.add_repo("alice", "model")
    sha = repo.commit({"hubconf.py": hubconf("x")})
    offline = gh.env(SAFEHUB_OFFLINE="1")
    with pytest.raises(OfflineError, match="default branch of alice/model") as info:
        load(gh, hub, "alice/model", env=offline)
    assert "holds nothing" in str(info.value)
    assert gh.log == []
    load(gh, hub, "alice/model")
    seen = len(gh.log)
    assert load(gh, hub, "alice/model", env=offline).sha == sha
    assert load(gh, hub, "alice/model", env=offline, revision=sha).sha == sha
    with pytest.raises(OfflineError, match=f"the cache holds commits {sha}"):
        load(gh, hub, "alice/model:dev", env=offline)
    with pytest.raises(OfflineError):
        load(gh, hub, "alice/model", env=offline, revision="0" * 40)
    assert len(gh.log) == seen  # not a single request while offline


def test_default_branch_probe_tags_and_ambiguity(gh, hub):
    old = gh.add_repo("ailzhang", "legacy")
    master = old.commit({"hubconf.py": hubconf("master")}, branch="master")
    co = load(gh, hub, "ailzhang/legacy")
    assert co.sha == master and co.resolved_ref == "master"
    assert any(e["path"] == "/ailzhang/legacy/tree/main/" for e in gh.log)
    repo = gh.add_repo("alice", "model")
    v1 = repo.commit({"hubconf.py": hubconf("tag v1.0")})
    repo.tag("v1.0", v1)
    repo.commit({"hubconf.py": hubconf("branch v1.0")}, branch="v1.0")
    with pytest.warns(UserWarning, match="both a branch and a tag") as caught:
        assert marker(load(gh, hub, "alice/model:v1.0")) == "branch v1.0"
    # issue 16: the name is filled in (was a literal "{name}"), and skip_validation warns too
    assert "pass refs/tags/v1.0 for the tag" in str(caught[0].message)
    with pytest.warns(UserWarning, match=r"pass refs/tags/v1\.0 for the tag"):
        assert marker(load(gh, hub, "alice/model:v1.0", skip_validation=True, force_reload=True)) == "branch v1.0"
    assert marker(load(gh, hub, "alice/model:refs/tags/v1.0")) == "tag v1.0"
    with pytest.raises(RepoNotFoundError, match="not a branch or tag"):
        load(gh, hub, "alice/model:nope")


def test_repo_without_hubconf_is_refused(gh, hub):
    gh.add_repo("alice", "nohub").commit({"README.md": b"hi"})
    with pytest.raises(HubconfError, match="no hubconf.py"):
        load(gh, hub, "alice/nohub")
    assert not list((hub / "repos" / gh.host_key / "alice" / "nohub").glob("*"))


def test_local_source_is_validated_not_trust_checked(tmp_path, hub):
    (tmp_path / "repo").mkdir()
    with pytest.raises(HubconfError, match="no hubconf.py"):
        get_repo(str(tmp_path / "repo"), source="local", hub_dir=hub, trust_repo=False)
    (tmp_path / "repo" / "hubconf.py").write_text("")
    co = get_repo(str(tmp_path / "repo"), source="local", hub_dir=hub, trust_repo=False)
    assert co.sha is None and co.source == "local" and co.path == (tmp_path / "repo").resolve()
    with pytest.raises(ValueError, match="Unknown source"):
        get_repo("a/b", source="gitlab", hub_dir=hub)


# --- names ----------------------------------------------------------------------


@pytest.mark.parametrize("bad", [
    "pytorch/vіsion",  # Cyrillic і
    "pytorch/vision:mаin",  # Cyrillic а in the ref
    "ｐytorch/vision",  # full-width p
    "pytorch", "a/b/c", "-a/b", "a/..", "a/.", "a/b:", "a/b:x:y", "a/b:../x", "a/b:x y", "a/b:-x",
    "a/b:x.lock", "a/b:.x", "a/b:x\x00", "a" * 40 + "/b", "a/" + "b" * 101,
])
def test_repo_grammar(bad):
    with pytest.raises(InvalidRepoError):
        parse_repo(bad)


def test_repo_grammar_accepts_real_names():
    assert parse_repo("ailzhang/torchhub_example:ci/test_slash").ref == "ci/test_slash"
    assert parse_repo("facebookresearch/pytorchvideo:v0.1.0").name == "pytorchvideo"
    assert parse_repo("NVIDIA/DeepLearningExamples:torchhub").owner == "NVIDIA"
    assert parse_repo("a/.github").ref is None


# --- trust ----------------------------------------------------------------------


def test_cached_folder_alone_never_implies_trust(gh, hub):
    gh.add_repo("alice", "model").commit({"hubconf.py": hubconf("x")})
    load(gh, hub, "alice/model", trust_repo=True)
    TrustStore(hub).path.unlink()
    # torch.hub trusts it now because its folder exists ("legacy"); safehub asks.
    asked = []
    with pytest.raises(UntrustedRepoError, match="Untrusted repository"):
        load(gh, hub, "alice/model", trust_repo="check", prompt=lambda q: asked.append(q) or "n")
    assert len(asked) == 1


def test_trusted_list_lives_in_the_hub_dir_keyed_by_host(gh, hub):
    gh.add_repo("alice", "model").commit({"hubconf.py": hubconf("x")})
    load(gh, hub, "alice/model", trust_repo=True)
    data = json.loads((hub / "trusted_list.json").read_text())
    assert data["repos"] == [f"{gh.host_key}/alice/model"]
    # Nothing about trust inside the cached tree the sandbox sees.
    assert not any("trust" in p.name for p in (hub / "repos").rglob("*"))


def test_non_interactive_untrusted_repo_is_a_clear_error(gh, hub, tmp_path):
    gh.add_repo("alice", "model").commit({"hubconf.py": hubconf("x")})
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from safehub._fetch import get_repo
        from safehub._errors import UntrustedRepoError
        try:
            get_repo("alice/model", trust_repo="check", hub_dir={str(hub)!r}, env={gh.env()!r})
        except UntrustedRepoError as exc:
            print("CLEAR:", exc)
    """)
    proc = subprocess.run([sys.executable, "-c", script], stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=120)
    assert "CLEAR: Untrusted repository" in proc.stdout, proc.stderr
    assert "EOFError" not in proc.stderr
    with pytest.raises(UntrustedRepoError, match="prompts are disabled"):
        load(gh, hub, "alice/model", trust_repo=False, allow_prompt=False)
    assert gh.log == []  # trust is checked before any network access


def test_trust_values_match_torch_hub(tmp_path):
    kw = dict(host="github.com", is_github_com=True, owner="alice", name="m")
    with pytest.warns(UserWarning, match="untrusted repository"):
        check_trust(tmp_path, trust_repo=None, **kw)
    assert TrustStore(tmp_path).load() == set()
    answers = iter(["y"])
    check_trust(tmp_path, trust_repo=False, prompt=lambda q: next(answers), **kw)
    assert TrustStore(tmp_path).load() == {"github.com/alice/m"}
    check_trust(tmp_path, trust_repo="check", prompt=lambda q: pytest.fail("asked"), **kw)
    with pytest.raises(UntrustedRepoError, match="unrecognized"):
        check_trust(tmp_path, trust_repo=False, prompt=lambda q: "maybe", **kw)
    # torch.hub's built-in owners count on github.com only, not on a mirror or GHE.
    check_trust(tmp_path, trust_repo="check", host="github.com", is_github_com=True, owner="pytorch", name="vision",
                prompt=lambda q: pytest.fail("asked"))
    with pytest.raises(UntrustedRepoError):
        check_trust(tmp_path, trust_repo="check", host="ghe.example", is_github_com=False, owner="pytorch",
                    name="vision", prompt=lambda q: "n")
    with pytest.raises(ValueError):
        check_trust(tmp_path, trust_repo="yes", **kw)


def test_builtin_owners_on_a_mirror_only_when_configured(gh, hub):
    gh.add_repo("pytorch", "vision").commit({"hubconf.py": hubconf("v")})
    with pytest.raises(UntrustedRepoError):
        load(gh, hub, "pytorch/vision", trust_repo="check", prompt=lambda q: "n")
    # SAFEHUB_TRUST_BUILTIN_OWNERS=1: this GHE host mirrors github.com's owners.
    env = {**gh.env(), "SAFEHUB_TRUST_BUILTIN_OWNERS": "1"}
    co = load(gh, hub, "pytorch/vision", trust_repo="check", env=env, prompt=lambda q: pytest.fail("asked"))
    assert marker(co) == "v"
    assert TrustStore(hub).load() == set()  # built-in trust is not written to the list
    # only the built-in owners, not anyone on that host
    gh.add_repo("mallory", "vision").commit({"hubconf.py": hubconf("m")})
    with pytest.raises(UntrustedRepoError):
        load(gh, hub, "mallory/vision", trust_repo="check", env=env, prompt=lambda q: "n")
    with pytest.raises(ConfigError, match="SAFEHUB_TRUST_BUILTIN_OWNERS='maybe' is not a boolean"):
        load(gh, hub, "pytorch/vision", trust_repo="check", env={**env, "SAFEHUB_TRUST_BUILTIN_OWNERS": "maybe"})


def test_invalid_offline_value_is_a_config_error(gh, hub, capsys, monkeypatch):
    gh.add_repo("alice", "model").commit({"hubconf.py": hubconf("x")})
    with pytest.raises(ConfigError, match="SAFEHUB_OFFLINE='sometimes' is not a boolean") as info:
        load(gh, hub, "alice/model", env={**gh.env(), "SAFEHUB_OFFLINE": "sometimes"})
    assert isinstance(info.value, ValueError) and "1/0, true/false" in info.value.hint
    # the CLI prints it as an error line with its exit code, no traceback
    from safehub._cli import main

    monkeypatch.setenv("SAFEHUB_OFFLINE", "sometimes")
    monkeypatch.setenv("SAFEHUB_HOME", str(hub))
    for key, value in gh.env().items():
        monkeypatch.setenv(key, value)
    assert main(["list", "alice/model", "--trust-repo", "true"]) == ConfigError.exit_code
    err = capsys.readouterr().err
    assert err.startswith("safehub: error: SAFEHUB_OFFLINE='sometimes' is not a boolean") and "Traceback" not in err


# --- HTTP failures ----------------------------------------------------------------


def test_transient_errors_are_retried(gh, hub):
    gh.add_repo("alice", "model").commit({"hubconf.py": hubconf("x")})
    gh.fail_next = 2
    assert marker(load(gh, hub, "alice/model")) == "x"
    gh.fail_next = 10
    with pytest.raises(FetchError, match="503"):
        load(gh, hub, "alice/model:main", force_reload=True)


def test_rate_limit_and_404_messages(gh, hub):
    gh.add_repo("alice", "model").commit({"hubconf.py": hubconf("x")})
    with pytest.raises(RepoNotFoundError, match="404") as info:
        load(gh, hub, "alice/missing:main")
    assert "check the spelling" in str(info.value)
    gh.rate_limit_remaining = 0
    with pytest.raises(RateLimitError, match="rate limit") as info:
        load(gh, hub, "alice/model:main")
    assert "GITHUB_TOKEN" in str(info.value) and "resets at" in str(info.value)


def test_progress_bars_follow_verbose_and_the_env_switch(gh, hub, capsys):
    gh.add_repo("alice", "model").commit({"hubconf.py": hubconf("x"), "w.bin": os.urandom(300_000)})
    get_repo("alice/model", trust_repo=True, hub_dir=hub, env=gh.env(), verbose=False)
    assert capsys.readouterr().err == ""
    get_repo("alice/model", trust_repo=True, hub_dir=hub, env=gh.env(SAFEHUB_DISABLE_PROGRESS_BARS="1"),
             force_reload=True)
    assert capsys.readouterr().err == ""
    get_repo("alice/model", trust_repo=True, hub_dir=hub, env=gh.env(), force_reload=True, verbose=True)
    assert "100%" in capsys.readouterr().err


def test_unreachable_server_is_retried_then_explained(hub):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"SAFEHUB_GITHUB_URL": f"http://127.0.0.1:{port}"}
    with pytest.raises(FetchError, match="after 3 attempts") as info:
        get_repo("alice/model:main", trust_repo=True, hub_dir=hub, env=env, verbose=False)
    assert "SAFEHUB_OFFLINE" in str(info.value)
