"""host_info is remembered while the stat of what it read stays the same (a warm load
must not re-parse every host METADATA file), in the process and on disk for the next
one (checked fail-closed: a tampered memo is never used), and minimal_paths' faster
form gives what the plain definition gives."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from safehub._env import _host
from safehub._env._host import host_info, minimal_paths
from safehub._env._host_memo import load_memo, memo_name


def _reference(paths):
    out: list[Path] = []
    for p in paths:
        if any(p == q or q in p.parents for q in out):
            continue
        out = [q for q in out if p not in q.parents]
        out.append(p)
    return tuple(out)


def test_minimal_paths_matches_the_definition() -> None:
    rng = random.Random(0)
    parts = ["a", "b", "c", "ab"]
    for _ in range(300):
        paths = [Path("/" + "/".join(rng.choice(parts) for _ in range(rng.randint(0, 4)))) for _ in range(rng.randint(0, 12))]
        assert minimal_paths(paths) == _reference(paths), paths


def test_host_info_is_reused_until_what_it_read_changes(tmp_path: Path, monkeypatch) -> None:
    first = host_info()
    assert host_info() is first
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))  # sys.path changed: computed again
    second = host_info()
    assert second is not first and host_info() is second
    (site / "newpkg-1.0.dist-info").mkdir()  # a package installed there: its folder changed
    os.utime(site, ns=(1, 1))
    assert host_info() is not second
    assert sys.path[0] == str(site) and _host._HOST_MEMO


# --- the memo on disk, for the next process -----------------------------------


def _yaml() -> tuple[str, str]:
    """PyYAML (a test dependency next to torch, outside its family): version, dist-info."""
    import importlib.metadata as md

    dist = md.distribution("PyYAML")
    return dist.version, os.path.realpath(str(dist._path))  # type: ignore[attr-defined]


def _fresh_process(monkeypatch) -> None:
    """What a new process starts with: no in-process memo."""
    monkeypatch.setattr(_host, "_HOST_MEMO", [])


def test_a_fresh_process_reads_the_inspection_from_disk(tmp_path: Path, monkeypatch) -> None:
    _fresh_process(monkeypatch)
    first = host_info(tmp_path)
    assert (tmp_path / "memo" / memo_name()).is_file()
    assert oct((tmp_path / "memo" / memo_name()).stat().st_mode & 0o777) == "0o600"
    _fresh_process(monkeypatch)
    calls: list[int] = []
    real = _host._host_info
    monkeypatch.setattr(_host, "_host_info", lambda read: calls.append(1) or real(read))
    again = host_info(tmp_path)
    assert calls == [] and again == first  # not inspected again, and the same answer


def test_the_disk_memo_is_ignored_when_what_it_read_changed(tmp_path: Path, monkeypatch) -> None:
    _fresh_process(monkeypatch)
    host_info(tmp_path)
    doc = json.loads((tmp_path / "memo" / memo_name()).read_text())
    victim = doc["read"][0]  # a METADATA file it parsed: edited in place since
    doc["fingerprint"][2][0][1][1] += 1  # its recorded ctime no longer matches
    (tmp_path / "memo" / memo_name()).write_text(json.dumps(doc))
    _fresh_process(monkeypatch)
    calls: list[int] = []
    real = _host._host_info
    monkeypatch.setattr(_host, "_host_info", lambda read: calls.append(1) or real(read))
    host_info(tmp_path)
    assert calls == [1], victim
    assert json.loads((tmp_path / "memo" / memo_name()).read_text())["fingerprint"] != doc["fingerprint"]


@pytest.mark.parametrize("tamper", [
    # A host folder that is not on sys.path would be bound into every sandbox.
    lambda f: f["share_paths"].append(str(Path.home() / ".ssh")),
    lambda f: f["family_dists"].append(["torch", "2.0", "/etc/evil.dist-info"]),
    lambda f: f["packages"].update({"not-torch-family": "1.0"}),
    lambda f: f["packages"].update({"torch": "2.0; rm -rf"}),
    lambda f: f.update({"extra": 1}),
    lambda f: f["constraints"].append(["not", "a", "string"]),
    # A package next to torch (on sys.path, so only the family check can refuse it): its
    # files would be linked into the family folder and shown to every sandbox.
    lambda f: f["family_dists"].append(["pyyaml", _yaml()[0], _yaml()[1]]),
    # A family member whose recorded version is not what its dist-info says.
    lambda f: f["family_dists"].__setitem__(0, [f["family_dists"][0][0], "0.0.1", f["family_dists"][0][2]]),
], ids=["share-path-off-sys.path", "dist-outside-shares", "non-family-package", "bad-version", "extra-field",
        "bad-constraint", "package-next-to-torch", "version-not-its-dist-info"])
def test_a_tampered_disk_memo_is_never_used(tmp_path: Path, monkeypatch, tamper) -> None:
    _fresh_process(monkeypatch)
    honest = host_info(tmp_path)
    path = tmp_path / "memo" / memo_name()
    doc = json.loads(path.read_text())
    tamper(doc["fields"])
    path.write_text(json.dumps(doc))
    assert load_memo(path, _host._fingerprint, verify=_host._check_family) is None
    _fresh_process(monkeypatch)
    assert host_info(tmp_path) == honest  # inspected again, not taken from the file


def test_the_disk_memo_is_for_one_interpreter_only(tmp_path: Path, monkeypatch) -> None:
    _fresh_process(monkeypatch)
    host_info(tmp_path)
    path = tmp_path / "memo" / memo_name()
    doc = json.loads(path.read_text())
    doc["interpreter"]["executable"] = "/usr/bin/python-other"
    path.write_text(json.dumps(doc))
    assert load_memo(path, _host._fingerprint) is None
    path.unlink()
    path.symlink_to(tmp_path / "elsewhere.json")  # never read through a link
    assert load_memo(path, _host._fingerprint) is None


def test_the_script_folder_counts_only_when_it_holds_package_metadata(tmp_path: Path, monkeypatch) -> None:
    """sys.path[0] is each program's own folder: two scripts in different folders share
    one memo, unless a folder holds package metadata (which would change the answer)."""
    if sys.flags.safe_path:
        pytest.skip("sys.path[0] is not a script folder under -P")  # pragma: no cover
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    monkeypatch.setattr(sys, "path", [str(a), *sys.path[1:]])
    fa = _host._fingerprint([])
    monkeypatch.setattr(sys, "path", [str(b), *sys.path[1:]])
    assert _host._fingerprint([]) == fa
    (b / "torch-9.9.dist-info").mkdir()
    assert _host._fingerprint([]) != fa


def test_each_interpreter_has_a_memo_file_of_its_own(monkeypatch) -> None:
    """Venvs sharing one SAFEHUB_HOME would otherwise overwrite each other's memo."""
    mine = memo_name()
    monkeypatch.setattr(sys, "executable", "/other/venv/bin/python")
    assert memo_name() != mine and memo_name().startswith("host-info-") and memo_name().endswith(".json")


