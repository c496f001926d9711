"""The teacher: any classifier, frozen — eval mode, no gradients, outside the optimizer and the student.

Teachers come from a deitlab checkpoint (any registry model, CNN or ViT), from a registry name plus a weights
file (deitlab safetensors, timm state dict or official ``.pth``), or from timm/torchvision when those optional
packages are installed (``timm:regnety_160``, ``torchvision:resnet50``).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from deitlab.errors import CheckpointError, ConfigError
from deitlab.io import read_checkpoint
from deitlab.models import create_model, get_model_entry, list_models
from deitlab.models.vit import DistilledLogits

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "fp16")


class FrozenTeacher:
    """Wraps a classifier so that it can only ever infer.

    ``train()`` calls are ignored (the wrapped model stays in eval mode: BatchNorm statistics never move), every
    parameter has ``requires_grad=False``, and the wrapper is not an ``nn.Module``, so it never shows up in a
    student's ``parameters()`` or ``state_dict()``. Distilled teachers contribute their fused logits.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        precision: str = "fp32",
        channels_last: bool = False,
        fusion: str = "logits",
        input_size: int | None = None,
    ) -> None:
        if precision not in PRECISIONS:
            raise ConfigError(f"teacher precision={precision!r} is not one of {PRECISIONS}")
        self.model = model.eval().requires_grad_(False)
        self.precision = precision
        self.channels_last = channels_last
        self.fusion = fusion
        self.input_size = input_size  # None: the student's images as they are; else resized (see fit_resolution)
        if channels_last:
            self.model.to(memory_format=torch.channels_last)

    @property
    def num_classes(self) -> int:
        n = getattr(self.model, "num_classes", None)
        if n is None:
            last = [m for m in self.model.modules() if isinstance(m, nn.Linear)]
            n = last[-1].out_features if last else -1
        return int(n)

    def train(self, mode: bool = True) -> FrozenTeacher:  # noqa: ARG002 - a teacher never trains
        return self

    def parameters(self):  # noqa: ANN201 - for inspection/tests; these must never reach an optimizer
        return self.model.parameters()

    def to(self, device: torch.device | str) -> FrozenTeacher:
        self.model.to(device)
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = fit_resolution(x, self.input_size)
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        # fp32 switches autocast off: the teacher runs inside the student's (maybe bf16) autocast region
        amp = torch.autocast(x.device.type, dtype=dtype) if dtype else torch.autocast(x.device.type, enabled=False)
        with torch.no_grad(), amp:
            out = self.model(x)
        if isinstance(out, DistilledLogits):
            out = out.fused(self.fusion)
        return out.float()


# ---- the teacher's resolution ---------------------------------------------------------------------------------
def fit_resolution(x: torch.Tensor, size: int | None) -> torch.Tensor:
    """The student's (augmented, mixed) batch at the teacher's input side ``size``: antialiased bicubic resize.

    Fine-tuning a student at a new resolution (DeiT's 224 -> 384) keeps the teacher at its own: it sees the very
    images the student sees, resized (DeiT's official code raises NotImplementedError for this case). Resizing is
    linear, so resizing the normalised batch equals normalising the resized one. ``None`` or a batch already at
    ``size`` passes unchanged.
    """
    if size is None or tuple(x.shape[-2:]) == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=True)


def teacher_input_size(model: nn.Module, requested: int | None, student_size: int) -> int:
    """The side the teacher's inputs are resized to: ``requested`` (``teacher.img_size``), else the teacher's own
    fixed input size (a ViT's patch grid), else the student's (a CNN takes any size)."""
    if requested is not None:
        return int(requested)
    own = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if own is not None:
        own = own if isinstance(own, int) else own[0]
        if own != student_size:
            log.info("teacher: a %d px model; it sees the student's %d px images resized to %d px", own, student_size,
                     own)  # fmt: skip
        return int(own)
    return int(student_size)


def _from_foreign(name: str, path: str | Path | None, num_classes: int) -> nn.Module:
    """A timm or torchvision classifier; its weights are read by deitlab (never by pickle-capable loaders)."""
    lib, _, arch = name.partition(":")
    try:
        if lib == "timm":
            import timm  # optional extra

            model = timm.create_model(arch, pretrained=False, num_classes=num_classes)
        else:
            import torchvision  # optional extra

            model = torchvision.models.get_model(arch, num_classes=num_classes)
    except ImportError as e:
        raise ConfigError(
            f"teacher {name!r} needs the optional package {lib!r} (pip install 'deitlab[timm]'): {e}"
        ) from None
    except (RuntimeError, ValueError) as e:  # unknown architecture name
        raise ConfigError(f"teacher {name!r}: {str(e).splitlines()[0]}") from None
    if path is None:
        raise ConfigError(f"teacher {name!r} has no weights: pass --teacher-path (a checkpoint trained on this data)")
    state, _ = read_checkpoint(path)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(f"teacher {name} cannot load {path}: {str(e).splitlines()[0]}") from None
    return model


def load_teacher(
    name: str | None, path: str | Path | None, *, num_classes: int, in_chans: int, img_size: int
) -> nn.Module:
    """Build a trained teacher classifier for a dataset with ``num_classes`` classes.

    Args:
        name: a registry name, ``timm:<name>`` or ``torchvision:<name>``; optional when ``path`` is a deitlab
            checkpoint (its metadata names the model).
        path: the weights. A registry teacher without weights would be random, so it is an error.
        num_classes, in_chans, img_size: the dataset's; a teacher with another class count is an error.
    """
    if name and name.startswith(("timm:", "torchvision:")):
        model = _from_foreign(name, path, num_classes)
    else:
        if path is None:
            raise ConfigError(
                f"teacher {name!r} has no weights: pass --teacher-path (a checkpoint trained on this dataset)"
                if name
                else "a distillation run needs a teacher: pass --teacher-model and/or --teacher-path"
            )
        state, meta = read_checkpoint(path)
        saved_name = meta.get("model")
        name = name or saved_name
        if not name:
            raise ConfigError(f"teacher checkpoint {path} does not say which model it is; pass --teacher-model")
        if name not in list_models():
            get_model_entry(name)  # raises the unknown-name error with suggestions
        kwargs = json.loads(meta.get("model_kwargs", "{}")) if name == saved_name else {}
        head = state.get("head.weight", state.get("head.fc.weight"))
        ckpt_classes = int(head.shape[0]) if head is not None else num_classes
        if ckpt_classes != num_classes:
            raise ConfigError(
                f"teacher {name} ({path}) predicts {ckpt_classes} classes but the dataset has {num_classes}; "
                "train or fine-tune a teacher on this dataset"
            )
        kwargs.update(num_classes=num_classes)
        kwargs.setdefault("in_chans", in_chans)
        kwargs.setdefault("img_size", img_size)
        model = create_model(name, checkpoint=path, **kwargs)
    n = getattr(model, "num_classes", num_classes)
    if n != num_classes:
        raise ConfigError(f"teacher {name} predicts {n} classes but the dataset has {num_classes}")
    return model
