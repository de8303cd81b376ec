"""The host <-> runner contract: one file, read by both ends.

The runner imports it from its own folder inside the sandbox; the host imports
the very same file as ``safehub._contract`` (a link to this one in a checkout, an
identical copy in the wheel; tests/test_contract.py checks both). So it must stay
standard-library only, import nothing from safehub or torch, and hold data and
shapes, never behaviour.

What it fixes:
  * the protocol version and the names of the files in a job folder;
  * the error categories a runner may report (the host maps each one to one typed
    exception: safehub/_channel/_result.py, ``raise_for_runner_error``);
  * the shapes of ``request.json`` and ``result.json`` (TypedDicts);
  * the literal allowlists the runner pre-checks so that a graph the host would
    refuse falls back to aten inside the sandbox (the host builds its full
    allowlists from these: safehub/_channel/_allowlist.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Optional, TypedDict, Union

if TYPE_CHECKING:  # annotations are never evaluated at run time (Python 3.10 lacks NotRequired)
    from typing import NotRequired

__all__ = [
    "PROTOCOL",
    "REQUEST_FILE",
    "ARGS_FILE",
    "EXAMPLE_INPUTS_FILE",
    "RESULT_FILE",
    "SPEC_FILE",
    "WEIGHTS_FILE",
    "WEIGHTS_FD_ENV",
    "CHECKPOINT_FILE",
    "SPEC_FORMAT",
    "SPEC_VERSION",
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "ACTIONS",
    "MAX_DOWNLOAD_URLS",
    "EXPORT_MODES",
    "ERROR_CATEGORIES",
    "WARNING_CATEGORIES",
    "MAX_WARNINGS",
    "MAX_WARNING_CHARS",
    "FACTORIES",
    "RUNNER_TIMINGS",
    "MAX_TIMING_S",
    "GETATTR_ATTRS",
    "METHOD_DENY",
    "Request",
    "ExportOptions",
    "DeferredCall",
    "CALL_DTYPES",
    "RunnerError",
    "RunnerWarning",
    "Result",
    "AUDIT_FILE",
    "AUDIT_KINDS",
    "AUDIT_FIELDS",
    "AUDIT_PHASES",
    "MAX_AUDIT_EVENTS",
    "MAX_AUDIT_STRING",
    "MAX_AUDIT_LINE_BYTES",
    "MAX_AUDIT_FILE_BYTES",
    "AuditEvent",
]

# --- protocol and files ------------------------------------------------------

PROTOCOL = 1

# <job>/in/ (written by the host, read-only in the sandbox)
REQUEST_FILE = "request.json"
ARGS_FILE = "args.pkl"  # pickle (cloudpickle unless plain data) of (args, kwargs): host -> sandbox only
EXAMPLE_INPUTS_FILE = "example_inputs.pkl"  # host -> sandbox only
# <job>/out/ (the only folder the runner writes; hostile input to the host)
RESULT_FILE = "result.json"
SPEC_FILE = "spec.json"
WEIGHTS_FILE = "weights.safetensors"  # also in/ of an "export" job: the first load's weights
# A "load"/"export" job whose backend passes descriptors: the number of the memfd the
# host created for the weights (the same safetensors bytes, written with pwrite instead
# of into out/WEIGHTS_FILE; the host seals it and maps it). Unset: out/WEIGHTS_FILE.
WEIGHTS_FD_ENV = "SAFEHUB_WEIGHTS_FD"
CHECKPOINT_FILE = "checkpoint.json"

SPEC_FORMAT = "safehub-arch"
SPEC_VERSION = 1
CHECKPOINT_FORMAT = "safehub-checkpoint"
CHECKPOINT_VERSION = 1

ACTIONS = ("load", "list", "convert", "export")  # "export": deferred export at a module's first forward
MAX_DOWNLOAD_URLS = 16  # URLs one needs_download report may name
EXPORT_MODES = ("auto", "fx", "aten")

# --- error categories --------------------------------------------------------
# What went wrong, decided by the runner from *where* it happened, never from the
# text of a message.
ERROR_CATEGORIES = (
    "hubconf",  # importing the repo's hubconf.py raised
    "entrypoint_missing",  # the entrypoint is not a public callable of hubconf
    "entrypoint",  # the entrypoint itself raised
    "unsupported_return",  # it returned something that is not modules (or containers of them)
    "export",  # neither fx nor aten could carry a module out
    "checkpoint",  # a pickled checkpoint could not be converted (action "convert")
    "needs_download",  # the entrypoint asked for URLs the host has not fetched yet
    "environment",  # the runner's own code could not import what it needs (not the repo's code)
)

# --- warnings ------------------------------------------------------------------
# Warnings that repo code raised (importing hubconf, calling the entrypoint, reading a
# checkpoint) come back in result.json "warnings": each as the nearest of these
# built-in categories and its message. The host re-raises them from this fixed list;
# a class is never looked up by a name the sandbox wrote.
WARNING_CATEGORIES = (
    "UserWarning", "DeprecationWarning", "PendingDeprecationWarning", "FutureWarning", "RuntimeWarning",
    "SyntaxWarning", "ImportWarning", "UnicodeWarning", "BytesWarning", "ResourceWarning",
)  # fmt: skip
MAX_WARNINGS = 32  # distinct warnings one result may carry
MAX_WARNING_CHARS = 2000  # of one warning's message

# --- timings ---------------------------------------------------------------------
# The parts of a load the runner times (seconds, in the load summary's "timings"). The
# host keeps only these names, and only finite numbers in [0, MAX_TIMING_S).
RUNNER_TIMINGS = ("import_torch", "hubconf", "entrypoint", "export")
MAX_TIMING_S = 1e6

# --- audit telemetry (request "audit": true; safehub audit) ----------------------
# The runner's audit hook (runners/_audit_hook.py) appends one JSON object per line to
# out/AUDIT_FILE: the first occurrence of each distinct event, then a closing
# {"kind": "summary", ...} line with counts when the run ends normally. Telemetry,
# not a boundary: repo code can write to that file too, so the host reads it as
# hostile input (safehub/_audit/_events.py): these bounds, these kinds, these fields.
AUDIT_FILE = "audit.jsonl"
AUDIT_PHASES = ("hubconf", "entrypoint", "export")
AUDIT_KINDS = (
    "open",  # a file opened (path, mode: "r" | "w"), outside the interpreter's own library folders
    "fs",  # a change to the file system: remove, rename, mkdir, chmod, link... (op, path)
    "connect",  # a socket connect / bind / sendto, or (op "socket") an internet socket created (op, address)
    "dns",  # a name lookup (host)
    "http",  # urllib / http.client request (url)
    "subprocess",  # Popen, os.system, os.exec*, os.spawn*, os.posix_spawn, fork (op, target)
    "import",  # a non-stdlib module imported for the first time (module)
    "ctypes",  # a shared library loaded through ctypes (name)
    "sys_path",  # sys.path gained (op "add") or lost (op "remove") an entry (path)
    "hook",  # another audit hook was added (sys.addaudithook): tampering with telemetry
    "signal",  # os.kill and friends (op, target)
    "refused",  # an operation that raised EACCES/EPERM/ENOSYS/EROFS/ENOENT (op, target, errno)
    "dropped",  # the runner hit MAX_AUDIT_EVENTS: how many events were not recorded (count)
    "summary",  # closing line: counts per kind (counts), total events seen (total)
)
# The fields each kind may carry besides "kind" and "phase"; strings unless named in the comment above.
AUDIT_FIELDS = {
    "open": ("path", "mode"),
    "fs": ("op", "path"),
    "connect": ("op", "address"),
    "dns": ("host",),
    "http": ("url",),
    "subprocess": ("op", "target"),
    "import": ("module",),
    "ctypes": ("name",),
    "sys_path": ("op", "path"),
    "hook": ("op",),
    "signal": ("op", "target"),
    "refused": ("op", "target", "errno"),
    "dropped": ("count",),
    "summary": ("counts", "total"),
}
MAX_AUDIT_EVENTS = 1000  # distinct events recorded per run (more are counted, not listed)
MAX_AUDIT_STRING = 512  # characters of one recorded string (longer ones are cut, marked with "...")
MAX_AUDIT_LINE_BYTES = 4096  # of one line of AUDIT_FILE; the host skips longer lines
MAX_AUDIT_FILE_BYTES = 2 * 1024 * 1024  # the host reads no more of AUDIT_FILE than this


class AuditEvent(TypedDict, total=False):
    """One line of out/AUDIT_FILE (hostile to the host)."""

    kind: str  # one of AUDIT_KINDS
    phase: str  # one of AUDIT_PHASES
    path: str
    mode: str
    op: str
    address: str
    host: str
    url: str
    target: str
    module: str
    name: str
    errno: str
    count: int
    counts: Dict[str, int]
    total: int


# --- what the host will accept, pre-checked in the sandbox --------------------

# Tensor factories that torch.overrides does not list as overridable.
FACTORIES = (
    "empty", "empty_like", "empty_strided", "zeros", "zeros_like", "ones", "ones_like", "full", "full_like",
    "arange", "linspace", "logspace", "eye", "rand", "rand_like", "randn", "randn_like", "randint",
    "randint_like", "randperm", "tensor", "as_tensor", "scalar_tensor", "normal", "bernoulli", "tril_indices",
    "triu_indices", "complex", "polar", "_assert",
)  # fmt: skip
# builtins.getattr(x, name) is allowed for these attribute names only.
GETATTR_ATTRS = frozenset(
    {"shape", "dtype", "device", "ndim", "T", "mT", "H", "mH", "is_cuda", "requires_grad", "layout", "real", "imag",
     "is_sparse", "is_quantized", "is_complex", "is_floating_point", "itemsize", "nbytes",
     "data"}  # .data: a detached alias, what detach() gives (docs/architecture-format.md)
)  # fmt: skip
# Public Tensor methods that touch memory, hooks, storage, other processes or the
# interpreter, hand out Python objects, or uninitialised memory.
METHOD_DENY = frozenset(
    {"apply_", "map_", "map2_", "register_hook", "register_post_accumulate_grad_hook", "retain_grad", "backward",
     "storage", "untyped_storage", "storage_type", "data_ptr", "const_data_ptr", "numpy", "set_", "share_memory_",
     "record_stream", "item", "tolist", "module_load", "resize", "resize_", "resize_as", "resize_as_",
     "resize_as_sparse_", "sparse_resize_", "sparse_resize_and_clear_", "as_strided_", "pin_memory", "is_pinned",
     "is_shared", "type", "cuda", "ipu", "xpu", "mtia", "is_set_to", "hash_tensor",
     # uninitialised memory that a method call cannot be made to zero-fill (torch.empty* can: _channel._kernels)
     "new_empty", "new_empty_strided"}
)  # fmt: skip

# --- shapes --------------------------------------------------------------------


class ExportOptions(TypedDict, total=False):
    mode: str  # one of EXPORT_MODES
    deferred: bool  # no inputs to export with: send tensors only, the graph at the first forward


# dtypes a deferred call's tensor arguments may have (DeferredCall "args").
CALL_DTYPES = (
    "float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool",
    "complex64", "complex128",
)  # fmt: skip


class DeferredCall(TypedDict):
    """Request "deferred" of action "export": the structure of one call, never data."""

    mid: str  # which module of what the entrypoint returned
    training: bool
    args: List[Dict[str, Any]]  # {"tensor": {"dtype", "shape"}} | {"int"|"float"|"bool": v} | {"none": None}


class Request(TypedDict, total=False):
    """``<job>/in/request.json``: written by the host, trusted by the runner."""

    protocol: int
    action: str  # one of ACTIONS
    repo_dir: Optional[str]
    entrypoint: Optional[str]
    export: ExportOptions
    confine: Dict[str, Any]  # rlimits and Landlock rules (runners/_confine.py)
    checkpoint: str  # action "convert"
    weights_only: bool  # action "convert"
    deferred: DeferredCall  # action "export"
    audit: bool  # action "load": record what repo code does (runners/_audit_hook.py) into out/AUDIT_FILE


class RunnerError(TypedDict):
    """``result.json`` "error" when status is "error"."""

    category: str  # one of ERROR_CATEGORIES
    type: str  # the exception's class name
    message: str
    traceback: NotRequired[str]
    urls: NotRequired[List[str]]  # category "needs_download"
    module: NotRequired[str]  # category "environment": the module that could not be imported


class RunnerWarning(TypedDict):
    """One entry of ``result.json`` "warnings"."""

    category: str  # one of WARNING_CATEGORIES
    message: str


class Result(TypedDict):
    """``<job>/out/result.json``: written by the runner, hostile to the host."""

    protocol: int
    status: str  # "ok" | "error"
    error: NotRequired[RunnerError]
    warnings: NotRequired[List[RunnerWarning]]  # raised by repo code, at most MAX_WARNINGS
    summary: NotRequired[Dict[str, Any]]  # action "load" / "convert"
    entrypoints: NotRequired[List[Dict[str, Union[str, None]]]]  # action "list"
    # action "load": the staged URLs the entrypoint was served, at most MAX_DOWNLOAD_URLS
    downloads_used: NotRequired[List[str]]
