"""What a resume checkpoint saves: the loop's counters, plus the run's weights, optimizer, EMA, RNG and config.

:class:`TrainState` is the only thing the loop mutates between steps. ``capture`` turns it (with the run's
stateful objects) into the checkpoint payload; ``restore`` is its inverse. Anything new that must survive a
restart (a GradScaler, CUDA RNG state, ...) is added in both, and nowhere else.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from deitlab.distill.losses import LossParts
from deitlab.engine.ema import ModelEma

log = logging.getLogger(__name__)


class Resumable(Protocol):
    """The run's objects whose state goes into a checkpoint (:class:`deitlab.engine.run.Run` has them)."""

    run_dir: Path
    model: nn.Module
    optimizer: torch.optim.Optimizer
    ema: ModelEma | None
    aug_gen: torch.Generator
    config: dict[str, Any]


@dataclass
class EpochSums:
    """Running sums over the current epoch's steps (sample-weighted losses), reset at every epoch end."""

    loss: float = 0.0
    base: float = 0.0
    distill: float = 0.0
    n: int = 0  # images in the steps that were taken
    skipped: int = 0  # steps skipped by the non-finite guard
    seconds: float = 0.0  # time spent in training steps
    teacher_disagree: int = 0  # views (of steps taken) the teacher labelled differently from their target
    teacher_views: int = 0  # views of steps taken on which the teacher ran

    def add(self, parts: LossParts, n: int) -> None:
        self.loss += float(parts.total.detach()) * n
        self.base += float(parts.base.detach()) * n
        self.distill += float(parts.distill.detach()) * n
        self.n += n
        if parts.teacher_disagree is not None:
            self.teacher_disagree += int(parts.teacher_disagree)
            self.teacher_views += n


@dataclass
class TrainState:
    """The loop's position and bookkeeping; with :meth:`capture`'s run parts, exactly a resume checkpoint."""

    epoch: int = 0  # the epoch being trained (== epochs when done)
    step_in_epoch: int = 0  # steps of ``epoch`` already taken (the loader skips them on resume)
    global_step: int = 0  # steps taken in the whole run: the learning-rate schedule's input
    nonfinite_run: int = 0  # consecutive steps skipped for a non-finite loss or gradient
    best: float = -math.inf  # best evaluation accuracy so far (best.safetensors holds its weights)
    sums: EpochSums = field(default_factory=EpochSums)

    def next_epoch(self) -> None:
        self.epoch += 1
        self.step_in_epoch = 0
        self.sums = EpochSums()

    def capture(self, run: Resumable) -> dict[str, Any]:
        """The checkpoint payload: these counters and the run's current weights, optimizer, EMA, RNG and config."""
        return {
            "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
            "ema": run.ema.state_dict() if run.ema is not None else None,
            "rng": {"torch": torch.get_rng_state(), "aug": run.aug_gen.get_state()},
            "epoch": self.epoch, "step_in_epoch": self.step_in_epoch, "global_step": self.global_step,
            "nonfinite_run": self.nonfinite_run, "best": self.best, "epoch_sums": dataclasses.asdict(self.sums),
            "config": run.config,
        }  # fmt: skip

    @classmethod
    def restore(cls, run: Resumable, payload: dict[str, Any]) -> TrainState:
        """Load a :meth:`capture` payload into the run's objects and return its counters."""
        run.model.load_state_dict(payload["model"])
        run.optimizer.load_state_dict(payload["optimizer"])
        if run.ema is not None and payload.get("ema") is not None:
            run.ema.load_state_dict(payload["ema"])
        torch.set_rng_state(payload["rng"]["torch"])
        run.aug_gen.set_state(payload["rng"]["aug"])
        state = cls(
            epoch=payload["epoch"], step_in_epoch=payload["step_in_epoch"], global_step=payload["global_step"],
            nonfinite_run=payload["nonfinite_run"], best=payload["best"], sums=EpochSums(**payload["epoch_sums"]),
        )  # fmt: skip
        log.info("resuming %s at epoch %d, step %d", run.run_dir, state.epoch, state.global_step)
        return state
