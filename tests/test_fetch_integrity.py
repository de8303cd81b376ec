"""Fetch integrity (issue 18, items 3-5): what is extracted is the commit that was
resolved, malformed archives fail with a typed error, and zip bombs are stopped.

All through the loopback GitHub (tests/github_server.py), which writes archives
like GitHub's: one ``owner-repo-<sha7>/`` top folder and the commit SHA as the zip
comment, and resolves a ref as a branch first, so a branch can be named like the
40-hex SHA of another commit.
"""

from __future__ import annotations

import io
import stat
import zipfile
from pathlib import Path

import pytest
from github_server import FakeGitHub, build_zip

import safehub
from safehub._errors import InvalidRepoError, UnsafeArchiveError
from safehub._fetch import get_repo
from safehub._fetch._extract import ArchiveLimits, extract_zip

HUBCONF = b"dependencies = []\ndef m():\n    return 1\n"
EVIL = b"dependencies = []\ndef m():\n    return 'the branch, not the commit'\n"


@pytest.fixture
def gh():
    with FakeGitHub() as server:
        yield server


def _get(gh, hub: Path, repo: str, **kw):
    return get_repo(repo, trust_repo=True, hub_dir=hub, env=gh.env(**kw.pop("env", {})), verbose=False, **kw)


def _no_entry(hub: Path, gh, owner: str, name: str, sha: str) -> bool:
    return not (hub / "repos" / gh.host_key / owner / name / sha).exists()


# --- decoding errors ------------------------------------------------------------------


