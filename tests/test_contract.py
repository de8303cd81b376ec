"""The host <-> runner contract (safehub/_contract.py is runners/_contract.py) and the
one place runner errors become typed exceptions (safehub/_channel/_result.py)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import safehub
from safehub import _contract
from safehub._channel import raise_for_runner_error, read_result, read_summary
from safehub._channel._allowlist import _FACTORIES, _METHOD_DENY, GETATTR_ATTRS
from safehub._errors import (
    EntrypointFailedError,
    EntrypointNotFoundError,
    ExportError,
    HubconfError,
    RunnerEnvironmentError,
    SandboxError,
    UnsafeSpecError,
    UnsupportedReturnError,
)
from safehub._resources import runner_dir

ROOT = Path(__file__).resolve().parent.parent
RUNNERS = runner_dir()


def test_host_and_runner_import_the_same_contract_file():
    host = Path(_contract.__file__)
    assert host.read_bytes() == (RUNNERS / "_contract.py").read_bytes()
    if (ROOT / "safehub" / "_contract.py").is_symlink():  # a checkout: one file, linked
        assert host.resolve() == (RUNNERS / "_contract.py").resolve()


def test_contract_is_stdlib_only():
    """The runner imports it inside the sandbox: no safehub, no torch, no third party."""
    tree = ast.parse((RUNNERS / "_contract.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "no relative imports: the runner imports it as a top-level module"
            imported.add((node.module or "").split(".")[0])
    assert imported <= {"__future__", "typing"}, imported


_RUNNER_SIDE = """
import json, sys
sys.path.insert(0, sys.argv[1])
import _literals
print(json.dumps({
    "factories": list(_literals.FACTORIES),
    "getattr": sorted(_literals.GETATTR_ATTRS),
    "method_deny": sorted(_literals.METHOD_DENY),
    "refused_methods": sorted(n for n in _literals.METHOD_DENY if _literals.host_refuses_method(n)),
}))
"""


_CONTRACT_SIDE = """
import json, sys
sys.path.insert(0, sys.argv[1])
import _contract
print(json.dumps({"factories": list(_contract.FACTORIES), "getattr": sorted(_contract.GETATTR_ATTRS),
                  "method_deny": sorted(_contract.METHOD_DENY)}))
"""


def test_the_runner_reads_the_hosts_lists_from_the_contract():
    """Fast form (no torch): the runner's _literals takes its three lists from
    _contract and defines none of its own, and _contract, imported the way the
    runner imports it, holds exactly the host's lists."""
    tree = ast.parse((RUNNERS / "_literals.py").read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module == "_contract"
                for alias in node.names}
    assigned = {t.id for node in ast.walk(tree) if isinstance(node, (ast.Assign, ast.AnnAssign))
                for t in (node.targets if isinstance(node, ast.Assign) else [node.target]) if isinstance(t, ast.Name)}
    assert {"FACTORIES", "GETATTR_ATTRS", "METHOD_DENY"} <= imported
    assert not {"FACTORIES", "GETATTR_ATTRS", "METHOD_DENY"} & assigned
    out = subprocess.run([sys.executable, "-I", "-S", "-B", "-c", _CONTRACT_SIDE, str(RUNNERS)],
                         capture_output=True, text=True, check=True, timeout=60)
    runner = json.loads(out.stdout)
    assert runner == {"factories": list(_FACTORIES), "getattr": sorted(GETATTR_ATTRS),
                      "method_deny": sorted(_METHOD_DENY)}


@pytest.mark.slow  # imports torch in a fresh interpreter
def test_the_runner_pre_checks_exactly_the_hosts_lists():
    """Run in a fresh interpreter the way the runner imports its helpers: what the
    sandbox pre-checks must be what the host enforces, name for name."""
    out = subprocess.run([sys.executable, "-I", "-B", "-c", _RUNNER_SIDE, str(RUNNERS)],
                         capture_output=True, text=True, check=True, timeout=120)
    runner = json.loads(out.stdout.strip().splitlines()[-1])
    assert runner["factories"] == list(_FACTORIES)
    assert runner["getattr"] == sorted(GETATTR_ATTRS)
    assert runner["method_deny"] == sorted(_METHOD_DENY)
    assert runner["refused_methods"] == sorted(_METHOD_DENY)  # every listed method is refused in the sandbox
    # The names that had drifted before the lists were shared (issue 9).
    assert {"module_load", "hash_tensor", "xpu", "sparse_resize_"} <= set(runner["method_deny"])
    assert {"nbytes", "itemsize", "is_complex"} <= set(runner["getattr"])


