"""A successful bubblewrap probe is remembered between processes (it costs a fresh
load tens of milliseconds before its sandbox can start), keyed by everything its
outcome depends on; a failure is never remembered, and ``doctor`` always probes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from safehub._sandbox import BwrapBackend
from safehub._sandbox import _probe_memo

BWRAP = shutil.which("bwrap")
pytestmark = pytest.mark.skipif(BWRAP is None, reason="bubblewrap is not installed: run scripts/setup.sh")


def _backend(home: Path, **env: str) -> BwrapBackend:
    return BwrapBackend(env={"SAFEHUB_HOME": str(home), **env})


def _no_probe(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = BwrapBackend._probe
    monkeypatch.setattr(BwrapBackend, "_probe", lambda self: calls.append(1) or real(self))
    return calls


def test_a_success_is_remembered_for_the_next_process(tmp_path: Path, monkeypatch) -> None:
    assert _backend(tmp_path).check() is None  # a real probe
    memo = tmp_path / "memo" / "probe-bwrap.json"
    assert memo.is_file() and oct(memo.stat().st_mode & 0o777) == "0o600"
    calls = _no_probe(monkeypatch)
    assert _backend(tmp_path).check() is None  # a new backend object, as in a new process
    assert calls == []
    assert _backend(tmp_path).check(fresh=True) is None  # doctor: always a real probe
    assert calls == [1]


def test_a_failure_is_never_remembered(tmp_path: Path) -> None:
    problem = _backend(tmp_path, SAFEHUB_BWRAP=str(tmp_path / "no-bwrap")).check()
    assert problem is not None and "not installed" in problem
    assert not (tmp_path / "memo").exists()


def test_the_memo_is_keyed_by_the_tools_and_expires(tmp_path: Path, monkeypatch) -> None:
    assert _backend(tmp_path).check() is None
    calls = _no_probe(monkeypatch)
    other = tmp_path / "bwrap-copy"
    shutil.copy2(BWRAP, other)  # another binary (path and inode): probed again
    assert _backend(tmp_path, SAFEHUB_BWRAP=str(other)).check() is None
    assert calls == [1]
    memo = tmp_path / "memo" / "probe-bwrap.json"
    doc = json.loads(memo.read_text())
    doc["at"] -= _probe_memo.TTL_S + 1
    memo.write_text(json.dumps(doc))
    assert _backend(tmp_path, SAFEHUB_BWRAP=str(other)).check() is None
    assert calls == [1, 1]


@pytest.mark.parametrize("content", ["", "{", "[]", '{"version": 1, "at": "now", "key": {}}', "x" * 70000])
def test_a_damaged_memo_means_a_real_probe(tmp_path: Path, monkeypatch, content: str) -> None:
    memo = tmp_path / "memo" / "probe-bwrap.json"
    memo.parent.mkdir()
    memo.write_text(content)
    calls = _no_probe(monkeypatch)
    assert _backend(tmp_path).check() is None
    assert calls == [1]


def test_a_memo_reached_through_a_link_is_not_read(tmp_path: Path, monkeypatch) -> None:
    elsewhere = tmp_path / "elsewhere"
    assert _backend(elsewhere).check() is None
    home = tmp_path / "home"
    (home / "memo").mkdir(parents=True)
    (home / "memo" / "probe-bwrap.json").symlink_to(elsewhere / "memo" / "probe-bwrap.json")
    calls = _no_probe(monkeypatch)
    assert _backend(home).check() is None
    assert calls == [1]


def test_a_remembered_probe_skips_the_filter_build_but_no_sandbox_starts_without_it(tmp_path: Path,
                                                                                   monkeypatch) -> None:
    """The memo skips starting a sandbox and building the filter (a load a warm worker
    answers builds none), never the filter itself: every sandbox start builds it, and
    one that cannot is refused with the reason."""
    from safehub._errors import SandboxUnavailableError
    from safehub._sandbox import SandboxRequest, _bwrap

    assert _backend(tmp_path).check() is None
    monkeypatch.setattr(_bwrap, "seccomp_problem", lambda variant: "no libseccomp here (test)")
    backend = _backend(tmp_path)
    assert backend.check() is None  # remembered
    (tmp_path / "tmp").mkdir()
    request = SandboxRequest(argv=["/bin/true"], env={}, cwd=tmp_path / "tmp")
    with pytest.raises(SandboxUnavailableError, match="no libseccomp here"):
        backend.run(request)
    assert _backend(tmp_path).check(fresh=True) == "no libseccomp here (test)"  # doctor's probe says it too


def test_the_probe_memo_is_keyed_by_the_pyseccomp_module(tmp_path: Path, monkeypatch) -> None:
    from safehub._sandbox import _bwrap

    assert _backend(tmp_path).check() is None
    calls = _no_probe(monkeypatch)
    monkeypatch.setattr(_bwrap, "_seccomp_files", lambda on: ("/elsewhere/pyseccomp.py",))
    assert _backend(tmp_path).check() is None
    assert calls == [1], "another pyseccomp: probed again"
