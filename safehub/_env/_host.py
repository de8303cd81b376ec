"""What the host interpreter provides: the base Python and the torch family.

Nothing here imports torch: packages are found through ``importlib.metadata``
and ``importlib.util.find_spec`` (which locates a top-level package without
running it).
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import logging
import os
import platform
import re
import stat
import sys
import sysconfig
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from email.parser import HeaderParser
from pathlib import Path
from typing import Any

from .._basesite import base_site_packages
from .._errors import MissingHostPackageError, escape_untrusted
from .._records import record
from ._host_memo import load_memo, memo_name, save_memo
from ._resolve import TORCH_FAMILY, Resolution, canonical
from ._types import PythonEnv

__all__ = [
    "HostInfo",
    "host_info",
    "check_host_requirements",
    "check_installed_requirements",
    "minimal_paths",
]

logger = logging.getLogger("safehub")

_IMPORT_NAME = {"torch-tensorrt": "torch_tensorrt", "pytorch-triton": "triton"}
_MAX_METADATA_BYTES = 1 << 20


@record(frozen=True)
class HostInfo:
    """The parts of the host that shape every env."""

    base_python: Path  # realpath of the base interpreter venvs are made from
    base_prefixes: tuple[Path, ...]  # realpaths the base interpreter reads (stdlib, libpython)
    python_version: str
    implementation: str
    platform: str
    packages: Mapping[str, str]  # canonical torch-family name -> version, only those present
    share_paths: tuple[Path, ...]  # host folders holding the torch family and what it needs
    constraints: tuple[str, ...]  # what the torch family requires of other packages
    # (canonical name, version, real dist-info path) of the family and its requirement closure
    family_dists: tuple[tuple[str, str, Path], ...] = ()
    # The base interpreter's own package folders (inside base_prefixes or /usr): the
    # sandbox hides them; only the torch family's link targets in them are shown.
    base_site_packages: tuple[Path, ...] = ()


_SYSCONFIG_LOCK = threading.Lock()


def sysconfig_ready() -> None:
    """sysconfig fills its tables lazily and not thread-safely (3.11): two threads
    can see a half-filled table. Fill it once, under a lock, before any use."""
    with _SYSCONFIG_LOCK:
        sysconfig.get_config_vars()


def _real(p: str | os.PathLike[str]) -> Path:
    return Path(os.path.realpath(p))


def minimal_paths(paths: Iterable[Path]) -> tuple[Path, ...]:
    """Deduplicate and drop paths inside another listed path (one bind covers them)."""
    out: list[Path] = []
    kept: set[Path] = set()
    for p in paths:
        if p in kept or any(a in kept for a in p.parents):
            continue
        inside = str(p).rstrip("/") + "/"
        if any(str(q).startswith(inside) for q in out):  # p covers some already listed
            out = [q for q in out if not str(q).startswith(inside)]
            kept = set(out)
        out.append(p)
        kept.add(p)
    return tuple(out)


def _base_python() -> Path:
    # In a venv, sys._base_executable is the interpreter the venv was made from.
    exe = getattr(sys, "_base_executable", None) or sys.executable
    return _real(exe)


def _present(name: str) -> md.Distribution | None:
    try:
        dist = md.distribution(name)
    except md.PackageNotFoundError:
        return None
    # Metadata alone is not enough: the package itself must be importable.
    try:
        spec = importlib.util.find_spec(_IMPORT_NAME.get(name, name.replace("-", "_")))
    except (ImportError, ValueError):
        spec = None
    return dist if spec is not None else None


# A marker that is one `extra == "<name>"` comparison and nothing else: false for
# extra "", so the line is skipped unparsed (most Requires-Dist lines of torch's
# requirements are such; parsing them was most of a fresh process's memo check).
_EXTRA_ONLY = re.compile(r""";\s*extra\s*==\s*(?:"[^"\\]+"|'[^'\\]+')\s*$""")


def _base_requires(dist: md.Distribution) -> list:
    """Requirements that apply without extras, on this interpreter."""
    return _applying(dist.requires or ())


def _applying(lines: Iterable[str]) -> list:
    """The requirement lines that apply without extras, parsed by packaging."""
    from packaging.requirements import InvalidRequirement, Requirement

    out = []
    for line in lines:
        if _EXTRA_ONLY.search(line):  # e.g. `; extra == "dev"`: never applies without extras
            continue
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            out.append(req)
    return out


