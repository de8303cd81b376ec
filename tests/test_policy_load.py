"""The policy wired into safehub.load: each rule refuses at its step, before the step
acts (no request to the GitHub server, no env build, no sandbox run), and a load the
policy allows goes through. The sandbox is the fake backend and the env the host
interpreter (see test_api_fake.py for what is faked and why); GitHub is the real
loopback server of tests/github_server.py."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from conftest import no_ambient_policy
import torch
from github_server import FakeGitHub, LoopbackService
from torch import nn

import safehub
import specgen
from safehub import PolicyError, UntrustedRepoError
from safehub._cli import main
from safehub._env import host_env
from safehub._fetch import _http
from safehub._sandbox import FakeBackend, FakeJob, Limits

HUBCONF = b"dependencies = []\n\ndef tiny():\n    raise AssertionError('the host never imports this')\n"


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    no_ambient_policy(monkeypatch, tmp_path)
    monkeypatch.setenv("SAFEHUB_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(_http, "BACKOFF_BASE_S", 0.0)


class Envs:
    """Stands in for ensure_env: the host interpreter, reporting ``dists`` as installed."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.dists: tuple[str, ...] = ()

    def __call__(self, entries: Any, **kwargs: Any) -> Any:
        self.calls.append({"entries": tuple(entries), **kwargs})
        return dataclasses.replace(host_env(), distributions=self.dists, records={d: "0" * 64 for d in self.dists})


@pytest.fixture
def envs(monkeypatch: pytest.MonkeyPatch) -> Envs:
    fake = Envs()
    monkeypatch.setattr("safehub._env.ensure_env", fake)
    return fake


@pytest.fixture
def local_repo(tmp_path: Path) -> Path:
    d = tmp_path / "repo"
    d.mkdir()
    (d / "hubconf.py").write_bytes(HUBCONF)
    return d


@pytest.fixture
def gh(monkeypatch: pytest.MonkeyPatch):
    with FakeGitHub() as server:
        repo = server.add_repo("alice", "model")
        repo.commit({"hubconf.py": HUBCONF})
        repo.release_asset("v1", "w.bin", b"weights" * 100)
        for key, value in server.env().items():
            monkeypatch.setenv(key, value)
        yield server


class Named(FakeBackend):
    """The fake under another backend's name: the policy judges a backend by its name."""

    def __init__(self, name: str, handler: Any) -> None:
        super().__init__(handler)
        self.name = name


class Runner:
    """Plays the runner: asks for ``urls`` until staged, then writes a fixed small model."""

    def __init__(self, urls: tuple[str, ...] = ()) -> None:
        self.urls = urls

    def __call__(self, job: FakeJob) -> None:
        if self.urls and not (job.in_dir / "downloads" / "manifest.json").exists():
            job.write_result({"status": "error", "error": {"category": "needs_download", "urls": list(self.urls)}})
            return
        torch.manual_seed(0)
        spec, weights = specgen.full_spec(nn.Linear(2, 2))
        specgen.write(job.out_dir, spec, weights)
        job.write_result({"status": "ok", "summary": {"root": "module", "modules": {}}})


