"""Lockfiles: ``safehub lock`` records what a load used; a load under the lock goes
through when nothing changed, and each changed field is refused: a moved ref, another
revision, a different archive, an unlisted or changed package, an unlisted or changed
weight file, changed returned weights, an unlisted entrypoint or repo, a local folder,
another safehub or runner, another dependency mode.

Fast tier: GitHub is the real loopback server (tests/github_server.py); the sandbox
is the fake backend and the env the host interpreter reporting chosen packages (see
test_api_fake.py for why). One slow test locks the demo repo for real at the end."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from conftest import no_ambient_policy
import torch
from github_server import FakeGitHub, build_zip
from torch import nn

import safehub
import specgen
from safehub import PolicyError
from safehub._env import host_env
from safehub._fetch import _http
from safehub._lockfile import FORMAT, VERSION, read_lock
from safehub._policy_cli import create_lock
from safehub._sandbox import FakeBackend, FakeJob

HUBCONF = (b"dependencies = []\n\ndef tiny():\n    raise AssertionError('never imported here')\n\n"
           b"def other():\n    raise AssertionError('never imported here')\n")
DISTS = ("numpy==1.26.4", "pyyaml==6.0.1")


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    no_ambient_policy(monkeypatch, tmp_path)
    monkeypatch.setenv("SAFEHUB_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SAFEHUB_REF_CACHE_TTL", "0")  # every load asks where the ref points now
    monkeypatch.setattr(_http, "BACKOFF_BASE_S", 0.0)


class Envs:
    """Stands in for ensure_env: the host interpreter, reporting ``dists`` with ``records``."""

    def __init__(self) -> None:
        self.calls = 0
        self.kwargs: dict[str, Any] = {}
        self.records = {d: f"{i:064x}" for i, d in enumerate(DISTS)}

    def __call__(self, entries: Any, **kwargs: Any) -> Any:
        self.calls += 1
        self.kwargs = kwargs
        return dataclasses.replace(host_env(), distributions=tuple(self.records), records=dict(self.records),
                                   mode=kwargs.get("mode", ""))


class Runner:
    """Plays the runner: asks for ``urls`` until staged, then writes a Linear seeded with ``seed``
    (None: unseeded, so each run returns other weights)."""

    def __init__(self, urls: tuple[str, ...], seed: int | None = 0) -> None:
        self.urls, self.seed, self.runs = urls, seed, 0

    def __call__(self, job: FakeJob) -> None:
        if self.urls and not (job.in_dir / "downloads" / "manifest.json").exists():
            job.write_result({"status": "error", "error": {"category": "needs_download", "urls": list(self.urls)}})
            return
        self.runs += 1
        if self.seed is not None:
            torch.manual_seed(self.seed)
        spec, weights = specgen.full_spec(nn.Linear(2, 2))
        specgen.write(job.out_dir, spec, weights)
        job.write_result({"status": "ok", "summary": {"root": "module", "modules": {}}})


@dataclasses.dataclass
class World:
    gh: FakeGitHub
    repo: Any
    sha: str
    url: str
    envs: Envs
    lock: Path

    def load(self, repo: str = "alice/model:main", entry: str = "tiny", runner: Runner | None = None,
             **kwargs: Any) -> Any:
        kwargs.setdefault("lock", self.lock)
        return safehub.load(repo, entry, trust_repo=True, verbose=False, extra_dependencies=["numpy", "yaml"],
                            sandbox=FakeBackend(runner or Runner((self.url,))), **kwargs)


@dataclasses.dataclass
class Published:
    gh: FakeGitHub
    repo: Any
    sha: str
    url: str
    lock_text: str


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory):
    """One server and one lock (two loads) for the module; ``world`` restores what a test changes."""
    folder = tmp_path_factory.mktemp("lock")
    with pytest.MonkeyPatch.context() as mp, FakeGitHub() as gh:
        no_ambient_policy(mp, folder)
        mp.setenv("SAFEHUB_HOME", str(folder / "home"))
        repo = gh.add_repo("alice", "model")
        sha = repo.commit({"hubconf.py": HUBCONF})
        url = gh.url + repo.release_asset("v1", "w.bin", b"weights" * 100)
        repo.release_asset("v1", "w2.bin", b"other" * 100)
        for key, value in gh.env().items():
            mp.setenv(key, value)
        lock = folder / "safehub.lock"
        # The stand-in env only while the lock is made: a module-long patch would reach
        # the real-env test below (the host env it returns has no PyYAML).
        with pytest.MonkeyPatch.context() as only_here:
            only_here.setattr("safehub._env.ensure_env", Envs())
            create_lock("alice/model:main", ["tiny"], output=lock, load_kwargs=dict(
                trust_repo=True, verbose=False, extra_dependencies=["numpy", "yaml"], sandbox=FakeBackend(Runner((url,)))))
        yield Published(gh, repo, sha, url, lock.read_text())


@pytest.fixture
def world(published: Published, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The published repo as it was locked (branch, archives), a fresh cache and a copy of the lock."""
    envs = Envs()
    monkeypatch.setattr("safehub._env.ensure_env", envs)
    for key, value in published.gh.env().items():
        monkeypatch.setenv(key, value)
    published.repo.branches["main"] = published.sha
    published.repo.archive_override.clear()
    lock = tmp_path / "safehub.lock"
    lock.write_text(published.lock_text)
    yield World(published.gh, published.repo, published.sha, published.url, envs, lock)
    published.repo.branches["main"] = published.sha
    published.repo.archive_override.clear()


