"""The runner's audit hook (runners/_audit_hook.py) and the host's reading of its
telemetry (safehub/_audit/_events.py), attacked from both sides.

The hook runs here in a plain subprocess (no sandbox, no torch: it is standard
library only), so these tests are fast; tests/test_audit_e2e.py runs it in the real
sandbox. The scripts below stand in for repo code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from safehub._audit._events import read_audit_events
from safehub._audit._render import show
from safehub._audit._verdict import dynamic_findings
from safehub._contract import AUDIT_FILE, MAX_AUDIT_EVENTS, MAX_AUDIT_FILE_BYTES, MAX_AUDIT_STRING
from safehub._resources import runner_dir

PRELUDE = """
import os, sys
sys.path.insert(0, {runners!r})
import _audit_hook
_audit_hook.start({out!r}, {repo!r}, {job!r})
sys.path.insert(0, {repo!r})  # as the runner does before importing hubconf
_audit_hook.set_phase("entrypoint")
"""


def run_as_repo(tmp_path: Path, body: str, *, finish: bool = True) -> dict:
    """Run ``body`` as repo code under the hook; return the host's reading of the telemetry."""
    job = tmp_path / "job"
    out, repo = job / "out", tmp_path / "repo"
    for d in (out, repo, job / "home"):
        d.mkdir(parents=True, exist_ok=True)
    script = PRELUDE.format(runners=str(runner_dir()), out=str(out), repo=str(repo), job=str(job))
    script += textwrap.dedent(body)
    if finish:
        script += "\n_audit_hook.finish()\n"
    proc = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True, text=True, cwd=repo, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return read_audit_events(out)


def kinds(telemetry: dict, kind: str) -> list[dict]:
    return [e for e in telemetry["events"] if e["kind"] == kind]


def test_hook_records_what_repo_code_tries(tmp_path):
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "thirdparty_mod.py").write_text("X = 1\n")
    t = run_as_repo(tmp_path, f"""
        import socket, subprocess, ctypes, ctypes.util
        open(os.path.join(os.environ.get("HOME", "/root"), ".ssh_probe"), "a").close() if False else None
        for path in ("/nonexistent/.ssh/id_rsa",):
            try:
                open(path, "rb")
            except OSError:
                pass
        with open({str(tmp_path / "w.txt")!r}, "w") as f:
            f.write("x")
        with open("relative.txt", "w") as f:  # the cwd is the repo folder here
            f.write("x")
        os.remove({str(tmp_path / "w.txt")!r})
        s = socket.socket()
        try:
            s.connect_ex(("127.0.0.1", 9))
        finally:
            s.close()
        try:
            socket.getaddrinfo("example.invalid", 80)
        except OSError:
            pass
        subprocess.run(["/bin/true"])
        os.system("true")
        for sock in socket.socketpair():
            sock.close()
        sys.path.insert(0, {str(tmp_path / "lib")!r})
        import thirdparty_mod
        sys.path.remove({str(tmp_path / "lib")!r})
        import json  # stdlib: not listed
        ctypes.CDLL(None)
        sys.addaudithook(lambda *a: None)
    """)
    assert t["complete"] and t["skipped_lines"] == 0 and t["dropped"] == 0
    assert {"kind": "open", "phase": "entrypoint", "path": "/nonexistent/.ssh/id_rsa", "mode": "r"} in t["events"]
    assert {"kind": "refused", "phase": "entrypoint", "op": "open", "target": "/nonexistent/.ssh/id_rsa",
            "errno": "ENOENT"} in t["events"]
    assert {"kind": "open", "phase": "entrypoint", "path": str(tmp_path / "w.txt"), "mode": "w"} in t["events"]
    assert {"kind": "fs", "phase": "entrypoint", "op": "remove", "path": str(tmp_path / "w.txt")} in t["events"]
    assert {"kind": "open", "phase": "entrypoint", "path": str(tmp_path / "repo" / "relative.txt"), "mode": "w"} in t["events"]
    assert {"kind": "connect", "phase": "entrypoint", "op": "connect", "address": "127.0.0.1 9"} in t["events"]
    assert {"kind": "connect", "phase": "entrypoint", "op": "socket", "address": "AF_INET"} in t["events"]
    assert [e for e in kinds(t, "connect") if e["op"] == "socket"] == [  # socketpair (AF_UNIX) is not listed
        {"kind": "connect", "phase": "entrypoint", "op": "socket", "address": "AF_INET"}]
    assert {"kind": "dns", "phase": "entrypoint", "host": "example.invalid"} in t["events"]
    assert [(e["op"], e["target"]) for e in kinds(t, "subprocess")] == [("popen", "/bin/true"), ("system", "true")]
    assert [e["module"] for e in kinds(t, "import")] == ["thirdparty_mod"]
    assert [(e["op"], e["path"]) for e in kinds(t, "sys_path")] == [("add", str(tmp_path / "lib")),
                                                                    ("remove", str(tmp_path / "lib"))]
    assert kinds(t, "ctypes") == [{"kind": "ctypes", "phase": "entrypoint", "name": ""}]
    assert kinds(t, "hook") == [{"kind": "hook", "phase": "entrypoint", "op": "sys.addaudithook"}]
    assert t["counts"]["subprocess"] == 2 and t["total"] >= len(t["events"])
    # what the verdict makes of it
    entry = {"name": "e", "status": "ok", "telemetry": t, "job_roots": [str(tmp_path / "job")]}
    cats = {(f["category"], f["severity"]) for f in dynamic_findings(entry, str(tmp_path / "repo"))}
    assert {("secrets", "high"), ("network", "high"), ("process", "high"), ("write_outside", "high"),
            ("refused", "medium"), ("native", "medium"), ("sys_path", "medium"), ("tamper", "high"),
            ("import", "info")} <= cats


