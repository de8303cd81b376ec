"""The host's ``import torch``, started early on a thread so that it overlaps the
sandbox's work.

A fresh process pays about a second for ``import torch`` on the host and about
as much again in the sandbox (or less with a warm worker); run one after the
other they add up. ``load`` calls :func:`start` first thing, then checks its
arguments, fetches, builds the env and runs the sandbox while the thread
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

Before it waits, the thread loads torch's native libraries (:func:`_preload`):
``dlopen`` of ``torch/_C`` and the libraries it links (libtorch_cpu and the rest,
about a quarter of a second of relocations and static initialisers), called through
ctypes so that the GIL is released, can begin at once and overlap the main thread's
own work on another core. It repeats, in the same order and with the same flags, what
``torch/__init__.py`` does before ``from torch._C import *``; when that import later
opens the same files, the loader hands back the libraries already there. It does
nothing on a CUDA build (torch first preloads its CUDA libraries in an order of its
own), with ``TORCH_USE_RTLD_GLOBAL`` set, or off Linux; on any failure it stops and
leaves the libraries to torch's own import. A process that ends meanwhile (a load
that fails in milliseconds) waits at exit for the preload to finish: libtorch's
static destructors must not run beside its constructors.

The thread only imports torch: the main thread holds no import lock of a module
torch needs while it waits (safehub's fetch, env and sandbox modules do not import
torch), so the two cannot deadlock. Should the thread's import fail for any
reason, :func:`wait` leaves it to the caller's own ``import torch`` to raise it
in the main thread, as before.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable

__all__ = ["start", "sandbox_started", "wait"]

_thread: threading.Thread | None = None
_lock = threading.Lock()
_go = threading.Event()
_preloaded = threading.Event()


def _dlopen() -> Callable[[bytes, int], int | None] | None:
    """libc's ``dlopen``, called through ctypes: a foreign call releases the GIL for
    its whole length (``_ctypes.dlopen``, which ``ctypes.CDLL`` uses, holds it)."""
    import ctypes

    try:
        function = ctypes.CDLL(None).dlopen  # glibc 2.34+ has it in libc; older ones in libdl
    except AttributeError:
        try:
            function = ctypes.CDLL("libdl.so.2").dlopen
        except (OSError, AttributeError):
            return None
    function.argtypes = [ctypes.c_char_p, ctypes.c_int]
    function.restype = ctypes.c_void_p
    return function


def _preload() -> None:
    """``dlopen`` torch's global deps and ``torch/_C`` as its own import would, with
    the GIL released (see the module docstring); without importing any of torch."""
    if sys.platform != "linux" or os.environ.get("TORCH_USE_RTLD_GLOBAL"):
        return
    import importlib.machinery
    import importlib.util

    try:
        spec = importlib.util.find_spec("torch")  # finds the package; runs none of it
        if spec is None or spec.origin is None:
            return
        folder = os.path.dirname(spec.origin)
        global_deps = os.path.join(folder, "lib", "libtorch_global_deps.so")
        # the file `from torch._C import *` opens: the first suffix with a file, as the import looks
        extension = next((os.path.join(folder, "_C" + suffix) for suffix in importlib.machinery.EXTENSION_SUFFIXES
                          if os.path.isfile(os.path.join(folder, "_C" + suffix))), None)
        dlopen = _dlopen()
        if extension is None or not os.path.isfile(global_deps) or dlopen is None:
            return
        # torch's _load_global_deps: ctypes.CDLL(..., mode=RTLD_GLOBAL), to which ctypes adds RTLD_NOW
        if not dlopen(os.fsencode(global_deps), os.RTLD_GLOBAL | os.RTLD_NOW):
            return
        with open("/proc/self/maps") as maps:
            if "libcudart.so" in maps.read():  # a CUDA build: torch loads its CUDA libraries first
                return
        dlopen(os.fsencode(extension), sys.getdlopenflags())  # the flags the import itself will use
    except Exception:  # noqa: BLE001 - only a head start: torch's own import does it all again and reports
        return


_EXIT_WAIT_S = 60.0  # far beyond a dlopen's quarter of a second; never a hang

# Extension modules (each a shared library) that a load's main thread imports after
# start(). The loader holds one lock for the whole of the preload's dlopen, and the
# main thread's dlopen of any other library would wait for it (holding the GIL): so
# these are imported before the thread starts, a few milliseconds in all (most of
# them are what `import safehub` imported before it became lazy).
# tests/test_host_torch.py runs a fresh load and names any missing here.
_MAIN_THREAD_EXTENSIONS = (
    "_bisect", "_blake2", "_bz2", "_contextvars", "_csv", "_datetime", "_hashlib", "_heapq",
    "_lzma", "_opcode", "_pickle", "_posixsubprocess", "_random", "_sha512", "_socket", "_ssl",
    "_uuid", "array", "binascii", "fcntl", "math", "mmap", "select", "zlib",
)


def _import_extensions() -> None:
    import importlib

    for name in _MAIN_THREAD_EXTENSIONS:
        try:
            importlib.import_module(name)
        except ImportError:  # a Python built without it: the load imports no such module either
            pass


def _import() -> None:
    try:
        _preload()
    finally:
        _preloaded.set()
    _go.wait()
    try:
        import torch  # noqa: F401
    except BaseException:  # noqa: BLE001 - the main thread imports again and raises it
        pass


def start() -> None:
    """Start the daemon thread that loads torch's native libraries at once and
    imports torch once a sandbox runs (see the module docstring), once per process;
    a no-op when torch is already imported."""
    global _thread
    if "torch" in sys.modules:
        return
    with _lock:
        if _thread is None:
            _import_extensions()
            # A process that ends while the preload's dlopen runs would run libtorch's
            # static destructors beside its static constructors (an abort, seen on
            # a misspelt entrypoint's fast exit): the interpreter's exit waits for it.
            import atexit

            atexit.register(_preloaded.wait, _EXIT_WAIT_S)
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
