"""The host's ``import torch``, started early on a thread so that it overlaps the
sandbox's work.

A fresh process pays about a second for ``import torch`` on the host and about
as much again in the sandbox (or less with a warm worker); run one after the
other they add up. ``load`` calls :func:`start` as soon as its arguments are
checked, then fetches, builds the env and runs the sandbox while the thread
imports; :func:`wait` joins it before the host first needs torch. ``import
safehub`` itself still never imports torch.

The import begins only once a sandbox is running (:func:`sandbox_started`, called
by the watchdog that waits for it), or when :func:`wait` is called. ``import torch``
holds the GIL for long stretches (loading libtorch and running its static
initialisers, hundreds of milliseconds at a time), and every file operation of the
main thread's env lookup and sandbox start would queue behind it: measured in a
fresh process, the env lookup took 0.25 s beside the import and 0.014 s alone. So
the main thread gets the sandbox going first, and the import then runs while the
main thread only waits.

The thread only imports torch: the main thread holds no import lock of a module
torch needs while it waits (safehub's fetch, env and sandbox modules do not import
torch), so the two cannot deadlock. Should the thread's import fail for any
reason, :func:`wait` leaves it to the caller's own ``import torch`` to raise it
in the main thread, as before.
"""

from __future__ import annotations

import sys
import threading

__all__ = ["start", "sandbox_started", "wait"]

_thread: threading.Thread | None = None
_lock = threading.Lock()
_go = threading.Event()


def _import() -> None:
    _go.wait()
    try:
        import torch  # noqa: F401
    except BaseException:  # noqa: BLE001 - the main thread imports again and raises it
        pass


def start() -> None:
    """Start the daemon thread that imports torch once a sandbox runs (see the
    module docstring), once per process; a no-op when torch is already imported."""
    global _thread
    if "torch" in sys.modules:
        return
    with _lock:
        if _thread is None:
            _thread = threading.Thread(target=_import, name="safehub-import-torch", daemon=True)
            _thread.start()


def sandbox_started() -> None:
    """A sandbox is running and the main thread is only waiting for it: the import
    may begin (a no-op when it has, or when no thread was started)."""
    _go.set()


def wait() -> None:
    """Block until the thread's import is over (at once when there is none)."""
    _go.set()
    thread = _thread
    if thread is not None and thread.is_alive():
        thread.join()