def test_the_lock_records_each_field(world: World) -> None:
    data = json.loads(world.lock.read_text())
    assert data["format"] == FORMAT and data["version"] == VERSION
    (entry,) = data["entries"]
    assert entry["repo"] == "alice/model" and entry["ref"] == "main" and entry["sha"] == world.sha
    assert entry["host"] == world.gh.host_key and entry["entrypoint"] == "tiny"
    assert len(entry["archive_sha256"]) == 64 and len(entry["tree_hash"]) == 64
    assert entry["dependencies"] == {"mode": "scan", "distributions": world.envs.records}
    import hashlib

    assert entry["downloads"] == [{"url": world.url, "sha256": hashlib.sha256(b"weights" * 100).hexdigest()}]
    assert entry["safehub"] == safehub.__version__ and entry["runner"]["protocol"] >= 1
    assert len(entry["runner"]["sha256"]) == 64
    assert len(entry["weights_sha256"]) == 64  # two loads, same weights: deterministic


def test_a_load_under_the_lock_goes_through(world: World, monkeypatch) -> None:
    got = world.load()
    assert got.safehub_info.sha == world.sha
    assert world.envs.kwargs["pins"] == sorted(DISTS)  # the locked versions pin the install
    assert got.safehub_info.policy == {"files": [], "locks": [str(world.lock)]}
    monkeypatch.setenv("SAFEHUB_LOCK", str(world.lock))  # the same by environment
    assert world.load(lock=None).safehub_info.sha == world.sha
    assert world.load(revision=world.sha).safehub_info.sha == world.sha
    assert world.load(force_reload=True).safehub_info.sha == world.sha  # a fresh download of the same archive


def test_the_policy_can_name_the_lock(world: World, tmp_path: Path) -> None:
    pol = tmp_path / "p.toml"
    pol.write_text(f"[lock]\nfile = \"{world.lock.name}\"\n")
    pol.chmod(0o644)
    world.load(lock=None, policy=pol)
    with pytest.raises(PolicyError, match="is not in it"):
        world.load("alice/other", lock=None, policy=pol)


def test_a_moved_ref_is_refused_before_the_new_commit_is_downloaded(world: World) -> None:
    new = world.repo.commit({"hubconf.py": HUBCONF + b"\n# changed\n"})
    before = len(world.gh.archive_requests)
    with pytest.raises(PolicyError) as info:
        world.load()
    assert f"now resolves to {new}, not the locked commit {world.sha} (the ref moved)" in str(info.value)
    assert str(world.lock) in str(info.value)
    assert len(world.gh.archive_requests) == before


def test_another_revision_is_refused(world: World) -> None:
    other = world.repo.commit({"hubconf.py": HUBCONF + b"#\n"}, branch=None, parent=world.sha)
    with pytest.raises(PolicyError, match=f"revision={other} is not the locked commit {world.sha}"):
        world.load("alice/model", revision=other)
    with pytest.raises(PolicyError, match=f"now resolves to {other}, not the locked commit"):
        world.load(f"alice/model:{other}")  # the commit named as the ref


def test_a_different_archive_for_the_same_commit_is_refused(world: World) -> None:
    files = {"hubconf.py": HUBCONF, "extra.py": b"x = 1\n"}
    world.repo.archive_override[world.sha] = build_zip(f"alice-model-{world.sha[:7]}", files, comment=world.sha)
    with pytest.raises(PolicyError, match=r"the archive_sha256 of alice/model@.* \(a different archive\)"):
        world.load(force_reload=True)


def test_an_unlisted_package_is_refused_before_the_install(world: World) -> None:
    calls = world.envs.calls
    with pytest.raises(PolicyError, match="would install requests, which the lock does not list"):
        safehub.load("alice/model:main", "tiny", trust_repo=True, verbose=False, lock=world.lock,
                     extra_dependencies=["numpy", "yaml", "requests"], sandbox=FakeBackend(Runner((world.url,))))
    assert world.envs.calls == calls


