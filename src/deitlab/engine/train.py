"""The training loop: schedule -> augment -> forward -> loss -> backward -> step -> EMA -> log, top to bottom.

Every choice (distillation type, precision, Mixup, EMA, ...) is made when the objects are built in
:mod:`deitlab.engine.setup`; the loop itself has no configuration branches beyond "is there an EMA/teacher".
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from deitlab.config import Config, config_from_dict, resume_config
from deitlab.engine import setup as S
from deitlab.engine.checkpoint import load_resume, save_resume
from deitlab.engine.distributed import DistInfo, barrier, broadcast_flag, cleanup, init_distributed
from deitlab.engine.ema import ModelEma
from deitlab.engine.evaluate import EvalCounts, autocast, evaluate, summarize
from deitlab.engine.optim import build_optimizer, lr_at, scaled_lr, set_lr
from deitlab.engine.runlog import RunLog
from deitlab.errors import DeitlabError
from deitlab.io import atomic_write_bytes, save_weights

log = logging.getLogger(__name__)


class TrainingDiverged(DeitlabError):
    """Too many consecutive non-finite losses or gradients (exit code 1)."""


@dataclass
class TrainResult:
    """What a finished (or cleanly stopped) run reports."""

    run_dir: Path
    history: list[dict[str, Any]]
    final: dict[str, float]  # last evaluation (+ test_* when the test split was evaluated)
    teacher: dict[str, float] = field(default_factory=dict)
    confusion: torch.Tensor | None = None  # of the main prediction on the last evaluated split
    classes: list[str] = field(default_factory=list)
    images_per_second: float = 0.0
    train_seconds: float = 0.0
    stopped_early: bool = False


class _StopRequest:
    """SIGINT/SIGTERM -> finish the current step, checkpoint, exit cleanly."""

    def __init__(self) -> None:
        self.requested = False
        self._old: dict[int, Any] = {}

    def __enter__(self) -> _StopRequest:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: no handlers, no graceful stop
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:  # noqa: ARG002
        if self.requested:  # a second Ctrl-C means "now"
            raise KeyboardInterrupt
        self.requested = True
        log.warning("stop requested: finishing this step and writing a checkpoint")

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _grad_norm(model: nn.Module) -> torch.Tensor:
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return torch.zeros(())
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))


def train(cfg: Config) -> TrainResult:
    """Train ``cfg.model`` on ``cfg.data``, distilling from ``cfg.teacher`` when ``cfg.distill.type`` is set."""
    device = S.resolve_device(cfg.train.device)
    S.check_precision(cfg.train.precision, device)
    dist_info = init_distributed(device.type)
    try:
        return _train(cfg, device, dist_info)
    finally:
        cleanup(dist_info)


def _train(cfg: Config, device: torch.device, dist_info: DistInfo) -> TrainResult:
    resume_state = None
    if cfg.train.resume:
        resume_state, _ = load_resume(cfg.train.resume)
        cfg = resume_config(config_from_dict(resume_state["config"]), cfg)  # may extend a run (train.epochs)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.use_deterministic_algorithms(cfg.train.deterministic, warn_only=True)
    torch.manual_seed(cfg.train.seed + dist_info.rank)
    main = "fused_softmax" if cfg.train.fusion == "softmax" else "fused"

    run_dir = S.resolve_run_dir(cfg, is_main=dist_info.is_main)
    data = S.build_data(cfg)
    model = S.build_model(cfg, data).to(device)
    if cfg.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    teacher = S.build_teacher(cfg, data, device)
    train_aug, eval_aug, mixup = S.build_augment(cfg, data)
    criterion = S.build_criterion(cfg, teacher, mixing=mixup is not None)
    loader = S.build_train_loader(
        cfg, data, rank=dist_info.rank, world_size=dist_info.world_size, mixing=mixup is not None
    )
    eval_bs = cfg.data.eval_batch_size or 2 * cfg.data.batch_size
    eval_set = S.eval_batches(
        data.eval, eval_bs, rank=dist_info.rank, world_size=dist_info.world_size, workers=cfg.data.workers
    )
    steps_per_epoch = S.steps_per_epoch_or_error(loader)
    total_steps = cfg.train.epochs * steps_per_epoch
    base_lr = scaled_lr(cfg.optim.lr, cfg.data.batch_size) if cfg.optim.scale_lr else cfg.optim.lr
    optimizer = build_optimizer(
        model, name=cfg.optim.name, lr=base_lr, weight_decay=cfg.optim.weight_decay,
        eps=cfg.optim.eps, betas=cfg.optim.betas, momentum=cfg.optim.momentum,
    )  # fmt: skip
    schedule = dict(
        base_lr=base_lr, total_steps=total_steps, warmup_steps=S.warmup_steps(cfg, steps_per_epoch),
        warmup_lr=cfg.optim.warmup_lr, min_lr=cfg.optim.min_lr,
    )  # fmt: skip
    ema = ModelEma(model, decay=cfg.train.ema_decay) if cfg.train.ema else None
    ddp_model = model
    if dist_info.enabled:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    aug_gen = torch.Generator(device="cpu").manual_seed(cfg.train.seed * 7919 + dist_info.rank)
    S.create_run_dir(run_dir, cfg, is_main=dist_info.is_main)  # only now: a run that cannot start leaves nothing

    # ---- state ------------------------------------------------------------------------------------------------
    epoch, step_in_epoch, global_step, nonfinite_run, best = 0, 0, 0, 0, -math.inf
    epoch_sums = {"loss": 0.0, "base": 0.0, "distill": 0.0, "n": 0, "skipped": 0, "seconds": 0.0}
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        if ema is not None and resume_state.get("ema") is not None:
            ema.load_state_dict(resume_state["ema"])
        torch.set_rng_state(resume_state["rng"]["torch"])
        aug_gen.set_state(resume_state["rng"]["aug"])
        epoch, step_in_epoch = resume_state["epoch"], resume_state["step_in_epoch"]
        global_step, nonfinite_run = resume_state["global_step"], resume_state["nonfinite_run"]
        best, epoch_sums = resume_state["best"], dict(resume_state["epoch_sums"])
        log.info("resuming %s at epoch %d, step %d", run_dir, epoch, global_step)
    runlog = RunLog(run_dir, start_epoch=epoch, enabled=dist_info.is_main)

    def state(ep: int, k: int) -> dict[str, Any]:
        return {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "ema": ema.state_dict() if ema is not None else None,
            "rng": {"torch": torch.get_rng_state(), "aug": aug_gen.get_state()},
            "epoch": ep, "step_in_epoch": k, "global_step": global_step, "nonfinite_run": nonfinite_run,
            "best": best, "epoch_sums": dict(epoch_sums), "config": cfg.to_dict(),
        }  # fmt: skip

    def checkpoint(ep: int, k: int) -> None:
        if dist_info.is_main:
            save_resume(run_dir, state(ep, k), epoch=ep, step=global_step, keep_last=cfg.train.keep_last)
        barrier(dist_info)

    # ---- the teacher, measured once on the evaluation set ------------------------------------------------------
    teacher_metrics: dict[str, float] = {}
    teacher_preds = None
    if teacher is not None:
        counts, teacher_preds = evaluate(
            teacher, eval_set, eval_aug, num_classes=data.train.num_classes, device=device,
            precision=cfg.train.precision,
        )  # fmt: skip
        teacher_metrics = summarize(counts, "teacher_")
        log.info("teacher: top-1 %.2f%% on %s", teacher_metrics["teacher_acc"], data.eval.name)

    # ---- loop ---------------------------------------------------------------------------------------------------
    show = cfg.train.progress and dist_info.is_main and sys.stderr.isatty()
    last_eval: tuple[EvalCounts, dict[str, float]] | None = None
    lr = lr_at(global_step, **schedule)  # defined even when a resumed epoch has no steps left (killed in its eval)
    images_seen, train_time = 0, 0.0
    stopped = False
    with _StopRequest() as stop:
        while epoch < cfg.train.epochs and not stopped:
            loader.set_epoch(epoch)
            loader.skip(step_in_epoch)
            model.train()
            bar = tqdm(total=steps_per_epoch, initial=step_in_epoch, desc=f"epoch {epoch + 1}/{cfg.train.epochs}",
                       disable=not show, leave=False, dynamic_ncols=True)  # fmt: skip
            t_epoch = time.perf_counter()
            for images, labels in loader:
                t0 = time.perf_counter()
                lr = lr_at(global_step, **schedule)
                set_lr(optimizer, lr)
                x = train_aug(images.to(device, non_blocking=True), aug_gen)
                labels = labels.to(device, non_blocking=True)
                x, targets = mixup(x, labels, aug_gen) if mixup is not None else (x, labels)
                with autocast(device, cfg.train.precision):
                    out = ddp_model(x)
                    parts = criterion(x, out, targets)
                optimizer.zero_grad(set_to_none=True)
                parts.total.backward()
                norm = _grad_norm(model)
                bad = broadcast_flag(not (torch.isfinite(parts.total) and torch.isfinite(norm)), dist_info)
                if bad:
                    nonfinite_run += 1
                    epoch_sums["skipped"] += 1
                    log.warning(
                        "step %d: non-finite loss or gradient, step skipped (%d in a row)", global_step, nonfinite_run
                    )
                    if nonfinite_run >= cfg.train.max_nonfinite:
                        optimizer.zero_grad(set_to_none=True)
                        checkpoint(epoch, step_in_epoch)  # the last good state: skipped steps changed nothing
                        raise TrainingDiverged(
                            f"training diverged at step {global_step} (epoch {epoch + 1}): {nonfinite_run} non-finite "
                            "steps in a row. Likely causes: learning rate too high, NaN/Inf in the data, fp16 "
                            f"overflow. The last good state is in {run_dir}/checkpoints"
                        )
                else:
                    nonfinite_run = 0
                    if cfg.optim.clip_grad is not None:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad)
                    optimizer.step()
                    if ema is not None:
                        ema.update(model)
                    n = labels.shape[0]
                    epoch_sums["loss"] += float(parts.total.detach()) * n
                    epoch_sums["base"] += float(parts.base.detach()) * n
                    epoch_sums["distill"] += float(parts.distill.detach()) * n
                    epoch_sums["n"] += n
                global_step += 1
                step_in_epoch += 1
                dt = time.perf_counter() - t0
                epoch_sums["seconds"] += dt
                images_seen += labels.shape[0] * dist_info.world_size
                train_time += dt
                bar.set_postfix(loss=f"{float(parts.total.detach()):.3f}", lr=f"{lr:.2e}", refresh=False)
                bar.update()
                stop_now = broadcast_flag(stop.requested, dist_info)
                if stop_now or (
                    cfg.train.checkpoint_every_steps and global_step % cfg.train.checkpoint_every_steps == 0
                ):
                    checkpoint(epoch, step_in_epoch)
                if stop_now:
                    stopped = True
                    break
            bar.close()
            if stopped:
                break

            # ---- end of epoch: evaluate, log, checkpoint ---------------------------------------------------------
            n = max(1, epoch_sums["n"])
            row: dict[str, Any] = {
                "epoch": epoch, "step": global_step, "lr": lr,
                "train_loss": epoch_sums["loss"] / n, "train_base": epoch_sums["base"] / n,
                "train_distill": epoch_sums["distill"] / n, "skipped_steps": epoch_sums["skipped"],
                "img_per_s": epoch_sums["n"] * dist_info.world_size / max(epoch_sums["seconds"], 1e-9),
                "epoch_seconds": time.perf_counter() - t_epoch,
            }  # fmt: skip
            if (epoch + 1) % cfg.train.eval_every == 0 or epoch + 1 == cfg.train.epochs:
                counts, _ = evaluate(
                    model, eval_set, eval_aug, num_classes=data.train.num_classes, device=device,
                    precision=cfg.train.precision, main=main, reference=teacher_preds,
                )  # fmt: skip
                metrics = summarize(counts, main=main, agreement=teacher_preds is not None)
                if ema is not None:
                    ema_counts, _ = evaluate(
                        ema.module, eval_set, eval_aug, num_classes=data.train.num_classes,
                        device=device, precision=cfg.train.precision, main=main,
                    )  # fmt: skip
                    metrics.update(summarize(ema_counts, "ema_", main=main))
                row.update(metrics)
                last_eval = (counts, metrics)
                if metrics["acc"] > best and dist_info.is_main:
                    best = metrics["acc"]
                    save_weights(model, run_dir / "best.safetensors", extra={"epoch": epoch, "acc": best})
                log.info(
                    "epoch %d/%d  loss %.4f  %s %.2f%%  %.0f img/s",
                    epoch + 1, cfg.train.epochs, row["train_loss"], data.eval.name, metrics["acc"], row["img_per_s"],
                )  # fmt: skip
            row.update(teacher_metrics)
            runlog.append(row)
            epoch += 1
            step_in_epoch = 0
            epoch_sums = {"loss": 0.0, "base": 0.0, "distill": 0.0, "n": 0, "skipped": 0, "seconds": 0.0}
            if dist_info.is_main:
                save_weights(model, run_dir / "model.safetensors", extra={"epoch": epoch - 1})
                if ema is not None:
                    save_weights(ema.module, run_dir / "ema.safetensors", extra={"epoch": epoch - 1})
            checkpoint(epoch, 0)

    if stopped:
        log.info("stopped at step %d; continue with: deitlab train --resume %s", global_step, run_dir)
    final = dict(last_eval[1]) if last_eval else {}
    confusion = last_eval[0].confusion if last_eval else None
    if data.test is not None and not stopped:
        test_set = S.eval_batches(
            data.test, eval_bs, rank=dist_info.rank, world_size=dist_info.world_size, workers=cfg.data.workers
        )
        test_ref = None
        if teacher is not None:
            t_counts, test_ref = evaluate(teacher, test_set, eval_aug, num_classes=data.train.num_classes,
                                          device=device, precision=cfg.train.precision)  # fmt: skip
            teacher_metrics.update(summarize(t_counts, "teacher_test_"))
        counts, _ = evaluate(
            model, test_set, eval_aug, num_classes=data.train.num_classes, device=device,
            precision=cfg.train.precision, main=main, reference=test_ref,
        )  # fmt: skip
        final.update(summarize(counts, "test_", main=main, agreement=test_ref is not None))
        confusion = counts.confusion
    result = TrainResult(
        run_dir=run_dir, history=runlog.rows, final=final, teacher=teacher_metrics, confusion=confusion,
        classes=list(data.train.classes), images_per_second=images_seen / max(train_time, 1e-9),
        train_seconds=train_time, stopped_early=stopped,
    )  # fmt: skip
    if dist_info.is_main and not stopped:
        payload = {"final": final, "teacher": teacher_metrics, "img_per_s": result.images_per_second,
                   "train_seconds": train_time, "classes": result.classes,
                   "confusion": confusion.tolist() if confusion is not None else None}  # fmt: skip
        atomic_write_bytes(run_dir / "results.json", json.dumps(payload, indent=1).encode())
    return result


__all__ = ["TrainResult", "TrainingDiverged", "train"]
