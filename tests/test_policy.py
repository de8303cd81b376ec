"""The organisation policy: reading, strict validation, merging system and user layers,
the matching rules, and each rule's allowed/refused decision with its error text.
Pure host logic (no sandbox, no network); how the rules are wired into a load is in
test_policy_load.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import no_ambient_policy

from safehub import PolicyError, UntrustedRepoError
from safehub._fetch import RepoRequest
from safehub._guard import LoadGuard
from safehub._jobs import JobRequest
from safehub._policy import SCHEMA, Policy, load_policy, policy_from_dict, read_policy_file
from safehub._policy_match import parse_host, parse_repo_pattern
from safehub._sandbox import FakeBackend, Limits

SHA = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(autouse=True)
def only_named_policies(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Only the layers a test names apply (not this machine's /etc or user config)."""
    no_ambient_policy(monkeypatch, tmp_path)


def write(folder: Path, text: str, name: str = "policy.toml", mode: int = 0o644) -> Path:
    path = folder / name
    path.write_text(text)
    os.chmod(path, mode)
    return path


def guard_for(tmp_path: Path, text: str) -> tuple[LoadGuard, Path]:
    path = write(tmp_path, text)
    return LoadGuard.for_call(policy=path), path


def gh(repo: str, revision: str | None = None) -> RepoRequest:
    return RepoRequest(repo_or_dir=repo, source="github", revision=revision)


# --- strict validation ---------------------------------------------------------


def test_unknown_key_names_the_file_the_key_and_what_is_allowed(tmp_path: Path) -> None:
    path = write(tmp_path, "[repos]\nallow = []\nrequire_pinned = true\n")
    with pytest.raises(PolicyError) as info:
        read_policy_file(path)
    text = str(info.value)
    assert str(path) in text and "[repos] require_pinned is not a known key" in text
    assert "allow, require_pin, allow_local" in text


def test_unknown_section_names_the_sections_allowed(tmp_path: Path) -> None:
    path = write(tmp_path, "[repo]\nallow = []\n")
    with pytest.raises(PolicyError, match=r"unknown section \[repo\].*") as info:
        read_policy_file(path)
    assert "repos, sandbox, limits, downloads, packages, trust, lock" in str(info.value)


