"""safehub: torch.hub without running a stranger's code in your process.

``import safehub`` does not import torch; torch is imported when a model is built.
"""

from __future__ import annotations

from ._config import get_dir, set_dir
from ._errors import *  # noqa: F403
from ._errors import __all__ as _error_names

__version__ = "0.1.0"

__all__ = [
    "get_dir",
    "set_dir",
    *_error_names,
]
