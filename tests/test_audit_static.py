"""safehub audit, the parts that run nothing: the pickle opcode walk, the static scan
of fixture repos, the verdict and exit codes, and escaping in the human views.

Pickles here are written by this test process (pickle.dumps of an object whose
__reduce__ names os.system) and only ever walked, never unpickled."""

from __future__ import annotations

import json
import os
import pickle
import pickletools
import shutil
from pathlib import Path

import pytest
import torch

from safehub._cli import main
from safehub._audit import _pickles
from safehub._audit._pickles import MAX_GLOBALS, classify_global, scan_pickle_file
from safehub._audit._render import format_markdown, format_text, md, show
from safehub._audit._run import audit_repo
from safehub._audit._verdict import EXIT_CODES, decide, worst

AUDIT = Path(__file__).resolve().parent / "fixtures" / "audit"


class _System:
    """Pickles as a call of os.system: what a malicious checkpoint holds."""

    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _names(entry):
    return {g["name"]: g["class"] for g in entry["globals"]}


@pytest.mark.parametrize("protocol", range(0, pickle.HIGHEST_PROTOCOL + 1))
def test_pickle_walk_finds_os_system_at_every_protocol(tmp_path, protocol):
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"weights": [1.0, 2.0], "payload": _System()}, protocol=protocol))
    entry = scan_pickle_file(path, "evil.pkl")
    assert entry["unreadable"] is None and entry["truncated"] == []
    assert _names(entry) == {f"{os.system.__module__}.system": "dangerous"}  # posix.system on Linux


def test_pickle_walk_resolves_stack_global_through_the_memo(tmp_path):
    # Protocol 4 memoizes the module string once and fetches it back with BINGET for
    # the second global: the walk must follow the memo.
    data = pickle.dumps([_System(), _System(), os.getcwd], protocol=4)
    data = pickletools.optimize(data)  # drops unused PUTs; the needed memo traffic stays
    (tmp_path / "m.pkl").write_bytes(data)
    entry = scan_pickle_file(tmp_path / "m.pkl", "m.pkl")
    assert _names(entry) == {"posix.system": "dangerous", "posix.getcwd": "dangerous"}
    assert [g["count"] for g in entry["globals"]] == [1, 1]  # the second _System reuses the memo


def test_zip_torch_checkpoint_lists_its_globals(tmp_path):
    clean = tmp_path / "clean.pt"
    torch.save({"w": torch.zeros(2)}, clean)
    entry = scan_pickle_file(clean, "clean.pt")
    assert entry["format"] == "torch-zip" and entry["pickles"] == 1
    assert set(_names(entry).values()) == {"torch"}
    assert "torch._utils._rebuild_tensor_v2" in _names(entry)

    evil = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(2), "x": _System()}, evil)
    names = _names(scan_pickle_file(evil, "evil.pt"))
    assert names["posix.system"] == "dangerous"


def test_legacy_torch_file_is_walked_past_its_header_pickles(tmp_path):
    path = tmp_path / "legacy.pth"
    torch.save({"x": _System()}, path, _use_new_zipfile_serialization=False)
    entry = scan_pickle_file(path, "legacy.pth")
    assert entry["format"] == "pickle" and entry["unreadable"] is None
    assert _names(entry)["posix.system"] == "dangerous"


def test_classify_global():
    assert classify_global("builtins.eval") == "dangerous"
    assert classify_global("subprocess.Popen") == "dangerous"
    assert classify_global("torch._utils._rebuild_tensor_v2") == "torch"
    assert classify_global("collections.OrderedDict") == "torch"
    assert classify_global("mypkg.layers.Block") == "other"
    assert classify_global("torch.hub.load") == "other"  # not what torch.save writes for tensors


# --- red team: hostile pickles ---------------------------------------------------------


def test_deeply_nested_pickle_is_walked_without_recursion(tmp_path, monkeypatch):
    # Nested lists past the stack bound (lowered here to keep the test fast): pickle.dumps
    # itself would recurse, so the opcodes are written by hand.
    monkeypatch.setattr(_pickles, "MAX_STACK", 2_000)
    depth = 50_000
    data = b"\x80\x02" + b"]" * depth + b"c" + b"os\nsystem\n" + b"a" * depth + b"."
    (tmp_path / "deep.pkl").write_bytes(data)
    entry = scan_pickle_file(tmp_path / "deep.pkl", "deep.pkl")
    assert _names(entry) == {"os.system": "dangerous"}  # past the stack bound, still seen
    assert entry["truncated"] == ["stack"] and entry["unreadable"] is None


