"""A trained model with its preprocessing and class names: classify images (files, PIL images, tensors).

:func:`deitlab.from_pretrained` and :func:`deitlab.sources.resolve_model` return a :class:`Predictor`;
``deitlab predict`` prints what :meth:`Predictor.iter_predict` yields, so the command line and the Python API
give the same answers.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deitlab.errors import ConfigError, DataError
from deitlab.models import DistilledLogits
from deitlab.optimize import precision_for_pass
from deitlab.preprocess import ImageInput, Preprocessing

HEADS = ("fused", "cls", "dist")
ON_ERROR = ("raise", "skip")
DEFAULT_BATCH = 64
# What `deitlab predict` picks up inside a folder (the ImageFolder reader's list, lower-cased match).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


@dataclass
class Prediction:
    """One image's top-k classes (``label``, ``index``, ``prob``), or the reason it was skipped."""

    image: str
    top_k: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"image": self.image, "error": self.error} if self.error else {"image": self.image, "top_k": self.top_k}


def head_logits(out: torch.Tensor | DistilledLogits, head: str, fusion: str = "logits") -> torch.Tensor:
    """The logits ``(B, classes)`` of one head: a distilled model's ``fused``/``cls``/``dist``; a one-head model's
    only output for ``fused`` and ``cls``."""
    if isinstance(out, DistilledLogits):
        return {"fused": lambda: out.fused(fusion), "cls": lambda: out.cls_logits, "dist": lambda: out.dist_logits}[
            head
        ]()
    if isinstance(out, tuple | list):  # timm's distilled models in training mode
        out = out[0]
    return out


