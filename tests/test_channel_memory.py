"""Host parsing in bounded memory: reading and parsing spec.json or a safetensors
header costs at most MEMORY_FACTOR (4) x its file-size cap, whatever the bytes.

The red team's 64 MiB junk spec.json cost 1.9 GiB and a 100 MiB junk header 2.8 GiB.
Here the caps are small (so the test is fast) and the measurement is a size, not a
time: tracemalloc's peak in a fresh subprocess for every shape (junk at the cap,
and each dense shape at the largest size the pre-scan still lets through, which
is where the pre-scan's per-token weights must be upper bounds), and the peak
resident set (VmHWM) for the red team's two cases."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from safehub._channel._json import MEMORY_FACTOR, load_json, prescan
from safehub._errors import SpecTooLargeError, UnsafeSpecError

ROOT = Path(__file__).resolve().parent.parent
CAP = 1 << 20  # bytes: the file-size cap the measured files are held to
BUDGET = MEMORY_FACTOR * CAP

# One "unit" repeated inside a top-level array or object: the densest shapes we know
# (bytes of input -> Python objects), plus text that decodes wide.
UNITS = {
    "empty_objects": (b"[", b"{}", b"]"),
    "empty_arrays": (b"[", b"[]", b"]"),
    "one_key_objects": (b"[", b'{"a":0}', b"]"),
    "nested_one_element": (b"[", b"[[0]]", b"]"),
    "big_ints": (b"[", b"1234567", b"]"),
    "floats": (b"[", b"1.5", b"]"),
    "short_strings": (b"[", b'"ab"', b"]"),
    "astral_strings": (b"[", '"\U0001F600\U0001F600"'.encode(), b"]"),
    "bmp_strings": (b"[", '"\u0101\u0101\u0101"'.encode(), b"]"),
    "escaped_strings": (b"[", b'"\\u00e9\\"\\\\"', b"]"),
    # One escape widens the whole string (ASCII file, 4 bytes a character in memory).
    "widened_strings": (b"[", b'"' + b"a" * 4000 + b'\\ud83d\\ude00"', b"]"),
    "widened_bmp_strings": (b"[", b'"' + b"a" * 4000 + b'\\u0101"', b"]"),
}


def unit_doc(name: str, count: int) -> bytes:
    head, unit, tail = UNITS[name]
    return head + b",".join([unit] * count) + tail


def unique_keys_doc(count: int) -> bytes:
    return b"{" + b",".join(b'"k%d":0' % i for i in range(count)) + b"}"


def _accepted(doc: bytes) -> bool:
    try:
        prescan(doc, "x", cap_bytes=CAP)
    except SpecTooLargeError:
        return False
    return True


def largest_accepted(make) -> bytes:
    """The largest document of this shape the pre-scan accepts under CAP. The bound
    is close to linear in the number of units: start from the linear guess, then
    bisect around it (unique keys grow a little per unit)."""
    big = 1 << 40
    one, two = (prescan(make(k), "x", cap_bytes=big).memory_bytes for k in (1, 2))
    unit_bytes = len(make(2)) - len(make(1))
    guess = min((BUDGET - one) // (two - one) + 1, (CAP - len(make(1))) // unit_bytes + 1)
    lo, hi = (guess, 2 * guess) if _accepted(make(guess)) else (1, guess - 1)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if _accepted(make(mid)) else (lo, mid - 1)
    assert not _accepted(make(lo + 1))
    return make(lo)


MEASURE = r"""
import json, sys, tracemalloc
sys.path.insert(0, sys.argv[1])
from safehub._channel._json import load_json
from safehub._errors import SafehubError
if sys.argv[4] == "header":
    from safehub._channel._weights import read_header

def status(field):  # kB in /proc/self/status; ru_maxrss would carry the parent's peak
    with open("/proc/self/status") as f:
        return int(f.read().split(field + ":")[1].split()[0]) * 1024

with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset this process's peak RSS (VmHWM) to its current RSS
base = status("VmRSS")
path, cap, mode = sys.argv[2], int(sys.argv[3]), sys.argv[4]
tracemalloc.start()
with open(path, "rb") as f:
    raw = f.read()
try:
    if mode == "header":
        import os
        from safehub._channel._limits import ChannelLimits
        del raw
        fd = os.open(path, os.O_RDONLY)
        read_header(fd, ChannelLimits(header_bytes=cap))
    else:
        load_json(raw, "spec.json", cap_bytes=cap)
    outcome = "parsed"
