"""Safe extraction: hostile archives are refused before anything touches the disk.

Each attack runs through the real get_repo path (download from the loopback
GitHub, extract, install) and checks that a victim folder outside the cache stays
byte-identical and that no cache entry or temp leftover remains."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import zipfile
from pathlib import Path

import pytest
from github_server import FakeGitHub, Symlink, build_zip

from safehub._errors import UnsafeArchiveError
from safehub._fetch import get_repo
from safehub._fetch._extract import ArchiveLimits, _link_stays_inside, extract_zip, tree_hash

HUBCONF = b"dependencies = []\ndef m():\n    return 1\n"


def snapshot(folder: Path) -> dict[str, str]:
    out = {}
    for dirpath, dirs, files in os.walk(folder):
        for name in dirs + files:
            p = Path(dirpath, name)
            st = os.lstat(p)
            data = os.readlink(p).encode() if p.is_symlink() else (p.read_bytes() if p.is_file() else b"")
            out[str(p.relative_to(folder))] = f"{stat.filemode(st.st_mode)}:{hashlib.sha256(data).hexdigest()}"
    return out


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    v = tmp_path / "victim"
    v.mkdir()
    (v / "secret.txt").write_bytes(b"do not touch\n")
    (v / "sub").mkdir()
    (v / "sub" / "keep.py").write_bytes(b"print('keep')\n")
    return v


def raw_zip(entries: list[tuple[str, bytes, int]]) -> bytes:
    """Entries as (name, data, unix mode incl. type bits); no top folder added."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data, mode in entries:
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = mode << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, data)
    return buf.getvalue()


def serve_archive(gh: FakeGitHub, archive: bytes) -> str:
    repo = gh.add_repo("mallory", "evil")
    sha = repo.commit({"hubconf.py": HUBCONF})
    repo.archive_override[sha] = archive
    return sha


def assert_refused(gh, hub: Path, victim: Path, archive: bytes, match: str, env_extra=None) -> None:
    before = snapshot(victim)
    serve_archive(gh, archive)
    with pytest.raises(UnsafeArchiveError, match=match):
        get_repo("mallory/evil", trust_repo=True, hub_dir=hub, env=gh.env(**(env_extra or {})), verbose=False)
    assert snapshot(victim) == before
    evil = hub / "repos" / gh.host_key / "mallory" / "evil"
    assert not evil.exists() or not any(evil.iterdir()), "no cache entry may survive"
    assert not any((hub / "repos" / ".tmp").iterdir()), "no temp leftovers"


REG = stat.S_IFREG | 0o644
DIR = stat.S_IFDIR | 0o755
LNK = stat.S_IFLNK | 0o777


@pytest.fixture
def gh():
    with FakeGitHub() as server:
        yield server


def test_zip_slip_dotdot(gh, tmp_path, victim):
    rel = os.path.relpath(victim / "secret.txt", tmp_path / "hub" / "repos" / ".tmp" / "x")
    archive = raw_zip([("top/", b"", DIR), ("top/hubconf.py", HUBCONF, REG), (f"top/{rel}", b"pwned", REG),
                       ("top/../../../victim/secret.txt", b"pwned", REG)])
    assert_refused(gh, tmp_path / "hub", victim, archive, r"'\.\.'")


def test_zip_slip_absolute(gh, tmp_path, victim):
    archive = raw_zip([("top/hubconf.py", HUBCONF, REG), (str(victim / "secret.txt"), b"pwned", REG)])
    assert_refused(gh, tmp_path / "hub", victim, archive, "absolute path")


@pytest.mark.parametrize("name, why", [("top/C:/x.py", "drive letter|'\\.\\.'|component"),
                                       ("C:\\evil.py", "backslash|drive"),
                                       ("top/a\\..\\..\\x", "backslash")])
def test_windows_paths(gh, tmp_path, victim, name, why):
    archive = raw_zip([("top/hubconf.py", HUBCONF, REG), (name, b"x", REG)])
    with pytest.raises(UnsafeArchiveError):
        serve_archive(gh, archive)
        get_repo("mallory/evil", trust_repo=True, hub_dir=tmp_path / "hub", env=gh.env(), verbose=False)


def test_nul_in_name(tmp_path):
    data = bytearray(raw_zip([("top/hubconf.py", HUBCONF, REG), ("top/aXb.py", b"x", REG)]))
    data = bytes(data).replace(b"top/aXb.py", b"top/a\x00b.py")  # zipfile refuses to write a NUL
    (tmp_path / "a.zip").write_bytes(data)
    (tmp_path / "out").mkdir()
    with pytest.raises(UnsafeArchiveError, match="NUL"):
        extract_zip(tmp_path / "a.zip", tmp_path / "out", ArchiveLimits())
    assert not any((tmp_path / "out").iterdir())


