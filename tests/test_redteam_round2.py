"""Red team, round 2: attacks on the seccomp filter, the torch-family-only view,
the JSON pre-scan, the result.json contract, fetch integrity and remove_tree.

Each attack is a test. A contained attack asserts containment; a fixed one
asserts the fix (the commit that fixed it is named in the test's docstring); an
open one is ``xfail(strict=True)`` with the reason. Sandbox probes run
``tests/fixtures/redteam2/probe.py`` (stdlib + ctypes) inside real bubblewrap and
real Landlock, with the environment a real repo load gets (``ensure_env``: the
env, the base interpreter prefix, the torch family folder and its targets).
"""

from __future__ import annotations

import json
import sys
import sysconfig
from pathlib import Path

import pytest

from safehub._env import ensure_env
from safehub._sandbox import Limits, SandboxRequest, get_backend

HERE = Path(__file__).resolve().parent
PROBE = HERE / "fixtures" / "redteam2" / "probe.py"
VENV_SITE = Path(sysconfig.get_paths()["purelib"]).resolve()
BASE_SITE = Path(sysconfig.get_paths(vars={"base": sys.base_prefix, "platbase": sys.base_prefix})["purelib"]).resolve()


def _host_key_serials() -> list[str]:
    try:
        with open("/proc/keys") as f:
            return [line.split()[0] for line in f if line.strip()]
    except OSError:
        return []


def _foreign_files() -> list[str]:
    """[0]: a file next to torch in the host venv, outside the family (PyYAML, a test
    dependency); [1]: a file in the base interpreter's own site-packages (top level
    or one folder down); [2]: one in a distro Python's dist-packages, if any."""
    venv_file = VENV_SITE / "yaml" / "__init__.py"
    assert venv_file.is_file(), "the host venv should have PyYAML (a test dependency)"
    out = [str(venv_file)]
    if BASE_SITE != VENV_SITE:
        out += [str(p) for p in sorted(BASE_SITE.glob("*.py")) + sorted(BASE_SITE.glob("*/__init__.py"))
                if p.is_file()][:1]
    dist = Path("/usr/lib/python3/dist-packages")
    out += [str(p) for p in sorted(dist.glob("*/__init__.py")) if p.is_file()][:1] if len(out) == 2 else []
    return out


def run_probe(backend: str, tmp_path: Path, env=None) -> dict[str, str]:
    """The probe inside ``backend``, with ``env`` (default: a real repo env)."""
    hub = tmp_path / "hub"
    env = env or ensure_env(["torch"], hub_dir=hub, verbose=False)
    job = tmp_path / "job"
    for sub in ("out", "home", "tmp"):
        (job / sub).mkdir(parents=True)
    args = {"host_key_serials": _host_key_serials(), "foreign_files": _foreign_files()}
    request = SandboxRequest(
        argv=[str(env.python), "-I", "-S", str(PROBE), json.dumps(args)],
        env={"PATH": "/usr/bin:/bin", "HOME": str(job / "home"), "TMPDIR": str(job / "tmp"), "LC_ALL": "C.UTF-8"},
        cwd=job / "tmp",
        ro_paths=(*env.ro_paths, PROBE.parent),
        rw_paths=(job / "out",),
        scratch_paths=(job / "home", job / "tmp"),
        limits=Limits(timeout_s=60.0, memory_bytes=1024**3, max_pids=16, tmpfs_bytes=32 * 1024**2),
        hidden_paths=env.hidden_paths,  # as run_job passes them
    )
    result = get_backend(backend).run(request)
    text = result.stdout.decode(errors="replace")
    assert result.returncode == 0 and "PROBE " in text, (result.returncode, text[-2000:], result.stderr[-2000:])
    return json.loads(text.split("PROBE ", 1)[1])


@pytest.fixture(scope="module", params=["bwrap", "landlock"])
def probed(request, tmp_path_factory):
    return request.param, run_probe(request.param, tmp_path_factory.mktemp("probe-" + request.param))


# --- seccomp -----------------------------------------------------------------------


