"""What a fetched repo can reach from inside the sandbox, end to end through
safehub.load with the default backend: no GitHub token in its environment, its
own cached tree not writable, the hub dir (trusted list included) out of reach."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from github_server import FakeGitHub

import safehub
from safehub import _config
from safehub._fetch._cache import RepoCache
from safehub._fetch._trust import TrustStore

pytestmark = pytest.mark.slow  # one real sandboxed run

PROBE = b'''
dependencies = []
import json, os


def probe():
    here = os.path.dirname(os.path.abspath(__file__))
    found = {"env_token": sorted(k for k in os.environ if "TOKEN" in k or "GITHUB" in k)}
    for what, path in (("new_file", os.path.join(here, "planted.py")), ("hubconf", os.path.join(here, "hubconf.py"))):
        try:
            with open(path, "a") as f:
                f.write("# planted")
            found[what] = "WRITABLE"
        except OSError as exc:
            found[what] = type(exc).__name__
    hub = here
    for _ in range(5):  # <hub>/repos/<host>/<owner>/<name>/<sha>
        hub = os.path.dirname(hub)
    try:
        with open(os.path.join(hub, "trusted_list.json"), "a") as f:
            f.write("evil")
        found["trusted_list"] = "WRITABLE"
    except OSError as exc:
        found["trusted_list"] = type(exc).__name__
    raise RuntimeError("FINDINGS" + json.dumps(found))
'''


def test_repo_code_gets_no_token_and_no_writable_cache(tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    with FakeGitHub(token="tok-never-in-sandbox") as gh:
        gh.add_repo("alice", "probe", private=True).commit({"hubconf.py": PROBE})
        for key, value in gh.env(GITHUB_TOKEN=gh.token, SAFEHUB_GITHUB_TOKEN=gh.token, SAFEHUB_HOME=str(hub)).items():
            monkeypatch.setenv(key, value)
        monkeypatch.setattr(_config, "_hub_dir_override", None)
        host_key = gh.host_key
        with pytest.raises(safehub.EntrypointFailedError, match="FINDINGS") as info:
            safehub.load("alice/probe", "probe", trust_repo=True, verbose=False)
    found = json.loads(str(info.value).split("FINDINGS", 1)[1].splitlines()[0])
    assert found["env_token"] == []
    assert found["new_file"] != "WRITABLE" and found["hubconf"] != "WRITABLE"
    assert found["trusted_list"] != "WRITABLE"
    cache = RepoCache(hub)
    (entry,) = list(cache.entries())
    cache.verify(entry)  # the tree is exactly what was downloaded
    assert TrustStore(hub).load() == {f"{host_key}/alice/probe"}
    assert "evil" not in Path(TrustStore(hub).path).read_text()
