"""The sandbox backends below the job protocol: selection and refusal, what each
layer of bwrap and Landlock actually gives, bounded capture, and safehub doctor.

Runs real bubblewrap and real Landlock. Nothing is mocked; a backend is made
"unavailable" the way an operator would (SAFEHUB_BWRAP points nowhere,
SAFEHUB_LANDLOCK_ABI=0), and load must refuse rather than downgrade.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import sys
from pathlib import Path

import pytest

import safehub
from safehub._doctor import doctor_report, format_report
from safehub._errors import SandboxError, SandboxUnavailableError
from safehub._sandbox import Limits, SandboxRequest, get_backend
from safehub._sandbox._base import MAX_CAPTURE_BYTES

from safehub._env import host_env as host_python_env

REPO = Path(__file__).resolve().parent / "fixtures" / "malicious" / "hostile"

SPINE = Path(__file__).resolve().parent / "fixtures" / "repos" / "spine"
NO_BWRAP = {"SAFEHUB_BWRAP": "/nonexistent/bwrap"}
NO_LANDLOCK = {"SAFEHUB_LANDLOCK_ABI": "0"}


def request(tmp_path: Path, code: str, **limits: object) -> SandboxRequest:
    env = host_python_env()
    job = tmp_path / "job"
    for sub in ("out", "home", "tmp"):
        (job / sub).mkdir(parents=True, exist_ok=True)
    return SandboxRequest(
        argv=[str(env.python), "-I", "-S", "-c", code],
        env={"PATH": "/usr/bin:/bin", "HOME": str(job / "home"), "TMPDIR": str(job / "tmp"), "LC_ALL": "C.UTF-8"},
        cwd=job / "tmp",
        ro_paths=env.ro_paths,
        rw_paths=(job / "out",),
        scratch_paths=(job / "home", job / "tmp"),
        limits=Limits(**{"timeout_s": 60.0, "tmpfs_bytes": 32 * 1024**2, **limits}),
    )


def run_code(backend: str, tmp_path: Path, code: str, **limits: object):
    result = get_backend(backend).run(request(tmp_path, code, **limits))
    return result, result.stdout.decode(errors="replace")


# --- selection and refusal -------------------------------------------------------


def test_auto_picks_bwrap_here_and_never_process(monkeypatch):
    monkeypatch.delenv("SAFEHUB_SANDBOX", raising=False)
    assert get_backend(env={}).name == "bwrap"
    assert get_backend("auto", env=NO_BWRAP).name == "landlock"
    with pytest.raises(SandboxUnavailableError) as err:
        get_backend("auto", env={**NO_BWRAP, **NO_LANDLOCK})
    text = str(err.value)
    assert "bwrap:" in text and "landlock:" in text and "apt install bubblewrap" in text


@pytest.mark.parametrize(("name", "env", "layer"), [
    ("bwrap", NO_BWRAP, "bubblewrap is not installed"),
    ("landlock", NO_LANDLOCK, "Landlock is not available"),
])
def test_a_missing_backend_is_refused_by_name(name, env, layer):
    with pytest.raises(SandboxUnavailableError, match=layer):
        get_backend(name, env=env)


@pytest.mark.parametrize(("sandbox", "env"), [
    ("bwrap", NO_BWRAP),
    ("landlock", NO_LANDLOCK),
    (None, {**NO_BWRAP, **NO_LANDLOCK}),
], ids=["bwrap", "landlock", "auto"])
def test_load_refuses_when_the_isolation_is_missing(sandbox, env, monkeypatch, tmp_path):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("SAFEHUB_SANDBOX", raising=False)
    with pytest.raises(SandboxUnavailableError):
        safehub.load(str(SPINE), "functional_net", source="local", verbose=False, sandbox=sandbox)
    assert not list((tmp_path).glob("**/result.json"))


def test_environment_variable_selects_and_process_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="safehub"):
        assert get_backend(env={"SAFEHUB_SANDBOX": "process"}).name == "process"
    assert "WITHOUT OS isolation" in caplog.text
    with pytest.raises(SandboxUnavailableError, match="unknown sandbox backend"):
        get_backend("docker", env={})


def test_process_backend_warns_on_every_run(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="safehub"):
        result, out = run_code("process", tmp_path, "print('hi')")
    assert result.returncode == 0 and out.strip() == "hi"
    assert "NO OS isolation" in caplog.text


# --- request checks ------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["bwrap", "landlock", "process"])
def test_paths_that_would_expose_too_much_are_refused(backend, tmp_path, monkeypatch):
    base = request(tmp_path, "pass")
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "job" / "out")
    monkeypatch.setenv("HOME", str(tmp_path / "host-home"))
    (tmp_path / "host-home").mkdir()
    bad = [
        dict(ro_paths=(Path("/"),)),
        dict(ro_paths=(Path("/proc/1"),)),
        dict(ro_paths=(tmp_path,)),  # contains the job's writable folders (and the rest of the cache)
        dict(ro_paths=(tmp_path / "host-home",)),
        dict(rw_paths=(link,)),
        dict(ro_paths=(Path("relative"),)),
    ]
    import dataclasses

    for change in bad:
        with pytest.raises(SandboxError):
            get_backend(backend).run(dataclasses.replace(base, **change))


# --- what bwrap gives ----------------------------------------------------------------


def test_bwrap_layers(tmp_path):
    code = r"""