@pytest.mark.parametrize("text, words", [
    ("[repos]\nrequire_pin = \"yes\"\n", "[repos] require_pin must be true or false"),
    ("[repos]\nallow = \"alice/*\"\n", "[repos] allow must be a list of strings"),
    ("[repos]\nallow = [\"alice/mo*\"]\n", "only owner/* may use a wildcard"),
    ("[repos]\nallow = [\"al\u0456ce/model\"]\n", "non-ASCII"),
    ("[repos]\nallow = [\"alice/model/x\"]\n", "is not owner/name or owner/*"),
    ("[sandbox]\nminimum = \"docker\"\n", "[sandbox] minimum must be one of 'process', 'landlock', 'bwrap'"),
    ("[limits]\nmemory_bytes = 1.5\n", "[limits] memory_bytes must be an integer"),
    ("[limits]\ntimeout_s = -1\n", "must be a positive finite number"),
    ("[limits]\nmemory = 1\n", "[limits] memory is not a known key"),
    ("[downloads]\nallow_hosts = [\"https://user@example.com\"]\n", "bare origin"),
    ("[downloads]\nallow_hosts = [\"ex*mple.com\"]\n", "wildcard only as a leading"),
    ("[packages]\nallow = [\"numpy>>1\"]\n", "not valid PEP 440"),
    ("[packages]\nmodes = [\"guess\"]\n", "[packages] modes must list some of declared, scan, requirements"),
    ("[packages]\nallow_sdist = true\n", "never builds source distributions"),
    ("[lock]\nfile = 3\n", "[lock] file must be a path"),
    ("repos = 1\n", "repos must be a table"),
    ("[repos\n", "not valid TOML"),
])
def test_bad_values_are_refused_with_the_rule_in_the_message(tmp_path: Path, text: str, words: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(PolicyError) as info:
        read_policy_file(path)
    assert words in str(info.value) and str(path) in str(info.value)


def test_limits_keys_are_exactly_the_fields_of_safehub_limits() -> None:
    import dataclasses

    # Every numeric field; switches such as warm_worker are no maximum.
    assert set(SCHEMA["limits"]) == {f.name for f in dataclasses.fields(Limits) if not isinstance(f.default, bool)}
    assert "warm_worker" not in SCHEMA["limits"] and "timeout_s" in SCHEMA["limits"]


def test_the_example_org_policy_is_valid() -> None:
    example = Path(__file__).resolve().parent.parent / "examples" / "policy" / "org-policy.toml"
    policy = read_policy_file(example)
    assert policy["repos"]["require_pin"] is True and policy["sandbox"]["minimum"] == "bwrap"


# --- where policies come from, and the merge ----------------------------------------


SYSTEM = """
[repos]
allow = ["pytorch/*", "alice/model"]
require_pin = true
allow_local = false
[sandbox]
minimum = "landlock"
allow_gpu = false
[limits]
memory_bytes = 4000000000
timeout_s = 300
[downloads]
allow_hosts = ["download.pytorch.org", "*.example.com"]
[packages]
allow = ["numpy>=1.20", "pillow"]
require_hashes = true
modes = ["declared", "requirements"]
[trust]
prompts = false
[lock]
require = true
"""


@pytest.fixture
def system(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "etc").mkdir()
    path = write(tmp_path / "etc", SYSTEM, "system.toml")
    monkeypatch.setenv("SAFEHUB_SYSTEM_POLICY", str(path))
    return path


@pytest.mark.parametrize("user, rule", [
    ("[repos]\nallow = [\"alice/*\"]\n", "[repos] allow"),  # alice/model only -> all of alice
    ("[repos]\nallow = [\"pytorch/*\", \"evil/x\"]\n", "[repos] allow"),
    ("[repos]\nrequire_pin = false\n", "[repos] require_pin"),
    ("[repos]\nallow_local = true\n", "[repos] allow_local"),
    ("[sandbox]\nminimum = \"process\"\n", "[sandbox] minimum"),
    ("[sandbox]\nallow_gpu = true\n", "[sandbox] allow_gpu"),
    ("[limits]\nmemory_bytes = 8000000000\n", "[limits] memory_bytes"),
    ("[limits]\ntimeout_s = 301\n", "[limits] timeout_s"),
    ("[downloads]\nallow_hosts = [\"evil.com\"]\n", "[downloads] allow_hosts"),
    ("[downloads]\nallow_hosts = [\"http://download.pytorch.org\"]\n", "[downloads] allow_hosts"),  # http, not https
    ("[downloads]\nallow_hosts = [\"*.pytorch.org\"]\n", "[downloads] allow_hosts"),
    ("[packages]\nallow = [\"numpy\", \"requests\"]\n", "[packages] allow"),
    ("[packages]\nrequire_hashes = false\n", "[packages] require_hashes"),
    ("[packages]\nmodes = [\"scan\"]\n", "[packages] modes"),
    ("[trust]\nprompts = true\n", "[trust] prompts"),
    ("[lock]\nrequire = false\n", "[lock] require"),
])
def test_a_user_policy_cannot_widen_the_system_policy(tmp_path: Path, system: Path, user: str, rule: str) -> None:
    path = write(tmp_path, user, "user.toml")
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    text = str(info.value)
    assert f"tries to widen the rule {rule} set by {system}" in text and str(path) in text
    assert "may only narrow" in text


def test_a_user_policy_may_narrow_and_show_says_where_each_value_came_from(tmp_path: Path, system: Path) -> None:
    user = write(tmp_path, """
[repos]
allow = ["pytorch/vision"]
[sandbox]
minimum = "bwrap"
[limits]
memory_bytes = 1000000000
[downloads]
allow_hosts = ["weights.example.com"]
[packages]
allow = ["numpy<2"]
modes = ["declared"]
""", "user.toml")
    merged = load_policy(user)
    assert [str(p) for p in merged.get("repos", "allow")] == ["pytorch/vision"]
    assert merged.get("sandbox", "minimum") == "bwrap" and merged.get("limits", "memory_bytes") == 1_000_000_000
    assert merged.get("limits", "timeout_s") == 300  # untouched system value
    # both layers' version ranges apply
    assert merged.get("packages", "allow") == (("numpy", ">=1.20"), ("numpy", "<2"))
    shown = merged.as_dict()
    assert shown["files"] == [str(system), str(user)]
    assert shown["rules"]["repos.allow"]["from"] == [str(system), str(user)]
    assert shown["rules"]["limits.timeout_s"] == {"value": 300, "from": [str(system)]}
    assert shown["rules"]["packages.allow"]["value"] == ["numpy>=1.20", "numpy<2"]


def test_user_policy_order_api_then_env_then_config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write(tmp_path, "[repos]\nrequire_pin = true\n", "config.toml")
    env = write(tmp_path, "[repos]\nallow_local = false\n", "env.toml")
    api = write(tmp_path, "[trust]\nprompts = false\n", "api.toml")
    monkeypatch.setattr("safehub._policy._user_config_policy", lambda: config)
    assert load_policy().files == [str(config)]
    monkeypatch.setenv("SAFEHUB_POLICY", str(env))
    assert load_policy().files == [str(env)]
    assert load_policy(api).files == [str(api)]


def test_the_etc_policy_always_applies_and_the_env_variable_only_narrows_it(tmp_path: Path, monkeypatch) -> None:
    """Red team: SAFEHUB_SYSTEM_POLICY pointing at a permissive file of the user's does
    not replace /etc/safehub/policy.toml: it is one more layer, refused if it widens."""
    etc = write(tmp_path, "[repos]\nallow = [\"pytorch/*\"]\n", "etc.toml")
    mine = write(tmp_path, "[repos]\nallow = [\"evil/*\"]\n", "mine.toml")
    monkeypatch.setattr("safehub._policy.SYSTEM_POLICY_PATH", etc)
    monkeypatch.setenv("SAFEHUB_SYSTEM_POLICY", str(mine))
    with pytest.raises(PolicyError, match="tries to widen the rule .repos. allow"):
        load_policy()
    monkeypatch.delenv("SAFEHUB_SYSTEM_POLICY")
    monkeypatch.setenv("SAFEHUB_POLICY", str(write(tmp_path, "", "empty.toml")))  # an empty user policy adds nothing
    assert [str(p) for p in load_policy().get("repos", "allow")] == ["pytorch/*"]


def test_a_named_policy_file_that_is_missing_is_an_error(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SAFEHUB_POLICY", str(tmp_path / "typo.toml"))
    with pytest.raises(PolicyError, match="typo.toml does not exist"):
        load_policy()


# --- red team: the policy file itself ---------------------------------------------------


def test_a_world_writable_policy_file_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "[repos]\nrequire_pin = true\n", mode=0o666)
    with pytest.raises(PolicyError, match="is world-writable; refusing to use it"):
        read_policy_file(path)


def test_a_symlinked_system_policy_is_judged_by_its_target(tmp_path: Path, monkeypatch) -> None:
    """/etc/safehub/policy.toml -> a file anyone can edit: refused, naming both."""
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)  # world-writable, no sticky bit: anyone can swap the file
    target = write(shared, "[repos]\nallow = [\"pytorch/*\"]\n", "p.toml")
    link = tmp_path / "policy.toml"
    link.symlink_to(target)
    with pytest.raises(PolicyError) as info:
        read_policy_file(link, system=True)
    assert f"a link to {target}" in str(info.value) and "world-writable folder" in str(info.value)
    os.chmod(shared, 0o755)
    assert read_policy_file(link, system=True)["repos"]["allow"][0].owner == "pytorch"  # the same link, safe target


