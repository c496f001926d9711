"""Exponential moving average of a model's weights (DeiT's ``--model-ema``; timm ``ModelEmaV3``)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class ModelEma:
    """``ema = decay·ema + (1-decay)·model`` after each optimizer step, for the parameters and for every
    floating-point buffer (BatchNorm's running mean and variance are averaged like weights, as timm's
    ``ModelEmaV3`` does); integer buffers (``num_batches_tracked``, index tables) are copied.

    The averaged copy lives in eval mode and never requires gradients; it is evaluated alongside the model.
    """

    def __init__(self, model: nn.Module, *, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay={decay!r} must be in (0, 1)")
        self.decay = decay
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        ema_avg, cur_avg = [], []
        pairs = [*zip(self.module.parameters(), model.parameters()), *zip(self.module.buffers(), model.buffers())]
        for ema_v, cur_v in pairs:
            if ema_v.is_floating_point():
                ema_avg.append(ema_v)
                cur_avg.append(cur_v.detach())
            else:
                ema_v.copy_(cur_v)
        if ema_avg:
            torch._foreach_lerp_(ema_avg, cur_avg, 1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state)
