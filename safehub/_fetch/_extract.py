"""Safe extraction of a repo zip archive, and the content hash of a tree.

Every member is checked before anything touches the disk. Rules:
- names: relative, no '..' or '.', no NUL/control characters, no backslash, no
  drive letter, bounded length and depth, no duplicates, no file/folder clash;
- types: regular files, folders and symlinks only (no devices, fifos, sockets);
  zip has no hard links, and tar archives are not accepted at all;
- symlinks: relative, and resolving inside the tree (resolved through the other
  links in the archive, the way the kernel would); nothing is extracted through one;
- sizes: compressed archive, each file, the total, the compression ratio and the
  entry count are capped, and the real byte count is enforced while writing,
  whatever the header claims;
- identity: given the resolved commit, the top folder (``owner-repo-<sha7>``) and
  the zip comment GitHub writes (the full SHA) must name it; an archive without
  the comment is refused unless SAFEHUB_ALLOW_ARCHIVE_WITHOUT_SHA=1;
- any decoding error (names, deflate streams, CRCs) is an UnsafeArchiveError.
Files are created with O_EXCL|O_NOFOLLOW inside a fresh folder the caller renames
into place atomically.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
import struct
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path

from .._config import env_flag
from .._errors import UnsafeArchiveError
from .._records import record

__all__ = ["ArchiveLimits", "extract_zip", "tree_hash", "make_read_only"]

_BAD_CHARS = re.compile(r"[\x00-\x1f\x7f\\]")
_DRIVE = re.compile(r"^[A-Za-z]:")
MAX_LINK_HOPS = 40


# Archives that unpack to less than this are never refused for their ratio
# (a small repo with one file of zeros is fine); above it the ratio cap applies.
RATIO_FLOOR_BYTES = 32 << 20
_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)  # what GitHub writes
# Everything zipfile and zlib raise on a malformed archive, names included.
_DECODE_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, UnicodeError, EOFError, zlib.error, struct.error,
                  NotImplementedError, OverflowError, ValueError, KeyError, IndexError)  # fmt: skip


@record(frozen=True)
class ArchiveLimits:
    """Bounds on an archive and what it unpacks to."""

    max_archive_bytes: int = 1 << 30  # compressed download
    max_total_bytes: int = 1 << 30  # uncompressed, all files
    max_file_bytes: int = 1 << 30  # uncompressed, one file
    max_ratio: int = 100  # uncompressed total / archive size (above RATIO_FLOOR_BYTES)
    max_entries: int = 200_000
    max_depth: int = 64
    max_name_bytes: int = 255  # one path component
    max_path_bytes: int = 4096
    # GitHub always writes the commit SHA as the zip comment; a GitHub Enterprise
    # server or a caching proxy may strip it. Without it only the top folder's 7-hex
    # prefix names the commit (a prefix a crafted commit can collide with), so an
    # archive with no comment is refused unless SAFEHUB_ALLOW_ARCHIVE_WITHOUT_SHA=1.
    require_sha_comment: bool = True

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "ArchiveLimits":
        def num(name: str, default: int) -> int:
            raw = env.get(name)
            if not raw:
                return default
            try:
                value = int(raw)
            except ValueError:
                raise ValueError(f"{name}={raw!r} is not an integer number of bytes") from None
            if value <= 0:
                raise ValueError(f"{name} must be positive")
            return value

        base = cls()
        return cls(
            max_archive_bytes=num("SAFEHUB_MAX_ARCHIVE_BYTES", base.max_archive_bytes),
            max_total_bytes=num("SAFEHUB_MAX_REPO_BYTES", base.max_total_bytes),
            max_file_bytes=num("SAFEHUB_MAX_REPO_FILE_BYTES", base.max_file_bytes),
            max_ratio=num("SAFEHUB_MAX_REPO_RATIO", base.max_ratio),
            require_sha_comment=not env_flag("SAFEHUB_ALLOW_ARCHIVE_WITHOUT_SHA", env),
        )


@record(frozen=True)
class _Member:
    """One checked archive member."""

    info: zipfile.ZipInfo
    path: str  # relative to the stripped top folder; '' never appears
    kind: str  # 'f', 'd' or 'l'
    executable: bool


def _show(name: str, limit: int = 300) -> str:
    """An archive name, quoted, with each non-printable character escaped once
    (a backslash stays one backslash: names are shown, not Python literals)."""
    text = "".join(c if c.isprintable() else (f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}"
                                              if ord(c) < 0x10000 else f"\\U{ord(c):08x}") for c in name[:limit])
    return f"'{text}'" + ("..." if len(name) > limit else "")


def _fail(name: str, why: str) -> UnsafeArchiveError:
    return UnsafeArchiveError(
        f"refusing the archive: entry {_show(name)} {why}. Nothing was extracted.",
        hint="the repo archive is malformed or malicious; report it to the repo owner",
    )


def _kind(info: zipfile.ZipInfo) -> tuple[str, bool]:
    mode = (info.external_attr >> 16) & 0xFFFF if info.create_system == 3 else 0
    fmt = stat.S_IFMT(mode)
    if fmt == 0:
        return ("d" if info.filename.endswith("/") else "f"), False
    if fmt == stat.S_IFDIR:
        return "d", False
    if fmt == stat.S_IFREG:
        if info.filename.endswith("/"):
            raise _fail(info.filename, "is a regular file with a folder name")
        return "f", bool(mode & 0o111)
    if fmt == stat.S_IFLNK:
        return "l", False
    raise _fail(info.filename, "is a device, fifo or socket")


def _check_name(raw: str, limits: ArchiveLimits) -> list[str]:
    if not raw:
        raise _fail(raw, "has an empty name")
    if _BAD_CHARS.search(raw):
        raise _fail(raw, "has a NUL, control character or backslash in its name")
    if raw.startswith("/"):
        raise _fail(raw, "has an absolute path")
    if _DRIVE.match(raw):
        raise _fail(raw, "has a drive letter")
    if len(raw.encode("utf-8")) > limits.max_path_bytes:
        raise _fail(raw, f"has a path longer than {limits.max_path_bytes} bytes")
    parts = raw.rstrip("/").split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise _fail(raw, "has an empty, '.' or '..' path component")
        if _DRIVE.match(part):  # the top folder is stripped, so C: could end up first
            raise _fail(raw, "has a drive letter")
        if len(part.encode("utf-8")) > limits.max_name_bytes:
            raise _fail(raw, f"has a name component longer than {limits.max_name_bytes} bytes")
    if len(parts) > limits.max_depth:
        raise _fail(raw, f"is nested deeper than {limits.max_depth} folders")
    return parts


def _link_stays_inside(link: str, links: Mapping[str, str]) -> bool:
    """Resolve ``link``'s target the way the kernel would, through the other links
    of the archive, and report whether it ever leaves the tree."""
    path = link.split("/")[:-1]
    pending = [p for p in links[link].split("/")][::-1]
    if links[link].startswith("/"):
        return False
    hops = 0
    while pending:
        comp = pending.pop()
        if comp in ("", "."):
            continue
        if comp == "..":
            if not path:
                return False
            path.pop()
            continue
        path.append(comp)
        joined = "/".join(path)
        if joined in links:
            hops += 1
            if hops > MAX_LINK_HOPS:
                return False
            target = links[joined]
            if target.startswith("/"):
                return False
            path.pop()
            pending.extend(target.split("/")[::-1])
    return True


def _plan(
    zf: zipfile.ZipFile, limits: ArchiveLimits, archive_bytes: int, expected_sha: str | None
) -> tuple[list[_Member], dict[str, str]]:
    infos = zf.infolist()
    if not infos:
        raise UnsafeArchiveError("the archive is empty", hint="the repo archive is malformed")
    if len(infos) > limits.max_entries:
        raise UnsafeArchiveError(f"the archive has {len(infos)} entries, over the cap of {limits.max_entries}")
    for i in infos:
        if "\x00" in i.orig_filename:  # zipfile cuts names at NUL; the raw name tells
            raise _fail(i.orig_filename, "has a NUL in its name")
    split = [(_check_name(i.filename, limits), i) for i in infos]
    tops = {parts[0] for parts, _ in split}
    # GitHub archives hold one top folder (owner-repo-sha/); strip it.
    strip = len(tops) == 1 and all(len(p) > 1 or i.filename.endswith("/") for p, i in split)
    members: list[_Member] = []
    seen: dict[str, str] = {}
    total = 0
    for parts, info in split:
        if info.flag_bits & 0x1:
            raise _fail(info.filename, "is encrypted")
        if info.compress_type not in _METHODS:
            raise _fail(info.filename, f"uses compression method {info.compress_type} (GitHub writes only stored and deflated)")
        kind, executable = _kind(info)
        rel_parts = parts[1:] if strip else parts
        if not rel_parts:
            continue  # the top folder itself
        rel = "/".join(rel_parts)
        if rel in seen:
            raise _fail(info.filename, "appears twice in the archive")
        if kind == "f":
            if info.file_size > limits.max_file_bytes:
                raise _fail(info.filename, f"is {info.file_size} bytes, over the per-file cap of {limits.max_file_bytes}")
            total += info.file_size
            if total > limits.max_total_bytes:
                raise UnsafeArchiveError(
                    f"the archive unpacks to more than {limits.max_total_bytes} bytes (zip bomb?). Nothing was extracted.",
                    hint="raise SAFEHUB_MAX_REPO_BYTES if this repo is really that large",
                )
        seen[rel] = kind
        members.append(_Member(info=info, path=rel, kind=kind, executable=executable))
    if total > RATIO_FLOOR_BYTES and total > limits.max_ratio * max(archive_bytes, 1):
        raise UnsafeArchiveError(
            f"the archive unpacks to {total} bytes from {archive_bytes}, a compression ratio over "
            f"{limits.max_ratio}:1 (zip bomb?). Nothing was extracted.",
            hint="raise SAFEHUB_MAX_REPO_RATIO if this repo really holds such compressible files",
        )
    # Parents must be folders: no file or link may sit above another entry.
    for rel in seen:
        parts = rel.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            if seen.get(parent, "d") != "d":
                raise _fail(rel, f"lies under {_show(parent)}, which is a {'symlink' if seen[parent] == 'l' else 'file'}")
    links: dict[str, str] = {}
    for m in members:
        if m.kind != "l":
            continue
        if m.info.file_size > limits.max_path_bytes:
            raise _fail(m.info.filename, "is a symlink with an oversized target")
        target_raw = zf.read(m.info)
        try:
            target = target_raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _fail(m.info.filename, "is a symlink whose target is not UTF-8") from None
        if not target or _BAD_CHARS.search(target):
            raise _fail(m.info.filename, "is a symlink with an empty target or control characters in it")
        links[m.path] = target
    for link, target in links.items():
        if not _link_stays_inside(link, links):
            raise _fail(link, f"is a symlink to {_show(target)}, which resolves outside the repo")
    if expected_sha is not None:
        _check_commit(zf, tops if strip else set(), expected_sha, require_comment=limits.require_sha_comment)
    return members, links


def _check_commit(zf: zipfile.ZipFile, tops: set[str], sha: str, *, require_comment: bool = True) -> None:
    """GitHub names the top folder ``owner-repo-<sha7>`` and writes the full commit
    SHA as the zip comment. Both must name the commit that was resolved: a branch
    or tag named like a SHA makes GitHub serve *its* commit for ``zipball/<sha>``."""
    def refuse(what: str) -> UnsafeArchiveError:
        return UnsafeArchiveError(
            f"the archive served for commit {sha} is not that commit: {what}. Nothing was extracted.",
            hint="a branch or tag may be named like the commit (GitHub serves the branch); "
            "load the repo by its branch name, or report the repo",
        )

    comment = zf.comment.strip()
    if comment:
        try:
            text = comment.decode("ascii")
        except UnicodeDecodeError:
            raise refuse("its zip comment is not a commit SHA") from None
        if text.lower() != sha:
            raise refuse(f"its zip comment names commit {_show(text, 40)}")
    elif require_comment:
        raise UnsafeArchiveError(
            f"the archive served for commit {sha} has no zip comment, so nothing names its full commit "
            "(GitHub always writes the commit SHA there; its top folder names only 7 hex digits). "
            "Nothing was extracted.",
            hint="if a GitHub Enterprise server or a proxy you trust strips zip comments, set "
            "SAFEHUB_ALLOW_ARCHIVE_WITHOUT_SHA=1 to accept its archives on the top folder's short SHA",
        )
    top = next(iter(tops)) if len(tops) == 1 else None
    m = re.fullmatch(r".+-([0-9a-f]{7,40})", top or "")
    if m is None:
        raise refuse(f"its top folder {_show(top)} is not named owner-repo-<sha>" if top else "it has no single top folder")
    if not sha.startswith(m.group(1)):
        raise refuse(f"its top folder {_show(top or '')} names commit {m.group(1)}")


def extract_zip(archive: Path, dest: Path, limits: ArchiveLimits, expected_sha: str | None = None) -> int:
    """Extract ``archive`` into the empty folder ``dest``. Returns the bytes written.
    ``expected_sha``: the commit the archive must be (top folder and zip comment)."""
    size = archive.stat().st_size
    if size > limits.max_archive_bytes:
        raise UnsafeArchiveError(f"the archive is {size} bytes, over the cap of {limits.max_archive_bytes}")
    if not zipfile.is_zipfile(archive):
        raise UnsafeArchiveError("the download is not a zip archive", hint="check SAFEHUB_GITHUB_URL points at GitHub")
    written = 0
    try:
        with zipfile.ZipFile(archive) as zf:
            members, links = _plan(zf, limits, size, expected_sha.lower() if expected_sha else None)
            dest_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            try:
                for m in members:
                    if m.kind == "d":
                        _makedirs(dest_fd, m.path)
                    elif m.kind == "f":
                        written += _write_file(zf, dest_fd, m, limits, written)
                for m in members:
                    if m.kind == "l":
                        parent, _, leaf = m.path.rpartition("/")
                        pfd = _makedirs(dest_fd, parent) if parent else os.dup(dest_fd)
                        try:
                            os.symlink(links[m.path], leaf, dir_fd=pfd)
                        finally:
                            os.close(pfd)
            finally:
                os.close(dest_fd)
    except UnsafeArchiveError:
        raise
    except _DECODE_ERRORS as exc:
        # Member names that are not UTF-8 despite the UTF-8 flag, broken deflate
        # streams, bad CRCs, truncated headers: all are a malformed archive.
        raise UnsafeArchiveError(
            f"the archive is corrupt or malformed: {type(exc).__name__}: {str(exc)[:200]!r}. Nothing was installed.",
            hint="retry with force_reload=True; if it persists the repo archive is malicious or broken",
        ) from None
    return written


def _makedirs(root_fd: int, rel: str) -> int:
    """Create ``rel`` under ``root_fd`` one component at a time without following
    links. Returns an fd of the last folder (caller closes)."""
    fd = os.dup(root_fd)
    for part in rel.split("/") if rel else []:
        try:
            os.mkdir(part, 0o755, dir_fd=fd)
        except FileExistsError:
            pass
        nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
        os.close(fd)
        fd = nfd
    return fd


def _write_file(zf: zipfile.ZipFile, root_fd: int, m: _Member, limits: ArchiveLimits, so_far: int) -> int:
    parent, _, leaf = m.path.rpartition("/")
    pfd = _makedirs(root_fd, parent)
    try:
        mode = 0o755 if m.executable else 0o644
        fd = os.open(leaf, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode, dir_fd=pfd)
    finally:
        os.close(pfd)
    count = 0
    with os.fdopen(fd, "wb") as out, zf.open(m.info) as src:
        while True:
            chunk = src.read(1 << 20)
            if not chunk:
                break
            count += len(chunk)
            if count > m.info.file_size or count > limits.max_file_bytes or so_far + count > limits.max_total_bytes:
                raise _fail(m.info.filename, "unpacks to more bytes than its header declares or the caps allow")
            out.write(chunk)
    return count


def _entries(root: Path) -> list[tuple[str, str, bytes]]:
    """(relative path, kind, payload digest) for every entry, sorted, never following links."""
    out: list[tuple[str, str, bytes]] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        rel_dir = os.path.relpath(dirpath, root)
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            rel = name if rel_dir == "." else f"{rel_dir}/{name}"
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                out.append((rel, "l", hashlib.sha256(os.readlink(path).encode("utf-8", "surrogateescape")).digest()))
            elif stat.S_ISDIR(st.st_mode):
                out.append((rel, "d", b""))
            elif stat.S_ISREG(st.st_mode):
                h = hashlib.sha256()
                with open(path, "rb") as f:
                    while chunk := f.read(1 << 20):
                        h.update(chunk)
                kind = "x" if st.st_mode & 0o111 else "f"
                out.append((rel, kind, h.digest()))
            else:
                out.append((rel, "?", b""))
    out.sort()
    return out


def tree_hash(root: Path) -> str:
    """sha256 over every path, type, exec bit, file content and link target."""
    h = hashlib.sha256(b"safehub-tree-v1\0")
    for rel, kind, digest in _entries(root):
        h.update(rel.encode("utf-8", "surrogateescape") + b"\0" + kind.encode() + b"\0" + digest)
    return h.hexdigest()



def make_read_only(root: Path) -> None:
    """Drop write bits everywhere (files keep their exec bit), deepest first."""
    for dirpath, dirnames, filenames in os.walk(root, topdown=False, followlinks=False):
        for name in filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode):
                os.chmod(p, 0o555 if st.st_mode & 0o111 else 0o444)
        for name in dirnames:
            p = os.path.join(dirpath, name)
            if not os.path.islink(p):
                os.chmod(p, 0o555)
    os.chmod(root, 0o555)
