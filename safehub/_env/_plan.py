"""Which dependencies a repo's env gets: the resolution modes.

* ``declared``: hubconf's ``dependencies`` only (import names mapped to
  distributions, standard-library names dropped);
* ``scan`` (default): ``declared`` plus the third-party imports a static scan
  finds (see _scan.py). A scanned name is installed only when the maintained
  tables know its distribution; an unknown name is never guessed (typosquats
  live in such guesses) and fails with an error naming ``extra_dependencies=``;
* ``requirements``: ``declared`` plus the repo's requirements.txt, or its
  pyproject.toml ``[project] dependencies``, read strictly (names and version
  specifiers; options, URLs and includes are skipped with a warning).

``extra_dependencies`` (a list of requirements, or a dict import name ->
requirement) is added in every mode. The mode comes from the caller's argument,
else ``$SAFEHUB_DEPENDENCIES``, else ``scan``.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import field
from pathlib import Path
from typing import Any

from .._errors import EnvironmentBuildError, escape_untrusted
from .._records import record
from ._resolve import IMPORT_TO_DIST, KNOWN_DISTS, TORCH_FAMILY, canonical, parse_entry
from ._scan import ScanResult, cached_scan

__all__ = ["MODES", "DependencyPlan", "UnknownImportError", "choose_mode", "plan_dependencies", "dist_for_import",
           "read_requirements", "plan_for_repo"]

logger = logging.getLogger("safehub")

MODES = ("declared", "scan", "requirements")
DEFAULT_MODE = "scan"
MAX_REQUIREMENT_LINES = 512
MAX_REQUIREMENTS_BYTES = 256 * 1024


class UnknownImportError(EnvironmentBuildError):
    """The scan found an import whose distribution safehub does not know."""


@record(frozen=True)
class DependencyPlan:
    """What a repo's env installs, and how that was decided."""

    mode: str
    entries: tuple[str, ...]  # what ensure_env resolves (import or distribution names + specifiers)
    scanned: tuple[str, ...] = ()  # distributions added by the scan
    optional: tuple[str, ...] = ()  # imports under try/except ImportError: not installed
    skipped: tuple[str, ...] = ()  # requirement lines not used, with why
    report: dict[str, Any] = field(default_factory=dict)


def choose_mode(mode: str | None, env: Mapping[str, str]) -> str:
    raw = mode if mode is not None else env.get("SAFEHUB_DEPENDENCIES") or DEFAULT_MODE
    value = str(raw).strip().lower()
    if value not in MODES:
        where = "dependencies_mode" if mode is not None else "SAFEHUB_DEPENDENCIES"
        raise ValueError(f"{where}={escape_untrusted(str(raw), limit=40)!r}: use one of {', '.join(MODES)}")
    return value


def dist_for_import(name: str) -> str | None:
    """The distribution a top-level (or dotted) import name comes from, if the tables know it."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        hit = IMPORT_TO_DIST.get(".".join(parts[:i]))
        if hit is not None:
            return hit
    return parts[0] if canonical(parts[0]) in KNOWN_DISTS else None


def _extras(extra: Sequence[str] | Mapping[str, str] | None) -> tuple[list[str], dict[str, str]]:
    """(requirements, import name -> requirement) from the caller's extra_dependencies."""
    if extra is None:
        return [], {}
    if isinstance(extra, (str, bytes)):
        raise ValueError("extra_dependencies must be a list of requirements (or a dict import name -> requirement)")
    if isinstance(extra, Mapping):
        mapping = {}
        for name, req in extra.items():
            if not (isinstance(name, str) and name.isidentifier()):
                raise ValueError(f"extra_dependencies key {name!r} is not an import name")
            parse_entry(req)
            mapping[name] = req
        return list(mapping.values()), mapping
    reqs = list(extra)
    for req in reqs:
        parse_entry(req)  # validated like hubconf entries
    return reqs, {}