# --- result.json and its error categories -------------------------------------


def _write(out: Path, doc: object) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / _contract.RESULT_FILE).write_text(json.dumps(doc))
    return out


def _error_result(category: str, **extra: object) -> dict:
    return {"protocol": _contract.PROTOCOL, "status": "error",
            "error": {"category": category, "type": "X", "message": "boom", "traceback": "tb", **extra}}


@pytest.mark.parametrize(
    "category, expected",
    [
        ("hubconf", HubconfError),
        ("entrypoint_missing", EntrypointNotFoundError),
        ("entrypoint", EntrypointFailedError),
        ("unsupported_return", UnsupportedReturnError),
        ("export", ExportError),
        ("checkpoint", SandboxError),
        ("environment", RunnerEnvironmentError),
        ("no-such-category", SandboxError),
    ],
)
def test_each_category_maps_to_one_typed_error(category, expected):
    with pytest.raises(expected) as info:
        raise_for_runner_error(_error_result(category), entrypoint="net", repo="r")
    # Exactly that class for a known category, not a sibling that merely subclasses it.
    if category != "no-such-category":
        assert type(info.value) is expected


def test_every_contract_category_is_handled():
    """A category added to the contract without a mapping would fall through to the
    generic 'the runner failed (...)' error; this catches that."""
    for category in _contract.ERROR_CATEGORIES:
        result = _error_result(category, urls=["https://example.org/w.pth"])
        if category == "needs_download":  # the caller fetches and retries
            assert raise_for_runner_error(result, entrypoint="net", repo="r") is None
            continue
        with pytest.raises(safehub.SafehubError) as info:
            raise_for_runner_error(result, entrypoint="net", repo="r")
        assert "the runner failed" not in str(info.value), category


def test_entrypoint_missing_is_decided_by_category_not_message_text():
    forged = _error_result("entrypoint", type="RuntimeError", message="Cannot find callable net in hubconf")
    with pytest.raises(EntrypointFailedError):
        raise_for_runner_error(forged, entrypoint="net", repo="r")


def test_environment_error_names_the_module_and_how_to_install_it():
    result = _error_result("environment", type="ModuleNotFoundError", message="No module named 'numpy'",
                           module="numpy.core")
    with pytest.raises(RunnerEnvironmentError) as info:
        raise_for_runner_error(result, entrypoint="net", repo="r")
    err = info.value
    assert err.module == "numpy.core" and isinstance(err, ImportError)
    assert "pip install numpy" in err.hint and "example_inputs" not in str(err)
    assert err.exit_code == 7


def test_environment_module_name_from_the_sandbox_is_checked():
    result = _error_result("environment", module="\x1b[2Jnumpy; rm -rf /")
    with pytest.raises(RunnerEnvironmentError) as info:
        raise_for_runner_error(result, entrypoint="net", repo="r")
    assert info.value.module is None and "\x1b" not in str(info.value) and "rm -rf" not in str(info.value)


def test_result_json_goes_through_the_strict_reader(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "result.json").write_text('{"protocol": 1, "status": "ok", "status": "error"}')
    with pytest.raises(UnsafeSpecError, match="duplicate key"):
        read_result(out)
    (out / "result.json").write_text('{"protocol": 1, "status": "ok", "summary": {"weight_bytes": NaN}}')
    with pytest.raises(UnsafeSpecError):
        read_result(out)
    with pytest.raises(UnsafeSpecError, match="protocol"):
        read_result(_write(tmp_path / "o2", {"protocol": 2, "status": "ok"}))
    with pytest.raises(UnsafeSpecError, match="without details"):
        read_result(_write(tmp_path / "o3", {"protocol": 1, "status": "error"}))
    ok = read_result(_write(tmp_path / "o4", {"protocol": 1, "status": "ok", "summary": {"root": "module", "x": 1}}))
    assert read_summary(ok) == {"root": "module", "modules": {}}


# --- the runner decides "environment" from where the import failed ------------


