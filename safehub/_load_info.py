"""LoadInfo: what a load used, attached to the returned module as ``safehub_info``.

Its own module so that ``import safehub`` (safehub/_api.py) need not import
dataclasses; ``safehub.LoadInfo`` imports it on first use.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ._records import record

__all__ = ["LoadInfo"]


@record(frozen=True)
class LoadInfo:
    """What a load used; attached to the returned module as ``safehub_info``."""

    repo: str
    source: str
    sha: str | None
    entrypoint: str
    backend: str
    limits: dict[str, Any]
    env_key: str
    env_backend: str
    summary: dict[str, Any]
    sandbox_details: dict[str, Any]
    dependencies: dict[str, Any]  # mode, installed "name==version" and the sha256 of each RECORD
    # Files the host fetched for the entrypoint: url, bytes, sha256, cached, seconds.
    downloads: tuple[dict[str, Any], ...] = ()
    # Seconds per part of the load: measured here, plus "runner_*" as the runner reported
    # them (whitelisted and bounded by read_summary), and "cache_store" when the load
    # was written to the artifact cache. See _timings.
    timings: dict[str, float] = dataclasses.field(default_factory=dict)
    # The organisation policy files and lockfiles this load was checked against (docs/policy.md).
    policy: dict[str, Any] = dataclasses.field(default_factory=dict)
    # The artifact cache: hit, key, and why a load was not stored (see _artifact_cache).
    cache: dict[str, Any] = dataclasses.field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)
