"""A hostile hub repo (tests/fixtures/malicious/hostile) against the real bwrap and
Landlock backends.

Each attack runs the repo's entrypoint through the real job protocol
(safehub._jobs.run_job: the runner, request.json, the sandbox) with the host's
interpreter. For each one the test checks that the attack was contained (files,
listeners, sentinel processes untouched; the right limit reported) and that no
planted canary appears in anything that came back: stdout/stderr, result.json,
every file in out/ (weights included), the error text and the logs.

These tests need bubblewrap and Landlock; CI installs bubblewrap. A machine
without them fails here, loudly: security tests are never skipped.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import Recording
from safehub._env import host_env
from safehub._env._types import PythonEnv
from safehub._errors import SafehubError, SandboxLimitError, SandboxTimeoutError
from safehub._jobs import JobRequest, run_job
from safehub._sandbox import Limits, SandboxResult, get_backend

REPO = Path(__file__).resolve().parent / "fixtures" / "malicious" / "hostile"
BACKENDS = ["bwrap", "landlock"]
SMALL = dict(timeout_s=60.0, memory_bytes=1024**3, max_pids=64, tmpfs_bytes=64 * 1024**2, disk_bytes=256 * 1024**2)

pytestmark = pytest.mark.slow


def host_python_env() -> PythonEnv:
    """The host interpreter, exposed read-only (what safehub gives trusted jobs)."""
    return host_env()


@dataclass
class Outcome:
    error: BaseException | None
    sandbox: SandboxResult | None
    returned: bytes = b""
    out_files: dict[str, bytes] = field(default_factory=dict)

    def assert_clean(self, *canaries: str) -> None:
        for canary in canaries:
            assert canary.encode() not in self.returned, f"canary {canary[:8]}... came back from the sandbox"


@pytest.fixture(scope="module")
def python_env() -> PythonEnv:
    return host_python_env()


@pytest.fixture
def canaries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """Secrets planted on the host: in HOME files and in the environment."""
    home = tmp_path / "host-home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".aws").mkdir()
    key = "SSHKEY-" + secrets.token_hex(16)
    aws = "AWSKEY-" + secrets.token_hex(16)
    env = "ENVSECRET-" + secrets.token_hex(16)
    (home / ".ssh" / "id_rsa").write_text(key)
    (home / ".aws" / "credentials").write_text(f"[default]\naws_secret_access_key = {aws}\n")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", env)
    monkeypatch.setenv("GITHUB_TOKEN", env)
    return {
        "home": home,
        "paths": [str(home / ".ssh" / "id_rsa"), str(home / ".aws" / "credentials")],
        "env_names": ["AWS_SECRET_ACCESS_KEY", "GITHUB_TOKEN"],
        "values": [key, aws, env],
    }


def attack(backend_name: str, entry: str, hub_dir: Path, python_env: PythonEnv, caplog: pytest.LogCaptureFixture,
           limits: Limits | None = None, **kwargs: object) -> Outcome:
    """Run one hostile entrypoint; gather everything the host got back."""
    backend = Recording(get_backend(backend_name))
    error: BaseException | None = None
    returned = b""
    out_files: dict[str, bytes] = {}
    with caplog.at_level("DEBUG", logger="safehub"):
        try:
            job = run_job(JobRequest(action="load", repo_dir=REPO, entrypoint=entry, kwargs=kwargs,
                                     limits=limits or Limits(**SMALL)),
                          python_env=python_env, backend=backend, hub_dir=hub_dir)
        except SafehubError as exc:
            error = exc
            returned += str(exc).encode() + repr(exc).encode()
            returned += str(getattr(exc, "remote_traceback", "")).encode()
        else:
            with job:
                import json

                returned += json.dumps(job.result).encode()
                for path in sorted(job.out_dir.iterdir()):
                    if path.is_file() and not path.is_symlink():
                        out_files[path.name] = path.read_bytes()
                        returned += out_files[path.name]
    returned += caplog.text.encode()
    if backend.last is not None:
        returned += backend.last.stdout + backend.last.stderr
    return Outcome(error=error, sandbox=backend.last, returned=returned, out_files=out_files)


# --- secrets ------------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("raise_", [False, True], ids=["returned", "raised"])
def test_secrets_in_home_and_environment_stay_out(backend, raise_, canaries, tmp_path, python_env, caplog):
    out = attack(backend, "steal", tmp_path / "hub", python_env, caplog,
                 paths=canaries["paths"], env_names=canaries["env_names"], raise_=raise_)
    if raise_:
        assert out.error is not None and "LEAK" in str(out.error)  # the attack ran and reported
    else:
        assert out.error is None and "leak.txt" in out.out_files
    out.assert_clean(*canaries["values"])


def test_control_the_process_backend_does_leak_home(canaries, tmp_path, python_env, caplog):
    """The same attack without OS isolation finds the HOME secrets: the checks above can fail."""
    out = attack("process", "steal", tmp_path / "hub", python_env, caplog,
                 paths=canaries["paths"], env_names=canaries["env_names"])
    assert canaries["values"][0].encode() in out.returned
    # The clean environment still holds: env secrets never reach even this backend.
    assert canaries["values"][2].encode() not in out.returned


@pytest.mark.parametrize("backend", BACKENDS)
def test_libc_via_ctypes_is_contained(backend, canaries, tmp_path, python_env, caplog):
    with listeners() as ears:
        out = attack(backend, "libc_direct", tmp_path / "hub", python_env, caplog,
                     paths=canaries["paths"], env_names=canaries["env_names"], port=ears.tcp.getsockname()[1])
    assert out.error is None, out.error
    assert ears.seen == []
    out.assert_clean(*canaries["values"])


# --- writing where it must not --------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_writes_to_home_site_packages_cache_and_repo_fail(backend, canaries, tmp_path, python_env, caplog):
    import sysconfig

    hub = tmp_path / "hub"
    hub.mkdir()
    (hub / "trusted_list.json").write_text("[]")
    token = secrets.token_hex(6)
    site = Path(sysconfig.get_paths()["purelib"]) / f"safehub_pwned_{token}.pth"
    targets = {
        canaries["home"] / ".bashrc": None,
        site: None,
        hub / "trusted_list.json": "[]",
        hub / "jobs" / f"pwned-{token}": None,
        REPO / f"pwned-{token}.py": None,
    }
    try:
        out = attack(backend, "scribble", hub, python_env, caplog, paths=[str(p) for p in targets])
        assert out.error is None, out.error
        for path, before in targets.items():
            now = path.read_text() if path.exists() else None
            assert now == before, f"the sandbox wrote {path}"
    finally:
        for path, before in targets.items():
            if before is None and path.exists():
                path.unlink()


# --- network ------------------------------------------------------------------


class listeners:
    """Host listeners the sandbox must not reach, recording every contact: TCP and
    UDP on 127.0.0.1, an abstract unix socket and a pathname unix socket (world-
    writable, like an ssh-agent or docker.sock would be to its owner)."""

    def __init__(self, folder: Path | None = None) -> None:
        import tempfile

        self.folder = Path(tempfile.mkdtemp(dir=folder))

    def __enter__(self):
        self.seen: list[str] = []
        self.tcp = socket.create_server(("127.0.0.1", 0))
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.abstract = b"\0safehub-test-" + secrets.token_hex(8).encode()
        self.unix.bind(self.abstract)
        self.unix.listen()
        os.chmod(self.folder, 0o777)
        self.path = str(self.folder / "agent.sock")
        self.named = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.named.bind(self.path)
        os.chmod(self.path, 0o777)
        self.named.listen()
        self.stop = False
        self.threads = [threading.Thread(target=self._accept, args=(s, kind), daemon=True)
                        for s, kind in ((self.tcp, "tcp"), (self.unix, "unix"), (self.named, "path"))]
        self.threads.append(threading.Thread(target=self._receive, daemon=True))
        for t in self.threads:
            t.start()
        return self

    def _accept(self, sock: socket.socket, kind: str) -> None:
        sock.settimeout(0.05)
        while not self.stop:
            try:
                conn, _ = sock.accept()
            except (TimeoutError, OSError):
                continue
            self.seen.append(kind)
            conn.close()

    def _receive(self) -> None:
        self.udp.settimeout(0.05)
        while not self.stop:
            try:
                self.udp.recv(4096)
            except (TimeoutError, OSError):
                continue
            self.seen.append("udp")

    def __exit__(self, *exc: object) -> None:
        self.stop = True
        for t in self.threads:
            t.join(5)
        for s in (self.tcp, self.udp, self.unix, self.named):
            s.close()
        import shutil

        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_connection_reaches_host_listeners(backend, tmp_path, python_env, caplog):
    message = "NETSECRET-" + secrets.token_hex(8)
    with listeners() as ears:
        out = attack(backend, "connect", tmp_path / "hub", python_env, caplog,
                     port=ears.tcp.getsockname()[1], abstract=ears.abstract, message=message.encode(),
                     udp_port=ears.udp.getsockname()[1], unix_path=ears.path)
        assert out.error is None, out.error
        contacts_from_sandbox = list(ears.seen)
        # Control: every listener does hear an unconfined client.
        socket.create_connection(ears.tcp.getsockname(), timeout=2).close()
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ears.udp.getsockname())
        for address in (ears.abstract, ears.path):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
                c.connect(address)
        deadline = time.monotonic() + 10
        while len(ears.seen) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert contacts_from_sandbox == [], f"the sandbox reached a host listener: {contacts_from_sandbox}"
    assert sorted(ears.seen) == ["path", "tcp", "udp", "unix"]
    leak = out.out_files["leak.txt"]
    assert b"tcp ok" not in leak and b"unix ok" not in leak and b"path ok" not in leak


# --- resource limits -----------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("entry", "limit", "limits"),
    [
        ("fork_bomb", "pids", dict(SMALL, max_pids=32)),
        ("memory_bomb", "memory", dict(SMALL, memory_bytes=300 * 1024**2)),
        ("busy_loop", "timeout", dict(SMALL, timeout_s=3.0)),
        ("busy_loop", "cpu", dict(SMALL, cpu_time_s=1)),
        ("sleeper", "timeout", dict(SMALL, timeout_s=3.0)),
    ],
    ids=["fork-bomb", "memory-bomb", "busy-loop", "cpu-time", "sleep"],
)
def test_limits_kill_the_tree_and_name_the_limit(backend, entry, limit, limits, tmp_path, python_env, caplog):
    out = attack(backend, entry, tmp_path / "hub", python_env, caplog, limits=Limits(**limits))
    assert isinstance(out.error, SandboxLimitError), out.error
    assert out.error.limit == limit
    if limit == "timeout":
        assert isinstance(out.error, SandboxTimeoutError)
    assert out.sandbox is not None and out.sandbox.killed_by == limit
    assert list((tmp_path / "hub" / "jobs").iterdir()) == []  # the job folder is gone
    if backend == "landlock" and os.geteuid() == 0:
        # RLIMIT_NPROC does not bind root: the kernel caps the tree through a pids cgroup.
        assert out.sandbox.details["pids_cgroup"] in ("v1", "v2")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("where", ["tmp", "out"])
def test_filling_the_disk_is_stopped(backend, where, tmp_path, python_env, caplog):
    out = attack(backend, "fill_disk", tmp_path / "hub", python_env, caplog, where=where)
    assert isinstance(out.error, SandboxLimitError), out.error
    assert out.error.limit == "disk"


def test_bwrap_private_dev_shm_is_capped(tmp_path, python_env, caplog):
    out = attack("bwrap", "fill_disk", tmp_path / "hub", python_env, caplog, where="shm")
    assert isinstance(out.error, SandboxLimitError) and out.error.limit == "disk", out.error
    assert not list(Path("/dev/shm").glob("fill-*"))  # the host's /dev/shm never saw it


def test_bwrap_tmpfs_counts_as_memory(tmp_path, python_env, caplog):
    """Files in the sandbox's tmpfs live in RAM: they count against the memory limit."""
    limits = Limits(**dict(SMALL, memory_bytes=150 * 1024**2, tmpfs_bytes=256 * 1024**2))
    out = attack("bwrap", "fill_disk", tmp_path / "hub", python_env, caplog, limits=limits, where="tmp")
    assert isinstance(out.error, SandboxLimitError), out.error
    assert out.error.limit == "memory"


