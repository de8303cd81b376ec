"""The torch family, and nothing else, from the host's site-packages.

A repo env needs the host's torch (it is tied to the host's build) and torch's
own requirements (sympy, filelock, ...). The folder that holds them usually holds
much more: everything else the user installed. Sharing that folder would leak
every package into every repo env, so a load works on one machine and fails on
the next, and untrusted code gets whatever else is installed there.

So each host gets a *family folder* under the hub dir::

    host/<digest16>/torch            -> <site-packages>/torch
    host/<digest16>/torch-2.13.0.dist-info -> ...
    host/<digest16>/__pycache__/typing_extensions.cpython-311.pyc -> ...
    host/<digest16>/safehub-family.json     what was linked (and its targets)

Links are made for exactly the top-level entries the family's RECORD files list.
A top-level folder that also holds entries of other distributions (a namespace
package, the shared ``__pycache__``) is split: its family children are linked
one by one. The env's ``.pth`` names the family folder (not a site dir, so no
``.pth`` inside it runs); the sandbox binds the folder plus each link target,
and nothing else of site-packages. The folder lives outside every env, so an
installer working in an env never sees (or uninstalls through) these links.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path

from .._errors import EnvironmentBuildError, MissingHostPackageError
from .._records import record

__all__ = ["Family", "ensure_family", "family_names", "family_digest", "family_entries", "FAMILY_MARKER"]

logger = logging.getLogger("safehub")

FAMILY_MARKER = "safehub-family.json"
FAMILY_FORMAT = 1
MAX_SPLIT_DEPTH = 3
MAX_RECORD_BYTES = 64 << 20  # torch's RECORD is ~2 MB


@record(frozen=True)
class Family:
    """The shared torch-family folder each env's ``.pth`` names."""

    folder: Path  # the family folder named in each env's .pth
    targets: tuple[Path, ...]  # real paths the links point to; the sandbox binds each read-only


def family_digest(dists: Sequence[tuple[str, str, Path]]) -> str:
    """Identity of the family: names, versions and where their metadata lives."""
    blob = json.dumps([[n, v, str(p)] for n, v, p in sorted(dists)], separators=(",", ":"))
    return hashlib.sha256(f"{FAMILY_FORMAT}:{blob}".encode()).hexdigest()


def _record_paths(dist_info: Path) -> list[str]:
    """Relative paths a distribution installed (its RECORD), without '..' escapes."""
    record = dist_info / "RECORD"
    try:
        with open(record, "rb") as f:
            raw = f.read(MAX_RECORD_BYTES + 1)
    except OSError:
        raw = b""
    paths: list[str] = []
    if raw and len(raw) <= MAX_RECORD_BYTES:
        import csv
        import io

        for row in csv.reader(io.StringIO(raw.decode("utf-8", errors="replace"))):
            if row and row[0] and not row[0].startswith(("/", "..")) and "\\" not in row[0]:
                paths.append(os.path.normpath(row[0]))
    if not paths:
        # No RECORD (some distro/conda installs): the dist-info itself plus top_level.txt.
        paths.append(dist_info.name)
        try:
            tops = (dist_info / "top_level.txt").read_text(encoding="utf-8", errors="replace").split()
        except OSError:
            tops = []
        for top in tops:
            site = dist_info.parent
            for cand in (top, f"{top}.py"):
                if (site / cand).exists():
                    paths.append(cand)
    return [p for p in paths if p != "." and not p.startswith("..")]


def _trie(paths: Iterable[str]) -> dict:
    root: dict = {}
    for p in paths:
        node = root
        for part in p.split(os.sep):
            node = node.setdefault(part, {})
    return root


def _walk(site: Path, rel: str, node: dict, depth: int, out: dict[str, Path]) -> None:
    for name, child in sorted(node.items()):
        here = os.path.join(rel, name) if rel else name
        target = site / here
        if not (target.exists() or target.is_symlink()):
            continue  # listed but gone (e.g. a pyc never written)
        if not child or target.is_symlink() or not target.is_dir():
            out.setdefault(here, Path(os.path.realpath(target)))
            continue
        # A folder: whole if every entry in it is the family's (bar caches), else split.
        try:
            present = {e for e in os.listdir(target) if e != "__pycache__"}
        except OSError:
            present = set()
        foreign = present - set(child)
        if (foreign or name == "__pycache__" or depth == 0) and depth < MAX_SPLIT_DEPTH:
            _walk(site, here, child, depth + 1, out)
        else:
            out.setdefault(here, Path(os.path.realpath(target)))