def expand_inputs(items: Iterable[str | Path]) -> Iterator[str]:
    """Paths as given, with every folder replaced by the image files under it (recursively, sorted)."""
    for item in items:
        p = Path(item)
        if p.is_dir():
            found = 0
            for dirpath, dirnames, files in sorted(os.walk(p, followlinks=True)):
                dirnames.sort()
                for f in sorted(files):
                    if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."):
                        found += 1
                        yield os.path.join(dirpath, f)
            if not found:
                raise DataError(f"folder {p} holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
        else:
            yield str(item)


class Predictor:
    """A model in eval mode with its :class:`~deitlab.preprocessing.Preprocessing` and class names.

    Attributes:
        model: the ``nn.Module`` (eval mode).
        preprocessing: how images become inputs; ``None`` when the source did not record it (a bare weights
            file): then only :meth:`logits` on ready tensors works.
        label_names: class names, index = class; ``None`` gives ``"0"``, ``"1"``, ...
        source: where the model came from (for messages).
        config: the model folder's ``config.json`` contents, when there is one.
    """

    def __init__(
        self,
        model: nn.Module,
        preprocessing: Preprocessing | None,
        label_names: Sequence[str] | None = None,
        *,
        source: str = "",
        config: dict[str, Any] | None = None,
    ) -> None:
        self.model = model.eval()
        self.preprocessing = preprocessing
        self.label_names = list(label_names) if label_names is not None else None
        self.source = source
        self.config = config or {}
        self.precision = "fp32"  # autocast of logits(): fp32 | bf16 | fp16; tune() measures which is fastest here

    @property
    def device(self) -> torch.device:
        p = next(iter(self.model.parameters()), None)
        return p.device if p is not None else torch.device("cpu")

    @property
    def num_classes(self) -> int:
        return int(getattr(self.model, "num_classes", len(self.label_names or [])))

    @property
    def labels(self) -> list[str]:
        return self.label_names if self.label_names is not None else [str(i) for i in range(self.num_classes)]

    @property
    def distilled(self) -> bool:
        return bool(getattr(self.model, "distilled", False))

    def to(self, device: torch.device | str) -> Predictor:
        self.model.to(device)
        return self

    def __repr__(self) -> str:
        name = getattr(self.model, "model_name", type(self.model).__name__)
        return f"Predictor({name}, {self.num_classes} classes, {self.preprocessing}, source={self.source!r})"

    def preprocess(self, images: Sequence[ImageInput]) -> torch.Tensor:
        """Images -> the float32 batch the model takes (on the CPU)."""
        return self._preprocessing()(images)

    def _preprocessing(self) -> Preprocessing:
        if self.preprocessing is None:
            raise ConfigError(
                f"{self.source or 'this model'} does not record how to preprocess images (size, channels, "
                "normalisation); use its run directory or model folder, or save one with deitlab.save_pretrained"
            )
        return self.preprocessing

    def check_head(self, head: str) -> None:
        if head not in HEADS:
            raise ConfigError(f"head={head!r} is not one of {', '.join(HEADS)}")
        if head == "dist" and not self.distilled:
            raise ConfigError("this model has one head (no distillation token); use head 'fused' or 'cls'")

    def tune(self, images: int, batch_size: int = DEFAULT_BATCH, precision: str = "auto") -> str:
        """Set the precision (and attention kernel) to classify ``images`` images in batches of ``batch_size``
        with, chosen by :func:`deitlab.optimize_for` as ``deitlab eval`` and training do: measured on this machine
        when ``precision`` is ``auto`` and the pass is long enough to repay measuring (else fp32). Returns it."""
        size = tuple(self._preprocessing().input_size)
        self.precision = precision_for_pass(self.model, precision, input_size=size, device=self.device,
                                            batch_size=batch_size, images=images)  # fmt: skip
        return self.precision

    @torch.inference_mode()
    def logits(self, x: torch.Tensor, head: str = "fused") -> torch.Tensor:
        """The model's logits ``(B, classes)`` (float32) for a preprocessed float batch ``x``, from ``head``, run
        in :attr:`precision`."""
        self.check_head(head)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        with torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            out = self.model(x.to(self.device))
        return head_logits(out, head, getattr(self.model, "fusion", "logits")).float()

    def predict(
        self,
        images: Sequence[ImageInput],
        *,
        top_k: int = 5,
        head: str = "fused",
        batch_size: int = DEFAULT_BATCH,
        on_error: str = "raise",
    ) -> list[Prediction]:
        """Top-k classes of each image (paths, PIL images, or uint8 / [0, 1] float ``(C, H, W)`` tensors).

        ``on_error="raise"`` raises :class:`~deitlab.errors.DataError` for the first unreadable image;
        ``"skip"`` returns a :class:`Prediction` with ``error`` set for it and goes on.
        """
        return list(self.iter_predict(images, top_k=top_k, head=head, batch_size=batch_size, on_error=on_error))

    def iter_predict(
        self,
        images: Iterable[ImageInput],
        *,
        top_k: int = 5,
        head: str = "fused",
        batch_size: int = DEFAULT_BATCH,
        on_error: str = "raise",
    ) -> Iterator[Prediction]:
        """:meth:`predict`, one result at a time, decoding ``batch_size`` images at once (any number in all)."""
        self.check_head(head)
        if on_error not in ON_ERROR:
            raise ConfigError(f"on_error={on_error!r} is not one of {', '.join(ON_ERROR)}")
        if batch_size < 1 or top_k < 1:
            raise ConfigError(f"batch_size={batch_size} and top_k={top_k} must be >= 1")
        prep = self._preprocessing()
        k = min(top_k, self.num_classes)
        pending: list[tuple[str, torch.Tensor]] = []
        for i, image in enumerate(images):
            name = _name(image, i)
            try:
                pending.append((name, prep.to_pixels(image)))
            except DataError as e:
                if on_error == "raise":
                    raise
                yield Prediction(name, error=str(e))
            if len(pending) == batch_size:
                yield from self._run_batch(pending, prep, head, k)
                pending = []
        if pending:
            yield from self._run_batch(pending, prep, head, k)

    def _run_batch(
        self, pending: list[tuple[str, torch.Tensor]], prep: Preprocessing, head: str, k: int
    ) -> Iterator[Prediction]:
        x = prep.pixels_to_input(torch.stack([p for _, p in pending]))
        probs = self.logits(x, head).softmax(-1).cpu()
        values, indices = probs.topk(k, dim=-1)
        labels = self.labels
        for (name, _), vals, idx in zip(pending, values.tolist(), indices.tolist()):
            top = [{"label": labels[j], "index": j, "prob": round(v, 6)} for v, j in zip(vals, idx)]
            yield Prediction(name, top)


def _name(image: ImageInput, index: int) -> str:
    if isinstance(image, str | Path):
        return str(image)
    return f"<{type(image).__name__} {index}>"