@pytest.mark.slow
def test_socketpair_cannot_reach_other_socket_families(probed):
    """FIXED (seccomp: socketpair AF_UNIX only). socketpair(2) runs the family's
    create code (and module autoload) before it fails with EOPNOTSUPP: before the
    fix, socketpair(AF_VSOCK) answered EOPNOTSUPP and socketpair(AF_PACKET) EPERM
    from packet_create, under bwrap and under Landlock (where socket() is refused
    outright). Now the filter answers EAFNOSUPPORT before the kernel creates
    anything; AF_UNIX pairs still work."""
    _backend, out = probed
    assert out["socketpair_vsock"] == "EAFNOSUPPORT"
    assert out["socketpair_packet"] == "EAFNOSUPPORT"
    assert out["socketpair_inet"] == "EAFNOSUPPORT"
    assert out["socketpair_unix"] == "ok"


@pytest.mark.slow
def test_high_bits_and_other_entries_are_refused(probed):
    """CONTAINED. socket() with high bits over AF_NETLINK/AF_UNIX (the kernel
    truncates to int), clone(CLONE_NEWUSER) with a high bit set (the kernel
    truncates clone flags to 32 bits), AF_VSOCK, and open_by_handle_at (shocker)."""
    backend, out = probed
    refused = "EACCES" if backend == "landlock" else "EAFNOSUPPORT"
    assert out["socket_netlink_highbits"] == refused
    assert out["socket_unix_highbits"] == refused
    assert out["socket_vsock"] == refused
    assert out["clone_newuser_highbits"] == "EPERM"
    assert out["open_by_handle_at"] == "ENOSYS"


@pytest.mark.slow
def test_proc_keys_shows_no_host_key(probed):
    """CONTAINED. /proc/keys is global (filtered by key permissions, not by
    namespace): under bwrap the job runs as a fresh uid, so none of the host's keys
    (root's session/user keyrings) are listed; Landlock grants no /proc/keys."""
    backend, out = probed
    assert out["proc_keys"] == ("EACCES" if backend == "landlock" else "none")


# --- the torch-family-only view -------------------------------------------------------


@pytest.mark.slow
def test_a_venv_package_is_unreadable_directly_and_through_proc_root(probed):
    """CONTAINED. A file next to torch in the host venv (PyYAML), read by its path,
    through /proc/self/root and through /proc/1/root."""
    backend, out = probed
    assert out["read0"] == out["read0_proc_self_root"] == ("EACCES" if backend == "landlock" else "ENOENT")
    assert out["read0_proc_1_root"] == "EACCES"


@pytest.mark.slow
def test_the_base_interpreters_site_packages_are_unreadable(probed):
    """FIXED (round 3: PythonEnv.hidden_paths / SandboxRequest.hidden_paths). The base
    interpreter's prefix was bound whole (it holds the standard library), so every
    package in its own site-packages (pyenv's: boto3, awscli, ...) and a distro
    Python's dist-packages was readable by path. Now bwrap masks each with an empty
    read-only tmpfs and Landlock grants the prefix child by child without them."""
    backend, out = probed
    if "read1" not in out:
        pytest.fail("this host's base interpreter has no site-packages of its own to probe")
    for key in [k for k in out if k.startswith(("read1", "read2")) and "proc_1" not in k]:
        assert out[key] in ("EACCES", "ENOENT"), (key, out[key])


# --- the JSON pre-scan and the result.json contract (fast) ----------------------------


@pytest.mark.parametrize("doc", [b"[1e400]", b'{"eps": -1e999}', b'{"x": [0.5, 9' + b"9" * 400 + b'.0]}'])
def test_overflowing_numbers_are_not_infinity_by_another_spelling(doc):
    """FIXED (_json: parse_float refuses non-finite values). json.loads reads 1e400 as
    inf, so 'no NaN/Infinity' held only for the literal spellings; a spec could carry
    inf where the format only has its own {"float": "inf"} encoding."""
    from safehub._channel._json import load_json
    from safehub._errors import UnsafeSpecError

    with pytest.raises(UnsafeSpecError, match="not finite"):
        load_json(doc, "spec.json", cap_bytes=1 << 20)