def test_refusal_shows_a_backslash_once_and_escapes_controls(tmp_path):
    # issue 16: the name was escaped twice (unicode_escape, then repr): 'a\\\\b'.
    (tmp_path / "a.zip").write_bytes(raw_zip([("top/hubconf.py", HUBCONF, REG), ("top/a\\..\\x\u202e.py", b"x", REG)]))
    (tmp_path / "out").mkdir()
    with pytest.raises(UnsafeArchiveError, match="backslash") as info:
        extract_zip(tmp_path / "a.zip", tmp_path / "out", ArchiveLimits())
    assert "entry 'top/a\\..\\x\\u202e.py' has" in info.value.message, info.value.message
    assert "\u202e" not in info.value.message  # the bidi override itself never reaches a terminal


def test_symlink_escaping_is_refused(gh, tmp_path, victim):
    rel = os.path.relpath(victim, tmp_path)
    archive = build_zip("top", {"hubconf.py": HUBCONF, "link": Symlink(f"../../../../../../../../..{victim}")})
    assert_refused(gh, tmp_path / "hub", victim, archive, "resolves outside")
    archive = build_zip("top", {"hubconf.py": HUBCONF, "abs": Symlink(str(victim))})
    assert_refused(gh, tmp_path / "hub2", victim, archive, "resolves outside")
    assert rel  # the victim sits beside the hub dir


def test_write_through_symlink_is_refused(gh, tmp_path, victim):
    # A link to a folder inside the repo, then a member under the link's name: the
    # classic two-step where the second entry would be written through the link.
    archive = raw_zip([("top/hubconf.py", HUBCONF, REG), ("top/d", b"sub", LNK), ("top/sub/", b"", DIR),
                       ("top/d/x.py", b"x", REG)])
    assert_refused(gh, tmp_path / "hub", victim, archive, "symlink")


def test_symlink_chain_escape_is_refused(gh, tmp_path, victim):
    # s -> "." stays inside and t -> "s/.." looks inside lexically, but the kernel
    # resolves t to the parent of the repo.
    archive = build_zip("top", {"hubconf.py": HUBCONF, "s": Symlink("."), "t": Symlink("s/..")})
    assert_refused(gh, tmp_path / "hub", victim, archive, "resolves outside")


def test_link_resolution_rules():
    links = {"a": "b/c", "b": "sub", "s": ".", "t": "s/..", "u": "sub/../x", "loop1": "loop2", "loop2": "loop1",
             "sub/up": "../hubconf.py", "sub/up2": "../../x"}
    assert _link_stays_inside("a", links)
    assert _link_stays_inside("s", links)
    assert not _link_stays_inside("t", links)
    assert _link_stays_inside("u", links)
    assert not _link_stays_inside("loop1", links)
    assert _link_stays_inside("sub/up", links)
    assert not _link_stays_inside("sub/up2", links)


def test_inside_symlinks_are_kept(gh, tmp_path):
    repo = gh.add_repo("alice", "links")
    repo.commit({"hubconf.py": HUBCONF, "pkg/mod.py": b"X = 1\n", "pkg/alias.py": Symlink("mod.py"),
                 "docs/readme": Symlink("../pkg/mod.py")})
    co = get_repo("alice/links", trust_repo=True, hub_dir=tmp_path / "hub", env=gh.env(), verbose=False)
    assert os.readlink(co.path / "pkg" / "alias.py") == "mod.py"
    assert (co.path / "docs" / "readme").read_bytes() == b"X = 1\n"


@pytest.mark.parametrize("mode", [stat.S_IFIFO | 0o644, stat.S_IFCHR | 0o644, stat.S_IFBLK | 0o644, stat.S_IFSOCK | 0o644])
def test_devices_and_fifos_are_refused(gh, tmp_path, victim, mode):
    archive = raw_zip([("top/hubconf.py", HUBCONF, REG), ("top/dev", b"", mode)])
    assert_refused(gh, tmp_path / "hub", victim, archive, "device, fifo or socket")


def test_zip_bomb_total_cap(gh, tmp_path, victim):
    # 40 MiB of zeros compress to ~40 KiB; the cap is set to 16 MiB for the test.
    files = {"hubconf.py": HUBCONF, **{f"zeros{i}.bin": b"\0" * (10 << 20) for i in range(4)}}
    archive = build_zip("top", files)
    assert len(archive) < 200_000
    assert_refused(gh, tmp_path / "hub", victim, archive, "zip bomb",
                   env_extra={"SAFEHUB_MAX_REPO_BYTES": str(16 << 20)})


def test_lying_header_is_caught_while_writing(tmp_path):
    # Declared size 10 bytes, real stream much longer: zipfile stops at the declared
    # size and then fails the CRC check, so nothing larger than declared is written.
    payload = b"A" * 100_000
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("top/hubconf.py", HUBCONF)
        zf.writestr("top/big.bin", payload)
    data = bytearray(buf.getvalue())
    # Patch the central directory's uncompressed size of big.bin to 10.
    cd = data.rfind(b"PK\x01\x02")
    name_at = data.find(b"top/big.bin", cd)
    header = data.rfind(b"PK\x01\x02", 0, name_at)
    data[header + 24 : header + 28] = (10).to_bytes(4, "little")
    (tmp_path / "a.zip").write_bytes(bytes(data))
    (tmp_path / "out").mkdir()
    with pytest.raises(UnsafeArchiveError):
        extract_zip(tmp_path / "a.zip", tmp_path / "out", ArchiveLimits())
    big = tmp_path / "out" / "big.bin"
    assert not big.exists() or big.stat().st_size <= 10