def test_the_memo_check_reads_every_installed_dist_info_as_importlib_metadata_does() -> None:
    """The memo check parses only METADATA's header block, once: for every
    distribution installed here it must find what ``importlib.metadata`` finds."""
    import importlib.metadata as md

    checked = 0
    for dist in md.distributions():
        path = getattr(dist, "_path", None)
        if path is None or not str(path).endswith(".dist-info"):
            continue
        light = _host._HeaderDist(Path(path))
        assert (light.metadata["Name"], light.version, light.requires) == (
            dist.metadata["Name"], dist.version, dist.requires), path
        checked += 1
    assert checked >= 20  # torch, its requirements, the test tools


def test_the_memo_check_reads_headers_only_and_stops_at_the_first_empty_line(tmp_path: Path) -> None:
    info = tmp_path / "x-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\r\nName: x\r\nVersion: 1.0\r\nRequires-Dist: a\r\n"
                                   "Requires-Dist: b ;\r\n extra == 'dev'\r\n\r\nRequires-Dist: not-a-header\n",
                                   encoding="utf-8")
    light = _host._HeaderDist(info)
    assert light.version == "1.0" and [" ".join(r.split()) for r in light.requires or []] == ["a", "b ; extra == 'dev'"]
    (info / "METADATA").write_bytes(b"Name: x\nVersion: 1\xff\n")  # not UTF-8: a version no dist-info has
    assert _host._HeaderDist(info).version != "1"


def test_requirements_skipped_unparsed_are_exactly_extra_only_ones() -> None:
    """``_base_requires`` skips `; extra == "x"` lines without parsing them: each
    such line installed here must be one packaging evaluates false without extras,
    and a marker with anything more must not be skipped."""
    import importlib.metadata as md

    from packaging.requirements import Requirement

    skipped = 0
    for dist in md.distributions():
        for line in dist.requires or ():
            if _host._EXTRA_ONLY.search(line):
                req = Requirement(line)
                assert req.marker is not None and not req.marker.evaluate({"extra": ""}), line
                skipped += 1
    assert skipped >= 10
    for line in ('a; extra == ""', 'a; extra == "x" or python_version >= "3"', "a; python_version >= '3'",
                 'a; extra == "x" and extra == "y" or os_name != "x"', 'a ; extra=="x" # c'):
        assert not _host._EXTRA_ONLY.search(line), line
    for line in ('a; extra == "x"', "a>=1 ; extra=='dev' ", 'a[b]; extra == "x-y.z"'):
        assert _host._EXTRA_ONLY.search(line) and not Requirement(line).marker.evaluate({"extra": ""}), line


def test_the_memo_check_never_blocks_on_a_fifo_named_metadata(tmp_path: Path) -> None:
    info = tmp_path / "x-1.0.dist-info"
    info.mkdir()
    os.mkfifo(info / "METADATA")  # a memo names the path; opening a FIFO to read would wait for a writer
    assert _host._HeaderDist(info).version == "None"