def test_finite_floats_still_parse():
    from safehub._channel._json import load_json

    assert load_json(b"[1.7976931348623157e308, -2.5e-320, 3]", "spec.json", cap_bytes=1 << 20) == [
        1.7976931348623157e308, -2.5e-320, 3]


def test_summary_module_ids_are_ascii():
    """FIXED (_result.read_summary: ASCII digits only). str.isdigit() is true for
    superscripts and other scripts' digits ('m²', 'm٣'), ids the runner never writes
    and the spec reader refuses; they reached logs and safehub_info."""
    from safehub._channel._result import read_summary

    summary = {"summary": {"root": "module", "modules": {
        "m\u00b2": {"mode": "fx"}, "m\u0663": {"nodes": 1}, "m\uff11": {"nodes": 2}, "m0": {"mode": "aten"}}}}
    assert read_summary(summary)["modules"] == {"m0": {"mode": "aten"}}


# --- the download broker ----------------------------------------------------------------


def test_dns_rebinding_cannot_point_a_download_at_loopback(tmp_path, monkeypatch):
    """FIXED (_http: the download client connects only to an address it checked).
    The broker checked a URL's host by resolving it, then let urllib resolve it again
    to connect: a rebinding DNS server (public address first, 127.0.0.1 or the cloud
    metadata address next) made the host fetch from its own loopback services and
    hand the answer to the sandbox. The resolver is simulated (monkeypatched
    getaddrinfo: this machine has no DNS server of ours); the service is a real
    loopback HTTP server holding a secret."""
    import secrets
    import socket
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from safehub._errors import FetchError
    from safehub._fetch._downloads import prefetch_downloads

    secret = ("RT2-REBIND-" + secrets.token_hex(8)).encode()
    hits = []

    class Service(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server API
            hits.append(self.path)
            self.send_response(200)
            self.send_header("Content-Length", str(len(secret)))
            self.end_headers()
            self.wfile.write(secret)

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Service)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    real = socket.getaddrinfo
    answers = []

    def rebinding(host, *args, **kwargs):
        if host == "rebind.invalid":
            answers.append(host)
            return real("93.184.216.34" if len(answers) == 1 else "127.0.0.1", *args, **kwargs)
        return real(host, *args, **kwargs)

    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    url = f"http://rebind.invalid:{server.server_address[1]}/weights.pt"
    try:
        with pytest.raises(FetchError, match="non-public address 127.0.0.1"):
            prefetch_downloads([url], hub_dir=tmp_path / "hub", verbose=False,
                               env={"SAFEHUB_HTTP_TIMEOUT": "5"})
    finally:
        server.shutdown()
        server.server_close()
    assert hits == [], "the host fetched from its own loopback service"
    for path in tmp_path.rglob("*"):
        assert not path.is_file() or secret not in path.read_bytes()


# --- allowed kernels, hostile geometry ---------------------------------------------------


@pytest.mark.slow
def test_allowed_kernels_refuse_hostile_geometry_cleanly():
    """CONTAINED. Pads of +-2**62, shifts of INT64_MIN, groups and shuffle factors of
    2**31..2**62, NaN/negative/1e30 upsample scales, pool kernels/padding past int32,
    dilation 0, divisor_override 0, negative or huge output sizes, k past the size,
    dims of 2**40, decreasing/negative embedding_bag offsets, unpool indices past the
    output: each op resolved through the host's resolve_aten, run in a subprocess
    (a kernel trusting its arguments would kill it) under an 8 GiB address-space cap.
    Each must return or raise a Python exception."""
    import resource
    import subprocess

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))

    proc = subprocess.run([sys.executable, str(HERE / "fixtures" / "redteam2" / "kernel_args.py")],
                          capture_output=True, text=True, timeout=300, preexec_fn=cap, cwd=HERE.parent)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-3000:])
    results = json.loads(proc.stdout.split("KERNELS ", 1)[1])
    assert len(results) >= 45
    assert "DisallowedTargetError" not in results.values(), results  # every op really is on the allowlist
    assert set(results.values()) <= {"ok", "RuntimeError", "IndexError", "ValueError", "NotImplementedError"}, results


