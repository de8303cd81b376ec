"""Only the torch family from the host: a package installed next to torch is not
visible to a repo (real venvs, real bwrap and Landlock sandboxes), and the family
folder links exactly the family's files (pure, on fake site folders)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

from conftest import ROOT, make_wheel
from safehub._env._family import FAMILY_MARKER, ensure_family, family_entries

# --- the family folder on fake site folders (fast) -------------------------------


def _install(site: Path, name: str, files: dict[str, str]) -> tuple[str, str, Path]:
    """Write files and a dist-info with a RECORD, as an installer would."""
    info = site / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    record = [f"{info.name}/METADATA,,", f"{info.name}/RECORD,,"]
    for rel, text in files.items():
        path = site / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        record.append(f"{rel},,")
    (info / "RECORD").write_text("\n".join(record) + "\n")
    return (name, "1.0", info)


def _fake_site(tmp_path: Path):
    site = tmp_path / "site-packages"
    torch = _install(site, "torch", {"torch/__init__.py": "", "torch/lib/x.so": "", "torchgen/a.py": ""})
    nv = _install(site, "nvidia-cublas", {"nvidia/__init__.py": "", "nvidia/cublas/lib/libcublas.so": ""})
    te = _install(site, "typing_extensions", {"typing_extensions.py": "",
                                              "__pycache__/typing_extensions.cpython-311.pyc": ""})
    # Not the family: a neighbour sharing the nvidia namespace and __pycache__, one planting into torch/.
    _install(site, "nvidia-evil", {"nvidia/evil/__init__.py": ""})
    _install(site, "canary", {"canary.py": "", "__pycache__/canary.cpython-311.pyc": ""})
    _install(site, "torch-plugin", {"torch/plugin_evil.py": ""})
    return site, [torch, nv, te]


def test_family_entries_link_only_family_files(tmp_path):
    site, family = _fake_site(tmp_path)
    entries = family_entries(family)
    assert entries["torchgen"] == site / "torchgen"
    assert entries["typing_extensions.py"] == site / "typing_extensions.py"
    assert entries["torch-1.0.dist-info"] == site / "torch-1.0.dist-info"
    assert entries["__pycache__/typing_extensions.cpython-311.pyc"].name == "typing_extensions.cpython-311.pyc"
    # Shared folders are split: their family children only.
    assert "nvidia" not in entries and entries["nvidia/cublas"] == site / "nvidia" / "cublas"
    assert "torch" not in entries and entries["torch/lib"] == site / "torch" / "lib"
    names = set(entries)
    for foreign in ("canary.py", "canary-1.0.dist-info", "nvidia/evil", "torch/plugin_evil.py",
                    "__pycache__/canary.cpython-311.pyc", "__pycache__", "torch-plugin-1.0.dist-info"):
        assert foreign not in names
    targets = {str(t) for t in entries.values()}
    assert not any("canary" in t or "evil" in t for t in targets)


def test_family_folder_is_built_once_and_reused(tmp_path):
    site, family = _fake_site(tmp_path)
    hub = tmp_path / "hub"
    fam = ensure_family(hub, family)
    assert (fam.folder / "torchgen").is_symlink() and (fam.folder / "torch" / "lib").is_symlink()
    assert not (fam.folder / "canary.py").exists() and not (fam.folder / "nvidia" / "evil").exists()
    assert sorted(p.name for p in (hub / "host").iterdir()) == [fam.folder.name]
    marker = json.loads((fam.folder / FAMILY_MARKER).read_text())
    assert sorted(marker["targets"]) == sorted(str(t) for t in fam.targets)
    os.utime(fam.folder / FAMILY_MARKER, (0, 0))
    assert ensure_family(hub, family) == fam
    assert os.stat(fam.folder / FAMILY_MARKER).st_mtime == 0  # reused, not rebuilt


# --- a canary installed next to torch, under real sandboxes (slow) ------------------

_PROBE = '''
dependencies = []

def probe():
    import os
    import torch
    leaks = []
    for name in NAMES:
        try:
            __import__(name)  # dynamic on purpose: no scan may pick these up
            leaks.append("import " + name)
        except ImportError:
            pass
    for path in PATHS:
        try:
            open(path, "rb").close()
            leaks.append("read " + path)
        except OSError:
            pass
    try:
        listed = set(os.listdir(SITE))
    except OSError:
        listed = set()
    leaks += ["listed " + n for n in NAMES if n in listed]
    if leaks:
        raise RuntimeError("LEAK: " + ", ".join(leaks))
    return torch.nn.Linear(2, 3)
'''

_CHILD = r'''
import importlib.metadata as md, json, sys
sys.path[:] = [p for p in sys.path if "-packages" not in p] + [FARM, ROOT]
import safehub_canary  # the canary really is installed next to torch
assert md.distribution("torch").locate_file("") == __import__("pathlib").Path(FARM), "torch not from the farm"
import safehub
from safehub._errors import SafehubError
out = {}
for backend in ("bwrap", "landlock"):
    try:
        m = safehub.load(REPO, "probe", source="local", sandbox=backend, verbose=False)
        out[backend] = ["ok", m.safehub_info.backend, list(m.weight.shape)]
    except SafehubError as e:
        out[backend] = ["failed", str(e)[-1500:]]
print("RESULT " + json.dumps(out))
'''


@pytest.mark.slow
def test_a_package_next_to_torch_is_invisible_to_repos(tmp_path):
    """Copy the host's site-packages (links to its packages, real dist-info folders),
    install a canary wheel into that copy with uv, and load a repo whose entrypoint
    tries to import and read it, and also the host's own PyYAML, through bwrap and Landlock."""
    host_site = Path(sysconfig.get_paths()["purelib"]).resolve()
    farm = tmp_path / "site-packages"
    farm.mkdir()
    wheels = tmp_path / "wheels"
    wheel = make_wheel(wheels, "safehub-canary", "1.0", {"safehub_canary/__init__.py": "X = 1\n",
                                                        "safehub_canary_mod.py": "Y = 2\n"})
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    assert uv, "uv is required (it is a safehub dependency)"
    proc = subprocess.run([uv, "pip", "install", "--no-config", "--offline", "--no-deps", "--target", str(farm),
                           str(wheel)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for entry in host_site.iterdir():
        if entry.name.endswith(".pth") or (farm / entry.name).exists():
            continue
        if entry.name.endswith(".dist-info"):
            shutil.copytree(entry, farm / entry.name)  # metadata lives in the copy
        else:
            os.symlink(entry, farm / entry.name)
    assert (host_site / "yaml" / "__init__.py").is_file(), "the host venv should have PyYAML (a test dependency)"
    repo = tmp_path / "repo"
    repo.mkdir()
    names = ["safehub_canary", "safehub_canary_mod", "yaml"]
    paths = [str(farm / "safehub_canary" / "__init__.py"), str(farm / "safehub_canary_mod.py"),
             str(host_site / "yaml" / "__init__.py"), str(host_site / "safehub" / "__init__.py")
             if (host_site / "safehub").exists() else str(host_site / "pytest" / "__init__.py")]
    (repo / "hubconf.py").write_text(
        f"NAMES = {names!r}\nPATHS = {paths!r}\nSITE = {str(host_site)!r}\n" + textwrap.dedent(_PROBE))
    code = (f"FARM = {str(farm)!r}\nROOT = {str(ROOT)!r}\nREPO = {str(repo)!r}\n") + _CHILD
    env = {**os.environ, "SAFEHUB_HOME": str(tmp_path / "hub"), "SAFEHUB_DEPENDENCIES": "declared"}
    proc = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=900,
                          env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.split("RESULT ", 1)[1])
    assert result == {"bwrap": ["ok", "bwrap", [3, 2]], "landlock": ["ok", "landlock", [3, 2]]}, result


# --- an undeclared import, end to end (slow: real uv env, real bwrap) -------------------

_UNDECLARED = '''
dependencies = ["torch"]

def tiny():
    import six  # undeclared: the scan finds it
    import torch
    assert six.PY3
    return torch.nn.Linear(2, 2)
'''


@pytest.mark.slow
def test_undeclared_import_loads_by_default_and_fails_clearly_when_declared_only(tmp_path, monkeypatch):
    import safehub
    from safehub._errors import EntrypointFailedError

    monkeypatch.delenv("SAFEHUB_DEPENDENCIES", raising=False)
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "hubconf.py").write_text(_UNDECLARED)
    m = safehub.load(str(repo), "tiny", source="local", sandbox="bwrap", verbose=False)
    assert m.safehub_info.dependencies["mode"] == "scan"
    assert any(d.startswith("six==") for d in m.safehub_info.dependencies["distributions"])
    assert all(len(h) == 64 for h in m.safehub_info.dependencies["records"].values())
    with pytest.raises(EntrypointFailedError) as info:
        safehub.load(str(repo), "tiny", source="local", sandbox="bwrap", verbose=False, dependencies_mode="declared")
    assert "extra_dependencies=['six']" in info.value.hint