def test_huge_memo_is_bounded_and_reported(tmp_path, monkeypatch):
    monkeypatch.setattr(_pickles, "MAX_MEMO", 1_000)  # the real bound is 100k; the logic is the same
    n = 1_000 + 50
    body = b"".join(b"X\x01\x00\x00\x00a" + b"r" + i.to_bytes(4, "little") + b"0" for i in range(n))
    data = b"\x80\x04" + body + b"\x8c\x02os\x8c\x06system\x93N."
    (tmp_path / "memo.pkl").write_bytes(data)
    entry = scan_pickle_file(tmp_path / "memo.pkl", "memo.pkl")
    assert "memo" in entry["truncated"]
    assert _names(entry) == {"os.system": "dangerous"}  # the walk goes on past the bound


def test_many_globals_are_capped(tmp_path):
    data = b"\x80\x02" + b"".join(b"cmod%d\nf\n0" % i for i in range(MAX_GLOBALS + 10)) + b"N."
    (tmp_path / "g.pkl").write_bytes(data)
    entry = scan_pickle_file(tmp_path / "g.pkl", "g.pkl")
    assert len(entry["globals"]) == MAX_GLOBALS and entry["truncated"] == ["globals"]


def test_garbage_and_unresolvable_pickles_are_reported_not_raised(tmp_path):
    (tmp_path / "junk.pkl").write_bytes(b"\x80\x04\xff\xfe garbage")
    assert scan_pickle_file(tmp_path / "junk.pkl", "junk.pkl")["unreadable"]
    # STACK_GLOBAL whose strings came from somewhere the walk does not track (a tuple item)
    data = b"\x80\x04\x8c\x02os\x8c\x06system\x86\x94\x93N."
    (tmp_path / "odd.pkl").write_bytes(data)
    assert "<unresolved STACK_GLOBAL>" in _names(scan_pickle_file(tmp_path / "odd.pkl", "odd.pkl"))
    link = tmp_path / "link.pkl"
    link.symlink_to("/etc/passwd")
    assert scan_pickle_file(link, "link.pkl")["unreadable"] == "not a regular file"


# --- static scan of fixture repos --------------------------------------------------------


@pytest.fixture(scope="module")
def static_report():
    return audit_repo(str(AUDIT / "static_findings"), static_only=True)


def test_static_findings_field_by_field(static_report):
    r = static_report
    assert (r["schema"], r["schema_version"]) == ("safehub-audit", 1)
    assert r["verdict"] == "findings" and r["exit_code"] == 20
    ident = r["identity"]
    assert ident["source"] == "local" and ident["sha"] is None and ident["files"] == 1
    assert len(ident["tree_sha256"]) == 64
    got = {(f["line"], f["category"], f["severity"]) for f in r["static"]["findings"]}
    assert {
        (19, "native", "high"),  # import ctypes
        (21, "process", "high"),  # os.system
        (22, "process", "high"),  # sp.run through an alias
        (23, "process", "high"),  # from os import system as run_shell
        (24, "dynamic_code", "high"),  # eval
        (25, "dynamic_code", "high"),  # exec
        (26, "sys_path", "medium"),
        (27, "write_outside", "medium"),  # open("/etc/evil.conf", "w")
        (30, "deserialization", "high"),  # pickle.load
        (31, "deserialization", "medium"),  # torch.load without weights_only=True
        (32, "deserialization", "high"),  # torch.jit.load
        (33, "network", "medium"),  # urllib.request.urlopen
        (34, "pip_install", "high"),  # a pip install through subprocess
        (35, "native", "high"),  # ctypes.CDLL
        (15, "url", "info"),
    } <= got
    assert all(f["file"] == "hubconf.py" for f in r["static"]["findings"])
    hub = r["static"]["hubconf"]
    assert [e["name"] for e in hub["entrypoints"]] == ["model", "run_shell"]
    assert hub["entrypoints"][0]["signature"] == "(pretrained=False)"
    assert hub["dependencies"]["declared"] == ["torch"]
    assert r["static"]["imports"]["third_party"] == []
    assert r["dynamic"] == {**r["dynamic"], "ran": False, "entrypoints": [], "findings": []}
    json.dumps(r)  # JSON-able as a whole


def test_clean_repo_static_part_is_clean():
    r = audit_repo(str(AUDIT / "clean"), static_only=True)
    assert r["static"]["findings"] == [] and r["verdict"] == "clean" and r["exit_code"] == 0
    assert [e["name"] for e in r["static"]["hubconf"]["entrypoints"]] == ["tiny"]


