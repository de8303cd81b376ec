"""The matching rules of a policy's allowlists, kept small and strict.

* repos: ``owner/name`` or ``owner/*``, ASCII only (a look-alike letter is a
  different repo), compared case-insensitively as GitHub does. A pattern is two
  whole path components: ``owner/*`` never matches ``owner-evil/x``, and nothing
  with a third component, a ``..``, a trailing slash or a ``.git`` suffix parses
  as a repo in the first place (safehub._fetch._names refuses it).
* hosts: ``host`` (meaning ``https://host``, port 443), ``scheme://host[:port]``,
  or ``*.domain`` (any subdomain, https only; not the domain itself). Names are
  IDNA-encoded and lower-cased, one trailing dot dropped; a URL matches on its
  exact scheme, host and port (urlsplit's reading, the same the downloader uses).
* packages: a distribution name with an optional PEP 440 specifier set
  (``numpy>=1.24,<3``), compared by canonical name (PEP 503).
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from ._records import record

__all__ = ["RepoPattern", "HostPattern", "parse_repo_pattern", "parse_host", "parse_package", "url_origin",
           "canonical_name"]

_OWNER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,38}$")
_NAME = re.compile(r"^[A-Za-z0-9._-]{1,100}$")
_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_DIST = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?$")


def canonical_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@record(frozen=True)
class RepoPattern:
    """A policy's ``owner/name`` or ``owner/*`` pattern."""

    owner: str  # lower case
    name: str | None  # lower case; None for owner/*

    def matches(self, owner: str, name: str) -> bool:
        return owner.lower() == self.owner and (self.name is None or name.lower() == self.name)

    def covers(self, other: "RepoPattern") -> bool:
        """Everything ``other`` matches, this matches too."""
        return self.owner == other.owner and (self.name is None or self.name == other.name)

    def __str__(self) -> str:
        return f"{self.owner}/{self.name or '*'}"


def parse_repo_pattern(text: str) -> RepoPattern:
    if not text.isascii():
        raise ValueError("has a non-ASCII character (GitHub names are ASCII; a look-alike letter is another repo)")
    parts = text.split("/")
    if len(parts) != 2:
        raise ValueError("is not owner/name or owner/*")
    owner, name = parts
    if not _OWNER.match(owner):
        raise ValueError("does not start with a valid GitHub owner (letters, digits and hyphens)")
    if name == "*":
        return RepoPattern(owner.lower(), None)
    if not _NAME.match(name) or name in (".", "..") or "*" in name:
        raise ValueError("has an invalid repository name (only owner/* may use a wildcard)")
    return RepoPattern(owner.lower(), name.lower())


@record(frozen=True)
class HostPattern:
    """A policy's URL origin pattern (``*.`` for a domain and its subdomains)."""

    scheme: str
    host: str  # IDNA, lower case, no trailing dot; for a wildcard, the domain after "*."
    port: int
    wildcard: bool = False

    def matches(self, scheme: str, host: str, port: int) -> bool:
        if (scheme, port) != (self.scheme, self.port):
            return False
        if self.wildcard:
            return host.endswith("." + self.host)
        return host == self.host

    def covers(self, other: "HostPattern") -> bool:
        if (other.scheme, other.port) != (self.scheme, self.port):
            return False
        if self.wildcard:
            return other.host.endswith("." + self.host)
        return not other.wildcard and other.host == self.host

    def __str__(self) -> str:
        default = 443 if self.scheme == "https" else 80
        host = f"*.{self.host}" if self.wildcard else self.host
        return f"{self.scheme}://{host}" + ("" if self.port == default else f":{self.port}")


def _idna(host: str) -> str:
    host = host.lower()
    if host.endswith("."):
        host = host[:-1]
    try:
        ascii_host = host.encode("idna").decode("ascii") if not host.isascii() else host
    except UnicodeError:
        raise ValueError("is not a valid (IDNA) host name") from None
    labels = ascii_host.split(".")
    if not ascii_host or not all(_LABEL.match(label) for label in labels):
        raise ValueError("is not a valid host name (letters, digits, hyphens and dots)")
    return ascii_host


def parse_host(text: str) -> HostPattern:
    item = text.strip()
    url = item if "://" in item else f"https://{item}"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError("must be a host name or an http(s) origin")
    if parts.username is not None or parts.password is not None or parts.path not in ("", "/") or parts.query \
            or parts.fragment:
        raise ValueError("must be a bare origin: no user, path, query or fragment")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise ValueError("has an invalid port") from None
    host = parts.hostname or ""
    wildcard = host.startswith("*.")
    if wildcard:
        host = host[2:]
    if "*" in host:
        raise ValueError("may use a wildcard only as a leading '*.'")
    return HostPattern(parts.scheme, _idna(host), port, wildcard)


def url_origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) as the downloader reads the URL; the host normalised like a pattern.
    A URL urlsplit cannot read has no origin: ("", "", -1), which matches nothing."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "", "", -1
    scheme = parts.scheme.lower()
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        port = -1
    host = (parts.hostname or "").lower()
    if host.endswith("."):
        host = host[:-1]
    return scheme, host, port


def parse_package(text: str) -> tuple[str, str]:
    """(canonical name, normalised specifier set) of ``name[specifier]``."""
    from packaging.specifiers import InvalidSpecifier, SpecifierSet

    m = re.match(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(.*?)\s*$", text)
    if m is None or not _DIST.match(m.group(1)):
        raise ValueError("is not a package name with an optional version specifier (e.g. 'numpy>=1.24,<3')")
    spec = m.group(2)
    if spec:
        try:
            spec = str(SpecifierSet(spec))
        except InvalidSpecifier:
            raise ValueError("has a version specifier that is not valid PEP 440") from None
    return canonical_name(m.group(1)), spec
