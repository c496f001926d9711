"""DeepViT (Zhou et al., 2021): deep ViTs with re-attention, and their plain-attention baselines.

Configurations follow the official code (zhoudaquan/dvit_repo, ``models/deep_vision_transformer.py``;
SPEC §6.2): patch 16, 12 heads, MLP ratio 3, qkv bias, LayerNorm eps 1e-6. ``vit_deep_*`` are the ViT
baselines of the paper's Table 3 (same shape, plain attention); ``deepvit_*`` use re-attention in every block.
Both are patchify ViTs (:func:`~deitlab.models.vit.vit`). DeepViT-S/L (:func:`deepvit_cnn`) re-attend only in
their last 5/12 blocks, use the CNN patch embedding and ``scale_adjustment=0.5`` (applied to every block, as the
official code does); S also scales the mixed maps (``transform_scale``).
"""

from __future__ import annotations

from functools import partial

from typing_extensions import Unpack  # typing.Unpack from Python 3.11; torch depends on typing_extensions

from deitlab.layers import CnnPatchEmbed
from deitlab.models._registry import register_model
from deitlab.models.vit import VisionTransformer, ViTArgs, build_vit, vit


def deepvit_cnn(*, patch_size: int = 16, **kwargs: Unpack[ViTArgs]) -> VisionTransformer:
    """Registry builder of DeepViT-S/L: a ViT whose stem is DeepViT's CNN patch embedding (dvit_repo
    ``PatchEmbed_CNN``: 7×7 stride-2 conv, 3×3 conv, then a (P/2)×(P/2) stride-P/2 projection).

    Every other argument is :func:`~deitlab.models.vit.build_vit`'s.
    """
    return build_vit(partial(CnnPatchEmbed, patch_size=patch_size), **kwargs)


_BASE = dict(embed_dim=384, num_heads=12, mlp_ratio=3.0)
for _depth in (16, 24, 32):
    register_model(vit, name=f"vit_deep_{_depth}b", family="deepvit", depth=_depth, **_BASE)
    register_model(vit, name=f"deepvit_{_depth}b", family="deepvit", depth=_depth, reattention=True, **_BASE)

register_model(
    deepvit_cnn, name="deepvit_s", family="deepvit", **{**_BASE, "embed_dim": 396}, depth=16,
    reattention=(False,) * 11 + (True,) * 5, transform_scale=True, scale_adjustment=0.5,
)  # fmt: skip
register_model(
    deepvit_cnn, name="deepvit_l", family="deepvit", **{**_BASE, "embed_dim": 420}, depth=32,
    reattention=(False,) * 20 + (True,) * 12, scale_adjustment=0.5,
)  # fmt: skip
