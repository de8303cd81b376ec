"""Parsing ``owner/repo[:ref]`` against GitHub's name grammar.

Everything is ASCII-only on purpose: a Cyrillic ``а`` in ``pytorch/vіsion`` is a
different repo that looks the same, so non-ASCII input is refused outright rather
than normalised.
"""

from __future__ import annotations

import re

from .._errors import InvalidRepoError
from .._records import record

__all__ = ["RepoSpec", "parse_repo", "validate_ref", "is_full_sha", "SHA_RE"]

# GitHub user/org names: alphanumerics and single hyphens, no leading/trailing
# hyphen, at most 39 characters. Some legacy accounts break the hyphen rules, so
# only the character set, the length and a non-hyphen start are enforced.
_OWNER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,38}$")
# Repository names: letters, digits, '.', '_', '-', at most 100 characters.
_NAME_RE = re.compile(r"^[A-Za-z0-9._-]{1,100}$")
SHA_RE = re.compile(r"^[0-9a-f]{40}$")
_HEX_RE = re.compile(r"^[0-9a-fA-F]+$")
# git check-ref-format, restricted to printable ASCII.
_REF_BAD_CHARS = re.compile(r"[\x00-\x20\x7f~^:?*\[\\]")
MAX_REF_LEN = 255
MIN_SHORT_SHA = 7


@record(frozen=True)
class RepoSpec:
    """A parsed ``owner/name[:ref]``. ``ref`` is None when the user gave none."""

    owner: str
    name: str
    ref: str | None

    @property
    def slug(self) -> str:
        return f"{self.owner}/{self.name}"

    def __str__(self) -> str:
        return self.slug if self.ref is None else f"{self.slug}:{self.ref}"


def is_full_sha(ref: str) -> bool:
    return bool(SHA_RE.match(ref))


def looks_like_short_sha(ref: str) -> bool:
    return bool(_HEX_RE.match(ref)) and len(ref) < 40


def _check_ascii(text: str, what: str) -> None:
    if not text.isascii():
        bad = next(c for c in text if not c.isascii())
        raise InvalidRepoError(
            f"{what} {text!r} contains the non-ASCII character {bad!r} (U+{ord(bad):04X})",
            hint="GitHub names are ASCII only; a look-alike letter means a different repo. Retype it by hand.",
        )


def validate_ref(ref: str) -> str:
    """Check a branch, tag or commit name against git's ref rules. Returns it unchanged."""
    _check_ascii(ref, "ref")
    problem = None
    if not ref:
        problem = "is empty"
    elif len(ref) > MAX_REF_LEN:
        problem = f"is longer than {MAX_REF_LEN} characters"
    elif _REF_BAD_CHARS.search(ref):
        problem = "contains a space, control character or one of ~^:?*[\\"
    elif ".." in ref or "@{" in ref or "//" in ref or ref == "@":
        problem = "contains '..', '@{', '//' or is '@'"
    elif ref.startswith(("/", "-")) or ref.endswith(("/", ".", ".lock")):
        problem = "starts with '/' or '-', or ends with '/', '.' or '.lock'"
    elif any(part.startswith(".") for part in ref.split("/")):
        problem = "has a path component starting with '.'"
    if problem:
        raise InvalidRepoError(f"ref {ref!r} {problem}", hint="pass a branch, tag or commit SHA as owner/repo:ref")
    return ref


def parse_repo(text: str) -> RepoSpec:
    """Parse ``owner/name`` or ``owner/name:ref`` (torch.hub's ``github`` argument)."""
    if not isinstance(text, str):
        raise InvalidRepoError(f"repo must be a string like 'owner/name[:ref]', not {type(text).__name__}")
    if len(text) > 400:
        raise InvalidRepoError("repo string is longer than 400 characters")
    _check_ascii(text, "repo")
    repo_part, sep, ref = text.partition(":")
    if sep and ":" in ref:
        raise InvalidRepoError(f"repo {text!r} has more than one ':'", hint="use owner/name:ref")
    parts = repo_part.split("/")
    if len(parts) != 2:
        raise InvalidRepoError(
            f"repo {text!r} is not of the form owner/name[:ref]",
            hint="e.g. 'pytorch/vision' or 'pytorch/vision:v0.10.0'; use source='local' for a folder",
        )
    owner, name = parts
    if not _OWNER_RE.match(owner):
        raise InvalidRepoError(
            f"repo owner {owner!r} is not a valid GitHub user or organisation name",
            hint="owners are 1-39 letters, digits or hyphens and do not start with a hyphen",
        )
    if not _NAME_RE.match(name) or name in {".", ".."}:
        raise InvalidRepoError(
            f"repo name {name!r} is not a valid GitHub repository name",
            hint="names are 1-100 letters, digits, '.', '_' or '-'",
        )
    if sep:
        validate_ref(ref)
    return RepoSpec(owner=owner, name=name, ref=ref if sep else None)
