"""Safe file I/O for the whole package: atomic writes, safe checkpoint reads, content hashes.

Writing: bytes go to a temp file in the same directory, are flushed and fsynced, then renamed over the target
(and the directory fsynced), so a crash leaves the old file or the complete new one, never a torn one. Weights
are written as safetensors only.

Reading: ``.safetensors`` directly; ``.pth``/``.pt``/``.bin`` and resume files only through
``torch.load(weights_only=True)``, so a file that would execute pickled code is refused instead of run.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file as st_load_file
from safetensors.torch import save as st_save
from torch import nn

from deitlab.errors import CheckpointError

FORMAT = "deitlab"
# Where training scripts nest the weights, most specific first (DeiT: "model"; pycls: "model_state").
NESTING_KEYS = ("model", "state_dict", "model_state", "module")
# Prefixes that DistributedDataParallel and torch.compile add to parameter names.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
MAX_NESTING = 3  # {"model": {"state_dict": ...}} exists in the wild


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old file or the complete new one.

    Temp file in the same directory, flush + fsync, rename over ``path``, fsync the directory. A failed write
    (disk full, permissions) removes the temp file and raises :class:`CheckpointError`; ``path`` is untouched.
    """
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as e:
        raise CheckpointError(
            f"could not write {path}: {e.strerror or e}; any previous version of it is intact"
        ) from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def sha256_hex(data: bytes) -> str:
    """Hex SHA-256 of ``data`` (the manifest's integrity check of resume files)."""
    return hashlib.sha256(data).hexdigest()


def save_weights(model: nn.Module, path: str | Path, *, extra: dict[str, Any] | None = None) -> None:
    """Save ``model``'s state dict as safetensors with the metadata needed to rebuild it.

    Metadata: ``format``, ``model`` (registry name), ``model_kwargs`` (JSON overrides), plus ``extra`` (JSON).
    """
    meta = {"format": FORMAT}
    if getattr(model, "model_name", None):
        meta["model"] = model.model_name  # type: ignore[assignment]
        meta["model_kwargs"] = json.dumps(getattr(model, "model_kwargs", {}))
    for k, v in (extra or {}).items():
        meta[k] = json.dumps(v)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(path, st_save(tensors, metadata=meta))


def torch_bytes(obj: Any) -> bytes:
    """``torch.save`` into memory (resume states: tensors and plain containers only)."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def load_torch_bytes(data: bytes, *, what: str) -> Any:
    """``torch.load(weights_only=True)`` of in-memory bytes; anything that needs pickled code is refused."""
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError/RuntimeError for unsafe globals, others for corruption
        raise CheckpointError(f"{what} is unreadable ({str(e).splitlines()[0][:120]})") from None


def strip_prefixes(key: str, prefixes: tuple[str, ...] = WRAPPER_PREFIXES) -> str:
    """Remove the prefixes that DistributedDataParallel and torch.compile add to parameter names."""
    changed = True
    while changed:
        changed = False
        for p in prefixes:
            if key.startswith(p):
                key, changed = key[len(p) :], True
    return key


def unwrap_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """Find the tensor mapping inside a loaded checkpoint and drop DDP/compile prefixes.

    Raises:
        ValueError: no mapping of tensors is found within :data:`MAX_NESTING` levels of :data:`NESTING_KEYS`.
    """
    for _ in range(MAX_NESTING):
        if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        if not isinstance(obj, Mapping):
            raise ValueError(f"checkpoint holds a {type(obj).__name__}, not a state dict")
        nested = next((obj[k] for k in NESTING_KEYS if isinstance(obj.get(k), Mapping)), None)
        if nested is None:
            keys = ", ".join(list(map(str, obj))[:8])
            raise ValueError(f"no state dict found in checkpoint (top-level keys: {keys})")
        obj = nested
    return {strip_prefixes(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def read_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load a state dict and its metadata from a file, without executing pickled code.

    Raises:
        CheckpointError: missing, unreadable or unsafe file, or no state dict inside.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    with path.open("rb") as f:
        head = f.read(9)
    if path.suffix == ".safetensors" or head[8:9] == b"{":
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
            return st_load_file(str(path)), meta
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"checkpoint {path} is not a readable safetensors file ({e})") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError/RuntimeError for unsafe globals, others for corruption
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "weights_only" in str(e) or "Unsupported global" in str(e) or "GLOBAL" in str(e):
            raise CheckpointError(
                f"refusing to load {path}: it needs pickled code to unpickle ({msg[:160]}); deitlab only loads "
                "plain tensors (torch.load weights_only=True). Re-save it as a state dict or safetensors."
            ) from None
        raise CheckpointError(f"checkpoint {path} is corrupt or not a PyTorch file ({msg[:160]})") from None
    try:
        return unwrap_state_dict(obj), {}
    except ValueError as e:
        raise CheckpointError(f"checkpoint {path}: {e}") from None