def policy(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    path.chmod(0o644)
    return path


def archive_requests(gh: FakeGitHub) -> list[str]:
    return list(gh.archive_requests)


# --- the repo and ref, before any network --------------------------------------------


def test_a_repo_off_the_list_is_refused_before_any_request(tmp_path, gh, envs) -> None:
    backend = Named("bwrap", Runner())
    pol = policy(tmp_path, "[repos]\nallow = [\"alice-evil/*\", \"bob/model\"]\n")
    with pytest.raises(PolicyError, match=r"\[repos\] allow .*alice/model is not on the list"):
        safehub.load("alice/model", "tiny", trust_repo=True, sandbox=backend, verbose=False, policy=pol)
    assert gh.log == [] and backend.jobs == [] and envs.calls == []
    pol = policy(tmp_path, "[repos]\nallow = [\"ALICE/*\"]\n")
    got = safehub.load("alice/model", "tiny", trust_repo=True, sandbox=backend, verbose=False, policy=pol)
    assert isinstance(got, nn.Module) and len(backend.jobs) == 1


def test_require_pin_refuses_a_branch_before_any_request_and_loads_a_sha(tmp_path, gh, envs) -> None:
    backend = Named("bwrap", Runner())
    sha = gh.repos[("alice", "model")].branches["main"]
    pol = policy(tmp_path, "[repos]\nrequire_pin = true\n")
    with pytest.raises(PolicyError, match="require_pin"):
        safehub.load("alice/model:main", "tiny", trust_repo=True, sandbox=backend, verbose=False, policy=pol)
    assert gh.log == []
    got = safehub.load("alice/model", "tiny", revision=sha, trust_repo=True, sandbox=backend, verbose=False, policy=pol)
    assert got.safehub_info.sha == sha
    assert got.safehub_info.policy == {"files": [str(pol)], "locks": []}


def test_prompts_off_makes_an_untrusted_repo_an_error_without_asking(tmp_path, gh, envs, monkeypatch) -> None:
    monkeypatch.setattr("builtins.input", lambda q: pytest.fail("the policy forbids prompts"))
    pol = policy(tmp_path, "[trust]\nprompts = false\n")
    with pytest.raises(UntrustedRepoError, match="prompts are disabled by policy"):
        safehub.load("alice/model", "tiny", trust_repo="check", sandbox=Named("bwrap", Runner()), verbose=False,
                     policy=pol)
    assert archive_requests(gh) == []


def test_allow_local_false_refuses_a_folder_before_anything(tmp_path, local_repo, envs) -> None:
    backend = Named("bwrap", Runner())
    pol = policy(tmp_path, "[repos]\nallow_local = false\n")
    with pytest.raises(PolicyError, match="allow_local") as info:
        safehub.load(str(local_repo), "tiny", source="local", sandbox=backend, verbose=False, policy=pol)
    assert str(pol) in str(info.value) and backend.jobs == [] and envs.calls == []


# --- the sandbox and limits, before anything is spawned --------------------------------


def test_a_sandbox_below_the_minimum_is_refused_before_the_env_is_built(tmp_path, local_repo, envs) -> None:
    pol = policy(tmp_path, "[sandbox]\nminimum = \"landlock\"\n")
    weak = Named("process", Runner())
    with pytest.raises(PolicyError, match="'process' sandbox is weaker than the minimum 'landlock'"):
        safehub.load(str(local_repo), "tiny", source="local", sandbox=weak, verbose=False, policy=pol)
    with pytest.raises(PolicyError, match="weaker than the minimum"):  # by name: refused before it is probed
        safehub.load(str(local_repo), "tiny", source="local", sandbox="process", verbose=False, policy=pol)
    assert weak.jobs == [] and envs.calls == []
    strong = Named("landlock", Runner())
    safehub.load(str(local_repo), "tiny", source="local", sandbox=strong, verbose=False, policy=pol)
    assert len(strong.jobs) == 1


def test_limits_are_maxima_at_load(tmp_path, local_repo, envs) -> None:
    pol = policy(tmp_path, "[limits]\nmemory_bytes = 1000000000\ntimeout_s = 60\n")
    backend = Named("bwrap", Runner())
    safehub.load(str(local_repo), "tiny", source="local", sandbox=backend, verbose=False, policy=pol)
    sent = backend.jobs[0].sandbox_request.limits
    assert sent.memory_bytes == 1_000_000_000 and sent.timeout_s == 60.0 and sent.max_pids == Limits().max_pids
    with pytest.raises(PolicyError, match=r"\[limits\] memory_bytes .*Limits.memory_bytes=2000000000 is above"):
        safehub.load(str(local_repo), "tiny", source="local", sandbox=backend, verbose=False, policy=pol,
                     limits=Limits(memory_bytes=2_000_000_000))
    assert len(backend.jobs) == 1 and len(envs.calls) == 1


# --- packages, before the install and before the env is used ---------------------------


def test_a_package_off_the_list_is_refused_before_the_install(tmp_path, local_repo, envs) -> None:
    pol = policy(tmp_path, "[packages]\nallow = [\"numpy\"]\n")
    backend = Named("bwrap", Runner())
    with pytest.raises(PolicyError, match="would install requests, not on the list"):
        safehub.load(str(local_repo), "tiny", source="local", sandbox=backend, verbose=False, policy=pol,
                     extra_dependencies=["requests>=2"])
    assert envs.calls == [] and backend.jobs == []
    envs.dists = ("numpy==1.26.4", "scipy==1.11.0")  # numpy pulled scipy in: resolved, not declared
    with pytest.raises(PolicyError, match=r"holds numpy==1.26.4, scipy==1.11.0|holds scipy==1.11.0"):
        safehub.load(str(local_repo), "tiny", source="local", sandbox=backend, verbose=False, policy=pol,
                     extra_dependencies=["numpy"])
    assert backend.jobs == []  # the env was never used
    envs.dists = ("numpy==1.26.4",)
    safehub.load(str(local_repo), "tiny", source="local", sandbox=backend, verbose=False, policy=pol,
                 extra_dependencies=["numpy"])
    assert len(backend.jobs) == 1


def test_the_policy_picks_the_dependency_mode_when_the_caller_did_not(tmp_path, local_repo, envs) -> None:
    pol = policy(tmp_path, "[packages]\nmodes = [\"declared\"]\n")
    safehub.load(str(local_repo), "tiny", source="local", sandbox=Named("bwrap", Runner()), verbose=False, policy=pol)
    assert envs.calls[-1]["mode"] == "declared"
    with pytest.raises(PolicyError, match="modes"):
        safehub.load(str(local_repo), "tiny", source="local", sandbox=Named("bwrap", Runner()), verbose=False,
                     policy=pol, dependencies_mode="scan")


# --- the broker -----------------------------------------------------------------------


def test_download_hosts_are_checked_per_url_and_on_every_redirect(tmp_path, local_repo, gh, envs) -> None:
    url = f"{gh.url}/alice/model/releases/download/v1/w.bin"  # 302 to the "codeload" origin
    only_main = policy(tmp_path, f"[downloads]\nallow_hosts = [\"{gh.url}\"]\n")
    with pytest.raises(PolicyError, match=r"\[downloads\] allow_hosts .*not an allowed host") as info:
        safehub.load(str(local_repo), "tiny", source="local", sandbox=Named("bwrap", Runner((url,))), verbose=False,
                     policy=only_main)
    assert gh.codeload_url.split("//")[1] in str(info.value), "the redirect target is what was refused"
    both = policy(tmp_path, f"[downloads]\nallow_hosts = [\"{gh.url}\", \"{gh.codeload_url}\"]\n")
    got = safehub.load(str(local_repo), "tiny", source="local", sandbox=Named("bwrap", Runner((url,))),
                       verbose=False, policy=both)
    assert [d["url"] for d in got.safehub_info.downloads] == [url]


def test_a_url_on_another_host_is_refused_before_any_request(tmp_path, local_repo, envs, monkeypatch) -> None:
    with LoopbackService() as service:
        monkeypatch.setenv("SAFEHUB_DOWNLOAD_ALLOW_HOSTS", service.origin)  # the SSRF rule would let it through
        pol = policy(tmp_path, "[downloads]\nallow_hosts = [\"download.pytorch.org\"]\n")
        with pytest.raises(PolicyError, match="allow_hosts"):
            safehub.load(str(local_repo), "tiny", source="local", verbose=False, policy=pol,
                         sandbox=Named("bwrap", Runner((f"{service.origin}/secret",))))
        assert service.requests == []


# --- the CLI --------------------------------------------------------------------------


def test_cli_policy_show_and_check(tmp_path, monkeypatch, capsys) -> None:
    system = tmp_path / "system.toml"
    system.write_text("[repos]\nallow = [\"alice/*\"]\nrequire_pin = true\n[sandbox]\nminimum = \"process\"\n")
    system.chmod(0o644)
    user = policy(tmp_path, "[repos]\nallow = [\"alice/model\"]\n")
    monkeypatch.setenv("SAFEHUB_SYSTEM_POLICY", str(system))
    monkeypatch.setenv("SAFEHUB_POLICY", str(user))
    assert main(["policy", "show", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["rules"]["repos.allow"] == {"value": ["alice/model"], "from": [str(system), str(user)]}
    assert shown["rules"]["repos.require_pin"] == {"value": True, "from": [str(system)]}
    assert main(["policy", "show"]) == 0
    assert f"allow = [\"alice/model\"]    # from {system}, narrowed by {user}" in capsys.readouterr().out

    assert main(["policy", "check", "alice/model:main", "--sandbox", "process", "--json"]) == PolicyError.exit_code
    checked = json.loads(capsys.readouterr().out)
    assert checked["allowed"] is False
    (repo_row,) = [r for r in checked["checks"] if r["step"] == "repo"]
    assert "require_pin" in repo_row["why"] and repo_row["ok"] is False
    sha = "a" * 40
    assert main(["policy", "check", f"alice/model:{sha}", "--sandbox", "process", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["allowed"] is True
    assert main(["policy", "check", f"alice/other:{sha}", "--sandbox", "process"]) == PolicyError.exit_code
    assert "alice/other is not on the list (alice/model)" in capsys.readouterr().out

    user.write_text("[lock]\nrequire = true\n")  # nothing can load without a lock: said as a refused step
    assert main(["policy", "check", f"alice/model:{sha}", "--json"]) == PolicyError.exit_code
    (row,) = json.loads(capsys.readouterr().out)["checks"]
    assert row["step"] == "policy" and "[lock] require" in row["why"] and not row["ok"]

    user.write_text("[repos]\nrequire_pin = false\n")
    assert main(["policy", "show", "--json"]) == PolicyError.exit_code
    assert "tries to widen the rule [repos] require_pin" in json.loads(capsys.readouterr().out)["message"]


def test_cli_load_refused_by_policy_exits_with_the_policy_code(tmp_path, local_repo, monkeypatch, capsys) -> None:
    monkeypatch.setenv("SAFEHUB_POLICY", str(policy(tmp_path, "[repos]\nallow_local = false\n")))
    assert main(["load", str(local_repo), "tiny"]) == PolicyError.exit_code == 11
    assert "allow_local" in capsys.readouterr().err


# --- every sandboxed job, and list/help --------------------------------------------------


def test_run_job_applies_the_environments_policy_to_every_job(tmp_path, monkeypatch) -> None:
    """The backstop under load_state_dict_from_url's convert jobs and deferred exports:
    the backend's minimum before any spawn, and the job's limits lowered to the maxima."""
    from safehub._jobs import JobRequest, run_job

    monkeypatch.setenv("SAFEHUB_POLICY", str(policy(tmp_path, "[sandbox]\nminimum = \"bwrap\"\n"
                                                              "[limits]\nmax_pids = 16\n")))
    weak = Named("landlock", Runner())
    with pytest.raises(PolicyError, match="'landlock' sandbox is weaker than the minimum 'bwrap'"):
        run_job(JobRequest(action="list"), python_env=host_env(), backend=weak, hub_dir=tmp_path / "hub")
    assert weak.jobs == []

    def listing(job: FakeJob) -> None:
        job.write_result({"status": "ok", "entrypoints": []})

    strong = Named("bwrap", listing)
    with run_job(JobRequest(action="list"), python_env=host_env(), backend=strong, hub_dir=tmp_path / "hub"):
        pass
    assert strong.jobs[0].sandbox_request.limits.max_pids == 16


def test_list_and_help_obey_the_repo_rules(tmp_path, gh, monkeypatch) -> None:
    monkeypatch.setenv("SAFEHUB_POLICY", str(policy(tmp_path, "[repos]\nallow = [\"bob/*\"]\n")))
    with pytest.raises(PolicyError, match="alice/model is not on the list"):
        safehub.list("alice/model", trust_repo=True)
    with pytest.raises(PolicyError, match="alice/model is not on the list"):
        safehub.help("alice/model", "tiny", trust_repo=True)
    assert gh.log == []


def test_a_policy_object_is_merged_like_a_user_file(tmp_path, local_repo, envs, monkeypatch) -> None:
    from safehub._policy import policy_from_dict

    system = policy(tmp_path, "[repos]\nallow_local = false\n")
    monkeypatch.setenv("SAFEHUB_SYSTEM_POLICY", str(system))
    with pytest.raises(PolicyError, match="tries to widen the rule"):
        safehub.load(str(local_repo), "tiny", source="local", sandbox=Named("bwrap", Runner()), verbose=False,
                     policy=policy_from_dict({"repos": {"allow_local": True}}))