def _non_utf8_name_zip(top: str) -> bytes:
    """A member named with invalid UTF-8 bytes while the UTF-8 flag (0x800) is set."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{top}/hubconf.py", HUBCONF)
        zf.writestr(f"{top}/QQQQ.py", b"x = 1\n")
    data = bytearray(buf.getvalue().replace(b"QQQQ", b"\xff\xfe\xc3\x28"))
    for sig, flag_at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # local header, central directory
        at = data.find(sig)
        while at != -1:
            data[at + flag_at + 1] |= 0x08  # 0x800: names are UTF-8
            at = data.find(sig, at + 4)
    data = bytes(data)
    with pytest.raises(UnicodeDecodeError):  # the bare error zipfile raises
        zipfile.ZipFile(io.BytesIO(data))
    return data


def test_non_utf8_member_name_is_a_typed_error(gh, tmp_path: Path) -> None:
    repo = gh.add_repo("mallory", "names")
    sha = repo.commit({"hubconf.py": HUBCONF})
    repo.archive_override[sha] = _non_utf8_name_zip(f"mallory-names-{sha[:7]}")
    with pytest.raises(UnsafeArchiveError, match="UnicodeDecodeError"):
        _get(gh, tmp_path / "hub", "mallory/names")
    assert _no_entry(tmp_path / "hub", gh, "mallory", "names", sha)


def test_non_utf8_member_name_through_safehub_list(gh, tmp_path: Path, monkeypatch) -> None:
    repo = gh.add_repo("mallory", "names")
    sha = repo.commit({"hubconf.py": HUBCONF})
    repo.archive_override[sha] = _non_utf8_name_zip(f"mallory-names-{sha[:7]}")
    for k, v in gh.env(SAFEHUB_HOME=str(tmp_path / "home")).items():
        monkeypatch.setenv(k, v)
    with pytest.raises(UnsafeArchiveError):
        safehub.list("mallory/names", trust_repo=True, verbose=False)


def test_corrupt_deflate_stream_is_a_typed_error(tmp_path: Path) -> None:
    data = bytearray(build_zip("o-r-abcdef0", {"hubconf.py": HUBCONF, "big.py": b"x = 1\n" * 5000}))
    at = data.find(b"big.py") + len(b"big.py") + 20  # inside big.py's deflate data
    data[at : at + 16] = b"\xff" * 16
    (tmp_path / "a.zip").write_bytes(bytes(data))
    (tmp_path / "out").mkdir()
    with pytest.raises(UnsafeArchiveError, match="corrupt or malformed"):
        extract_zip(tmp_path / "a.zip", tmp_path / "out", ArchiveLimits())


def test_unusual_compression_method_is_refused(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_BZIP2) as zf:
        zf.writestr("o-r-abcdef0/hubconf.py", HUBCONF)
    (tmp_path / "a.zip").write_bytes(buf.getvalue())
    (tmp_path / "out").mkdir()
    with pytest.raises(UnsafeArchiveError, match="compression method"):
        extract_zip(tmp_path / "a.zip", tmp_path / "out", ArchiveLimits())


# --- the archive is the resolved commit ---------------------------------------------------


def test_archive_names_its_commit(gh, tmp_path: Path) -> None:
    repo = gh.add_repo("alice", "model")
    sha = repo.commit({"hubconf.py": HUBCONF})
    archive = repo.archive(sha)
    assert zipfile.ZipFile(io.BytesIO(archive)).comment == sha.encode()
    co = _get(gh, tmp_path / "hub", "alice/model")
    assert co.sha == sha and (co.path / "hubconf.py").read_bytes() == HUBCONF


def test_branch_named_like_an_existing_commit_is_not_that_commit(gh, tmp_path: Path) -> None:
    """The found attack: a branch named with the SHA of an older commit. GitHub serves
    the branch for zipball/<sha>; safehub resolved the SHA and cached the branch's tree
    under it."""
    repo = gh.add_repo("mallory", "twin")
    old = repo.commit({"hubconf.py": HUBCONF})
    repo.commit({"hubconf.py": HUBCONF, "README": b"newer\n"})
    evil = repo.commit({"hubconf.py": EVIL}, branch=old, parent=None)  # branch *named* old
    assert repo.resolve(old) == evil  # GitHub's rule: the branch wins
    for kw in ({}, {"skip_validation": True}):
        with pytest.raises(UnsafeArchiveError, match=f"names commit '?{evil[:7]}"):
            _get(gh, tmp_path / "hub", f"mallory/twin:{old}", **kw)
        with pytest.raises(UnsafeArchiveError):
            _get(gh, tmp_path / "hub", "mallory/twin", revision=old, **kw)
    assert _no_entry(tmp_path / "hub", gh, "mallory", "twin", old)


def test_branch_named_like_a_missing_commit_is_refused(gh, tmp_path: Path) -> None:
    repo = gh.add_repo("mallory", "ghost")
    repo.commit({"hubconf.py": HUBCONF})
    name = "ab" * 20
    repo.commit({"hubconf.py": EVIL}, branch=name, parent=None)
    with pytest.raises(InvalidRepoError, match="Cannot find commit"):  # a 40-hex ref is a commit, not the branch
        _get(gh, tmp_path / "hub", f"mallory/ghost:{name}")
    with pytest.raises(UnsafeArchiveError, match="is not that commit"):
        _get(gh, tmp_path / "hub", f"mallory/ghost:{name.upper()}", skip_validation=True)
    assert _no_entry(tmp_path / "hub", gh, "mallory", "ghost", name)


@pytest.mark.parametrize(
    "top,comment,match",
    [
        ("alice-model-{other7}", "{sha}", "top folder"),
        ("alice-model-{sha7}", "{other}", "zip comment"),
        ("top", "{sha}", "not named owner-repo"),
        ("top", "", "no zip comment"),
        ("alice-model-{sha7}", "not a sha", "zip comment"),
    ],
)
def test_top_folder_and_comment_must_match(gh, tmp_path: Path, top: str, comment: str, match: str) -> None:
    repo = gh.add_repo("alice", "model")
    sha = repo.commit({"hubconf.py": HUBCONF})
    other = "0123456789" * 4
    fill = {"sha": sha, "sha7": sha[:7], "other": other, "other7": other[:7]}
    repo.archive_override[sha] = build_zip(top.format(**fill), {"hubconf.py": HUBCONF}, comment=comment.format(**fill))
    with pytest.raises(UnsafeArchiveError, match=match):
        _get(gh, tmp_path / "hub", "alice/model")
    assert _no_entry(tmp_path / "hub", gh, "alice", "model", sha)


def test_archive_without_comment_is_refused_unless_allowed(gh, tmp_path: Path) -> None:
    """Red team round 3: GitHub always writes the full SHA as the comment; without it
    only the top folder's 7 hex digits name the commit (a prefix a crafted commit can
    share). Refused by default; SAFEHUB_ALLOW_ARCHIVE_WITHOUT_SHA=1 (GitHub Enterprise,
    a proxy that strips comments) falls back to the top folder, still checked."""
    repo = gh.add_repo("alice", "model")
    sha = repo.commit({"hubconf.py": HUBCONF})
    repo.archive_override[sha] = build_zip(f"Alice-Model-{sha[:7]}", {"hubconf.py": HUBCONF})
    with pytest.raises(UnsafeArchiveError, match="no zip comment") as info:
        _get(gh, tmp_path / "hub", "alice/model")
    assert "SAFEHUB_ALLOW_ARCHIVE_WITHOUT_SHA=1" in info.value.hint
    assert _no_entry(tmp_path / "hub", gh, "alice", "model", sha)
    allow = {"SAFEHUB_ALLOW_ARCHIVE_WITHOUT_SHA": "1"}
    assert _get(gh, tmp_path / "hub", "alice/model", env=allow).sha == sha
    repo.archive_override[sha] = build_zip("Alice-Model-0000000", {"hubconf.py": HUBCONF})
    with pytest.raises(UnsafeArchiveError, match="top folder"):
        _get(gh, tmp_path / "hub2", "alice/model", env=allow)


# --- zip bombs ------------------------------------------------------------------------------


def test_default_caps_and_their_env_switches() -> None:
    base = ArchiveLimits.from_env({})
    assert base.max_total_bytes == 1 << 30 and base.max_ratio == 100
    raised = ArchiveLimits.from_env({"SAFEHUB_MAX_REPO_BYTES": str(8 << 30), "SAFEHUB_MAX_REPO_RATIO": "2000"})
    assert raised.max_total_bytes == 8 << 30 and raised.max_ratio == 2000
    with pytest.raises(ValueError, match="SAFEHUB_MAX_REPO_RATIO"):
        ArchiveLimits.from_env({"SAFEHUB_MAX_REPO_RATIO": "lots"})


def test_compression_ratio_cap_stops_a_bomb(gh, tmp_path: Path) -> None:
    repo = gh.add_repo("mallory", "bomb")
    files = {"hubconf.py": HUBCONF, "zeros.bin": bytes(48 << 20)}
    sha = repo.commit(files)
    assert len(repo.archive(sha)) < 100_000  # ~1000:1
    with pytest.raises(UnsafeArchiveError, match="compression ratio over 100:1"):
        _get(gh, tmp_path / "hub", "mallory/bomb")
    assert _no_entry(tmp_path / "hub", gh, "mallory", "bomb", sha)
    co = _get(gh, tmp_path / "hub", "mallory/bomb", env={"SAFEHUB_MAX_REPO_RATIO": "5000"})
    assert (co.path / "zeros.bin").stat().st_size == 48 << 20


def test_small_compressible_repos_are_not_refused(gh, tmp_path: Path) -> None:
    repo = gh.add_repo("alice", "zeros")
    repo.commit({"hubconf.py": HUBCONF, "zeros.bin": bytes(8 << 20)})  # 1000:1 but under the floor
    assert (_get(gh, tmp_path / "hub", "alice/zeros").path / "zeros.bin").stat().st_size == 8 << 20


def test_four_gib_declared_from_a_small_archive_is_refused_before_writing(tmp_path: Path) -> None:
    """A ~4 GiB bomb (here: 4 members declaring 1000 MiB each) is refused from the
    central directory alone, by the default 1 GiB per-repo cap and the ratio cap."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("o-r-abcdef0/hubconf.py", HUBCONF)
        for i in range(4):
            info = zipfile.ZipInfo(f"o-r-abcdef0/bomb{i}.bin")
            info.create_system = 3
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            zf.writestr(info, b"0123456789")
    data = bytearray(buf.getvalue())
    cd = data.find(b"PK\x01\x02")
    while cd != -1:
        name_len = int.from_bytes(data[cd + 28 : cd + 30], "little")
        if data[cd + 46 : cd + 46 + name_len].startswith(b"o-r-abcdef0/bomb"):
            data[cd + 24 : cd + 28] = (1000 << 20).to_bytes(4, "little")
        cd = data.find(b"PK\x01\x02", cd + 4)
    (tmp_path / "a.zip").write_bytes(bytes(data))
    (tmp_path / "out").mkdir()
    with pytest.raises(UnsafeArchiveError, match="zip bomb"):
        extract_zip(tmp_path / "a.zip", tmp_path / "out", ArchiveLimits.from_env({}))
    with pytest.raises(UnsafeArchiveError, match="ratio"):
        extract_zip(tmp_path / "a.zip", tmp_path / "out", ArchiveLimits(max_total_bytes=8 << 30))
    assert not any((tmp_path / "out").iterdir())
