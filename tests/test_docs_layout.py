"""README's layout section and docs/architecture.md name only files that exist, and
architecture.md places every module of safehub/ in a layer."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BASES = ["", "safehub", "runners", "docs", "safehub/_channel", "safehub/_sandbox", "safehub/_fetch", "safehub/_env",
         "safehub/_audit"]
# Names of things inside a job or a hub repo, not of this tree.
NOT_OURS = {"hubconf.py", "in/", "out/"}
_PATHLIKE = re.compile(r"`([A-Za-z0-9_./-]+(?:\.py|\.md|\.sh|/))`")


def _named_paths(text: str) -> set[str]:
    return {m.group(1) for m in _PATHLIKE.finditer(text)}


def _exists(name: str) -> bool:
    name = name.split("<")[0]
    return any((ROOT / base / name).exists() for base in BASES)


def test_readme_layout_names_existing_paths():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    layout = readme.split("## Layout", 1)[1].split("\n## ", 1)[0]
    names = _named_paths(layout)
    assert len(names) > 10
    missing = sorted(n for n in names if not _exists(n))
    assert not missing, missing


def test_architecture_doc_names_existing_paths_and_every_module():
    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    names = _named_paths(doc)
    missing = sorted(n for n in names - NOT_OURS if not _exists(n))
    assert not missing, missing
    table = doc.split("## Layers", 1)[1].split("\n## ", 1)[0]
    unplaced = []
    for path in sorted((ROOT / "safehub").iterdir()):
        if path.name.startswith("__") or path.name.startswith("."):
            continue
        shown = f"`{path.name}/`" if path.is_dir() else f"`{path.name}`"
        if shown not in table:
            unplaced.append(path.name)
    assert not unplaced, f"not placed in a layer in docs/architecture.md: {unplaced}"
