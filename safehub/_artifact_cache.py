"""The artifact cache: a successful load keeps its validated spec and weights, so
the same load again needs no env build, no sandbox and no export.

Layout under ``<SAFEHUB_HOME>/artifacts/``::

    entries/<key>/key.json    the key document (see _cache_key.py), the key, and
                              the sha256 of artifact/provenance.json
    entries/<key>/artifact/   an artifact folder exactly as ``safehub.save`` writes it
    tmp/                      entries being written (renamed into entries/ whole)
    stat/                     stat caches of local repo folders (_cache_key.py)
    verified/<key>.json       the stat of an entry's weights when they last hashed
                              right (_artifact_stat_memo.py)

An entry appears by one ``rename`` of a finished folder, under a file lock, so a
process killed mid-write leaves only a folder in ``tmp/`` that nothing reads.

The cache is host data that anything running as the user can change, so a hit
trusts none of it: the entry folder is opened once without following links and
read through that descriptor; ``key.json`` must name this key and hash to it;
``provenance.json`` must hash to what ``key.json`` recorded; the spec and the
weights must hash to what provenance recorded, computed on the exact bytes the
model is built from (the weights' hash is skipped when their stat is the one
recorded when they last hashed right: _artifact_stat_memo.py); and then the
spec and weights go through ``rebuild_from_output``, every check a sandbox's
output gets. The weights are mapped copy-on-write, not read: the model's pages
are the page cache's until written. No check depends on the weights' values,
so a later rewrite of the file is no worse than one before the load; a
truncation makes the model's memory fault (SIGBUS) on access, a denial of
service that whoever can write the cache has anyway. safehub never writes an
entry's files in place (entries are renamed in, removed by unlinking), so a
model already loaded keeps its bytes. What a hit cannot prove is that the entry
came from this machine's sandbox: whoever can rewrite the cache can plant a
consistent entry, which then is exactly as powerful as a malicious repo's
output (data that passed the checks), never code run on the host.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import time
from collections.abc import Callable
from dataclasses import field
from pathlib import Path
from typing import Any

from ._cache_key import NotCanonical, canonical_value, key_digest, key_inputs, local_tree_digest
from ._cache_writer import ARTIFACT_DIR, KEY_FILE, KEY_FORMAT, KEY_VERSION, key_record, place_entry, tmp_name
from ._cache_writer import fsync_dir as _fsync_dir
from ._config import env_flag
from ._errors import ArtifactCacheError, SafehubError, UnsafeSpecError
from ._fsutil import tree_size
from ._records import record

__all__ = ["ArtifactCache", "CachePlan", "plan_cache", "graph_cache", "EntryInfo"]

logger = logging.getLogger("safehub")

MAX_KEY_BYTES = 4 << 20
LOCK_TIMEOUT_S = 600.0
WRITER_WAIT_S = 120.0  # a lookup waits this long for a background writer of its key
STALE_TMP_S = 3600.0
_HEX64 = frozenset("0123456789abcdef")
_RECOVER = ("reload it with force_reload=True (re-runs the sandbox and replaces the entry), "
            "or remove it with `python -m safehub cache rm --artifacts {key}`")


def _is_key(text: str) -> bool:
    return len(text) == 64 and set(text) <= _HEX64


@record
class CachePlan:
    """One load's view of the cache: its key (None when not cacheable) and what happened."""

    cache: ArtifactCache | None
    key: str | None
    inputs: dict[str, Any] | None
    bypass: bool  # force_reload
    local_root: Path | None = None  # a local repo: re-hashed before storing
    info: dict[str, Any] = field(default_factory=dict)

    def lookup(self, *, device: Any, limits: Any = None,
               before_load: Callable[[], None] | None = None) -> tuple[Any, dict[str, Any]] | None:
        if self.cache is None or self.key is None or self.bypass:
            return None
        checked: dict[str, Any] = {}
        found = self.cache.load(self.key, device=device, limits=limits, before_load=before_load, info=checked)
        if found is not None:
            self.info.update(hit=True, **checked)
        return found

    def store(self, obj: Any, weights_fd: int | None = None) -> None:
        """Keep ``obj`` (just built, not yet returned) for the next load. Never fails the load.
        ``weights_fd``: the sealed weights memfd ``obj`` was built from; then a background
        writer copies it (safehub/_cache_writer.py) and the load does not wait for the disk."""
        if self.cache is None or self.key is None or self.inputs is None:
            return
        try:
            if self.local_root is not None:
                repo = self.inputs["repo"]
                now = local_tree_digest(self.local_root, self.cache.stat_dir)
                if now != repo.get("tree"):
                    self.info.update(stored=False, reason="the local repo changed during the load")
                    return
            if weights_fd is not None and env_flag("SAFEHUB_CACHE_WRITER", default=True):
                started = self.cache.store_in_background(self.key, self.inputs, obj, weights_fd, replace=self.bypass)
                if started is not None:
                    self.info.update(stored=started, background=started)
                    if not started:
                        self.info.setdefault("reason", "another process stored this key first, or is storing it")
                    return
            stored = self.cache.store(self.key, self.inputs, obj, replace=self.bypass)
            self.info.update(stored=stored)
            if not stored:
                self.info.setdefault("reason", "another process stored this key first")
        except (SafehubError, NotCanonical, OSError) as exc:
            # ArtifactSaveError: a namespace, which an artifact does not carry
            self.info.update(stored=False, reason=f"{type(exc).__name__}: {getattr(exc, 'message', exc)}")
            logger.info("the load was not cached: %s", self.info["reason"])


