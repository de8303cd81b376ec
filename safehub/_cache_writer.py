"""The artifact cache's background writer: one entry written after the load that
made it has returned, so a first load does not wait for its weights to be
copied, hashed and fsynced (0.08 s for 45 MB here, the time grows with the model).

It is safehub's own code in a host process (``python -I -S`` on this file:
standard library only, nothing imported from safehub, the repo or site-packages),
never repo code, and it reads nothing the sandbox can still change. The loading
process (``ArtifactCache.store_in_background``) hands it three descriptors:

* the job document, in a memfd: the entry's paths, the validated ``spec.json``
  bytes, the provenance record (all but the files' hashes) and the key record;
* the sealed weights memfd the model was built from (sealed: its bytes can never
  change, _channel/_memfd.py), or the huge-page tmpfs file, read-only once proven
  to have no writer left (_channel/_huge_tmpfs.py). The host validated exactly these bytes, and the
  model was built from them untouched, so they are the entry's weights file;
* the entry's lock (``flock``), taken before the load returned. A lookup of the
  key that finds no entry waits for that lock (``ArtifactCache.load``), so a load
  followed by the same load is a hit, as when entries were written inline; the
  kernel drops the lock when this process ends, however it ends.

The entry is written the way ``ArtifactCache.store`` writes one: in ``tmp/``, each
file and folder fsynced, then one ``rename`` into ``entries/``; a writer killed part
way leaves a ``tmp/`` folder nothing reads. A failure is logged to
``artifacts/writer.log``; the next load of the key misses and stores again.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import secrets
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["write_entry", "place_entry", "tmp_name", "spawn", "reap", "fsync_dir", "key_record", "SPEC_FILE", "WEIGHTS_FILE", "PROVENANCE_FILE"]

# The names below are the artifact format's (safehub/_contract.py, _artifact_format.py);
# tests/test_cache_writer.py checks they agree, since this file imports nothing of safehub.
SPEC_FILE = "spec.json"
WEIGHTS_FILE = "weights.safetensors"
PROVENANCE_FILE = "provenance.json"
KEY_FILE = "key.json"
ARTIFACT_DIR = "artifact"
KEY_FORMAT = "safehub-artifact-cache"
KEY_VERSION = 1
CHUNK = 8 << 20


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def key_record(key: str, inputs: dict[str, Any], provenance_sha256: str) -> str:
    """``key.json``'s text (read back by ArtifactCache._read_key_file)."""
    doc = {"format": KEY_FORMAT, "version": KEY_VERSION, "key": key, "inputs": inputs,
           "provenance_sha256": provenance_sha256, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    return json.dumps(doc, indent=1, ensure_ascii=True) + "\n"


def _write_new(path: Path, data: bytes) -> None:
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _copy_hashed(src_fd: int, dst: Path) -> tuple[str, int]:
    """The whole of ``src_fd`` into the new file ``dst``, hashed on the way."""
    size = os.fstat(src_fd).st_size
    digest = hashlib.sha256()
    with open(dst, "xb") as f:
        if size:
            with mmap.mmap(src_fd, size, prot=mmap.PROT_READ) as mapped, memoryview(mapped) as view:
                for start in range(0, size, CHUNK):
                    with view[start:start + CHUNK] as chunk:
                        digest.update(chunk)
                        f.write(chunk)
        f.flush()
        os.fsync(f.fileno())
    return digest.hexdigest(), size


def tmp_name(key: str, suffix: str = "") -> str:
    """A new name in ``tmp/`` for an entry of ``key`` being written (or an old one going)."""
    return f"{key[:16]}-{secrets.token_hex(8)}{suffix}"


def place_entry(tmp: Path, final: Path, tmp_dir: Path, key: str, *, replace: bool,
                remove: Callable[[Path], object]) -> bool:
    """Rename the finished entry ``tmp`` to ``final`` under the entry's lock (the caller
    holds it): the entry appears whole or not at all. An entry already there stays
    (False) unless ``replace``; then it is swapped out and ``remove``d."""
    if os.path.lexists(final):
        if not replace:
            return False
        old = tmp_dir / tmp_name(key, ".old")
        os.rename(final, old)
        os.rename(tmp, final)
        remove(old)
    else:
        os.rename(tmp, final)
    fsync_dir(final.parent)
    return True


def write_entry(doc: dict[str, Any], weights_fd: int) -> bool:
    """Write the entry ``doc`` describes; the caller holds the entry's lock.
    Returns False when an entry was there already and ``doc["replace"]`` is false."""
    entries, tmp_dir = Path(doc["entries_dir"]), Path(doc["tmp_dir"])
    key = doc["key"]
    final = entries / key
    tmp = tmp_dir / tmp_name(key)
    tmp.mkdir(mode=0o700)
    try:
        art = tmp / ARTIFACT_DIR
        art.mkdir(mode=0o700)
        spec_raw = doc["spec"].encode("ascii")
        _write_new(art / SPEC_FILE, spec_raw)
        weights_sha, weights_bytes = _copy_hashed(weights_fd, art / WEIGHTS_FILE)
        provenance = dict(doc["provenance"])
        provenance["files"] = {SPEC_FILE: {"sha256": hashlib.sha256(spec_raw).hexdigest(), "bytes": len(spec_raw)},
                               WEIGHTS_FILE: {"sha256": weights_sha, "bytes": weights_bytes}}
        prov_raw = (json.dumps(provenance, indent=2, ensure_ascii=True) + "\n").encode("ascii")
        _write_new(art / PROVENANCE_FILE, prov_raw)
        os.chmod(art, 0o755)  # as safehub.save leaves an artifact
        fsync_dir(art)
        _write_new(tmp / KEY_FILE, key_record(key, doc["inputs"], hashlib.sha256(prov_raw).hexdigest()).encode("ascii"))
        fsync_dir(tmp)
        return place_entry(tmp, final, tmp_dir, key, replace=doc["replace"],
                           remove=lambda p: shutil.rmtree(p, ignore_errors=True))
    finally:
        if os.path.lexists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


# Writers this process started and has not yet reaped (os.waitpid): each is reaped
# by the next spawn once it has exited; one still running when this process exits is
# reparented and reaped by init. No Popen object: its __del__ warns about a child
# that outlives it, which a writer is meant to do.
_STARTED: list[int] = []
_FIRST_FD = 3


def spawn(doc_fd: int, weights_fd: int, lock_fd: int, log_path: Path) -> int:
    """Start ``python -I -S`` on this file in a new session, with the three descriptors
    as fds 3, 4 and 5 (nothing else of this process's is inherited but what is not
    close-on-exec), stdin and stdout on /dev/null and stderr appended to ``log_path``.
    Returns its pid. ``posix_spawn``: no Python code runs between fork and exec."""
    reap()
    # Copies at 10 and above first, so that placing them at 3, 4, 5 cannot overwrite a source.
    copies = [_dup_high(fd) for fd in (doc_fd, weights_fd, lock_fd)]
    try:
        actions: list[tuple[Any, ...]] = [(os.POSIX_SPAWN_DUP2, fd, _FIRST_FD + i) for i, fd in enumerate(copies)]
        actions += [(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
                    (os.POSIX_SPAWN_OPEN, 2, str(log_path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)]
        argv = [sys.executable, "-I", "-S", os.path.abspath(__file__)] + [str(_FIRST_FD + i) for i in range(3)]
        pid = os.posix_spawn(sys.executable, argv, dict(os.environ), file_actions=actions,
                             setsid=True)  # its own session: a ^C at the terminal does not stop it
    finally:
        for fd in copies:
            os.close(fd)
    _STARTED.append(pid)
    return pid


def _dup_high(fd: int) -> int:
    import fcntl

    return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)


def reap() -> None:
    """Collect the exit status of every writer this process started that has ended."""
    for pid in list(_STARTED):
        try:
            done, _status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # reaped elsewhere (a SIGCHLD handler, subprocess's own sweep)
            done = pid
        if done:
            _STARTED.remove(pid)


def main(argv: list[str]) -> int:
    """``python -I -S _cache_writer.py DOC_FD WEIGHTS_FD LOCK_FD``."""
    doc_fd, weights_fd, lock_fd = (int(a) for a in argv[1:4])
    try:
        with os.fdopen(doc_fd, "rb") as f:
            doc = json.loads(f.read())
        write_entry(doc, weights_fd)  # False (another writer was first) is no failure
        return 0
    except BaseException as exc:  # noqa: BLE001 - logged; the next load of this key stores it again
        print(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} could not write an artifact-cache entry: "
              f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    finally:
        os.close(lock_fd)  # (the exit would drop it too)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
