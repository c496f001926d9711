"""Resampling learned position embeddings to a new patch grid (fine-tuning at another resolution)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def resample_pos_embed(
    pos_embed: torch.Tensor,
    new_grid: Sequence[int],
    *,
    num_prefix_tokens: int,
    old_grid: Sequence[int] | None = None,
) -> torch.Tensor:
    """Resample ``(1, prefix + h*w, D)`` position embeddings to ``new_grid`` bicubically.

    The prefix tokens' (class, distillation) embeddings are kept untouched, as DeiT does when fine-tuning
    224 -> 384; the patch-grid part is interpolated with ``align_corners=False`` (DeiT ``main.py``).
    ``old_grid`` defaults to a square grid.
    """
    if pos_embed.ndim != 3 or pos_embed.shape[0] != 1:
        raise ValueError(f"pos_embed must have shape (1, N, D), got {tuple(pos_embed.shape)}")
    n_grid = pos_embed.shape[1] - num_prefix_tokens
    if old_grid is None:
        side = int(round(n_grid**0.5))
        if side * side != n_grid:
            raise ValueError(
                f"pos_embed holds {n_grid} grid tokens after {num_prefix_tokens} prefix tokens, which is not a "
                "square grid; pass old_grid=(h, w)"
            )
        old_grid = (side, side)
    h0, w0 = old_grid
    if h0 * w0 != n_grid:
        raise ValueError(f"old_grid={tuple(old_grid)} does not match the {n_grid} grid tokens in pos_embed")
    h1, w1 = new_grid
    prefix, grid = pos_embed[:, :num_prefix_tokens], pos_embed[:, num_prefix_tokens:]
    dim = pos_embed.shape[-1]
    grid = grid.reshape(1, h0, w0, dim).permute(0, 3, 1, 2)  # (1, D, h0, w0)
    grid = F.interpolate(grid.float(), size=(h1, w1), mode="bicubic", align_corners=False)  # (1, D, h1, w1)
    grid = grid.to(pos_embed.dtype).permute(0, 2, 3, 1).reshape(1, h1 * w1, dim)  # (1, h1*w1, D)
    return torch.cat([prefix, grid], dim=1)
