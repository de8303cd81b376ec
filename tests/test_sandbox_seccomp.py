"""The seccomp filter and the fresh session keyring, against real bubblewrap,
real Landlock and the process backend.

The host plants canary keys in its own session keyring and in the user keyring
linked into it (as a login session has it) with keyctl(2) through ctypes; the
hostile repo's ``kernel`` entrypoint then tries to read, update, search and add
keys, and io_uring, bpf, perf, userfaultfd, ptrace, process_vm_*, the mount
family, namespaces, personality, kexec and module loading. Each must be refused
with the filter's answer, the canaries must be unchanged and never come back,
and nothing may be planted. A control run with the explicit opt-out
(SAFEHUB_SECCOMP=0) shows the same calls do work without the filter, so these
checks can fail. A normal model load still works under every backend.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest

import safehub
from safehub._doctor import doctor_report, format_report
from safehub._env import host_env
from safehub._errors import SafehubError, SandboxUnavailableError
from safehub._jobs import JobRequest, run_job
from safehub._sandbox import Limits, SandboxResult, _seccomp, get_backend

from conftest import REPOS, ROOT, Recording

HOSTILE = Path(__file__).resolve().parent / "fixtures" / "malicious" / "hostile"
SPINE = REPOS / "spine"
RUNNERS = ROOT / "runners"
SMALL = dict(timeout_s=60.0, memory_bytes=1024**3, max_pids=64, tmpfs_bytes=64 * 1024**2, disk_bytes=256 * 1024**2)
ALL_BACKENDS = ["bwrap", "landlock", "process"]

EPERM, ENOSYS = errno.EPERM, errno.ENOSYS
# What the filter answers to each attack in the ``kernel`` entrypoint.
EXPECTED = {
    "keyctl_read": EPERM, "keyctl_read_user": EPERM, "keyctl_update": EPERM, "keyctl_search": EPERM,
    "keyctl_describe_session": EPERM, "keyctl_join_named": EPERM, "add_key_session": EPERM,
    "add_key_user": EPERM, "request_key": EPERM, "io_uring_setup": EPERM, "io_uring_enter": EPERM,
    "io_uring_register": EPERM, "bpf": EPERM, "perf_event_open": EPERM, "userfaultfd": EPERM,
    "ptrace_traceme": EPERM, "process_vm_readv": EPERM, "process_vm_writev": EPERM, "mount": EPERM,
    "umount2": EPERM, "pivot_root": EPERM, "chroot": EPERM, "fsopen": ENOSYS, "open_tree": ENOSYS,
    "unshare_user": EPERM, "unshare_mount": EPERM, "setns": EPERM, "clone_newuser": EPERM,
    "personality_no_aslr": EPERM, "kexec_load": EPERM, "kexec_file_load": EPERM, "init_module": EPERM,
    "finit_module": EPERM, "delete_module": EPERM, "clone3_newuser": ENOSYS,
}
# Per backend: Landlock has no network or IPC namespace, so no socket() and no SysV IPC.
EXPECTED_LANDLOCK = {"socket_af_alg": errno.EACCES, "shmget": EPERM}
EXPECTED_OTHERS = {"socket_af_alg": errno.EAFNOSUPPORT}

# --- keyctl(2) on the host, through ctypes -------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_NR = {"x86_64": (250, 248), "aarch64": (219, 217)}[os.uname().machine]  # keyctl, add_key
KEY_SPEC_SESSION, KEY_SPEC_USER = -3, -4
L = ctypes.c_long


def keyctl(*args: object) -> int:
    ret = _libc.syscall(L(_NR[0]), *args)
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(ret)


def add_key(description: str, payload: bytes, keyring: int) -> int:
    ret = _libc.syscall(L(_NR[1]), ctypes.c_char_p(b"user"), ctypes.c_char_p(description.encode()),
                        ctypes.c_char_p(payload), L(len(payload)), L(keyring))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return int(ret)


def read_key(key_id: int) -> bytes:
    buf = ctypes.create_string_buffer(4096)
    n = keyctl(L(11), L(key_id), buf, L(4096))
    return buf.raw[:n]


def search(keyring: int, description: str) -> int | None:
    try:
        return keyctl(L(10), L(keyring), ctypes.c_char_p(b"user"), ctypes.c_char_p(description.encode()), L(0))
    except OSError as exc:
        assert exc.errno in (errno.ENOKEY, errno.EACCES), exc
        return None


@pytest.fixture
def host_keys():
    """Canary keys in this process's session keyring and in the user keyring,
    linked in as a login session has it; removed afterwards."""
    token = secrets.token_hex(8)
    keyctl(L(1), ctypes.c_char_p(f"safehub-test-{token}".encode()))  # our own session keyring
    keyctl(L(8), L(KEY_SPEC_USER), L(KEY_SPEC_SESSION))  # KEYCTL_LINK the user keyring into it
    keys = {
        "description": f"safehub-canary-{token}",
        "payload": f"KEYCANARY-{secrets.token_hex(16)}".encode(),
        "user_description": f"safehub-user-canary-{token}",
        "user_payload": f"USERKEYCANARY-{secrets.token_hex(16)}".encode(),
        "plant": f"safehub-planted-{token}",
    }
    keys["id"] = add_key(keys["description"], keys["payload"], KEY_SPEC_SESSION)
    keys["user_id"] = add_key(keys["user_description"], keys["user_payload"], KEY_SPEC_USER)
    yield keys
    for key in (keys["id"], keys["user_id"]):
        try:
            keyctl(L(21), L(key))  # KEYCTL_INVALIDATE
        except OSError:
            pass
    for ring in (KEY_SPEC_USER, KEY_SPEC_SESSION):
        try:
            planted = keyctl(L(10), L(ring), ctypes.c_char_p(b"user"), ctypes.c_char_p(keys["plant"].encode()), L(0))
            keyctl(L(21), L(planted))
        except OSError:
            pass


class Outcome:
    """Everything the host got back from one hostile run (the tests/test_sandbox_attacks.py way)."""

    def __init__(self, sandbox: SandboxResult | None, returned: bytes, out_files: dict[str, bytes]) -> None:
        self.sandbox, self.returned, self.out_files = sandbox, returned, out_files

    def assert_clean(self, *canaries: str) -> None:
        for canary in canaries:
            assert canary.encode() not in self.returned, f"canary {canary[:12]}... came back from the sandbox"


def run_kernel_attack(backend_name: str, keys: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture):
    """The hostile repo's ``kernel`` entrypoint through the real job protocol."""
    backend = Recording(get_backend(backend_name))
    returned, out_files = b"", {}
    with caplog.at_level("DEBUG", logger="safehub"):
        try:
            job = run_job(JobRequest(action="load", repo_dir=HOSTILE, entrypoint="kernel", limits=Limits(**SMALL),
                                     kwargs=dict(key_id=keys["id"], user_key_id=keys["user_id"],
                                                 description=keys["description"], plant=keys["plant"])),
                          python_env=host_env(), backend=backend, hub_dir=tmp_path / "hub")
        except SafehubError as exc:
            raise AssertionError(f"the attack did not run to the end: {exc}") from exc
        with job:
            returned += json.dumps(job.result).encode()
            for path in sorted(job.out_dir.iterdir()):
                if path.is_file() and not path.is_symlink():
                    out_files[path.name] = path.read_bytes()
                    returned += out_files[path.name]
    returned += caplog.text.encode()
    if backend.last is not None:
        returned += backend.last.stdout + backend.last.stderr
    return Outcome(backend.last, returned, out_files), json.loads(out_files["leak.txt"])