def _job(tmp_path: Path, hubconf: str, export: dict | None = None) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "hubconf.py").write_text(hubconf)
    job = tmp_path / "job"
    for sub in ("in", "out", "home", "tmp"):
        (job / sub).mkdir(parents=True)
    request = {"protocol": 1, "action": "load", "repo_dir": str(repo), "entrypoint": "make", "export": export or {},
               "confine": {}}
    (job / "in" / _contract.REQUEST_FILE).write_text(json.dumps(request))
    return job


def test_runner_reports_a_missing_module_of_its_own_as_environment(tmp_path):
    """The old symptom was 'No module named numpy / hint: pass example_inputs=...'.
    Here the runner's own code cannot import torch (-S hides site-packages): the
    host must say environment, name torch, and not blame the export."""
    job = _job(tmp_path, "def make():\n    return object()\n")
    proc = subprocess.run([sys.executable, "-I", "-S", "-B", str(RUNNERS / "safehub_runner.py"), str(job)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = read_result(job / "out")
    assert result["error"]["category"] == "environment"
    with pytest.raises(RunnerEnvironmentError) as info:
        raise_for_runner_error(result, entrypoint="make", repo=str(tmp_path / "repo"))
    assert info.value.module == "torch"
    assert "pip install torch" in str(info.value) and "example_inputs" not in str(info.value)


@pytest.mark.slow  # runs the real runner, which imports torch
def test_runner_blames_the_repo_for_its_own_missing_import(tmp_path):
    """An ImportError raised in the repo's code stays the repo's: hubconf, not environment."""
    job = _job(tmp_path, "import not_installed_anywhere_xyz\n\ndef make():\n    return 1\n")
    proc = subprocess.run([sys.executable, "-I", "-B", str(RUNNERS / "safehub_runner.py"), str(job)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert read_result(job / "out")["error"]["category"] == "hubconf"


def test_imported_for_runner_walks_out_to_the_first_runner_or_repo_frame(tmp_path):
    sys.path.insert(0, str(RUNNERS))
    try:
        import safehub_runner
    finally:
        sys.path.remove(str(RUNNERS))
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "model.py").write_text("def forward():\n    import not_installed_anywhere_xyz\n")
    code = compile((repo / "model.py").read_text(), str(repo / "model.py"), "exec")
    namespace: dict = {}
    exec(code, namespace)  # a stand-in for repo code called by the runner's exporter
    try:
        namespace["forward"]()
    except ImportError as exc:
        assert safehub_runner._imported_for_runner(exc, str(repo)) is False
        assert safehub_runner._error("export", exc, str(repo))["error"]["category"] == "export"
    try:
        import not_installed_anywhere_xyz  # noqa: F401  (this test file is neither runner nor repo)
    except ImportError as exc:
        assert safehub_runner._imported_for_runner(exc, str(repo)) is False
    # An import made by runner code (a frame in runners/), through the repo-free path.
    runner_code = compile("import not_installed_anywhere_xyz\n", str(RUNNERS / "_stand_in.py"), "exec")
    try:
        exec(runner_code, {})
    except ImportError as exc:
        assert safehub_runner._imported_for_runner(exc, str(repo)) is True
        error = safehub_runner._error("export", exc, str(repo))["error"]
        assert error["category"] == "environment" and error["module"] == "not_installed_anywhere_xyz"


def test_a_package_of_the_repos_venv_counts_as_the_repos(tmp_path, monkeypatch):
    """timm (say) lazily importing a missing module while the runner traces the
    model is the repo's dependency problem, not safehub's environment."""
    sys.path.insert(0, str(RUNNERS))
    try:
        import safehub_runner
    finally:
        sys.path.remove(str(RUNNERS))
    import site

    venv_site = tmp_path / "venv" / "lib" / "site-packages"
    (venv_site / "timmish").mkdir(parents=True)
    monkeypatch.setattr(site, "getsitepackages", lambda: [str(venv_site)])
    library = compile("import not_installed_anywhere_xyz\n", str(venv_site / "timmish" / "layers.py"), "exec")
    runner_code = compile("exec(library, {})\n", str(RUNNERS / "_stand_in.py"), "exec")
    try:
        exec(runner_code, {"library": library})  # the runner calls into the venv's package
    except ImportError as exc:
        assert safehub_runner._imported_for_runner(exc, str(tmp_path / "repo")) is False
    else:
        raise AssertionError("the stand-in import did not fail")
