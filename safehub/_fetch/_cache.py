"""The repo cache: one folder per (host, owner, name, full SHA), a content hash
recorded beside it, short-lived ref resolutions, and a log of what each load used.

Layout under the hub dir::

    repos/<host>/<owner>/<name>/<sha>/        the extracted tree, read-only
    repos/<host>/<owner>/<name>/<sha>.json    its record: tree hash, when, from where
    repos/.tmp/                               downloads and extractions in progress
    refs/<host>/<owner>/<name>/<ref>.json     ref -> sha, trusted for a short while
    locks/                                    file locks
    fetch-history.jsonl                       one line per get_repo: repo, ref asked, sha used

Owner and name are lower-cased (GitHub treats them case-insensitively) and each
is one path component, so distinct keys never share a folder.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from .._errors import CacheCorruptedError
from .._fsutil import remove_tree
from .._records import record
from ._extract import tree_hash
from ._names import SHA_RE

__all__ = ["RepoCache", "CacheEntry", "atomic_write_json"]

logger = logging.getLogger("safehub")

META_VERSION = 1
HISTORY_MAX_BYTES = 1 << 20


def atomic_write_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.partial")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(payload, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_json(path: Path, max_bytes: int = 1 << 20) -> Any:
    with open(path, "rb") as f:
        raw = f.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise ValueError("too large")
    return json.loads(raw.decode("utf-8"))


@record(frozen=True)
class CacheEntry:
    """One fetched repo snapshot in the cache."""

    host: str
    owner: str
    name: str
    sha: str
    path: Path
    meta_path: Path

    @property
    def slug(self) -> str:
        return f"{self.host}/{self.owner}/{self.name}@{self.sha}"

    def meta(self) -> dict[str, Any]:
        try:
            data = _read_json(self.meta_path)
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}


class RepoCache:
    def __init__(self, hub_dir: Path) -> None:
        self.hub_dir = Path(hub_dir)
        self.repos = self.hub_dir / "repos"
        self.refs = self.hub_dir / "refs"
        self.locks = self.hub_dir / "locks"
        self.tmp = self.repos / ".tmp"

    # --- entries -------------------------------------------------------------

    def entry(self, host: str, owner: str, name: str, sha: str) -> CacheEntry:
        if not SHA_RE.match(sha):
            raise ValueError(f"not a full commit SHA: {sha!r}")
        folder = self.repos / host / owner.lower() / name.lower()
        return CacheEntry(host, owner.lower(), name.lower(), sha, folder / sha, folder / f"{sha}.json")

    def lock(self, entry: CacheEntry):
        from .._fsutil import FileLock

        self.locks.mkdir(parents=True, exist_ok=True)
        key = quote(f"{entry.host}/{entry.owner}/{entry.name}", safe="")
        return FileLock(str(self.locks / f"repo-{key}-{entry.sha}.lock"))

    def exists(self, entry: CacheEntry) -> bool:
        return entry.path.is_dir() and not entry.path.is_symlink() and entry.meta_path.is_file()

    def verify(self, entry: CacheEntry) -> str:
        """Recompute the tree hash and compare it with the record. Returns the hash."""
        recorded = entry.meta().get("tree_hash")
        if not isinstance(recorded, str):
            raise CacheCorruptedError(
                f"the cache record of {entry.slug} is missing or unreadable ({entry.meta_path})",
                hint="refetch with force_reload=True or remove it with `safehub cache rm`",
            )
        actual = tree_hash(entry.path)
        if actual != recorded:
            raise CacheCorruptedError(
                f"the cached tree of {entry.slug} at {entry.path} was modified after download "
                f"(content hash {actual[:16]}... != recorded {recorded[:16]}...)",
                hint="something changed files in the cache; refetch with force_reload=True, "
                "or run `safehub cache verify` to check the other entries",
            )
        return actual

    def new_tmp(self, suffix: str = "") -> Path:
        self.tmp.mkdir(parents=True, exist_ok=True)
        return self.tmp / f"{secrets.token_hex(8)}{suffix}"

    def install(self, entry: CacheEntry, tree: Path, meta: dict[str, Any]) -> None:
        """Move a finished tree into place (the caller holds the entry lock).
        An existing entry is swapped out first and deleted afterwards."""
        entry.path.parent.mkdir(parents=True, exist_ok=True)
        old: Path | None = None
        if entry.path.exists() or entry.path.is_symlink():
            old = self.new_tmp(".old")
            os.rename(entry.path, old)
        # The record goes first: a tree without a record is ignored, never trusted.
        atomic_write_json(entry.meta_path, {"version": META_VERSION, **meta})
        os.rename(tree, entry.path)
        if old is not None:
            remove_tree(old)

    def remove(self, entry: CacheEntry) -> None:
        try:
            entry.meta_path.unlink()
        except FileNotFoundError:
            pass
        if entry.path.exists() or entry.path.is_symlink():
            trash = self.new_tmp(".rm")
            os.rename(entry.path, trash)
            remove_tree(trash)

    def entries(self) -> Iterator[CacheEntry]:
        if not self.repos.is_dir():
            return
        for host in sorted(p for p in self.repos.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for owner in sorted(p for p in host.iterdir() if p.is_dir()):
                for name in sorted(p for p in owner.iterdir() if p.is_dir()):
                    for meta in sorted(name.glob("*.json")):
                        sha = meta.stem
                        if SHA_RE.match(sha):
                            yield CacheEntry(host.name, owner.name, name.name, sha, name / sha, meta)

    def cached_shas(self, host: str, owner: str, name: str) -> list[str]:
        folder = self.repos / host / owner.lower() / name.lower()
        if not folder.is_dir():
            return []
        return sorted(p.stem for p in folder.glob("*.json") if SHA_RE.match(p.stem) and (folder / p.stem).is_dir())

    def clean_tmp(self, older_than_s: float = 24 * 3600) -> None:
        """Remove leftovers of crashed fetches (never a live one: they are young)."""
        if not self.tmp.is_dir():
            return
        now = time.time()
        for p in self.tmp.iterdir():
            try:
                if now - p.lstat().st_mtime > older_than_s:
                    remove_tree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
            except OSError:
                pass

    # --- ref resolutions ------------------------------------------------------

    def _ref_path(self, host: str, owner: str, name: str, ref: str | None) -> Path:
        key = "@default" if ref is None else quote(ref, safe="")
        return self.refs / host / owner.lower() / name.lower() / f"{key}.json"

    def get_ref(self, host: str, owner: str, name: str, ref: str | None, *, max_age_s: float | None,
                require_validated: bool = False) -> str | None:
        path = self._ref_path(host, owner, name, ref)
        try:
            data = _read_json(path)
            sha, when = data["sha"], float(data["resolved_at"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if require_validated and data.get("validated") is not True:
            return None  # resolved with skip_validation: do the fork check now
        if not isinstance(sha, str) or not SHA_RE.match(sha):
            return None
        if max_age_s is not None and not (0 <= time.time() - when <= max_age_s):
            return None
        return sha

    def put_ref(self, host: str, owner: str, name: str, ref: str | None, sha: str, resolved: str,
                *, validated: bool = True) -> None:
        atomic_write_json(
            self._ref_path(host, owner, name, ref),
            {"ref": ref, "resolved_ref": resolved, "sha": sha, "resolved_at": time.time(), "validated": validated},
        )

    def cached_refs(self, host: str, owner: str, name: str) -> dict[str, str]:
        folder = self.refs / host / owner.lower() / name.lower()
        out: dict[str, str] = {}
        if folder.is_dir():
            for p in folder.glob("*.json"):
                sha = self.get_ref(host, owner, name, None if p.stem == "@default" else unquote(p.stem), max_age_s=None)
                if sha:
                    out[unquote(p.stem)] = sha
        return out

    # --- what each load used ----------------------------------------------------

    def record_load(self, record: dict[str, Any]) -> None:
        path = self.hub_dir / "fetch-history.jsonl"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.exists() and path.stat().st_size > HISTORY_MAX_BYTES:
                os.replace(path, path.with_suffix(".jsonl.1"))
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps({"time": time.time(), **record}, sort_keys=True) + "\n")
        except OSError as exc:  # the load itself succeeded; a full disk should not undo it
            logger.warning("could not record the load in %s: %s", path, exc)

    def history(self) -> list[dict[str, Any]]:
        path = self.hub_dir / "fetch-history.jsonl"
        out = []
        try:
            with open(path, encoding="utf-8") as f:
                for line in f:
                    try:
                        out.append(json.loads(line))
                    except ValueError:
                        continue
        except OSError:
            pass
        return out

