"""What every config key means: one table (:data:`KEY_HELP`), rendered by ``deitlab train --help`` with each key's
default and its DeiT/timm flag. A test checks that every key of the schema has a line here and no line is stale.
"""

from __future__ import annotations

import dataclasses
import textwrap
from typing import Any

from deitlab.config.schema import ALIASES, CHOICES, Config, all_keys, get_value

KEY_HELP: dict[str, str] = {
    # model
    "model.name": "registry name of the student (`deitlab models` lists them)",
    "model.img_size": "input side in pixels; none: the data set's native size (image folders: the model's own)",
    "model.patch_size": "patch side (patchify stems); none: the registry default",
    "model.drop_path_rate": "stochastic depth: the last block's drop probability (linear over depth)",
    "model.drop_rate": "dropout before the classifier",
    "model.channels_last": "NHWC memory format: faster convolutions (CNN students)",
    "model.kwargs": "any other create_model argument, e.g. --set model.kwargs.depth=6",
    "model.finetune": "start from these weights: pos-embed resampled, new head if the class count differs, a "
    "plain checkpoint starts a distilled student (dist token/head copied from cls)",
    # teacher
    "teacher.model": "teacher: registry name, timm:<name> or torchvision:<name>; none: named by its checkpoint",
    "teacher.path": "teacher weights (.safetensors, timm state dict or DeiT .pth)",
    "teacher.channels_last": "run the teacher in NHWC (faster for CNN teachers)",
    "teacher.img_size": "the teacher's input side (the student's batch is resized to it); none: its own fixed size "
    "(a ViT's), else the student's",
    # distill
    "distill.type": "none | soft (KL, DeiT eq. 2) | hard (teacher argmax, DeiT eq. 3)",
    "distill.alpha": "weight of the distillation term: (1-alpha)*base + alpha*distill",
    "distill.tau": "soft-distillation temperature (the KL term is scaled by tau^2)",
    "distill.reduction": "soft KL reduction: auto (deit for students with a distillation token, batchmean for "
    "classic KD) | deit (sum / (batch*classes), official code) | batchmean (Hinton, timm)",
    "distill.cache_teacher": "remember the teacher's logits per distinct training image (the teacher then runs "
    "on ~2x the training set, not every epoch): auto = on the CPU when each image has at most two training views "
    "(no random crop, RandAugment, erasing or mixing)",
    "distill.teacher_label_smoothing": "label smoothing of the teacher's hard labels (paper: 0.1 possible)",
    # data
    "data.dataset": "fashion_mnist | mnist | digits | cifar10 | cifar100 | imagefolder | npz | synthetic",
    "data.path": "files of the data set (imagefolder: DIR with train/, val/ and/or test/ class folders)",
    "data.batch_size": "GLOBAL batch over all processes (lr scales with it unless optim.scale_lr=false); DeiT: 1024",
    "data.eval_batch_size": "evaluation batch; none: 2 x batch_size",
    "data.val_fraction": "share of each class of the official train set held out as val (none: the set's default)",
    "data.repeated_aug": "repeated augmentation: copies of each image per epoch (1 = off, DeiT: 3)",
    "data.bad_images": "unreadable image files: error | skip (image folders)",
    "data.stream": "image folders: none = in memory when the decoded set fits data.memory_budget_gb, else "
    "decoded per epoch from disk; true = always stream; false = in memory or stop",
    "data.memory_budget_gb": "memory the decoded image folder may take (GiB); none: a quarter of RAM / processes "
    "per node",
    "data.workers": "DataLoader worker processes that decode and crop image-folder images",
    "data.pad": "zero-pad every image by this many pixels per side at load (28 -> 32 px with 2)",
    "data.limit_train": "use only N training images (quick runs, data-size studies)",
    "data.limit_train_mode": "first: the first N training images | stratified: N/K per class, seeded",
    "data.limit_train_seed": "the stratified subset's seed, apart from train.seed (every seed sees the same images)",
    "data.limit_eval": "use only the first N evaluation (and test) images",
    "data.eval_split": "what the per-epoch evaluation reads: val | test",
    "data.test_at_end": "evaluate the final model on the test split (an image folder without test/: on val)",
    # aug
    "aug.crop_scale": "RandomResizedCrop area range on the original image; none: no random crop",
    "aug.crop_ratio": "RandomResizedCrop aspect-ratio range",
    "aug.hflip": "horizontal flip probability",
    "aug.rand_augment": "timm RandAugment string (rand-m9-mstd0.5-inc1 = DeiT's); none: off",
    "aug.re_prob": "random erasing probability (pixel mode, one box)",
    "aug.mixup": "Mixup alpha (0 = off)",
    "aug.cutmix": "CutMix alpha (0 = off)",
    "aug.mix_prob": "probability that a batch is mixed at all",
    "aug.switch_prob": "probability of CutMix instead of Mixup when both are on",
    "aug.label_smoothing": "label smoothing of the ground-truth targets",
    "aug.eval_crop_pct": "evaluation: resize the shorter side to size / crop_pct, then centre-crop size",
    "aug.interpolation": "resampling of crops and resizes: bicubic | bilinear",
    # optim
    "optim.name": "adamw | sgd",
    "optim.lr": "base learning rate (x batch/512 when optim.scale_lr)",
    "optim.scale_lr": "scale the lr by global batch / 512 (DeiT's linear rule)",
    "optim.weight_decay": "weight decay (not on norms, biases, tokens, position embeddings)",
    "optim.eps": "AdamW epsilon",
    "optim.betas": "AdamW betas",
    "optim.momentum": "SGD momentum",
    "optim.warmup_epochs": "linear warm-up length in epochs (fractions allowed)",
    "optim.warmup_lr": "learning rate at the start of the warm-up",
    "optim.min_lr": "learning rate at the end of the cosine",
    "optim.clip_grad": "clip the global gradient norm to this; none: no clipping",
    # train
    "train.epochs": "training epochs",
    "train.precision": "auto (fastest measured here, cached; the run saves optimize.json) | fp32 | bf16 | fp16 (CUDA)",
    "train.compile": "torch.compile: auto (when the run repays the measured compile time) | always | never",
    "train.seed": "seed of weights, sampler order and augmentation",
    "train.device": "auto | cpu | cuda",
    "train.threads": "CPU threads; none: PyTorch's default, halved only if that measures 10% faster",
    "train.ema": "keep an exponential moving average of the weights (evaluated too); DeiT: on",
    "train.ema_decay": "EMA decay per step",
    "train.output_dir": "run directory; none: runs/<model>-<dataset>-<time>",
    "train.resume": "continue a run exactly: its directory or checkpoint file",
    "train.overwrite": "replace a run already in output_dir",
    "train.checkpoint_every_steps": "also checkpoint every N steps (0: at epoch ends only)",
    "train.keep_last": "resume checkpoints kept",
    "train.eval_every": "evaluate every N epochs (and after the last)",
    "train.fusion": "what 'acc' reports for distilled students: logits (average) | softmax (average)",
    "train.max_nonfinite": "consecutive non-finite steps before the run stops",
    "train.progress": "progress bars on a terminal",
    "train.deterministic": "torch deterministic algorithms (slower)",
    "train.headline_weights": "whose top-1 the results.json headline quotes: raw | ema (needs train.ema)",
    # log
    "log.every_steps": "one steps.jsonl row (loss parts, lr, grad norm, img/s, memory) every N optimizer steps; 0: off",
    "log.tensorboard": "TensorBoard scalars in <run>/tensorboard (needs pip install 'deitlab[tensorboard]')",
}