# --- processes ----------------------------------------------------------------


@pytest.mark.parametrize("backend", BACKENDS)
def test_double_forked_daemon_dies_with_the_run(backend, tmp_path, python_env, caplog):
    marker = tmp_path / "daemon-marker"
    backend_obj = Recording(get_backend(backend))
    job = run_job(JobRequest(action="load", repo_dir=REPO, entrypoint="daemon", kwargs={"marker": str(marker)},
                             limits=Limits(**SMALL)),
                  python_env=python_env, backend=backend_obj, hub_dir=tmp_path / "hub")
    with job:
        written = job.out_dir / "daemon.txt"
        assert written.exists()  # the daemon did run inside the sandbox
        first = written.read_text()
        time.sleep(0.3)
        assert written.read_text() == first, "a sandbox process kept writing after the run"
    assert not marker.exists()


@pytest.fixture
def sentinel():
    """A host process with a secret in its environment and command line."""
    secret = "PROCSECRET-" + secrets.token_hex(16)
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", secret],
                            env={"PATH": "/usr/bin", "PROC_SECRET": secret})
    yield proc, secret
    proc.kill()
    proc.wait()


@pytest.mark.parametrize("backend", BACKENDS)
def test_kill_parent_and_kill_all_leave_the_host_alone(backend, sentinel, tmp_path, python_env, caplog):
    proc, _ = sentinel
    out = attack(backend, "kill_parent", tmp_path / "hub", python_env, caplog)
    assert out.error is None, out.error  # the run itself finished and reported
    assert proc.poll() is None, "kill(-1) inside the sandbox killed a host process"
    # The runner's parent (bwrap's init, or the reaper) survived too: it reported the result.
    assert b"kill(" in out.out_files["leak.txt"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_proc_scan_finds_no_host_environment(backend, sentinel, tmp_path, python_env, caplog, canaries):
    _, secret = sentinel
    out = attack(backend, "scan_proc", tmp_path / "hub", python_env, caplog)
    assert out.error is None, out.error
    out.assert_clean(secret, *canaries["values"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_inherited_descriptors_carry_nothing(backend, tmp_path, python_env, caplog):
    secret = "FDSECRET-" + secrets.token_hex(16)
    path = tmp_path / "open-secret"
    path.write_text(secret)
    fd = os.open(path, os.O_RDONLY)
    os.set_inheritable(fd, True)
    r, w = os.pipe()
    os.set_inheritable(r, True)
    os.write(w, secret.encode())
    try:
        out = attack(backend, "inherited_fds", tmp_path / "hub", python_env, caplog)
    finally:
        for d in (fd, r, w):
            os.close(d)
    assert out.error is None, out.error
    out.assert_clean(secret)
    assert str(path).encode() not in out.out_files["leak.txt"]



def test_control_the_process_backend_reaches_the_listeners(tmp_path, python_env, caplog):
    """Without OS isolation the same attack gets through: the listeners above do hear."""
    with listeners() as ears:
        attack("process", "connect", tmp_path / "hub", python_env, caplog,
               port=ears.tcp.getsockname()[1], abstract=ears.abstract, message=b"hello",
               udp_port=ears.udp.getsockname()[1], unix_path=ears.path)
        deadline = time.monotonic() + 10
        while len(ears.seen) < 4 and time.monotonic() < deadline:
            time.sleep(0.01)
    assert sorted(ears.seen) == ["path", "tcp", "udp", "unix"]


@pytest.mark.parametrize("entry", ["kill_parent", "connect", "scan_proc"])
def test_landlock_abi4_kernels_are_still_contained(entry, sentinel, tmp_path, python_env, caplog, canaries, monkeypatch):
    """Ubuntu 24.04's kernel has Landlock ABI 4: no signal or abstract-socket scoping.
    The pid namespace (as root) and the seccomp socket filter cover those."""
    from safehub._sandbox import LandlockBackend

    proc, secret = sentinel
    monkeypatch.setenv("SAFEHUB_LANDLOCK_ABI", "4")
    assert LandlockBackend().describe()["scoped_signals_and_abstract_sockets"] is False
    with listeners() as ears:
        kwargs = {}
        if entry == "connect":
            kwargs = dict(port=ears.tcp.getsockname()[1], abstract=ears.abstract, message=b"x",
                          udp_port=ears.udp.getsockname()[1], unix_path=ears.path)
        out = attack("landlock", entry, tmp_path / "hub", python_env, caplog, **kwargs)
    assert out.error is None, out.error
    assert out.sandbox is not None and out.sandbox.details["landlock_abi"] == 4
    assert ears.seen == [] and proc.poll() is None
    out.assert_clean(secret, *canaries["values"])


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_bomb_next_to_a_normal_job_leaves_it_alone(backend, tmp_path, python_env, caplog):
    """Two jobs at once: the fork bomb's limit and kill take only its own tree."""
    from concurrent.futures import ThreadPoolExecutor

    def normal():
        job = run_job(JobRequest(action="list", repo_dir=REPO, limits=Limits(**SMALL)),
                      python_env=python_env, backend=get_backend(backend), hub_dir=tmp_path / "hub-normal")
        with job:
            return [e["name"] for e in job.result["entrypoints"]]

    with ThreadPoolExecutor(2) as pool:
        bomb = pool.submit(attack, backend, "fork_bomb", tmp_path / "hub-bomb", python_env, caplog,
                           limits=Limits(**dict(SMALL, max_pids=32)))
        names = pool.submit(normal)
        assert "steal" in names.result()
        out = bomb.result()
    assert isinstance(out.error, SandboxLimitError) and out.error.limit == "pids", out.error
