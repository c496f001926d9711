"""A training run as plain parts: what :func:`deitlab.engine.build.build_run` builds and the loop consumes.

:class:`Run` holds built objects and plain settings; nothing in it is a config. :class:`Callback` names the
points of the loop where side jobs (checkpoints, stop requests, progress, logs, weight files) hook in, so that
adding one is a new callback, not an edit of the loop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deitlab.data import EvalAugment, TrainAugment
from deitlab.distill.losses import DistillationLoss, LossParts
from deitlab.distill.teacher import FrozenTeacher
from deitlab.engine.builders import Data, TrainLoader
from deitlab.engine.distributed import DistInfo
from deitlab.engine.ema import ModelEma
from deitlab.engine.runlog import RunLog
from deitlab.engine.scaler import StepScaler
from deitlab.engine.state import TrainState

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]  # (uint8 images (B, C, H, W), int64 labels (B,))
Mixer = Callable[[torch.Tensor, torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]
Schedule = Callable[[int], float]  # global step -> learning rate


@dataclass(frozen=True)
class Settings:
    """The plain values the loop (and any callback) may read; a callback's own options are given when it is built."""

    epochs: int
    steps_per_epoch: int
    precision: str  # fp32 | bf16 | fp16: the autocast of forward passes
    main_head: str  # the prediction reported as "acc": fused | fused_softmax
    eval_every: int  # evaluate every this many epochs (and after the last)
    max_nonfinite: int  # consecutive non-finite steps before the run stops
    clip_grad: float | None  # max gradient norm; None: no clipping
    headline_weights: str = "raw"  # raw | ema: which weights the run's headline accuracy quotes


@dataclass
class StepOutcome:
    """What one training step reports to the callbacks."""

    parts: LossParts  # the loss terms, still tensors: a callback that logs them pays for the device sync
    lr: float
    images: int  # this process's batch
    seconds: float
    skipped: bool  # the non-finite guard (or, in fp16, the loss scaler) discarded the update
    grad_norm: torch.Tensor | None = None  # before clipping, still on the device (reading it is a host sync)
    stop: bool = False  # set by a callback (the stop request): end the epoch after this step
    record: dict[str, Any] | None = None  # set by the StepLog callback on a logged step: what it logged


class Callback:
    """A side job hooked into the loop at named points; every hook does nothing unless overridden."""

    def on_train_start(self, run: Run, state: TrainState) -> None:
        """After the state is restored, before the first step."""

    def on_epoch_start(self, run: Run, state: TrainState) -> None:
        """Before the epoch's first (remaining) step."""

    def on_step_end(self, run: Run, state: TrainState, step: StepOutcome) -> None:
        """After each step's bookkeeping (``state`` already counts it); may set ``step.stop``."""

    def on_epoch_steps_end(self, run: Run, state: TrainState) -> None:
        """After the epoch's last step (or a stop), before its evaluation."""

    def on_epoch_end(self, run: Run, state: TrainState, row: dict[str, Any]) -> None:
        """After the epoch's evaluation; ``state`` already points at the next epoch, ``row`` is its log record."""

    def on_diverged(self, run: Run, state: TrainState) -> None:
        """Too many non-finite steps in a row: ``state`` is the last good state; the run then raises."""

    def on_train_end(self, run: Run, state: TrainState) -> None:
        """Always, also when training raised: release what ``on_train_start`` took."""


def _each(hook: str) -> Callable[..., None]:
    """A hook of :class:`Callbacks` that calls the same hook of each of its callbacks, in order."""

    def call(self: Callbacks, *args: Any) -> None:
        for callback in self.callbacks:
            getattr(callback, hook)(*args)

    call.__name__ = hook
    return call


class Callbacks(Callback):
    """The run's callbacks as one: in order, so later ones see what earlier ones did (a stop, the best accuracy)."""

    def __init__(self, callbacks: list[Callback]) -> None:
        self.callbacks = callbacks

    on_train_start = _each("on_train_start")
    on_epoch_start = _each("on_epoch_start")
    on_step_end = _each("on_step_end")
    on_epoch_steps_end = _each("on_epoch_steps_end")
    on_epoch_end = _each("on_epoch_end")
    on_diverged = _each("on_diverged")
    on_train_end = _each("on_train_end")


@dataclass
class Run:
    """Everything a training run needs, built once; the loop reads it and mutates only the model/optimizer/EMA."""

    device: torch.device
    dist: DistInfo
    run_dir: Path
    config: dict[str, Any]  # the resolved config, saved in every checkpoint (never read by the loop)
    data: Data
    model: nn.Module  # the student itself: what is saved, evaluated and averaged
    ddp_model: nn.Module  # what the training forward calls: the DDP wrapper, or ``model`` in one process
    teacher: FrozenTeacher | None
    criterion: DistillationLoss
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    train_aug: TrainAugment
    eval_aug: EvalAugment
    mixup: Mixer  # Mixup/CutMix, or the identity when switched off
    aug_gen: torch.Generator  # the augmentation's random stream (saved with the state)
    loader: TrainLoader
    eval_batches: Batches
    test_batches: Batches | None
    ema: ModelEma | None
    settings: Settings
    log: RunLog
    scaler: StepScaler  # fp16 loss scaling; disabled (plain backward/step) in fp32 and bf16
    callbacks: Callbacks = field(default_factory=lambda: Callbacks([]))
    resume: dict[str, Any] | None = None  # the checkpoint payload to restore from, until it is restored
