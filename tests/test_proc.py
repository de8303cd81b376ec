"""safehub/_sandbox/_proc.py against psutil, on real process trees: what the
watchdog and the warm worker read of /proc must be what psutil read before."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from safehub._sandbox import _proc
from safehub._sandbox._limits import Limits, Watchdog, tree_pids

# A parent with two children, one of which has a child (three levels), and a thread each.
TREE = r"""
import os, sys, threading, time, subprocess
if len(sys.argv) > 1:
    kids = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])]
else:
    kids = [subprocess.Popen([sys.executable, __file__, "inner"]),
            subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])]
threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
print("up", flush=True)
time.sleep(60)
"""


@pytest.fixture
def tree(tmp_path: Path):
    script = tmp_path / "tree.py"
    script.write_text(TREE)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while len(psutil.Process(proc.pid).children(recursive=True)) < 3:
            assert time.monotonic() < deadline, "the test's process tree did not start"
            time.sleep(0.05)
        yield proc
    finally:
        for p in [*psutil.Process(proc.pid).children(recursive=True), psutil.Process(proc.pid)]:
            try:
                p.kill()
            except psutil.Error:
                pass
        proc.wait()


def test_children_are_what_psutil_finds(tree: subprocess.Popen) -> None:
    expected = sorted(p.pid for p in psutil.Process(tree.pid).children(recursive=True))
    assert len(expected) == 3
    assert sorted(_proc.children(tree.pid)) == expected
    assert sorted(tree_pids(tree.pid)) == expected
    direct = sorted(p.pid for p in psutil.Process(tree.pid).children())
    assert sorted(_proc.children(tree.pid, recursive=False)) == direct and len(direct) == 2


def test_rss_cpu_and_create_time_are_psutil_s(tree: subprocess.Popen) -> None:
    for pid in [tree.pid, *_proc.children(tree.pid)]:
        p = psutil.Process(pid)
        assert abs(_proc.create_time(pid) - p.create_time()) < 0.01
        rss = _proc.rss_bytes(pid)
        assert rss is not None and abs(rss - p.memory_info().rss) <= 64 * 1024
        cpu, times = _proc.cpu_seconds(pid), p.cpu_times()
        assert cpu is not None and abs(cpu - (times.user + times.system)) <= 0.05
        assert not _proc.is_zombie(pid)


def test_a_name_with_spaces_and_parentheses_is_parsed(tmp_path: Path) -> None:
    # The command name is what the kernel shows between the first '(' and the last ')'.
    odd = tmp_path / "a b) (c"
    shutil.copy(sys.executable, odd)
    proc = subprocess.Popen([str(odd), "-c", "import time; time.sleep(30)"])
    try:
        deadline = time.monotonic() + 10
        while b") (" not in Path(f"/proc/{proc.pid}/stat").read_bytes():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert abs(_proc.create_time(proc.pid) - psutil.Process(proc.pid).create_time()) < 0.01
        assert not _proc.is_zombie(proc.pid)
    finally:
        proc.kill()
        proc.wait()


def test_a_zombie_and_a_gone_process() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 10
    while not _proc.is_zombie(proc.pid):  # exited, not yet reaped
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert psutil.Process(proc.pid).status() == psutil.STATUS_ZOMBIE
    proc.wait()
    with pytest.raises(_proc.ProcessGone):
        _proc.create_time(proc.pid)
    with pytest.raises(_proc.ProcessGone):
        _proc.children(proc.pid)
    assert _proc.rss_bytes(proc.pid) is None and _proc.cpu_seconds(proc.pid) is None


def test_the_watchdog_counts_and_limits_the_tree_it_reads(tree: subprocess.Popen) -> None:
    dog = Watchdog(limits=Limits(max_pids=3), root_pid=tree.pid)
    assert dog.check(time.monotonic()) == "pids"
    dog = Watchdog(limits=Limits(max_pids=100, memory_bytes=1 << 40, cpu_time_s=100), root_pid=tree.pid)
    assert dog.check(time.monotonic()) is None
    assert dog.peak_pids == 3 and dog.peak_rss > 4 * 1024 * 1024 and dog.largest_rss > 0
    # A tree over its memory limit is named so (RSS, then PSS confirms).
    dog = Watchdog(limits=Limits(memory_bytes=1024 * 1024), root_pid=tree.pid)
    assert dog.check(time.monotonic()) == "memory"
    # Excluded pids are not counted.
    dog = Watchdog(limits=Limits(max_pids=3), root_pid=tree.pid,
                   exclude=set(_proc.children(tree.pid, recursive=False)))
    assert dog.check(time.monotonic()) is None and dog.peak_pids == 1


def test_the_watchdog_answers_none_for_a_tree_that_is_gone() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert Watchdog(limits=Limits(), root_pid=proc.pid).check(time.monotonic()) is None


def test_without_children_files_the_tree_comes_from_psutil(tree: subprocess.Popen,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    # Mocked: a kernel built without CONFIG_PROC_CHILDREN cannot be had on this machine.
    monkeypatch.setattr(_proc, "_HAS_CHILDREN", [False])
    with pytest.raises(_proc.NoChildrenFile):
        _proc.children(tree.pid)
    assert sorted(tree_pids(tree.pid)) == sorted(p.pid for p in psutil.Process(tree.pid).children(recursive=True))


def test_this_kernel_has_the_children_files() -> None:
    """Loudly: without them every poll scans all of /proc through psutil again."""
    assert os.path.exists(f"/proc/self/task/{os.getpid()}/children"), "kernel lacks CONFIG_PROC_CHILDREN"
