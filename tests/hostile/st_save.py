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


def save(tensors: dict[str, Any], metadata: dict[str, str] | None = None) -> bytes:
    """safetensors.torch.save's signature: the file's bytes."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "w.safetensors"
        write_safetensors(str(path), tensors, metadata)
        return path.read_bytes()
