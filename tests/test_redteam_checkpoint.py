"""Red team: ``safehub.load_state_dict_from_url`` on hostile checkpoints, served by
a real loopback HTTP server and loaded in a fresh host process with an audit hook
(tests/fixtures/redteam/ckpt_driver.py).

Pickles must only ever be unpickled inside the sandbox: their payloads aim at a
host canary and must not reach it, and the host must record no
``pickle.find_class``. Payloads that take over the converter and forge its
output (checkpoint.json / weights.safetensors / result.json) must be refused
with typed errors, and so must safetensors files whose headers lie (the host
reads those itself, without a sandbox).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Runs real sandboxes (or a torch subprocess per case): the slow tier.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
DRIVER = Path(__file__).resolve().parent / "fixtures" / "redteam" / "ckpt_driver.py"

OK = "ok"
EXPECTED: dict[str, object] = {
    # the payload runs inside the sandbox (torch's legacy loader unpickles the magic
    # number first), so torch then refuses the file there: a typed sandbox error
    "pickle_os_system.pth": "SandboxError",
    "pickle_os_system_weights_only.pth": "SandboxError",
    "legacy_zip_payload.pth": "SandboxError",
    # a torch.save file whose payload runs in the sandbox and returns its exit status
    "torch_save_with_payload.pth": OK,
    # the payload takes over the converter and writes the host's inputs itself
    "forged_unknown_tag.pth": "UnsafeSpecError",
    "forged_symlink.pth": "UnsafeSpecError",
    "forged_extra_tensor.pth": "TensorMismatchError",
    "forged_deep.pth": ("UnsafeSpecError", "SpecTooLargeError"),
    "forged_bad_key.pth": "TensorMismatchError",
    # safetensors read directly on the host
    "st_lying_header.safetensors": "UnsafeSpecError",
    "st_overlap.safetensors": "UnsafeSpecError",
    "st_duplicate_key.safetensors": "UnsafeSpecError",
    "st_bad_dtype.safetensors": "TensorMismatchError",
    "st_sparse_100g.safetensors": "SpecTooLargeError",  # a sparse 100 GiB claim: refused by size, nothing read
}


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    work = tmp_path_factory.mktemp("redteam-ckpt")
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, str(DRIVER), str(work), *sorted(EXPECTED)],
        capture_output=True, text=True, timeout=1200, cwd=work, env=env,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("REDTEAM-REPORT ")]
    assert proc.returncode == 0 and lines, f"driver failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return json.loads(lines[-1][len("REDTEAM-REPORT "):])


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_hostile_checkpoint_is_refused_or_contained(case: str, reports: dict[str, dict]) -> None:
    rep = reports[case]
    expected = EXPECTED[case]
    allowed = expected if isinstance(expected, tuple) else (expected,)
    outcome = OK if rep["ok"] else rep["error"]
    assert outcome in allowed, f"{case}: got {outcome}: {rep.get('message', '')[:1500]}"
    if not rep["ok"]:
        assert "SafehubError" in rep["mro"]
        assert "\x1b" not in rep["message"]


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_nothing_was_unpickled_or_run_on_the_host(case: str, reports: dict[str, dict]) -> None:
    rep = reports[case]
    assert not rep["canary"], f"{case}: the payload reached the host"
    assert rep["events"] == [], f"{case}: host audit events {rep['events'][:5]}"


def test_the_payload_did_run_but_only_in_the_sandbox(reports: dict[str, dict]) -> None:
    """Control: os.system ran while unpickling (its exit status came back as data), yet
    `touch <host canary>` failed because the host path is not there."""
    value = reports["torch_save_with_payload.pth"]["value"]
    assert "'w': tensor([1., 1.])" in value
    assert "'evil': " in value and "'evil': 0" not in value
