"""The side jobs of a run, each a :class:`~deitlab.engine.run.Callback`: stop requests, progress, logs, files.

Only rank 0 writes files; every rank takes part in the collectives (stop flag, checkpoint barrier).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from deitlab.engine.checkpoint import save_resume
from deitlab.engine.distributed import barrier, broadcast_flag
from deitlab.engine.run import Callback, Run, StepOutcome
from deitlab.engine.state import TrainState
from deitlab.errors import ConfigError
from deitlab.io import atomic_write_bytes, save_weights

log = logging.getLogger(__name__)


class StopOnSignal(Callback):
    """SIGINT/SIGTERM -> finish the current step, checkpoint (the :class:`Checkpointer` after it), exit cleanly.

    A second Ctrl-C means "now". Outside the main thread no handler can be installed: no graceful stop.
    """

    def __init__(self) -> None:
        self.requested = False
        self.stopped = False
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:  # noqa: ARG002
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("stop requested: finishing this step and writing a checkpoint")

    def on_train_start(self, run: Run, state: TrainState) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread
                self._old[sig] = signal.signal(sig, self._handle)

    def on_step_end(self, run: Run, state: TrainState, step: StepOutcome) -> None:
        step.stop = broadcast_flag(self.requested, run.dist)  # every rank stops at the same step
        self.stopped = self.stopped or step.stop

    def on_train_end(self, run: Run, state: TrainState) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old = {}
        if self.stopped:
            log.info("stopped at step %d; continue with: deitlab train --resume %s", state.global_step, run.run_dir)


class Checkpointer(Callback):
    """Resume checkpoints: every ``every_steps`` steps (0: never mid-epoch), at a stop, at epoch ends, and the
    last good state when the run diverges. Keeps the newest ``keep_last`` files."""

    def __init__(self, *, every_steps: int, keep_last: int) -> None:
        self.every_steps = every_steps
        self.keep_last = keep_last

    def save(self, run: Run, state: TrainState) -> None:
        payload = state.capture(run)  # on every rank: it gathers every process's random states
        if run.dist.is_main:
            save_resume(run.run_dir, payload, epoch=state.epoch, step=state.global_step, keep_last=self.keep_last)
        barrier(run.dist)

    def on_step_end(self, run: Run, state: TrainState, step: StepOutcome) -> None:
        if step.stop or (self.every_steps and state.global_step % self.every_steps == 0):
            self.save(run, state)

    def on_epoch_end(self, run: Run, state: TrainState, row: dict[str, Any]) -> None:
        self.save(run, state)

    def on_diverged(self, run: Run, state: TrainState) -> None:
        self.save(run, state)  # skipped steps changed no weights: this is the last good state


class WeightFiles(Callback):
    """``best.safetensors`` when the evaluated accuracy improves (tracked in ``state.best``), and after every
    epoch ``model.safetensors`` (latest weights) and ``ema.safetensors`` (the EMA, when there is one)."""

    def on_epoch_end(self, run: Run, state: TrainState, row: dict[str, Any]) -> None:
        epoch = row["epoch"]
        if "acc" in row and row["acc"] > state.best:
            state.best = row["acc"]
            if run.dist.is_main:
                save_weights(run.model, run.run_dir / "best.safetensors", extra={"epoch": epoch, "acc": state.best})
        if run.dist.is_main:
            save_weights(run.model, run.run_dir / "model.safetensors", extra={"epoch": epoch})
            if run.ema is not None:
                save_weights(run.ema.module, run.run_dir / "ema.safetensors", extra={"epoch": epoch})


class EpochLog(Callback):
    """One record per epoch: ``log.jsonl`` + ``summary.csv`` (:class:`~deitlab.engine.runlog.RunLog`) and a
    log line when the epoch was evaluated."""

    def on_train_start(self, run: Run, state: TrainState) -> None:
        run.log.start(state.epoch)  # drops the records of epochs a resumed run will redo

    def on_epoch_end(self, run: Run, state: TrainState, row: dict[str, Any]) -> None:
        if "acc" in row:
            log.info(
                "epoch %d/%d  loss %.4f  %s %.2f%%  %.0f img/s", row["epoch"] + 1, run.settings.epochs,
                row["train_loss"], run.data.eval.name, row["acc"], row["img_per_s"],
            )  # fmt: skip
        run.log.append(row)


class ProgressBar(Callback):
    """A tqdm bar per epoch on an interactive terminal (rank 0 only); shows the loss and learning rate."""

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self._bar: tqdm | None = None

    def on_epoch_start(self, run: Run, state: TrainState) -> None:
        if self.enabled:
            self._bar = tqdm(total=run.settings.steps_per_epoch, initial=state.step_in_epoch, leave=False,
                             desc=f"epoch {state.epoch + 1}/{run.settings.epochs}", dynamic_ncols=True)  # fmt: skip

    def on_step_end(self, run: Run, state: TrainState, step: StepOutcome) -> None:
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{float(step.parts.total.detach()):.3f}", lr=f"{step.lr:.2e}", refresh=False)
            self._bar.update()

    def on_epoch_steps_end(self, run: Run, state: TrainState) -> None:
        self._close()

    def on_train_end(self, run: Run, state: TrainState) -> None:
        self._close()

    def _close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class StepLog(Callback):
    """``steps.jsonl``: one JSON row every ``every_steps`` optimizer steps (built on rank 0 only).

    A row holds ``step``, ``epoch``, ``loss`` and its parts (``base``, ``distill``), ``lr``, ``grad_norm`` (before
    clipping), ``skipped``, ``img_per_s`` (all processes, wall time since the previous row or the epoch's start),
    ``cpu_rss_mb``, and on a GPU ``cuda_max_alloc_mb``; in fp16 also ``loss_scale``. Only logged steps read
    tensors (a host sync); the others just count images. A resumed run drops the rows of the steps it redoes.
    """

    FILE = "steps.jsonl"

    def __init__(self, *, every_steps: int) -> None:
        if every_steps < 1:
            raise ValueError(f"every_steps={every_steps!r} must be >= 1")
        self.every_steps = every_steps
        self._file: Any = None
        self._images = 0
        self._since = time.perf_counter()

    def on_train_start(self, run: Run, state: TrainState) -> None:
        path = run.run_dir / self.FILE
        kept = [r for r in _read_jsonl(path) if r.get("step", 0) <= state.global_step]
        atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in kept).encode())
        self._file = path.open("a", encoding="utf-8")

    def on_epoch_start(self, run: Run, state: TrainState) -> None:
        self._images, self._since = 0, time.perf_counter()  # throughput leaves the evaluation out

    def on_step_end(self, run: Run, state: TrainState, step: StepOutcome) -> None:
        self._images += step.images
        if state.global_step % self.every_steps or self._file is None:
            return
        now = time.perf_counter()
        step.record = step_record(run, state, step, images=self._images * run.dist.world_size,
                                  seconds=now - self._since)  # fmt: skip
        self._file.write(json.dumps(step.record) + "\n")
        self._file.flush()
        self._images, self._since = 0, now

    def on_train_end(self, run: Run, state: TrainState) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def step_record(run: Run, state: TrainState, step: StepOutcome, *, images: int, seconds: float) -> dict[str, Any]:
    """The :class:`StepLog` row for the step just taken (reads the loss and gradient norm: a host sync)."""
    parts = step.parts
    record: dict[str, Any] = {
        "step": state.global_step, "epoch": state.epoch, "loss": float(parts.total.detach()),
        "base": float(parts.base.detach()), "distill": float(parts.distill.detach()), "lr": step.lr,
        "grad_norm": float(step.grad_norm) if step.grad_norm is not None else None, "skipped": step.skipped,
        "img_per_s": images / max(seconds, 1e-9), **memory_mb(run.device),
    }  # fmt: skip
    if run.scaler.enabled:
        record["loss_scale"] = run.scaler.scale()
    return record


def memory_mb(device: torch.device) -> dict[str, float]:
    """This process's resident memory and, on a GPU, the peak memory PyTorch has allocated there (MiB)."""
    out = {"cpu_rss_mb": _rss_bytes() / 2**20}
    if device.type == "cuda":
        out["cuda_max_alloc_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def _rss_bytes() -> int:
    try:  # Linux: the current resident set
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource  # POSIX only; the peak resident set (bytes on macOS, KiB elsewhere)

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak) * (1 if sys.platform == "darwin" else 1024)


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash
            if isinstance(row, dict):
                rows.append(row)
    return rows


TENSORBOARD_HINT = "pip install 'deitlab[tensorboard]' (or set log.tensorboard=false)"


def check_tensorboard() -> None:
    """``log.tensorboard=true`` needs the ``tensorboard`` package: say how to get it, in one line."""
    if importlib.util.find_spec("tensorboard") is None:
        raise ConfigError(f"log.tensorboard=true needs the tensorboard package: {TENSORBOARD_HINT}")


class TensorBoardLog(Callback):
    """TensorBoard scalars in ``<run>/tensorboard`` (rank 0 only): ``train/*`` from each :class:`StepLog` row (it
    must come after the StepLog) and ``epoch/*`` from each epoch's record, both against the global step."""

    def __init__(self) -> None:
        self._writer: Any = None

    def on_train_start(self, run: Run, state: TrainState) -> None:
        from torch.utils.tensorboard import SummaryWriter  # optional dependency: deitlab[tensorboard]

        # Events past the restored step belong to a crashed or replaced run (a resumed run redoes those steps):
        # TensorBoard drops them when it reads this file.
        self._writer = SummaryWriter(log_dir=str(run.run_dir / "tensorboard"), purge_step=state.global_step + 1)

    def on_step_end(self, run: Run, state: TrainState, step: StepOutcome) -> None:
        if self._writer is not None and step.record is not None:
            self._scalars("train", step.record, state.global_step)

    def on_epoch_end(self, run: Run, state: TrainState, row: dict[str, Any]) -> None:
        if self._writer is not None:
            self._scalars("epoch", row, row["step"])
            self._writer.flush()

    def on_train_end(self, run: Run, state: TrainState) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _scalars(self, group: str, values: dict[str, Any], step: int) -> None:
        for key, value in values.items():
            if key not in ("step", "epoch") and isinstance(value, int | float) and not isinstance(value, bool):
                self._writer.add_scalar(f"{group}/{key}", value, step)