def test_a_resolved_package_the_lock_does_not_list_is_refused(world: World) -> None:
    world.envs.records["scipy==1.11.0"] = "f" * 64
    with pytest.raises(PolicyError, match="holds scipy==1.11.0, which the lock does not list"):
        world.load()


def test_a_changed_package_hash_or_version_is_refused(world: World) -> None:
    world.envs.records["numpy==1.26.4"] = "e" * 64
    with pytest.raises(PolicyError, match=r"numpy==1.26.4 has RECORD hash e{64}, the lock says .*changed hash"):
        world.load()
    world.envs.records = {"numpy==1.26.5" if d.startswith("numpy") else d: h for d, h in world.envs.records.items()}
    with pytest.raises(PolicyError, match="holds numpy==1.26.5, which the lock does not list"):
        world.load()


def test_an_unlisted_weight_is_refused_before_it_is_fetched(world: World) -> None:
    other = f"{world.gh.url}/alice/model/releases/download/v1/w2.bin"
    with pytest.raises(PolicyError, match="asked for .*w2.bin, which the lock does not list"):
        world.load(runner=Runner((world.url, other)))
    assert not any("w2.bin" in entry.get("path", "") for entry in world.gh.log)


def test_a_changed_weight_file_is_refused(world: World) -> None:
    """The cached file was swapped (the server's copy may have changed too): its bytes are hashed."""
    world.load()  # fetches it into the cache
    folder = Path(safehub.get_dir()) / "checkpoints" / "by-url"
    (cached,) = [p for p in folder.iterdir() if p.name.endswith("w.bin")]
    cached.chmod(0o644)
    cached.write_bytes(b"trojan" * 100)
    with pytest.raises(PolicyError, match=r"w.bin has sha256 .*, the lock says .*\(a changed hash\)"):
        world.load()


def test_changed_returned_weights_are_refused(world: World) -> None:
    with pytest.raises(PolicyError, match=r"tiny returned weights with sha256 .*\(a changed hash\)"):
        world.load(runner=Runner((world.url,), seed=1))


def test_an_unlisted_entrypoint_repo_or_a_local_folder_is_refused(world: World, tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match=r"the entrypoint 'other' of alice/model is not in it \(locked: tiny\)"):
        world.load(entry="other")
    before = len(world.gh.log)
    with pytest.raises(PolicyError, match="bob/model on .* is not in it"):
        world.load("bob/model")
    assert len(world.gh.log) == before, "refused before any request"
    (tmp_path / "hubconf.py").write_bytes(HUBCONF)
    with pytest.raises(PolicyError, match="a local folder cannot be checked against a lock"):
        world.load(str(tmp_path), source="local")


def test_another_dependency_mode_is_refused(world: World) -> None:
    with pytest.raises(PolicyError, match="the dependency mode is 'declared', the lock's is 'scan'"):
        world.load(dependencies_mode="declared")


@pytest.mark.parametrize("field, value, words", [
    ("safehub", "0.0.1", "it was made with safehub 0.0.1"),
    ("runner", {"protocol": 1, "sha256": "0" * 64}, "it was made with another runner"),
])
def test_another_safehub_or_runner_is_refused(world: World, field: str, value: Any, words: str) -> None:
    data = json.loads(world.lock.read_text())
    data["entries"][0][field] = value
    world.lock.write_text(json.dumps(data))
    with pytest.raises(PolicyError, match=words):
        world.load()


@pytest.mark.parametrize("edit, words", [
    (lambda d: d.update(version=2), "has format version 2; this safehub reads version 1"),
    (lambda d: d.update(format="other"), 'does not say "format": "safehub.lock"'),
    (lambda d: d["entries"][0].update(extra=1), "unknown key"),
    (lambda d: d["entries"][0].pop("tree_hash"), "lacks tree_hash"),
    (lambda d: d["entries"][0].update(sha="main"), "sha = 'main' is not valid"),
    (lambda d: d["entries"][0].update(downloads=[{"url": "x", "sha256": "nothex"}]), "downloads must be"),
])
def test_a_malformed_lock_is_refused(world: World, edit: Any, words: str) -> None:
    data = json.loads(world.lock.read_text())
    edit(data)
    world.lock.write_text(json.dumps(data))
    with pytest.raises(PolicyError, match=words):
        read_lock(world.lock)


def test_a_nondeterministic_entrypoint_records_no_weights_hash(world: World, tmp_path: Path) -> None:
    out = tmp_path / "random.lock"
    (entry,) = create_lock("alice/model:main", ["tiny"], output=out, load_kwargs=dict(
        trust_repo=True, verbose=False, extra_dependencies=["numpy", "yaml"],
        sandbox=FakeBackend(Runner((world.url,), seed=None))))
    assert entry.weights_sha256 is None and read_lock(out).entries[0].weights_sha256 is None
    world.load(runner=Runner((world.url,), seed=None), lock=out)  # loads, with the other fields checked


