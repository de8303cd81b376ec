"""The host's ``import torch`` runs on a thread, but only once a sandbox runs (or the
caller needs torch): beside the main thread's env lookup and sandbox start it would
hold the GIL through libtorch's loading and stall them (safehub/_host_torch.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import sys, time
    from safehub import _host_torch
    _host_torch.start()
    time.sleep(0.5)
    assert "torch" not in sys.modules, "imported before any sandbox ran"
    {trigger}
    _host_torch.wait()
    assert "torch" in sys.modules and sys.modules["torch"].nn is not None
    print("ok")
""")


@pytest.mark.slow  # a fresh interpreter imports torch (~1-2 s)
@pytest.mark.parametrize("trigger", ["_host_torch.sandbox_started()", "pass"], ids=["sandbox-started", "wait-alone"])
def test_the_host_import_waits_for_a_running_sandbox_or_for_wait(trigger: str) -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT.format(trigger=trigger)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_the_watchdog_lets_the_import_begin() -> None:
    """Every backend waits for its sandbox through Watchdog.run: that is the signal."""
    from safehub import _host_torch
    from safehub._sandbox._limits import Limits, Watchdog

    _host_torch._go.clear()
    Watchdog(limits=Limits(), root_pid=1).run(lambda: 0, lambda: None)
    assert _host_torch._go.is_set()


# A fresh process's load, with the main thread's first imports of extension modules
# recorded from start() (the preload begins) to wait() (the host needs torch).
WINDOW = textwrap.dedent("""
    import importlib.machinery, json, sys, threading
    from safehub import _host_torch
    recording = [False]
    imported = []
    real_start, real_wait = _host_torch.start, _host_torch.wait
    def start():
        real_start()
        recording[0] = True
    def wait():
        recording[0] = False
        real_wait()
    _host_torch.start, _host_torch.wait = start, wait
    def hook(event, args):
        if event == "import" and recording[0] and threading.current_thread() is threading.main_thread():
            if args[0] not in sys.modules and args[0] not in imported:
                imported.append(args[0])
    sys.addaudithook(hook)
    import safehub
    safehub.load(sys.argv[1], "tinynet", source="local", verbose=False, num_classes=int(sys.argv[2]))
    extensions = [name for name in imported
                  if isinstance(getattr(sys.modules.get(name), "__loader__", None), importlib.machinery.ExtensionFileLoader)]
    print(json.dumps({"imported": len(imported), "extensions": extensions}))
""")


@pytest.mark.slow  # two fresh interpreters, each loading the demo repo in a sandbox
@pytest.mark.parametrize("worker", ["1", "0"], ids=["warm-worker", "no-worker"])
def test_the_main_thread_opens_no_library_while_torch_preloads(worker: str) -> None:
    """The preload's dlopen holds the loader's lock for a quarter of a second; an
    extension module the main thread imports meanwhile would wait for all of it.
    _MAIN_THREAD_EXTENSIONS must name every one a load imports after start()."""
    import json

    from conftest import DEMO

    from safehub import _host_torch

    env = {**os.environ, "SAFEHUB_WORKER": worker}
    first = subprocess.run([sys.executable, "-c", WINDOW, str(DEMO), "3"], capture_output=True, text=True, timeout=300,
                           env=env)
    assert first.returncode == 0, first.stderr[-3000:]  # builds the env (and starts a worker)
    done = subprocess.run([sys.executable, "-c", WINDOW, str(DEMO), "5"], capture_output=True, text=True, timeout=300,
                          env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["imported"] > 0  # the hook saw the window: the load imports modules after start()
    assert seen["extensions"] == [], (
        f"the load's main thread imported {seen['extensions']} after the preload began: "
        f"add them to _MAIN_THREAD_EXTENSIONS ({_host_torch._MAIN_THREAD_EXTENSIONS})")


@pytest.mark.slow  # a fresh interpreter
def test_the_preload_leaves_torch_as_its_own_import_would() -> None:
    """The libraries are those torch's import opens, already there when it runs; the
    import then works as ever and nothing of torch is imported before it."""
    script = textwrap.dedent("""
        import sys
        from safehub import _host_torch
        _host_torch._preload()
        assert "torch" not in sys.modules
        maps = open("/proc/self/maps").read()
        assert "libtorch_cpu.so" in maps and "_C.cpython" in maps, "the preload opened nothing"
        import torch
        assert torch.nn.Linear(2, 3)(torch.ones(1, 2)).shape == (1, 3)
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


@pytest.mark.slow  # fresh interpreters
def test_a_process_that_ends_during_the_preload_exits_cleanly() -> None:
    """A load that fails in milliseconds ends its process while the preload's dlopen
    runs. Without the wait at exit, libtorch's static destructors ran beside its
    constructors: SIGABRT (found with a misspelt entrypoint on the command line)."""
    script = textwrap.dedent("""
        import sys, time
        from safehub import _host_torch
        _host_torch.start()
        time.sleep(float(sys.argv[1]))
    """)
    for delay in ("0", "0.05", "0.1", "0.15", "0.2", "0.25"):
        done = subprocess.run([sys.executable, "-c", script, delay], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"exit {delay} s after start(): {done.returncode}\n{done.stderr[-2000:]}"