# A requirement line packaging is not needed for: a plain name, optional extras and a
# version specifier, with no marker or with one that is false without extras (see
# _base_required_names).
_PLAIN_REQ = re.compile(
    r"\s*(?P<name>[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)\s*(?:\[\s*[A-Za-z0-9_.-]+(?:\s*,\s*[A-Za-z0-9_.-]+)*\s*\])?"
    r"\s*(?:\(?\s*(?:~=|==|!=|<=|>=|<|>)\s*[A-Za-z0-9.*+!_-]+(?:\s*,\s*(?:~=|==|!=|<=|>=|<|>)\s*[A-Za-z0-9.*+!_-]+)*\s*\)?)?\s*")
_AND_EXTRA = re.compile(r"""(?P<pre>.+?)\s+and\s+extra\s*==\s*(?:"[^"\\]+"|'[^'\\]+')\s*""")
_QUOTED = re.compile(r""""[^"]*"|'[^']*'""")


def _false_without_extras(marker: str) -> bool:
    """True only for ``<one term> and extra == "<name>"``, which no extra makes true.
    The term is either one parenthesised group or has no ``or`` (``A or B and extra``
    is ``A or (B and extra)``). Quoted text is blanked first, so a quote holding a
    parenthesis or the word cannot fool the scan; anything else answers False and
    packaging decides."""
    m = _AND_EXTRA.fullmatch(marker.strip())
    if m is None:
        return False
    pre = _QUOTED.sub('""', m.group("pre")).strip()
    if "(" not in pre and ")" not in pre:
        return re.search(r"\bor\b", pre) is None
    if not (pre.startswith("(") and pre.endswith(")")):
        return False
    depth = 0
    for i, ch in enumerate(pre):
        depth += (ch == "(") - (ch == ")")
        if depth == 0 and i != len(pre) - 1:
            return False  # "(A) or (B)": more than one group
    return depth == 0


def _fast_required_name(line: str) -> str | None:
    """The name a Requires-Dist line requires without extras, "" when it requires
    nothing without extras, None when packaging must decide."""
    if _EXTRA_ONLY.search(line):
        return ""
    head, sep, marker = line.partition(";")
    m = _PLAIN_REQ.fullmatch(head)
    if m is None:
        return None
    if not sep:
        return m.group("name")
    return "" if _false_without_extras(marker) else None


def _base_required_names(dist: Any) -> list[str]:
    """The names of ``_base_requires(dist)``, without importing packaging for the
    lines whose answer is plain (all of torch's family on this machine: packaging's
    import and parse were most of a fresh process's memo check)."""
    names: list[str] = []
    slow: list[str] = []
    for line in dist.requires or ():
        name = _fast_required_name(line)
        if name is None:
            slow.append(line)
        elif name:
            names.append(name)
    if slow:
        names += [req.name for req in _applying(slow)]
    return names


def _dist_folder(dist: md.Distribution) -> Path | None:
    try:
        return _real(str(dist.locate_file("")))
    except Exception:  # a custom finder may not support it
        return None


def _dist_info_path(dist: md.Distribution) -> Path | None:
    path = getattr(dist, "_path", None)  # PathDistribution: the .dist-info folder
    if path is None:
        return None
    real = _real(path)
    return real if real.name.endswith(".dist-info") and real.is_dir() else None


def _matches_torch(dist: md.Distribution, torch: md.Distribution | None) -> bool:
    """A family member (torchvision...) is shared only when the host's torch satisfies
    its own torch requirement: a mismatched one fails at import in every repo."""
    from packaging.version import InvalidVersion, Version

    for req in _base_requires(dist):
        if canonical(req.name) != "torch":
            continue
        try:
            ok = torch is not None and req.specifier.contains(Version(torch.version), prereleases=True)
        except InvalidVersion:
            ok = False
        if not ok:
            logger.warning("not sharing %s %s with repos: it requires %s, the host has torch %s",
                           escape_untrusted(str(dist.metadata["Name"]), limit=60), escape_untrusted(dist.version, limit=40),
                           escape_untrusted(str(req), limit=120), torch.version if torch else "none")
            return False
    return True


_HOST_MEMO: list[tuple[tuple, HostInfo]] = []  # at most one: (what it was computed from, the result)
_HOST_MEMO_LOCK = threading.Lock()
_UNCACHEABLE = "<not a file>"


def _stat_ident(path: str) -> tuple[int, ...] | None:
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)