def test_hostile_strings_are_bounded_and_escaped(tmp_path):
    t = run_as_repo(tmp_path, """
        name = "/nonexistent/\\u202eevil\\u200b\\x1b[2J\\x07" + "A" * 100000
        for p in (name, name.encode("utf-8", "surrogatepass")[:200]):
            try:
                open(p, "rb")
            except (OSError, ValueError):
                pass
        try:
            open("/nonexistent/\\udcff-surrogate", "rb")
        except (OSError, ValueError):
            pass
    """)
    opens = kinds(t, "open")
    assert opens and all(len(e["path"]) <= MAX_AUDIT_STRING for e in opens)
    assert opens[0]["path"].endswith("...") and "\u202e" in opens[0]["path"]  # data kept, as data
    assert opens[-1]["path"] == "/nonexistent/\udcff-surrogate"  # a lone surrogate survives JSON as data
    for e in opens:
        shown = show(e["path"])
        assert not any(ch in shown for ch in "\u202e\u200b\x1b\x07\udcff")
        shown.encode("utf-8")  # printable: no lone surrogate left


def test_event_flood_is_capped_and_counted(tmp_path):
    t = run_as_repo(tmp_path, f"""
        for i in range({MAX_AUDIT_EVENTS + 500}):
            try:
                open("/nonexistent/flood/%d" % i, "rb")
            except OSError:
                pass
    """)
    assert len(t["events"]) == MAX_AUDIT_EVENTS
    assert t["dropped"] > 500 and t["complete"]
    assert t["counts"]["open"] == MAX_AUDIT_EVENTS + 500
    findings = dynamic_findings({"name": "e", "status": "ok", "telemetry": t, "job_roots": []}, str(tmp_path))
    assert any(f["category"] == "telemetry" and f["severity"] == "info" for f in findings)


def test_repo_tampering_with_the_recorder(tmp_path):
    """What holds: the hook cannot be removed, so restoring builtins.open or adding a
    hook of one's own does not silence it. What does not: closing its descriptor stops
    the writing (the host then sees no closing line), and forged lines are read as
    telemetry (only lines that break the contract are skipped and counted)."""
    t = run_as_repo(tmp_path, f"""
        import builtins, io, _io, gc
        builtins.open = io.open = _io.open          # undo the refusal wrappers
        sys.addaudithook(lambda e, a: None)         # a hook of its own
        try:
            open("/nonexistent/after-restore", "rb")
        except OSError:
            pass
        fd = os.open({str(tmp_path / "job" / "out" / AUDIT_FILE)!r}, os.O_WRONLY | os.O_APPEND)
        os.write(fd, b'{{"kind": "open", "phase": "hubconf", "path": "/forged", "mode": "r"}}\\n')
        os.write(fd, b'{{"kind": "exec_everything", "x": 1}}\\nnot json\\n' + b"[" * 5000 + b"\\n")
        os.write(fd, b'{{"kind": "open", "path": 7, "mode": "r"}}\\n')
        os.close(fd)
        rec = _audit_hook._recorder
        os.close(rec.fd)                            # silence the recorder
        open("/nonexistent/after-close", "rb") if False else None
        try:
            open("/nonexistent/after-close", "rb")
        except OSError:
            pass
    """)
    paths = [e["path"] for e in kinds(t, "open")]
    assert "/nonexistent/after-restore" in paths  # the hook still saw it
    assert kinds(t, "hook")
    assert "/forged" in paths  # forged lines that fit the contract are indistinguishable: telemetry
    assert "/nonexistent/after-close" not in paths
    assert t["skipped_lines"] == 4 and not t["complete"]  # no closing line: the writing was cut
    findings = dynamic_findings({"name": "e", "status": "ok", "telemetry": t, "job_roots": []}, str(tmp_path))
    assert {(f["category"], f["severity"]) for f in findings} >= {("telemetry", "medium"), ("tamper", "high")}


def test_no_telemetry_file_without_the_hook(tmp_path):
    """A normal load never installs the hook: no file, nothing to read."""
    (tmp_path / "out").mkdir()
    t = read_audit_events(tmp_path / "out")
    assert t["events"] == [] and not t["complete"] and "did not write" in t["unreadable"]