def test_pickle_checkpoint_in_a_repo_is_a_high_finding(tmp_path):
    repo = tmp_path / "ckpt"
    shutil.copytree(AUDIT / "clean", repo)
    (repo / "weights").mkdir()
    torch.save({"state": torch.ones(2), "hook": _System()}, repo / "weights" / "model.pth")
    (repo / "link").symlink_to("/etc")
    r = audit_repo(str(repo), static_only=True)
    [ckpt] = r["static"]["pickles"]
    assert ckpt["path"] == "weights/model.pth" and ckpt["format"] == "torch-zip"
    assert {"name": "posix.system", "class": "dangerous", "count": 1} in ckpt["globals"]
    findings = [(f["file"], f["category"], f["severity"], f["detail"]) for f in r["static"]["findings"]]
    assert ("weights/model.pth", "pickle_global", "high", "posix.system") in findings
    assert ("link", "symlink", "medium", "/etc") in findings
    assert r["static"]["symlinks"] == [{"path": "link", "target": "/etc", "inside_repo": False}]
    assert r["exit_code"] == EXIT_CODES["findings"]


# --- verdict, exit codes, escaping -----------------------------------------------------


def _report(statuses=(), findings=(), error=None):
    return {"error": error, "static": {"findings": list(findings)},
            "dynamic": {"entrypoints": [{"status": s} for s in statuses], "findings": []}}


def test_verdict_and_exit_code_table():
    assert decide(_report(["ok"])) == ("clean", 0)
    assert decide(_report(["ok"], [{"severity": "info"}])) == ("clean", 0)
    assert decide(_report(["ok"], [{"severity": "medium"}])) == ("findings", 20)
    assert decide(_report(["ok", "timeout"], [{"severity": "high"}])) == ("failed", 21)
    assert decide(_report(error={"type": "FetchError"})) == ("error", 22)
    assert worst(["clean", "findings", "failed"]) == "failed" and worst([]) == "clean"


HOSTILE = "ok\u202eexe.txt\u200b\x1b[31mred\x07\u2066\ufeff\u061c\u00ad|`*<b>\n"


def test_show_and_md_print_invisible_characters_as_code_points():
    shown = show(HOSTILE)
    for raw in ("\u202e", "\u200b", "\x1b", "\x07", "\u2066", "\ufeff", "\u061c", "\u00ad", "\n"):
        assert raw not in shown
    assert "\\u202e" in shown and "\\x1b" in shown and "\\u200b" in shown and "\\x0a" in shown
    cell = md(HOSTILE)
    assert "|" not in cell.replace("\\|", "") and "<b>" not in cell and "`" not in cell.replace("\\`", "")
    assert show("x" * 1000, 10) == "x" * 10 + "..."


def test_human_views_escape_repo_names(tmp_path):
    repo = tmp_path / "hostile"
    repo.mkdir()
    (repo / "hubconf.py").write_text(
        'dependencies = ["torch"]\nimport os\n\n'
        f'def model():\n    """{HOSTILE.strip()}"""\n    os.system("x\u202ey")\n', encoding="utf-8")
    (repo / "evil\u202egnp.py").write_text("import os\nos.system('id')\n", encoding="utf-8")
    r = audit_repo(str(repo), static_only=True)
    for text in (format_text(r), format_markdown(r), json.dumps(r, ensure_ascii=True)):
        assert not any(ch in text for ch in "\u202e\u200b\x1b\x07\u2066\ufeff")
    # Markdown source doubles the backslash so that the page shows evil\u202egnp.py
    assert "evil\\\\u202egnp.py" in format_markdown(r)
    assert "evil\\u202egnp.py:2" in format_text(r)


