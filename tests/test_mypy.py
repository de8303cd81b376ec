"""mypy runs clean on safehub/ and runners/ (settings: [tool.mypy] in pyproject.toml;
no blanket ignores: untyped third-party packages are named one by one there)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow  # ~15 s from a cold cache: kept out of the fast tier
def test_mypy_is_clean_on_safehub_and_runners(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path / "mypy-cache")],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "no issues found" in proc.stdout


def test_no_blanket_type_ignores():
    """Every ``type: ignore`` names its error code; no file opts out of checking."""
    offenders = []
    for path in [*sorted((ROOT / "safehub").rglob("*.py")), *sorted((ROOT / "runners").glob("*.py"))]:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if "type: ignore" in line and "type: ignore[" not in line:
                offenders.append(f"{path.relative_to(ROOT)}:{number}")
            if line.strip().startswith("# mypy: ignore-errors"):
                offenders.append(f"{path.relative_to(ROOT)}:{number}")
    assert not offenders, offenders