def test_a_forged_environment_report_cannot_advise_installing_a_package_on_the_host():
    """FIXED (_result: environment reports name only the runner's own imports).
    result.json is written by code the repo controls (hubconf can write it and
    os._exit(0)). An "environment" report naming 'torchvison' made the host say, in
    safehub's own voice, that safehub's sandbox code needs it and to run
    `python -m pip install torchvison` on the host: a typosquat installed by advice."""
    from safehub._channel._result import raise_for_runner_error
    from safehub._errors import RunnerEnvironmentError

    forged = {"protocol": 1, "status": "error", "error": {
        "category": "environment", "type": "ModuleNotFoundError", "message": "No module named 'torchvison'",
        "traceback": "", "module": "torchvison"}}
    with pytest.raises(RunnerEnvironmentError) as info:
        raise_for_runner_error(forged, entrypoint="net", repo="evil/repo")
    err = info.value
    assert "pip install" not in err.hint and "pip install" not in str(err)
    assert err.module is None and "do not install" in err.hint
    genuine = {**forged, "error": {**forged["error"], "module": "numpy.core", "message": "No module named 'numpy'"}}
    with pytest.raises(RunnerEnvironmentError) as info:
        raise_for_runner_error(genuine, entrypoint="net", repo="evil/repo")
    assert "pip install numpy" in info.value.hint


@pytest.mark.slow
def test_the_job_cannot_raise_its_own_rlimits(probed):
    """CONTAINED. Every rlimit the backend sets has soft == hard, so the job cannot
    raise it back (setrlimit up to the hard limit needs no privilege)."""
    backend, out = probed
    assert not [k for k in out if k.startswith("raise_")], out
    for name in ("RLIMIT_AS", "RLIMIT_FSIZE", "RLIMIT_CORE"):
        soft, hard = out["limit_" + name].split("/")
        assert soft == hard and soft != "-1", (name, out["limit_" + name])
    assert out["limit_RLIMIT_CORE"] == "0/0"
    if backend == "bwrap":  # the job's own uid: NPROC counts (as root under Landlock a pids cgroup does)
        assert out["limit_RLIMIT_NPROC"] == "16/16"


def test_raw_grid_sampler_with_an_unknown_mode_is_refused():
    """FIXED (_allowlist: raw grid_sampler kernels refused). torch.grid_sampler /
    grid_sampler_2d / grid_sampler_3d were on the fx function allowlist and take the
    interpolation and padding modes as raw ints: an unknown padding mode (9) matches no
    case of the CPU kernel and the output comes back uninitialised, i.e. host heap
    memory (pointer-like values were seen) in the model's outputs. F.grid_sample, which
    checks the mode names, stays allowed."""
    from safehub._channel._allowlist import function_allowlist, kernel_refusal

    table = function_allowlist()
    for name in ("torch.grid_sampler", "torch.grid_sampler_2d", "torch.grid_sampler_3d"):
        assert name not in table, name
        assert kernel_refusal(name.rsplit(".", 1)[1])
    assert "torch.nn.functional.grid_sample" in table
    import torch

    with pytest.raises(ValueError):  # the allowed path refuses a mode it does not know
        table["torch.nn.functional.grid_sample"](torch.zeros(1, 1, 4, 4), torch.zeros(1, 2, 2, 2), padding_mode="x")


