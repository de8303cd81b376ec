"""Status lines for long steps (fetch, env build, sandbox run, export), as torch.hub
prints "Using cache found in ..." and "Downloading: ...".

With ``verbose=True`` a line reaches the user even when the application never
configured logging: it goes through the ``safehub`` logger when that shows INFO
(the CLI's ``-v``, or an application's own handlers), else straight to stderr as
torch.hub does. ``verbose=False`` (or SAFEHUB_DISABLE_PROGRESS_BARS=1) keeps it at
DEBUG.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping

from ._config import progress_enabled

__all__ = ["status"]

logger = logging.getLogger("safehub")


def status(message: str, *args: object, verbose: bool = True, env: Mapping[str, str] | None = None) -> None:
    if not progress_enabled(verbose, env):
        logger.debug(message, *args)
    elif logger.isEnabledFor(logging.INFO) and logger.hasHandlers():
        logger.info(message, *args)
    else:
        try:
            sys.stderr.write(f"safehub: {message % args if args else message}\n")
            sys.stderr.flush()
        except (OSError, ValueError):  # a closed stderr never breaks a load
            pass