def family_entries(dists: Sequence[tuple[str, str, Path]]) -> dict[str, Path]:
    """Relative link name -> real target, for every family distribution."""
    by_site: dict[Path, list[str]] = {}
    order: list[Path] = []
    for _name, _version, dist_info in dists:
        site = dist_info.parent
        if site not in by_site:
            by_site[site] = []
            order.append(site)
        by_site[site].extend(_record_paths(dist_info))
    out: dict[str, Path] = {}
    for site in order:
        tops = _trie(by_site[site])
        # depth 0 is site-packages itself: always split it.
        _walk(site, "", tops, 1, out)
    return out


def _site_roots(dists: Sequence[tuple[str, str, Path]]) -> list[Path]:
    """Where family link targets may lie: each family site folder, and where the
    links directly in it point (a package installed as a symlink)."""
    roots: set[Path] = set()
    for _name, _version, dist_info in dists:
        site = Path(os.path.realpath(dist_info.parent))
        if site in roots:
            continue
        roots.add(site)
        try:
            with os.scandir(site) as entries:
                roots.update(Path(os.path.realpath(e.path)) for e in entries if e.is_symlink())
        except OSError:
            pass
    return sorted(roots)


def _read_marker(folder: Path, digest: str, sites: Sequence[Path]) -> Family | None:
    """The marker's family, or None. Its targets are bound into every sandbox, and the
    file is host data anyone running as the user can edit: a target outside the
    family's site folders (say ~/.ssh) makes the marker invalid, never a bind."""
    try:
        with open(folder / FAMILY_MARKER, "rb") as f:
            data = json.loads(f.read(4 << 20))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("digest") != digest or not isinstance(data.get("targets"), list):
        return None
    raw = data["targets"]
    targets = tuple(Path(t) for t in raw if isinstance(t, str) and t.startswith("/"))
    roots = [str(s) for s in sites]
    if len(targets) != len(raw) or not all(
            any(os.path.normpath(t) == str(t) and (str(t) == r or str(t).startswith(r.rstrip("/") + "/")) for r in roots)
            for t in targets):
        logger.warning("ignoring %s: it names link targets outside the torch family's site folders",
                       folder / FAMILY_MARKER)
        return None
    return Family(folder=folder, targets=targets)


def _link_ok(name: str) -> bool:
    return all(part not in ("", ".", "..") for part in name.split(os.sep)) and "\n" not in name


def ensure_family(hub: Path, dists: Sequence[tuple[str, str, Path]]) -> Family:
    """Build (once per host state) and return the family folder under ``hub/host``."""
    if not dists:
        raise MissingHostPackageError(
            "the host Python has no torch", hint="install torch on the host (pip install torch)"
        )
    digest = family_digest(dists)
    base = hub / "host"
    folder = base / digest[:16]
    sites = _site_roots(dists)
    found = _read_marker(folder, digest, sites)
    if found is not None:
        return found
    entries = family_entries(dists)
    if not any(name.split(os.sep)[0] == "torch" for name in entries):
        raise MissingHostPackageError(
            "could not find torch's files on the host (its RECORD lists no 'torch' folder)",
            hint="reinstall torch with pip or uv so its installed-files record is complete",
        )
    base.mkdir(parents=True, exist_ok=True)
    tmp = base / f".tmp-{digest[:16]}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        for name, target in sorted(entries.items()):
            if not _link_ok(name):
                continue
            link = tmp / name
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(target, link)
        targets = sorted({str(t) for t in entries.values()})
        marker = {"format": FAMILY_FORMAT, "digest": digest, "dists": [[n, v, str(p)] for n, v, p in dists],
                  "targets": targets}
        (tmp / FAMILY_MARKER).write_text(json.dumps(marker, indent=1), encoding="utf-8")
        try:
            os.rename(tmp, folder)
        except OSError:  # another process won the race; use theirs
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise
    found = _read_marker(folder, digest, sites)
    if found is None:
        raise EnvironmentBuildError(f"could not build the torch family folder {folder}",
                                    hint=f"delete {folder} and retry")
    logger.debug("torch family folder %s links %d entries", folder, len(entries))
    return found


def family_names(folder: Path) -> frozenset[str]:
    """Top-level import names the family folder provides (torch, sympy, typing_extensions...)."""
    out = set()
    try:
        entries = os.listdir(folder)
    except OSError:
        return frozenset()
    for name in entries:
        stem = name[:-3] if name.endswith(".py") else name.split(".")[0] if name.endswith((".so", ".pyd")) else name
        if stem.isidentifier() and stem != "__pycache__":
            out.add(stem)
    return frozenset(out)
