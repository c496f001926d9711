"""The training loop, top to bottom: schedule -> augment -> forward -> loss -> backward -> (non-finite guard)
-> step -> EMA -> bookkeeping; then the end-of-epoch evaluation and the final test.

Everything here takes a built :class:`~deitlab.engine.run.Run` and the mutable
:class:`~deitlab.engine.state.TrainState`; side jobs happen in the run's callbacks at the named points.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from deitlab.distill.losses import LossParts
from deitlab.distill.teacher import CachedTeacher
from deitlab.engine.distributed import broadcast_flag, sum_across
from deitlab.engine.evaluate import EvalCounts, autocast, evaluate, summarize
from deitlab.engine.optim import set_lr
from deitlab.engine.run import Batches, Run, StepOutcome
from deitlab.engine.state import TrainState
from deitlab.errors import DeitlabError

log = logging.getLogger(__name__)

# Keeps throughputs finite when no time was measured (an epoch resumed after its last step).
MIN_SECONDS = 1e-9


class TrainingDiverged(DeitlabError):
    """Too many consecutive non-finite losses or gradients (exit code 1)."""


@dataclass
class EpochStats:
    """What this process did in one call of :func:`train_one_epoch` (not saved: throughput only)."""

    lr: float  # the last step's learning rate
    images: int = 0
    seconds: float = 0.0  # in training steps
    wall_seconds: float = 0.0  # the whole pass, loading included
    stopped: bool = False  # a callback asked to stop

    def add(self, step: StepOutcome) -> None:
        self.lr = step.lr
        self.images += step.images
        self.seconds += step.seconds


def train_one_epoch(run: Run, state: TrainState) -> EpochStats:
    """Train from ``state.step_in_epoch`` to the end of ``state.epoch`` (or until a callback asks to stop)."""
    stats = EpochStats(lr=run.schedule(state.global_step))  # defined even when no step is left (resumed in eval)
    run.loader.set_epoch(state.epoch)
    run.loader.skip(state.step_in_epoch)
    run.model.train()
    run.callbacks.on_epoch_start(run, state)
    t_epoch = time.perf_counter()
    for images, labels in run.loader:
        step = train_step(run, state, images, labels)
        stats.add(step)
        run.callbacks.on_step_end(run, state, step)
        if step.stop:
            stats.stopped = True
            break
    stats.wall_seconds = time.perf_counter() - t_epoch
    run.callbacks.on_epoch_steps_end(run, state)
    return stats


def train_step(run: Run, state: TrainState, images: torch.Tensor, labels: torch.Tensor) -> StepOutcome:
    """One optimizer step on a batch of uint8 ``images`` (B, C, H, W) and int64 ``labels`` (B,)."""
    t0 = time.perf_counter()
    lr = run.schedule(state.global_step)
    set_lr(run.optimizer, lr)
    x = run.train_aug(images.to(run.device, non_blocking=True), run.aug_gen)
    labels = labels.to(run.device, non_blocking=True)
    x, targets = run.mixup(x, labels, run.aug_gen)
    with autocast(run.device, run.settings.precision):
        out = run.ddp_model(x)
        parts = run.criterion(x, out, targets)
    updated, norm = backward_and_step(run, state, parts)
    n = labels.shape[0]
    if updated:
        state.sums.add(parts, n)
    state.global_step += 1
    state.step_in_epoch += 1
    seconds = time.perf_counter() - t0
    state.sums.seconds += seconds
    return StepOutcome(parts=parts, lr=lr, images=n, seconds=seconds, skipped=not updated, grad_norm=norm)


def backward_and_step(run: Run, state: TrainState, parts: LossParts) -> tuple[bool, torch.Tensor]:
    """Back-propagate ``parts.total`` and update the weights (and the EMA); returns whether the update happened
    and the gradient norm (before clipping; a device tensor: reading it is a host sync).

    Nothing changes when the loss or the gradient is non-finite on any process (the step then counts towards
    ``max_nonfinite``), or, in fp16, when the loss scaler skips an inf/NaN gradient (not counted: the scaler
    lowers its scale and goes on; :mod:`deitlab.engine.scaler`)."""
    run.optimizer.zero_grad(set_to_none=True)
    run.scaler.backward(parts.total, run.optimizer)
    norm = grad_norm(run.model)
    if broadcast_flag(run.scaler.guard_flag(parts.total, norm), run.dist):
        run.scaler.skip()
        _skip_nonfinite(run, state)
        return False, norm
    state.nonfinite_run = 0
    if run.settings.clip_grad is not None:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.settings.clip_grad)
    if not run.scaler.step(run.optimizer):
        state.sums.scaler_skipped += 1
        return False, norm
    if run.ema is not None:
        run.ema.update(run.model)
    return True, norm


def _skip_nonfinite(run: Run, state: TrainState) -> None:
    state.nonfinite_run += 1
    state.sums.skipped += 1
    log.warning("step %d: non-finite loss or gradient, step skipped (%d in a row)", state.global_step,
                state.nonfinite_run)  # fmt: skip
    if state.nonfinite_run >= run.settings.max_nonfinite:
        run.optimizer.zero_grad(set_to_none=True)
        run.callbacks.on_diverged(run, state)
        raise TrainingDiverged(
            f"training diverged at step {state.global_step} (epoch {state.epoch + 1}): {state.nonfinite_run} "
            "non-finite steps in a row. Likely causes: learning rate too high, NaN/Inf in the data, fp16 "
            f"overflow. The last good state is in {run.run_dir}/checkpoints"
        )


def grad_norm(model: nn.Module) -> torch.Tensor:
    """The global L2 norm of all gradients (0 when there are none)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return torch.zeros((), device=next(model.parameters(), torch.zeros(())).device)
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


