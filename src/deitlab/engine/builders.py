"""Builders that turn a validated :class:`~deitlab.config.Config` into the objects a run uses: device, data,
student, teacher, loss, augmentation, loaders, run directory. :func:`deitlab.engine.build.build_run` composes them;
``deitlab eval`` reuses the device and evaluation-batch helpers."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from deitlab.config import Config, dump_yaml
from deitlab.data import (
    BatchLoader,
    EvalAugment,
    ImageFolderStream,
    ImageSet,
    Mixup,
    RASampler,
    TrainAugment,
    load_dataset,
)
from deitlab.data.loader import StreamLoader, sequential_batches
from deitlab.distill.losses import DistillationLoss, cross_entropy
from deitlab.distill.teacher import FrozenTeacher, load_teacher
from deitlab.errors import ConfigError
from deitlab.io import atomic_write_bytes
from deitlab.models import create_model

# ImageFolder images come in any size; without model.img_size they are resized to ImageNet's 224 px (DeiT's input).
DEFAULT_FOLDER_IMG_SIZE = 224
# Evaluation keeps no activations for backward, so by default it takes twice the training batch.
EVAL_BATCH_FACTOR = 2

TrainLoader = BatchLoader | StreamLoader


def build_device(cfg: Config) -> torch.device:
    """The device ``train.device`` names, checked to support ``train.precision``."""
    device = resolve_device(cfg.train.device)
    check_precision(cfg.train.precision, device)
    return device


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else the CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device='cuda' but no CUDA device is available; use cpu or auto")
    return torch.device(name)


def check_precision(precision: str, device: torch.device) -> None:
    """fp16 autocast needs CUDA; bf16 needs a CPU or a CUDA device that supports it."""
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision='fp16' needs a CUDA device; on the CPU use bf16")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("train.precision='bf16' is not supported by this GPU; use fp16 or fp32")


@dataclass
class Data:
    train: ImageSet | ImageFolderStream
    eval: ImageSet | ImageFolderStream
    test: ImageSet | ImageFolderStream | None
    img_size: int


def _stream(cfg: Config, split: str) -> ImageFolderStream:
    if cfg.data.dataset != "imagefolder" or not cfg.data.path:
        raise ConfigError("data.stream only applies to data.dataset=imagefolder with a data.path")
    if cfg.data.limit_train or cfg.data.limit_eval or cfg.data.pad:
        raise ConfigError("data.limit_train/limit_eval/pad work on in-memory data sets, not with data.stream")
    img_size = cfg.model.img_size or DEFAULT_FOLDER_IMG_SIZE
    return ImageFolderStream(cfg.data.path, split=split, img_size=img_size, bad_images=cfg.data.bad_images)


def _read(cfg: Config, split: str, img_size: int | None) -> ImageSet:
    kw: dict = {}
    if cfg.data.dataset == "imagefolder":
        kw = dict(bad_images=cfg.data.bad_images, img_size=img_size or DEFAULT_FOLDER_IMG_SIZE)
    data = load_dataset(cfg.data.dataset, split=split, root=cfg.data.path, val_fraction=cfg.data.val_fraction, **kw)
    if cfg.data.pad:
        p = cfg.data.pad
        data.images = torch.nn.functional.pad(data.images, (p, p, p, p))  # uint8 zeros: the background of MNISTs
    return data


def build_data(cfg: Config) -> Data:
    """Read the train, evaluation and (optionally) test splits into memory (or open them as streams)."""
    if cfg.data.stream:
        train, evalset = _stream(cfg, "train"), _stream(cfg, cfg.data.eval_split)
        test = _stream(cfg, "test") if cfg.data.test_at_end and cfg.data.eval_split != "test" else None
        return Data(train, evalset, test, int(train.img_size))
    train = _read(cfg, "train", cfg.model.img_size)
    if cfg.data.limit_train:
        train = train.subset(range(min(cfg.data.limit_train, len(train))))
    evalset = _read(cfg, cfg.data.eval_split, cfg.model.img_size)
    if cfg.data.limit_eval:
        evalset = evalset.subset(range(min(cfg.data.limit_eval, len(evalset))))
    test = None
    if cfg.data.test_at_end and cfg.data.eval_split != "test":
        test = _read(cfg, "test", cfg.model.img_size)
        if cfg.data.limit_eval:
            test = test.subset(range(min(cfg.data.limit_eval, len(test))))
    for s in (train, evalset):
        if len(s) == 0:
            raise ConfigError(f"{s.name} holds no images")
    return Data(train, evalset, test, int(cfg.model.img_size or train.img_size[0]))


def build_model(cfg: Config, data: Data) -> nn.Module:
    """The student: the registry model with the data set's classes, channels and size."""
    overrides = dict(
        num_classes=data.train.num_classes,
        in_chans=data.train.in_chans,
        img_size=data.img_size,
        drop_path_rate=cfg.model.drop_path_rate,
        drop_rate=cfg.model.drop_rate,
    )
    if cfg.model.patch_size is not None:
        overrides["patch_size"] = cfg.model.patch_size
    overrides.update(cfg.model.kwargs)
    try:
        return create_model(cfg.model.name, **overrides)
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(f"model {cfg.model.name}: {e}") from None


