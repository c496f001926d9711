"""Pre-norm transformer blocks (SPEC §1): the ViT/DeiT block and DeepViT's scaled variant.

A block receives its attention module (:class:`~deitlab.layers.Attention` or
:class:`~deitlab.layers.ReAttention`), so which attention a block uses is decided where the blocks are built.
Key names follow timm: ``norm1``, ``attn``, ``norm2``, ``mlp``.
"""

from __future__ import annotations

import torch
from torch import nn

from deitlab.layers.drop import DropPath
from deitlab.layers.mlp import Mlp

LN_EPS = 1e-6  # LayerNorm eps of DeiT/timm ViTs and of DeepViT


class Block(nn.Module):
    """``x + DropPath(Attn(LN(x)))``, then ``x + DropPath(MLP(LN(x)))``.

    Args:
        dim: token width D.
        attn: the attention module, mapping ``(B, N, D)`` to ``(B, N, D)``; it also has ``forward_with_attn``.
        mlp_ratio: hidden width of the MLP as a multiple of D.
        proj_drop: dropout after the MLP's layers.
        drop_path: stochastic-depth rate of both residual branches.
    """

    def __init__(
        self, dim: int, attn: nn.Module, *, mlp_ratio: float = 4.0, proj_drop: float = 0.0, drop_path: float = 0.0
    ) -> None:
        super().__init__()
        if mlp_ratio <= 0:
            raise ValueError(f"mlp_ratio={mlp_ratio!r} must be positive")
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = attn
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=proj_drop)
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        x = x + self.drop_path2(self.mlp(self.norm2(x)))
        return x

    def forward_with_attn(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Same output as ``forward`` through the explicit attention path, plus the attention map."""
        y, attn = self.attn.forward_with_attn(self.norm1(x))
        x = x + self.drop_path1(y)
        x = x + self.drop_path2(self.mlp(self.norm2(x)))
        return x, attn


class ScaledBlock(Block):
    """DeepViT's block with ``scale_adjustment = s``: ``x + DropPath(Attn(LN(x·s)) / s)`` and the same for the MLP.

    The official code (dvit_repo ``Block`` with ``re_atten=True``) applies it to every block of DeepViT-S/L,
    re-attention or not; so do we. The other arguments are :class:`Block`'s.
    """

    def __init__(self, dim: int, attn: nn.Module, *, scale_adjustment: float, **kwargs: float) -> None:
        if scale_adjustment <= 0:
            raise ValueError(f"scale_adjustment={scale_adjustment!r} must be positive")
        super().__init__(dim, attn, **kwargs)
        self.scale_adjustment = scale_adjustment

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.scale_adjustment
        x = x + self.drop_path1(self.attn(self.norm1(x * s))) / s
        x = x + self.drop_path2(self.mlp(self.norm2(x * s))) / s
        return x

    def forward_with_attn(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.scale_adjustment
        y, attn = self.attn.forward_with_attn(self.norm1(x * s))
        x = x + self.drop_path1(y) / s
        x = x + self.drop_path2(self.mlp(self.norm2(x * s))) / s
        return x, attn
