"""Knowledge-distillation losses (Hinton et al. 2015; DeiT, Touvron et al. 2021, eqs. 2-3; SPEC §2).

Pure functions for the two distillation terms, and :class:`DistillationLoss`, the object the training loop
calls: it runs the frozen teacher on the same (mixed) images the student saw and returns the loss's parts.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F

from deitlab.errors import ConfigError, DeitlabError
from deitlab.models.vit import DistilledLogits

DISTILLATION_TYPES = ("none", "soft", "hard")
KL_REDUCTIONS = ("deit", "batchmean")
# What DistillationLoss accepts: the two reductions by name, or auto (see resolve_reduction).
LOSS_REDUCTIONS = ("auto", *KL_REDUCTIONS)


# How PyTorch (and timm's asserts) word a tensor that does not fit a layer: "shapes cannot be multiplied",
# "size mismatch", "Expected input ... channels", "doesn't match model (224*224)".
SHAPE_WORDS = re.compile(r"shape|size|dimension|channels|match", re.IGNORECASE)


class TeacherShapeError(DeitlabError):
    """The teacher cannot take the student's batch, or predicts another number of classes (exit code 1)."""


def resolve_reduction(reduction: str, *, distillation_token: bool) -> str:
    """The KL reduction a loss uses: ``deit`` and ``batchmean`` as named; ``auto`` = ``deit`` for a student with a
    distillation token (DeiT's own setting, so DeiT recipes match the official code) and ``batchmean`` for
    classic KD on a single head (Hinton's loss: DeiT's ÷(B·K) would make the soft term K times weaker)."""
    if reduction == "auto":
        return "deit" if distillation_token else "batchmean"
    return reduction


def soft_distillation(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, tau: float, reduction: str = "deit"
) -> torch.Tensor:
    """``τ² · KL(softmax(Z_t/τ) ‖ softmax(Z_s/τ))`` (DeiT eq. 2, second term).

    Args:
        student_logits, teacher_logits: ``(B, K)``.
        tau: temperature τ > 0; the τ² factor keeps the gradient scale independent of τ (Hinton §2).
            The teacher's logits are detached: gradient only ever reaches the student.
        reduction: ``"deit"`` = KL summed over everything divided by ``B·K`` (the official DeiT code,
            ``reduction='sum'`` / ``outputs.numel()``; see facebookresearch/deit#68) or ``"batchmean"`` = summed
            and divided by ``B`` (timm's token-distillation task). They differ by the factor K.
    """
    if tau <= 0:
        raise ConfigError(f"distillation tau={tau!r} must be > 0")
    if reduction not in KL_REDUCTIONS:
        raise ConfigError(f"KL reduction={reduction!r} is not one of {KL_REDUCTIONS}")
    log_p_s = F.log_softmax(student_logits.float() / tau, dim=-1)
    # The teacher is a fixed target: detached here, so no caller can back-propagate into it by accident.
    log_p_t = F.log_softmax(teacher_logits.detach().float() / tau, dim=-1)
    kl = F.kl_div(log_p_s, log_p_t, reduction="sum", log_target=True)
    denom = student_logits.numel() if reduction == "deit" else student_logits.shape[0]
    return kl * (tau * tau) / denom


