"""Multi-head self-attention and DeepViT re-attention.

``Attention.forward`` runs either :func:`torch.nn.functional.scaled_dot_product_attention` (fused kernels)
or the explicit ``softmax(q kᵀ/√d) v``; ``Attention.forward_with_attn`` always takes the explicit path and
also returns the attention maps ``(B, heads, N, N)`` that the analysis tools need. The two agree to float
precision.

Which path ``forward`` takes is the ``attn_impl`` argument: ``"sdpa"``, ``"explicit"`` or ``"auto"``. ``"auto"``
uses the explicit path when training on the CPU, because PyTorch's CPU flash-attention backward is slow for
ViT-sized sequences (measured on 2 Xeon cores, B=256, 3 heads, 51 tokens, forward+backward: fp32 26.8 ms
SDPA vs 19.9 ms explicit; bf16 77.8 ms vs 18.3 ms), and SDPA everywhere else (inference, CUDA).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

ATTN_IMPLS = ("auto", "sdpa", "explicit")


class Attention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection (timm key names ``qkv``/``proj``)."""

    def __init__(
        self,
        dim: int,
        *,
        num_heads: int,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        attn_impl: str = "auto",
    ) -> None:
        super().__init__()
        if attn_impl not in ATTN_IMPLS:
            raise ValueError(f"attn_impl={attn_impl!r} is not one of {ATTN_IMPLS}")
        if dim % num_heads != 0:
            raise ValueError(
                f"embed_dim={dim} is not divisible by num_heads={num_heads}; "
                f"choose num_heads from the divisors of {dim}"
            )
        self.attn_impl = attn_impl
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim)  # (B, N, 3, heads, head_dim)
        qkv = qkv.permute(2, 0, 3, 1, 4)  # (3, B, heads, N, head_dim)
        return qkv.unbind(0)

    def _out(self, x: torch.Tensor) -> torch.Tensor:
        B, H, N, Dh = x.shape
        x = x.transpose(1, 2).reshape(B, N, H * Dh)  # (B, N, D)
        return self.proj_drop(self.proj(x))

    def attention_map(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """softmax(q kᵀ / √d) followed by attention dropout, ``(B, heads, N, N)``."""
        attn = (q * self.scale) @ k.transpose(-2, -1)  # (B, heads, N, N)
        return self.attn_drop(attn.softmax(dim=-1))

    def _fused(self, x: torch.Tensor) -> bool:
        if self.attn_impl == "auto":
            return not (x.device.type == "cpu" and self.training and torch.is_grad_enabled())
        return self.attn_impl == "sdpa"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._fused(x):
            return self.forward_with_attn(x)[0]
        q, k, v = self._qkv(x)  # each (B, heads, N, head_dim)
        drop = self.attn_drop.p if self.training else 0.0
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)  # (B, heads, N, head_dim)
        return self._out(x)

    def forward_with_attn(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Explicit path: returns the output and the attention map that multiplied ``v``."""
        q, k, v = self._qkv(x)
        attn = self.attention_map(q, k)  # (B, heads, N, N)
        return self._out(attn @ v), attn


class ReAttention(Attention):
    """DeepViT re-attention (Zhou et al., 2021): ``Norm(Θᵀ softmax(QKᵀ/√d)) V``.

    As in the official code (zhoudaquan/dvit_repo, ``models/layers.py``): Θ is a 1×1 ``Conv2d`` over the head
    axis with bias (``reatten_matrix``), Norm is ``BatchNorm2d`` over heads (``var_norm``), applied after
    attention dropout, optionally followed by multiplication with ``head_dim ** -0.5`` (``transform_scale``).
    The map is always materialised, so the fused kernel is never used here.
    """

    def __init__(
        self, dim: int, *, num_heads: int, transform_scale: bool = False, attn_impl: str = "explicit", **kwargs: Any
    ) -> None:
        """``kwargs``: ``qkv_bias``, ``attn_drop``, ``proj_drop``, as for :class:`Attention`."""
        if attn_impl == "sdpa":
            raise ValueError("re-attention mixes the attention maps, so it cannot use attn_impl='sdpa'")
        super().__init__(dim, num_heads=num_heads, attn_impl="explicit", **kwargs)
        self.reatten_matrix = nn.Conv2d(num_heads, num_heads, kernel_size=1)  # Θ, mixes the heads' maps
        self.var_norm = nn.BatchNorm2d(num_heads)
        self.reatten_scale = self.scale if transform_scale else 1.0

    def attention_map(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        attn = super().attention_map(q, k)  # (B, heads, N, N)
        mixed = self.var_norm(self.reatten_matrix(attn))  # heads mixed by Θ (a 1x1 conv), (B, heads, N, N)
        return mixed * self.reatten_scale if self.reatten_scale != 1.0 else mixed  # no pass over the maps for x1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_attn(x)[0]
