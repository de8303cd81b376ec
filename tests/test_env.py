"""safehub._env: dependency resolution (pure) and real per-repo venvs (uv, virtualenv).

The slow tests build real environments with real installers against PyPI and
local wheels the tests write themselves (a wheel is a zip with three metadata
files; building one here keeps the "incompatible torch" case honest and offline).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata as md
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from safehub._env import (
    ensure_env,
    env_key,
    host_env,
    host_info,
    key_inputs,
    list_envs,
    prune_envs,
    remove_env,
    resolve_dependencies,
)
from conftest import make_wheel
from safehub._env._build import MARKER, PTH_NAME, _redacted
from safehub._env._host import check_host_requirements, check_installed_requirements
from safehub._env._resolve import TORCH_FAMILY
from safehub._errors import EnvironmentBuildError, MissingHostPackageError, OfflineError

REPO = Path(__file__).resolve().parents[1]
HOST_TORCH = md.version("torch")


# --- helpers -------------------------------------------------------------------


def run_in(env, code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(env.python), "-I", "-c", code], capture_output=True, text=True, timeout=120)


def origin_of(env, modules: list[str]) -> dict[str, str]:
    code = "import importlib, json; print(json.dumps({m: importlib.import_module(m).__file__ for m in %r}))" % modules
    proc = run_in(env, code)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def missing_family_member() -> str:
    """A torch-family package this host lacks (CI has at most torch+torchvision)."""
    packages = host_info().packages
    for name in ("torchvision", "torcharrow", "torchrec", "torchcsprng"):
        if name not in packages:
            return name
    raise AssertionError(f"this host has every torch-family package ({packages}); cannot test the missing case")


def leftovers(hub: Path) -> list[str]:
    return sorted(p.name for p in (hub / "envs").iterdir() if p.name.startswith(".tmp-"))


# --- resolution (pure, fast) ------------------------------------------------


@pytest.mark.parametrize(
    "entry, dist",
    [
        ("yaml", "PyYAML"),
        ("PIL", "pillow"),
        ("PIL.Image", "pillow"),
        ("cv2", "opencv-python-headless"),
        ("sklearn", "scikit-learn"),
        ("skimage", "scikit-image"),
        ("hydra", "hydra-core"),
        ("omegaconf", "omegaconf"),
        ("einops", "einops"),
        ("timm", "timm"),
        ("scipy", "scipy"),
        ("huggingface_hub", "huggingface-hub"),
        ("google.protobuf", "protobuf"),
        ("google.protobuf.text_format", "protobuf"),
        ("attr", "attrs"),
        ("Crypto.Cipher", "pycryptodome"),
        ("dateutil", "python-dateutil"),
        ("bs4", "beautifulsoup4"),
        ("fvcore", "fvcore"),
        ("scikit-learn", "scikit-learn"),
    ],
)
def test_import_names_map_to_distributions(entry, dist):
    res = resolve_dependencies([entry])
    assert [r.distribution for r in res.install] == [dist]
    assert res.host == () and res.skipped == ()


def test_stdlib_names_are_skipped():
    res = resolve_dependencies(["math", "dataclasses", "os.path", "json", "yaml"])
    assert res.skipped == ("dataclasses", "json", "math", "os")
    assert res.install_lines == ("PyYAML",)


def test_specifiers_are_kept_and_merged():
    res = resolve_dependencies(["numpy>=1.20", "numpy <3", " scipy ", "PIL.Image==10.*", "PIL"])
    assert res.install_lines == ("numpy<3,>=1.20", "pillow==10.*", "scipy")


def test_torch_family_goes_to_the_host_not_the_installer():
    res = resolve_dependencies(["torch>=2.0", "torchvision.models", "torchaudio", "yaml"])
    assert [str(r) for r in res.host] == ["torch>=2.0", "torchaudio", "torchvision"]
    assert res.install_lines == ("PyYAML",)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "   ",
        "yaml; os_name == 'nt'",
        "evil @ https://example.com/evil.whl",
        "https://example.com/evil.whl",
        "../../etc/passwd",
        "-r /etc/passwd",
        "--index-url=http://evil.example",
        "numpy>=1.0\n--extra-index-url http://evil.example",
        "timm[extra]",
        "two words",
        "numpy>=>1",
        "numpy>=1.0 # comment",
        "\x1b[31mred",
        "a" * 300,
        "1numpy",
        "numpy=1.0",
        "_",
        "_private",
        "trailing_",
    ],
)
def test_malformed_entries_are_refused(bad):
    with pytest.raises(EnvironmentBuildError) as info:
        resolve_dependencies([bad])
    assert "\x1b" not in str(info.value) and "\n--extra" not in str(info.value)


_SAFE_LINE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(?:(?:===|==|!=|~=|<=|>=|<|>)[A-Za-z0-9.*+!]+)?(?:,(?:===|==|!=|~=|<=|>=|<|>)[A-Za-z0-9.*+!]+)*$")


@settings(max_examples=200, deadline=None)
@given(st.one_of(
    st.text(max_size=60),
    st.from_regex(r"[A-Za-z_][A-Za-z0-9_.-]{0,20}\s*[<>=!~]{1,3}[ -~\n]{0,20}", fullmatch=True),
))
def test_whatever_the_entry_only_a_plain_requirement_line_comes_out(entry):
    # The lines go into a requirements file: a newline or option smuggled through
    # (--index-url, -r, a URL) would redirect the installer.
    try:
        res = resolve_dependencies([entry])
    except EnvironmentBuildError:
        return
    for line in res.install_lines + res.host_lines:
        assert _SAFE_LINE.match(line), line


@pytest.mark.parametrize("bad", [5, None, b"yaml", ["yaml"]])
def test_non_string_entries_are_refused(bad):
    with pytest.raises(EnvironmentBuildError, match="not a string"):
        resolve_dependencies([bad])


def test_no_dependencies_variable_means_nothing_to_install():
    assert resolve_dependencies(None) == resolve_dependencies([]) == resolve_dependencies(())
    assert resolve_dependencies(None).install == ()


def test_a_bare_string_is_not_a_list():
    with pytest.raises(EnvironmentBuildError, match="list of strings"):
        resolve_dependencies("yaml")


def test_host_requirements_are_checked_against_host_versions():
    host = {"torch": "2.13.0+cpu"}
    check_host_requirements(resolve_dependencies(["torch>=2.0", "torch.nn"]), host)
    with pytest.raises(MissingHostPackageError, match=r"torch>=99.*host has torch 2.13.0\+cpu"):
        check_host_requirements(resolve_dependencies(["torch>=99"]), host)
    with pytest.raises(MissingHostPackageError, match="needs torchvision.*does not have it") as info:
        check_host_requirements(resolve_dependencies(["torchvision"]), host)
    assert "pip install" in str(info.value)


def _fake_site(tmp_path: Path, name: str, requires: list[str]) -> Path:
    site = tmp_path / "site"
    info = site / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(
        f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n" + "".join(f"Requires-Dist: {r}\n" for r in requires)
    )
    return site


@pytest.mark.parametrize(
    "requires, problem",
    [
        (["torch<2.0"], r"probe 1.0 requires torch<2.0, but the host has torch 2.13.0"),
        (["torch==1.13.1; python_version >= '3'"], r"requires torch==1.13.1"),
        (["torchvision>=0.15"], r"requires torchvision>=0.15, but the host Python does not have torchvision"),
        (["torch>=2.0", "numpy"], None),
        (['torch<2.0; extra == "old"'], None),  # only with an extra nobody asked for
        (["torch<2.0; python_version < '3'"], None),
    ],
)
def test_installed_metadata_is_checked_against_the_host(tmp_path, requires, problem):
    site = _fake_site(tmp_path, "probe", requires)
    host = {"torch": "2.13.0+cpu"}
    if problem is None:
        check_installed_requirements(site, host)
    else:
        with pytest.raises(MissingHostPackageError, match=problem):
            check_installed_requirements(site, host)


def test_a_torch_family_package_inside_the_env_is_refused(tmp_path):
    site = _fake_site(tmp_path, "torchvision", [])
    with pytest.raises(MissingHostPackageError, match="pulled torchvision"):
        check_installed_requirements(site, {"torch": "2.13.0"})


# --- the cache key ----------------------------------------------------------


def test_cache_key_is_stable_and_tracks_every_input():
    host = host_info()
    res = resolve_dependencies(["yaml", "numpy>=1.20"])
    base = env_key(key_inputs(res, host, "uv", {}))
    assert base == env_key(key_inputs(resolve_dependencies(["numpy>=1.20", "yaml"]), host_info(), "uv", {}))
    assert len(base) == 64
    variants = [
        key_inputs(resolve_dependencies(["yaml"]), host, "uv", {}),
        key_inputs(resolve_dependencies(["yaml", "numpy>=1.21"]), host, "uv", {}),
        key_inputs(res, host, "virtualenv", {}),
        key_inputs(res, dataclasses.replace(host, packages={**host.packages, "torch": "2.4.0"}), "uv", {}),
        key_inputs(res, dataclasses.replace(host, python_version="3.12.1"), "uv", {}),
        key_inputs(res, dataclasses.replace(host, base_python=Path("/usr/bin/python3.11")), "uv", {}),
        key_inputs(res, dataclasses.replace(host, platform="linux-aarch64-glibc-2.36"), "uv", {}),
        key_inputs(res, host, "uv", {"UV_INDEX_URL": "https://mirror.example/simple"}),
    ]
    keys = {env_key(v) for v in variants}
    assert len(keys) == len(variants) and base not in keys
    # Settings that do not change what gets installed do not split the cache.
    assert base == env_key(key_inputs(res, host, "uv", {"HTTPS_PROXY": "http://proxy:1", "SAFEHUB_OFFLINE": "1"}))


def test_index_credentials_stay_out_of_the_marker():
    env = {"UV_INDEX_URL": "https://alice:s3cret-token@pypi.internal.example/simple"}
    inputs = key_inputs(resolve_dependencies(["yaml"]), host_info(), "uv", env)
    shown = json.dumps(_redacted(inputs))
    assert "s3cret-token" not in shown and "alice" not in shown and "pypi.internal.example" in shown
    # ...but they still split the cache (a different index can serve different files).
    other = key_inputs(resolve_dependencies(["yaml"]), host_info(), "uv", {"UV_INDEX_URL": "https://bob:x@pypi.internal.example/simple"})
    assert env_key(inputs) != env_key(other)


def test_host_inspection_never_imports_torch(tmp_path):
    code = (
        "import sys; sys.path.insert(0, %r)\n"
        "import safehub._env as e\n"
        "e.host_info(); e.host_env(); e.resolve_dependencies(['torch>=2', 'torchvision'])\n"
        "e.ensure_env(['torch'], hub_dir=%r, verbose=False)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    ) % (str(REPO), str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_host_env_is_the_host_interpreter():
    env = host_env()
    # The base interpreter in a bare venv of its own, not the host venv (whose
    # site-packages holds everything the user installed).
    assert os.path.realpath(env.python) == os.path.realpath(sys._base_executable) and env.backend == "host"
    assert Path(sys.prefix).resolve() not in env.ro_paths
    real_prefix = Path(os.path.realpath(sys.base_prefix))
    assert any(p == real_prefix or p in real_prefix.parents for p in env.ro_paths)
    site = Path(os.path.realpath(md.distribution("torch").locate_file("")))
    assert site / "torch" in env.ro_paths and site not in env.ro_paths  # torch, not its neighbours
    assert all(p == Path(os.path.realpath(p)) for p in env.ro_paths)


def test_missing_host_package_fails_before_building(tmp_path):
    name = missing_family_member()
    with pytest.raises(MissingHostPackageError, match=f"needs {name}"):
        ensure_env([name, "yaml"], hub_dir=tmp_path)
    assert not (tmp_path / "envs").exists()


def test_without_uv_the_virtualenv_backend_is_chosen(monkeypatch):
    # Simulated absence (this machine has uv): the uv wheel unimportable, no uv on PATH.
    from safehub._env._installers import choose_backend

    assert choose_backend(None, os.environ)[0] == "uv"
    monkeypatch.setitem(sys.modules, "uv", None)
    assert choose_backend(None, {"PATH": "/nonexistent"}) == ("virtualenv", None)
    with pytest.raises(EnvironmentBuildError, match="uv was requested but is not installed"):
        choose_backend("uv", {"PATH": "/nonexistent"})


def test_unknown_backend_is_refused(tmp_path):
    with pytest.raises(EnvironmentBuildError, match="unknown environment backend"):
        ensure_env(["yaml"], hub_dir=tmp_path, backend="conda")
    with pytest.raises(EnvironmentBuildError, match="unknown environment backend"):
        ensure_env(["yaml"], hub_dir=tmp_path, env={**os.environ, "SAFEHUB_ENV_BACKEND": "pip"})


# --- real environments ------------------------------------------------------


@pytest.mark.slow
def test_uv_env_has_its_packages_and_the_host_torch(tmp_path):
    env = ensure_env(["yaml", "math", "torch>=2.0"], hub_dir=tmp_path, verbose=False)
    assert env.backend == "uv" and env.root.parent == tmp_path.resolve() / "envs"
    assert env.root.name == env.key[:16]
    assert any(d.startswith("PyYAML==") for d in env.distributions)
    where = origin_of(env, ["yaml", "torch"])
    assert Path(where["yaml"]).is_relative_to(env.root)  # the env's own copy wins over the host's
    site = Path(os.path.realpath(md.distribution("torch").locate_file("")))
    family = tmp_path.resolve() / "host"
    assert Path(where["torch"]).is_relative_to(family)  # through the family folder's link
    assert Path(os.path.realpath(where["torch"])).is_relative_to(site / "torch")
    proc = run_in(env, "import torch; print(torch.__version__)")
    assert proc.stdout.strip() == HOST_TORCH
    # Everything the interpreter reads is listed, as real paths: torch's own folder, never all of site-packages.
    assert env.root in env.ro_paths
    assert site / "torch" in env.ro_paths and site not in env.ro_paths
    assert all(p == Path(os.path.realpath(p)) for p in env.ro_paths)
    # Bytecode was compiled at install time and names the final path, not the temp one.
    pycs = list(env.root.glob("lib/python*/site-packages/yaml/__pycache__/__init__.*.pyc"))
    assert pycs and env.root.as_posix().encode() in pycs[0].read_bytes()
    assert b".tmp-" not in pycs[0].read_bytes()
    # The host share is named only by the .pth, after the env's own folder.
    pth = next(env.root.glob(f"lib/python*/site-packages/{PTH_NAME}")).read_text().split()
    assert len(pth) == 1 and Path(pth[0]).parent == family
    # Warm: the same env, not rebuilt.
    created = json.loads((env.root / MARKER).read_text())["created"]
    again = ensure_env(["math", "yaml", "torch"], hub_dir=tmp_path, verbose=False)
    assert again == env
    assert json.loads((env.root / MARKER).read_text())["created"] == created
    assert leftovers(tmp_path) == []


@pytest.mark.slow
def test_empty_dependencies_still_share_torch(tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="safehub")
    quiet = {**os.environ, "SAFEHUB_DISABLE_PROGRESS_BARS": "1"}
    env = ensure_env([], hub_dir=tmp_path, env=quiet)  # verbose, but progress switched off
    assert env.distributions == ()
    assert [r for r in caplog.records if r.levelno >= logging.INFO] == []
    assert any("building environment" in r.getMessage() for r in caplog.records)  # still at DEBUG
    caplog.clear()
    remove_env(tmp_path, env.root.name)
    loud = {**os.environ, "SAFEHUB_DISABLE_PROGRESS_BARS": "0"}
    env = ensure_env([], hub_dir=tmp_path, verbose=True, env=loud)
    assert any(r.levelno == logging.INFO and "building environment" in r.getMessage() for r in caplog.records)
    proc = run_in(env, "import torch, sys; print(torch.__version__)")
    assert proc.returncode == 0 and proc.stdout.strip() == HOST_TORCH, proc.stderr


def _bwrap_argv(python_env, code: str) -> list[str]:
    """Only system libraries plus the env's ro_paths: proves the list is complete."""
    import shutil

    bwrap = shutil.which("bwrap")
    assert bwrap, "bubblewrap is required for this test (apt-get install bubblewrap)"
    argv = [bwrap, "--unshare-all", "--die-with-parent", "--ro-bind", "/usr", "/usr", "--proc", "/proc",
            "--dev", "/dev", "--tmpfs", "/tmp", "--tmpfs", "/root", "--clearenv"]
    for name in ("lib", "lib64", "lib32", "bin", "sbin"):
        path = Path("/") / name
        if path.is_symlink():
            argv += ["--symlink", os.readlink(path), str(path)]
        elif path.is_dir():
            argv += ["--ro-bind", str(path), str(path)]
    for path in python_env.ro_paths:
        argv += ["--ro-bind", str(path), str(path)]
    return argv + [str(python_env.python), "-I", "-B", "-c", code]