_REQ_LINE = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[A-Za-z0-9_,\s.-]*\])?\s*"
                       r"(?P<spec>(?:[<>=!~]=?[^;]*)?)\s*(?:;(?P<marker>.*))?$")


def _strict_requirement(line: str) -> tuple[str | None, str]:
    """A requirement line -> (name+specifier, or None with why)."""
    from packaging.markers import InvalidMarker, Marker

    if line.startswith("-") or "://" in line or " @ " in line or line.startswith((".", "/", "~")):
        return None, "options, URLs, paths and includes are not followed"
    m = _REQ_LINE.match(line)
    if m is None:
        return None, "not a plain 'name specifier' requirement"
    marker = (m.group("marker") or "").strip()
    if marker:
        try:
            if not Marker(marker).evaluate({"extra": ""}):
                return None, "its environment marker excludes this interpreter"
        except (InvalidMarker, Exception):  # noqa: BLE001 - any marker trouble: skip the line
            return None, "its environment marker is invalid"
    name, spec = m.group("name"), (m.group("spec") or "").strip()
    if canonical(name) in TORCH_FAMILY:
        return name, ""  # the host's build is what the env gets; pins in requirements files are routine
    return (f"{name}{spec}" if spec else name), ""


def read_requirements(repo: Path) -> tuple[list[str], list[str]]:
    """(requirements, skipped lines with why) from requirements.txt or pyproject.toml."""
    lines: list[str] = []
    req_txt = repo / "requirements.txt"
    pyproject = repo / "pyproject.toml"
    if req_txt.is_file():
        with open(req_txt, "rb") as f:
            raw = f.read(MAX_REQUIREMENTS_BYTES)
        for line in raw.decode("utf-8", errors="replace").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                lines.append(line)
    elif pyproject.is_file():
        try:
            import tomllib
        except ImportError:  # Python 3.10
            return [], ["pyproject.toml (reading it needs Python 3.11's tomllib)"]
        with open(pyproject, "rb") as f:
            raw = f.read(MAX_REQUIREMENTS_BYTES)
        try:
            data = tomllib.loads(raw.decode("utf-8", errors="replace"))
        except (tomllib.TOMLDecodeError, RecursionError):
            return [], ["pyproject.toml (not valid TOML)"]
        deps = (data.get("project") or {}).get("dependencies") or []
        lines = [d.strip() for d in deps if isinstance(d, str)] if isinstance(deps, list) else []
    out: list[str] = []
    skipped: list[str] = []
    for line in lines[:MAX_REQUIREMENT_LINES]:
        req, why = _strict_requirement(line)
        if req is None:
            skipped.append(f"{escape_untrusted(line, limit=120)} ({why})")
        else:
            out.append(req)
    if len(lines) > MAX_REQUIREMENT_LINES:
        skipped.append(f"{len(lines) - MAX_REQUIREMENT_LINES} lines past the first {MAX_REQUIREMENT_LINES}")
    return out, skipped


def _declared_names(entries: Iterable[str]) -> set[str]:
    """Canonical names an entry covers: itself and the distribution it maps to."""
    out = set()
    for entry in entries:
        name, _spec = parse_entry(entry)
        out.add(canonical(name.split(".")[0]))
        dist = dist_for_import(name)
        if dist:
            out.add(canonical(dist))
    return out


# Import names torch's own wheel provides: never a separate family package to check for.
_IN_TORCH = frozenset({"torch", "torchgen", "functorch"})


