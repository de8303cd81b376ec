"""Cost of checking FX's generated forward against its graph (safehub/_channel/_codecheck.py).
Run by hand:

    python benchmarks/bench_codecheck.py

Times ``Graph.python_code`` on a chain of relu/add nodes with FX's plain code
generator and with ``CheckedCodeGen`` (median of 5, fresh graphs), then once
more on the same graph: a rebuild generates each graph's code twice (while
validating, and when GraphModule compiles it); the second, identical text over
the same objects is not checked again.
"""

from __future__ import annotations

import operator
import statistics
import time

import torch
from torch import fx

from safehub._channel._codecheck import CheckedCodeGen


def chain(n: int, checked: bool) -> fx.Graph:
    g = fx.Graph()
    if checked:
        g.set_codegen(CheckedCodeGen())
    cur = g.placeholder("x")
    for i in range(n):
        cur = g.call_function(operator.add, (cur, 1.5)) if i % 2 else g.call_function(torch.relu, (cur,))
    g.output(cur)
    return g


def main() -> None:
    for n in (200, 2_000, 20_000):
        row = []
        for checked in (False, True):
            times = []
            for _ in range(5):
                g = chain(n, checked)  # a fresh graph: the first generation is checked
                t = time.perf_counter()
                g.python_code("self")
                times.append(time.perf_counter() - t)
            row.append(statistics.median(times) * 1000)
        t = time.perf_counter()
        g.python_code("self")  # the same graph again (GraphModule's recompile): no second check
        again = (time.perf_counter() - t) * 1000
        print(f"{n:>6} nodes: plain {row[0]:8.1f} ms, checked {row[1]:8.1f} ms ({row[1] / row[0]:.1f}x), "
              f"regenerated {again:8.1f} ms")


if __name__ == "__main__":
    main()