def plan_cache(hub_dir: Path, *, repo: Any, entrypoint: str, args: tuple[Any, ...], kwargs: dict[str, Any],
               example_inputs: Any, export: str, env_key: str, force_reload: bool,
               policy_active: bool = False) -> CachePlan:
    """The cache key of one load, or why it has none (``info["reason"]``)."""
    if not env_flag("SAFEHUB_ARTIFACT_CACHE", default=True):
        return CachePlan(None, None, None, force_reload,
                         info={"hit": False, "key": None, "reason": "SAFEHUB_ARTIFACT_CACHE=0"})
    if policy_active:
        # An entry does not record which sandbox, limits or download hosts produced it,
        # so it cannot show that a policy's minimums held then: such loads run the sandbox.
        return CachePlan(None, None, None, force_reload, info={
            "hit": False, "key": None, "reason": "an organisation policy or lockfile is in force (see docs/policy.md)"})
    cache = ArtifactCache(hub_dir)
    local_root = None
    try:
        if repo.source == "github" and repo.sha:
            repo_doc: dict[str, Any] = {"source": "github", "host": repo.host, "owner": repo.owner,
                                        "name": repo.name, "sha": repo.sha}
        elif repo.source == "local":
            local_root = Path(repo.path)
            repo_doc = {"source": "local", "tree": local_tree_digest(local_root, cache.stat_dir)}
        else:
            raise NotCanonical(f"a {repo.source} repo has no content identity")
        inputs = key_inputs(repo=repo_doc, entrypoint=entrypoint, args=args, kwargs=kwargs,
                            example_inputs=example_inputs, export=export, env_key=env_key)
    except NotCanonical as exc:
        logger.info("this load is not cached: %s", exc)
        return CachePlan(None, None, None, force_reload, info={"hit": False, "key": None, "reason": str(exc)})
    except OSError as exc:
        return CachePlan(None, None, None, force_reload,
                         info={"hit": False, "key": None, "reason": f"the local repo could not be hashed: {exc}"})
    key = key_digest(inputs)
    info: dict[str, Any] = {"hit": False, "key": key}
    if force_reload:
        info["reason"] = "force_reload=True"
    return CachePlan(cache, key, inputs, force_reload, local_root=local_root, info=info)


def graph_cache(hub_dir: Path, load_key: str | None, *, mid: str, training: bool, structure: list[dict],
                entrypoint: str, export: str) -> CachePlan | None:
    """The cache plan of one deferred export (a load's graph for one call signature):
    keyed by the load's own key and the signature (dtypes, shapes, scalars), so it is
    as specific as the load. None when the load had no key."""
    if load_key is None or not env_flag("SAFEHUB_ARTIFACT_CACHE", default=True):
        return None
    try:
        signature = canonical_value(structure, "the call signature")
    except NotCanonical:
        return None
    inputs = {"kind": "deferred-graph", "load": load_key, "mid": mid, "training": bool(training),
              "signature": signature, "entrypoint": entrypoint, "export": export}
    return CachePlan(ArtifactCache(hub_dir), key_digest(inputs), inputs, False, info={"hit": False})