def test_cli_lock_writes_the_same_lock(world: World, tmp_path: Path, monkeypatch, capsys) -> None:
    """`safehub lock` (the sandbox faked through get_backend: the CLI has no way to pass an object)."""
    from safehub._cli import main

    monkeypatch.setattr("safehub._sandbox.get_backend", lambda name=None, env=None: FakeBackend(Runner((world.url,))))
    out = tmp_path / "cli.lock"
    assert main(["lock", "alice/model:main", "tiny", "-o", str(out), "--trust-repo", "true",
                 "-d", "numpy", "-d", "yaml", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["entries"][0]["sha"] == world.sha
    assert read_lock(out).entries == read_lock(world.lock).entries


@pytest.mark.slow
def test_lock_and_load_the_demo_repo_for_real(tmp_path: Path, monkeypatch, safehub_home: Path) -> None:
    """A real env build and sandbox: lock the demo repo served by the loopback GitHub, load it under the lock."""
    from conftest import DEMO

    monkeypatch.setenv("SAFEHUB_HOME", str(safehub_home))  # the session's: its envs are shared with other tests
    files = {str(p.relative_to(DEMO)): p.read_bytes() for p in sorted(DEMO.rglob("*"))
             if p.is_file() and "__pycache__" not in p.parts}
    with FakeGitHub() as gh:
        gh.add_repo("demo", "hub").commit(files)
        for key, value in gh.env().items():
            monkeypatch.setenv(key, value)
        out = tmp_path / "safehub.lock"
        (entry,) = create_lock("demo/hub:main", ["tinynet"], output=out, load_kwargs=dict(trust_repo=True, verbose=False))
        assert entry.weights_sha256 is not None and any(d.startswith("PyYAML==") or d.lower().startswith("pyyaml==")
                                                        for d in entry.distributions)
        assert all(len(h) == 64 for h in entry.distributions.values())
        model = safehub.load("demo/hub:main", "tinynet", trust_repo=True, verbose=False, lock=out)
        info = model.safehub_info
        assert info.sha == entry.sha and info.policy["locks"] == [str(out)]
        # built again with the locked versions pinned (another env key), and the same RECORD hashes
        assert dict(info.dependencies["records"]) == entry.distributions


def test_relocking_ignores_old_locks_but_not_the_other_rules(world: World, tmp_path: Path, monkeypatch) -> None:
    """A stale lock in SAFEHUB_LOCK, or a policy that requires locks and hashes, must not block
    `safehub lock` after the repo moved; the repo rules still apply while locking."""
    new = world.repo.commit({"hubconf.py": HUBCONF + b"# v2\n"})
    monkeypatch.setenv("SAFEHUB_LOCK", str(world.lock))
    pol = tmp_path / "p.toml"
    pol.write_text("[lock]\nrequire = true\n[packages]\nrequire_hashes = true\n[repos]\nallow = [\"alice/model\"]\n")
    pol.chmod(0o644)
    monkeypatch.setenv("SAFEHUB_POLICY", str(pol))
    with pytest.raises(PolicyError, match="the ref moved"):
        world.load(lock=None)
    out = tmp_path / "new.lock"
    kwargs = dict(trust_repo=True, verbose=False, extra_dependencies=["numpy", "yaml"],
                  sandbox=FakeBackend(Runner((world.url,))))
    (entry,) = create_lock("alice/model:main", ["tiny"], output=out, load_kwargs=kwargs)
    assert entry.sha == new
    assert world.load(lock=out).safehub_info.sha == new
    pol.write_text("[repos]\nallow = [\"bob/*\"]\n")
    with pytest.raises(PolicyError, match="alice/model is not on the list"):
        create_lock("alice/model:main", ["tiny"], output=tmp_path / "x.lock", load_kwargs=kwargs)
    assert not (tmp_path / "x.lock").exists()


def test_locked_pins_are_checked_before_they_reach_the_installer() -> None:
    from safehub import EnvironmentBuildError
    from safehub._env._build import _checked_pins

    assert _checked_pins(["numpy==1.26.4", "torch==2.13.0", "numpy==1.26.4"]) == ["numpy==1.26.4"]
    for bad in ["numpy>=1", "numpy==1.0 --index-url http://evil", "-e git+https://x", "numpy==1; os_name=='nt'",
                "numpy", "../x==1"]:
        with pytest.raises(EnvironmentBuildError, match="is not 'name==version'"):
            _checked_pins([bad])


def test_a_world_writable_lockfile_is_refused(world: World) -> None:
    world.lock.chmod(0o666)
    with pytest.raises(PolicyError, match="is world-writable; refusing to use it"):
        world.load()
