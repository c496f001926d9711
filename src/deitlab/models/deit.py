"""DeiT (Touvron et al., 2021, Table 1; SPEC §1): patchify ViTs with head dimension 64, names and keys as timm.

Each entry states what differs from the ViT-B/16 defaults of :func:`~deitlab.models.vit.vit` (224 px, patch 16,
12 blocks, MLP ratio 4); ``distilled=True`` adds the distillation token and ``head_dist``.
"""

from __future__ import annotations

from deitlab.models._registry import register_model
from deitlab.models.vit import vit

_SIZES = {
    "tiny": dict(embed_dim=192, num_heads=3),
    "small": dict(embed_dim=384, num_heads=6),
    "base": dict(embed_dim=768, num_heads=12),
}
for _size, _shape in _SIZES.items():
    for _img in (224, 384) if _size == "base" else (224,):
        register_model(vit, name=f"deit_{_size}_patch16_{_img}", family="deit", img_size=_img, **_shape)
        register_model(
            vit, name=f"deit_{_size}_distilled_patch16_{_img}", family="deit", img_size=_img, distilled=True, **_shape
        )