@pytest.mark.slow
def test_a_release_far_older_than_the_newest_is_reported(tmp_path, caplog):
    import logging

    from safehub._env import ensure_env

    caplog.set_level(logging.WARNING, logger="safehub")
    links = tmp_path / "wheels"
    for version in ("0.1", "2.0"):
        make_wheel(links, "safehub-test-aged-probe", version, {"safehub_test_aged_probe.py": f"V = {version!r}\n"})
    env = {**os.environ, "UV_FIND_LINKS": str(links)}
    old = ensure_env(["safehub_test_aged_probe<1"], hub_dir=tmp_path / "hub", env=env, verbose=False)
    marker = json.loads((old.root / "safehub-env.json").read_text())
    assert marker["far_older"] == ["safehub-test-aged-probe 0.1 (newest 2.0)"]
    assert any("far older" in r.getMessage() and "safehub-test-aged-probe 0.1" in r.getMessage() for r in caplog.records)
    new = ensure_env(["safehub_test_aged_probe"], hub_dir=tmp_path / "hub", env=env, verbose=False)
    assert json.loads((new.root / "safehub-env.json").read_text())["far_older"] == []


def test_a_torchvision_built_for_another_torch_is_not_shared(tmp_path, monkeypatch, caplog):
    """Real metadata of a fake torchvision (a dist-info on sys.path) that pins another torch."""
    import importlib.metadata as md
    import logging

    from safehub._env._host import host_info

    site = tmp_path / "site"
    for name, torch_req in (("torchvision", "torch==1.0.0"),):  # the fake shadows any real one
        info = site / f"{name}-0.1.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\nRequires-Dist: {torch_req}\n")
        (site / name).mkdir()
        (site / name / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(site))
    md.distribution("torchvision")  # visible through metadata
    caplog.set_level(logging.WARNING, logger="safehub")
    info = host_info()
    assert "torchvision" not in info.packages and "torch" in info.packages
    assert not any(n == "torchvision" for n, _v, _p in info.family_dists)
    assert any("not sharing torchvision" in r.getMessage() for r in caplog.records)
    # The same torchvision built for the host's torch is shared.
    torch_version = md.version("torch")
    meta = site / "torchvision-0.1.dist-info" / "METADATA"
    meta.write_text(meta.read_text().replace("torch==1.0.0", f"torch=={torch_version}"))
    assert host_info().packages.get("torchvision") == "0.1"
