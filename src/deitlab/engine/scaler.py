"""Loss scaling for fp16 (``torch.amp.GradScaler``), and how it shares the work with the non-finite guard.

fp16 gradients underflow without a scaled loss, and DeiT users who trained in fp16 without a scaler hit NaNs
(facebookresearch/deit#29). With the scaler, an inf/NaN *gradient* is the scaler's business: it skips that
update and halves the scale, which is routine in the first steps of every fp16 run, so such a step is not one
of the guard's non-finite steps. A non-finite *loss* is still the guard's: a lower scale cannot fix a forward
pass that overflows, and the guard must not let the scaler shrink the scale towards zero in silence.

In fp32 and bf16 the scaler is disabled: :meth:`StepScaler.backward` and :meth:`StepScaler.step` are the plain
calls and the guard watches both the loss and the gradient, as before.
"""

from __future__ import annotations

from typing import Any

import torch


class StepScaler:
    """A ``GradScaler`` (enabled for fp16) behind the four calls the training step makes."""

    def __init__(self, device_type: str, *, enabled: bool) -> None:
        self.scaler = torch.amp.GradScaler(device_type, enabled=enabled)

    @property
    def enabled(self) -> bool:
        return self.scaler.is_enabled()

    def backward(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> None:
        """Back-propagate the (scaled) loss, then unscale the gradients in place so that clipping and the
        gradient norm see their true values."""
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(optimizer)

    def guard_flag(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> torch.Tensor:
        """A 0-d bool tensor: True when the step is one of the guard's non-finite steps (see the module doc)."""
        bad_loss = ~torch.isfinite(loss.detach())
        if self.enabled:
            return bad_loss
        return bad_loss | ~torch.isfinite(grad_norm.to(loss.device))

    def step(self, optimizer: torch.optim.Optimizer) -> bool:
        """Apply the update; False when the scaler skipped it for an inf/NaN gradient (its scale then drops)."""
        if not self.enabled:
            optimizer.step()
            return True
        before = self.scaler.get_scale()
        self.scaler.step(optimizer)
        self.scaler.update()
        return self.scaler.get_scale() >= before  # the scale only ever drops on a skipped step

    def skip(self) -> None:
        """The guard discarded this step: keep the scale (the loss, not the scale, was the problem) and clear the
        scaler's record that this step's gradients were unscaled."""
        if self.enabled:
            self.scaler.update(new_scale=self.scaler.get_scale())

    def scale(self) -> float:
        """The current loss scale (1.0 when disabled)."""
        return float(self.scaler.get_scale())

    def state_dict(self) -> dict[str, Any]:
        return self.scaler.state_dict()  # {} when disabled

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.enabled and state:
            self.scaler.load_state_dict(state)
