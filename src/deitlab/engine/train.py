"""``train(cfg)``: build the run, restore its state, train epoch by epoch, test, report.

The parts: :func:`~deitlab.engine.build.build_run` (the only reader of the config),
:class:`~deitlab.engine.state.TrainState` (what a checkpoint saves), :mod:`deitlab.engine.loop` (the steps and
the evaluations) and :mod:`deitlab.engine.callbacks` (checkpoints, stop requests, progress, logs, weight files).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from deitlab.config import Config
from deitlab.distill.teacher import CachedTeacher
from deitlab.engine.build import build_run
from deitlab.engine.builders import build_device
from deitlab.engine.distributed import cleanup, init_distributed
from deitlab.engine.loop import (
    MIN_SECONDS,
    EpochReport,
    TeacherEval,
    TrainingDiverged,
    end_of_epoch,
    evaluate_teacher,
    final_test,
    headline,
    train_one_epoch,
)
from deitlab.engine.run import Run
from deitlab.engine.state import TrainState
from deitlab.io import atomic_write_bytes

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a finished (or cleanly stopped) run reports."""

    run_dir: Path
    history: list[dict[str, Any]]
    final: dict[str, float]  # last evaluation (+ test_* when the test split was evaluated)
    teacher: dict[str, float] = field(default_factory=dict)
    confusion: torch.Tensor | None = None  # of the main prediction on the last evaluated split
    headline: dict[str, Any] = field(default_factory=dict)  # the quoted top-1: weights, split, key, acc
    classes: list[str] = field(default_factory=list)
    images_per_second: float = 0.0
    train_seconds: float = 0.0
    stopped_early: bool = False
    splits: dict[str, str | None] = field(default_factory=dict)  # the splits read: {"eval": ..., "test": ...}


@dataclass
class _Throughput:
    """Images and step time of this session, all processes together (a resumed run counts from its restart)."""

    images: int = 0
    seconds: float = 0.0


def train(cfg: Config) -> TrainResult:
    """Train ``cfg.model`` on ``cfg.data``, distilling from ``cfg.teacher`` when ``cfg.distill.type`` is set."""
    device = build_device(cfg)
    dist = init_distributed(device.type)
    finished = False
    try:
        result = fit(build_run(cfg, device=device, dist=dist))
        finished = True
        return result
    finally:
        cleanup(dist, finished=finished)


def fit(run: Run) -> TrainResult:
    """Restore the run's state, train its remaining epochs (evaluating at their ends), then test and report."""
    state = TrainState.restore(run, run.resume) if run.resume is not None else TrainState()
    run.resume = None  # its tensors now live in the model, optimizer and EMA
    last, meter, stopped = EpochReport({}), _Throughput(), False
    run.callbacks.on_train_start(run, state)
    try:
        teacher = evaluate_teacher(run, run.eval_batches, "teacher_")  # once: the teacher never changes
        if run.teacher is not None:
            log.info("teacher: top-1 %.2f%% on %s", teacher.metrics["teacher_acc"], run.data.eval.name)
        while state.epoch < run.settings.epochs:
            stats = train_one_epoch(run, state)
            meter.images += stats.images * run.dist.world_size
            meter.seconds += stats.seconds
            if stats.stopped:
                stopped = True
                break
            report = end_of_epoch(run, state, stats, teacher)
            last = report if report.counts is not None else last
            state.next_epoch()
            run.callbacks.on_epoch_end(run, state, report.row)
    finally:
        run.callbacks.on_train_end(run, state)
    if isinstance(run.criterion.teacher, CachedTeacher):
        log.info("%s", run.criterion.teacher.summary())
    return _report(run, last, teacher, meter, stopped=stopped)


def _report(run: Run, last: EpochReport, teacher: TeacherEval, meter: _Throughput, *, stopped: bool) -> TrainResult:
    """The result (the test split evaluated unless the run was stopped), saved as ``results.json`` by rank 0."""
    final, teacher_metrics = dict(last.metrics), dict(teacher.metrics)
    confusion = last.counts.confusion if last.counts is not None else None
    if run.test_batches is not None and not stopped:
        test = final_test(run, run.test_batches)
        run.callbacks.on_test_end(run, test.metrics)
        final.update(test.metrics)
        teacher_metrics.update(test.teacher_metrics)
        confusion = test.counts.confusion
    result = TrainResult(
        run_dir=run.run_dir, history=run.log.rows, final=final, teacher=teacher_metrics, confusion=confusion,
        classes=list(run.data.train.classes), images_per_second=meter.images / max(meter.seconds, MIN_SECONDS),
        train_seconds=meter.seconds, stopped_early=stopped,
        headline=headline(final, run.settings.headline_weights, run.data.eval.name, run.data.test_split)
        if final
        else {},
        splits={"eval": run.data.eval_split, "test": run.data.test_split},
    )  # fmt: skip
    if result.headline.get("acc") is not None:
        h = result.headline
        log.info("headline: top-1 %.2f%% on %s with the %s weights (%s)", h["acc"], h["split"], h["weights"], h["key"])
    if run.dist.is_main and not stopped:
        payload = {"headline": result.headline, "final": final, "teacher": teacher_metrics,
                   "img_per_s": result.images_per_second,
                   "train_seconds": meter.seconds, "classes": result.classes,
                   "confusion": confusion.tolist() if confusion is not None else None,
                   "splits": result.splits}  # fmt: skip
        atomic_write_bytes(run.run_dir / "results.json", json.dumps(payload, indent=1).encode())
    return result


__all__ = ["TrainResult", "TrainingDiverged", "fit", "train"]