def build_teacher(cfg: Config, data: Data, device: torch.device) -> FrozenTeacher | None:
    if cfg.distill.type == "none":
        return None
    model = load_teacher(
        cfg.teacher.model, cfg.teacher.path,
        num_classes=data.train.num_classes, in_chans=data.train.in_chans, img_size=data.img_size,
    )  # fmt: skip
    precision = "fp32" if cfg.train.precision == "auto" else cfg.train.precision  # auto: resolved by tune_run
    teacher = FrozenTeacher(model, precision=precision, channels_last=cfg.teacher.channels_last)
    return teacher.to(device)


def build_criterion(cfg: Config, teacher: FrozenTeacher | None, mixing: bool) -> DistillationLoss:
    smoothing = 0.0 if mixing else cfg.aug.label_smoothing  # with Mixup the smoothing is in the soft targets

    def base(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return cross_entropy(logits, targets, label_smoothing=smoothing)

    return DistillationLoss(
        base, teacher,
        distillation_type=cfg.distill.type, alpha=cfg.distill.alpha, tau=cfg.distill.tau,
        reduction=cfg.distill.reduction, teacher_label_smoothing=cfg.distill.teacher_label_smoothing,
    )  # fmt: skip


def build_augment(cfg: Config, data: Data) -> tuple[TrainAugment, EvalAugment, Mixup | None]:
    a = cfg.aug
    mean, std = data.train.mean, data.train.std
    train = TrainAugment(
        img_size=data.img_size, mean=mean, std=std, scale=a.crop_scale, ratio=a.crop_ratio, hflip=a.hflip,
        rand_augment=a.rand_augment, re_prob=a.re_prob, interpolation=a.interpolation,
    )  # fmt: skip
    evaluation = EvalAugment(
        img_size=data.img_size, mean=mean, std=std, crop_pct=a.eval_crop_pct, interpolation=a.interpolation
    )
    mix = None
    if a.mix_prob > 0 and (a.mixup > 0 or a.cutmix > 0):
        mix = Mixup(
            num_classes=data.train.num_classes, mixup_alpha=a.mixup, cutmix_alpha=a.cutmix, prob=a.mix_prob,
            switch_prob=a.switch_prob, label_smoothing=a.label_smoothing,
        )  # fmt: skip
    return train, evaluation, mix


def build_train_loader(cfg: Config, data: Data, *, rank: int, world_size: int, mixing: bool = False) -> TrainLoader:
    if cfg.data.batch_size % world_size:
        raise ConfigError(
            f"data.batch_size={cfg.data.batch_size} (the global batch) is not divisible by the {world_size} "
            "processes; use a multiple"
        )
    per_proc = cfg.data.batch_size // world_size
    if mixing and per_proc < 2:
        raise ConfigError(
            f"Mixup/CutMix mix images within a batch, but each process gets a batch of {per_proc}; raise "
            "data.batch_size or switch mixing off (aug.mixup=0, aug.cutmix=0)"
        )
    n = len(data.train)
    sampler = RASampler(
        n, num_replicas=world_size, rank=rank, num_repeats=cfg.data.repeated_aug, shuffle=True, seed=cfg.train.seed
    )
    if len(sampler) < per_proc:
        raise ConfigError(
            f"{data.train.name} gives {len(sampler)} images per process per epoch, fewer than one batch of "
            f"{per_proc}; lower data.batch_size (--batch-size) to at most {len(sampler) * world_size}"
        )
    if isinstance(data.train, ImageFolderStream):
        return StreamLoader(data.train, batch_size=per_proc, sampler=sampler, drop_last=True, workers=cfg.data.workers)
    return BatchLoader(data.train, batch_size=per_proc, sampler=sampler, drop_last=True)


def eval_batches(
    dataset: ImageSet | ImageFolderStream, batch_size: int, *, rank: int = 0, world_size: int = 1, workers: int = 4
) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """Sequential, unpadded shard ``rank::world_size`` of an evaluation set, as (uint8 images, labels) batches."""
    if isinstance(dataset, ImageFolderStream):
        return sequential_batches(dataset, batch_size, rank=rank, world_size=world_size, workers=workers)
    idx = torch.arange(rank, len(dataset), world_size)
    return [(dataset.images[i], dataset.labels[i]) for i in idx.split(batch_size)]


def resolve_run_dir(cfg: Config, *, is_main: bool) -> Path:
    """Where the run writes, checked before anything is built or written.

    A directory that already holds a different run is refused: resuming must be explicit and overwriting too.
    Nothing is created here, so a run that fails to start (bad model, missing data) leaves nothing behind.
    """
    if cfg.train.resume:
        target = Path(cfg.train.resume)
        run_dir = target if target.is_dir() else target.parent.parent
    elif cfg.train.output_dir:
        run_dir = Path(cfg.train.output_dir)
    else:
        stamp = time.strftime("%Y%m%d-%H%M%S")
        run_dir = Path("runs") / f"{cfg.model.name}-{cfg.data.dataset}-{stamp}"
    if is_main:
        if run_dir.exists() and not run_dir.is_dir():
            raise ConfigError(f"output dir {run_dir} exists and is not a directory")
        holds_run = (run_dir / "config.yaml").exists() or (run_dir / "checkpoints").exists()
        if holds_run and not (cfg.train.resume or cfg.train.overwrite):
            raise ConfigError(
                f"output dir {run_dir} already holds a run; pass --resume {run_dir} to continue it, "
                "--overwrite to replace it, or choose another --output-dir"
            )
        existing = next((p for p in [run_dir, *run_dir.parents] if p.exists()), Path("."))
        if not os.access(existing, os.W_OK):
            raise ConfigError(f"cannot write to output dir {run_dir}: {existing} is not writable")
    return run_dir


def create_run_dir(run_dir: Path, cfg: Config, *, is_main: bool) -> None:
    """Create the run directory (clearing a replaced run's records) and save the resolved config."""
    if not is_main:
        return
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        if cfg.train.overwrite and not cfg.train.resume:
            for stale in ("log.jsonl", "summary.csv", "manifest.json", "results.json", "best.safetensors"):
                (run_dir / stale).unlink(missing_ok=True)
            for f in (run_dir / "checkpoints").glob("ckpt-*.pt"):
                f.unlink()
        atomic_write_bytes(run_dir / "config.yaml", dump_yaml(cfg).encode())
    except OSError as e:
        raise ConfigError(f"cannot write to output dir {run_dir}: {e.strerror or e}") from None
