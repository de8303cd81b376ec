"""remove_tree on trees a hostile job could leave: deep chains, locked folders,
FIFOs, links out of the tree. Real files, no mocks."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from safehub._fsutil import remove_tree

# The red team used 3000 levels against the default recursion limit (1000). Here a
# 400-deep chain runs under a recursion limit of 120 and 64 descriptors: the same
# proof that the walk neither recurses nor holds a descriptor per level, at a
# fraction of the cost (each rmdir costs milliseconds on this disk).
DEPTH = 400


def _deep_chain(root: Path, depth: int) -> None:
    # Built fd-relative: the full path is far longer than PATH_MAX.
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            nxt = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nxt
        with open(os.open("leaf", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd), "wb") as f:
            f.write(b"x")
    finally:
        os.close(fd)


def test_deep_chain_under_a_low_descriptor_limit(tmp_path):
    """A chain deeper than the recursion limit and the descriptor limit is removed."""
    root = tmp_path / "job"
    root.mkdir()
    _deep_chain(root, DEPTH)
    code = (
        "import resource, sys; resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64));"
        "from safehub._fsutil import remove_tree; sys.setrecursionlimit(120);"
        "sys.exit(0 if remove_tree(sys.argv[1]) else 1)"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert not root.exists()


def test_links_are_removed_never_followed(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("precious")
    os.chmod(outside, 0o500)  # a follow-and-chmod bug would make this writable
    root = tmp_path / "job"
    (root / "a").mkdir(parents=True)
    (root / "a" / "to_dir").symlink_to(outside)
    (root / "a" / "to_file").symlink_to(outside / "keep.txt")
    (root / "dangling").symlink_to(tmp_path / "nowhere")
    os.link(outside / "keep.txt", root / "hardlink")
    assert remove_tree(root) is True
    assert not root.exists()
    assert (outside / "keep.txt").read_text() == "precious"
    assert oct(outside.stat().st_mode & 0o777) == oct(0o500)
    # A link passed as the path is itself removed, its target kept.
    link = tmp_path / "link"
    link.symlink_to(outside)
    assert remove_tree(link) is True
    assert not link.is_symlink() and (outside / "keep.txt").exists()


def test_locked_folders_fifos_and_sockets(tmp_path):
    root = tmp_path / "job"
    locked = root / "out" / "locked"
    (locked / "inner").mkdir(parents=True)
    (locked / "inner" / "f").write_text("x")
    os.mkfifo(root / "out" / "fifo")
    os.mkfifo(locked / "inner" / "fifo")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "out" / "sock"))
    sock.close()
    os.chmod(locked / "inner", 0o000)
    os.chmod(locked, 0o000)
    os.chmod(root / "out", 0o500)  # readable, not writable: entries cannot be unlinked as-is
    assert remove_tree(root) is True
    assert not root.exists()


def test_missing_path_and_plain_file(tmp_path):
    assert remove_tree(tmp_path / "nope") is True
    f = tmp_path / "f"
    f.write_text("x")
    assert remove_tree(f) is True and not f.exists()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the removal as another uid")
def test_what_cannot_be_removed_is_logged_not_raised():
    """A tree owned by another uid (as a job's tree is when bwrap runs it as its own
    uid): removal fails part-way, is logged, returns False, and never raises."""
    import shutil
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="safehub-fsutil-"))
    try:
        os.chmod(base, 0o755)
        root = base / "job"
        (root / "a" / "b").mkdir(parents=True)
        (root / "a" / "b" / "f").write_text("x")
        os.chmod(root, 0o777)  # its entries are root's and not writable by others
        code = (
            "import logging, os, sys; logging.basicConfig(level=logging.WARNING);"
            "from safehub._fsutil import remove_tree;"  # imported first: the venv may be root-only
            "os.setgid(65534); os.setuid(65534); print(remove_tree(sys.argv[1]))"
        )
        proc = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True, text=True, timeout=60,
                              cwd=base)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == "False"
        assert "could not remove all of" in proc.stderr and "remove it by hand" in proc.stderr
        assert (root / "a" / "b" / "f").exists()
    finally:
        shutil.rmtree(base)


def test_a_mount_point_inside_the_tree_is_left_alone(tmp_path, caplog):
    """Another file system mounted inside the tree is never entered: its files stay,
    the failure is logged and remove_tree returns False."""
    root = tmp_path / "job"
    (root / "sub").mkdir(parents=True)
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs /dev/shm on a file system other than tmp_path")
    if subprocess.run(["mount", "--bind", str(shm), str(root / "sub")], capture_output=True).returncode != 0:
        pytest.skip("bind mounts need privileges here")
    marker = shm / f"safehub-fsutil-{os.getpid()}"
    marker.write_text("keep")
    try:
        with caplog.at_level(logging.WARNING, logger="safehub"):
            assert remove_tree(root) is False
        assert marker.exists(), "remove_tree emptied another file system mounted inside the tree"
        assert "mount point" in caplog.text and "remove it by hand" in caplog.text
    finally:
        subprocess.run(["umount", str(root / "sub")], check=False)
        marker.unlink()
    assert remove_tree(root) is True


def test_job_cleanup_keeps_the_built_model(tmp_path):
    """The red-team case at the job level: a littered out/ (deep chain, locked folder,
    FIFO, link out) after the model was built. Leaving the ``with job:`` block must
    neither raise nor leave the job folder."""
    from safehub._jobs import Job
    from safehub._sandbox import Limits, SandboxResult

    root = tmp_path / "job-1"
    out = root / "out"
    out.mkdir(parents=True)
    _deep_chain(out, DEPTH)
    (out / "locked").mkdir()
    os.mkfifo(out / "locked" / "fifo")
    os.chmod(out / "locked", 0o000)
    (out / "home").symlink_to(Path.home())
    job = Job(root=root, result={"status": "ok"}, sandbox=SandboxResult(0, b"", b"", "process", Limits()))
    with job:
        model = "built"
    assert model == "built"
    assert not root.exists()
    assert Path.home().is_dir()


@pytest.mark.slow
def test_a_deep_chain_left_by_a_real_job_does_not_lose_the_model(tmp_path):
    """The red-team case end to end: the entrypoint leaves a 3000-deep chain, a locked
    folder and a FIFO in out/, then returns a model. The load returns it and the job
    folder is gone."""
    import textwrap

    import safehub

    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "hubconf.py").write_text(textwrap.dedent("""
        import os, sys
        import torch
        dependencies = ["torch"]
        def m():
            out = os.path.join(sys.argv[1], "out")
            fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY)
            for _ in range(3000):
                os.mkdir("d", dir_fd=fd)
                nxt = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
                os.close(fd)
                fd = nxt
            os.close(fd)
            os.mkfifo(os.path.join(out, "fifo"))
            os.mkdir(os.path.join(out, "locked"))
            os.chmod(os.path.join(out, "locked"), 0)
            return torch.nn.Linear(2, 3)
    """))
    jobs = Path(os.environ["SAFEHUB_HOME"]) / "jobs"
    before = set(jobs.iterdir()) if jobs.exists() else set()
    try:
        model = safehub.load(str(repo), "m", source="local", verbose=False)
        assert model.weight.shape == (3, 2)
        assert (set(jobs.iterdir()) if jobs.exists() else set()) == before
    finally:
        # Whatever happened, never leave a chain pytest's own tmp cleanup (recursive) dies on.
        for left in (set(jobs.iterdir()) if jobs.exists() else set()) - before:
            remove_tree(left)


def test_file_lock_excludes_other_holders_and_times_out(tmp_path: Path) -> None:
    from safehub._fsutil import FileLock, LockTimeout

    path = tmp_path / "x.lock"
    with FileLock(path) as held:
        assert held.is_locked and (path.stat().st_mode & 0o777) == 0o600
        with pytest.raises(LockTimeout, match="held by another process"):
            FileLock(path, timeout=0).acquire()  # another holder in this process, as in another
        waited = FileLock(path)
        with pytest.raises(LockTimeout):
            waited.acquire(timeout=0.12)
        assert not waited.is_locked
        other = subprocess.run([sys.executable, "-c", "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR);"
                                " fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)", str(path)], capture_output=True, text=True)
        assert other.returncode != 0 and "BlockingIOError" in other.stderr
    with FileLock(path, timeout=0):  # released on exit
        pass
    assert path.exists()  # never unlinked: a waiter may hold it open


def test_file_lock_is_dropped_when_its_holder_dies_and_refuses_a_symlink(tmp_path: Path) -> None:
    from safehub._fsutil import FileLock

    path = tmp_path / "x.lock"
    holder = subprocess.Popen([sys.executable, "-c", "import sys; from safehub._fsutil import FileLock;"
                               " FileLock(sys.argv[1]).acquire(); print('held', flush=True); sys.stdin.read()", str(path)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    holder.kill()
    holder.wait()
    with FileLock(path, timeout=5):
        pass
    (tmp_path / "link.lock").symlink_to(path)
    with pytest.raises(OSError):
        FileLock(tmp_path / "link.lock", timeout=0).acquire()
