"""``build_run``: the one place that reads the config. It returns a :class:`~deitlab.engine.run.Run` of built
objects and plain values; the loop and the callbacks never see the config.

Every choice is made here (distillation type, precision, Mixup, EMA, the schedule, which callbacks run), so the
loop has no configuration branches. The run directory is created last: a run that cannot start leaves nothing.
"""

from __future__ import annotations

import functools
import logging
import math
import sys
from typing import Any

import torch
from torch import nn

from deitlab.config import Config, config_from_dict, resume_config
from deitlab.engine.builders import (
    EVAL_BATCH_FACTOR,
    Data,
    build_augment,
    build_criterion,
    build_data,
    build_model,
    build_teacher,
    build_train_loader,
    create_run_dir,
    eval_batches,
    pin_memory,
    resolve_run_dir,
    use_teacher_cache,
)
from deitlab.engine.callbacks import (
    Checkpointer,
    EpochLog,
    ProgressBar,
    StepLog,
    StopOnSignal,
    TensorBoardLog,
    WeightFiles,
    check_tensorboard,
)
from deitlab.engine.checkpoint import load_resume
from deitlab.engine.distributed import DistInfo
from deitlab.engine.ema import ModelEma
from deitlab.engine.optim import build_optimizer, lr_at, scaled_lr
from deitlab.engine.run import Batches, Callbacks, Run, Schedule, Settings
from deitlab.engine.runlog import RunLog
from deitlab.engine.scaler import StepScaler
from deitlab.engine.tuning import save_plans, tune_run
from deitlab.preprocess import COLOR_MODES, Preprocessing
from deitlab.pretrained import ModelCard

log = logging.getLogger(__name__)

# The augmentation stream is seeded apart from torch's global one (seed + rank). Multiplying by a prime (the
# 1000th) keeps ``seed * 7919 + rank`` distinct for every (seed, rank) pair with fewer than 7919 processes.
AUG_SEED_MULTIPLIER = 7919
# train.fusion -> the evaluation head reported as "acc" (SPEC: logits averaged, or softmax outputs averaged).
FUSION_HEADS = {"logits": "fused", "softmax": "fused_softmax"}


def build_run(cfg: Config, *, device: torch.device, dist: DistInfo) -> Run:
    """Build everything a training run needs from ``cfg`` (merged with its checkpoint when resuming)."""
    resume, cfg = _resume(cfg)
    if cfg.log.tensorboard and dist.is_main:
        check_tensorboard()  # before anything is built: a missing package is a one-line error, not a lost log
    _seed_process(cfg, dist)
    run_dir = resolve_run_dir(cfg, is_main=dist.is_main)
    data = build_data(cfg)
    model = _build_student(cfg, data, device)
    teacher = build_teacher(cfg, data, device)
    train_aug, eval_aug, mixup = build_augment(cfg, data)
    cache = use_teacher_cache(cfg, train_aug, mixing=mixup is not None, per_image=data.per_image, device=device)
    criterion = build_criterion(cfg, teacher, mixing=mixup is not None, cache_teacher=cache)
    loader = build_train_loader(cfg, data, rank=dist.rank, world_size=dist.world_size, mixing=mixup is not None)
    eval_set, test_set = _eval_sets(cfg, data, dist)
    optimizer = _build_optimizer(cfg, model)
    ema = ModelEma(model, decay=cfg.train.ema_decay) if cfg.train.ema else None
    # train.precision=auto and the other machine-dependent settings (after the EMA copy: a compile stays on the
    # model); the config then records the resolved precision.
    cfg, plans = tune_run(
        cfg, model, teacher, in_chans=data.train.in_chans, img_size=data.img_size, device=device, dist=dist,
        steps=cfg.train.epochs * len(loader), run_dir=run_dir,
    )  # fmt: skip
    settings = _settings(cfg, steps_per_epoch=len(loader))
    ddp_model = _wrap_ddp(model, device, dist)
    aug_gen = torch.Generator(device="cpu").manual_seed(cfg.train.seed * AUG_SEED_MULTIPLIER + dist.rank)
    create_run_dir(run_dir, cfg, is_main=dist.is_main)  # only now: a run that cannot start leaves nothing
    save_plans(run_dir, plans, is_main=dist.is_main)
    return Run(
        device=device, dist=dist, run_dir=run_dir, config=cfg.to_dict(), data=data, model=model,
        ddp_model=ddp_model, teacher=teacher, criterion=criterion, optimizer=optimizer,
        schedule=_schedule(cfg, settings), train_aug=train_aug, eval_aug=eval_aug,
        mixup=mixup if mixup is not None else _no_mixing, aug_gen=aug_gen, loader=loader, eval_batches=eval_set,
        test_batches=test_set, ema=ema, settings=settings, log=RunLog(run_dir, enabled=dist.is_main),
        scaler=StepScaler(device.type, enabled=cfg.train.precision == "fp16"), callbacks=_callbacks(cfg, dist, data),
        resume=resume,
    )  # fmt: skip


def _resume(cfg: Config) -> tuple[dict[str, Any] | None, Config]:
    """The checkpoint to resume from (if any), and the run's config: the saved one plus what the resume command
    may change (e.g. more ``train.epochs``)."""
    if not cfg.train.resume:
        return None, cfg
    payload, _ = load_resume(cfg.train.resume)
    return payload, resume_config(config_from_dict(payload["config"]), cfg)


