"""Test helper: ``save_file(tensors, filename)`` with safetensors' signature, written by
the runner's own numpy-free writer (safetensors' ``save_file`` imports numpy, which
safehub does not depend on)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

_RUNNERS = str(Path(__file__).resolve().parents[2] / "runners")
if _RUNNERS not in sys.path:
    sys.path.insert(0, _RUNNERS)

from _safetensors_write import write_safetensors  # noqa: E402


def save_file(tensors: dict[str, Any], filename: Any, metadata: dict[str, str] | None = None) -> None:
    write_safetensors(str(filename), tensors, metadata)
