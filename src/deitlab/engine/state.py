"""What a resume checkpoint saves: the loop's counters, plus the run's weights, optimizer, EMA, RNG and config.

:class:`TrainState` is the only thing the loop mutates between steps. ``capture`` turns it (with the run's
stateful objects) into the checkpoint payload; ``restore`` is its inverse. Anything new that must survive a
restart is added in both, and nowhere else.

Random states are saved per process: ``rng`` is a list indexed by rank (CPU generator, augmentation generator,
the CUDA generators of all devices), gathered to rank 0, which writes the file. A resumed run with the same
number of processes gives each its own streams back; with another number, each keeps its fresh seed + rank
streams (an exact resume is then impossible anyway: the data is dealt differently).
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
from deitlab.engine.distributed import DistInfo, all_gather_tensor
from deitlab.engine.ema import ModelEma
from deitlab.engine.scaler import StepScaler

log = logging.getLogger(__name__)


class Resumable(Protocol):
    """The run's objects whose state goes into a checkpoint (:class:`deitlab.engine.run.Run` has them)."""

    run_dir: Path
    model: nn.Module
    optimizer: torch.optim.Optimizer
    ema: ModelEma | None
    aug_gen: torch.Generator
    scaler: StepScaler
    dist: DistInfo
    config: dict[str, Any]


@dataclass
class EpochSums:
    """Running sums over the current epoch's steps (sample-weighted losses), reset at every epoch end."""

    loss: float = 0.0
    base: float = 0.0
    distill: float = 0.0
    n: int = 0  # images in the steps that were taken
    skipped: int = 0  # steps skipped by the non-finite guard
    scaler_skipped: int = 0  # fp16: updates the loss scaler skipped for an inf/NaN gradient (not the guard's)
    seconds: float = 0.0  # time spent in training steps

    def add(self, parts: LossParts, n: int) -> None:
        self.loss += float(parts.total.detach()) * n
        self.base += float(parts.base.detach()) * n
        self.distill += float(parts.distill.detach()) * n
        self.n += n


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
        """The checkpoint payload: these counters and the run's current weights, optimizer, EMA, loss scaler, RNG
        states (every process's: a collective, so every process calls this) and config."""
        return {
            "model": run.model.state_dict(), "optimizer": run.optimizer.state_dict(),
            "ema": run.ema.state_dict() if run.ema is not None else None, "scaler": run.scaler.state_dict(),
            "rng": gather_rng_states(run.aug_gen),
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
        run.scaler.load_state_dict(payload.get("scaler") or {})
        restore_rng_states(payload["rng"], run.aug_gen, run.dist)
        state = cls(
            epoch=payload["epoch"], step_in_epoch=payload["step_in_epoch"], global_step=payload["global_step"],
            nonfinite_run=payload["nonfinite_run"], best=payload["best"], sums=EpochSums(**payload["epoch_sums"]),
        )  # fmt: skip
        log.info("resuming %s at epoch %d, step %d", run.run_dir, state.epoch, state.global_step)
        return state


def local_rng_state(aug_gen: torch.Generator) -> dict[str, Any]:
    """This process's random states: torch's CPU generator, the augmentation generator, every CUDA device's."""
    cuda = list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else []
    return {"torch": torch.get_rng_state(), "aug": aug_gen.get_state(), "cuda": cuda}


def gather_rng_states(aug_gen: torch.Generator) -> list[dict[str, Any]]:
    """:func:`local_rng_state` of every process, by rank (one all-gather of the states as one byte vector)."""
    mine = local_rng_state(aug_gen)
    parts = [mine["torch"], mine["aug"], *mine["cuda"]]
    sizes = [p.numel() for p in parts]
    out = []
    for packed in all_gather_tensor(torch.cat(parts)):
        torch_state, aug_state, *cuda = packed.split(sizes)
        out.append({"torch": torch_state.clone(), "aug": aug_state.clone(), "cuda": [c.clone() for c in cuda]})
    return out


def restore_rng_states(saved: list[dict[str, Any]] | dict[str, Any], aug_gen: torch.Generator, info: DistInfo) -> None:
    """Give this process its own saved random states back (see the module doc for a changed process count)."""
    states = [saved] if isinstance(saved, dict) else saved  # a dict: one process's, as first written
    if len(states) != info.world_size:
        log.warning(
            "warning: the checkpoint holds random states for %d process(es), this run has %d: random streams "
            "restart from the seed; the continuation is not bit-exact", len(states), info.world_size,
        )  # fmt: skip
        return
    mine = states[info.rank]
    torch.set_rng_state(mine["torch"])
    aug_gen.set_state(mine["aug"])
    cuda = mine.get("cuda") or []
    if cuda and torch.cuda.is_available():
        if len(cuda) != torch.cuda.device_count():
            log.warning("warning: the checkpoint holds CUDA random states for %d device(s), this machine has %d",
                        len(cuda), torch.cuda.device_count())  # fmt: skip
        for index, state in enumerate(cuda[: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(state, index)
