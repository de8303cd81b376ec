"""Red team, the command line: sandbox-controlled text that ``safehub load`` prints.

The runner's result.json ``summary`` is repo-controlled (the forge fixture
rewrites it through ``__main__._write_json``); ``safehub load`` reads
``summary["modules"]["m0"]["mode"]`` from it and prints it. Real CLI, real sandbox.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# Runs real sandboxes (or a torch subprocess per case): the slow tier.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
FORGE = Path(__file__).resolve().parent / "fixtures" / "redteam" / "forge"
CONTROL_CHARS = ("\x1b", "\x07", "\x00", "\r", "\u202e")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "safehub", *args], capture_output=True, text=True,
                          timeout=600, env=env, cwd=ROOT)



def test_cli_load_does_not_print_sandbox_escape_sequences():
    proc = _cli("load", str(FORGE), "summary", "--source", "local", "-k", "kind=ansi")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "loaded summary" in proc.stdout
    for stream in (proc.stdout, proc.stderr):
        leaked = [c for c in CONTROL_CHARS if c in stream]
        assert not leaked, f"terminal control characters {leaked!r} printed: {stream[-300:]!r}"



def test_cli_load_survives_an_oddly_shaped_summary():
    proc = _cli("load", str(FORGE), "summary", "--source", "local", "-k", "kind=shape")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