def _fingerprint(metadata_files: Iterable[str]) -> tuple:
    """What host_info read, as stat results: sys.path, its folders (a package
    installed or removed changes its folder) and every METADATA file it parsed
    (an edit in place changes the file's ctime)."""
    paths = list(sys.path)
    idents = [_stat_ident(p or ".") for p in paths]
    if paths and not sys.flags.safe_path and not _holds_metadata(paths[0] or "."):
        # sys.path[0] is the script's folder (or the cwd), different for every program:
        # it only matters if package metadata lies there, which it usually does not.
        paths[0], idents[0] = "<script folder without package metadata>", None
    return (tuple(paths), tuple(idents), tuple((f, _stat_ident(f)) for f in metadata_files))


def _holds_metadata(folder: str) -> bool:
    try:
        with os.scandir(folder) as it:
            return any(e.name.endswith((".dist-info", ".egg-info", ".egg-link")) for e in it)
    except OSError:
        return False


def host_info(hub_dir: Path | str | None = None) -> HostInfo:
    """Inspect the host: metadata reads only, remembered for this process while the
    stat of everything read stays the same (a warm load checks, it does not re-parse),
    and, given ``hub_dir``, on disk for the next process (safehub/_env/_host_memo.py)."""
    with _HOST_MEMO_LOCK:
        if _HOST_MEMO:
            fingerprint, info = _HOST_MEMO[0]
            if _fingerprint(f for f, _ in fingerprint[2]) == fingerprint:
                return info
        memo = Path(hub_dir) / "memo" / memo_name() if hub_dir is not None else None
        if memo is not None and (found := load_memo(memo, _fingerprint, verify=_check_family)) is not None:
            memo_read, fields = found
            info = _live_info(
                packages=fields["packages"], share_paths=tuple(Path(p) for p in fields["share_paths"]),
                constraints=tuple(fields["constraints"]),
                family_dists=tuple((n, v, Path(p)) for n, v, p in fields["family_dists"]))
            _HOST_MEMO[:] = [(_fingerprint(memo_read), info)]
            return info
        read: list[str] = []
        info = _host_info(read)
        _HOST_MEMO[:] = [] if _UNCACHEABLE in read else [(_fingerprint(read), info)]
        if memo is not None and _UNCACHEABLE not in read:
            save_memo(memo, read, _fingerprint(read), {
                "packages": dict(info.packages), "share_paths": [str(p) for p in info.share_paths],
                "constraints": list(info.constraints),
                "family_dists": [[n, v, str(p)] for n, v, p in info.family_dists]})
        return info


def _check_family(fields: Mapping[str, Any]) -> None:
    """Raise ValueError unless a memo's distributions are what ``_host_info`` finds:
    each dist-info (read by path) names the recorded distribution and version, the
    torch family's recorded versions match, and every distribution is a family member
    or required, transitively, by one. A forged memo that lists another package next
    to torch (whose files the family folder would then show to every sandbox) fails."""
    found: dict[str, Any] = {}
    for name, version, where in fields["family_dists"]:
        dist = _HeaderDist(Path(where))
        try:
            ok = canonical(dist.metadata["Name"] or "") == name and dist.version == version
        except Exception:  # noqa: BLE001 - unreadable metadata: not what an inspection found
            ok = False
        if not ok:
            raise ValueError(f"{where} is not {name} {version}")
        found[name] = dist
    packages = fields["packages"]
    if any(found.get(name) is None or found[name].version != version for name, version in packages.items()):
        raise ValueError("the torch family's versions differ from its dist-infos")
    reached = {key for key, _ in _requirement_closure([found[n] for n in found if n in packages], found.get)}
    if reached != set(found):
        raise ValueError(f"not required by the torch family: {sorted(set(found) - reached)[:3]}")


class _HeaderDist:
    """What ``_check_family`` reads of a dist-info (Name, Version, Requires-Dist), as
    ``importlib.metadata`` reads it, but parsed once and from the header block only:
    ``md.PathDistribution`` re-parses all of METADATA, long description included,
    on each attribute (about 40 parses, 20 ms, in every fresh process's memo check)."""

    def __init__(self, path: Path) -> None:
        try:
            self.metadata = _metadata_headers(path / "METADATA")
        except OSError:  # not there: no name, matches nothing
            self.metadata = _Headers({})

    @property
    def version(self) -> str:
        return str(self.metadata["Version"])

    @property
    def requires(self) -> list[str] | None:
        return self.metadata.get_all("Requires-Dist")


def _live_info(**found: Any) -> HostInfo:
    """HostInfo from what inspecting packages found, plus what is cheap to compute live."""
    sysconfig_ready()
    prefixes = [_real(sys.base_prefix), _real(sys.base_exec_prefix), _base_python().parent.parent]
    return HostInfo(
        base_python=_base_python(),
        base_prefixes=minimal_paths(prefixes),
        python_version=platform.python_version(),
        implementation=sys.implementation.name,
        platform=f"{sysconfig.get_platform()}-{'-'.join(platform.libc_ver())}",
        base_site_packages=base_site_packages(),
        **found,
    )


