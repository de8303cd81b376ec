"""Organisation policy: what may load, from where, with what, under which limits.

A policy is a TOML file (schema below; docs/policy.md). Layers, each of which may
only *narrow* the ones before it:

1. the system policy, ``/etc/safehub/policy.toml`` (when it exists);
2. ``$SAFEHUB_SYSTEM_POLICY`` (when set): another system layer. An environment
   variable can never replace /etc's file, only narrow it;
3. the user policy: ``policy=`` in the API, else ``$SAFEHUB_POLICY``, else
   ``<user config dir>/safehub/policy.toml`` (platformdirs).

A later layer that tries to widen an earlier one (allow a repo, host or package the
system did not, raise a limit, lower the sandbox minimum, turn a ``true``
requirement off) is refused with a PolicyError naming the rule and both files. A
missing key means "this layer adds no restriction". Every key is checked strictly:
an unknown key is an error naming the file, the key and the keys allowed.

This module reads and merges; enforcement is in _guard.py (called from the load
path) and the matching rules are in _policy_match.py.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import stat
import sys
from collections.abc import Mapping, Sequence
from dataclasses import field
from pathlib import Path
from typing import Any

from ._errors import PolicyError, escape_untrusted
from ._policy_match import HostPattern, RepoPattern, parse_host, parse_package, parse_repo_pattern
from ._records import record

__all__ = ["Policy", "load_policy", "read_policy_file", "SCHEMA", "SYSTEM_POLICY_PATH", "SANDBOX_RANK",
           "policy_sources"]

logger = logging.getLogger("safehub")

SYSTEM_POLICY_PATH = Path("/etc/safehub/policy.toml")
MAX_POLICY_BYTES = 1 << 20
MAX_LIST_ITEMS = 10_000
SANDBOX_RANK = {"process": 0, "landlock": 1, "bwrap": 2}
MODES = ("declared", "scan", "requirements")


def _limit_fields() -> dict[str, str]:
    """``[limits]`` keys: the numeric fields of safehub.Limits ("float" for seconds, else "int")."""
    from ._sandbox._limits import Limits

    # Switches (Limits.warm_worker) are not maximums: not policy keys.
    return {f.name: "float" if f.name.endswith("_s") else "int" for f in dataclasses.fields(Limits)
            if not isinstance(f.default, bool)}


# section -> key -> kind. Kinds decide validation, merging and what "narrower" means:
#   require  bool, true is stricter (merge: or)        permit  bool, false is stricter (merge: and)
#   float/int  a maximum (merge: min)                   minimum  a sandbox name (merge: the stronger)
#   repos/hosts/packages/modes  allowlists (a later layer lists a subset)
#   file  a lockfile path (every layer's file applies)
SCHEMA: dict[str, dict[str, str]] = {
    "repos": {"allow": "repos", "require_pin": "require", "allow_local": "permit"},
    "sandbox": {"minimum": "minimum", "allow_gpu": "permit"},
    "limits": _limit_fields(),
    "downloads": {"allow_hosts": "hosts"},
    "packages": {"allow": "packages", "require_hashes": "require", "modes": "modes", "allow_sdist": "permit"},
    "trust": {"prompts": "permit"},
    "lock": {"require": "require", "file": "file"},
}


def _toml() -> Any:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # Python 3.10: the same parser, as the tomli backport (a dependency there)
        import tomli as tomllib
    return tomllib


# --- reading one file -------------------------------------------------------------


def _trusted_uids() -> set[int]:
    """Who may own a system policy file: root, or the user running safehub (a policy
    in a user's own container image or CI home)."""
    return {0, os.geteuid()}


def _check_file_safety(path: Path, *, system: bool) -> Path:
    """The real file behind ``path`` (links followed), refused if someone other than
    its owner could change it: world-writable file (any layer), or for a system layer
    a group-writable file, an owner outside ``_trusted_uids()``, or a folder anyone
    may replace it in. A policy anybody can edit is no policy."""
    real = Path(os.path.realpath(path))
    where = f"{path}" + (f" (a link to {real})" if real != Path(os.path.abspath(path)) else "")
    try:
        st = os.stat(real)
    except FileNotFoundError:
        raise PolicyError(f"the policy file {where} does not exist",
                          hint="create it, or unset the variable that names it") from None
    except OSError as exc:
        raise PolicyError(f"cannot read the policy file {where}: {exc.strerror}",
                          hint="fix its permissions; safehub refuses to load anything while a policy is unreadable") from None
    if not stat.S_ISREG(st.st_mode):
        raise PolicyError(f"the policy file {where} is not a regular file", hint="point it at a TOML file")
    problem = None
    if st.st_mode & stat.S_IWOTH:
        problem = "is world-writable"
    elif system and st.st_mode & stat.S_IWGRP:
        problem = "is group-writable"
    elif system and st.st_uid not in _trusted_uids():
        problem = f"is owned by uid {st.st_uid}, neither root nor the current user"
    elif system:
        parent = os.stat(real.parent)
        if parent.st_mode & stat.S_IWOTH and not parent.st_mode & stat.S_ISVTX:
            problem = f"is in {real.parent}, a world-writable folder anyone can replace it in"
    if problem:
        raise PolicyError(
            f"the policy file {where} {problem}; refusing to use it (and to load anything under it)",
            hint=f"make it owned by root and not writable by others (chmod 644 {real})",
        )
    return real


def read_policy_file(path: str | os.PathLike[str], *, system: bool = False) -> dict[str, dict[str, Any]]:
    """One policy file, validated and normalised: {section: {key: value}}."""
    path = Path(path).expanduser()
    real = _check_file_safety(path, system=system)
    with open(real, "rb") as f:
        raw = f.read(MAX_POLICY_BYTES + 1)
    if len(raw) > MAX_POLICY_BYTES:
        raise PolicyError(f"{path}: the policy file is larger than {MAX_POLICY_BYTES} bytes", hint="trim it")
    toml = _toml()
    try:
        data = toml.loads(raw.decode("utf-8"))
    except (toml.TOMLDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise PolicyError(f"{path}: not valid TOML: {escape_untrusted(str(exc), limit=300)}",
                          hint="fix the syntax; `safehub policy show` re-reads it") from None
    return validate(data, str(path), base=real.parent)


def _where(file: str, section: str, key: str | None = None) -> str:
    return f"{file}: [{section}]" + (f" {key}" if key is not None else "")


def validate(data: Mapping[str, Any], file: str, *, base: Path | None = None) -> dict[str, dict[str, Any]]:
    """Check every section and key against SCHEMA; normalise values (patterns parsed, hosts
    IDNA-encoded, file paths made absolute against ``base``)."""
    out: dict[str, dict[str, Any]] = {}
    for section, table in data.items():
        if section not in SCHEMA:
            raise PolicyError(f"{file}: unknown section [{escape_untrusted(section, limit=60)}]",
                              hint=f"the sections a policy may have are: {', '.join(SCHEMA)}")
        if not isinstance(table, dict):
            raise PolicyError(f"{file}: {section} must be a table ([{section}]), not a {type(table).__name__}",
                              hint=f"write [{section}] on its own line, then its keys")
        keys = SCHEMA[section]
        out[section] = {}
        for key, value in table.items():
            if key not in keys:
                raise PolicyError(f"{_where(file, section, escape_untrusted(key, limit=60))} is not a known key",
                                  hint=f"[{section}] allows: {', '.join(keys)}")
            out[section][key] = _value(keys[key], value, _where(file, section, key), base)
    return out


def _value(kind: str, value: Any, where: str, base: Path | None) -> Any:
    if kind in ("require", "permit"):
        if not isinstance(value, bool):
            raise PolicyError(f"{where} must be true or false, not {value!r}", hint="write true or false (no quotes)")
        if where.endswith("allow_sdist") and value:
            raise PolicyError(f"{where} = true cannot be honoured: safehub never builds source distributions "
                              "(it installs wheels only)", hint="remove the key, or set it to false")
        return value
    if kind in ("int", "float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind == "int" and not isinstance(value, int)):
            raise PolicyError(f"{where} must be a{'n integer' if kind == 'int' else ' number'}, not {value!r}",
                              hint="limits are maxima: write a number of bytes, processes or seconds")
        if value <= 0 or value != value or value == float("inf"):
            raise PolicyError(f"{where} must be a positive finite number, not {value!r}",
                              hint="remove the key for no maximum")
        return value
    if kind == "minimum":
        if value not in SANDBOX_RANK:
            raise PolicyError(f"{where} must be one of {', '.join(repr(k) for k in SANDBOX_RANK)}, not {value!r}",
                              hint='e.g. minimum = "bwrap"')
        return value
    if kind == "file":
        if not isinstance(value, str) or not value or "\x00" in value:
            raise PolicyError(f"{where} must be a path to a lockfile", hint='e.g. file = "/etc/safehub/org.lock"')
        path = Path(value).expanduser()
        return str(path if path.is_absolute() or base is None else base / path)
    # the allowlists
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PolicyError(f"{where} must be a list of strings", hint='e.g. allow = ["owner/name", "owner/*"]')
    if len(value) > MAX_LIST_ITEMS:
        raise PolicyError(f"{where} has more than {MAX_LIST_ITEMS} entries", hint="use owner/* patterns")
    if kind == "modes":
        bad = [v for v in value if v not in MODES]
        if bad or not value:
            raise PolicyError(f"{where} must list some of {', '.join(MODES)}; {bad or 'it is empty'}",
                              hint='e.g. modes = ["declared"]')
        return tuple(dict.fromkeys(value))
    parse = {"repos": parse_repo_pattern, "hosts": parse_host, "packages": parse_package}[kind]
    parsed = []
    for item in value:
        try:
            parsed.append(parse(item))
        except ValueError as exc:
            raise PolicyError(f"{where}: entry {escape_untrusted(item, limit=120)!r} {exc}",
                              hint="see docs/policy.md for what each list accepts") from None
    return tuple(parsed)


# --- merging layers ---------------------------------------------------------------


@record
class Policy:
    """The merged policy. ``values`` is {section: {key: value}}; ``sources`` says which
    files set each value (the first is the widest, later ones narrowed it)."""

    values: dict[str, dict[str, Any]] = field(default_factory=dict)
    sources: dict[str, list[str]] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)

    def get(self, section: str, key: str, default: Any = None) -> Any:
        return self.values.get(section, {}).get(key, default)

    def source(self, section: str, key: str) -> str:
        return ", narrowed by ".join(self.sources.get(f"{section}.{key}", [])) or "(default)"

    @property
    def empty(self) -> bool:
        return not any(self.values.values())

    def add_layer(self, layer: Mapping[str, Mapping[str, Any]], file: str) -> None:
        """Merge ``layer`` (from ``file``) over what is here, refusing any widening."""
        self.files.append(file)
        for section, table in layer.items():
            for key, new in table.items():
                kind = SCHEMA[section][key]
                rule = f"{section}.{key}"
                if key not in self.values.get(section, {}):
                    self.values.setdefault(section, {})[key] = new
                    self.sources[rule] = [file]
                    continue
                old = self.values[section][key]
                merged = _merge(kind, old, new, rule=rule, old_file=self.source(section, key), new_file=file)
                self.values[section][key] = merged
                self.sources[rule].append(file)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: each rule's value and where it came from (for ``safehub policy show``)."""
        out: dict[str, Any] = {}
        for section, keys in SCHEMA.items():
            for key in keys:
                if key in self.values.get(section, {}):
                    value = self.values[section][key]
                    if keys[key] == "packages":
                        value = tuple(f"{name}{spec}" for name, spec in value)
                    out[f"{section}.{key}"] = {"value": _plain(value),
                                               "from": list(self.sources[f"{section}.{key}"])}
        return {"files": list(self.files), "rules": out}


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return str(value) if isinstance(value, (RepoPattern, HostPattern)) else value


def _widening(rule: str, what: str, old_file: str, new_file: str) -> PolicyError:
    section, key = rule.split(".")
    return PolicyError(
        f"{new_file} tries to widen the rule [{section}] {key} set by {old_file}: {what}",
        hint="a user policy may only narrow the system policy; ask your administrator to change the system "
        "policy, or remove the rule from your own",
    )


def _merge(kind: str, old: Any, new: Any, *, rule: str, old_file: str, new_file: str) -> Any:
    if kind == "require":
        if old and not new:
            raise _widening(rule, "it turns a required rule (true) off", old_file, new_file)
        return old or new
    if kind == "permit":
        if new and not old:
            raise _widening(rule, "it allows what the earlier policy forbids (false -> true)", old_file, new_file)
        return old and new
    if kind in ("int", "float"):
        if new > old:
            raise _widening(rule, f"its maximum {new} is above {old}", old_file, new_file)
        return new
    if kind == "minimum":
        if SANDBOX_RANK[new] < SANDBOX_RANK[old]:
            raise _widening(rule, f"{new!r} is weaker than {old!r}", old_file, new_file)
        return new
    if kind == "file":
        return (*(old if isinstance(old, tuple) else (old,)), *(new if isinstance(new, tuple) else (new,)))
    if kind == "modes":
        extra = [m for m in new if m not in old]
        if extra:
            raise _widening(rule, f"it allows {', '.join(extra)}, which the earlier policy does not", old_file, new_file)
        return new
    if kind in ("repos", "hosts"):
        extra = [str(p) for p in new if not any(o.covers(p) for o in old)]
        if extra:
            raise _widening(rule, f"it allows {', '.join(extra)}, which the earlier policy does not", old_file, new_file)
        return new
    if kind == "packages":
        names = {name for name, _spec in old}
        extra = [name for name, _spec in new if name not in names]
        if extra:
            raise _widening(rule, f"it allows the package(s) {', '.join(extra)}, which the earlier policy does not",
                            old_file, new_file)
        keep = {name for name, _spec in new}
        # Both layers' version ranges apply: the earlier ones for the names the new layer keeps.
        return tuple(p for p in old if p[0] in keep) + tuple(new)
    raise AssertionError(kind)


# --- where policies come from -------------------------------------------------------


def _user_config_policy() -> Path:
    from ._config import user_dir

    return user_dir("config") / "policy.toml"


def policy_sources(policy: str | os.PathLike[str] | None = None,
                   env: Mapping[str, str] | None = None) -> list[tuple[Path, bool]]:
    """The files that apply, widest first, each with whether it is a system layer."""
    env = os.environ if env is None else env
    out: list[tuple[Path, bool]] = []
    if os.path.lexists(SYSTEM_POLICY_PATH):
        out.append((SYSTEM_POLICY_PATH, True))
    if env.get("SAFEHUB_SYSTEM_POLICY"):
        out.append((Path(env["SAFEHUB_SYSTEM_POLICY"]).expanduser(), True))
    if policy is not None:
        out.append((Path(policy).expanduser(), False))
    elif env.get("SAFEHUB_POLICY"):
        out.append((Path(env["SAFEHUB_POLICY"]).expanduser(), False))
    else:
        user = _user_config_policy()
        if os.path.lexists(user):
            out.append((user, False))
    return out


def load_policy(policy: str | os.PathLike[str] | Policy | None = None,
                env: Mapping[str, str] | None = None) -> Policy:
    """The merged policy for one call (``policy=`` as given to safehub.load, if any).
    A Policy object is taken as the user layer already merged over nothing: it is
    merged over the system layers like a file would be."""
    merged = Policy()
    user_obj = policy if isinstance(policy, Policy) else None
    for path, system in policy_sources(None if isinstance(policy, Policy) else policy, env):
        merged.add_layer(read_policy_file(path, system=system), str(path))
    if user_obj is not None:
        merged.add_layer(user_obj.values, "policy= (a Policy object)")
    return merged


def policy_from_dict(data: Mapping[str, Any], name: str = "policy= (a dict)") -> Policy:
    """A Policy from a dict shaped like the TOML file (validated the same way); for embedders and tests."""
    out = Policy()
    out.add_layer(validate(data, name), name)
    return out


def sandbox_allows(policy: Policy, backend: str) -> bool:
    minimum = policy.get("sandbox", "minimum")
    return minimum is None or SANDBOX_RANK.get(backend, -1) >= SANDBOX_RANK[minimum]


def repo_rule_text(policy: Policy, patterns: Sequence[RepoPattern]) -> str:
    return ", ".join(str(p) for p in patterns) or "(nothing)"
