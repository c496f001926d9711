"""Foreign checkpoint layouts -> deitlab's (timm's) state-dict keys. Pure functions, no I/O.

deitlab uses timm's key names, so timm state dicts need no renaming. The wrapping of foreign files (official DeiT
nests the weights under ``"model"``, DDP adds ``module.``) is undone by :func:`deitlab.io.unwrap_state_dict`;
what is left here is the position-embedding grid of a checkpoint trained at another resolution.
"""

from __future__ import annotations

import torch

from deitlab.layers import resample_pos_embed


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
