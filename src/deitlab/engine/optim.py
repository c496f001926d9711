"""Optimizer with DeiT's parameter groups, and the learning-rate schedule as a pure function of the step."""

from __future__ import annotations

import math

import torch
from torch import nn

from deitlab.errors import ConfigError

OPTIMIZERS = ("adamw", "sgd")
# DeiT's linear scaling rule (DeiT §6, main.py): lr is given for a global batch of 512 images.
LR_REFERENCE_BATCH = 512


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: decayed weights, and no decay for norms, biases, tokens and position embeddings.

    As timm/DeiT: every 1-D parameter (norm gains/biases, biases) and every name the model lists in
    ``no_weight_decay()`` (``cls_token``, ``dist_token``, ``pos_embed``) is exempt.
    """
    skip = set(getattr(model, "no_weight_decay", lambda: set())())
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name in skip or name.endswith(".bias") else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(
    model: nn.Module,
    *,
    name: str,
    lr: float,
    weight_decay: float,
    eps: float = 1e-8,
    betas: tuple[float, float] = (0.9, 0.999),
    momentum: float = 0.9,
) -> torch.optim.Optimizer:
    """AdamW (DeiT) or SGD with Nesterov-free momentum (ViT_C's SGD runs), over :func:`param_groups`.

    Fused kernels (one pass over all parameters) where PyTorch has them for the parameters' device: on 1 CPU core
    AdamW's step took 1.7 ms fused vs 20 ms foreach for the demo student, 26 vs 96 ms for DeiT-Ti (medians of 21
    interleaved rounds, AMD EPYC Zen 4).
    """
    groups = param_groups(model, weight_decay)
    impl = {"fused": True} if _fusable(model) else {"foreach": True}
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, eps=eps, betas=betas, **impl)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, **impl)
    raise ConfigError(f"optimizer {name!r} is not one of {OPTIMIZERS}")


def _fusable(model: nn.Module) -> bool:
    """PyTorch's fused optimizers take floating-point parameters on CPU or CUDA."""
    params = [p for p in model.parameters() if p.requires_grad]
    return bool(params) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)


def scaled_lr(lr: float, global_batch: int) -> float:
    """DeiT's linear scaling rule: ``lr × global_batch / 512``."""
    return lr * global_batch / LR_REFERENCE_BATCH


def lr_at(step: int, *, base_lr: float, total_steps: int, warmup_steps: int, warmup_lr: float, min_lr: float) -> float:
    """Linear warm-up from ``warmup_lr`` to ``base_lr`` over ``warmup_steps``, then half-cosine to ``min_lr``.

    Per step rather than per epoch (timm steps it per epoch); a pure function, so resuming needs only the step.
    """
    if step < warmup_steps:
        return warmup_lr + (base_lr - warmup_lr) * step / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr + 0.5 * (base_lr - min_lr) * (1 + math.cos(math.pi * progress))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Every parameter group to ``lr`` (the schedule's value for this step)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
