"""host_info is remembered while the stat of what it read stays the same (a warm load
must not re-parse every host METADATA file), and minimal_paths' faster form gives
what the plain definition gives."""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

from safehub._env import _host
from safehub._env._host import host_info, minimal_paths


def _reference(paths):
    out: list[Path] = []
    for p in paths:
        if any(p == q or q in p.parents for q in out):
            continue
        out = [q for q in out if p not in q.parents]
        out.append(p)
    return tuple(out)


def test_minimal_paths_matches_the_definition() -> None:
    rng = random.Random(0)
    parts = ["a", "b", "c", "ab"]
    for _ in range(300):
        paths = [Path("/" + "/".join(rng.choice(parts) for _ in range(rng.randint(0, 4)))) for _ in range(rng.randint(0, 12))]
        assert minimal_paths(paths) == _reference(paths), paths


def test_host_info_is_reused_until_what_it_read_changes(tmp_path: Path, monkeypatch) -> None:
    first = host_info()
    assert host_info() is first
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))  # sys.path changed: computed again
    second = host_info()
    assert second is not first and host_info() is second
    (site / "newpkg-1.0.dist-info").mkdir()  # a package installed there: its folder changed
    os.utime(site, ns=(1, 1))
    assert host_info() is not second
    assert sys.path[0] == str(site) and _host._HOST_MEMO
