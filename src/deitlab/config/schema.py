"""The configuration schema: typed sections with DeiT's defaults, flag aliases, allowed values and range checks.

What a key is, what it may hold and what may change on resume; reading YAML files and ``key=value`` overrides
into it is :mod:`deitlab.config.parse`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from deitlab.errors import ConfigError


@dataclass
class ModelConfig:
    name: str = "deit_tiny_distilled_patch16_224"
    img_size: int | None = None  # None: the data set's native size
    patch_size: int | None = None  # None: the registry default
    drop_path_rate: float = 0.1
    drop_rate: float = 0.0
    channels_last: bool = False  # NHWC weights/activations: faster convolutions (CNN students) on CPU and GPU
    kwargs: dict[str, Any] = field(default_factory=dict)  # any other create_model override
    finetune: str | None = None  # start from these weights (pos-embed resampled, new head if needed)


@dataclass
class TeacherConfig:
    model: str | None = None  # registry name, timm:<name> or torchvision:<name>; None: from the checkpoint
    path: str | None = None
    channels_last: bool = True
    img_size: int | None = None  # the teacher's input side; None: its own (a ViT's grid) or the student's


@dataclass
class DistillConfig:
    type: str = "none"  # none | soft | hard
    alpha: float = 0.5
    tau: float = 1.0
    # soft KD's KL reduction: auto (deit for a student with a distillation token, batchmean for one without) |
    # deit (sum / (batch x classes), the official code) | batchmean (sum / batch: Hinton's KD, timm)
    reduction: str = "auto"
    teacher_label_smoothing: float = 0.0
    # remember the teacher's logits per distinct training image: auto (on the CPU, when every image has at most two
    # training views: no crop, RandAugment, erasing or mixing) | always | never
    cache_teacher: str = "auto"


@dataclass
class DataConfig:
    dataset: str = "fashion_mnist"
    path: str | None = None
    batch_size: int = 256
    eval_batch_size: int | None = None  # None: 2 x batch_size
    val_fraction: float | None = None
    repeated_aug: int = 1  # DeiT: 3 (helps large batches, hurts small ones)
    bad_images: str = "error"  # error | skip (ImageFolder)
    stream: bool | None = None  # ImageFolder: None = in memory when it fits memory_budget_gb, else streamed
    memory_budget_gb: float | None = None  # None: a quarter of RAM / processes per node
    workers: int = 4  # DataLoader workers when streaming
    pad: int = 0  # zero-pad every image by this many pixels per side at load time (28 -> 32 px with pad=2)
    limit_train: int | None = None  # use only N training images (quick runs, data-size studies)
    limit_train_mode: str = "first"  # first: the first N | stratified: N/K per class, seeded (limit_train_seed)
    limit_train_seed: int = 0  # the stratified subset's seed, apart from train.seed: every seed sees the same images
    limit_eval: int | None = None
    eval_split: str = "val"  # val | test: what the per-epoch evaluation reads
    test_at_end: bool = True  # evaluate the final model on the test split too


@dataclass
class AugConfig:
    crop_scale: tuple[float, float] | None = (0.08, 1.0)  # RandomResizedCrop area; None: no crop
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # RandomResizedCrop aspect ratios (torchvision, DeiT)
    hflip: float = 0.5
    rand_augment: str | None = "rand-m9-mstd0.5-inc1"
    re_prob: float = 0.25
    mixup: float = 0.8
    cutmix: float = 1.0
    mix_prob: float = 1.0
    switch_prob: float = 0.5
    label_smoothing: float = 0.1
    eval_crop_pct: float = 0.875
    interpolation: str = "bicubic"


@dataclass
class OptimConfig:
    name: str = "adamw"  # adamw | sgd
    lr: float = 5e-4
    scale_lr: bool = True  # lr x batch/512, as DeiT
    weight_decay: float = 0.05
    eps: float = 1e-8
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = 0.9
    warmup_epochs: float = 5.0
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5
    clip_grad: float | None = None


@dataclass
class TrainConfig:
    epochs: int = 300
    precision: str = "auto"  # auto (fastest measured here: deitlab.optimize_for) | fp32 | bf16 | fp16 (CUDA)
    compile: str = "auto"  # torch.compile: auto (when the run repays the measured compile time) | always | never
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    threads: int | None = None  # CPU threads; None: PyTorch's default, halved only if that measures faster
    ema: bool = False
    ema_decay: float = 0.99996
    output_dir: str | None = None  # None: runs/<model>-<dataset>-<time>
    resume: str | None = None  # a run directory or its checkpoint file
    overwrite: bool = False
    checkpoint_every_steps: int = 0  # 0: only at epoch ends
    keep_last: int = 2
    eval_every: int = 1
    fusion: str = "logits"  # logits | softmax: the fused accuracy reported as "acc"
    max_nonfinite: int = 10  # consecutive non-finite steps before the run stops
    progress: bool = True
    deterministic: bool = False
    headline_weights: str = "raw"  # raw | ema: whose top-1 results.json's headline quotes (ema needs train.ema)


@dataclass
class LogConfig:
    every_steps: int = 50  # one steps.jsonl row every this many optimizer steps (rank 0; 0 = off)
    tensorboard: bool = False  # TensorBoard scalars in <run>/tensorboard (needs: pip install 'deitlab[tensorboard]')


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    data: DataConfig = field(default_factory=DataConfig)
    aug: AugConfig = field(default_factory=AugConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# DeiT/timm command-line names -> dotted keys.
ALIASES: dict[str, str] = {
    "model": "model.name",
    "input-size": "model.img_size",
    "drop-path": "model.drop_path_rate",
    "teacher-model": "teacher.model",
    "teacher-path": "teacher.path",
    "distillation-type": "distill.type",
    "distillation-alpha": "distill.alpha",
    "distillation-tau": "distill.tau",
    "data-set": "data.dataset",
    "data-path": "data.path",
    "batch-size": "data.batch_size",
    "repeated-aug": "data.repeated_aug",
    "epochs": "train.epochs",
    "lr": "optim.lr",
    "opt": "optim.name",
    "weight-decay": "optim.weight_decay",
    "warmup-epochs": "optim.warmup_epochs",
    "min-lr": "optim.min_lr",
    "clip-grad": "optim.clip_grad",
    "smoothing": "aug.label_smoothing",
    "mixup": "aug.mixup",
    "cutmix": "aug.cutmix",
    "reprob": "aug.re_prob",
    "aa": "aug.rand_augment",
    "output-dir": "train.output_dir",
    "resume": "train.resume",
    "seed": "train.seed",
    "precision": "train.precision",
    "device": "train.device",
    "model-ema": "train.ema",
    "model-ema-decay": "train.ema_decay",
    "finetune": "model.finetune",
    "num-workers": "data.workers",
}

CHOICES: dict[str, tuple[str, ...]] = {
    "distill.type": ("none", "soft", "hard"),
    "distill.reduction": ("auto", "deit", "batchmean"),
    "distill.cache_teacher": ("auto", "always", "never"),
    "optim.name": ("adamw", "sgd"),
    "train.precision": ("auto", "fp32", "bf16", "fp16"),
    "train.compile": ("auto", "always", "never"),
    "train.device": ("auto", "cpu", "cuda"),
    "train.fusion": ("logits", "softmax"),
    "train.headline_weights": ("raw", "ema"),
    "data.bad_images": ("error", "skip"),
    "data.eval_split": ("val", "test"),
    "data.limit_train_mode": ("first", "stratified"),
    "aug.interpolation": ("bilinear", "bicubic"),
}


def all_keys(cfg: Any = None, prefix: str = "") -> list[str]:
    """Every dotted key of the config schema (``train.epochs``, ...)."""
    cfg = Config() if cfg is None else cfg
    keys = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            keys += all_keys(value, f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def get_value(cfg: Config, key: str) -> Any:
    section, name = key.split(".", 1)
    return getattr(getattr(cfg, section), name)


def changed_keys(cfg: Config, reference: Config | None = None) -> dict[str, Any]:
    """Dotted keys whose value differs from ``reference`` (default: the defaults), with ``cfg``'s values."""
    reference = reference or Config()
    return {k: get_value(cfg, k) for k in all_keys(cfg) if get_value(cfg, k) != get_value(reference, k)}