def test_a_system_policy_owned_by_another_user_or_group_writable_is_refused(tmp_path: Path, monkeypatch) -> None:
    path = write(tmp_path, "[repos]\nrequire_pin = true\n", mode=0o664)
    with pytest.raises(PolicyError, match="is group-writable"):
        read_policy_file(path, system=True)
    read_policy_file(path, system=False)  # a user's own policy may be group-writable (it can only narrow)
    os.chmod(path, 0o644)
    monkeypatch.setattr("safehub._policy._trusted_uids", lambda: {os.stat(path).st_uid + 1})
    with pytest.raises(PolicyError, match=f"is owned by uid {os.stat(path).st_uid}, neither root nor the current user"):
        read_policy_file(path, system=True)


def test_a_broken_system_policy_fails_closed(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("safehub._policy.SYSTEM_POLICY_PATH", write(tmp_path, "[repos\n", "etc.toml"))
    with pytest.raises(PolicyError, match="not valid TOML"):
        LoadGuard.for_call()


# --- matching: repos ----------------------------------------------------------------


@pytest.mark.parametrize("repo, allowed", [
    ("alice/model", True),
    ("Alice/MODEL", True),  # GitHub names are case-insensitive
    ("alice/model:v1", True),
    ("pytorch/vision", True),
    ("PyTorch/anything", True),
    ("pytorch-evil/vision", False),  # owner/* is the whole owner, not a prefix
    ("pytorchx/vision", False),
    ("alice/model2", False),
    ("alice/modelx", False),
    ("alice/model.git", False),  # another name to GitHub's API; never matched by a prefix
    ("evil/pytorch", False),
])
def test_repo_matching_is_exact_and_case_insensitive(tmp_path: Path, repo: str, allowed: bool) -> None:
    guard, path = guard_for(tmp_path, "[repos]\nallow = [\"pytorch/*\", \"alice/model\"]\n")
    if allowed:
        guard.check_request(gh(repo))
    else:
        with pytest.raises(PolicyError) as info:
            guard.check_request(gh(repo))
        assert f"refused by the policy rule [repos] allow ({path})" in str(info.value)
        assert "is not on the list (pytorch/*, alice/model)" in str(info.value)


@pytest.mark.parametrize("repo", ["pytorch/../evil/x", "pytorch/vision/", "pytorch/", "pyt\u043erch/vision",
                                  "pytorch/vision\u200b", "pytorch/*", "/pytorch/vision", "pytorch//vision"])
def test_repo_strings_that_are_not_a_plain_owner_name_never_reach_the_policy(tmp_path: Path, repo: str) -> None:
    from safehub import InvalidRepoError

    guard, _ = guard_for(tmp_path, "[repos]\nallow = [\"pytorch/*\"]\n")
    with pytest.raises(InvalidRepoError):
        guard.check_request(gh(repo))


def test_repo_pattern_covering() -> None:
    owner, exact = parse_repo_pattern("Alice/*"), parse_repo_pattern("alice/Model")
    assert owner.covers(exact) and not exact.covers(owner) and str(owner) == "alice/*"
    assert not parse_repo_pattern("alice-x/*").covers(exact)


# --- each rule: allowed, refused, the message ------------------------------------------


def test_require_pin(tmp_path: Path) -> None:
    guard, path = guard_for(tmp_path, "[repos]\nrequire_pin = true\n")
    guard.check_request(gh(f"alice/model:{SHA}"))
    guard.check_request(gh(f"alice/model:{SHA.upper()}"))
    guard.check_request(gh("alice/model", revision=SHA))
    for repo in ("alice/model", "alice/model:main", f"alice/model:{SHA[:12]}", "alice/model:v1.0"):
        with pytest.raises(PolicyError) as info:
            guard.check_request(gh(repo))
        assert f"[repos] require_pin ({path})" in str(info.value) and "not a full commit SHA" in str(info.value)


def test_allow_local(tmp_path: Path) -> None:
    local = RepoRequest(repo_or_dir=str(tmp_path), source="local")
    LoadGuard.for_call(policy=write(tmp_path, "[repos]\nallow_local = true\n")).check_request(local)
    guard, path = guard_for(tmp_path, "[repos]\nallow_local = false\n")
    with pytest.raises(PolicyError, match=r"\[repos\] allow_local .*loading the local folder"):
        guard.check_request(local)
    with pytest.raises(PolicyError, match="allow_local"):
        guard.check_request(RepoRequest(repo_or_dir=str(tmp_path), source="LOCAL"))


def test_trust_prompts_off_turns_a_prompt_into_an_error(tmp_path: Path) -> None:
    guard, _ = guard_for(tmp_path, "[trust]\nprompts = false\n")
    request = guard.check_request(gh("alice/model"))
    assert request.allow_prompt is False
    assert LoadGuard.for_call(policy=write(tmp_path, "[trust]\nprompts = true\n")).check_request(
        gh("alice/model")).allow_prompt is True
    from safehub._fetch._trust import check_trust

    with pytest.raises(UntrustedRepoError, match="prompts are disabled by policy"):
        check_trust(tmp_path, host="github.com", is_github_com=True, owner="alice", name="model",
                    trust_repo="check", allow_prompt=request.allow_prompt, prompt=lambda q: pytest.fail("asked"))


class Named(FakeBackend):
    """A fake that reports another backend's name: the policy judges the backend by name."""

    def __init__(self, name: str) -> None:
        super().__init__(lambda job: None)
        self.name = name


def test_sandbox_minimum(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    guard, path = guard_for(tmp_path, "[sandbox]\nminimum = \"landlock\"\n")
    for name in ("landlock", "bwrap", "auto", None):
        guard.check_sandbox(name)
    guard.check_backend(Named("bwrap"), None)
    guard.check_backend(Named("landlock"), None)
    with pytest.raises(PolicyError) as info:
        guard.check_sandbox("process")
    assert f"[sandbox] minimum ({path}): the 'process' sandbox is weaker than the minimum 'landlock'" in str(info.value)
    monkeypatch.setenv("SAFEHUB_SANDBOX", "process")
    with pytest.raises(PolicyError, match="weaker than the minimum"):
        guard.check_sandbox(None)
    for name in ("process", "fake"):  # what auto (or an object) turned out to be
        with pytest.raises(PolicyError, match="weaker than the minimum"):
            guard.check_backend(Named(name), None)


def test_allow_gpu(tmp_path: Path) -> None:
    gpu_job = JobRequest(action="load", allow_gpu=True)
    LoadGuard.for_call(policy=write(tmp_path, "[sandbox]\nallow_gpu = true\n")).check_backend(Named("bwrap"), gpu_job)
    guard, path = guard_for(tmp_path, "[sandbox]\nallow_gpu = false\n")
    guard.check_backend(Named("bwrap"), JobRequest(action="load"))
    with pytest.raises(PolicyError, match=r"\[sandbox\] allow_gpu .*GPU device access"):
        guard.check_backend(Named("bwrap"), gpu_job)


@pytest.mark.parametrize("key", sorted(SCHEMA["limits"]))
def test_each_limit_is_a_maximum(tmp_path: Path, key: str) -> None:
    maximum = 7 if SCHEMA["limits"][key] == "int" else 7.5
    guard, path = guard_for(tmp_path, f"[limits]\n{key} = {maximum}\n")
    lowered = guard.limits(None, explicit=False)  # the defaults are not a choice: lowered to the maximum
    assert getattr(lowered, key) == maximum
    ok = Limits(**{key: 1})
    assert guard.limits(ok, explicit=True) == ok
    with pytest.raises(PolicyError) as info:
        guard.limits(Limits(**{key: 100}), explicit=True)
    assert f"[limits] {key} ({path}): Limits.{key}=100 is above the maximum {maximum}" in str(info.value)


def test_no_limit_at_all_is_above_every_maximum(tmp_path: Path) -> None:
    guard, _ = guard_for(tmp_path, "[limits]\ncpu_time_s = 60\n")
    assert guard.limits(None, explicit=False).cpu_time_s == 60  # the default is None (no limit)
    with pytest.raises(PolicyError, match="Limits.cpu_time_s=no limit is above the maximum 60"):
        guard.limits(Limits(cpu_time_s=None), explicit=True)


@pytest.mark.parametrize("url, allowed", [
    ("https://download.pytorch.org/models/r.pth", True),
    ("https://DOWNLOAD.pytorch.org./models/r.pth", True),  # case and a trailing dot are the same host
    ("https://download.pytorch.org:443/x", True),
    ("https://a.b.example.com/w.bin", True),
    ("https://example.com/w.bin", False),  # *.example.com is subdomains only
    ("https://evilexample.com/w.bin", False),
    ("https://example.com.evil.net/w.bin", False),
    ("https://download.pytorch.org.evil.net/x", False),
    ("https://download.pytorch.org:8443/x", False),  # another port
    ("http://download.pytorch.org/x", False),  # another scheme
    ("https://download.pytorch.org@evil.net/x", False),  # userinfo: the host is evil.net
    ("https://evil.net\\@download.pytorch.org/x", False),
    ("https://evil.net#@download.pytorch.org/x", False),
    ("https://xn--dwnload-t6a.pytorch.org/x", False),  # IDNA look-alike
])
def test_download_hosts(tmp_path: Path, url: str, allowed: bool) -> None:
    guard, path = guard_for(tmp_path, "[downloads]\nallow_hosts = [\"download.pytorch.org\", \"*.example.com\"]\n")
    if allowed:
        guard.check_url(url)
    else:
        with pytest.raises(PolicyError) as info:
            guard.check_url(url)
        assert f"[downloads] allow_hosts ({path})" in str(info.value) and "not an allowed host" in str(info.value)


def test_download_host_patterns_are_normalised() -> None:
    assert str(parse_host("B\u00fccher.Example.")) == "https://xn--bcher-kva.example"
    assert str(parse_host("http://10.0.0.5:8080")) == "http://10.0.0.5:8080"
    assert parse_host("*.example.com").matches("https", "a.example.com", 443)
    with pytest.raises(ValueError):
        parse_host("ftp://example.com")


def test_packages_allow_and_versions(tmp_path: Path) -> None:
    from safehub._env._plan import DependencyPlan
    from safehub._env._types import PythonEnv

    guard, path = guard_for(tmp_path, "[packages]\nallow = [\"numpy>=1.20,<2\", \"Pillow\"]\n")
    guard.check_plan(DependencyPlan(mode="declared", entries=("numpy", "PIL", "os")))
    with pytest.raises(PolicyError) as info:
        guard.check_plan(DependencyPlan(mode="declared", entries=("numpy", "requests")))
    assert f"[packages] allow ({path}): the repo's environment would install requests" in str(info.value)

    def env(*dists: str) -> PythonEnv:
        return PythonEnv(python=Path("/x"), root=Path("/x"), ro_paths=(), distributions=dists)

    guard.check_env(env("numpy==1.26.4", "pillow==10.0.0"))
    for bad in ("numpy==2.0.0", "numpy==1.19.0", "scipy==1.11.0", "numpy==not-a-version"):
        with pytest.raises(PolicyError, match=r"\[packages\] allow .*holds .* \(resolved\), not allowed"):
            guard.check_env(env("pillow==10.0.0", bad))


def test_require_hashes_needs_a_lock(tmp_path: Path) -> None:
    from safehub._env._plan import DependencyPlan

    LoadGuard.for_call(policy=write(tmp_path, "[packages]\nrequire_hashes = false\n")).check_plan(
        DependencyPlan(mode="declared", entries=("numpy",)))
    guard, path = guard_for(tmp_path, "[packages]\nrequire_hashes = true\n")
    with pytest.raises(PolicyError) as info:
        guard.check_plan(DependencyPlan(mode="declared", entries=("numpy",)))
    assert f"[packages] require_hashes ({path}): packages may only be installed with hashes from a lockfile" \
        in str(info.value)


def test_modes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    guard, path = guard_for(tmp_path, "[packages]\nmodes = [\"declared\", \"requirements\"]\n")
    assert guard.dependencies_mode("requirements") == "requirements"
    assert guard.dependencies_mode(None) == "declared"  # the default (scan) is not allowed: the policy's first
    with pytest.raises(PolicyError) as info:
        guard.dependencies_mode("scan")
    assert f"[packages] modes ({path}): the dependency mode 'scan' is not allowed (declared, requirements)" \
        in str(info.value)
    monkeypatch.setenv("SAFEHUB_DEPENDENCIES", "scan")  # an explicit choice, by environment
    with pytest.raises(PolicyError, match="not allowed"):
        guard.dependencies_mode(None)


def test_allow_sdist_false_is_what_safehub_always_does(tmp_path: Path) -> None:
    """allow_sdist = true is refused when the policy is read (above); false is accepted, and
    it is what the installers do anyway: --no-build (uv) / --only-binary :all: (pip)."""
    assert read_policy_file(write(tmp_path, "[packages]\nallow_sdist = false\n"))["packages"]["allow_sdist"] is False
    import inspect

    from safehub._env import _installers

    assert '"--no-build"' in inspect.getsource(_installers.build_uv)
    assert '"--only-binary", ":all:"' in inspect.getsource(_installers.build_virtualenv)


def test_lock_require(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "[lock]\nrequire = true\n")
    with pytest.raises(PolicyError) as info:
        LoadGuard.for_call(policy=path)
    assert f"[lock] require ({path}): no lockfile was given" in str(info.value)
    LoadGuard.for_call(policy=write(tmp_path, "[lock]\nrequire = false\n", "off.toml"))


def test_lock_file_in_a_policy_is_resolved_against_the_policy_folder(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    path = write(tmp_path / "sub", "[lock]\nfile = \"org.lock\"\n")
    with pytest.raises(PolicyError, match=f"cannot read the lockfile {tmp_path / 'sub' / 'org.lock'}"):
        LoadGuard.for_call(policy=path)


def test_no_policy_is_an_inactive_guard() -> None:
    guard = LoadGuard.for_call()
    assert not guard.active and guard.policy.empty
    assert guard.limits(None, explicit=False) == Limits()


def test_policy_from_dict_is_validated_like_a_file() -> None:
    assert policy_from_dict({"repos": {"require_pin": True}}).get("repos", "require_pin") is True
    with pytest.raises(PolicyError, match="not a known key"):
        policy_from_dict({"repos": {"pin": True}})
    assert isinstance(policy_from_dict({}), Policy)


def test_policy_error_has_its_own_exit_code() -> None:
    import safehub

    codes = {cls.exit_code for name in safehub.__all__ if isinstance(cls := getattr(safehub, name), type)
             and issubclass(cls, safehub.SafehubError) and not issubclass(cls, safehub.PolicyError)}
    assert safehub.PolicyError.exit_code not in codes


def test_owner_wildcards_match_exactly_one_owner_property() -> None:
    """Any owner string: ``o/*`` matches a repo iff its owner equals ``o`` ignoring case, and an
    exact pattern only its own name (hypothesis over GitHub's name alphabet)."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    owner = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9-]{0,8}", fullmatch=True)
    name = st.from_regex(r"[A-Za-z0-9._-]{1,8}", fullmatch=True).filter(lambda n: n not in (".", ".."))

    @settings(max_examples=300, deadline=None)
    @given(owner, owner, name, name)
    def check(pattern_owner: str, repo_owner: str, pattern_name: str, repo_name: str) -> None:
        wildcard = parse_repo_pattern(f"{pattern_owner}/*")
        exact = parse_repo_pattern(f"{pattern_owner}/{pattern_name}")
        same_owner = pattern_owner.lower() == repo_owner.lower()
        assert wildcard.matches(repo_owner, repo_name) == same_owner
        assert exact.matches(repo_owner, repo_name) == (same_owner and pattern_name.lower() == repo_name.lower())

    check()


def test_a_fetch_source_the_policy_does_not_know_is_refused(tmp_path: Path) -> None:
    guard, _ = guard_for(tmp_path, "[repos]\nrequire_pin = true\n")
    with pytest.raises(PolicyError, match="know only 'github' and 'local' repos"):
        guard.check_request(RepoRequest(repo_or_dir="alice/model", source="hf"))
    LoadGuard.for_call().check_request(RepoRequest(repo_or_dir="alice/model", source="hf"))  # no policy: not ours


def test_every_layers_lock_file_applies(tmp_path: Path, system: Path) -> None:
    system.write_text("[lock]\nfile = \"/org/a.lock\"\n")
    user = write(tmp_path, "[lock]\nfile = \"/me/b.lock\"\n", "user.toml")
    merged = load_policy(user)
    assert merged.get("lock", "file") == ("/org/a.lock", "/me/b.lock")
    again = Policy()
    again.add_layer(merged.values, "x")
    again.add_layer(merged.values, "y")  # an already-merged value (a Policy object) stays flat
    assert again.get("lock", "file") == ("/org/a.lock", "/me/b.lock", "/org/a.lock", "/me/b.lock")