# ---- evaluation ---------------------------------------------------------------------------------------------------
@dataclass
class TeacherEval:
    """The teacher measured once on a split: its metrics and per-batch predictions (for agreement)."""

    metrics: dict[str, float] = field(default_factory=dict)
    preds: list[torch.Tensor] | None = None


def evaluate_teacher(run: Run, batches: Batches, prefix: str) -> TeacherEval:
    """The frozen teacher on ``batches`` (nothing when the run has no teacher)."""
    if run.teacher is None:
        return TeacherEval()
    counts, preds = evaluate(
        run.teacher, batches, run.eval_aug, num_classes=run.data.train.num_classes, device=run.device,
        precision=run.settings.precision,
    )  # fmt: skip
    return TeacherEval(summarize(counts, prefix), preds)


def evaluate_model(
    run: Run, model: nn.Module, batches: Batches, prefix: str, teacher: TeacherEval | None = None
) -> tuple[EvalCounts, dict[str, float]]:
    """``model`` (the student or its EMA) on ``batches``: per-head accuracies, and agreement with the teacher's
    predictions when they are given."""
    reference = teacher.preds if teacher is not None else None
    counts, _ = evaluate(
        model, batches, run.eval_aug, num_classes=run.data.train.num_classes, device=run.device,
        precision=run.settings.precision, main=run.settings.main_head, reference=reference,
    )  # fmt: skip
    return counts, summarize(counts, prefix, main=run.settings.main_head, agreement=reference is not None)


@dataclass
class EpochReport:
    """The epoch's log record and, when it was evaluated, the evaluation's counts and metrics (model + EMA)."""

    row: dict[str, Any]
    counts: EvalCounts | None = None
    metrics: dict[str, float] = field(default_factory=dict)


def end_of_epoch(run: Run, state: TrainState, stats: EpochStats, teacher: TeacherEval) -> EpochReport:
    """The epoch's training averages and, when due, its evaluation (model and EMA) as one log record."""
    sums, n = state.sums, max(1, state.sums.n)
    row: dict[str, Any] = {
        "epoch": state.epoch, "step": state.global_step, "lr": stats.lr,
        "train_loss": sums.loss / n, "train_base": sums.base / n, "train_distill": sums.distill / n,
        "skipped_steps": sums.skipped, "scaler_skipped_steps": sums.scaler_skipped,
        "img_per_s": sums.n * run.dist.world_size / max(sums.seconds, MIN_SECONDS),
        "epoch_seconds": stats.wall_seconds,
    }  # fmt: skip
    if run.teacher is not None:  # the same on every rank: the collective inside is safe
        row.update(teacher_disagree_row(state, run))
    if isinstance(run.criterion.teacher, CachedTeacher):  # this process's share of answers from memory
        reused = run.criterion.teacher.reused_since_last_call()
        if reused is not None:
            row["teacher_cache_reused"] = reused
    report = EpochReport(row)
    if (state.epoch + 1) % run.settings.eval_every == 0 or state.epoch + 1 == run.settings.epochs:
        report.counts, report.metrics = evaluate_model(run, run.model, run.eval_batches, "", teacher)
        if run.ema is not None:
            report.metrics.update(evaluate_model(run, run.ema.module, run.eval_batches, "ema_")[1])
        row.update(report.metrics)
    row.update(teacher.metrics)
    return report


def teacher_disagree_row(state: TrainState, run: Run) -> dict[str, float]:
    """``train_teacher_disagree``: 100 × views the teacher labelled differently from their target / views, over the
    epoch's steps taken on all processes (issue 10); empty when no step was taken."""
    disagree, views = sum_across([state.sums.teacher_disagree, state.sums.teacher_views], run.dist)
    return {"train_teacher_disagree": 100.0 * disagree / views} if views else {}


@dataclass
class FinalTestReport:
    """The final model (and its EMA, and the teacher) on the test split."""

    metrics: dict[str, float]  # test_* keys (raw weights) and test_ema_* keys (the EMA, when there is one)
    teacher_metrics: dict[str, float]  # teacher_test_* keys (empty without a teacher)
    counts: EvalCounts


def final_test(run: Run, batches: Batches) -> FinalTestReport:
    """The student after training on the test split, with the teacher's accuracy and agreement there; the EMA
    weights too when the run keeps an EMA (``test_ema_*``), so that both can be quoted."""
    teacher = evaluate_teacher(run, batches, "teacher_test_")
    counts, metrics = evaluate_model(run, run.model, batches, "test_", teacher)
    if run.ema is not None:
        metrics.update(evaluate_model(run, run.ema.module, batches, "test_ema_", teacher)[1])
    return FinalTestReport(metrics, teacher.metrics, counts)


def headline(
    metrics: dict[str, float], weights: str, eval_split: str, test_split: str | None = "test"
) -> dict[str, Any]:
    """The number a run quotes: top-1 of ``weights`` (raw | ema) on the final test evaluation when there was one
    (``test_split`` names the split it read: an image folder without test/ reads val/), else on the per-epoch
    evaluation split (``eval_split``); says which weights, which split and which metric key."""
    split, prefix = (test_split or "test", "test_") if "test_acc" in metrics else (eval_split, "")
    key = f"{prefix}{'ema_' if weights == 'ema' else ''}acc"
    return {"weights": weights, "split": split, "key": key, "acc": metrics.get(key)}
