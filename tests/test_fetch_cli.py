"""`safehub cache ls|rm|verify` on a real cache filled from the loopback GitHub."""

from __future__ import annotations

import argparse
import json
import os

import pytest
from github_server import FakeGitHub

from safehub._fetch import add_cache_commands, get_repo


def run_cli(capsys, hub, *argv):
    parser = argparse.ArgumentParser(prog="safehub")
    sub = parser.add_subparsers(dest="command", required=True)
    add_cache_commands(sub)
    args = parser.parse_args(list(argv))
    args.hub_dir = str(hub)
    code = args.func(args)
    out = capsys.readouterr().out
    return code, out


@pytest.fixture
def filled(tmp_path):
    hub = tmp_path / "hub"
    with FakeGitHub() as gh:
        a = gh.add_repo("alice", "model")
        a.commit({"hubconf.py": b"A = 1\n", "big.bin": b"x" * 5000})
        b = gh.add_repo("bob", "net")
        b.commit({"hubconf.py": b"B = 1\n"})
        for repo in ("alice/model", "bob/net"):
            get_repo(repo, trust_repo=True, hub_dir=hub, env=gh.env(), verbose=False)
        yield hub, gh


def test_ls_json_and_text(capsys, filled):
    hub, gh = filled
    code, out = run_cli(capsys, hub, "cache", "ls", "--json")
    data = json.loads(out)
    assert code == 0
    assert [(e["owner"], e["name"], e["refs"]) for e in data["entries"]] == [("alice", "model", ["@default"]),
                                                                             ("bob", "net", ["@default"])]
    assert data["entries"][0]["host"] == gh.host_key and data["entries"][0]["size_bytes"] >= 5000
    code, out = run_cli(capsys, hub, "cache", "ls", "bob/net")
    assert "bob/net@" in out and "alice" not in out


def test_ls_counts_the_envs_and_points_to_cache_envs(capsys, filled):
    hub, _ = filled
    code, out = run_cli(capsys, hub, "cache", "ls")
    assert code == 0 and "0 environments, 0 B: list them with `safehub cache envs`" in out
    env = hub / "envs" / ("a" * 16)  # a folder shaped like an env (incomplete: no marker)
    (env / "lib").mkdir(parents=True)
    (env / "lib" / "x.py").write_bytes(b"x" * 3000)
    data = json.loads(run_cli(capsys, hub, "cache", "ls", "--json")[1])
    assert data["envs"]["count"] == 1 and data["envs"]["total_bytes"] >= 3000
    assert data["envs"]["details"] == "safehub cache envs"
    assert "1 environments, 2.9 KiB" in run_cli(capsys, hub, "cache", "ls")[1]


def test_rm_shows_what_it_frees_before_deleting(capsys, filled, monkeypatch):
    hub, _ = filled
    code, out = run_cli(capsys, hub, "cache", "rm", "alice/model", "--dry-run")
    assert code == 0 and "will remove" in out and "this frees" in out
    assert len(json.loads(run_cli(capsys, hub, "cache", "ls", "--json")[1])["entries"]) == 2
    # No terminal and no --yes: nothing is deleted.
    monkeypatch.setattr("sys.stdin.isatty", lambda: False, raising=False)
    code, out = run_cli(capsys, hub, "cache", "rm", "alice/model")
    assert code == 1 and "this frees" in out
    assert len(json.loads(run_cli(capsys, hub, "cache", "ls", "--json")[1])["entries"]) == 2
    code, out = run_cli(capsys, hub, "cache", "rm", "alice/model", "--yes", "--json")
    data = json.loads(out)
    assert code == 0 and [r["name"] for r in data["removed"]] == ["model"] and data["freed_bytes"] >= 5000
    left = json.loads(run_cli(capsys, hub, "cache", "ls", "--json")[1])["entries"]
    assert [e["name"] for e in left] == ["net"]
    assert not any(p.name.startswith(("rm", "old")) for p in (hub / "repos" / ".tmp").iterdir())


def test_verify_finds_tampering(capsys, filled):
    hub, _ = filled
    code, out = run_cli(capsys, hub, "cache", "verify", "--json")
    assert code == 0 and json.loads(out)["corrupted"] == 0
    entry = json.loads(run_cli(capsys, hub, "cache", "ls", "bob/net", "--json")[1])["entries"][0]
    path = os.path.join(entry["path"], "hubconf.py")
    os.chmod(path, 0o644)
    with open(path, "a") as f:
        f.write("import os\n")
    code, out = run_cli(capsys, hub, "cache", "verify", "--json")
    data = json.loads(out)
    assert code == 1 and data["corrupted"] == 1
    assert [e["ok"] for e in data["entries"]] == [True, False]
    code, out = run_cli(capsys, hub, "cache", "verify")
    assert "CORRUPT" in out and "safehub cache rm" in out