def assert_host_keys_untouched(keys: dict) -> None:
    assert read_key(keys["id"]) == keys["payload"]
    assert read_key(keys["user_id"]) == keys["user_payload"]
    assert search(KEY_SPEC_SESSION, keys["plant"]) is None, "a key was planted in the host's session keyring"
    assert search(KEY_SPEC_USER, keys["plant"]) is None, "a key was planted in the host's user keyring"


# --- the attacks ---------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_kernel_attacks_are_refused(backend, host_keys, tmp_path, caplog):
    # The canaries are really reachable from this process (the attack target exists).
    assert search(KEY_SPEC_SESSION, host_keys["description"]) == host_keys["id"]
    out, results = run_kernel_attack(backend, host_keys, tmp_path, caplog)
    expected = {**EXPECTED, **(EXPECTED_LANDLOCK if backend == "landlock" else EXPECTED_OTHERS)}
    wrong = {label: results.get(label) for label, err in expected.items() if results.get(label) != [-1, err]}
    assert not wrong, f"not refused by the filter under {backend}: {wrong}"
    if backend != "landlock":
        assert results["shmget"][0] >= 0  # an IPC namespace of its own (bwrap), or no isolation (process)
    assert results["personality_query"][0] >= 0 and results["getpid"][0] > 0  # the filter is not a blanket refusal
    assert_host_keys_untouched(host_keys)
    out.assert_clean(host_keys["payload"].decode(), host_keys["user_payload"].decode())
    assert out.sandbox is not None and out.sandbox.details["seccomp"] == "on"


