"""``safehub doctor``'s bytecode check (safehub/_bytecode.py): which of safehub's
and the runner's modules Python would compile from source at each import."""

from __future__ import annotations

import json
import os
import py_compile
from pathlib import Path

from safehub._bytecode import bytecode_report, stale_modules


def _module(folder: Path, name: str, text: str = "X = 1\n") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def test_current_missing_edited_and_foreign_bytecode(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    current = _module(pkg, "current.py")
    py_compile.compile(str(current), doraise=True)
    _module(pkg, "never_compiled.py")
    edited = _module(pkg, "edited.py")
    py_compile.compile(str(edited), doraise=True)
    edited.write_text("X = 22\n")  # another size: the .pyc no longer matches
    os.utime(edited, (1, 1))
    foreign = _module(pkg / "sub", "foreign.py")
    cached = Path(py_compile.compile(str(foreign), doraise=True))
    cached.write_bytes(b"\x00\x00\r\n" + cached.read_bytes()[4:])  # another Python's magic number
    hashed = _module(pkg, "hashed.py")
    py_compile.compile(str(hashed), doraise=True, invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH)

    count, stale = stale_modules([pkg])
    assert count == 5  # the __pycache__ folders are not walked as modules
    assert sorted(Path(p).name for p in stale) == ["edited.py", "foreign.py", "never_compiled.py"]


def test_the_report_says_who_pays_and_how_to_fix_it(tmp_path: Path) -> None:
    host, runners = tmp_path / "host", tmp_path / "runners"
    py_compile.compile(str(_module(host, "a.py")), doraise=True)
    _module(host, "b.py")  # stale on the host
    py_compile.compile(str(_module(runners, "r.py")), doraise=True)

    writing = bytecode_report(host, runners, writes=True)
    assert writing["modules"] == 3 and writing["stale"] == 1 and writing["stale_runner"] == 0
    assert writing["note"] is None  # the host writes b's bytecode at its next import
    json.dumps(writing)

    not_writing = bytecode_report(host, runners, writes=False)
    assert "1 host module(s), in every process" in not_writing["note"]
    assert f"-m compileall -q {host} {runners}" in not_writing["note"]

    _module(runners, "s.py")  # the sandbox never writes bytecode: always reported
    assert "1 runner module(s), at every sandbox start" in bytecode_report(host, runners, writes=True)["note"]


def test_a_runner_folder_inside_the_package_is_counted_once(tmp_path: Path) -> None:
    host = tmp_path / "safehub"
    _module(host, "a.py")
    runners = host / "_runners"  # the wheel's layout
    _module(runners, "r.py")
    report = bytecode_report(host, runners, writes=True)
    assert report["modules"] == 2 and report["stale"] == 2 and report["stale_runner"] == 1


def test_doctor_counts_safehubs_own_modules() -> None:
    report = bytecode_report()
    package = Path(__file__).resolve().parent.parent / "safehub"
    assert report["modules"] > sum(1 for _ in package.rglob("*.py"))  # the runner's are counted too
    assert 0 <= report["stale"] <= report["modules"]