def hard_distillation(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, label_smoothing: float = 0.0
) -> torch.Tensor:
    """``CE(ψ(Z_s), y_t)`` with ``y_t = argmax Z_t`` (DeiT eq. 3), optionally label-smoothed (the paper: ε = 0.1).

    The teacher's logits are detached like in :func:`soft_distillation` (``argmax`` alone already stops the
    gradient; the detach states the contract rather than relying on that).
    """
    teacher_labels = teacher_logits.detach().argmax(dim=-1)
    return F.cross_entropy(student_logits.float(), teacher_labels, label_smoothing=label_smoothing)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, *, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy against class indices ``(B,)`` or soft targets ``(B, K)`` (Mixup/CutMix, smoothing folded in)."""
    if targets.ndim == 2:
        return torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
    return F.cross_entropy(logits.float(), targets, label_smoothing=label_smoothing)


class LossParts(NamedTuple):
    """What :class:`DistillationLoss` returns; ``total`` is what gets back-propagated."""

    base: torch.Tensor  # supervised term on the class head (for a distilled student with type none: both heads)
    distill: torch.Tensor  # distillation term (0 when distillation_type == "none")
    total: torch.Tensor


class DistillationLoss:
    """DeiT's loss: ``(1-α)·base(cls head, y) + α·distill(dist head, teacher)``.

    - ``soft``: ``distill = τ²·KL`` (:func:`soft_distillation`); ``hard``: CE against the teacher's argmax
      (:func:`hard_distillation`); with α = ½ the hard loss is DeiT's eq. 3.
    - A student with a distillation token gets the base loss on ``head`` and the distillation term on
      ``head_dist``; a student without one gets classic Hinton KD on its single head.
    - ``reduction`` (soft only): ``auto`` picks ``deit`` for token students and ``batchmean`` for classic KD
      (:func:`resolve_reduction`); ``deit`` or ``batchmean`` force one for both.
    - ``none``: only the supervised loss. For a distilled student both heads then learn the labels (averaged),
      so that the fused prediction stays meaningful; DeiT's code would leave ``head_dist`` untrained.

    The teacher is called under ``torch.no_grad()`` on the very images the student saw (after Mixup/CutMix) and
    is never registered as a submodule, so no optimizer or ``.train()`` call can reach it.
    """

    def __init__(
        self,
        base_criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        teacher: Callable[[torch.Tensor], torch.Tensor] | None,
        *,
        distillation_type: str,
        alpha: float,
        tau: float,
        reduction: str = "auto",
        teacher_label_smoothing: float = 0.0,
    ) -> None:
        if distillation_type not in DISTILLATION_TYPES:
            raise ConfigError(f"distillation type {distillation_type!r} is not one of {DISTILLATION_TYPES}")
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"distillation alpha={alpha!r} must be in [0, 1]")
        if tau <= 0:
            raise ConfigError(f"distillation tau={tau!r} must be > 0")
        if reduction not in LOSS_REDUCTIONS:
            raise ConfigError(f"KL reduction={reduction!r} is not one of {LOSS_REDUCTIONS}")
        if distillation_type != "none" and teacher is None:
            raise ConfigError(
                f"distillation type {distillation_type!r} needs a teacher (--teacher-model/--teacher-path)"
            )
        self.base_criterion = base_criterion
        self._teacher = teacher  # plain attribute on a plain object: invisible to optimizers and .train()
        self.distillation_type = distillation_type
        self.alpha = alpha
        self.tau = tau
        self.reduction = reduction
        self.teacher_label_smoothing = teacher_label_smoothing

    @property
    def teacher(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        return self._teacher

    def distill_term(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, distillation_token: bool = False
    ) -> torch.Tensor:
        """The distillation term on ``student_logits`` (the distillation head, or the only head)."""
        if self.distillation_type == "soft":
            reduction = resolve_reduction(self.reduction, distillation_token=distillation_token)
            return soft_distillation(student_logits, teacher_logits, tau=self.tau, reduction=reduction)
        return hard_distillation(student_logits, teacher_logits, label_smoothing=self.teacher_label_smoothing)

    def __call__(
        self, inputs: torch.Tensor, outputs: torch.Tensor | DistilledLogits, targets: torch.Tensor
    ) -> LossParts:
        """Loss parts for one batch: ``inputs`` are the student's images, ``targets`` labels or soft targets."""
        if isinstance(outputs, DistilledLogits):
            cls_logits, kd_logits = outputs.cls_logits, outputs.dist_logits
        else:
            cls_logits = kd_logits = outputs
        if self.distillation_type == "none":
            base = self.base_criterion(cls_logits, targets)
            if kd_logits is not cls_logits:
                base = (base + self.base_criterion(kd_logits, targets)) / 2
            return LossParts(base, base.new_zeros(()), base)
        base = self.base_criterion(cls_logits, targets)
        teacher_logits = self._teacher_logits(inputs, kd_logits)
        token = isinstance(outputs, DistilledLogits)
        distill = self.distill_term(kd_logits, teacher_logits, distillation_token=token)  # detaches the teacher
        return LossParts(base, distill, (1 - self.alpha) * base + self.alpha * distill)

    def _teacher_logits(self, inputs: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
        """The teacher on the student's batch, with a one-line error naming both shapes when they do not fit."""
        try:
            with torch.no_grad():
                out = self._teacher(inputs)  # type: ignore[misc]
        except (RuntimeError, AssertionError) as e:
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            if isinstance(e, torch.OutOfMemoryError) or not SHAPE_WORDS.search(first):
                raise
            raise TeacherShapeError(
                f"the teacher cannot take the student's input batch {tuple(inputs.shape)} ({first}); give the "
                "student the teacher's input size (model.img_size) or use a teacher made for this data"
            ) from e
        if out.shape != student_logits.shape:
            raise TeacherShapeError(
                f"the teacher's logits {tuple(out.shape)} do not match the student's {tuple(student_logits.shape)}:"
                " the teacher predicts another number of classes; set teacher.path/teacher.model to a teacher "
                "trained on this data set's classes"
            )
        return out
