"""The host's ``import torch`` runs on a thread, but only once a sandbox runs (or the
caller needs torch): beside the main thread's env lookup and sandbox start it would
hold the GIL through libtorch's loading and stall them (safehub/_host_torch.py)."""

from __future__ import annotations

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
