"""Parameter and FLOP counts, measured with :mod:`torch.utils.flop_counter` (no hand counts).

FLOPs are reported as multiply-accumulates, the convention of the DeiT, pycls (ViT_C) and RegNet papers
(DeiT-Ti: 1.3 "GFLOPs"); ``torch.utils.flop_counter`` counts a multiply-add as 2, so we halve its total.
Only matmuls and convolutions count (norms, activations and softmax are left out, as in fvcore).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count


@dataclass(frozen=True)
class Complexity:
    """Model size and cost at one input resolution."""

    params: int
    flops: int  # multiply-accumulates for one image
    img_size: tuple[int, int]

    @property
    def gflops(self) -> float:
        return self.flops / 1e9

    @property
    def mparams(self) -> float:
        return self.params / 1e6


def _sdpa_cpu_flops(q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:  # noqa: ANN001
    return sdpa_flop_count(q_shape, k_shape, v_shape)


_sdpa_cpu_flops._get_raw = False  # type: ignore[attr-defined]
# The CPU flash-attention kernel has no formula registered in torch.utils.flop_counter.
_CUSTOM = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flops}


def model_img_size(model: nn.Module) -> tuple[int, int]:
    """The input resolution a model was built for (ViTs: from the stem; CNNs: ``img_size`` attribute)."""
    embed = getattr(model, "patch_embed", None)
    size = getattr(embed, "img_size", None) or getattr(model, "img_size", None) or 224
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def model_in_chans(model: nn.Module) -> int:
    """Input channels: the stem's ``in_chans``, a model attribute, or the first convolution's input channels."""
    embed = getattr(model, "patch_embed", None)
    chans = getattr(embed, "in_chans", None) or getattr(model, "in_chans", None)
    if chans is None:
        chans = next((m.in_channels for m in model.modules() if isinstance(m, nn.Conv2d)), 3)
    return int(chans)


def complexity(model: nn.Module, img_size: int | Sequence[int] | None = None) -> Complexity:
    """Count parameters and per-image FLOPs (multiply-accumulates) of ``model`` at ``img_size``.

    Works on ordinary and on ``meta``-device models (no memory, no arithmetic). ViTs only run at the size they
    were built for; build them with ``create_model(name, img_size=...)`` to measure another resolution.
    """
    size = (
        model_img_size(model)
        if img_size is None
        else (img_size, img_size)
        if isinstance(img_size, int)
        else tuple(img_size)
    )
    embed = getattr(model, "patch_embed", None)
    if embed is not None and tuple(size) != tuple(embed.img_size):
        raise ValueError(
            f"this ViT was built for {tuple(embed.img_size)} images, not {tuple(size)}; "
            f"build it with img_size={size[0]} to measure that resolution"
        )
    params = sum(p.numel() for p in model.parameters())
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    x = torch.zeros(1, model_in_chans(model), *size, device=device, dtype=dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=_CUSTOM) as counter:
            model(x)
    finally:
        model.train(was_training)
    return Complexity(params=params, flops=counter.get_total_flops() // 2, img_size=(int(size[0]), int(size[1])))
