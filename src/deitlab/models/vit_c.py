"""ViT_P and ViT_C (Xiao et al., 2021, "Early Convolutions Help Transformers See Better", Tables 1-2; SPEC §6.1).

ViT_P is the patchify ViT at four FLOP budgets (1, 4, 18 and 36 GF). ViT_C replaces its patchify stem by a stack
of 3×3 conv-BN-ReLU layers and a 1×1 projection (:class:`~deitlab.layers.ConvStem`) and drops one transformer
block to pay for the stem, so both cost about the same.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from math import prod

from typing_extensions import Unpack  # typing.Unpack from Python 3.11; torch depends on typing_extensions

from deitlab.layers import ConvStem
from deitlab.models._registry import register_model
from deitlab.models.vit import VisionTransformer, ViTArgs, build_vit, vit


def vit_c(
    *,
    stem_kernels: Sequence[int],
    stem_strides: Sequence[int],
    stem_channels: Sequence[int],
    patch_size: int | None = None,
    **kwargs: Unpack[ViTArgs],
) -> VisionTransformer:
    """Registry builder of ViT_C: a ViT whose stem is the conv stack given by ``stem_kernels``/``stem_strides``/
    ``stem_channels`` (the layers before the 1×1 projection).

    The stem's total stride (the product of ``stem_strides``) is the patch size; ``patch_size``, if given, must
    equal it. Every other argument is :func:`~deitlab.models.vit.build_vit`'s.
    """
    stride = prod(stem_strides)
    if patch_size is not None and patch_size != stride:
        raise ValueError(
            f"patch_size={patch_size} differs from the conv stem's total stride {stride} "
            f"(stem_strides={list(stem_strides)}); set patch_size={stride} or change the strides"
        )
    stem = partial(ConvStem, kernels=stem_kernels, strides=stem_strides, channels=stem_channels)
    return build_vit(stem, **kwargs)


_SIZES = {
    "1gf": dict(embed_dim=192, num_heads=3, mlp_ratio=3.0, depth=12),
    "4gf": dict(embed_dim=384, num_heads=6, mlp_ratio=3.0, depth=12),
    "18gf": dict(embed_dim=768, num_heads=12, mlp_ratio=4.0, depth=12),
    "36gf": dict(embed_dim=1024, num_heads=16, mlp_ratio=4.0, depth=14),
}
_STEM_18GF = dict(stem_kernels=(3,) * 6, stem_strides=(2, 2, 1, 2, 1, 2), stem_channels=(64, 128, 128, 256, 256, 512))
_STEMS = {
    "1gf": dict(stem_kernels=(3, 3, 3, 3), stem_strides=(2, 2, 2, 2), stem_channels=(24, 48, 96, 192)),
    "4gf": dict(stem_kernels=(3, 3, 3, 3), stem_strides=(2, 2, 2, 2), stem_channels=(48, 96, 192, 384)),
    "18gf": _STEM_18GF,
    "36gf": _STEM_18GF,
}
# 4GF stem variants: the closer to a patchify stem (S4), the worse (SPEC §6.1).
_4GF_STEM_VARIANTS = {
    "s1": dict(stem_kernels=(3, 3, 3, 2), stem_strides=(2, 2, 2, 2), stem_channels=(42, 104, 208, 416)),
    "s2": dict(stem_kernels=(3, 3, 3, 4), stem_strides=(2, 2, 1, 4), stem_channels=(32, 64, 128, 256)),
    "s3": dict(stem_kernels=(3, 3, 3, 8), stem_strides=(2, 1, 1, 8), stem_channels=(17, 34, 68, 136)),
    "s4": dict(stem_kernels=(3, 3, 3, 16), stem_strides=(1, 1, 1, 16), stem_channels=(8, 16, 32, 64)),
}
for _flops, _shape in _SIZES.items():
    register_model(vit, name=f"vit_p_{_flops}", family="vit_p", **_shape)
    _one_block_less = {**_shape, "depth": _shape["depth"] - 1}
    register_model(vit_c, name=f"vit_c_{_flops}", family="vit_c", **_one_block_less, **_STEMS[_flops])
for _variant, _stem in _4GF_STEM_VARIANTS.items():
    register_model(vit_c, name=f"vit_c_4gf_{_variant}", family="vit_c", **{**_SIZES["4gf"], "depth": 11}, **_stem)
