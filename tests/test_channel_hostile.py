"""The hostile corpus (tests/hostile/cases.py): every crafted output is refused
with its typed error, before anything is imported, executed or written.

An audit hook watches each rejected load: no import, exec/compile, pickle
lookup, process spawn, library load, network use or file write may happen, and
files may only be opened inside the output folder. The payloads aim at a canary
file that must never appear.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent / "hostile"))
import cases as corpus  # noqa: E402

from safehub._channel import rebuild_from_output  # noqa: E402
from safehub._errors import UnsafeSpecError  # noqa: E402

_FORBIDDEN_EVENTS = {
    "import", "exec", "compile", "pickle.find_class", "marshal.loads", "os.system", "os.exec", "os.posix_spawn",
    "os.spawn", "os.fork", "os.forkpty", "subprocess.Popen", "ctypes.dlopen", "ctypes.dlsym", "socket.connect",
    "socket.bind", "os.remove", "os.unlink", "os.rename", "os.rmdir", "os.mkdir", "os.symlink", "os.link",
    "os.truncate", "os.chmod", "os.chown", "shutil.rmtree", "shutil.copyfile", "shutil.move", "urllib.Request",
    "sys.settrace", "sys.setprofile", "builtins.input", "code.__new__", "function.__new__", "object.__setattr__",
}  # fmt: skip
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


class _Recorder:
    """One process-wide audit hook (hooks cannot be removed), armed per test and
    only for the thread doing the load."""

    def __init__(self) -> None:
        self.armed_thread: int | None = None
        self.events: list[tuple[str, tuple]] = []
        sys.addaudithook(self)

    def __call__(self, event: str, args: tuple) -> None:
        if self.armed_thread is not None and threading.get_ident() == self.armed_thread:
            # The code check parses FX's source to an AST (a "compile" event, but no code object).
            if event == "compile" and args[1:] == ("<safehub-codecheck>",):
                return
            if event in _FORBIDDEN_EVENTS or event == "open":
                self.events.append((event, args))

    def arm(self) -> None:
        self.events = []
        self.armed_thread = threading.get_ident()

    def disarm(self) -> list[tuple[str, tuple]]:
        self.armed_thread = None
        return self.events


@pytest.fixture(scope="module")
def recorder(tmp_path_factory: pytest.TempPathFactory) -> _Recorder:
    # Warm up: one valid load imports and caches everything the channel uses, so a
    # rejected load afterwards has no reason to import anything at all.
    out = tmp_path_factory.mktemp("warm") / "out"
    corpus.write_files(out, corpus.base_spec(), corpus.base_weights())
    model = rebuild_from_output(out)
    assert torch.equal(model(torch.ones(2, 4)), torch.full((2, 3), 4.0))
    # The aten allowlist is read lazily (importlib.resources imports importlib.readers
    # on first use): read it now too, or the first aten case's verdict would depend on
    # which tests ran earlier in this process (it did under pytest-xdist).
    from safehub._channel._allowlist import aten_forward_ops

    assert aten_forward_ops()
    return _Recorder()


def test_recorder_sees_what_it_must_forbid(recorder: _Recorder, tmp_path: Path) -> None:
    """The audit check itself can fail: exec, a fresh import and a write are seen."""
    victim = "wave" if "wave" not in sys.modules else "sndhdr"
    recorder.arm()
    try:
        exec("1 + 1")  # noqa: S102
        __import__(victim)
        (tmp_path / "written").write_text("x")
    finally:
        events = recorder.disarm()
    names = {e[0] for e in events}
    assert {"exec", "import", "open"} <= names
    assert any(e[0] == "open" and e[1][2] & _WRITE_FLAGS for e in events)


def test_corpus_is_large_and_ids_are_unique() -> None:
    ids = [c.id for c in corpus.CASES]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 30


def test_base_spec_is_valid(tmp_path: Path) -> None:
    out = tmp_path / "out"
    corpus.write_files(out, corpus.base_spec(), corpus.base_weights())
    model = rebuild_from_output(out)
    assert torch.equal(model(torch.ones(1, 4)), torch.full((1, 3), 4.0))


@pytest.mark.parametrize("case", corpus.CASES, ids=lambda c: c.id)
def test_hostile_output_is_refused(case: corpus.Case, tmp_path: Path, recorder: _Recorder) -> None:
    out = tmp_path / "out"
    canary = tmp_path / "CANARY"
    case.write(out, str(canary))
    before = sorted(p.name for p in tmp_path.iterdir())

    recorder.arm()
    try:
        with pytest.raises(UnsafeSpecError) as excinfo:
            rebuild_from_output(out)
    finally:
        events = recorder.disarm()

    assert type(excinfo.value) is case.error, f"{case.id}: {type(excinfo.value).__name__}: {excinfo.value}"
    assert not canary.exists(), f"{case.id}: the payload ran"
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "something was written next to the output"
    message = str(excinfo.value)
    assert message and len(message) < 2000
    assert not any(ch in message for ch in "\x00\x1b\r"), "untrusted text reached the message unescaped"
    bad = [e for e in events if e[0] != "open"]
    assert not bad, f"{case.id}: forbidden audit events during a rejected load: {bad[:5]}"
    for _, (path, mode, flags) in events:
        if isinstance(path, int):
            continue
        assert not (flags & _WRITE_FLAGS) and (mode is None or "r" in str(mode) and "+" not in str(mode)), path
        opened = Path(os.fsdecode(path))
        if not opened.is_absolute():  # opened relative to the output folder's fd
            assert str(opened) in ("spec.json", "weights.safetensors"), f"{case.id}: opened {path}"
        else:
            assert opened.resolve().is_relative_to(tmp_path.resolve()), f"{case.id}: opened {path}"
