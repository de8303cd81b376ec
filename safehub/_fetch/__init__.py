"""Fetching repos from GitHub (or a mirror), safely, into a verified cache.

Public to the rest of safehub:
- :func:`get_repo` -> :class:`RepoCheckout` (torch.hub's ``_get_cache_or_reload``)
- :func:`download_url_to_file` (torch.hub's signature)
- :func:`prefetch_downloads` / :func:`stage_downloads` / :func:`parse_needs_download`
  (the weight-download broker for entrypoints that call load_state_dict_from_url)
- :func:`add_cache_commands` (``safehub cache ls|rm|verify``)
"""

from __future__ import annotations

from ._cli import add_cache_commands
from ._downloads import download_url_to_file, parse_needs_download, prefetch_downloads, stage_downloads
from ._names import RepoSpec, parse_repo
from ._repo import RepoCheckout, get_repo

__all__ = [
    "get_repo",
    "RepoCheckout",
    "download_url_to_file",
    "prefetch_downloads",
    "stage_downloads",
    "parse_needs_download",
    "add_cache_commands",
    "parse_repo",
    "RepoSpec",
]