@pytest.mark.slow
def test_control_without_the_filter_the_calls_work(host_keys, tmp_path, caplog, monkeypatch):
    """SAFEHUB_SECCOMP=0 (the explicit opt-out): io_uring, ptrace and
    process_vm_readv work, so the test above can fail. The fresh session keyring
    still keeps the host's keys out of reach (defence in depth)."""
    monkeypatch.setenv("SAFEHUB_SECCOMP", "0")
    out, results = run_kernel_attack("bwrap", host_keys, tmp_path, caplog)
    assert results["io_uring_setup"][0] >= 0
    assert results["ptrace_traceme"][0] == 0
    assert results["process_vm_readv"][0] == 6
    assert results["keyctl_describe_session"][0] > 0  # keyctl works: on a keyring of its own
    assert results["keyctl_search"][0] == -1 and results["keyctl_read"][0] == -1
    assert_host_keys_untouched(host_keys)
    out.assert_clean(host_keys["payload"].decode(), host_keys["user_payload"].decode())
    assert "WITHOUT its seccomp filter" in caplog.text
    assert out.sandbox is not None and out.sandbox.details["seccomp"].startswith("OFF")


@pytest.mark.slow
def test_the_opt_out_keeps_landlocks_own_socket_filter(host_keys, tmp_path, caplog, monkeypatch):
    """SAFEHUB_SECCOMP=0 under Landlock: the full policy is gone (ptrace works), but
    socket() is still refused as Landlock always had it (UDP, docker.sock...). The
    fresh session keyring hides the host's session key; the job runs as the host's
    uid, so it CAN add a key to that uid's user keyring: the residual risk of the
    opt-out that SECURITY.md states, and why the filter is on by default."""
    monkeypatch.setenv("SAFEHUB_SECCOMP", "0")
    out, results = run_kernel_attack("landlock", host_keys, tmp_path, caplog)
    assert results["ptrace_traceme"][0] == 0
    assert results["socket_af_alg"] == [-1, errno.EACCES] and results["io_uring_setup"] == [-1, ENOSYS]
    assert results["keyctl_search"][0] == -1 and results["keyctl_read"][0] == -1
    assert read_key(host_keys["id"]) == host_keys["payload"]
    assert read_key(host_keys["user_id"]) == host_keys["user_payload"]
    assert results["add_key_user"][0] > 0 and search(KEY_SPEC_USER, host_keys["plant"]) is not None
    assert results["keyctl_read_user"] == [-1, errno.EACCES]  # not possessed: the key's read right is the possessor's
    out.assert_clean(host_keys["payload"].decode(), host_keys["user_payload"].decode())


@pytest.mark.parametrize("machine", ["x86_64", "aarch64"])
def test_the_filter_checks_the_architecture_first(machine):
    """Built for either machine, the program first loads seccomp_data.arch and
    kills the process on any other one (i386/arm32 compat calls); on x86_64 it
    also kills x32-ABI numbers (>= 0x40000000)."""
    import struct

    program = _seccomp.build("landlock", machine)
    insns = [struct.unpack_from("<HBBI", program, i) for i in range(0, len(program), 8)]
    arch = _seccomp.SUPPORTED[machine][0]
    assert insns[0] == (0x20, 0, 0, 4)  # ld [arch]
    code, jt, jf, k = insns[1]
    assert (code, k) == (0x15, arch)  # jeq arch
    assert insns[2 + jf] == (0x06, 0, 0, 0x80000000)  # another arch: ret KILL_PROCESS
    assert insns[2 + jt] != (0x06, 0, 0, 0x80000000)
    if machine == "x86_64":
        assert insns[2] == (0x20, 0, 0, 0) and insns[3][0] == 0x35 and insns[3][3] == 0x40000000


@pytest.mark.slow
@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the x32 ABI exists only on x86_64")
def test_x32_abi_kills_the_job(tmp_path):
    """A foreign ABI (x32 numbers on x86_64) gets SIGSYS, not the native table."""
    code = (
        "import sys, ctypes, json; sys.path.insert(0, sys.argv[1]); import _confine;"
        "_confine.apply(json.loads(sys.argv[2]));"
        "l = ctypes.CDLL(None); l.syscall.restype = ctypes.c_long;"
        "print('native', l.syscall(39), flush=True); print('x32', l.syscall(0x40000000 | 39), flush=True)"
    )
    config = {"no_new_privs": True, "seccomp": _seccomp.confine_entry("process")}
    done = subprocess.run([sys.executable, "-I", "-S", "-c", code, str(RUNNERS), json.dumps(config)],
                          capture_output=True, timeout=60)
    import signal

    assert done.returncode == -signal.SIGSYS, (done.returncode, done.stderr[-500:])
    assert b"native" in done.stdout and b"x32" not in done.stdout


