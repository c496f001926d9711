"""DeepViT (Zhou et al., 2021): deep ViTs with re-attention, and their plain-attention baselines.

Configurations follow the official code (zhoudaquan/dvit_repo, ``models/deep_vision_transformer.py``;
SPEC §6.2): patch 16, 12 heads, MLP ratio 3, qkv bias, LayerNorm eps 1e-6. ``vit_deep_*`` are the ViT
baselines of the paper's Table 3 (same shape, plain attention); ``deepvit_*`` use re-attention in every block.
DeepViT-S/L re-attend only in their last 5/12 blocks, use the CNN patch embedding and ``scale_adjustment=0.5``
(applied to every block, as the official code does); S also scales the mixed maps (``transform_scale``).
"""

from __future__ import annotations

from deitlab.models.vit import register_vit

_DEEP = dict(embed_dim=384, num_heads=12, mlp_ratio=3.0)

for _depth in (16, 24, 32):
    register_vit(f"vit_deep_{_depth}b", family="deepvit", depth=_depth, reattention=False, **_DEEP)
    register_vit(f"deepvit_{_depth}b", family="deepvit", depth=_depth, reattention=True, **_DEEP)

register_vit(
    "deepvit_s", family="deepvit", embed_dim=396, depth=16, num_heads=12, mlp_ratio=3.0, stem="cnn",
    reattention=(False,) * 11 + (True,) * 5, transform_scale=True, scale_adjustment=0.5,
)  # fmt: skip
register_vit(
    "deepvit_l", family="deepvit", embed_dim=420, depth=32, num_heads=12, mlp_ratio=3.0, stem="cnn",
    reattention=(False,) * 20 + (True,) * 12, scale_adjustment=0.5,
)  # fmt: skip

# Re-attention twins of the small-image DeiTs (deit_{tiny,micro}[_distilled]_patch4_28): every block re-attends.
_SMALL = dict(img_size=28, in_chans=1, num_classes=10, patch_size=4, reattention=True)
for _size, _cfg in {
    "tiny": dict(embed_dim=192, depth=12, num_heads=3, mlp_ratio=4.0),
    "micro": dict(embed_dim=128, depth=6, num_heads=4, mlp_ratio=3.0),
}.items():
    register_vit(f"deepvit_{_size}_patch4_28", family="small", **_SMALL, **_cfg)
    register_vit(f"deepvit_{_size}_distilled_patch4_28", family="small", distilled=True, **_SMALL, **_cfg)