# Lines the fast path of _base_required_names must answer as packaging does, or
# leave to packaging (None). "" is "requires nothing without extras".
TRICKY_REQUIRES = [
    "filelock", "typing-extensions>=4.10.0", "mpmath<1.4,>=1.1.0", "gmpy2 (>=2.1.0a4) ; extra == 'gmpy'",
    "MarkupSafe>=2.0", "a[b,c]>=1", "a [ b ] (==1.0)",
    "x; (python_version < '3.14') and extra == 'test-full'",
    "x; python_version < \"3.10\" and extra == \"core\"",
    "x; sys_platform != 'cygwin' and python_version >= '3' and extra == 'test'",
    # not false without extras: packaging decides (or the fast path must agree)
    "x; python_version >= '3' or sys_platform == 'linux' and extra == 'y'",
    "x; (python_version >= '3') or (sys_platform == 'linux') and extra == 'y'",
    "x; (python_version >= '3') or (sys_platform == 'y') and extra == 'y'",
    "x; ('(' == '(') or (sys_platform == 'linux') and extra == 'y'",
    "x; platform_release == ' or ' and extra == 'y'",
    "x; extra == ''", "x; extra == 'y' or python_version >= '3'", "x; 'y' == extra",
    "x; python_version >= '3'", "x; python_version < '3'", "x @ https://example.invalid/x.whl",
    "not a requirement!", "x>=", "-e x", "x==1.*", "x===1", "x~=1.2",
]


def test_the_fast_requires_path_agrees_with_packaging() -> None:
    import importlib.metadata as md

    from packaging.requirements import InvalidRequirement, Requirement

    from safehub._env._host import _fast_required_name

    lines = TRICKY_REQUIRES + [line for d in md.distributions() for line in d.requires or ()]
    fast = 0
    for line in lines:
        got = _fast_required_name(line)
        if got is None:
            continue
        fast += 1
        try:
            req = Requirement(line)
        except InvalidRequirement:
            pytest.fail(f"the fast path answered {got!r} for a line packaging refuses: {line!r}")
        want = req.name if req.marker is None or req.marker.evaluate({"extra": ""}) else ""
        assert got == want, line
    assert fast > 0.8 * len(lines)  # the point: most lines never reach packaging


def test_a_fresh_memo_check_does_not_import_packaging(tmp_path: Path) -> None:
    """The fresh-process memo check of torch's family answers without packaging."""
    script = ("import sys, safehub._env._host as h; h.host_info(sys.argv[1]); h._HOST_MEMO.clear(); "
              "h.host_info(sys.argv[1]); print('packaging' in sys.modules)")
    first = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, check=True)
    again = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, check=True)
    assert first.stdout.strip() == "True"  # the first inspection parses with packaging
    assert again.stdout.strip() == "False", again.stderr  # a memo hit's check does not


def test_metadata_headers_are_what_the_email_parser_reads(tmp_path: Path) -> None:
    """The plain header reader gives the email parser's answers: every METADATA
    installed here, plus folds, repeats, case and odd lines (those go to the parser)."""
    import importlib.metadata as md
    from email.parser import HeaderParser

    from safehub._env._host import _metadata_headers

    crafted = [
        "Metadata-Version: 2.1\nName:   spaced \nVersion:\t1.0\nRequires-Dist: a\nrequires-dist: b>=1; extra == 'x'\n",
        "Name: folded\nSummary: one\n  two\n\tthree\nVersion: 2\n\nbody: not a header\n",
        "Name: x\r\nVersion: 3\r\nRequires-Dist: c\r\n",
        " leading fold\nName: y\n", "not a header line\nName: z\n", "Name: colon: inside\nVersion:\n",
        "Name: \u00e9t\u00e9\nVersion: 1\n",
    ]
    paths = []
    for i, text in enumerate(crafted):
        path = tmp_path / f"m{i}"
        path.write_bytes(text.encode())
        paths.append(path)
    for dist in md.distributions():
        meta = getattr(dist, "_path", None)
        if meta is not None and (Path(meta) / "METADATA").is_file():
            paths.append(Path(meta) / "METADATA")
    assert len(paths) > 20
    for path in paths:
        text = path.read_bytes().decode("utf-8", errors="replace")
        head = []
        for line in text.splitlines(keepends=True):
            if not line.rstrip("\r\n"):
                break
            head.append(line)
        want = HeaderParser().parsestr("".join(head))
        got = _metadata_headers(path)
        for name in ("Name", "Version", "Requires-Dist", "Summary", "Metadata-Version", "requires-dist"):
            assert got[name] == want[name], (path, name)
            assert got.get_all(name) == want.get_all(name), (path, name)
        assert got.get("Nope", "d") == want.get("Nope", "d") == "d"