except SafehubError as exc:
    outcome = type(exc).__name__
peak = tracemalloc.get_traced_memory()[1]
tracemalloc.stop()
rss = status("VmHWM") - base
print(json.dumps({"outcome": outcome, "peak": peak, "rss": rss}))
"""


def measure(tmp_path: Path, data: bytes, mode: str = "json") -> dict:
    path = tmp_path / "doc.bin"
    path.write_bytes(data)
    proc = subprocess.run([sys.executable, "-c", MEASURE, str(ROOT), str(path), str(CAP), mode],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


MEASURE_MANY = r"""
import json, sys, tracemalloc
sys.path.insert(0, sys.argv[1])
from safehub._channel._json import load_json
cap = int(sys.argv[2])
out = {}
tracemalloc.start()
for path in sys.argv[3:]:
    tracemalloc.reset_peak()
    base = tracemalloc.get_traced_memory()[0]
    with open(path, "rb") as f:
        raw = f.read()
    doc = load_json(raw, "spec.json", cap_bytes=cap)
    out[path] = tracemalloc.get_traced_memory()[1] - base
    del raw, doc
print(json.dumps(out))
"""


def test_the_densest_accepted_documents_stay_in_budget(tmp_path):
    """Each shape at the largest size the pre-scan accepts: parsed, within budget
    (reading the file included). One subprocess, tracemalloc's peak reset per shape."""
    paths = {}
    for name in sorted(UNITS) + ["unique_keys"]:
        make = unique_keys_doc if name == "unique_keys" else (lambda k, name=name: unit_doc(name, k))
        paths[name] = tmp_path / f"{name}.json"
        paths[name].write_bytes(largest_accepted(make))
    proc = subprocess.run([sys.executable, "-c", MEASURE_MANY, str(ROOT), str(CAP), *map(str, paths.values())],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    peaks = json.loads(proc.stdout)
    over = {name: peaks[str(p)] for name, p in paths.items() if peaks[str(p)] > BUDGET}
    assert not over, f"parsing took more than {BUDGET} bytes: {over}"
    # The shapes are dense enough to matter: the tightest comes close to the budget.
    assert max(peaks.values()) > BUDGET // 2


@pytest.mark.parametrize("mode", ["json", "header"])
def test_junk_at_the_cap_is_refused_within_budget(tmp_path, mode):
    """The red team's shape: '{},' repeated up to the file cap (as a header: an 8-byte
    length, the junk, no data). Refused before any parse, within the budget, also
    by the resident-set measure."""
    junk = unit_doc("empty_objects", (CAP - 2) // 3)
    data = junk if mode == "json" else len(junk).to_bytes(8, "little") + junk
    result = measure(tmp_path, data, mode)
    assert result["outcome"] == "SpecTooLargeError"
    assert result["peak"] <= BUDGET
    assert CAP // 2 <= result["rss"] <= BUDGET  # the junk was read (so the measure works), and no more


def test_depth_and_string_caps():
    deep = b"[" * 65 + b"]" * 65
    with pytest.raises(SpecTooLargeError, match="deeper than 64"):
        load_json(deep, "x", cap_bytes=CAP)
    assert prescan(b"[" * 64 + b"]" * 64, "x", cap_bytes=CAP).depth == 64
    # Brackets and escaped quotes inside strings do not count as nesting.
    assert prescan(b'[["[[[[\\"]]]]", "\\\\"]]', "x", cap_bytes=CAP, max_depth=2).depth == 2
    with pytest.raises(SpecTooLargeError, match="string longer than 100"):
        load_json(b'["' + b"a" * 101 + b'"]', "x", cap_bytes=CAP, max_string_bytes=100)
    # A long run *between* strings is not a string.
    gap = b'["a",' + b"0," * 100 + b'"b"]'
    assert load_json(gap, "x", cap_bytes=CAP, max_string_bytes=100) == ["a", *[0] * 100, "b"]
    for bad in (b'["abc]', b"[[]", b"]["):
        with pytest.raises(UnsafeSpecError):
            load_json(bad, "x", cap_bytes=CAP)


def test_over_the_cap_is_refused_before_scanning():
    with pytest.raises(SpecTooLargeError, match="over the 10-byte cap"):
        prescan(b"[" + b"0," * 10 + b"0]", "x", cap_bytes=10)
