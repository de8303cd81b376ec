"""Fetching repos from GitHub (or a mirror), safely, into a verified cache.

Public to the rest of safehub:
- :func:`fetch_repo` (:class:`RepoRequest`) / :func:`get_repo` (keywords) -> :class:`RepoCheckout`
  (torch.hub's ``_get_cache_or_reload``); ``SOURCES`` is the registry of fetch sources
- :func:`download_url_to_file` (torch.hub's signature)
- :func:`prefetch_downloads` / :func:`stage_downloads`
  (the weight-download broker for entrypoints that call load_state_dict_from_url)
- :func:`add_cache_commands` (``safehub cache ls|rm|verify``)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports
from ._downloads import download_url_to_file, prefetch_downloads, stage_downloads
from ._names import RepoSpec, parse_repo
from ._repo import SOURCES, RepoCheckout, RepoRequest, fetch_repo, get_repo

__all__ = [
    "get_repo",
    "fetch_repo",
    "RepoRequest",
    "SOURCES",
    "RepoCheckout",
    "download_url_to_file",
    "prefetch_downloads",
    "stage_downloads",
    "add_cache_commands",
    "parse_repo",
    "RepoSpec",
]

if TYPE_CHECKING:
    from ._cli import add_cache_commands

# Imported on first use (the cache CLI is no part of a load): safehub/_lazy.py.
__getattr__ = lazy_exports(__name__, {"add_cache_commands": "._cli"})