@record(frozen=True)
class EntryInfo:
    """One artifact-cache entry as ``cache artifacts`` lists it."""

    key: str
    path: Path
    size_bytes: int
    created: str | None
    repo: str | None
    entrypoint: str | None

    def as_dict(self) -> dict[str, Any]:
        return {"key": self.key, "path": str(self.path), "size_bytes": self.size_bytes, "created": self.created,
                "repo": self.repo, "entrypoint": self.entrypoint}


class ArtifactCache:
    def __init__(self, hub_dir: Path | str) -> None:
        self.hub = Path(hub_dir)
        self.root = self.hub / "artifacts"
        self.entries_dir = self.root / "entries"
        self.tmp_dir = self.root / "tmp"
        self.stat_dir = self.root / "stat"
        self.verified_dir = self.root / "verified"

    def entry_path(self, key: str) -> Path:
        if not _is_key(key):
            raise ValueError(f"{key!r} is not an artifact-cache key (64 hex digits)")
        return self.entries_dir / key

    def _lock(self, key: str) -> Any:
        from ._fsutil import FileLock

        locks = self.hub / "locks"
        locks.mkdir(parents=True, exist_ok=True)
        return FileLock(str(locks / f"artifact-{key[:32]}.lock"), timeout=LOCK_TIMEOUT_S)

    # --- reading -------------------------------------------------------------

    def load(self, key: str, *, device: Any = None, limits: Any = None,
             before_load: Callable[[], None] | None = None, rehash: bool = False,
             info: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]] | None:
        """(what was cached, its provenance), or None when there is no entry.
        Raises ArtifactCacheError when an entry is there but fails any check.
        ``before_load``: as in ``rebuild_from_output`` (for the timing breakdown).
        ``rehash``: hash the weights even if their stat memo knows them.
        ``info`` gets ``weights_hashed``: whether this load hashed the weights."""
        path = self.entry_path(key)
        if not os.path.lexists(path) and not (self._wait_for_writer(key) and os.path.lexists(path)):
            return None
        with self._lock(key):
            return self._load_locked(key, path, device=device, limits=limits, before_load=before_load,
                                     rehash=rehash, info=info)

    def _load_locked(self, key: str, path: Path, *, device: Any, limits: Any,
                     before_load: Callable[[], None] | None = None, rehash: bool = False,
                     info: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]] | None:
        from ._artifact import load_checked
        from ._artifact_stat_memo import WeightsStatMemo

        memos: list[WeightsStatMemo] = []

        def memo_for(sha256: str) -> WeightsStatMemo:
            memos.append(WeightsStatMemo(self.verified_dir / f"{key}.json", sha256, rehash=rehash))
            return memos[-1]

        try:
            dir_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None  # removed meanwhile: a miss
        except OSError as exc:  # ELOOP / ENOTDIR: a link or a file where the entry folder should be
            raise self._error(key, f"its folder {str(path)!r} is not a real directory ({exc.strerror})") from None
        try:
            # Everything below is read through this descriptor: a swapped entries/<key> cannot mix entries.
            pinned = Path(f"/proc/self/fd/{dir_fd}") if os.path.isdir(f"/proc/self/fd/{dir_fd}") else path
            self._check_layout(key, dir_fd)
            record = self._read_key_file(key, dir_fd)
            try:
                obj, provenance = load_checked(pinned / ARTIFACT_DIR, device=device, limits=limits,
                                               provenance_sha256=record["provenance_sha256"], before_load=before_load,
                                               weights_memo=memo_for)
            except UnsafeSpecError as exc:  # ArtifactError included: say it is the cache, and how to recover
                raise self._error(key, exc.message) from None
        finally:
            os.close(dir_fd)
        self._check_provenance(key, record, provenance)
        if info is not None and memos:
            info["weights_hashed"] = memos[-1].hashed
        return obj, provenance

    def _wait_for_writer(self, key: str) -> bool:
        """With no entry for ``key``: wait for a writer that holds its lock (a background
        writer holds it until the entry is in place). True when there was one."""
        from ._fsutil import LockTimeout

        lock = self._lock(key)
        try:
            lock.acquire(timeout=0)
        except LockTimeout:
            try:
                lock.acquire(timeout=WRITER_WAIT_S)
            except LockTimeout:
                logger.warning("artifact-cache entry %s is still being written after %.0f s; not waiting for it",
                               key[:16], WRITER_WAIT_S)
                return False
            lock.release()
            return True
        lock.release()
        return False

    def _error(self, key: str, what: str) -> ArtifactCacheError:
        return ArtifactCacheError(f"artifact-cache entry {key[:16]} is damaged or was changed: {what}. Nothing was built",
                                  hint=_RECOVER.format(key=key[:16]))

    def _check_layout(self, key: str, dir_fd: int) -> None:
        names = os.listdir(dir_fd)
        if sorted(names) != sorted([KEY_FILE, ARTIFACT_DIR]):
            raise self._error(key, f"it must hold exactly {KEY_FILE} and {ARTIFACT_DIR}/ (holds {sorted(names)[:8]})")
        if not stat.S_ISDIR(os.stat(ARTIFACT_DIR, dir_fd=dir_fd, follow_symlinks=False).st_mode):
            raise self._error(key, f"{ARTIFACT_DIR} is not a real directory")

    def _read_key_file(self, key: str, dir_fd: int) -> dict[str, Any]:
        from ._channel._json import load_json

        try:
            fd = os.open(KEY_FILE, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dir_fd)
        except OSError as exc:
            raise self._error(key, f"{KEY_FILE} cannot be opened ({exc.strerror}; a link?)") from None
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise self._error(key, f"{KEY_FILE} is not a regular file")
            raw = f.read(MAX_KEY_BYTES + 1)
        try:
            doc = load_json(raw, KEY_FILE, cap_bytes=MAX_KEY_BYTES, max_depth=64)
        except UnsafeSpecError as exc:
            raise self._error(key, f"{KEY_FILE}: {exc.message}") from None
        if not isinstance(doc, dict) or set(doc) != {"format", "version", "key", "inputs", "provenance_sha256", "created"}:
            raise self._error(key, f"{KEY_FILE} does not have the fields of version {KEY_VERSION}")
        if doc["format"] != KEY_FORMAT or doc["version"] != KEY_VERSION:
            raise self._error(key, f"{KEY_FILE} is not a version-{KEY_VERSION} {KEY_FORMAT} record")
        # The record must name this key, and its inputs must hash to it: an entry
        # copied here from another key (or edited inputs) is refused.
        if doc["key"] != key or not isinstance(doc["inputs"], dict) or key_digest(doc["inputs"]) != key:
            raise self._error(key, f"{KEY_FILE} belongs to another key")
        sha = doc["provenance_sha256"]
        if not isinstance(sha, str) or not _is_key(sha):
            raise self._error(key, f"{KEY_FILE}: provenance_sha256 is not 64 hex digits")
        return doc

    def _check_provenance(self, key: str, record: dict[str, Any], provenance: dict[str, Any]) -> None:
        """The artifact must describe the load the key describes."""
        inputs = record["inputs"]
        repo = inputs.get("repo") or {}
        want = {"entrypoint": inputs.get("entrypoint"), "export": inputs.get("export")}
        if repo.get("source") == "github":
            want["sha"] = repo.get("sha")
        for field_name, value in want.items():
            if provenance.get(field_name) != value:
                raise self._error(key, f"its artifact records {field_name}={provenance.get(field_name)!r}, "
                                       f"the key says {value!r}")

    # --- writing -------------------------------------------------------------

    def store(self, key: str, inputs: dict[str, Any], obj: Any, *, replace: bool = False) -> bool:
        """Save ``obj`` as the entry of ``key``. Returns False when an entry was
        already there and ``replace`` is False (another process stored it first)."""
        from ._artifact import _save
        from ._artifact_format import PROVENANCE_FILE
        from ._fsutil import remove_tree

        final = self.entry_path(key)
        self.entries_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self._clean_tmp()
        tmp = self.tmp_dir / tmp_name(key)
        tmp.mkdir(mode=0o700)
        try:
            _save(obj, tmp / ARTIFACT_DIR, deferred=True)  # writes and fsyncs the three files, renames its folder into place
            with open(tmp / ARTIFACT_DIR / PROVENANCE_FILE, "rb") as f:
                provenance_sha256 = hashlib.sha256(f.read()).hexdigest()
            with open(tmp / KEY_FILE, "x", encoding="ascii") as f:
                f.write(key_record(key, inputs, provenance_sha256))
                f.flush()
                os.fsync(f.fileno())
            _fsync_dir(tmp)
            with self._lock(key):
                if not place_entry(tmp, final, self.tmp_dir, key, replace=replace, remove=remove_tree):
                    return False
            logger.info("cached the load as artifact-cache entry %s", key[:16])
            return True
        finally:
            if os.path.lexists(tmp):
                remove_tree(tmp)

    def store_in_background(self, key: str, inputs: dict[str, Any], obj: Any, weights_fd: int, *,
                            replace: bool = False) -> bool | None:
        """Start a writer process for the entry of ``key`` (safehub/_cache_writer.py):
        ``obj``'s validated spec and the sealed weights memfd it was built from. The
        entry's lock is taken here and handed to the writer, so a lookup meanwhile
        waits for it. True: started. False: an entry is there (and ``replace`` is
        False), or another process holds the lock. None: ``obj`` is not all of one
        load's result, so only ``store`` can write it."""
        from ._artifact import load_record
        from ._cache_writer import spawn as spawn_writer
        from ._fsutil import LockTimeout

        parts = load_record(obj)
        if parts is None:
            return None
        spec_raw, provenance = parts
        final = self.entry_path(key)
        self.entries_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self._clean_tmp()
        lock = self._lock(key)
        try:
            lock.acquire(timeout=0)
        except LockTimeout:
            return False  # another process is writing (or reading) this key
        # This process's descriptor of the lock, closed below once the writer has its copy:
        # the flock belongs to the open file, which the writer's descriptor keeps open.
        lock_fd = lock.detach()
        doc_fd = -1
        try:
            if os.path.lexists(final) and not replace:
                return False
            doc = {"key": key, "inputs": inputs, "entries_dir": str(self.entries_dir), "tmp_dir": str(self.tmp_dir),
                   "spec": spec_raw.decode("ascii"), "provenance": provenance, "replace": replace}
            doc_fd = os.memfd_create("safehub-cache-entry", os.MFD_CLOEXEC)
            os.write(doc_fd, json.dumps(doc, ensure_ascii=True).encode("ascii"))
            os.lseek(doc_fd, 0, os.SEEK_SET)
            # -I -S: the standard library only; the script imports nothing of safehub's, site's or the repo's.
            spawn_writer(doc_fd, weights_fd, lock_fd, self.root / "writer.log")
            logger.info("caching the load as artifact-cache entry %s (in the background)", key[:16])
            return True
        finally:
            if doc_fd >= 0:
                os.close(doc_fd)
            os.close(lock_fd)

    def _clean_tmp(self) -> None:
        """Folders of writers that died (a killed process) are never read; remove old ones."""
        from ._fsutil import remove_tree

        try:
            names = os.listdir(self.tmp_dir)
        except OSError:
            return
        now = time.time()
        for name in names:
            p = self.tmp_dir / name
            try:
                if now - os.lstat(p).st_mtime > STALE_TMP_S:
                    remove_tree(p)
            except OSError:
                pass

    # --- management (cache ls / rm / verify) ------------------------------------

    def keys(self) -> list[str]:
        try:
            return sorted(n for n in os.listdir(self.entries_dir) if _is_key(n))
        except FileNotFoundError:
            return []

    def describe(self, key: str) -> EntryInfo:
        """What ``ls`` shows; read without trusting it (display only, never used to load)."""
        path = self.entry_path(key)
        size, created, repo, entrypoint = tree_size(path), None, None, None
        try:
            with open(path / KEY_FILE, "rb") as f:
                doc = json.loads(f.read(MAX_KEY_BYTES))
            created = str(doc.get("created"))[:40]
            r = doc.get("inputs", {}).get("repo", {})
            if doc.get("inputs", {}).get("kind") == "deferred-graph":
                repo = f"graph of load {str(doc['inputs'].get('load'))[:12]}"
            elif r.get("source") == "github":
                repo = f"{r.get('host')}/{r.get('owner')}/{r.get('name')}@{str(r.get('sha'))[:12]}"
            else:
                repo = f"local tree {str(r.get('tree'))[:12]}"
            entrypoint = str(doc.get("inputs", {}).get("entrypoint"))[:128]
        except (OSError, ValueError, AttributeError, TypeError):
            pass
        return EntryInfo(key, path, size, created, repo, entrypoint)

    def remove(self, key: str) -> bool:
        from ._fsutil import remove_tree

        with self._lock(key):
            try:
                os.unlink(self.verified_dir / f"{key}.json")
            except OSError:
                pass
            return remove_tree(self.entry_path(key))

    def verify(self, key: str) -> None:
        """Every check a hit gets, tensors loaded on the CPU; raises ArtifactCacheError."""
        found = self.load(key, device="cpu", rehash=True)
        if found is None:
            raise self._error(key, "it is gone")

