"""Builders that turn a validated :class:`~deitlab.config.Config` into the objects a run uses: device, data,
student, teacher, loss, augmentation, loaders, run directory. :func:`deitlab.engine.build.build_run` composes them;
``deitlab eval`` reuses the device and evaluation-batch helpers."""

from __future__ import annotations

import os
import shutil
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
    EvalGeometry,
    ImageFolder,
    ImageSet,
    Mixup,
    RASampler,
    TrainAugment,
    TrainGeometry,
    load_dataset,
)
from deitlab.data.folders import open_folder_splits
from deitlab.data.loader import StreamLoader, sequential_batches
from deitlab.distill.losses import DistillationLoss, cross_entropy
from deitlab.distill.teacher import CachedTeacher, FrozenTeacher, load_teacher, teacher_input_size
from deitlab.errors import ConfigError
from deitlab.io import atomic_write_bytes
from deitlab.models import create_model, get_model_entry, list_models
from deitlab.models.weights import load_pretrained
from deitlab.sources import weights_path

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
    """The run's data: train, evaluation and final-test sets, the model input side, and the splits actually read
    (an image folder without ``test/`` is finally evaluated on ``val/``, and the results say so)."""

    train: ImageSet | ImageFolder
    eval: ImageSet | ImageFolder
    test: ImageSet | ImageFolder | None
    img_size: int
    eval_split: str = "val"
    test_split: str | None = None

    @property
    def per_image(self) -> bool:
        """Images shaped per image in loader workers (image folders), not batched from one tensor."""
        return isinstance(self.train, ImageFolder)


def _read(cfg: Config, split: str) -> ImageSet:
    data = load_dataset(cfg.data.dataset, split=split, root=cfg.data.path, val_fraction=cfg.data.val_fraction)
    if cfg.data.pad:
        p = cfg.data.pad
        data.images = torch.nn.functional.pad(data.images, (p, p, p, p))  # uint8 zeros: the background of MNISTs
    return data


def folder_img_size(cfg: Config) -> int:
    """An image folder's model input side: ``model.img_size``, else the registry model's own (224, or 384 for
    ``*_384`` models)."""
    return int(cfg.model.img_size or get_model_entry(cfg.model.name).img_size)


def _folder_data(cfg: Config) -> Data:
    """An image folder: originals shaped per image in the loader workers (DeiT's crop on the original)."""
    if not cfg.data.path:
        raise ConfigError("data.dataset=imagefolder needs data.path (--data-path DIR with DIR/train/<class>/...)")
    if cfg.data.pad:
        raise ConfigError("data.pad zero-pads in-memory MNIST-style images; it does not apply to an image folder")
    if cfg.data.limit_train and cfg.data.limit_train_mode != "first":
        raise ConfigError("data.limit_train_mode=stratified applies to in-memory data sets, not an image folder")
    a, size = cfg.aug, folder_img_size(cfg)
    splits = open_folder_splits(
        cfg.data.path, eval_split=cfg.data.eval_split, want_test=cfg.data.test_at_end,
        train_geometry=TrainGeometry(size, a.crop_scale, a.crop_ratio, a.hflip, a.interpolation),
        eval_geometry=EvalGeometry(size, a.eval_crop_pct, a.interpolation),
        stream=cfg.data.stream, budget_gb=cfg.data.memory_budget_gb, bad_images=cfg.data.bad_images,
        seed=cfg.train.seed, limit_train=cfg.data.limit_train, limit_eval=cfg.data.limit_eval,
    )  # fmt: skip
    return Data(splits.train, splits.eval, splits.test, size, splits.eval_split, splits.test_split)