@pytest.mark.slow
def test_control_the_raw_grid_sampler_does_return_uninitialised_memory():
    """The control for the test above: the raw kernel with padding mode 9 returns an
    uninitialised tensor (so refusing it matters). Two calls over different garbage
    must not both be exact copies of a zero/constant fill; checked in a subprocess."""
    import subprocess

    code = ("import torch, sys\n"
            "x = torch.full((1, 1, 64, 64), 7.0); g = torch.zeros(1, 32, 32, 2)\n"
            "outs = [torch.grid_sampler_2d(x, g, m, 9, False) for m in (0, 1)]\n"
            "ok = [o for o in outs if torch.all(o == 7.0) or torch.all(o == 0.0)]\n"
            "print('UNINIT' if len(ok) < len(outs) else 'DEFINED')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "UNINIT" in proc.stdout


@pytest.mark.slow
def test_raw_loss_functions_with_unknown_reduction_ints_stay_defined():
    """CONTAINED. The other allowed torch functions that take a mode as a raw int
    (losses' ``reduction``): an unknown value (3, 7, -1, 2**40) returns the unreduced
    loss, i.e. exactly reduction=0's output: defined values, never uninitialised memory."""
    import subprocess

    code = r'''
import torch
torch.manual_seed(0)
a, b = torch.randn(64), torch.rand(64)
x, y, z = torch.randn(8, 4), torch.randn(8, 4), torch.randn(8, 4)
fns = {
    "bce": lambda r: torch.binary_cross_entropy_with_logits(a, b, None, None, r),
    "hinge": lambda r: torch.hinge_embedding_loss(a, torch.ones(64), 1.0, r),
    "kl": lambda r: torch.kl_div(a, b, r),
    "mrl": lambda r: torch.margin_ranking_loss(a, b, torch.ones(64), 0.0, r),
    "pnll": lambda r: torch.poisson_nll_loss(a, b, True, False, 1e-8, r),
    "cos": lambda r: torch.cosine_embedding_loss(x, y, torch.ones(8), 0.0, r),
    "trip": lambda r: torch.triplet_margin_loss(x, y, z, 1.0, 2.0, 1e-6, False, r),
}
bad = [n for n, fn in fns.items() for r in (3, 7, -1, 1 << 40) if not torch.equal(fn(r), fn(0))]
print("BAD", bad)
'''
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "BAD []" in proc.stdout, proc.stdout


@pytest.mark.slow
def test_allowed_factories_do_not_hand_out_stale_host_memory():
    """FIXED (was open): the host's own resolved ``torch.empty*`` and ``aten.empty`` (what a rebuilt graph calls), in a
    subprocess: allocate and free a tensor full of a marker value, then call it for
    the same size, 200 times; no result may hold the marker."""
    import subprocess

    code = r'''
import torch
from safehub._channel._allowlist import function_allowlist, method_allowlist, resolve_aten
fns = function_allowlist()
like = torch.zeros(4096)
makers = {
    "torch.empty": lambda: fns["torch.empty"](4096),
    "torch.empty_like": lambda: fns["torch.empty_like"](like),
    "torch.empty_strided": lambda: fns["torch.empty_strided"]((4096,), (1,)),
    "aten.empty.memory_format": lambda: resolve_aten("aten.empty.memory_format", "test")([4096]),
}
hits = {}
for name, make in makers.items():
    n = 0
    for _ in range(200):
        s = torch.full((4096,), 7.25)
        del s
        n += int((make() == 7.25).sum() > 100)
    hits[name] = n
print("STALE", sum(hits.values()), hits)
print("METHODS", sorted(m for m in ("new_empty", "new_empty_strided") if m in method_allowlist()))
'''
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          cwd=HERE.parent)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "STALE 0 " in proc.stdout, proc.stdout
    assert "METHODS []" in proc.stdout, proc.stdout


@pytest.mark.parametrize("unit", [b"1.5,", b"1.7976931348623157e308,", b"12345678901234567890123,", b"true,",
                                  '"\u00e9",'.encode(), b'"",', b"[[[[]]]],", b'{"a":{}},', b'{"abcdefgh":1},'])
