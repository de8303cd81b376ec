"""The public surface: __all__ in step with what the package exposes, torch.hub-compatible
signatures, and `import safehub` staying light."""

from __future__ import annotations

import inspect
import subprocess
import sys

import safehub


def test_all_matches_public_names():
    public = {n for n in dir(safehub) if not n.startswith("_")}
    # Submodule names the import machinery adds are not API.
    assert set(safehub.__all__) <= public
    extra = public - set(safehub.__all__) - {"annotations"}
    assert extra == set(), f"public names missing from __all__: {sorted(extra)}"


def test_import_does_not_import_torch():
    code = "import sys, safehub; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_signatures_follow_torch_hub():
    import torch.hub

    for name in ("load", "list", "help"):
        ours = inspect.signature(getattr(safehub, name)).parameters
        theirs = inspect.signature(getattr(torch.hub, name)).parameters
        for pname, param in theirs.items():
            assert pname in ours, f"safehub.{name} lacks torch.hub's {pname!r}"
            assert ours[pname].kind == param.kind, f"{name}({pname}) kind differs"
            assert ours[pname].default == param.default, f"{name}({pname}) default differs"
    assert list(inspect.signature(safehub.load).parameters)[:3] == ["repo_or_dir", "model", "args"]


def test_errors_also_subclass_the_stdlib_error_torch_hub_raised():
    assert issubclass(safehub.EntrypointNotFoundError, RuntimeError)
    assert issubclass(safehub.InvalidRepoError, ValueError)
    assert issubclass(safehub.FetchError, OSError)
    assert issubclass(safehub.SandboxTimeoutError, TimeoutError)
    assert issubclass(safehub.OfflineError, ConnectionError)
    for name in safehub.__all__:
        obj = getattr(safehub, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            assert issubclass(obj, safehub.SafehubError)
            assert isinstance(obj.exit_code, int) and obj.exit_code > 0


def test_get_dir_and_set_dir(tmp_path, monkeypatch):
    import safehub._config as config

    monkeypatch.setattr(config, "_hub_dir_override", None)
    monkeypatch.setenv("SAFEHUB_HOME", str(tmp_path / "home"))
    assert safehub.get_dir() == str(tmp_path / "home")
    safehub.set_dir(tmp_path / "other")
    assert safehub.get_dir() == str(tmp_path / "other")
    monkeypatch.delenv("SAFEHUB_HOME")
    monkeypatch.setattr(config, "_hub_dir_override", None)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert safehub.get_dir() == str(tmp_path / "xdg" / "safehub")
