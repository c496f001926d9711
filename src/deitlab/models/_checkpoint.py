"""Reading and writing model weights safely.

Writing: safetensors only, atomically (temp file in the same directory, flush + fsync, rename, fsync dir).
Reading: ``.safetensors`` directly; ``.pth``/``.pt``/``.bin`` only through ``torch.load(weights_only=True)``,
so a file that would execute pickled code is refused instead of run.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file as st_load_file
from safetensors.torch import save as st_save
from torch import nn

from deitlab.errors import CheckpointError
from deitlab.models.convert import adapt_pos_embed, is_head_key, unwrap_state_dict

log = logging.getLogger(__name__)

FORMAT = "deitlab"


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


def load_checkpoint(model: nn.Module, path: str | Path, *, allow_new_head: bool = False) -> list[str]:
    """Load weights from ``path`` into ``model``; returns the keys left at their initial values.

    Position embeddings are resampled to the model's grid. A classifier of another class count is dropped with
    a warning when ``allow_new_head`` (the caller changed ``num_classes`` on purpose), otherwise it is an error
    naming both shapes. Any other missing, unexpected or mis-shaped key is an error listing them.
    """
    state, meta = read_checkpoint(path)
    state = adapt_pos_embed(state, model)
    own = model.state_dict()
    mismatched = [k for k in own if k in state and state[k].shape != own[k].shape]  # model order
    head_mismatch = sorted((k for k in mismatched if is_head_key(k)), key=lambda k: not k.endswith("weight"))
    other_mismatch = [k for k in mismatched if not is_head_key(k)]
    name = meta.get("model", "")
    origin = f" (a {name} checkpoint)" if name else ""
    dropped: list[str] = []
    if head_mismatch:
        shapes = f"{tuple(state[head_mismatch[0]].shape)} in the checkpoint vs {tuple(own[head_mismatch[0]].shape)}"
        if not allow_new_head:
            raise CheckpointError(
                f"checkpoint {path}{origin} has a classifier of another class count ({head_mismatch[0]}: {shapes}); "
                "pass num_classes explicitly to train a new head"
            )
        dropped = [k for k in state if is_head_key(k)]
        log.warning(
            "dropping the checkpoint's classifier (%s: %s); the new head starts from scratch", head_mismatch[0], shapes
        )
        state = {k: v for k, v in state.items() if k not in dropped}
    missing = [k for k in own if k not in state and k not in dropped and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    problems = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in other_mismatch[:4]]
    problems += [f"{len(other_mismatch) - 4} more shape mismatches"] if len(other_mismatch) > 4 else []
    for label, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            problems.append(f"{label} {len(keys)} keys ({', '.join(keys[:4])}{', ...' if len(keys) > 4 else ''})")
    if problems:
        raise CheckpointError(f"checkpoint {path}{origin} is for another architecture: {'; '.join(problems)}")
    model.load_state_dict(state, strict=False)
    return dropped