# --- the host's reader against files repo code could leave -------------------------------


def test_reader_bounds_a_huge_file(tmp_path):
    line = json.dumps({"kind": "dns", "phase": "entrypoint", "host": "h" * 400}) + "\n"
    with open(tmp_path / AUDIT_FILE, "w") as f:
        for i in range(MAX_AUDIT_FILE_BYTES // len(line) + 100):
            f.write(line.replace("hhhh", f"{i:04d}", 1))
    t = read_audit_events(tmp_path)
    assert t["truncated"] and len(t["events"]) <= MAX_AUDIT_EVENTS and t["dropped"] > 0


@pytest.mark.parametrize("make", ["symlink", "fifo", "hardlink"])
def test_reader_refuses_non_regular_files(tmp_path, make):
    target = tmp_path / "secret.txt"
    target.write_text(json.dumps({"kind": "dns", "phase": "hubconf", "host": "leak"}) + "\n")
    out = tmp_path / "out"
    out.mkdir()
    if make == "symlink":
        (out / AUDIT_FILE).symlink_to(target)
    elif make == "fifo":
        os.mkfifo(out / AUDIT_FILE)
    else:
        os.link(target, out / AUDIT_FILE)
    t = read_audit_events(out)
    assert t["events"] == [] and t["unreadable"]


def test_reader_keeps_only_contract_fields(tmp_path):
    (tmp_path / AUDIT_FILE).write_text("\n".join([
        json.dumps({"kind": "open", "phase": "entrypoint", "path": "/a", "mode": "r", "extra": "x" * 100}),
        json.dumps({"kind": "summary", "phase": "x", "counts": {"open": 3, "bogus": 9, "dns": -1}, "total": 3}),
        json.dumps({"kind": "dropped", "count": True}),
        json.dumps({"kind": "open", "phase": "weird", "path": "/b", "mode": "r"}),
    ]) + "\n")
    t = read_audit_events(tmp_path)
    assert t["events"] == [{"kind": "open", "phase": "entrypoint", "path": "/a", "mode": "r"},
                           {"kind": "open", "phase": "unknown", "path": "/b", "mode": "r"}]
    assert t["counts"] == {"open": 3} and t["total"] == 3 and t["complete"] and t["skipped_lines"] == 1


def test_hostile_argument_objects_run_no_repo_code_inside_the_hook(tmp_path):
    """Event arguments built from subclasses with their own __str__/__iter__/__fspath__:
    the hook shows their type instead of calling them, and the operation goes on."""
    t = run_as_repo(tmp_path, """
        import subprocess
        calls = []
        class Evil(str):
            def __str__(self):
                calls.append("str")
                raise RuntimeError("boom")
        class EvilList(list):
            def __iter__(self):
                calls.append("iter")
                return iter(["/bin/true"])
        nested = []
        for _ in range(10000):
            nested = [nested]
        try:
            subprocess.run(EvilList(["/bin/true"]))
        except Exception:
            pass
        try:
            open(Evil("/nonexistent/evil-str"), "rb")
        except OSError:
            pass
        try:
            os.system(nested)
        except TypeError:
            pass
        assert "str" not in calls, calls
    """)
    assert [e["path"] for e in kinds(t, "open")] == ["/nonexistent/evil-str"]
    assert t["complete"]


def test_audit_is_opt_in_on_the_job_request():
    """Normal loads never ask for the hook; only safehub audit's jobs carry the flag."""
    from safehub._jobs import JobRequest, _request_json

    assert "audit" not in _request_json(JobRequest(action="load", repo_dir=Path("/repo"), entrypoint="m"))
    assert _request_json(JobRequest(action="load", repo_dir=Path("/repo"), entrypoint="m", audit=True))["audit"] is True
    runner = (runner_dir() / "safehub_runner.py").read_text()
    assert 'if request.get("audit") and action == "load":' in runner  # the only place the hook is started
    assert runner.count("_audit_hook.start(") == 1


def test_importing_safehub_and_its_audit_cli_imports_neither_torch_nor_ray():
    code = ("import sys, safehub, safehub._audit, safehub._cli; safehub._cli.build_parser(); "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'ray'}))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stderr


def test_a_direct_fork_exec_is_recorded(tmp_path):
    """Red team round 3: _posixsubprocess.fork_exec raises no audit event; the hook
    wraps it, so a repo starting /bin/sh below subprocess is seen."""
    t = run_as_repo(tmp_path, """
        import _posixsubprocess
        r, w = os.pipe()
        pid = _posixsubprocess.fork_exec([b"/bin/sh", b"-c", b"true"], [b"/bin/sh"], True, (), None, None,
                                         -1, -1, -1, -1, -1, -1, r, w, True, False, 0, None, None, None, -1, None, False)
        os.waitpid(pid, 0)
    """)
    ops = [e["op"] for e in kinds(t, "subprocess")]
    assert ops == ["fork_exec"], t["events"]