def test_cli_writes_markdown_and_exits_with_the_verdict(tmp_path, capsys):
    out = tmp_path / "report.md"
    assert main(["audit", str(AUDIT / "static_findings"), "--static-only", "--format", "md", "--out", str(out)]) == 20
    stdout = capsys.readouterr().out
    assert "FINDINGS (exit 20)" in stdout and f"report written to {out}" in stdout
    text = out.read_text()
    assert text.startswith("# safehub audit: ") and "| high | process | hubconf.py:21 |" in text
    assert main(["audit", str(AUDIT / "clean"), "--static-only", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["verdict"] == "clean"
    assert main(["audit", str(AUDIT / "clean"), "-e", "nope", "--json"]) == 6
    assert json.loads(capsys.readouterr().out)["error"] == "EntrypointNotFoundError"


def test_static_scan_survives_a_hostile_tree(tmp_path):
    """FIFOs, link loops, links to host files, a file nested past the parser's depth,
    an oversized file: listed or flagged, never followed, never a crash or a hang."""
    repo = tmp_path / "hostile"
    shutil.copytree(AUDIT / "clean", repo)
    os.mkfifo(repo / "weights.pkl")  # a pickle name on a FIFO: opening it would block
    (repo / "loop").symlink_to(repo)  # a directory link back to the repo
    (repo / "passwd.py").symlink_to("/etc/passwd")
    (repo / "deep.py").write_text("x = " + "(" * 100_000 + "1" + ")" * 100_000 + "\n")
    (repo / "big.py").write_text("# x\n" * (3 * 1024 * 1024 // 4))
    r = audit_repo(str(repo), static_only=True)
    static = r["static"]
    assert static["pickles"] == []
    assert {s["path"] for s in static["symlinks"]} == {"loop", "passwd.py"}
    assert {"file": "deep.py", "category": "unparsable"}.items() <= next(
        f for f in static["findings"] if f["file"] == "deep.py").items()
    assert static["files"]["truncated"] is True  # big.py was over the per-file bound
    assert ("passwd.py", "symlink", "medium") in {(f["file"], f["category"], f["severity"]) for f in static["findings"]}


def test_github_repo_identity_is_pinned(tmp_path, monkeypatch):
    """A repo from (loopback) GitHub: the full SHA the ref resolved to, the archive's
    sha256 and size from the verified cache; auditing never adds it to the trusted list."""
    from github_server import FakeGitHub

    with FakeGitHub() as gh:
        for key, value in gh.env().items():
            monkeypatch.setenv(key, value)
        repo = gh.add_repo("alice", "model")
        head = repo.commit({"hubconf.py": (AUDIT / "static_findings" / "hubconf.py").read_bytes()}, branch="main")
        hub = tmp_path / "hub"
        r = audit_repo("alice/model:main", static_only=True, hub_dir=hub)
        host_key = gh.host_key
    ident = r["identity"]
    assert (ident["repo"], ident["source"], ident["ref"], ident["resolved_ref"], ident["sha"]) == (
        "alice/model", "github", "main", "main", head)
    assert ident["host"] == host_key
    assert len(ident["archive_sha256"]) == 64 and ident["archive_bytes"] > 0
    assert ident["files"] == 1 and r["verdict"] == "findings"
    assert not (hub / "trusted_list.json").exists()


def test_report_doc_names_every_category_kind_and_exit_code():
    """docs/audit-report.md stays in step with the code it documents."""
    import re

    from safehub._audit import _static, _verdict
    from safehub._contract import AUDIT_KINDS

    doc = (Path(__file__).resolve().parent.parent / "docs" / "audit-report.md").read_text(encoding="utf-8")
    static_src = Path(_static.__file__).read_text() + Path(_verdict.__file__).read_text()
    categories = set(re.findall(r'"category": "([a-z_]+)"', static_src)) | {c for c, _s, _w in _static._CALLS.values()}
    categories |= set(re.findall(r'_finding\(name, e, "([a-z_]+)"', static_src))
    categories |= {"pickle_global", "pickle_unread", "symlink", "write_outside", "url", "unparsable", "telemetry"}
    missing = sorted(c for c in categories if f"`{c}`" not in doc)
    assert not missing, missing
    assert not [k for k in AUDIT_KINDS if k not in ("dropped", "summary") and f"| `{k}` |" not in doc]
    for verdict, code in EXIT_CODES.items():
        assert f"| {code} | `{verdict}` |" in doc


def test_zip_of_many_pickles_is_bounded_in_total(tmp_path, monkeypatch):
    import zipfile

    monkeypatch.setattr(_pickles, "MAX_ZIP_PICKLE_BYTES", 3000)
    path = tmp_path / "bomb.pt"
    member = b"\x80\x02" + b"N0" * 1000 + b"cos\nsystem\n."
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for i in range(50):
            zf.writestr(f"archive{i}/data.pkl", member)
    entry = scan_pickle_file(path, "bomb.pt")
    assert entry["format"] == "torch-zip" and "bytes" in entry["truncated"]
    assert entry["pickles"] == 2  # the third member is past the total budget


def test_a_process_started_below_subprocess_is_a_static_finding(tmp_path):
    """Red team round 3: a hubconf calling _posixsubprocess.fork_exec (no audit event,
    no subprocess/os call) was audited "clean"."""
    repo = tmp_path / "spawner"
    repo.mkdir()
    src = Path(__file__).resolve().parent / "fixtures" / "redteam3" / "audit_spawner_hubconf.py"
    (repo / "hubconf.py").write_text(src.read_text())
    r = audit_repo(str(repo), static_only=True)
    found = {(f["category"], f["severity"], f.get("line")) for f in r["static"]["findings"]}
    assert ("process", "high", 3) in found, r["static"]["findings"]  # the import
    assert any(f["category"] == "process" and "fork_exec" in json.dumps(f) for f in r["static"]["findings"])
    assert r["verdict"] == "findings" and r["exit_code"] == 20