I386_GETPID = (
    "import ctypes, mmap;"
    "m = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC);"
    "m.write(bytes([0xB8, 20, 0, 0, 0, 0xCD, 0x80, 0xC3]));"  # mov eax, 20 (i386 getpid); int 0x80; ret
    "f = ctypes.CFUNCTYPE(ctypes.c_long)(ctypes.addressof(ctypes.c_char.from_buffer(m)));"
    "print('i386', f(), flush=True)"
)


@pytest.mark.slow
@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the i386 ABI (int 0x80) exists only on x86")
def test_i386_abi_kills_the_job():
    """i386 system calls (int 0x80) from a 64-bit job: another AUDIT_ARCH, so SIGSYS."""
    import signal

    control = subprocess.run([sys.executable, "-I", "-S", "-c", I386_GETPID], capture_output=True, timeout=60)
    config = {"no_new_privs": True, "seccomp": _seccomp.confine_entry("bwrap")}
    code = f"import sys, json; sys.path.insert(0, sys.argv[1]); import _confine; _confine.apply(json.loads(sys.argv[2])); {I386_GETPID}"
    done = subprocess.run([sys.executable, "-I", "-S", "-c", code, str(RUNNERS), json.dumps(config)],
                          capture_output=True, timeout=60)
    if control.returncode == 0:  # the kernel has the i386 ABI: the filter must stop it
        assert control.stdout.startswith(b"i386 ")
        assert done.returncode == -signal.SIGSYS, (done.returncode, done.stdout, done.stderr[-500:])
    else:  # no IA32 emulation in this kernel: nothing to reach either way
        assert done.returncode != 0 and b"i386" not in done.stdout


@pytest.mark.slow
@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_a_model_loads_under_the_filter(backend, monkeypatch):
    monkeypatch.delenv("SAFEHUB_SECCOMP", raising=False)
    model = safehub.load(str(SPINE), "functional_net", source="local", verbose=False, sandbox=backend)
    assert model.safehub_info.backend == backend
    import torch

    assert model.safehub_info.sandbox_details["seccomp"] == "on"
    assert torch.isfinite(model(torch.randn(5, 8))).all()


def test_fail_closed_without_libseccomp_and_the_explicit_opt_out(monkeypatch, tmp_path):
    """No libseccomp bindings: every backend is unavailable (never silently
    unfiltered); SAFEHUB_SECCOMP=0 is the only way to run without the filter."""
    import builtins

    # A home with no remembered probe (a remembered one skips check()'s build; the
    # sandbox start still refuses: test_probe_memo.py).
    home = {"SAFEHUB_HOME": str(tmp_path / "home")}

    real_import = builtins.__import__

    def no_pyseccomp(name, *args, **kwargs):
        if name == "pyseccomp":
            raise ImportError("No module named 'pyseccomp' (test)")
        return real_import(name, *args, **kwargs)

    _seccomp.build.cache_clear()
    monkeypatch.setattr(builtins, "__import__", no_pyseccomp)
    try:
        from safehub._sandbox import BwrapBackend, LandlockBackend, ProcessBackend

        for backend in (BwrapBackend(env=home), LandlockBackend(env=home), ProcessBackend(env=home)):
            problem = backend.check()
            assert problem and "pyseccomp" in problem and "SAFEHUB_SECCOMP=0" in problem, (backend.name, problem)
        with pytest.raises(SandboxUnavailableError, match="seccomp"):
            get_backend("landlock", env={"SAFEHUB_SECCOMP": "1", "SAFEHUB_BWRAP": "/x"})
        off = {"SAFEHUB_SECCOMP": "0", **home}
        assert BwrapBackend(env=off).check() is None and LandlockBackend(env=off).check() is None
    finally:
        monkeypatch.setattr(builtins, "__import__", real_import)
        _seccomp.build.cache_clear()


@pytest.mark.slow
def test_doctor_reports_the_filter(monkeypatch):
    monkeypatch.delenv("SAFEHUB_SECCOMP", raising=False)
    report = doctor_report()
    assert report["seccomp"]["enabled"] and report["seccomp"]["usable"]
    assert report["seccomp"]["library"].startswith("libseccomp")
    assert report["seccomp"]["instructions"]["landlock"] > 100
    assert "seccomp" in format_report(report)
    off = doctor_report({"SAFEHUB_SECCOMP": "0"})
    assert not off["seccomp"]["enabled"]
    assert "SAFEHUB_SECCOMP=0" in format_report(off)
