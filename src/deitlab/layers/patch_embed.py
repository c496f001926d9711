"""Image -> token stems: the ViT patchify stem, the ViT_C convolutional stem, DeepViT's CNN embedding.

Every stem maps ``(B, C, H, W)`` to ``(B, N, D)`` tokens and exposes ``img_size``, ``patch_size`` (its
total stride), ``grid_size``, ``num_patches``, ``in_chans`` and ``embed_dim`` (D); the final projection is always
called ``proj`` so that timm-style keys (``patch_embed.proj.weight``) stay stable across stems.
"""

from __future__ import annotations

from collections.abc import Sequence
from math import prod

import torch
from torch import nn


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    t = tuple(int(i) for i in v)
    if len(t) != 2:
        raise ValueError(f"expected an int or an (H, W) pair, got {v!r}")
    return t  # type: ignore[return-value]


class _TokenStem(nn.Module):
    """Shared bookkeeping: channels and grid geometry, input checks, (B, D, h, w) -> (B, N, D)."""

    def _init_geometry(self, img_size: int | Sequence[int], patch_size: int, in_chans: int, embed_dim: int) -> None:
        for arg, value in dict(in_chans=in_chans, embed_dim=embed_dim).items():
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{arg}={value!r} must be a positive integer")
        self.in_chans, self.embed_dim = in_chans, embed_dim
        self.img_size = _pair(img_size)
        self.patch_size = patch_size
        bad = [s for s in self.img_size if s % patch_size or s <= 0]
        if bad:
            raise ValueError(
                f"img_size={self.img_size} is not divisible by patch_size={patch_size}; "
                f"use a multiple of {patch_size} (e.g. {max(patch_size, self.img_size[0] // patch_size * patch_size)})"
            )
        self.grid_size = (self.img_size[0] // patch_size, self.img_size[1] // patch_size)
        self.num_patches = self.grid_size[0] * self.grid_size[1]

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or tuple(x.shape[-2:]) != self.img_size or x.shape[1] != self.in_chans:
            raise ValueError(
                f"input of shape {tuple(x.shape)} does not fit this model, which takes "
                f"(B, {self.in_chans}, {self.img_size[0]}, {self.img_size[1]}); resize the images or build the "
                f"model with img_size={tuple(x.shape[-2:]) if x.ndim == 4 else '...'}"
            )

    @staticmethod
    def _tokens(x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).transpose(1, 2)  # (B, D, h, w) -> (B, h*w, D)


class PatchEmbed(_TokenStem):
    """Non-overlapping P×P patches, linearly embedded (a Conv2d with kernel = stride = P)."""

    def __init__(self, *, img_size: int | Sequence[int], patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self._init_geometry(img_size, patch_size, in_chans, embed_dim)
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return self._tokens(self.proj(x))  # (B, N, D)


class ConvBnAct(nn.Sequential):
    """conv (no bias) -> BatchNorm2d -> ReLU; keys ``conv``/``bn``."""

    def __init__(self, in_chans: int, out_chans: int, *, kernel_size: int, stride: int, padding: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chans, out_chans, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(out_chans)
        self.act = nn.ReLU(inplace=True)


def stem_padding(kernel_size: int) -> int:
    """'Same' padding for 1×1 and 3×3 convs; 0 for a patchify (kernel = stride) layer (SPEC §6.1)."""
    return (kernel_size - 1) // 2 if kernel_size <= 3 else 0


class ConvStem(_TokenStem):
    """ViT_C stem (Xiao et al., 2021): a stack of conv-BN-ReLU layers, then a 1×1 conv (with bias) to ``embed_dim``.

    ``kernels``/``strides``/``channels`` describe the layers before the final 1×1 projection; the total stride
    (the product of ``strides``) plays the role of the patch size. pycls builds every non-final layer as a 3×3
    conv whatever its listed kernel; we follow SPEC §6.1 and build a k>3 layer as a patchify conv (padding 0).
    """

    def __init__(
        self,
        *,
        img_size: int | Sequence[int],
        in_chans: int,
        embed_dim: int,
        kernels: Sequence[int],
        strides: Sequence[int],
        channels: Sequence[int],
    ) -> None:
        super().__init__()
        if not (len(kernels) == len(strides) == len(channels)) or not kernels:
            raise ValueError(
                f"conv stem needs equally long, non-empty kernels/strides/channels, got "
                f"kernels={list(kernels)}, strides={list(strides)}, channels={list(channels)}"
            )
        self._init_geometry(img_size, prod(strides), in_chans, embed_dim)
        layers: list[nn.Module] = []
        c_in = in_chans
        for k, s, c in zip(kernels, strides, channels):
            layers.append(ConvBnAct(c_in, c, kernel_size=k, stride=s, padding=stem_padding(k)))
            c_in = c
        self.stem = nn.Sequential(*layers)
        self.proj = nn.Conv2d(c_in, embed_dim, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        return self._tokens(self.proj(self.stem(x)))  # (B, N, D)


class CnnPatchEmbed(_TokenStem):
    """DeepViT-S/L embedding (T2T-style, dvit_repo ``PatchEmbed_CNN``).

    7×7 stride-2 conv to 64 + BN + ReLU, 3×3 conv 64 + BN + ReLU, then a (P/2)×(P/2) stride-(P/2) projection.
    Key names follow the official code (``conv1``/``bn1``/``conv2``/``bn2``/``proj``).
    """

    def __init__(
        self, *, img_size: int | Sequence[int], patch_size: int, in_chans: int, embed_dim: int, width: int = 64
    ) -> None:
        super().__init__()
        if patch_size % 2:
            raise ValueError(f"the CNN patch embedding needs an even patch_size, got {patch_size}")
        self._init_geometry(img_size, patch_size, in_chans, embed_dim)
        self.conv1 = nn.Conv2d(in_chans, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.proj = nn.Conv2d(width, embed_dim, kernel_size=patch_size // 2, stride=patch_size // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        x = self.relu(self.bn1(self.conv1(x)))  # (B, 64, H/2, W/2)
        x = self.relu(self.bn2(self.conv2(x)))
        return self._tokens(self.proj(x))  # (B, N, D)
