"""Reading a ViT's intermediates for analysis: per-block tokens, softmax maps and the maps the blocks apply.

A plain attention block has one map, ``A = softmax(q kᵀ/√d)``. A DeepViT re-attention block has two: the softmax
map ``A`` and the mixed map ``Norm(Θᵀ·A)`` it actually multiplies ``V`` with (SPEC §5, §7).
``forward_intermediates(x, return_attention=True)`` returns the applied maps; the softmax maps of re-attention
blocks are read with a forward pre-hook on ``attn.reatten_matrix`` (Θ), whose input *is* the softmax map. The hook
is a documented PyTorch mechanism, registered only for the duration of one forward pass and always removed; it
reads and never replaces anything.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from deitlab.errors import ConfigError


class WrongModelError(ConfigError, TypeError):
    """The analysis needs another kind of model (a ViT, a distilled ViT): a usage error (exit code 2), and a
    ``TypeError`` for callers of the library."""


@dataclass
class Captured:
    """One forward pass of a batch, everything on the CPU in float32.

    Attributes:
        tokens: each block's output tokens ``(B, N, D)`` before the final norm.
        softmax: each block's softmax attention map ``(B, H, N, N)`` (rows = queries, sum to 1).
        applied: each block's map multiplied with ``V`` (``= softmax`` for plain blocks; signed for re-attention).
        reattention: per block, whether it re-attends (``applied`` differs from ``softmax``).
        features: the final normed tokens ``(B, N, D)``.
    """

    tokens: list[torch.Tensor]
    softmax: list[torch.Tensor]
    applied: list[torch.Tensor]
    reattention: list[bool]
    features: torch.Tensor


def is_reattention(block: nn.Module) -> bool:
    """Whether ``block``'s attention mixes its heads' maps (DeepViT re-attention)."""
    return hasattr(getattr(block, "attn", None), "reatten_matrix")


def model_device(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Evaluation mode (no dropout, BatchNorm running statistics) and no gradients, restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


def check_vit(model: nn.Module) -> None:
    """Analyses need a ViT with ``blocks`` and ``forward_intermediates``; a CNN gets a clear error."""
    if not (hasattr(model, "forward_intermediates") and hasattr(model, "blocks")):
        raise WrongModelError(
            f"{type(model).__name__} is not a vision transformer (no forward_intermediates/blocks); "
            "attention analyses need a ViT, DeiT or DeepViT model"
        )


def capture(model: nn.Module, images: torch.Tensor, *, attention: bool = True) -> Captured:
    """Run ``images`` (normalised ``(B, C, H, W)``) through ``model`` in eval mode and keep every intermediate.

    With ``attention=False`` only the tokens are kept (``softmax``/``applied`` are empty) and the model may use
    its fused attention kernel.
    """
    check_vit(model)
    if images.ndim != 4:
        raise ValueError(f"images must be a (B, C, H, W) batch, got shape {tuple(images.shape)}")
    softmax: dict[int, torch.Tensor] = {}
    handles = []
    for i, blk in enumerate(model.blocks):
        if attention and is_reattention(blk):

            def keep(_module: nn.Module, args: tuple[torch.Tensor, ...], i: int = i) -> None:
                softmax[i] = args[0].detach().float().cpu()  # the softmax map, before Θ mixes the heads

            handles.append(blk.attn.reatten_matrix.register_forward_pre_hook(keep))
    try:
        with eval_mode(model):
            out = model.forward_intermediates(images.to(model_device(model)), return_attention=attention)
    finally:
        for h in handles:
            h.remove()
    applied = [a.detach().float().cpu() for a in out.attentions or []]
    return Captured(
        tokens=[t.detach().float().cpu() for t in out.tokens],
        softmax=[softmax.get(i, a) for i, a in enumerate(applied)],
        applied=applied,
        reattention=[is_reattention(b) for b in model.blocks],
        features=out.features.detach().float().cpu(),
    )


def cosine(a: torch.Tensor, b: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """``aᵀb / (‖a‖‖b‖)`` along ``dim``, in float64; a zero vector has cosine 0 with anything."""
    a, b = a.double(), b.double()
    return (F.normalize(a, dim=dim, eps=1e-30) * F.normalize(b, dim=dim, eps=1e-30)).sum(dim)


def batches(images: torch.Tensor, batch_size: int) -> list[torch.Tensor]:
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    if images.ndim == 3:
        images = images[None]
    if len(images) == 0:
        raise ValueError("no images to analyse: pass at least one")
    return list(images.split(batch_size))