def _host_info(read: list[str]) -> HostInfo:
    """``host_info`` itself; appends each METADATA file it parses to ``read``."""
    sysconfig_ready()
    packages: dict[str, str] = {}
    family: list[md.Distribution] = []
    torch = _present("torch")
    if torch is not None:
        _note_read(torch, read)
    for name in sorted(TORCH_FAMILY):
        dist = _present(name)
        if dist is not None:
            _note_read(dist, read)
        if dist is not None and (name == "torch" or _matches_torch(dist, torch)):
            packages[name] = dist.version
            family.append(dist)

    # What the family requires of other packages (installer constraints).
    constraints = {f"{canonical(req.name)}{req.specifier}" for dist in family for req in _base_requires(dist)
                   if canonical(req.name) not in TORCH_FAMILY}
    # Folders holding the family and, transitively, what it requires.
    folders: list[Path] = []
    closure: list[tuple[str, str, Path]] = []
    for key, dist in _requirement_closure(family, _installed):
        _note_read(dist, read)
        folder = _dist_folder(dist)
        if folder is not None and folder not in folders:
            folders.append(folder)
        info = _dist_info_path(dist)
        if info is not None:
            closure.append((key, str(dist.version), info))
    # Host sys.path order, so the venv sees them as the host does.
    order = {_real(p): i for i, p in reversed(list(enumerate(sys.path))) if p}
    folders.sort(key=lambda f: order.get(f, len(order)))

    return _live_info(packages=packages, share_paths=tuple(folders), constraints=tuple(sorted(constraints)),
                      family_dists=tuple(sorted(closure)))


def _requirement_closure(roots: Iterable[md.Distribution], lookup: Callable[[str], md.Distribution | None]
                         ) -> Iterator[tuple[str, md.Distribution]]:
    """(canonical name, distribution) for each of ``roots`` and, transitively, what
    they require without extras on this interpreter, once each. ``lookup`` finds a
    required distribution by canonical name (None: not there). Torch-family names are
    never followed: a family member is a root or is left out."""
    seen: set[str] = set()
    queue = list(roots)
    while queue:
        dist = queue.pop()
        key = canonical(dist.metadata["Name"] or "")
        if key in seen:
            continue
        seen.add(key)
        yield key, dist
        for required in _base_required_names(dist):
            name = canonical(required)
            if name not in TORCH_FAMILY and (found := lookup(name)) is not None:
                queue.append(found)


def _installed(name: str) -> md.Distribution | None:
    try:
        return md.distribution(name)
    except md.PackageNotFoundError:
        return None


def _note_read(dist: md.Distribution, read: list[str]) -> None:
    path = getattr(dist, "_path", None)
    meta = os.path.join(str(path), "METADATA") if path is not None else None
    if meta is not None and meta not in read:
        read.append(meta)
    elif meta is None:
        read.append(_UNCACHEABLE)  # a custom finder: never reuse this result


def _fix_hint(name: str, spec: str, have: str | None) -> str:
    want = f"{name}{spec}" if spec else name
    if have is None:
        return (
            f"install it on the host (pip install '{want}', matching your torch build); "
            "safehub shares torch-family packages from the host and never installs them into a repo env"
        )
    return (
        f"install a {name} that satisfies '{spec}' on the host, or load a revision of the repo that "
        f"works with {name} {have}; safehub never installs torch-family packages into a repo env"
    )


def check_host_requirements(resolution: Resolution, packages: Mapping[str, str]) -> None:
    """Every torch-family package hubconf names must be on the host at an accepted version."""
    for req in resolution.host:
        have = packages.get(req.distribution)
        if have is None:
            raise MissingHostPackageError(
                f"the repo needs {req.distribution} (hubconf dependency {req.entry!r}), "
                "but the host Python does not have it",
                hint=_fix_hint(req.distribution, req.specifier, None),
            )
        if req.specifier:  # (packaging is imported only for a specifier: a fresh load's cost)
            from packaging.specifiers import SpecifierSet
            from packaging.version import InvalidVersion, Version

            try:
                ok = SpecifierSet(req.specifier).contains(Version(have), prereleases=True)
            except InvalidVersion:
                ok = False
            if not ok:
                raise MissingHostPackageError(
                    f"the repo needs {req.distribution}{req.specifier}, but the host has {req.distribution} {have}",
                    hint=_fix_hint(req.distribution, req.specifier, have),
                )