@pytest.mark.slow
def test_ro_paths_are_all_the_interpreter_needs(tmp_path):
    code = "import sys, torch, yaml; print(yaml.__file__); print(float(torch.ones(3).sum()))"
    env = ensure_env(["yaml"], hub_dir=tmp_path / "hub", verbose=False)
    proc = subprocess.run(_bwrap_argv(env, code), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    where, total = proc.stdout.split()
    assert Path(where).is_relative_to(env.root) and total == "3.0"
    proc = subprocess.run(_bwrap_argv(host_env(), "import torch; print(float(torch.ones(2).sum()))"),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip() == "2.0", proc.stderr[-3000:]


_CHILD = """
import json, logging, sys
sys.path.insert(0, {repo!r})
records = []
class H(logging.Handler):
    def emit(self, r): records.append(r.getMessage())
logging.getLogger("safehub").addHandler(H()); logging.getLogger("safehub").setLevel(logging.DEBUG)
from safehub._env import ensure_env
env = ensure_env({deps!r}, hub_dir={hub!r})
print(json.dumps({{"root": str(env.root), "built": sum("building environment" in m for m in records)}}))
"""


@pytest.mark.slow
def test_concurrent_builds_make_one_env(tmp_path):
    code = _CHILD.format(repo=str(REPO), deps=["six"], hub=str(tmp_path))
    procs = [
        subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    results = [json.loads(o[0].strip().splitlines()[-1]) for o in outs]
    assert len({r["root"] for r in results}) == 1
    assert sum(r["built"] for r in results) == 1
    assert [p.name for p in (tmp_path / "envs").iterdir()] == [Path(results[0]["root"]).name]


@pytest.mark.slow
def test_concurrent_threads_make_one_env(tmp_path):
    results: list = []
    errors: list = []

    def load() -> None:
        try:
            results.append(ensure_env(["six"], hub_dir=tmp_path, verbose=False))
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(results) == 4
    assert len({e.root for e in results}) == 1
    assert [p.name for p in (tmp_path / "envs").iterdir()] == [results[0].root.name]


@pytest.mark.slow
def test_killed_build_leaves_nothing_that_breaks_the_next(tmp_path):
    # A proxy that accepts connections and never answers: the installer hangs
    # mid-build (with an empty uv cache it must reach the index) and we kill it.
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(16)
    accepted = threading.Event()
    conns = []

    def accept() -> None:
        try:
            while True:
                conns.append(hole.accept()[0])
                accepted.set()
        except OSError:
            pass

    threading.Thread(target=accept, daemon=True).start()
    proxy = f"http://127.0.0.1:{hole.getsockname()[1]}"
    child_env = {**os.environ, "UV_CACHE_DIR": str(tmp_path / "empty-cache"), "HTTPS_PROXY": proxy,
                 "HTTP_PROXY": proxy, "ALL_PROXY": proxy, "NO_PROXY": "", "no_proxy": ""}
    hub = tmp_path / "hub"
    code = _CHILD.format(repo=str(REPO), deps=["six"], hub=str(hub))
    child = subprocess.Popen([sys.executable, "-c", code], env=child_env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not (accepted.is_set() and (hub / "envs").is_dir() and leftovers(hub)):
            assert child.poll() is None, "the build ended before it could be interrupted"
            assert time.monotonic() < deadline, "the build never reached the network"
            time.sleep(0.05)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert leftovers(hub)  # the crash left its temp folder
    try:
        env = ensure_env(["six"], hub_dir=hub, verbose=False)
    finally:
        hole.close()
        for c in conns:
            c.close()
    assert leftovers(hub) == []
    assert Path(origin_of(env, ["six"])["six"]).is_relative_to(env.root)


@pytest.mark.slow
def test_virtualenv_fallback_builds_a_working_env(tmp_path):
    env = ensure_env(["toml"], hub_dir=tmp_path, verbose=False, backend="virtualenv")
    assert env.backend == "virtualenv"
    where = origin_of(env, ["toml", "torch"])
    assert Path(where["toml"]).is_relative_to(env.root)
    site = Path(os.path.realpath(md.distribution("torch").locate_file("")))
    assert Path(os.path.realpath(where["torch"])).is_relative_to(site / "torch")
    # Selected through the environment switch too, and it is a different env from uv's.
    same = ensure_env(["toml"], hub_dir=tmp_path, verbose=False, env={**os.environ, "SAFEHUB_ENV_BACKEND": "virtualenv"})
    assert same == env
    other = ensure_env(["toml"], hub_dir=tmp_path, verbose=False, backend="uv")
    assert other.key != env.key and other.backend == "uv"


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["uv", "virtualenv"])
def test_dependency_wanting_another_torch_is_refused(tmp_path, backend):
    links = tmp_path / "wheels"
    make_wheel(links, "safehub-test-oldtorch-probe", "0.1", {"safehub_test_oldtorch_probe.py": "X = 1\n"},
               requires=["torch<2.0"])
    make_wheel(links, "safehub-test-newtorch-probe", "0.1", {"safehub_test_newtorch_probe.py": "X = 2\n"},
               requires=[f"torch>={HOST_TORCH.split('+')[0]}"])
    env = {**os.environ, "UV_FIND_LINKS": str(links), "PIP_FIND_LINKS": str(links)}
    hub = tmp_path / "hub"
    with pytest.raises(MissingHostPackageError, match=r"torch") as info:
        ensure_env(["safehub_test_oldtorch_probe"], hub_dir=hub, env=env, backend=backend, verbose=False)
    # uv: our METADATA check names the culprit; pip: its resolver conflict, read back.
    assert "safehub-test-oldtorch-probe 0.1 requires torch<2.0" in str(info.value)
    assert [p.name for p in (hub / "envs").iterdir()] == []
    ok = ensure_env(["safehub_test_newtorch_probe"], hub_dir=hub, env=env, backend=backend, verbose=False)
    assert run_in(ok, "import safehub_test_newtorch_probe, torch").returncode == 0


@pytest.mark.slow
def test_a_wheel_pth_file_does_not_run_on_the_host(tmp_path):
    # uv --compile-bytecode would start the env's Python with site enabled and run
    # this line on the host; safehub compiles with -I -S instead.
    links = tmp_path / "wheels"
    flag = tmp_path / "ran-on-host"
    make_wheel(links, "safehub-test-pth-probe", "0.1", {
        "safehub_test_pth_probe.py": "X = 1\n",
        "safehub_test_pth_probe.pth": f"import pathlib; pathlib.Path({str(flag)!r}).write_text('x')\n",
    })
    env = ensure_env(["safehub_test_pth_probe"], hub_dir=tmp_path / "hub", verbose=False,
                     env={**os.environ, "UV_FIND_LINKS": str(links), "UV_COMPILE_BYTECODE": "1"})
    assert not flag.exists()
    assert list(env.root.glob("lib/python*/site-packages/__pycache__/safehub_test_pth_probe.*.pyc"))
    # The flag file appears as soon as the env's interpreter itself starts (that is
    # what the sandbox is for), which proves the probe was armed.
    run_in(env, "pass")
    assert flag.exists()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["uv", "virtualenv"])
def test_a_wheel_that_overwrites_the_interpreter_is_refused(tmp_path, backend):
    # Wheel .data/data files land in the env's root; uv and pip both let them
    # replace pyvenv.cfg and bin/python.
    links = tmp_path / "wheels"
    make_wheel(links, "safehub-test-hijack-probe", "0.1", {
        "safehub_test_hijack_probe.py": "X = 1\n",
        "safehub_test_hijack_probe-0.1.data/data/pyvenv.cfg": "home = /nonexistent\n",
    })
    env = {**os.environ, "UV_FIND_LINKS": str(links), "PIP_FIND_LINKS": str(links)}
    hub = tmp_path / "hub"
    with pytest.raises(EnvironmentBuildError, match=r"replaced the environment's interpreter files \(pyvenv.cfg\)"):
        ensure_env(["safehub_test_hijack_probe"], hub_dir=hub, env=env, backend=backend, verbose=False)
    assert [p.name for p in (hub / "envs").iterdir()] == []


@pytest.mark.slow
def test_list_remove_and_prune(tmp_path):
    env = ensure_env(["six"], hub_dir=tmp_path, verbose=False)
    (tmp_path / "envs" / f".tmp-{env.key[:16]}-deadbeef").mkdir()  # a crashed build
    (tmp_path / "envs" / "0123456789abcdef").mkdir()  # an env folder without a marker
    records = list_envs(tmp_path)
    assert [(r.root.name, r.complete) for r in records] == [("0123456789abcdef", False), (env.root.name, True)]
    assert records[1].key == env.key and records[1].distributions == env.distributions
    assert prune_envs(tmp_path) == [".tmp-" + env.key[:16] + "-deadbeef", "0123456789abcdef"]
    assert [r.root.name for r in list_envs(tmp_path)] == [env.root.name]
    assert remove_env(tmp_path, env.root.name) is True
    assert remove_env(tmp_path, env.root.name) is False
    assert list(p.name for p in (tmp_path / "envs").iterdir()) == []
    with pytest.raises(ValueError):
        remove_env(tmp_path, "../etc")
    # And the next load simply builds it again.
    again = ensure_env(["six"], hub_dir=tmp_path, verbose=False)
    assert again.key == env.key and run_in(again, "import six").returncode == 0


@pytest.mark.slow
def test_offline_uses_the_cache_or_says_what_is_missing(tmp_path):
    env = ensure_env(["six"], hub_dir=tmp_path, verbose=False)  # fills the uv cache
    offline = {**os.environ, "SAFEHUB_OFFLINE": "1"}
    import shutil

    shutil.rmtree(env.root)
    again = ensure_env(["six"], hub_dir=tmp_path, verbose=False, env=offline)
    assert again.key == env.key and run_in(again, "import six").returncode == 0
    with pytest.raises(OfflineError, match="safehub-test-never-published") as info:
        ensure_env(["safehub_test_never_published"], hub_dir=tmp_path, verbose=False, env=offline)
    assert "SAFEHUB_OFFLINE" in str(info.value)


@pytest.mark.slow
def test_installer_failure_is_a_typed_error_with_the_installer_words(tmp_path):
    with pytest.raises(EnvironmentBuildError) as info:
        ensure_env(["safehub_test_never_published"], hub_dir=tmp_path, verbose=False)
    text = str(info.value)
    assert "safehub-test-never-published" in text and "uv said" in text and "hint:" in text
    assert leftovers(tmp_path) == [] and [p.name for p in (tmp_path / "envs").iterdir()] == []

