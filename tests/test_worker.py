"""The warm worker (safehub/_worker.py, runners/safehub_worker.py), attacked.

One repo, one worker, a handful of loads in a fixed order inside one test each
(the worker is shared state, so the steps depend on each other on purpose):
a job tries to persist into the worker (monkeypatching torch, module state,
files in every writable place, a double-forked process, a thread) and to signal,
ptrace and stop the worker; the next job reports what it can see, as weights.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import checkpoint_bytes

import safehub
from safehub import Limits
from safehub._errors import SandboxError, SandboxTimeoutError

pytestmark = pytest.mark.slow

HUBCONF = textwrap.dedent('''
    import ctypes, os, signal, sys, threading, time
    import torch
    from torch import nn

    dependencies = []
    FLAGS = ["torch_patched", "tmp_planted", "shm_planted", "jobs_planted", "strays", "fds", "threads",
             "signal_worker", "ptrace_worker", "workers_dir_visible", "planted_module_state", "home_planted"]


    def _job_root():
        return os.path.dirname(os.getcwd())  # cwd is <job>/tmp


    def evil(hub=""):
        """Leave something behind for the next job, everywhere it can."""
        torch._safehub_planted = 1
        nn.Linear.forward = lambda self, x: x * 0
        sys.modules["planted_module"] = type(sys)("planted_module")
        for path in ("/tmp/planted", "/dev/shm/planted", os.path.join(os.path.dirname(_job_root()), "planted"),
                     os.path.join(os.environ["HOME"], "planted")):
            with open(path, "w") as f:
                f.write("x")
        if os.fork() == 0:  # a daemon: double fork, new session, sleep forever
            os.setsid()
            if os.fork() == 0:
                while True:
                    time.sleep(1)
            os._exit(0)
        threading.Thread(target=lambda: time.sleep(1000), daemon=False).start()
        try:
            os.kill(os.getppid(), signal.SIGSTOP)  # refused: the child's own Landlock domain
        except OSError:
            pass
        return nn.Linear(2, 2)


    def probe(hub=""):
        """What this job can see of earlier ones, as the weights of a Linear."""
        seen = dict.fromkeys(FLAGS, 0.0)
        seen["torch_patched"] = float(hasattr(torch, "_safehub_planted") or nn.Linear.forward.__name__ != "forward")
        seen["planted_module_state"] = float("planted_module" in sys.modules)
        seen["tmp_planted"] = float(os.path.exists("/tmp/planted"))
        seen["shm_planted"] = float(os.path.exists("/dev/shm/planted"))
        seen["home_planted"] = float(os.path.exists(os.path.join(os.environ["HOME"], "planted")))
        jobs = os.path.dirname(_job_root())
        try:  # (a cold run cannot list the host's jobs folder at all)
            seen["jobs_planted"] = float(len([n for n in os.listdir(jobs) if n != os.path.basename(_job_root())]))
        except OSError:
            pass
        mine = {1, os.getpid(), os.getppid()}
        seen["strays"] = float(len([p for p in os.listdir("/proc") if p.isdigit() and int(p) not in mine]))
        weights_fd = os.environ.get("SAFEHUB_WEIGHTS_FD")  # this job's own weights memfd, kept on purpose
        seen["fds"] = float(len([fd for fd in os.listdir("/proc/self/fd")
                                 if int(fd) > 2 and fd != weights_fd]) - 1)  # minus listdir's own
        x = torch.randn(1, 8, 32, 32)
        torch.nn.functional.conv2d(x, torch.randn(8, 8, 3, 3))  # hangs here if a thread pool survived the fork
        seen["threads"] = float(torch.get_num_threads())
        try:
            os.kill(os.getppid(), 0)
            seen["signal_worker"] = 1.0
        except OSError:
            pass
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.ptrace(16, os.getppid(), None, None) == 0:  # PTRACE_ATTACH
            seen["ptrace_worker"] = 1.0
        wdir = os.path.dirname(jobs)  # <hub>/workers/<key>: only the jobs mount point is there
        seen["workers_dir_visible"] = float(any(os.path.lexists(os.path.join(wdir, n))
                                                for n in ("sock", "state.json", "lock", "worker.log")))
        m = nn.Linear(len(FLAGS), 1, bias=False)
        with torch.no_grad():
            m.weight.copy_(torch.tensor([[seen[k] for k in FLAGS]]))
        return m


    def swap_root():
        """Move the job folder away and leave a link to a forged one in its place."""
        root = _job_root()
        os.makedirs("/tmp/forged/out")
        os.rename(root, root + ".moved")
        os.symlink("/tmp/forged", root)
        return nn.Linear(1, 1)


    def sleepy():
        time.sleep(120)
        return nn.Linear(1, 1)
''')
FLAGS = ["torch_patched", "tmp_planted", "shm_planted", "jobs_planted", "strays", "fds", "threads",
         "signal_worker", "ptrace_worker", "workers_dir_visible", "planted_module_state", "home_planted"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("worker-repo")
    folder.chmod(0o755)  # as root, the sandbox runs as another uid
    (folder / "hubconf.py").write_text(HUBCONF)
    return folder


def _load(repo: Path, entry: str, **kwargs):
    kwargs.setdefault("limits", Limits(timeout_s=120))  # a worker the attack stopped fails in minutes, not ten
    return safehub.load(str(repo), entry, source="local", verbose=False, **kwargs)


def _worker(model) -> dict:
    return model.safehub_info.sandbox_details["worker"]


def _landlock_abi() -> int:
    from safehub._doctor import _landlock

    return int(_landlock(os.environ)["abi"] or 0)


def test_a_job_cannot_persist_into_the_worker_nor_reach_it(repo: Path, safehub_home: Path) -> None:
    hub = str(safehub_home)
    first = _load(repo, "evil", hub=hub)
    assert _worker(first)["used"] is True
    probe = _load(repo, "probe", hub=hub)
    info = _worker(probe)
    assert info["used"] is True and info["pid"] == _worker(first)["pid"], "the second job ran in the same worker"
    seen = dict(zip(FLAGS, probe.weight.detach()[0].tolist()))
    assert seen["threads"] == min(4, os.cpu_count() or 1)  # the child's own count; its pool works after fork
    expected = dict.fromkeys(FLAGS, 0.0)
    expected["threads"] = seen["threads"]
    if _landlock_abi() < 6:  # signal scoping needs Landlock ABI 6; the worker is then only non-dumpable
        expected["signal_worker"] = seen["signal_worker"]
    assert seen == expected

    # Someone else's job folder, sent straight to the socket: refused, nothing forked.
    wdir = Path(hub) / "workers"
    assert stat.S_IMODE(os.stat(wdir).st_mode) == 0o700
    (one,) = [d for d in wdir.iterdir() if (d / "state.json").exists() and json.loads((d / "state.json").read_text())["pid"] == info["pid"]]
    assert stat.S_IMODE(os.stat(one).st_mode) == 0o700 and stat.S_IMODE(os.lstat(one / "sock").st_mode) == 0o600
    for forged in ("/etc", str(one / "jobs" / "job-0123456789abcdef" / ".." / ".." / ".."), str(one / "jobs" / "evil")):
        with socket.socket(socket.AF_UNIX) as conn:
            conn.connect(str(one / "sock"))
            conn.sendall(json.dumps({"job": forged, "env": {}}).encode() + b"\n")
            reply = json.loads(conn.makefile().readline())
        assert "refused" in reply and "started" not in reply

    # Turned off: a fresh sandbox, and safehub_info says so.
    off = _load(repo, "probe", hub=hub, limits=Limits(timeout_s=120, warm_worker=False))
    assert _worker(off)["used"] is False
    os.environ["SAFEHUB_WORKER"] = "0"
    try:
        assert _worker(_load(repo, "probe", hub=hub))["used"] is False
    finally:
        del os.environ["SAFEHUB_WORKER"]


def test_a_job_that_swaps_its_folder_for_a_link_is_refused(repo: Path) -> None:
    """The host reads out/ only after the job is gone, and only from the folders it
    made (same inode, not a link): a swapped folder fails the load."""
    with pytest.raises(SandboxError, match="replaced its folder"):
        _load(repo, "swap_root")


def test_a_job_over_its_limit_takes_the_worker_down(repo: Path) -> None:
    first = _load(repo, "probe")
    pid = _worker(first)["pid"]
    with pytest.raises(SandboxTimeoutError):
        _load(repo, "sleepy", limits=Limits(timeout_s=3))
    assert not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] == "Z"
    again = _load(repo, "probe")
    assert _worker(again)["used"] is True and _worker(again)["started_now"] is True and _worker(again)["pid"] != pid
    assert torch.equal(again.weight, first.weight)


def test_ipc_objects_of_one_job_do_not_reach_the_next(tmp_path: Path, safehub_home: Path) -> None:
    """Red team round 3: every job of a worker shares its IPC namespace, so System V
    shared memory, queues and semaphores and POSIX message queues planted by one job
    were found by the next. The job children's seccomp filter ("worker_child", which
    the worker got from its host at start and applies in each child) refuses
    creating them; files, /dev/shm and a re-forking daemon are swept after each job."""
    import re

    from conftest import ROOT
    from safehub import EntrypointFailedError

    folder = tmp_path / "ipc-repo"
    folder.mkdir()
    folder.chmod(0o755)  # as root, the sandbox runs as another uid
    (folder / "hubconf.py").write_text((ROOT / "tests" / "fixtures" / "redteam3" / "worker_hubconf.py").read_text())

    def report(entry: str) -> tuple[dict, str]:
        with pytest.raises(EntrypointFailedError) as info:
            _load(folder, entry, token="t0k3n")
        found = re.search(r"CANARY (\{.*?\}) END", info.value.remote_message)
        assert found, f"no report came back: {info.value}"
        return json.loads(found.group(1)), str(info.value)

    planted, _ = report("plant")
    for ipc in ("sysv_shm", "sysv_msg", "sysv_sem", "posix_mq"):
        assert planted[ipc] == "EPERM", f"{ipc}: {planted[ipc]} (the job could create it)"
    assert planted["tmp"] == "planted", "control: the plant job really ran and wrote its files"
    seen, _ = report("collect")
    assert all(v != "found" for v in seen.values()), seen


def test_a_replaced_repo_folder_gets_a_new_worker(tmp_path: Path) -> None:
    """A worker bind-mounts the repo folder it was started for. ``force_reload`` (or a
    user re-cloning a local repo) puts a new folder at the same path; the worker kept
    the old, deleted one, and the next load found no hubconf.py (the corpus's --warm
    run found it). The folder's identity is part of the worker's key now."""
    import shutil

    folder = tmp_path / "replaced-repo"
    folder.mkdir()
    folder.chmod(0o755)
    (folder / "hubconf.py").write_text(HUBCONF)
    first = _load(folder, "probe")
    assert _worker(first)["used"] is True
    old = tmp_path / "replaced-repo.old"
    folder.rename(old)
    shutil.copytree(old, folder)  # the same files in a new folder at the same path
    folder.chmod(0o755)
    shutil.rmtree(old)
    again = _load(folder, "probe", force_reload=True)
    assert _worker(again)["used"] is True and _worker(again)["pid"] != _worker(first)["pid"]
    assert torch.equal(again.weight, first.weight)
    # Deleted and made again (a re-clone): ext4 usually gives the new folder the old inode.
    shutil.rmtree(folder)
    folder.mkdir()
    folder.chmod(0o755)
    (folder / "hubconf.py").write_text(HUBCONF)
    third = _load(folder, "probe", force_reload=True)
    assert _worker(third)["used"] is True and _worker(third)["pid"] not in (_worker(first)["pid"], _worker(again)["pid"])
    assert torch.equal(third.weight, first.weight)


TAMPER_HUBCONF = '''
import hashlib, os
import torch
from torch import nn

dependencies = ["torch"]


def tamper():
    """Load a checkpoint through the broker, then try to write every file of in/."""
    m = nn.Linear(2, 2)
    m.load_state_dict(torch.hub.load_state_dict_from_url(URL))
    written, links = 0.0, 0.0
    in_dir = os.path.join(os.path.dirname(os.getcwd()), "in")  # cwd is <job>/tmp
    for dirpath, _, names in os.walk(in_dir):
        for name in names:
            path = os.path.join(dirpath, name)
            links = max(links, float(os.stat(path).st_nlink))
            try:
                os.chmod(path, 0o666)
            except OSError:
                pass
            try:
                with open(path, "ab") as f:
                    f.write(b"tampered")
                written += 1
            except OSError:
                pass
    with torch.no_grad():
        m.bias[0] = written
        m.bias[1] = links  # 2 for a hard link to the host's cached checkpoint
    return m
'''


def test_a_worker_job_gets_copies_of_its_downloads_not_links(tmp_path: Path, safehub_home: Path, fake_github,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """A worker job's in/ is writable by its child: the checkpoint the broker fetched
    reaches it as a copy, so a job that writes it (as the caller's uid it can) changes
    its own copy and never the host's checkpoint cache. The second load stages it
    before its first sandbox run (safehub/_fetch/_download_memo.py)."""
    import hashlib

    torch.manual_seed(0)
    state = {"weight": torch.randn(2, 2), "bias": torch.randn(2)}
    raw = checkpoint_bytes(state)
    gh = fake_github
    url = gh.url + gh.add_repo("alice", "weights").release_asset("v1", "w.pt", raw)
    folder = tmp_path / "repo"
    folder.mkdir()
    folder.chmod(0o755)
    (folder / "hubconf.py").write_text(TAMPER_HUBCONF.replace("URL", repr(url)))
    with caplog.at_level(logging.INFO, logger="safehub"):
        first = _load(folder, "tamper")
        asked_first = [r for r in caplog.records if "the entrypoint asked for" in r.getMessage()]
        caplog.clear()
        second = _load(folder, "tamper")  # the first may have started the worker: this one runs in it
        asked_second = [r for r in caplog.records if "the entrypoint asked for" in r.getMessage()]
    assert len(asked_first) == 1, "the first load's entrypoint asked for its checkpoint (a second sandbox run)"
    assert asked_second == [], "the second load staged it ahead (the download memo): one sandbox run"
    assert _worker(second)["used"] is True, "a job that stages downloads now runs in the worker"
    assert [d["url"] for d in second.safehub_info.downloads] == [url]
    assert torch.equal(second.weight, state["weight"])
    assert second.bias[1].item() == 1.0, "the staged checkpoint is a copy, not a link to the host's"
    cached = [p for p in (safehub_home / "checkpoints").rglob("*") if p.is_file() and p.name.endswith("w.pt")]
    assert cached, "the broker's checkpoint cache holds the file"
    for path in cached:
        assert path.stat().st_nlink == 1, "no job folder holds a link to the cached checkpoint"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == hashlib.sha256(raw).hexdigest()
    if os.geteuid() != 0:  # as the caller's uid the child could write in/: it wrote its copies
        assert second.bias[0].item() > 0
    assert first is not second


STALE_HUBCONF = '''
import torch
from torch import nn

def net(tag=0):
    """Load one checkpoint through the broker."""
    m = nn.Linear(2, 2)
    m.load_state_dict(torch.hub.load_state_dict_from_url(URL))
    return m
'''


def _memo_urls(home: Path, folder: Path) -> list[str] | None:
    """The download memo of the local repo ``folder`` (the session's home holds others)."""
    for path in (home / "memo").glob("downloads-*.json"):
        doc = json.loads(path.read_text())
        if str(folder.resolve()) in doc["key"]["repo"]:
            return doc["urls"]
    return None


def test_a_hint_the_entrypoint_no_longer_asks_for_is_dropped(tmp_path: Path, safehub_home: Path, fake_github,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """The download memo keeps exactly the staged URLs the entrypoint was served
    (result.json's downloads_used): a URL it asked for once and no longer needs is
    fetched and staged by the next load only, not by every load after it."""
    torch.manual_seed(0)
    raw = checkpoint_bytes(torch.nn.Linear(2, 2).state_dict())
    release = fake_github.add_repo("alice", "weights")
    url = fake_github.url + release.release_asset("v1", "w.pt", raw)
    old = fake_github.url + release.release_asset("v1", "old.pt", raw)
    folder = tmp_path / "repo"
    folder.mkdir()
    (folder / "hubconf.py").write_text(STALE_HUBCONF.replace("URL", repr(old)))
    _load(folder, "net", tag=1)  # asks for old.pt: remembered
    assert _memo_urls(safehub_home, folder) == [old]
    (folder / "hubconf.py").write_text(STALE_HUBCONF.replace("URL", repr(url)))  # now it wants w.pt
    with caplog.at_level(logging.INFO, logger="safehub"):
        second = _load(folder, "net", tag=2)  # old.pt staged from the hint, w.pt asked for
        asked = [r for r in caplog.records if "the entrypoint asked for" in r.getMessage()]
    assert len(asked) == 1
    assert sorted(d["url"] for d in second.safehub_info.downloads) == sorted([old, url])
    assert _memo_urls(safehub_home, folder) == [url], "only what the entrypoint was served"
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="safehub"):
        third = _load(folder, "net", tag=3)
        asked = [r for r in caplog.records if "the entrypoint asked for" in r.getMessage()]
    assert asked == [] and [d["url"] for d in third.safehub_info.downloads] == [url]


def test_a_runner_naming_a_url_the_host_did_not_stage_is_refused() -> None:
    from safehub._channel import downloads_used
    from safehub._errors import UnsafeSpecError

    staged = {"https://example.com/a.pt": "a.pt"}
    ok = {"protocol": 1, "status": "ok", "downloads_used": ["https://example.com/a.pt"] * 2}
    assert downloads_used(ok, staged) == ["https://example.com/a.pt"]  # type: ignore[arg-type]
    assert downloads_used({"protocol": 1, "status": "ok"}, staged) is None  # type: ignore[typeddict-item]
    for bad in (["https://example.com/b.pt"], "https://example.com/a.pt", [7], ["https://example.com/a.pt"] * 17):
        with pytest.raises(UnsafeSpecError, match="downloads_used"):
            downloads_used({"protocol": 1, "status": "ok", "downloads_used": bad}, staged)  # type: ignore[typeddict-item]
