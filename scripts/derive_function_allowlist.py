"""Write safehub/_channel/function_allowlist.json: the fx function and Tensor method
allowlists for the installed torch, as safehub computes them (safehub/_channel/_allowlist.py).

A fresh process that loads a model would otherwise compute them from torch itself
(~25 ms, mostly torch.overrides building its tables). With the file, a load resolves
only its graph's targets, by name, in the same fixed namespaces. The file records the
torch build it was derived for; under any other build safehub computes the lists as
before. tests/test_allowlist_shipped.py fails when the file and the computed lists differ.

    .venv/bin/python scripts/derive_function_allowlist.py            # write
    .venv/bin/python scripts/derive_function_allowlist.py --check    # compare, write nothing

Run it on every torch upgrade, after re-reviewing the deny lists.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "safehub" / "_channel" / "function_allowlist.json"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 if the file differs; write nothing")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    from safehub._channel._allowlist import derive_shipped

    text = json.dumps(derive_shipped(), indent=0, sort_keys=True) + "\n"
    if args.check:
        same = OUT.exists() and OUT.read_text(encoding="utf-8") == text
        print("up to date" if same else f"{OUT} differs from the installed torch's lists: run without --check")
        return 0 if same else 1
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT} ({len(text)} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
