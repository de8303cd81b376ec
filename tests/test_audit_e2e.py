"""safehub audit end to end: fixture repos audited in the real sandbox, a batch of
five through the local process pool and through a local Ray instance (the same
reports apart from timings), and an entrypoint that times out.

Lean on purpose: one pool batch and one Ray batch for the whole module (every
per-repo test reads the pool's reports), one timeout run."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from safehub._audit._fleet import BatchItem, audit_batch, strip_volatile, write_reports
from safehub._audit._render import format_markdown, format_text
from safehub._cli import main

pytestmark = pytest.mark.slow

AUDIT = Path(__file__).resolve().parent / "fixtures" / "audit"
HOSTILE = "\u202e\u200b\x1b[31m\u2066"


class _System:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _pickle_repo(root: Path) -> Path:
    """The clean repo plus a checkpoint that would call os.system when unpickled
    (written here with torch.save; nothing ever unpickles it)."""
    repo = root / "pickled"
    shutil.copytree(AUDIT / "clean", repo)
    (repo / "weights").mkdir()
    torch.save({"w": torch.zeros(2), "payload": _System()}, repo / "weights" / "model.pth")
    return repo


def _hostile_repo(root: Path) -> Path:
    """Names and strings full of bidi, zero-width and terminal control characters."""
    repo = root / "hostile"
    repo.mkdir()
    (repo / "hubconf.py").write_text(
        'dependencies = ["torch"]\nimport torch\n\n\n'
        f'def mod\u00e8le():\n    """Not a name safehub loads (non-ASCII): listed as not run."""\n\n\n'
        f'def model(pretrained=False):\n    """Docs {HOSTILE} here."""\n'
        f'    try:\n        open("/nonexistent/{HOSTILE}" + "x" * 5000, "rb")\n    except OSError:\n        pass\n'
        '    torch.manual_seed(0)\n    return torch.nn.Linear(2, 1)\n', encoding="utf-8")
    (repo / f"evil{HOSTILE}.py").write_text("import os\nos.system('id')\n", encoding="utf-8")
    return repo


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    root = tmp_path_factory.mktemp("audit-batch")
    return [
        BatchItem(str(AUDIT / "clean")),
        BatchItem(str(AUDIT / "static_findings"), ("model",)),
        BatchItem(str(AUDIT / "behaviour")),
        BatchItem(str(_pickle_repo(root))),
        BatchItem(str(_hostile_repo(root))),
    ]


@pytest.fixture(scope="module")
def pool(batch, safehub_home):
    reports = audit_batch(batch, workers=2, hub_dir=str(safehub_home), timeout_s=300)
    return {Path(item.repo).name: report for item, report in zip(batch, reports)}


@pytest.fixture(scope="module")
def ray_reports(batch, safehub_home):
    import ray  # the test extra installs it: this test never skips

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        reports = audit_batch(batch, use_ray=True, hub_dir=str(safehub_home), timeout_s=300)
    finally:
        ray.shutdown()
    return {Path(item.repo).name: report for item, report in zip(batch, reports)}


def _high(report):
    return {(f["category"], f["detail"]) for f in report["dynamic"]["findings"] if f["severity"] == "high"}


def test_clean_repo(pool):
    r = pool["clean"]
    assert (r["verdict"], r["exit_code"], r["error"]) == ("clean", 0, None)
    assert r["static"]["findings"] == [] and r["dynamic"]["findings"] == []
    [e] = r["dynamic"]["entrypoints"]
    assert (e["name"], e["status"], e["error"]) == ("tiny", "ok", None)
    out = e["output"]
    assert (out["root"], out["modes"], out["parameters"]) == ("module", ["fx"], 4 * 3 + 3)
    torch.manual_seed(0)
    expected = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()).state_dict()
    got = {t["name"].split(".", 1)[1]: t for t in out["tensors"]}  # "m0.<name>"
    assert set(got) == set(expected)
    for name, tensor in expected.items():
        raw = bytes(tensor.contiguous().view(torch.uint8).flatten().tolist())  # no numpy here
        assert got[name]["sha256"] == hashlib.sha256(raw).hexdigest()
        assert (got[name]["dtype"], got[name]["shape"]) == ("float32", list(tensor.shape))
    res = e["resources"]
    assert res["exit_status"] == 0 and res["killed_by"] is None and res["backend"] in ("bwrap", "landlock", "process")
    assert res["peak_rss_bytes"] > 0 and res["cpu_s"] >= 0 and e["wall_s"] > 0
    t = e["telemetry"]
    assert t["complete"] and t["skipped_lines"] == 0 and t["dropped"] == 0
    assert {"kind": "open", "phase": "hubconf", "path": str(AUDIT / "clean" / "hubconf.py"), "mode": "r"} in t["events"]
    assert all(e2["path"].startswith("<job>/") for e2 in t["events"] if e2["kind"] == "open" and e2["mode"] == "w")
    assert e["downloads"] == {"asked": [], "fetched": []}
    assert r["summary"]["entrypoints"] == {"ok": 1}


def test_static_findings_repo_runs_clean_but_is_flagged(pool):
    r = pool["static_findings"]
    assert (r["verdict"], r["exit_code"]) == ("findings", 20)
    assert [e["name"] for e in r["dynamic"]["entrypoints"]] == ["model"]
    assert r["dynamic"]["entrypoints"][0]["status"] == "ok"
    assert _high(r) == set()  # its code holds the calls; running the entrypoint does none of them
    assert r["summary"]["severity"]["high"] >= 10
    assert r["dynamic"]["not_run"] == ["run_shell"]  # `from os import system as run_shell`: never run


def test_behaviour_repo_shows_each_attempt(pool):
    r = pool["behaviour"]
    assert (r["verdict"], r["exit_code"]) == ("findings", 20)
    [e] = r["dynamic"]["entrypoints"]
    assert e["status"] == "ok"
    assert _high(r) >= {
        ("network", "AF_INET"),  # the socket, under every backend (Landlock refuses it, bubblewrap's empty netns not)
        ("secrets", "<job>/home/.ssh/id_rsa"),
        ("write_outside", "/var/tmp/safehub-audit-escape.txt"),
        ("process", "/bin/echo hello from a subprocess"),
    }
    if e["resources"]["backend"] == "bwrap":  # an empty network namespace: the connect itself is attempted
        assert ("network", "127.0.0.1 9") in _high(r)
    assert all(f["phase"] == "entrypoint" for f in r["dynamic"]["findings"] if f["severity"] == "high")
    refused = [ev for ev in e["telemetry"]["events"] if ev["kind"] == "refused"]
    assert {"op": "open", "target": "/var/tmp/safehub-audit-escape.txt"}.items() <= refused[0].items()
    assert refused[0]["errno"] in ("ENOENT", "EACCES", "EROFS", "EPERM")


def test_pickle_repo_lists_the_os_system_global(pool):
    r = pool["pickled"]
    assert (r["verdict"], r["exit_code"]) == ("findings", 20)
    [ckpt] = r["static"]["pickles"]
    assert ckpt["path"] == "weights/model.pth" and ckpt["format"] == "torch-zip" and ckpt["unreadable"] is None
    assert {"name": "posix.system", "class": "dangerous", "count": 1} in ckpt["globals"]
    assert {"file": "weights/model.pth", "line": 0, "category": "pickle_global", "severity": "high",
            "what": "pickle references a dangerous global", "detail": "posix.system"} in r["static"]["findings"]
    assert r["dynamic"]["entrypoints"][0]["status"] == "ok"


def test_hostile_names_are_escaped_everywhere_shown(pool):
    r = pool["hostile"]
    assert [e["name"] for e in r["dynamic"]["entrypoints"]] == ["model"]
    assert r["dynamic"]["not_run"] == ["mod\u00e8le"]
    opens = [e["path"] for e in r["dynamic"]["entrypoints"][0]["telemetry"]["events"] if e["kind"] == "open"]
    assert any(HOSTILE in p and len(p) <= 512 for p in opens)  # recorded as data, bounded
    for text in (format_text(r), format_markdown(r), json.dumps(r, ensure_ascii=True)):
        assert not any(ch in text for ch in "\u202e\u200b\x1b\u2066")
    assert "\\u202e" in format_markdown(r) and "mod\u00e8le" in format_text(r)  # printable letters stay
    assert f"evil{HOSTILE}.py" in {f["file"] for f in r["static"]["findings"]}


def test_ray_batch_gives_the_pool_reports_apart_from_timings(pool, ray_reports):
    assert set(ray_reports) == set(pool)
    for name in pool:
        assert strip_volatile(ray_reports[name]) == strip_volatile(pool[name]), name


def test_batch_writes_one_report_per_repo_and_an_index(pool, batch, tmp_path):
    reports = [pool[Path(item.repo).name] for item in batch]
    index = write_reports(reports, batch, tmp_path / "out", markdown=True)
    assert index["verdict"] == "findings" and index["exit_code"] == 20
    assert index["counts"] == {"clean": 1, "findings": 4}
    assert [e["report"] for e in index["repos"]][:2] == ["0001-clean.json", "0002-static_findings.json"]
    assert json.loads((tmp_path / "out" / "index.json").read_text()) == index
    for e in index["repos"]:
        assert json.loads((tmp_path / "out" / e["report"]).read_text())["verdict"] == e["verdict"]
        assert (tmp_path / "out" / e["report"].replace(".json", ".md")).is_file()


def test_timeout_is_reported_with_what_ran_before_it(capsys, tmp_path):
    code = main(["audit", str(AUDIT / "slow"), "--timeout", "20", "--json", "--out", str(tmp_path / "r.json")])
    r = json.loads(capsys.readouterr().out)
    assert code == 21 and (r["verdict"], r["exit_code"]) == ("failed", 21)
    assert json.loads((tmp_path / "r.json").read_text())["verdict"] == "failed"
    [e] = r["dynamic"]["entrypoints"]
    assert (e["name"], e["status"]) == ("forever", "timeout")
    assert e["error"]["type"] == "SandboxTimeoutError" and e["error"]["limit"] == "timeout"
    assert e["resources"]["killed_by"] == "timeout" and "output" not in e
    t = e["telemetry"]
    assert not t["complete"]  # killed: no closing line, the events written before it stand
    assert {"kind": "open", "phase": "entrypoint", "path": str(AUDIT / "slow" / "config.txt"), "mode": "r"} in t["events"]
    assert r["summary"]["entrypoints"] == {"timeout": 1}


def test_cli_batch_file(tmp_path, capsys):
    listing = tmp_path / "repos.txt"
    listing.write_text(f"# fixture repos\n{AUDIT / 'clean'}\n\n{AUDIT / 'static_findings'} model\n/nonexistent/repo\n")
    code = main(["audit", "--batch", str(listing), "--static-only", "--workers", "2", "--out", str(tmp_path / "o"),
                 "--json"])
    index = json.loads(capsys.readouterr().out)
    assert code == 22 and index["exit_code"] == 22  # the missing folder is an error, the worst verdict
    assert [e["verdict"] for e in index["repos"]] == ["clean", "findings", "error"]


def test_downloads_asked_of_the_broker_are_reported(tmp_path):
    """The entrypoint asks for a URL the broker refuses (a non-public address): the
    audit lists what was asked, and the refusal makes the entrypoint "failed"."""
    from safehub._audit._run import audit_repo

    r = audit_repo(str(AUDIT / "downloads"), timeout_s=300)
    assert (r["verdict"], r["exit_code"]) == ("failed", 21)
    [e] = r["dynamic"]["entrypoints"]
    assert (e["name"], e["status"]) == ("fetched", "failed")
    assert e["error"]["type"] == "FetchError" and e["error"]["exit_code"] == 3
    assert e["downloads"] == {"asked": ["https://127.0.0.1:9/audit-fixture/weights.pth"], "fetched": []}
    assert len(e["sandbox_runs"]) == 1 and e["resources"]["exit_status"] == 0  # the runner reported, then the host refused
    cats = {(f["category"], f["severity"]) for f in r["static"]["findings"]}
    assert {("download", "info"), ("url", "info")} <= cats