def test_the_densest_json_the_prescan_accepts_stays_within_its_memory_budget(unit):
    """CONTAINED. For each token shape, the largest count the pre-scan accepts at a
    256 KiB cap (padded with spaces to the cap), then parsed under tracemalloc: peak
    memory stays under MEMORY_FACTOR x the cap (measured 1.1-2.1x)."""
    import tracemalloc

    from safehub._channel._json import MEMORY_FACTOR, load_json, prescan
    from safehub._errors import SafehubError

    cap = 256 << 10

    def doc(n: int) -> bytes:
        body = b"[" + unit * n + b"0]"
        return body + b" " * (cap - len(body))

    lo, hi = 0, cap // len(unit) - 2
    while lo < hi:
        mid = (lo + hi + 1) // 2
        try:
            prescan(doc(mid), "x", cap_bytes=cap)
            lo = mid
        except SafehubError:
            hi = mid - 1
    assert lo > 100
    raw = doc(lo)
    tracemalloc.start()
    try:
        load_json(raw, "x", cap_bytes=cap)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < MEMORY_FACTOR * cap, (peak / cap)


@pytest.mark.parametrize("ip", ["100.100.100.200", "100.64.0.1", "2002:7f00:1::", "2002:a9fe:a9fe::1",
                                "::ffff:169.254.169.254", "64:ff9b::a9fe:a9fe", "127.0.0.1", "169.254.169.254"])
def test_downloads_refuse_shared_and_embedded_non_public_addresses(ip):
    """FIXED (_downloads: non-public means not is_global, embedded IPv4 included).
    The broker refused private, loopback, link-local, multicast, reserved and
    unspecified addresses, but not the shared address space 100.64.0.0/10 (carrier
    NAT, Tailscale nodes, Alibaba Cloud's metadata service 100.100.100.200), nor 6to4
    addresses wrapping 127.0.0.1 or 169.254.169.254."""
    from safehub._errors import FetchError
    from safehub._fetch._downloads import _check_address

    with pytest.raises(FetchError, match="non-public address"):
        _check_address("repo-chosen.example", 80, ip, set())


def test_downloads_still_accept_public_addresses():
    from safehub._fetch._downloads import _check_address

    for ip in ("93.184.216.34", "2606:2800:220:1:248:1893:25c8:1946", "140.82.112.3"):
        _check_address("example.org", 443, ip, set())


@pytest.mark.parametrize("path", ["%2e%2e/%2e%2e/%2e%2e/victim/private/archive/main.zip", ".%2e/.%2E/x",
                                  "%2E%2E/x", "v1%5c..%5c..%5cother/x", "v1/%252e%252e/x"])
def test_the_token_is_not_lent_to_percent_encoded_traversals(path):
    """FIXED (_downloads._token_scope judges the decoded path). The GitHub token is
    lent only to the loaded repo's release assets, checked as 'path starts with
    /owner/repo/releases/download/ and has no ..'; '%2e%2e' passed that check, and
    servers decode it to '..', so a repo could have the host send the user's token
    to /owner/repo/releases/download/%2e%2e/%2e%2e/%2e%2e/victim/private/... ."""
    from safehub._fetch._downloads import _token_scope
    from safehub._fetch._github import github_host

    host = github_host({})
    lend = _token_scope(host, ("owner", "repo"))
    assert lend(f"{host.web}/owner/repo/releases/download/v1/weights.pt")
    assert not lend(f"{host.web}/owner/repo/releases/download/{path}")


def test_a_rebuilt_graph_calling_empty_gets_zeros(tmp_path):
    """FIXED: an fx graph that returns ``torch.empty_like(x)`` / ``torch.empty(n)`` passes the
    generated-code check and runs the zero-filling factories, so its output holds no host memory."""
    import specgen
    import torch

    from safehub._channel import rebuild_from_output

    class Leaky(torch.nn.Module):
        def forward(self, x):
            return x + torch.empty_like(x) + torch.empty(x.shape[-1])

    spec, weights = specgen.full_spec(Leaky())
    rebuilt = rebuild_from_output(specgen.write(tmp_path / "out", spec, weights))
    x = torch.randn(3, 4096)
    for _ in range(20):
        s = torch.full((3, 4096), 7.25)
        del s
        assert torch.equal(rebuilt(x), x)
