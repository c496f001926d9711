"""Foreign checkpoint layouts -> deitlab's (timm's) state-dict keys. Pure functions, no I/O.

deitlab uses timm's key names, so timm state dicts need no renaming. What differs between sources is the
wrapping (official DeiT files nest the weights under ``"model"``, pycls under ``"model_state"``, DDP adds a
``module.`` prefix) and the position-embedding grid when a checkpoint was trained at another resolution.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from deitlab.layers import resample_pos_embed

# Where training scripts nest the weights, most specific first (DeiT: "model"; pycls: "model_state").
_NESTING_KEYS = ("model", "state_dict", "model_state", "module")


def unwrap_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """Find the tensor mapping inside a loaded checkpoint and drop DDP/compile prefixes."""
    for _ in range(3):  # a few levels at most ({"model": {"state_dict": ...}} exists in the wild)
        if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        if not isinstance(obj, Mapping):
            raise ValueError(f"checkpoint holds a {type(obj).__name__}, not a state dict")
        nested = next((obj[k] for k in _NESTING_KEYS if isinstance(obj.get(k), Mapping)), None)
        if nested is None:
            keys = ", ".join(list(map(str, obj))[:8])
            raise ValueError(f"no state dict found in checkpoint (top-level keys: {keys})")
        obj = nested
    return {strip_prefixes(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def strip_prefixes(key: str, prefixes: tuple[str, ...] = ("module.", "_orig_mod.")) -> str:
    """Remove the prefixes that DistributedDataParallel and torch.compile add to parameter names."""
    changed = True
    while changed:
        changed = False
        for p in prefixes:
            if key.startswith(p):
                key, changed = key[len(p) :], True
    return key


def adapt_pos_embed(state_dict: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Resample ``pos_embed`` to the model's patch grid when the checkpoint's grid differs.

    Prefix tokens (class, distillation) are kept as they are; a checkpoint with a different number of prefix
    tokens is left alone (and reported as a shape mismatch by the loader).
    """
    target = getattr(model, "pos_embed", None)
    pos = state_dict.get("pos_embed")
    if target is None or pos is None or pos.shape == target.shape or pos.shape[-1] != target.shape[-1]:
        return state_dict
    prefix = int(getattr(model, "num_prefix_tokens", 1))
    n_grid = pos.shape[1] - prefix
    side = int(round(n_grid**0.5))
    if n_grid <= 0 or side * side != n_grid:
        return state_dict
    out = dict(state_dict)
    out["pos_embed"] = resample_pos_embed(pos, model.patch_embed.grid_size, num_prefix_tokens=prefix)
    return out


HEAD_PREFIXES = ("head.", "head_dist.", "head.fc.")


def is_head_key(key: str) -> bool:
    """Classifier parameters, which depend on the class count."""
    return key.startswith(HEAD_PREFIXES)