import ctypes, json, os, socket
libc = ctypes.CDLL(None, use_errno=True)
r = {}
r["uid"] = os.getuid()
r["pids"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
r["ifaces"] = [n for _, n in socket.if_nameindex()]
r["hostname"] = socket.gethostname()
r["userns"] = libc.unshare(0x10000000)
r["root"] = sorted(os.listdir("/"))
try:
    open("/evil", "w"); r["root_writable"] = True
except OSError:
    r["root_writable"] = False
r["dev"] = sorted(os.listdir("/dev"))
with open("/dev/shm/x", "w") as f:
    f.write("shm")
st = os.statvfs("/tmp"); r["tmp_bytes"] = st.f_blocks * st.f_frsize
st = os.statvfs(os.environ["HOME"]); r["home_bytes"] = st.f_blocks * st.f_frsize
r["env"] = dict(os.environ)
r["passwd"] = open("/etc/passwd").read().split(":")[0]  # the synthetic one is reachable
for name, path in (("etc_list", "/etc"), ("os_release", "/etc/os-release")):
    try:
        r[name] = os.listdir(path) if name == "etc_list" else open(path).read()
    except OSError as exc:
        r[name] = type(exc).__name__
print(json.dumps(r))
"""
    result, out = run_code("bwrap", tmp_path, code)
    assert result.returncode == 0, result.stderr
    r = json.loads(out)
    if os.geteuid() == 0:
        assert r["uid"] != 0  # root on the host: the job runs as a fresh uid
    else:
        assert r["uid"] == os.getuid()
    assert max(r["pids"]) < 10  # its own pid namespace: no host process is visible
    assert r["ifaces"] == ["lo"]
    assert r["hostname"] == "sandbox"
    assert r["userns"] != 0  # no nested user namespaces
    req = request(tmp_path, "pass")
    expected = {"usr", "etc", "dev", "proc", "tmp"} | {d for d in ("bin", "sbin", "lib", "lib32", "lib64", "libx32") if os.path.lexists("/" + d)}
    expected |= {Path(p).parts[1] for p in (*req.ro_paths, *req.rw_paths, *req.scratch_paths)}
    assert set(r["root"]) == expected  # nothing else of the host's file system
    assert not r["root_writable"]
    assert not any(d.startswith("nvidia") for d in r["dev"])  # no GPU unless asked
    assert r["tmp_bytes"] == r["home_bytes"] == 32 * 1024**2  # size-capped tmpfs
    assert set(r["env"]) <= {"PATH", "HOME", "TMPDIR", "LC_ALL", "LC_CTYPE", "PWD"}
    # /etc: traversable for the synthetic passwd, not listable, and a host file is simply absent
    # (FileNotFoundError, which libraries handle; was PermissionError with /etc at 0700).
    assert r["passwd"] == "sandbox"
    assert r["etc_list"] == "PermissionError" and r["os_release"] == "FileNotFoundError"
    # The sandbox's /dev/shm is private, and the host HOME/TMPDIR folders were never written.
    assert not Path("/dev/shm/x").exists()
    assert list((tmp_path / "job" / "home").iterdir()) == []


def test_bwrap_output_folder_is_the_only_host_write(tmp_path):
    code = "import os; open(os.environ['HOME'] + '/../out/result.txt', 'w').write('ok'); print(os.getcwd())"
    result, out = run_code("bwrap", tmp_path, code)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "job" / "out" / "result.txt").read_text() == "ok"


# --- what Landlock gives -------------------------------------------------------------


def test_landlock_confines_any_command_not_just_the_runner(tmp_path, monkeypatch):
    secret = "LLSECRET-" + secrets.token_hex(8)
    (tmp_path / "secret.txt").write_text(secret)
    code = f"""
import os
for p in ({str(tmp_path / 'secret.txt')!r}, '/etc/hostname', '/proc/1/environ'):
    try:
        print(open(p).read())
    except OSError as e:
        print('denied', e.errno)
open(os.environ['TMPDIR'] + '/ok', 'w').write('x')
print('wrote tmp')
"""
    result, out = run_code("landlock", tmp_path, code)
    assert result.returncode == 0, result.stderr
    assert secret not in out and out.count("denied 13") == 3 and "wrote tmp" in out
    assert result.details["landlock_abi"] >= 1


# --- capture and error text ----------------------------------------------------------


@pytest.mark.parametrize("backend", ["bwrap", "landlock"])
def test_captured_output_is_bounded(backend, tmp_path):
    code = "import sys\nfor _ in range(200): sys.stdout.write('x' * 65536)\nsys.stderr.write('e' * 1000000)"
    result, _ = run_code(backend, tmp_path, code)
    assert result.returncode == 0
    assert len(result.stdout) == MAX_CAPTURE_BYTES and len(result.stderr) == MAX_CAPTURE_BYTES


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["bwrap", "landlock"])
def test_control_characters_are_escaped_in_errors(backend, tmp_path):
    from safehub._jobs import JobRequest, run_job

    with pytest.raises(SandboxError) as err:
        run_job(JobRequest(action="load", repo_dir=REPO, entrypoint="crash_with_escapes", limits=Limits(timeout_s=60.0)),
                python_env=host_python_env(), backend=get_backend(backend), hub_dir=tmp_path / "hub")
    text = str(err.value)
    assert "exited with status 3" in text and "FAKE" in text
    assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text
    assert "\\x1b[31m" in text


# --- records and doctor --------------------------------------------------------------


@pytest.mark.slow
def test_load_records_backend_and_limits(tmp_path):
    limits = Limits(timeout_s=120.0, max_pids=99)
    model = safehub.load(str(SPINE), "functional_net", source="local", verbose=False, sandbox="landlock", limits=limits)
    assert model.safehub_info.backend == "landlock"
    assert model.safehub_info.limits["max_pids"] == 99


def test_doctor_reports_this_machine():
    report = doctor_report()
    json.dumps(report)
    assert report["bwrap"]["usable"] and report["user_namespaces"]["usable"]
    assert report["landlock"]["abi"] >= 1 and report["landlock"]["usable"]
    assert report["auto_backend"] == "bwrap" and report["ok"]
    assert isinstance(report["cgroup"]["delegated"], bool)
    assert "bwrap backend" in format_report(report)


def test_doctor_says_what_is_missing():
    report = doctor_report({**NO_BWRAP, **NO_LANDLOCK})
    assert not report["ok"] and report["auto_backend"] is None
    assert "bubblewrap is not installed" in report["bwrap"]["problem"]
    text = format_report(report)
    assert "PROBLEM" in text and "apt install bubblewrap" in text


def test_the_sandbox_uid_is_one_no_process_runs_as(monkeypatch) -> None:
    """pick_sandbox_uid reads every process's uids from /proc: a uid in use, here a
    real process's saved uid, is never handed out."""
    import subprocess

    from safehub._sandbox import _userns

    if os.geteuid() != 0:
        pytest.fail("this test needs root to start a process under another uid (CI runs as root)")
    taken = _userns.UID_BASE + 4242
    proc = subprocess.Popen(["sleep", "30"], user=taken, group=taken)
    try:
        assert taken in _userns._uids_in_use()
        draws = iter([4242, 4242, 7])  # the taken uid twice, then a free one
        monkeypatch.setattr(_userns.secrets, "randbelow", lambda span: next(draws))
        assert _userns.pick_sandbox_uid() == _userns.UID_BASE + 7
        monkeypatch.setattr(_userns.secrets, "randbelow", lambda span: 4242)
        with pytest.raises(SandboxUnavailableError, match="unused uid"):
            _userns.pick_sandbox_uid()
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("pidfd", [True, False], ids=["pidfd", "no-pidfd"])
def test_kill_uid_takes_every_process_of_that_uid_and_no_other(pidfd: bool, monkeypatch) -> None:
    """kill_uid (the end of every root bwrap run) finds a uid's processes in /proc,
    a daemon that left the tree included, and kills only those. "no-pidfd" mocks a
    kernel before 5.3 (this one has pidfd_open): a plain kill after the uid check."""
    import errno
    import subprocess
    import time

    from safehub._sandbox import _userns
    from safehub._sandbox._kill import _alive, kill_uid
    from safehub._sandbox._proc import all_uids

    def living(uid: int) -> list[int]:
        return [pid for pid, ids in all_uids().items() if uid in ids and _alive(pid)]

    if os.geteuid() != 0:
        pytest.fail("this test needs root to start processes under other uids (CI runs as root)")
    uid, other = _userns.UID_BASE + 5151, _userns.UID_BASE + 5152
    # A leader and a double-forked daemon under `uid`; a bystander under `other`.
    leader = subprocess.Popen(["sh", "-c", "(setsid sleep 60 &) ; sleep 60"], user=uid, group=uid)
    bystander = subprocess.Popen(["sleep", "60"], user=other, group=other)
    try:
        deadline = time.monotonic() + 10
        while len(living(uid)) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(living(uid)) == 3  # sh, its sleep, the daemon
        if not pidfd:
            def no_pidfd(pid: int, flags: int = 0) -> int:
                raise OSError(errno.ENOSYS, "pidfd_open: not on this kernel")

            monkeypatch.setattr(os, "pidfd_open", no_pidfd)
        assert kill_uid(uid) >= 3
        leader.wait(timeout=10)
        assert living(uid) == []
        assert bystander.poll() is None  # another uid's process is untouched
        assert kill_uid(uid) == 0
    finally:
        for proc in (leader, bystander):
            proc.kill()
            proc.wait()


def test_a_process_name_cannot_fake_its_uid_in_proc_status() -> None:
    """Red team (round 8): _proc.uids reads the first "Uid:" line of /proc/<pid>/status,
    whose "Name:" line comes first and is the process's own choice (prctl PR_SET_NAME).
    A name holding a newline and a fake Uid line must not be read as its uid: the
    kernel escapes the newline."""
    import subprocess

    from safehub._sandbox._proc import uids

    script = ("import ctypes, sys, time\n"
              "ctypes.CDLL(None).prctl(15, b'x\\nUid:\\t7 7 7 7', 0, 0, 0)\n"  # PR_SET_NAME (15 bytes kept)
              "print('ready', flush=True); time.sleep(30)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        name = Path(f"/proc/{proc.pid}/comm").read_bytes()
        assert name.startswith(b"x\nUid:"), name  # the name really holds the fake line
        assert uids(proc.pid) == (os.getuid(), os.geteuid(), os.getuid())
    finally:
        proc.kill()
        proc.wait()
