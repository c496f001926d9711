"""Attention collapse (DeepViT, Zhou et al. 2021 §3; SPEC §5, §7): do deeper blocks repeat the same maps?

Notation: block l's map ``A^l ∈ R^{H×N×N}``, rows = queries i, columns = keys t, N counting every token (prefix
tokens included). Four measurements, each averaged over images:

- cross-layer similarity ``M^{p,q} = mean_{h,t} cos(A^p_{h,:,t}, A^q_{h,:,t})``: the cosine of the columns that
  say how much token t contributes to every output token;
- similar blocks: the number of blocks l ≥ 2 with ``M^{l-1,l}`` above a threshold (0.9);
- attention entropy ``mean_{h,i} −Σ_t A_{h,i,t} log A_{h,i,t}`` in nats (uniform attention gives log N), reported
  beside the similarity because near-uniform maps are alike whatever the model has learned;
- feature-to-final similarity: the cosine of block l's output tokens with the last block's, per token.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from deitlab.analysis.maps import batches, capture, cosine


def _check_maps(maps: Sequence[torch.Tensor]) -> None:
    if len(maps) == 0:
        raise ValueError("no attention maps: pass one (B, H, N, N) map per block")
    shape = maps[0].shape
    if len(shape) != 4 or shape[-1] != shape[-2]:
        raise ValueError(f"attention maps must be (B, heads, N, N), got shape {tuple(shape)}")
    bad = [i for i, a in enumerate(maps) if a.shape != shape]
    if bad:
        raise ValueError(f"block {bad[0]}'s map has shape {tuple(maps[bad[0]].shape)}, block 0's {tuple(shape)}")


def cross_layer_similarity(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """The L×L matrix ``M^{p,q} = mean_{b,h,t} A^p_{b,h,:,t}ᵀ A^q_{b,h,:,t} / (‖A^p_{b,h,:,t}‖ ‖A^q_{b,h,:,t}‖)``.

    Args:
        maps: one ``(B, H, N, N)`` attention map per block (rows = queries, columns = keys).

    Returns:
        ``(L, L)`` float64, symmetric; the diagonal is 1 (0 only for an all-zero column).
    """
    _check_maps(maps)
    cols = F.normalize(torch.stack([a.double() for a in maps]), dim=-2, eps=1e-30)  # (L, B, H, N_query, N_key)
    B, H, N = cols.shape[1], cols.shape[2], cols.shape[-1]
    return torch.einsum("pbhit,qbhit->pq", cols, cols) / (B * H * N)


def adjacent_similarity(similarity: torch.Tensor) -> list[float]:
    """``[M^{1,2}, M^{2,3}, …, M^{L-1,L}]``: the superdiagonal of the similarity matrix."""
    return [float(v) for v in similarity.diagonal(1)]


def count_similar_blocks(adjacent: Sequence[float], threshold: float = 0.9) -> int:
    """``#{l ≥ 2 : M^{l-1,l} > threshold}`` (SPEC §6.2: in the 32-block ViT, blocks 18–32, i.e. 15)."""
    return sum(1 for v in adjacent if v > threshold)


def attention_entropy(maps: Sequence[torch.Tensor]) -> list[float]:
    """Per block, ``mean_{b,h,i} −Σ_t A_{b,h,i,t} log A_{b,h,i,t}`` in nats (``0 log 0 = 0``); at most ``log N``.

    Only meaningful for maps whose rows are distributions (softmax maps, not re-attention's mixed maps).
    """
    if len(maps) == 0:
        raise ValueError("no attention maps: pass one (B, H, N, N) map per block")
    return [float(-torch.xlogy(a.double(), a.double()).sum(-1).mean()) for a in maps]


def feature_to_final(tokens: Sequence[torch.Tensor]) -> list[float]:
    """Per block l, ``mean_{b,n} cos(X^l_{b,n}, X^L_{b,n})`` of the output tokens ``(B, N, D)``; the last is 1."""
    if len(tokens) == 0:
        raise ValueError("no block outputs: pass one (B, N, D) tensor per block")
    return [float(cosine(t, tokens[-1]).mean()) for t in tokens]


def _similarity_summary(similarity: torch.Tensor, threshold: float) -> dict[str, Any]:
    adjacent = adjacent_similarity(similarity)
    return {
        "similarity": similarity.tolist(),
        "adjacent": adjacent,
        "similar_blocks": count_similar_blocks(adjacent, threshold),
    }


def attention_collapse(
    model: nn.Module, images: torch.Tensor, threshold: float = 0.9, *, batch_size: int = 16
) -> dict[str, Any]:
    """Cross-layer similarity, similar blocks, entropy and feature-to-final similarity of ``model`` on ``images``.

    Every quantity is a mean over images (computed ``batch_size`` images at a time; each batch is weighted by its
    size, so the result does not depend on ``batch_size``). ``similarity``/``adjacent``/``similar_blocks`` and
    ``entropy`` use the softmax maps ``A^l``. Models with re-attention blocks also get ``"mixed"``: the same
    similarity measures on the maps the blocks apply to ``V`` (``Norm(Θᵀ·A)``; signed, so no entropy), so that
    "0 similar blocks" can be read on both maps (SPEC §7).

    Args:
        model: a ViT/DeiT/DeepViT model (any registry ViT).
        images: normalised ``(B, C, H, W)`` images, as the model expects them.
        threshold: a block is "similar" when its similarity to the previous block exceeds this.

    Returns:
        ``{"similarity": L×L, "adjacent": L−1, "similar_blocks", "threshold", "entropy": L (nats),
        "max_entropy": log N, "feature_to_final": L, "map": "softmax", "reattention": L flags,
        "num_images", "num_blocks", ["mixed": {"similarity", "adjacent", "similar_blocks"}]}``.
    """
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold={threshold} must be in (0, 1]; DeepViT uses 0.9")
    total, n = None, 0
    for chunk in batches(images, batch_size):
        c = capture(model, chunk)
        w = len(chunk)
        parts = [
            cross_layer_similarity(c.softmax),
            torch.tensor(attention_entropy(c.softmax), dtype=torch.float64),
            torch.tensor(feature_to_final(c.tokens), dtype=torch.float64),
            cross_layer_similarity(c.applied),
        ]
        total = [p * w for p in parts] if total is None else [t + p * w for t, p in zip(total, parts)]
        n += w
        num_tokens, reattention = c.softmax[0].shape[-1], c.reattention
    similarity, entropy, to_final, applied = (t / n for t in total)
    out: dict[str, Any] = {
        "map": "softmax",
        **_similarity_summary(similarity, threshold),
        "threshold": threshold,
        "entropy": entropy.tolist(),
        "max_entropy": math.log(num_tokens),
        "feature_to_final": to_final.tolist(),
        "reattention": reattention,
        "num_images": n,
        "num_blocks": len(reattention),
    }
    if any(reattention):
        out["mixed"] = _similarity_summary(applied, threshold)
    return out
