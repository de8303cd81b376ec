"""Bounded capture of a sandbox's stdout/stderr.

A pipe drained by a thread that keeps only the last ``limit`` bytes: the sandbox
can print forever without filling the host's memory or disk.
"""

from __future__ import annotations

import os
import threading

__all__ = ["TailPipe"]


class TailPipe:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.read_fd, self.write_fd = os.pipe2(os.O_CLOEXEC)
        self.total = 0
        self._buf = bytearray()
        self._thread = threading.Thread(target=self._drain, name="safehub-capture", daemon=True)

    def start(self) -> None:
        """Call after the child was spawned: the host's copy of the write end closes."""
        os.close(self.write_fd)
        self.write_fd = -1
        self._thread.start()

    def _drain(self) -> None:
        while True:
            try:
                chunk = os.read(self.read_fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            self.total += len(chunk)
            self._buf += chunk
            if len(self._buf) > 2 * self.limit:
                del self._buf[: len(self._buf) - self.limit]

    def result(self, timeout: float = 5.0) -> bytes:
        """The kept tail. Call once every writer is gone (the tree is dead)."""
        self._thread.join(timeout)
        try:
            os.close(self.read_fd)
        except OSError:
            pass
        return bytes(self._buf[-self.limit :])

    def close(self) -> None:
        for fd in (self.write_fd,):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.write_fd = -1