def _flag_names() -> dict[str, str]:
    return {key: f"--{flag}" for flag, key in ALIASES.items()}


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:g}"
    return str(value) if value != {} else "{}"


def keys_help(width: int = 120) -> str:
    """Every config key, grouped by section: ``  key  default  meaning [--flag]`` lines."""
    cfg, flags = Config(), _flag_names()
    lines: list[str] = []
    key_w = max(len(k) for k in all_keys(cfg)) + 2
    for section in dataclasses.fields(cfg):
        lines.append(f"{section.name}:")
        for key in (k for k in all_keys(cfg) if k.startswith(section.name + ".")):
            meaning = KEY_HELP.get(key, "")
            if key in CHOICES and "|" not in meaning:
                meaning += f" ({' | '.join(CHOICES[key])})"
            if key in flags:
                meaning += f" [{flags[key]}]"
            head = f"  {key:<{key_w}}{_show(get_value(cfg, key)):<13} "
            indent = 2 + key_w + 14
            text = textwrap.wrap(meaning, max(40, width - indent))
            if len(head) > indent:  # a long default: the meaning starts on the next line
                lines.append(head.rstrip())
                head = " " * indent
            lines.append(head + (text[0] if text else ""))
            lines += [" " * indent + t for t in text[1:]]
    return "\n".join(lines)
