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

    The two modules run as one head-mixing matmul (:func:`mix_heads_batchnorm`: Θ and the BatchNorm folded
    together, the batch statistics from the maps' per-head means and H×H second moments), which is the same
    function and updates the same running statistics; the modules themselves run instead when a hook is
    registered on either (the analysis tools read Θ's input with a pre-hook).
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

    def _modules_hooked(self) -> bool:
        return any(
            m._forward_pre_hooks or m._forward_hooks or m._backward_hooks or m._backward_pre_hooks
            for m in (self.reatten_matrix, self.var_norm)
        )

    def attention_map(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        attn = super().attention_map(q, k)  # (B, heads, N, N)
        if self._modules_hooked():
            mixed = self.var_norm(self.reatten_matrix(attn))  # heads mixed by Θ (a 1x1 conv), (B, heads, N, N)
        else:
            mixed = mix_heads_batchnorm(attn, self.reatten_matrix, self.var_norm)
        return mixed * self.reatten_scale if self.reatten_scale != 1.0 else mixed  # no pass over the maps for x1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_attn(x)[0]


def mix_heads_batchnorm(attn: torch.Tensor, theta: nn.Conv2d, norm: nn.BatchNorm2d) -> torch.Tensor:
    """``norm(theta(attn))`` for a 1×1 conv over the ``H`` heads of ``(B, H, N, N)`` maps, as one matmul.

    Training mode: the batch mean and variance of ``theta(attn)`` per head follow from the maps' per-head means
    ``m`` and second moments ``G`` (``W m + b`` and ``diag(W (G - m mᵀ) Wᵀ)``), so conv and normalisation fold
    into one ``H×H`` mixing plus a shift; the backward pass is the same closed form (:class:`_MixHeadsBatchNorm`).
    The running statistics are updated as ``BatchNorm2d`` updates them. Evaluation mode folds the running
    statistics. Statistics are taken in float32; the mixing runs in the maps' dtype (bf16 under autocast).
    """
    H = attn.shape[1]
    w, b = theta.weight.view(H, H), theta.bias if theta.bias is not None else attn.new_zeros(H, dtype=torch.float32)
    n = attn.numel() // H
    use_batch = norm.training or not norm.track_running_stats
    if not norm.affine or (use_batch and n <= 1):
        return norm(theta(attn))  # BatchNorm's own error for a single value; no folding without affine
    if not use_batch:
        scale = norm.weight / (norm.running_var + norm.eps).sqrt()
        shift = norm.bias + scale * (b - norm.running_mean)
        mixed = torch.matmul((scale[:, None] * w).to(attn.dtype), attn.reshape(attn.shape[0], H, -1))
        return mixed.add_(shift.to(attn.dtype).view(1, H, 1)).view(attn.shape)
    mixed, mean, var = _MixHeadsBatchNorm.apply(attn, w, b, norm.weight, norm.bias, norm.eps)
    if norm.training and norm.track_running_stats:
        with torch.no_grad():
            norm.num_batches_tracked.add_(1)
            factor = norm.momentum if norm.momentum is not None else 1.0 / float(norm.num_batches_tracked)
            norm.running_mean.lerp_((mean + b.detach()).to(norm.running_mean.dtype), factor)
            norm.running_var.lerp_((var * n / (n - 1)).to(norm.running_var.dtype), factor)  # unbiased, as BN
    return mixed


class _MixHeadsBatchNorm(torch.autograd.Function):
    """Training-mode ``BatchNorm2d(Conv2d_1x1(A))`` over heads; Θ's bias ``b`` cancels in it (its gradient is 0).

    With ``Z = W A`` per pixel, ``μ = W m``, ``σ² = diag(W Σ Wᵀ)`` (``Σ`` the maps' H×H covariance), ``k = γ/σ``:
    ``Y = (k W) A + β - k μ``. Backward, from ``S = Σ dY`` and ``C = Σ dY Aᵀ`` over all pixels:
    ``dγ = (rowsum(W ⊙ C) - S ⊙ μ) / σ``, ``dβ = S`` and, with ``D = dγ / σ``,
    ``dA = Wᵀ K dY - Wᵀ K D (W A - μ) / n - Wᵀ K S / n``, ``dW = K (C - S mᵀ - D W Σ)``.
    """

    @staticmethod
    def forward(
        ctx: Any,
        attn: torch.Tensor,
        w: torch.Tensor,
        b: torch.Tensor,
        gamma: torch.Tensor,
        beta: torch.Tensor,
        eps: float,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with torch.autocast(attn.device.type, enabled=False):
            B, H = attn.shape[:2]
            a = attn.reshape(B, H, -1)  # (B, H, N*N)
            af = a.to(w.dtype)
            n = af.shape[0] * af.shape[2]
            m = af.sum(dim=(0, 2)) / n  # (H,)
            cov = torch.bmm(af, af.transpose(1, 2)).sum(0) / n - torch.outer(m, m)  # (H, H)
            mu, var = w @ m, ((w @ cov) * w).sum(1)  # per output head
            sigma = (var + eps).sqrt()
            k = gamma / sigma
            y = torch.matmul((k[:, None] * w).to(a.dtype), a).add_((beta - k * mu).to(a.dtype).view(1, H, 1))
            ctx.save_for_backward(af, w, m, cov, mu, sigma, k)
            ctx.attn_dtype = attn.dtype
        ctx.mark_non_differentiable(mu, var)
        return y.view(attn.shape), mu, var

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor, _dmu: Any, _dvar: Any):
        af, w, m, cov, mu, sigma, k = ctx.saved_tensors
        with torch.autocast(dy.device.type, enabled=False):
            B, H, P = af.shape
            n = B * P
            d = dy.reshape(B, H, P).to(w.dtype)
            s = d.sum(dim=(0, 2))  # (H,)
            c = torch.bmm(d, af.transpose(1, 2)).sum(0)  # (H, H): Σ dY_o A_h
            dgamma = ((w * c).sum(1) - s * mu) / sigma
            dd = dgamma / sigma
            wk = w.t() * k[None, :]  # Wᵀ K
            q = -(wk * dd[None, :]) @ w / n
            r = (-(wk @ s) + (wk * dd[None, :]) @ mu) / n
            da = torch.matmul(wk, d).baddbmm_(q.expand(B, H, H), af).add_(r.view(1, H, 1))
            dw = k[:, None] * (c - torch.outer(s, m) - dd[:, None] * (w @ cov))
        return da.view(dy.shape).to(ctx.attn_dtype), dw, torch.zeros_like(w[:, 0]), dgamma, s, None  # b: cancelled