def test_oversized_archive_and_file(gh, tmp_path, victim):
    files = {"hubconf.py": HUBCONF, "weights.bin": os.urandom(300_000)}
    archive = build_zip("top", files)
    serve_archive(gh, archive)
    from safehub._errors import FetchError

    with pytest.raises(FetchError, match="cap"):
        get_repo("mallory/evil", trust_repo=True, hub_dir=tmp_path / "hub", verbose=False,
                 env=gh.env(SAFEHUB_MAX_ARCHIVE_BYTES="100000"))
    assert not any((tmp_path / "hub" / "repos" / ".tmp").iterdir())
    assert_refused(gh, tmp_path / "hub2", victim, archive, "per-file cap",
                   env_extra={"SAFEHUB_MAX_REPO_FILE_BYTES": "200000"})


@pytest.mark.filterwarnings("ignore:Duplicate name")
def test_entry_count_depth_and_name_caps(tmp_path):
    def attempt(entries, limits, match):
        (tmp_path / "a.zip").write_bytes(raw_zip([("top/hubconf.py", HUBCONF, REG), *entries]))
        out = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
        out.mkdir()
        with pytest.raises(UnsafeArchiveError, match=match):
            extract_zip(tmp_path / "a.zip", out, limits)
        assert not any(out.iterdir())

    attempt([(f"top/f{i}", b"", REG) for i in range(20)], ArchiveLimits(max_entries=10), "entries")
    attempt([("top/" + "d/" * 70 + "x", b"", REG)], ArchiveLimits(), "deeper")
    attempt([("top/" + "n" * 300, b"", REG)], ArchiveLimits(), "longer than 255")
    attempt([("top/a.py", b"1", REG), ("top/a.py", b"2", REG)], ArchiveLimits(), "twice")
    attempt([("top/a", b"1", REG), ("top/a/b", b"2", REG)], ArchiveLimits(), "is a file")


def test_tree_hash_sees_every_kind_of_change(tmp_path):
    root = tmp_path / "t"
    (root / "d").mkdir(parents=True)
    (root / "a.py").write_bytes(b"1")
    (root / "d" / "b.py").write_bytes(b"2")
    os.symlink("a.py", root / "l")
    h0 = tree_hash(root)
    (root / "a.py").write_bytes(b"3")
    h1 = tree_hash(root)
    (root / "a.py").write_bytes(b"1")
    assert tree_hash(root) == h0 != h1
    os.chmod(root / "a.py", 0o755)
    assert tree_hash(root) != h0
    os.chmod(root / "a.py", 0o644)
    (root / "d" / "new.py").write_bytes(b"")
    assert tree_hash(root) != h0
    (root / "d" / "new.py").unlink()
    os.unlink(root / "l")
    os.symlink("d/b.py", root / "l")
    assert tree_hash(root) != h0


# --- property: whatever the names, nothing lands outside the destination -------------

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_COMPONENT = st.sampled_from(["a", "b", "..", ".", "", "C:", "x\\y", "/", "~", "\x00", "é", "top"])
_NAME = st.lists(_COMPONENT, min_size=1, max_size=5).map("/".join)
_KIND = st.sampled_from(["file", "dir", "link"])
_TARGET = st.lists(st.sampled_from(["a", "b", "..", ".", "top", "/tmp"]), min_size=1, max_size=4).map("/".join)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entries=st.lists(st.tuples(_NAME, _KIND, _TARGET), min_size=1, max_size=6))
def test_extraction_never_writes_outside(tmp_path_factory, entries):
    base = tmp_path_factory.mktemp("prop")
    dest = base / "dest"
    dest.mkdir()
    (base / "outside.txt").write_text("same")
    raw = []
    for name, kind, target in entries:
        if "\x00" in name:
            continue  # zipfile cannot write it; the NUL case has its own test
        if kind == "dir":
            raw.append((name.rstrip("/") + "/", b"", DIR))
        elif kind == "link":
            raw.append((name, target.encode(), LNK))
        else:
            raw.append((name, b"data", REG))
    if not raw:
        return
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names
        (base / "a.zip").write_bytes(raw_zip(raw))
    try:
        extract_zip(base / "a.zip", dest, ArchiveLimits())
    except UnsafeArchiveError:
        assert not any(dest.iterdir()), "a refused archive leaves nothing behind"
    else:
        real_dest = dest.resolve()
        for p in dest.rglob("*"):
            assert p.resolve().is_relative_to(real_dest) or not p.exists(), p
    assert sorted(x.name for x in base.iterdir()) == ["a.zip", "dest", "outside.txt"]
    assert (base / "outside.txt").read_text() == "same"
