"""An artifact-cache hit maps its weights and skips re-hashing them when the file
is, by its stat, the one an earlier hit hashed (git's index does the same for
the work tree).

The memo (``<SAFEHUB_HOME>/artifacts/verified/<key>.json``) records the weights
file's device, inode, size, mtime and ctime (in ns), the sha256 it hashed to and
when it was recorded. A hit whose weights file has exactly that stat, and whose
provenance expects exactly that sha256, is not hashed again. Any write through
the file system moves the ctime, which no process can set back, so a changed
file is hashed again. A file is recorded only once its ctime is ``RACY_S`` old:
timestamps are coarse (a kernel tick), so a write in the same tick as the
recording could otherwise leave the stat as it was ("racy git").

What this gives up, on purpose: the weights hash on a hit catches accidents,
never an attacker. Whoever can rewrite the weights can rewrite the hashes
recorded next to them, and this memo. Every structural check (the spec, the
weights header, sizes, dtypes, shapes) runs on every hit regardless, and
``cache verify`` always hashes.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from ._fsutil import read_memo, write_memo

__all__ = ["WeightsStatMemo", "RACY_S"]

RACY_S = 2.0
_MAX_MEMO_BYTES = 4096
_STAT_FIELDS = ("st_dev", "st_ino", "st_size", "st_mtime_ns", "st_ctime_ns")


def _fingerprint(st: os.stat_result) -> list[int]:
    return [int(getattr(st, name)) for name in _STAT_FIELDS]


class WeightsStatMemo:
    """One entry's memo, for one expected sha256. ``hashed`` says afterwards
    whether the load hashed the weights (False: the memo knew the file)."""

    def __init__(self, path: Path, sha256: str, *, rehash: bool = False) -> None:
        self.path = path
        self.sha256 = sha256
        self.rehash = rehash
        self.hashed = True

    def known(self, st: os.stat_result) -> bool:
        """True when ``st`` is exactly the stat recorded for a file that hashed to
        ``sha256``; then nothing needs hashing."""
        if self.rehash:
            return False
        doc = read_memo(self.path, _MAX_MEMO_BYTES)
        ok = (isinstance(doc, dict) and doc.get("sha256") == self.sha256
              and doc.get("stat") == _fingerprint(st))
        self.hashed = not ok
        return ok

    def remember(self, before: os.stat_result, after: os.stat_result) -> None:
        """The file hashed to ``sha256``: record its stat, unless it changed while
        it was hashed or is too new for its ctime to tell a later write apart."""
        if _fingerprint(before) != _fingerprint(after):
            return
        if time.time_ns() - max(after.st_ctime_ns, after.st_mtime_ns) < RACY_S * 1e9:
            return
        doc: dict[str, Any] = {"sha256": self.sha256, "stat": _fingerprint(after), "recorded_ns": time.time_ns()}
        write_memo(self.path, doc)
