"""Class token vs distillation token through depth (DeiT, Touvron et al. 2021 §4; SPEC §1, §7).

The paper: the learned tokens have cosine 0.06 at the input; the two tokens' embeddings reach 0.93 at the last
layer, whereas two class tokens trained on the same labels reach 0.999. Distilled models only.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from deitlab.analysis.maps import WrongModelError, batches, capture, cosine


def check_distilled(model: nn.Module) -> None:
    if getattr(model, "dist_token", None) is None or getattr(model, "head_dist", None) is None:
        raise WrongModelError(
            f"{getattr(model, 'model_name', type(model).__name__)} has no distillation token; token similarity "
            "needs a distilled model (a name with '_distilled_')"
        )


def head_cosine(head: nn.Module, head_dist: nn.Module) -> float:
    """``mean_c cos(W_c, W'_c)``: the two classifiers' weight rows, class by class (biases left out)."""
    w, wd = getattr(head, "weight", None), getattr(head_dist, "weight", None)
    if w is None or wd is None:
        raise WrongModelError("both heads must be Linear layers (a model built with num_classes=0 has no classifier)")
    return float(cosine(w.detach(), wd.detach()).mean())


def token_similarity(model: nn.Module, images: torch.Tensor, *, batch_size: int = 64) -> dict[str, Any]:
    """Cosine similarity of the class and distillation tokens, at the input, after each block, and of the heads.

    - ``input_cosine = cos(cls_token, dist_token)``: the learned tokens (before position embeddings);
    - ``block_cosine[l] = mean_b cos(X^l_{b,0}, X^l_{b,1})``: the two tokens' outputs of block l (before the
      final norm), averaged over images;
    - ``final_cosine = mean_b cos(Z_{b,0}, Z_{b,1})``: the same after the final LayerNorm (what the heads see);
    - ``head_cosine = mean_c cos(head.weight_c, head_dist.weight_c)``.

    Identical tokens with identical position rows stay identical through every block (SPEC §7).

    Args:
        model: a distilled ViT (``cls_token``, ``dist_token``, ``head``, ``head_dist``).
        images: normalised ``(B, C, H, W)`` images.

    Returns:
        ``{"input_cosine", "block_cosine": L values, "final_cosine", "head_cosine", "num_images"}``.
    """
    check_distilled(model)
    blocks, final, n = None, 0.0, 0
    for chunk in batches(images, batch_size):
        c = capture(model, chunk, attention=False)
        per_block = torch.stack([cosine(t[:, 0], t[:, 1]).sum() for t in c.tokens])  # summed over images
        blocks = per_block if blocks is None else blocks + per_block
        final += float(cosine(c.features[:, 0], c.features[:, 1]).sum())
        n += len(chunk)
    return {
        "input_cosine": float(cosine(model.cls_token.detach().flatten(), model.dist_token.detach().flatten())),
        "block_cosine": (blocks / n).tolist(),
        "final_cosine": final / n,
        "head_cosine": head_cosine(model.head, model.head_dist),
        "num_images": n,
    }
