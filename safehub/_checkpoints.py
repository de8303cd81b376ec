"""torch.hub's download helpers: ``load_state_dict_from_url`` and ``download_url_to_file``.

torch.hub unpickles whatever it downloaded. safehub reads safetensors directly and
unpickles anything else only inside the sandbox, which converts it to data
(``runners/_convert.py``).
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from ._config import hub_path

if TYPE_CHECKING:
    from ._sandbox import SandboxBackend

__all__ = ["load_state_dict_from_url", "download_url_to_file", "load_checkpoint_file"]

logger = logging.getLogger("safehub")

# torch.hub's convention: "<name>-<sha256 prefix>.<ext>"
HASH_REGEX = re.compile(r"-([a-f0-9]*)\.")
MAX_CHECKPOINT_BYTES = 64 * 1024**3


def download_url_to_file(url: str, dst: str, hash_prefix: str | None = None, progress: bool = True) -> None:
    """Download ``url`` to ``dst`` (atomic), like ``torch.hub.download_url_to_file``."""
    from ._fetch import download_url_to_file as _download

    _download(url, dst, hash_prefix=hash_prefix, progress=progress)


def load_state_dict_from_url(
    url: str,
    model_dir: str | None = None,
    map_location: Any = None,
    progress: bool = True,
    check_hash: bool = False,
    file_name: str | None = None,
    weights_only: bool = False,
) -> dict[str, Any]:
    """Like ``torch.hub.load_state_dict_from_url``, without unpickling on the host."""
    model_dir = model_dir or str(hub_path() / "checkpoints")
    os.makedirs(model_dir, exist_ok=True)
    filename = file_name or os.path.basename(urlparse(url).path)
    if not filename or filename in (".", ".."):
        raise ValueError(f"cannot derive a file name from {url!r}; pass file_name=")
    cached_file = os.path.join(model_dir, filename)
    if not os.path.exists(cached_file):
        logger.info('Downloading: "%s" to %s', url, cached_file)
        hash_prefix = None
        if check_hash:
            match = HASH_REGEX.search(filename)
            hash_prefix = match.group(1) if match else None
        download_url_to_file(url, cached_file, hash_prefix, progress=progress)
    return load_checkpoint_file(Path(cached_file), map_location=map_location, weights_only=weights_only)


def _is_safetensors(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    header_len = int.from_bytes(head[:8], "little")
    return head[8:9] == b"{" and 2 <= header_len <= min(path.stat().st_size - 8, 100 * 1024 * 1024)


def load_checkpoint_file(
    path: Path, *, map_location: Any = None, weights_only: bool = False, sandbox: str | SandboxBackend | None = None
) -> Any:
    """Read a checkpoint file: safetensors directly, anything else through the sandbox."""
    path = Path(path).resolve()
    if _is_safetensors(path):
        from ._channel import load_safetensors_checked

        obj: Any = load_safetensors_checked(path.parent, path.name, max_bytes=MAX_CHECKPOINT_BYTES)
    else:
        obj = _convert_in_sandbox(path, weights_only=weights_only, sandbox=sandbox)
    return _apply_map_location(obj, map_location)


def _convert_in_sandbox(path: Path, *, weights_only: bool, sandbox: str | SandboxBackend | None) -> Any:
    from ._channel import read_converted_checkpoint
    from ._env import host_env
    from ._jobs import JobRequest, run_job
    from ._sandbox import get_backend

    backend = get_backend(sandbox)
    logger.info("unpickling %s inside the %s sandbox", path, backend.name)
    request = JobRequest(action="convert", checkpoint=path, weights_only=weights_only)
    with run_job(request, python_env=host_env(hub_path()), backend=backend, hub_dir=hub_path()) as job:
        return read_converted_checkpoint(job.out_dir, max_weight_bytes=MAX_CHECKPOINT_BYTES)


def _apply_map_location(obj: Any, map_location: Any) -> Any:
    """Tensors arrive on CPU; move them as torch.load's ``map_location`` would.

    A callable is torch.load's ``fn(storage, location)``: it is called on the host,
    after the rebuild, once per tensor with the tensor's storage and ``"cpu"`` (the
    sandbox read every tensor to CPU, so the original location tag is gone). It
    returns a storage (the tensor moves to that storage's device) or None (stays).
    """
    if map_location is None:
        return obj
    import torch

    func = map_location if callable(map_location) and not isinstance(map_location, (str, torch.device)) else None

    def target(t: torch.Tensor) -> Any:
        if func is not None:
            moved = func(t.untyped_storage(), "cpu")
            if moved is None:
                return t.device
            device = getattr(moved, "device", None)
            if not isinstance(device, torch.device):
                raise TypeError(f"map_location returned {type(moved).__name__}, not a storage or None")
            return device
        if isinstance(map_location, dict):
            return map_location.get(str(t.device), t.device)
        return map_location

    def visit(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return value.to(target(value))
        if isinstance(value, dict):
            return type(value)((k, visit(v)) for k, v in value.items())
        if isinstance(value, list):
            return [visit(v) for v in value]
        if isinstance(value, tuple):
            return tuple(visit(v) for v in value)
        return value

    return visit(obj)
