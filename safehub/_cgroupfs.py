"""Reading this process's cgroups: where the hierarchies are mounted, which cgroup
the process is in on each, and the memory limit that binds it. Read only; the
sandbox's pids cgroup (_sandbox/_cgroup.py) and the weights pool's default cap
(_channel/_weights_pool.py) both use it."""

from __future__ import annotations

from pathlib import Path

__all__ = ["memory_limit", "mounts", "own_paths"]


def mounts() -> list[tuple[str, str, list[str]]]:
    found = []
    try:
        with open("/proc/self/mounts", encoding="utf-8") as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 4:
                    found.append((fields[1], fields[2], fields[3].split(",")))
    except OSError:
        pass
    return found


def own_paths(controller: str) -> dict[str, str]:
    """This process's cgroup per hierarchy: {"v2": path, controller: path (v1)}."""
    out: dict[str, str] = {}
    try:
        with open("/proc/self/cgroup", encoding="utf-8") as f:
            for line in f:
                _, controllers, path = line.rstrip("\n").split(":", 2)
                if controllers == "":
                    out["v2"] = path
                elif controller in controllers.split(","):
                    out[controller] = path
    except (OSError, ValueError):
        pass
    return out


_NO_LIMIT = 1 << 62  # cgroup v1 writes "no limit" as a page-rounded 2**63 - 1


def memory_limit(table: list[tuple[str, str, list[str]]] | None = None,
                 own: dict[str, str] | None = None) -> int | None:
    """The lowest memory limit on this process's cgroup or any cgroup above it (a
    container's, a systemd slice's), in bytes, or None where none is set or none can
    be read. cgroup v2 ``memory.max`` and v1 ``memory.limit_in_bytes`` both count.
    ``table`` and ``own`` stand for /proc/self/mounts and /proc/self/cgroup (tests)."""
    table = mounts() if table is None else table
    own = own_paths("memory") if own is None else own
    limits = []
    for mountpoint, fstype, options in table:
        if fstype == "cgroup2" and "v2" in own:
            path, name = own["v2"], "memory.max"
        elif fstype == "cgroup" and "memory" in options and "memory" in own:
            path, name = own["memory"], "memory.limit_in_bytes"
        else:
            continue
        root = Path(mountpoint)
        folder = root / path.lstrip("/")
        for level in (folder, *folder.parents):
            try:
                raw = (level / name).read_text().strip()
            except OSError:
                raw = ""
            if raw.isdigit() and 0 < int(raw) < _NO_LIMIT:
                limits.append(int(raw))
            if level == root:
                break
    return min(limits) if limits else None
