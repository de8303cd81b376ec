"""Caps on everything that crosses the return channel.

Every number here bounds work or memory the host spends on hostile input
*before* anything is built. The defaults fit real models (a 100k-node graph, a
64 GiB checkpoint) while keeping a malicious spec from costing more than a few
seconds of parsing. Reading and parsing spec.json or the safetensors header
takes at most 4x ``spec_bytes`` / ``header_bytes`` of memory (the pre-scan in
_json.py refuses anything that could take more); its bound is conservative, so
a dense spec is refused from about a sixth of ``spec_bytes`` (a 100k-node graph
is 9.7 MB, bound 183 MiB of the 256 MiB budget; a 200k-node one would not fit,
hence ``nodes``). Measured by benchmarks/bench_prescan.py.
"""

from __future__ import annotations

from .._records import record


__all__ = ["ChannelLimits"]


@record(frozen=True)
class ChannelLimits:
    """Bounds on everything the sandbox returns (sizes, counts, depths)."""

    spec_bytes: int = 64 * 1024 * 1024
    weights_bytes: int = 64 * 1024**3
    header_bytes: int = 100 * 1024 * 1024  # safetensors' own cap on its JSON header
    modules: int = 1024  # module ids in one spec
    nodes: int = 100_000  # per graph (a 200k-node spec would not fit the 4x spec_bytes memory budget)
    args: int = 1000  # per node (positional + keyword)
    tensors: int = 200_000  # per spec, all modules together
    leaves: int = 100_000  # per module
    literal_depth: int = 32
    literal_items: int = 100_000  # items in one tuple/list/dict literal
    value_depth: int = 8  # the "root" structure
    string_chars: int = 65_536
    name_chars: int = 128  # node names, identifiers, path atoms
    path_chars: int = 1024
    path_atoms: int = 64
    dims: int = 16
    count_kwarg: int = 1024  # e.g. LSTM num_layers: constructor loops on meta are bounded too
    factory_numel: int = 1 << 31  # elements a literal-sized factory call (torch.empty, aten.full...) may make
    # JSON pre-scan (spec.json and the safetensors header), before any full parse.
    json_depth: int = 64
    json_string_bytes: int = 1 << 20

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"ChannelLimits.{name} must be a non-negative int, got {value!r}")