def _seed_process(cfg: Config, dist: DistInfo) -> None:
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.use_deterministic_algorithms(cfg.train.deterministic, warn_only=True)
    torch.manual_seed(cfg.train.seed + dist.rank)


def _build_student(cfg: Config, data: Data, device: torch.device) -> nn.Module:
    model = build_model(cfg, data).to(device)
    if cfg.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def _eval_sets(cfg: Config, data: Data, dist: DistInfo) -> tuple[Batches, Batches | None]:
    """This process's shard of the evaluation split and, when the test split is evaluated at the end, of that."""
    batch_size = cfg.data.eval_batch_size or EVAL_BATCH_FACTOR * cfg.data.batch_size
    shard = dict(rank=dist.rank, world_size=dist.world_size, workers=cfg.data.workers, pin_memory=pin_memory(cfg))
    test = eval_batches(data.test, batch_size, **shard) if data.test is not None else None
    return eval_batches(data.eval, batch_size, **shard), test


def _settings(cfg: Config, *, steps_per_epoch: int) -> Settings:
    return Settings(
        epochs=cfg.train.epochs, steps_per_epoch=steps_per_epoch, precision=cfg.train.precision,
        main_head=FUSION_HEADS[cfg.train.fusion], eval_every=cfg.train.eval_every,
        max_nonfinite=cfg.train.max_nonfinite, clip_grad=cfg.optim.clip_grad,
        headline_weights=cfg.train.headline_weights,
    )  # fmt: skip


def _base_lr(cfg: Config) -> float:
    return scaled_lr(cfg.optim.lr, cfg.data.batch_size) if cfg.optim.scale_lr else cfg.optim.lr


def _build_optimizer(cfg: Config, model: nn.Module) -> torch.optim.Optimizer:
    o = cfg.optim
    return build_optimizer(
        model, name=o.name, lr=_base_lr(cfg), weight_decay=o.weight_decay, eps=o.eps, betas=o.betas,
        momentum=o.momentum,
    )  # fmt: skip


def _schedule(cfg: Config, settings: Settings) -> Schedule:
    """Warm-up then cosine over the whole run, per step (:func:`~deitlab.engine.optim.lr_at`)."""
    return functools.partial(
        lr_at, base_lr=_base_lr(cfg), total_steps=settings.epochs * settings.steps_per_epoch,
        warmup_steps=int(math.ceil(cfg.optim.warmup_epochs * settings.steps_per_epoch)),
        warmup_lr=cfg.optim.warmup_lr, min_lr=cfg.optim.min_lr,
    )  # fmt: skip


def _wrap_ddp(model: nn.Module, device: torch.device, dist: DistInfo) -> nn.Module:
    if not dist.enabled:
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def _no_mixing(x: torch.Tensor, labels: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup/CutMix switched off: the batch and its hard labels, untouched."""
    return x, labels


def model_card(cfg: Config, data: Data) -> ModelCard | None:
    """What the run's model folders record: the evaluation preprocessing of this run's data (so that any image
    becomes the tensor the model was evaluated on), the class names, and where the model comes from."""
    train = data.train
    if train.in_chans not in COLOR_MODES.values():
        log.warning("no model folders: predict/export need 1 or 3 channels, the data has %d", train.in_chans)
        return None
    pad = cfg.data.pad
    size = train.img_size if isinstance(train.img_size, tuple) else (train.img_size, train.img_size)
    if cfg.data.dataset == "imagefolder":  # photos of any size: bring each to the resize of DeiT's evaluation
        # (shorter side to img_size / crop_pct), so the centre crop that follows resamples nothing a second time
        side = int(data.img_size / cfg.aug.eval_crop_pct)
        size = (side + 2 * pad, side + 2 * pad)
    prep = Preprocessing(
        input_size=(train.in_chans, data.img_size, data.img_size), mean=tuple(train.mean), std=tuple(train.std),
        interpolation=cfg.aug.interpolation, crop_pct=cfg.aug.eval_crop_pct,
        color_mode="L" if train.in_chans == 1 else "RGB", native_size=(size[0] - 2 * pad, size[1] - 2 * pad), pad=pad,
    )  # fmt: skip
    provenance = {
        "dataset": cfg.data.dataset, "data_path": cfg.data.path, "eval_split": cfg.data.eval_split,
        "distillation": cfg.distill.type, "teacher": cfg.teacher.path if cfg.distill.type != "none" else None,
    }  # fmt: skip
    return ModelCard(prep, list(train.classes), provenance)


def _callbacks(cfg: Config, dist: DistInfo, data: Data) -> Callbacks:
    return Callbacks(
        [
            ProgressBar(enabled=cfg.train.progress and dist.is_main and sys.stderr.isatty()),
            StopOnSignal(),  # before the Checkpointer: a stop is checkpointed at the step it happens
            WeightFiles(model_card(cfg, data)),  # before the Checkpointer: it updates state.best, which it saves
            EpochLog(),
            Checkpointer(every_steps=cfg.train.checkpoint_every_steps, keep_last=cfg.train.keep_last),
            *_log_callbacks(cfg, dist),
        ]
    )


def _log_callbacks(cfg: Config, dist: DistInfo) -> list[StepLog | TensorBoardLog]:
    """The step log and TensorBoard, on rank 0 only (the other ranks then pay no host sync for them)."""
    if not dist.is_main:
        return []
    step_log = [StepLog(every_steps=cfg.log.every_steps)] if cfg.log.every_steps else []
    return step_log + ([TensorBoardLog()] if cfg.log.tensorboard else [])  # after StepLog: it reads step.record
