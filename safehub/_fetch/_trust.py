"""trust_repo, with torch.hub's values and meanings, kept where repo code cannot write.

- ``False``: always ask; ``"y"`` adds the repo to the trusted list.
- ``"check"`` (the default of load/list/help, as in torch.hub): ask only if the repo
  is not trusted yet.
- ``True``: trust it and add it to the list without asking.
- ``None``: warn if the repo is not trusted, never ask, never add. torch.hub 2.13
  no longer special-cases None: it falls through to "trust and add to the list
  silently". safehub keeps the older warning on purpose: a value that means "I did
  not choose" should not grow the trusted list.

Differences from torch.hub, on purpose:
- the list is ``<hub_dir>/trusted_list.json``, keyed by host/owner/name (a GitHub
  Enterprise "pytorch" org is not github.com's), and is never mounted into a sandbox;
- a folder in the cache never implies trust (torch.hub's "legacy" rule);
- torch.hub's built-in trusted owners count only on github.com itself, or on a
  GitHub Enterprise host that mirrors github.com's owners when the user says so
  (``SAFEHUB_TRUST_BUILTIN_OWNERS=1``);
- when no answer can be read (no terminal, closed stdin) or prompts are not
  allowed, the result is an UntrustedRepoError that says what to pass, not EOFError.
"""

from __future__ import annotations

import builtins
import json
import logging
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

from .._errors import UntrustedRepoError
from ._cache import atomic_write_json

__all__ = ["TrustStore", "check_trust", "TRUSTED_OWNERS", "trust_key"]

logger = logging.getLogger("safehub")

TRUSTED_OWNERS = ("facebookresearch", "facebookincubator", "pytorch", "fairinternal")
_VALID = (True, False, None, "check")


def trust_key(host: str, owner: str, name: str) -> str:
    return f"{host}/{owner.lower()}/{name.lower()}"


class TrustStore:
    def __init__(self, hub_dir: Path) -> None:
        self.path = Path(hub_dir) / "trusted_list.json"

    def load(self) -> set[str]:
        try:
            with open(self.path, "rb") as f:
                data = json.loads(f.read(4 << 20).decode("utf-8"))
        except FileNotFoundError:
            return set()
        except (OSError, ValueError) as exc:
            # Fail closed: an unreadable list trusts nothing, and says so.
            logger.warning("ignoring unreadable trusted list %s: %s", self.path, exc)
            return set()
        repos = data.get("repos") if isinstance(data, dict) else None
        return {r for r in repos if isinstance(r, str)} if isinstance(repos, list) else set()

    def add(self, key: str) -> None:
        from .._fsutil import FileLock

        self.path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.path) + ".lock"):
            repos = self.load()
            if key not in repos:
                repos.add(key)
                atomic_write_json(self.path, {"version": 1, "repos": sorted(repos)})


def _ask(question: str, prompt: Callable[[str], str] | None) -> str:
    ask = prompt or builtins.input  # looked up now, so a patched input() is honoured
    try:
        return ask(question)
    except (EOFError, OSError):
        # input() left the prompt without its newline; end the line so the error
        # that follows starts on its own.
        if prompt is None:
            try:
                sys.stdout.write("\n")
                sys.stdout.flush()
            except (OSError, ValueError):
                pass
        # No terminal (CI, a service, pytest's captured stdin): an error that says what to do.
        raise UntrustedRepoError(
            "Untrusted repository: safehub needed to ask whether you trust it, but no answer could be read "
            "(stdin is closed or not a terminal)",
            hint="pass trust_repo=True to trust it, or trust_repo='check' after trusting it once interactively",
        ) from None


def check_trust(
    hub_dir: Path,
    *,
    host: str,
    is_github_com: bool,
    owner: str,
    name: str,
    trust_repo: bool | str | None,
    calling_fn: str = "load",
    allow_prompt: bool = True,
    prompt: Callable[[str], str] | None = None,
    builtin_owners: bool | None = None,
) -> None:
    """``builtin_owners``: whether TRUSTED_OWNERS count on this host (default: only
    on github.com; see SAFEHUB_TRUST_BUILTIN_OWNERS)."""
    if trust_repo not in _VALID or isinstance(trust_repo, int) and not isinstance(trust_repo, bool):
        raise ValueError(f"trust_repo must be True, False, 'check' or None, not {trust_repo!r}")
    store = TrustStore(hub_dir)
    key = trust_key(host, owner, name)
    if builtin_owners is None:
        builtin_owners = is_github_com
    is_trusted = key in store.load() or (builtin_owners and owner.lower() in TRUSTED_OWNERS)
    slug = f"{owner}/{name}" if is_github_com else f"{host}/{owner}/{name}"

    if trust_repo is None:
        if not is_trusted:
            warnings.warn(
                "You are about to download and run code from an untrusted repository. In a future release, this "
                "won't be allowed. To add the repository to your trusted list, change the command to "
                f"{calling_fn}(..., trust_repo=False) and a command prompt will appear asking for an explicit "
                f"confirmation of trust, or {calling_fn}(..., trust_repo=True), which will assume that the prompt "
                f"is to be answered with 'yes'. You can also use {calling_fn}(..., trust_repo='check') which will "
                f"only prompt for confirmation if the repo is not already trusted. (repo: {slug}; safehub runs "
                "its code in a sandbox either way)",
                UserWarning,
                stacklevel=4,
            )
        return

    if trust_repo is False or (trust_repo == "check" and not is_trusted):
        if not allow_prompt:
            raise UntrustedRepoError(
                f"Untrusted repository: {slug} is not in the trusted list and prompts are disabled by policy",
                hint="trust it explicitly with trust_repo=True, or ask your administrator to allow it",
            )
        answer = _ask(
            f"The repository {slug} does not belong to the list of trusted repositories and as such cannot be "
            "downloaded. Do you trust this repository and wish to add it to the trusted list of repositories (y/N)? ",
            prompt,
        )
        answer = answer.strip().lower()
        if answer in ("y", "yes"):
            if is_trusted:
                logger.info("The repository %s is already trusted.", slug)
        elif answer in ("n", "no", ""):
            raise UntrustedRepoError(f"Untrusted repository: you declined to trust {slug}")
        else:
            raise UntrustedRepoError(
                f"Untrusted repository: unrecognized response {answer[:20]!r}", hint="answer y or n"
            )

    if not is_trusted:
        store.add(key)
