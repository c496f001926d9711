"""Per-block attention maps and attention rollout (Abnar & Zuidema, 2020; SPEC §7), for drawing over an image.

Rollout treats each block's residual attention as a row-stochastic mixing of tokens, ``Â^l =
norm_rows(½·mean_h A^l + ½·I)``, and composes them from the first block up: ``R = Â^L ⋯ Â^2 Â^1``, i.e.
``R ← Â^l R`` for l = 1…L (the recursion ``Ã(l_i) = A(l_i)·Ã(l_{i-1})`` of the paper). Row 0 of ``R`` says how much
the class token at the top draws on each input token; its patch columns, reshaped to the patch grid, are the map.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from deitlab.analysis.maps import capture


def residual_attention(attn: torch.Tensor) -> torch.Tensor:
    """``norm_rows(½·mean_h A + ½·I)`` of a ``(H, N, N)`` or ``(B, H, N, N)`` map, in float64."""
    a = attn.double().mean(-3)  # mean over heads: (N, N) or (B, N, N)
    a = 0.5 * a + 0.5 * torch.eye(a.shape[-1], dtype=a.dtype)
    return a / a.sum(-1, keepdim=True)


def attention_rollout(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """``R = Â^L ⋯ Â^1`` with ``Â^l = norm_rows(½·mean_h A^l + ½·I)``; rows of R sum to 1.

    Args:
        maps: the blocks' softmax maps, first block first, each ``(H, N, N)`` or ``(B, H, N, N)``.

    Returns:
        ``(N, N)`` or ``(B, N, N)`` float64.
    """
    if len(maps) == 0:
        raise ValueError("no attention maps to roll out: pass one map per block, first block first")
    rollout = residual_attention(maps[0])
    for attn in maps[1:]:
        rollout = residual_attention(attn) @ rollout
    return rollout


def _grid(model: nn.Module, num_tokens: int, prefix: int) -> tuple[int, int]:
    grid = tuple(getattr(getattr(model, "patch_embed", None), "grid_size", ()))
    if len(grid) != 2 or grid[0] * grid[1] != num_tokens - prefix:
        raise ValueError(f"cannot lay {num_tokens - prefix} patch tokens on the patch grid {grid}")
    return int(grid[0]), int(grid[1])


def attention_maps(model: nn.Module, image: torch.Tensor) -> dict[str, Any]:
    """Every block's attention for one image, the class token's per-block maps and its rollout over the patches.

    Rollout uses the softmax maps (re-attention's mixed maps are not distributions; SPEC §7).

    Args:
        model: a ViT/DeiT/DeepViT.
        image: one normalised image ``(C, H, W)`` (or a batch of one).

    Returns:
        ``{"attentions": L × (H, N, N) softmax maps, "cls_attention": (L, gh, gw) class-token row over the
        patches, averaged over heads, "rollout": (N, N), "cls_rollout": (gh, gw), "grid": (gh, gw),
        "num_prefix_tokens", ["applied": L × (H, N, N) maps applied to V, if any block re-attends],
        ["dist_rollout": (gh, gw), for distilled models]}`` (tensors, float).
    """
    batch = image[None] if image.ndim == 3 else image
    if batch.ndim != 4 or batch.shape[0] != 1:
        raise ValueError(f"attention_maps takes one image (C, H, W), got shape {tuple(image.shape)}")
    c = capture(model, batch)
    maps = [a[0] for a in c.softmax]  # each (H, N, N)
    prefix = int(getattr(model, "num_prefix_tokens", 1))
    gh, gw = _grid(model, maps[0].shape[-1], prefix)
    rollout = attention_rollout(maps)
    out: dict[str, Any] = {
        "attentions": maps,
        "cls_attention": torch.stack([a.mean(0)[0, prefix:].reshape(gh, gw) for a in maps]),
        "rollout": rollout.float(),
        "cls_rollout": rollout[0, prefix:].reshape(gh, gw).float(),
        "grid": (gh, gw),
        "num_prefix_tokens": prefix,
    }
    if any(c.reattention):
        out["applied"] = [a[0] for a in c.applied]
    if prefix >= 2 and getattr(model, "dist_token", None) is not None:
        out["dist_rollout"] = rollout[1, prefix:].reshape(gh, gw).float()
    return out
