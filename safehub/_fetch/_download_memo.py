"""The URLs an entrypoint used last time, remembered per repo snapshot and
entrypoint: ``<hub>/memo/downloads-<key>.json``. "Used": the staged URLs its runner
was served (``result.json``'s ``downloads_used``, each checked to be one the host
staged), so a URL it no longer asks for is dropped after one load.

Without it, a load whose entrypoint downloads its checkpoint runs the sandbox
twice: once until the entrypoint asks for the file (the sandbox has no network),
then again with the file the host fetched. With it, the host fetches (usually from
its checkpoint cache) and stages those URLs before the first run, which then
finishes: one sandbox run instead of two (about 0.4 s of a warm worker's load).

A memo is only a hint. Its URLs go through the same checks as the entrypoint's own
requests (``validate_url``, the policy's URL and host rules, the download budget),
so a forged memo can make the host fetch only what the entrypoint could have asked
for itself. A hint that fails to fetch is dropped, and the entrypoint asks for what
it needs as before. Bounded: at most MAX_DOWNLOAD_URLS URLs, 64 KiB.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._contract import MAX_DOWNLOAD_URLS
from .._errors import SafehubError
from .._fsutil import read_memo, write_memo

if TYPE_CHECKING:
    from ._repo import RepoCheckout

__all__ = ["remembered_urls", "remember_urls"]

logger = logging.getLogger("safehub")

MEMO_VERSION = 1
MAX_BYTES = 64 * 1024


def _key(repo: RepoCheckout, entrypoint: str) -> dict[str, Any]:
    """What a memo belongs to: a GitHub snapshot by its SHA; a local folder by its
    real path (its content may change: the hint may then be stale, which costs a
    fetch, never a wrong model)."""
    if repo.sha:
        where: list[Any] = [repo.source, repo.host, (repo.slug or "").lower(), repo.sha]
    else:
        where = [repo.source, str(Path(repo.path).resolve())]
    return {"repo": where, "entrypoint": entrypoint}


def _path(hub_dir: Path, key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
    return Path(hub_dir) / "memo" / f"downloads-{digest}.json"


def remembered_urls(hub_dir: Path, repo: RepoCheckout, entrypoint: str) -> list[str]:
    """The URLs the last load of ``entrypoint`` from this snapshot asked for, each
    checked as the entrypoint's own request would be; [] when there is no usable memo."""
    from ._downloads import validate_url

    key = _key(repo, entrypoint)
    doc = read_memo(_path(hub_dir, key), MAX_BYTES)
    if not isinstance(doc, dict) or doc.get("version") != MEMO_VERSION or doc.get("key") != key:
        return []
    urls = doc.get("urls")
    if not isinstance(urls, list) or len(urls) > MAX_DOWNLOAD_URLS:
        return []
    try:
        return list(dict.fromkeys(validate_url(u) for u in urls))
    except SafehubError:
        return []


def remember_urls(hub_dir: Path, repo: RepoCheckout, entrypoint: str, urls: Iterable[str]) -> None:
    """Record ``urls`` (those of a load that succeeded) for the next load; best effort."""
    listed = list(dict.fromkeys(urls))[:MAX_DOWNLOAD_URLS]
    key = _key(repo, entrypoint)
    write_memo(_path(hub_dir, key), {"version": MEMO_VERSION, "key": key, "urls": listed})
