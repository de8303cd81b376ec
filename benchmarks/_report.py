"""How the benchmarks print their report: JSON, or one line per figure with one
level of sections. Standard library only (importing it costs a benchmark nothing)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any


def print_report(report: Mapping[str, Any], *, as_json: bool, width: int = 40) -> None:
    """``report``'s figures; a dict value is a section, its figures indented under it."""
    if as_json:
        print(json.dumps(report, indent=2))
        return
    for key, value in report.items():
        if isinstance(value, Mapping):
            print(key)
            for k, v in value.items():
                print(f"  {k:{width - 2}s} {v}")
        else:
            print(f"{key:{width}s} {value}")