def build_data(cfg: Config) -> Data:
    """Read the train, evaluation and (optionally) test splits: into memory, or as image folders (in memory when
    they fit ``data.memory_budget_gb``, else streamed; see :mod:`deitlab.data.folders`)."""
    if cfg.data.dataset == "imagefolder":
        return _folder_data(cfg)
    if cfg.data.stream:
        raise ConfigError("data.stream only applies to data.dataset=imagefolder with a data.path")
    train = _read(cfg, "train")
    if cfg.data.limit_train and cfg.data.limit_train_mode == "stratified":
        train = train.subset(stratified_indices(train.labels, cfg.data.limit_train, seed=cfg.data.limit_train_seed))
    elif cfg.data.limit_train:
        train = train.subset(range(min(cfg.data.limit_train, len(train))))
    evalset = _read(cfg, cfg.data.eval_split)
    if cfg.data.limit_eval:
        evalset = evalset.subset(range(min(cfg.data.limit_eval, len(evalset))))
    test = None
    if cfg.data.test_at_end and cfg.data.eval_split != "test":
        test = _read(cfg, "test")
        if cfg.data.limit_eval:
            test = test.subset(range(min(cfg.data.limit_eval, len(test))))
    for s in (train, evalset):
        if len(s) == 0:
            raise ConfigError(f"{s.name} holds no images")
    img_size = int(cfg.model.img_size or train.img_size[0])
    return Data(train, evalset, test, img_size, cfg.data.eval_split, "test" if test is not None else None)


def stratified_indices(labels: torch.Tensor, n: int, *, seed: int = 0) -> torch.Tensor:
    """``n`` indices (sorted), as evenly spread over the classes as their sizes allow, each class's drawn from a
    seeded permutation of that class (``data.limit_train_mode=stratified``).

    Class c gets ``⌊n/K⌋`` or ``⌈n/K⌉`` images (the extra ones go to the lowest class indices); a class with fewer
    images gives all of them and the rest is shared among the others. ``n`` ≥ the set's size takes everything.
    The draws of one class do not depend on ``n``, so a smaller subset is contained in a larger one (same seed).
    """
    g = torch.Generator().manual_seed(seed)
    classes = torch.unique(labels).tolist()
    members = [torch.nonzero(labels == c).flatten() for c in classes]
    members = [m[torch.randperm(len(m), generator=g)] for m in members]
    sizes = [len(m) for m in members]
    quota = [0] * len(classes)
    left = min(n, len(labels))
    while left > 0:
        open_ = [i for i, q in enumerate(quota) if q < sizes[i]]
        share = left // len(open_)
        for i in open_:
            extra = min(share, sizes[i] - quota[i]) if share else int(left > 0)
            quota[i] += extra
            left -= extra
    picked = [m[:q] for m, q in zip(members, quota)]
    return torch.cat(picked).sort().values if picked else torch.zeros(0, dtype=torch.long)


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
        model = create_model(cfg.model.name, **overrides)
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(f"model {cfg.model.name}: {e}") from None
    if cfg.model.finetune and not cfg.train.resume:  # a resumed run restores its own weights
        load_pretrained(model, weights_path(cfg.model.finetune))
    return model


def build_teacher(cfg: Config, data: Data, device: torch.device) -> FrozenTeacher | None:
    if cfg.distill.type == "none":
        return None
    model = load_teacher(
        cfg.teacher.model, cfg.teacher.path,
        num_classes=data.train.num_classes, in_chans=data.train.in_chans, img_size=_teacher_build_size(cfg, data),
    )  # fmt: skip
    size = teacher_input_size(model, cfg.teacher.img_size, data.img_size)
    precision = "fp32" if cfg.train.precision == "auto" else cfg.train.precision  # auto: resolved by tune_run
    teacher = FrozenTeacher(
        model, precision=precision, channels_last=cfg.teacher.channels_last,
        input_size=size if size != data.img_size else None,
    )  # fmt: skip
    return teacher.to(device)


def _teacher_build_size(cfg: Config, data: Data) -> int:
    """The size a registry teacher without saved settings is built at: ``teacher.img_size``, else the registry
    model's own (a ViT trained at 224 stays a 224 px model), else the student's. A deitlab checkpoint's saved
    settings win over this in :func:`load_teacher`; CNNs only record it."""
    name = cfg.teacher.model
    if cfg.teacher.img_size:
        return int(cfg.teacher.img_size)
    if name and ":" not in name and name in list_models():
        return get_model_entry(name).img_size
    return data.img_size