# What may change when a run is resumed without breaking its exactness (the rest comes from the checkpoint).
RESUMABLE_KEYS = frozenset({
    "train.resume", "train.epochs", "train.progress", "train.checkpoint_every_steps", "train.keep_last",
    "train.threads", "train.device", "train.eval_every", "train.max_nonfinite", "data.path", "teacher.path",
    "train.headline_weights", "log.every_steps", "log.tensorboard", "distill.cache_teacher",
    "data.stream", "data.memory_budget_gb", "data.workers",  # image folders: same pixels in memory or streamed
})  # fmt: skip


def validate(cfg: Config) -> None:
    """Range checks that types alone cannot express; each error names the key, the value and what is allowed."""
    checks: list[tuple[str, Any, bool, str]] = [
        ("train.epochs", cfg.train.epochs, cfg.train.epochs >= 1, ">= 1"),
        ("data.batch_size", cfg.data.batch_size, cfg.data.batch_size >= 1, ">= 1"),
        ("optim.lr", cfg.optim.lr, cfg.optim.lr > 0, "> 0"),
        ("optim.weight_decay", cfg.optim.weight_decay, cfg.optim.weight_decay >= 0, ">= 0"),
        ("optim.warmup_epochs", cfg.optim.warmup_epochs, cfg.optim.warmup_epochs >= 0, ">= 0"),
        ("optim.min_lr", cfg.optim.min_lr, cfg.optim.min_lr >= 0, ">= 0"),
        ("distill.alpha", cfg.distill.alpha, 0 <= cfg.distill.alpha <= 1, "in [0, 1]"),
        ("distill.tau", cfg.distill.tau, cfg.distill.tau > 0, "> 0"),
        ("data.pad", cfg.data.pad, cfg.data.pad >= 0, ">= 0"),
        ("data.workers", cfg.data.workers, cfg.data.workers >= 0, ">= 0"),
        ("data.repeated_aug", cfg.data.repeated_aug, cfg.data.repeated_aug >= 1, ">= 1 (1 = off, DeiT: 3)"),
        ("aug.label_smoothing", cfg.aug.label_smoothing, 0 <= cfg.aug.label_smoothing < 1, "in [0, 1)"),
        ("aug.re_prob", cfg.aug.re_prob, 0 <= cfg.aug.re_prob <= 1, "in [0, 1]"),
        ("aug.mix_prob", cfg.aug.mix_prob, 0 <= cfg.aug.mix_prob <= 1, "in [0, 1]"),
        ("aug.mixup", cfg.aug.mixup, cfg.aug.mixup >= 0, ">= 0 (0 = off)"),
        ("aug.cutmix", cfg.aug.cutmix, cfg.aug.cutmix >= 0, ">= 0 (0 = off)"),
        ("aug.eval_crop_pct", cfg.aug.eval_crop_pct, 0 < cfg.aug.eval_crop_pct <= 1, "in (0, 1]"),
        ("model.drop_path_rate", cfg.model.drop_path_rate, 0 <= cfg.model.drop_path_rate < 1, "in [0, 1)"),
        ("train.ema_decay", cfg.train.ema_decay, 0 < cfg.train.ema_decay < 1, "in (0, 1)"),
        ("train.keep_last", cfg.train.keep_last, cfg.train.keep_last >= 1, ">= 1"),
        ("train.eval_every", cfg.train.eval_every, cfg.train.eval_every >= 1, ">= 1"),
        ("train.max_nonfinite", cfg.train.max_nonfinite, cfg.train.max_nonfinite >= 1, ">= 1"),
        ("train.checkpoint_every_steps", cfg.train.checkpoint_every_steps, cfg.train.checkpoint_every_steps >= 0,
         ">= 0 (0 = epoch ends only)"),
        ("log.every_steps", cfg.log.every_steps, cfg.log.every_steps >= 0, ">= 0 (0 = no step log)"),
    ]  # fmt: skip
    if cfg.data.eval_batch_size is not None:
        checks.append(("data.eval_batch_size", cfg.data.eval_batch_size, cfg.data.eval_batch_size >= 1, ">= 1"))
    if cfg.data.memory_budget_gb is not None:
        checks.append(("data.memory_budget_gb", cfg.data.memory_budget_gb, cfg.data.memory_budget_gb > 0, "> 0 GiB"))
    if cfg.teacher.img_size is not None:
        checks.append(("teacher.img_size", cfg.teacher.img_size, cfg.teacher.img_size >= 1, ">= 1 pixel"))
    if cfg.optim.clip_grad is not None:
        checks.append(("optim.clip_grad", cfg.optim.clip_grad, cfg.optim.clip_grad > 0, "> 0 or none"))
    if cfg.aug.crop_scale is not None:
        lo, hi = cfg.aug.crop_scale
        checks.append(("aug.crop_scale", cfg.aug.crop_scale, 0 < lo <= hi <= 1, "0 < min <= max <= 1"))
    for key, value, ok, allowed in checks:
        if not ok:
            raise ConfigError(f"{key}={value!r} is out of range; it must be {allowed}")
    for key, choices in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if value not in choices:
            raise ConfigError(f"{key}={value!r} is not one of {', '.join(choices)}")
    if cfg.train.headline_weights == "ema" and not cfg.train.ema:
        raise ConfigError("train.headline_weights='ema' needs an EMA: set train.ema=true (--model-ema) or use raw")
    if cfg.distill.type != "none" and not (cfg.teacher.model or cfg.teacher.path):
        raise ConfigError(
            f"distill.type={cfg.distill.type!r} needs a teacher: set teacher.path (--teacher-path) "
            "and/or teacher.model (--teacher-model)"
        )
