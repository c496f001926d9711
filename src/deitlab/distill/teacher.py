"""The teacher: any classifier, frozen — eval mode, no gradients, outside the optimizer and the student.

Teachers come from whatever :func:`deitlab.sources.resolve_model` takes: a run directory, a model folder, a
deitlab checkpoint (any registry model, CNN or ViT), a registry name plus a weights file (timm state dict or
official ``.pth``), timm/torchvision architectures with local weights when those optional packages are installed
(``timm:regnety_160=FILE``, or ``--teacher-model timm:regnety_160 --teacher-path FILE``), or an http(s) URL.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from deitlab.errors import ConfigError
from deitlab.models.vit import DistilledLogits
from deitlab.sources import resolve_model, split_foreign

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


def own_input_size(model: nn.Module) -> int | None:
    """The one input side a model accepts (a ViT's patch grid fixes it), or None (a CNN takes any size)."""
    own = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if own is None:
        return None
    return int(own if isinstance(own, int) else own[0])


def teacher_input_size(model: nn.Module, requested: int | None, student_size: int) -> int:
    """The side the teacher's inputs are resized to: ``requested`` (``teacher.img_size``), else the teacher's own
    fixed input size (a ViT's patch grid), else the student's (a CNN takes any size)."""
    if requested is not None:
        return int(requested)
    own = own_input_size(model)
    if own is None:
        return int(student_size)
    if own != student_size:
        log.info("teacher: a %d px model; it sees the student's %d px images resized to %d px", own, student_size, own)
    return own


def load_teacher(
    name: str | None, path: str | Path | None, *, num_classes: int, in_chans: int, img_size: int
) -> nn.Module:
    """Build a trained teacher classifier for a data set of ``num_classes`` classes, ``in_chans`` channels and
    ``img_size`` pixels.

    Args:
        name: a registry name, or ``timm:NAME`` / ``torchvision:NAME``; optional when ``path`` names its model
            (deitlab checkpoints, model folders and runs do). ``timm:NAME=FILE`` carries its weights itself.
        path: anything :func:`deitlab.sources.resolve_model` takes: a run, a model folder, a weights file,
            ``timm:NAME=FILE`` or an http(s) URL. A teacher without weights would be random, so it is an error.

    Raises:
        ConfigError: no weights, an unknown model, or a teacher that does not fit the data (channels, size,
            classes) -- one line naming both sides.
        CheckpointError: weights that cannot be read or do not fit the named architecture.
    """
    if path is None:
        if name and (split_foreign(name) or (None, None, None))[2]:
            name, path = None, name  # --teacher-model timm:NAME=FILE
        elif name:
            raise ConfigError(
                f"teacher {name!r} has no weights: pass --teacher-path (a checkpoint, model folder or run trained "
                f"on this data{', or ' + name + '=FILE' if split_foreign(name) else ''})"
            )
        else:
            raise ConfigError("a distillation run needs a teacher: pass --teacher-model and/or --teacher-path")
    model = resolve_model(path, model_name=name, in_chans=in_chans, img_size=img_size).model
    fit_size = own_input_size(model) or img_size  # a ViT teacher sees resized batches (teacher_input_size)
    check_teacher_fits(model, name or str(path), num_classes=num_classes, in_chans=in_chans, img_size=fit_size)
    return model


def check_teacher_fits(model: nn.Module, label: str, *, num_classes: int, in_chans: int, img_size: int) -> None:
    """Refuse, in one line, a teacher whose input channels, input size or class count do not fit the data."""
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    chans = getattr(getattr(model, "patch_embed", None), "in_chans", conv.in_channels if conv is not None else None)
    if chans is not None and chans != in_chans:
        raise ConfigError(
            f"teacher {label} takes {chans}-channel images but the data has {in_chans} channel(s); "
            "use a teacher trained on this data"
        )
    device = next(iter(model.parameters()), torch.empty(0)).device
    x = torch.zeros(1, in_chans, img_size, img_size, device=device)
    try:
        with torch.no_grad():
            out = model.eval()(x)
    except (RuntimeError, ValueError, AssertionError) as e:
        raise ConfigError(
            f"teacher {label} cannot take the data's {in_chans}x{img_size}x{img_size} images "
            f"({str(e).splitlines()[0][:200]}); use a teacher trained at this size"
        ) from None
    logits = out.fused() if isinstance(out, DistilledLogits) else out[0] if isinstance(out, tuple | list) else out
    if logits.shape[-1] != num_classes:
        raise ConfigError(
            f"teacher {label} predicts {logits.shape[-1]} classes but the dataset has {num_classes}; "
            "train or fine-tune a teacher on this data set"
        )


# ---- remembering the teacher's answers ------------------------------------------------------------------------
# Bytes a remembered image costs besides its logits: the 16-byte digest as a bytes object, its row number and its
# dict entry (133 measured with tracemalloc for 100k images; rounded up).
ENTRY_OVERHEAD = 160


class CachedTeacher:
    """A teacher that answers each distinct input image once.

    When the student's training views are few per image (no random crop, RandAugment, erasing or mixing: only the
    image and its mirror), the frozen teacher is asked the same question every epoch. This wrapper keys each image
    of a batch by a 128-bit BLAKE2 digest of its exact bytes, runs the teacher only on the images it has not seen,
    and returns the remembered logits (float32, as first computed) for the others: over a run of E epochs the teacher
    then runs on about twice the training set instead of E times it. Inputs of any other kind of augmentation never
    repeat, so the cache stops growing at ``max_bytes`` (logits, digests and index) and the teacher then runs as
    usual on misses.
    """

    def __init__(self, teacher: FrozenTeacher, *, max_bytes: int = 2 << 30) -> None:  # 2 GiB of logits
        self.teacher = teacher
        self.max_bytes = int(max_bytes)
        self._rows: dict[bytes, int] = {}  # digest -> row of self._table
        self._table = torch.empty(0)  # (capacity, K) float32 logits on the CPU, grown by doubling
        self.hits = 0
        self.misses = 0
        self._marked = (0, 0)  # (hits, misses) at the last reused_since_last_call

    @property
    def model(self) -> nn.Module:
        """The wrapped teacher's network."""
        return self.teacher.model

    def __len__(self) -> int:
        """How many distinct images' logits are remembered."""
        return len(self._rows)

    def _digests(self, x: torch.Tensor) -> list[bytes]:
        rows = x.detach().reshape(x.shape[0], -1).contiguous().cpu().view(torch.uint8).numpy()
        return [hashlib.blake2b(memoryview(r), digest_size=16).digest() for r in rows]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        keys = self._digests(x)
        found = [self._rows.get(k) for k in keys]
        todo = [i for i, row in enumerate(found) if row is None]
        self.hits += len(keys) - len(todo)
        self.misses += len(todo)
        if len(todo) == len(keys):
            out = self.teacher(x)
            self._remember(keys, out)
            return out
        known = [i for i, row in enumerate(found) if row is not None]
        remembered = self._table[[found[i] for i in known]].to(x.device)  # (B_known, K)
        out = remembered.new_empty(len(keys), remembered.shape[1])
        out[known] = remembered
        if todo:
            fresh = self.teacher(x[todo])
            out[todo] = fresh.to(out.dtype)
            self._remember([keys[i] for i in todo], fresh)
        return out

    def _remember(self, keys: list[bytes], logits: torch.Tensor) -> None:
        """Append the logits of images not seen before to the table (float32 rows), up to ``max_bytes``."""
        rows = logits.detach().float().cpu()
        n, k = len(self._rows), rows.shape[1]
        if (n + len(keys)) * (k * 4 + ENTRY_OVERHEAD) > self.max_bytes:
            return
        if self._table.shape[0] < n + len(keys):
            grown = torch.empty(max(2 * self._table.shape[0], n + len(keys), 1024), k)
            if n:
                grown[:n] = self._table[:n]
            self._table = grown
        for key, row in zip(keys, rows, strict=True):
            if key not in self._rows:  # the same image twice in one batch (repeated augmentation)
                self._table[len(self._rows)] = row
                self._rows[key] = len(self._rows)

    def reused_since_last_call(self) -> float | None:
        """Percent of the images asked about since the previous call answered from memory (None: none asked)."""
        hits, misses = self.hits - self._marked[0], self.misses - self._marked[1]
        self._marked = (self.hits, self.misses)
        return 100.0 * hits / (hits + misses) if hits + misses else None

    def summary(self) -> str:
        total = self.hits + self.misses
        share = 100.0 * self.hits / total if total else 0.0
        return (
            f"teacher cache: the teacher ran on {self.misses:,} of {total:,} training images ({share:.0f}% "
            f"answered from memory; {len(self):,} distinct images remembered)"
        )