def build_criterion(
    cfg: Config, teacher: FrozenTeacher | None, mixing: bool, *, cache_teacher: bool = False
) -> DistillationLoss:
    """DeiT's loss for ``cfg``; with ``cache_teacher`` the teacher answers each distinct training image once."""
    smoothing = 0.0 if mixing else cfg.aug.label_smoothing  # with Mixup the smoothing is in the soft targets

    def base(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return cross_entropy(logits, targets, label_smoothing=smoothing)

    return DistillationLoss(
        base, CachedTeacher(teacher) if cache_teacher and teacher is not None else teacher,
        distillation_type=cfg.distill.type, alpha=cfg.distill.alpha, tau=cfg.distill.tau,
        reduction=cfg.distill.reduction, teacher_label_smoothing=cfg.distill.teacher_label_smoothing,
    )  # fmt: skip


def use_teacher_cache(
    cfg: Config, train_aug: TrainAugment, *, mixing: bool, per_image: bool, device: torch.device
) -> bool:
    """``distill.cache_teacher``: always, never, or (auto) on the CPU when every training image has at most two views
    (itself and its mirror): a GPU's teacher forward costs less than copying the batch to the host to key it."""
    if cfg.distill.type == "none" or cfg.distill.cache_teacher == "never":
        return False
    if cfg.distill.cache_teacher == "always":
        return True
    return device.type == "cpu" and train_aug.few_views and not mixing and not per_image


def build_augment(cfg: Config, data: Data) -> tuple[TrainAugment, EvalAugment, Mixup | None]:
    """The batched augmentation. For image folders the loader workers already cropped (and flipped) each original
    and resized + centre-cropped the evaluation images, so the batched part starts after the geometry."""
    a = cfg.aug
    mean, std = data.train.mean, data.train.std
    scale, hflip, crop_pct = (None, 0.0, 1.0) if data.per_image else (a.crop_scale, a.hflip, a.eval_crop_pct)
    train = TrainAugment(
        img_size=data.img_size, mean=mean, std=std, scale=scale, ratio=a.crop_ratio, hflip=hflip,
        rand_augment=a.rand_augment, re_prob=a.re_prob, interpolation=a.interpolation,
    )  # fmt: skip
    evaluation = EvalAugment(
        img_size=data.img_size, mean=mean, std=std, crop_pct=crop_pct, interpolation=a.interpolation
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
    if isinstance(data.train, ImageFolder):
        return StreamLoader(
            data.train, batch_size=per_proc, sampler=sampler, drop_last=True, workers=cfg.data.workers,
            pin_memory=pin_memory(cfg),
        )  # fmt: skip
    return BatchLoader(data.train, batch_size=per_proc, sampler=sampler, drop_last=True)


def pin_memory(cfg: Config) -> bool:
    """Pin loader batches when they go to a GPU (faster, asynchronous host-to-device copies)."""
    return resolve_device(cfg.train.device).type == "cuda"


def eval_batches(
    dataset: ImageSet | ImageFolder,
    batch_size: int,
    *,
    rank: int = 0,
    world_size: int = 1,
    workers: int = 4,
    pin_memory: bool = False,
) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """Sequential, unpadded shard ``rank::world_size`` of an evaluation set, as (uint8 images, labels) batches."""
    if isinstance(dataset, ImageFolder):
        return sequential_batches(
            dataset, batch_size, rank=rank, world_size=world_size, workers=workers, pin_memory=pin_memory
        )
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


# What a run writes at its top level; --overwrite removes a replaced run's copies so none can pass for the new run's.
STALE_FILES = ("log.jsonl", "steps.jsonl", "summary.csv", "manifest.json", "results.json", "optimize.json",
               "best.safetensors", "model.safetensors", "ema.safetensors")  # fmt: skip


def create_run_dir(run_dir: Path, cfg: Config, *, is_main: bool) -> None:
    """Create the run directory (clearing a replaced run's records) and save the resolved config."""
    if not is_main:
        return
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        if cfg.train.overwrite and not cfg.train.resume:
            for stale in STALE_FILES:
                (run_dir / stale).unlink(missing_ok=True)
            for f in (run_dir / "checkpoints").glob("ckpt-*.pt"):
                f.unlink()
            for folder in ("model", "model_best", "model_ema", "tensorboard"):  # the replaced run's folders
                shutil.rmtree(run_dir / folder, ignore_errors=True)
        atomic_write_bytes(run_dir / "config.yaml", dump_yaml(cfg).encode())
    except OSError as e:
        raise ConfigError(f"cannot write to output dir {run_dir}: {e.strerror or e}") from None