def _metadata_headers(path: Path) -> Any:
    """The header block of a METADATA file: read without blocking and only if it is
    a regular file (a memo names the path; a FIFO there would hang), within the 1 MiB
    cap, and parsed only up to the first empty line, where the email parser ends the
    headers (the long description after it is most of the file). Raises OSError when
    it cannot be opened."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with open(fd, "rb") as f:
        text = f.read(_MAX_METADATA_BYTES).decode("utf-8", errors="replace") if stat.S_ISREG(os.fstat(fd).st_mode) else ""
    head = []
    for line in text.splitlines(keepends=True):
        if not line.rstrip("\r\n"):
            break
        head.append(line)
    return _parse_headers(head)


# A header line as the email parser's feedparser recognises one (its headerRE, less
# the mbox "From " line): a field name of printable ASCII but ':', then ':'.
_HEADER_LINE = re.compile(r"[\041-\071\073-\176]+:")


class _Headers:
    """The header fields ``email.parser.HeaderParser`` (compat32) would give, for
    the reads made here: ``[name]`` (the first, or None), ``get`` and ``get_all``,
    field names case-insensitive."""

    def __init__(self, fields: dict[str, list[str]]) -> None:
        self._fields = fields

    def __getitem__(self, name: str) -> str | None:
        values = self._fields.get(name.lower())
        return values[0] if values else None

    def get(self, name: str, default: Any = None) -> Any:
        values = self._fields.get(name.lower())
        return values[0] if values else default

    def get_all(self, name: str) -> list[str] | None:
        return list(self._fields[name.lower()]) if name.lower() in self._fields else None


def _parse_headers(lines: list[str]) -> Any:
    """Header lines -> :class:`_Headers`, as the email parser reads them: the value
    after ':' without leading blanks, folded lines appended as they are, line ends
    stripped. Anything less plain (a line that is neither a field nor a fold, a fold
    first) goes to the email parser itself (about 0.4 ms per file more, in a fresh
    process's memo check of the torch family)."""
    fields: dict[str, list[list[str]]] = {}  # name -> each occurrence's lines
    last: list[str] | None = None
    for line in lines:
        if line[:1] in (" ", "\t"):
            if last is None:
                return HeaderParser().parsestr("".join(lines))
            last.append(line)
            continue
        if _HEADER_LINE.match(line) is None:
            return HeaderParser().parsestr("".join(lines))
        name, _, value = line.partition(":")
        last = [value.lstrip(" \t")]
        fields.setdefault(name.lower(), []).append(last)
    return _Headers({k: ["".join(v).rstrip("\r\n") for v in vs] for k, vs in fields.items()})


def _read_metadata(path: Path) -> tuple[str, str, list[str]]:
    msg = _metadata_headers(path)
    return str(msg.get("Name", "")), str(msg.get("Version", "")), [str(v) for v in msg.get_all("Requires-Dist") or []]


def check_installed_requirements(site_packages: Path, packages: Mapping[str, str]) -> None:
    """Installers skip the torch family (--excludes) and then accept any torch
    requirement silently. Read what was installed and check it against the host."""
    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.version import InvalidVersion, Version

    for meta in sorted(site_packages.glob("*.dist-info/METADATA")):
        name, version, requires = _read_metadata(meta)
        who = escape_untrusted(f"{name} {version}", limit=200)
        if canonical(name) in TORCH_FAMILY:
            have = packages.get(canonical(name))
            raise MissingHostPackageError(
                f"installing the repo's dependencies pulled {who} into the env; "
                + (f"the host has {canonical(name)} {have}, which something rejected" if have else f"the host lacks {canonical(name)}"),
                hint=_fix_hint(canonical(name), "", have),
            )
        for line in requires:
            try:
                req = Requirement(line)
            except InvalidRequirement:
                continue
            dep = canonical(req.name)
            if dep not in TORCH_FAMILY:
                continue
            if req.marker is not None and not req.marker.evaluate({"extra": ""}):
                continue
            spec = escape_untrusted(str(req.specifier), limit=200)
            have = packages.get(dep)
            if have is None:
                raise MissingHostPackageError(
                    f"the repo's dependency {who} requires {dep}{spec}, but the host Python does not have {dep}",
                    hint=_fix_hint(dep, spec, None),
                )
            try:
                ok = req.specifier.contains(Version(have), prereleases=True)
            except InvalidVersion:
                ok = False
            if not ok:
                raise MissingHostPackageError(
                    f"the repo's dependency {who} requires {dep}{spec}, but the host has {dep} {have}",
                    hint=_fix_hint(dep, spec, have),
                )