def plan_dependencies(
    repo: Path,
    declared: Sequence[str],
    *,
    mode: str,
    extra: Sequence[str] | Mapping[str, str] | None = None,
    family: frozenset[str] = frozenset(),
    cache_dir: Path | None = None,
    immutable: bool = False,
) -> DependencyPlan:
    """Decide the dependency entries for ``repo`` (see module doc). Pure apart from reading the repo."""
    extra_reqs, extra_map = _extras(extra)
    entries = [*declared, *extra_reqs]
    if mode == "declared":
        return DependencyPlan(mode=mode, entries=tuple(entries))
    if mode == "requirements":
        reqs, skipped = read_requirements(repo)
        for why in skipped:
            logger.warning("requirements of %s: skipped %s", repo, why)
        return DependencyPlan(mode=mode, entries=tuple(entries + reqs), skipped=tuple(skipped))

    scan: ScanResult = cached_scan(repo, cache_dir, family=family, immutable=immutable)
    covered = _declared_names(entries)
    added: list[str] = []
    unknown: list[str] = []
    for name in sorted(scan.third_party):
        if name in extra_map or name.startswith("_"):
            continue  # a leading '_' is never a package name (C extensions, the runner's own modules)
        dist = dist_for_import(name)
        if (dist is not None and canonical(dist) in covered) or canonical(name) in covered:
            continue
        if dist is None:
            unknown.append(name)
        else:
            added.append(name)  # an import name; resolve_dependencies maps it
    # A torch-family import the host may lack (torchvision...): checked against the host.
    for name in sorted(scan.family):
        dist = dist_for_import(name) or name
        if canonical(dist) in TORCH_FAMILY and canonical(dist) not in covered and name not in _IN_TORCH:
            added.append(name)
    if unknown:
        where = ", ".join(f"{n} ({escape_untrusted(scan.where.get(n, '?'), limit=120)})" for n in unknown)
        raise UnknownImportError(
            f"the repo imports {where}, which it does not declare and whose package safehub cannot "
            "name for certain (guessing a package from an import name is how typosquats get installed)",
            hint="name the distribution yourself: load(..., extra_dependencies=['<package>']) "
            f"(or {{'{unknown[0]}': '<package>'}} when the import name differs), "
            "or use dependencies_mode='declared' / 'requirements' (SAFEHUB_DEPENDENCIES)",
        )
    if scan.optional:
        logger.info("optional imports (under try/except ImportError) not installed: %s",
                    ", ".join(sorted(scan.optional)))
    if scan.lazy:
        logger.info("imports inside functions of the repo's library modules, not installed: %s "
                    "(if one is needed, the load names it and the extra_dependencies= fix)",
                    ", ".join(sorted(scan.lazy)))
    if scan.truncated:
        logger.warning("the import scan of %s stopped at a size bound; it may have missed imports", repo)
    return DependencyPlan(mode=mode, entries=tuple(entries + added), scanned=tuple(added),
                          optional=tuple(sorted(scan.optional)), report=scan.as_dict())


# Import names of torch-family distributions, whether or not this host has them:
# a repo importing torchvision on a host without it must fail with the host's error.
FAMILY_IMPORTS = frozenset({"torch", "torchvision", "torchaudio", "torchtext", "torchdata", "torcharrow",
                            "torchrec", "torchcsprng", "torch_tensorrt", "functorch", "triton", "torchgen"})


def plan_for_repo(
    repo: Path,
    declared: Sequence[str],
    *,
    hub_dir: Path | str,
    mode: str | None = None,
    extra: Sequence[str] | Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
    pinned: bool = False,
) -> DependencyPlan:
    """``pinned``: ``repo`` is a checkout of one commit that never changes (cached by path alone).
    ``plan_dependencies`` with the mode chosen from the argument or $SAFEHUB_DEPENDENCIES,
    the host's torch family as the provided names, and the scan cached under ``hub/scans``."""
    env = os.environ if env is None else env
    chosen = choose_mode(mode, env)
    family: frozenset[str] = FAMILY_IMPORTS
    hub = Path(hub_dir).expanduser().resolve()
    if chosen == "scan":
        from ._family import ensure_family, family_names
        from ._host import host_info

        family = family | family_names(ensure_family(hub, host_info(hub).family_dists).folder)
    return plan_dependencies(Path(repo), declared, mode=chosen, extra=extra, family=family,
                             cache_dir=hub / "scans", immutable=pinned)
