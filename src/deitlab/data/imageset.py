"""The records every reader deals with: :class:`ImageSet` (a labelled uint8 image tensor in memory),
:class:`DatasetSpec` (one registry entry), and the split helpers. A leaf: readers import it, it imports no reader.

Splits. ``"test"`` is the official test set. ``"val"`` is a deterministic, *stratified* held-out slice of the
official train set -- for each class, a ``numpy.random.default_rng(seed)`` permutation of that class's indices
(classes visited in label order) gives its first ``round(val_fraction * n_class)`` images -- and ``"train"`` is the
rest of the official train set, in file order. With ``val_fraction=1/12`` Fashion-MNIST gives 500 images per
class: 55,000 train / 5,000 val / 10,000 test. The test split never depends on ``seed``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from deitlab.errors import ConfigError, DataError, DataNotFoundError

SPLITS = ("train", "val", "test")


@dataclass
class ImageSet:
    """A labelled image set held in memory.

    Attributes:
        images: uint8 ``(N, C, H, W)`` pixels.
        labels: int64 ``(N,)`` class indices in ``[0, len(classes))``.
        classes: class names, index = label.
        mean: per-channel mean in [0, 1] pixel units (for normalisation).
        std: per-channel standard deviation in [0, 1] pixel units.
        name: data set name and split, for messages and logs.
        skipped: files that a reader skipped as unreadable (ImageFolder with ``bad_images="skip"``).
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    name: str
    skipped: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise DataError(
                f"{self.name}: images must be a uint8 (N, C, H, W) tensor, got {self.images.dtype} "
                f"{tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.shape != (self.images.shape[0],):
            raise DataError(
                f"{self.name}: labels must be int64 of shape ({self.images.shape[0]},), got {self.labels.dtype} "
                f"{tuple(self.labels.shape)}"
            )
        if len(self.mean) != self.in_chans or len(self.std) != self.in_chans:
            raise DataError(
                f"{self.name}: mean/std have {len(self.mean)}/{len(self.std)} entries for {self.in_chans} channels"
            )
        if len(self.labels):
            lo, hi = int(self.labels.min()), int(self.labels.max())
            if lo < 0 or hi >= self.num_classes:
                raise DataError(
                    f"{self.name}: labels span {lo}..{hi} but there are {self.num_classes} classes "
                    f"(allowed 0..{self.num_classes - 1}); the label file does not match the class list"
                )

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_chans(self) -> int:
        return self.images.shape[1]

    @property
    def img_size(self) -> tuple[int, int]:
        """``(H, W)`` of every image."""
        return (self.images.shape[2], self.images.shape[3])

    def subset(self, indices: Sequence[int] | torch.Tensor | np.ndarray) -> ImageSet:
        """A new ImageSet with the given rows (copied), same classes and statistics."""
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return ImageSet(
            self.images[idx],
            self.labels[idx],
            list(self.classes),
            self.mean,
            self.std,
            self.name,
            list(self.skipped),
        )


@dataclass(frozen=True)
class DatasetSpec:
    """One data set of the registry: how to read it and what is known about it before reading.

    Attributes:
        name: the name :func:`~deitlab.data.datasets.load_dataset` takes.
        reader: ``reader(spec, root, *, split, seed, [val_fraction], **options) -> ImageSet``.
        classes: class names, index = label; ``None`` when they are read from the data.
        mean, std: per-channel statistics in [0, 1] units; ``None`` when computed from the data.
        in_chans: channels (``None`` when set by the data); for ImageFolder and synthetic, the default.
        img_size: native side in pixels (``None`` when set by the data); for ImageFolder, the default decode size.
        source: what files it reads, in a few words.
        hint: how to get the data; ends the messages about missing files.
        val_fraction: default share of each class of the official train set held out as ``"val"``; ``None``
            when the val split is a folder or generated, and ``val_fraction`` is refused.
        options: the reader-specific keyword options ``load_dataset`` passes through.
        default_root: where the files are when no path is given.
        splits: the splits it offers.
    """

    name: str
    reader: Callable[..., ImageSet]
    classes: tuple[str, ...] | None
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    in_chans: int | None
    img_size: int | None
    source: str
    hint: str
    val_fraction: float | None = None
    options: tuple[str, ...] = ()
    default_root: Path | None = None
    splits: tuple[str, ...] = SPLITS

    @property
    def num_classes(self) -> int | None:
        return None if self.classes is None else len(self.classes)

    def image_set(
        self, split: str, images: np.ndarray, labels: np.ndarray, classes: Sequence[str] | None = None
    ) -> ImageSet:
        """An :class:`ImageSet` named ``name/split`` with this spec's statistics from numpy ``(N, C, H, W)`` uint8
        pixels (copied) and labels; ``classes`` overrides the spec's (e.g. names read from the data)."""
        return ImageSet(
            torch.from_numpy(np.array(images, copy=True)),
            torch.from_numpy(labels.astype(np.int64)),
            list(self.classes if classes is None else classes),
            self.mean,
            self.std,
            f"{self.name}/{split}",
        )


def missing_data(message: str) -> DataNotFoundError:
    """The error for a data file or folder that is not there: a ``DataError`` that is also a ``FileNotFoundError``."""
    return DataNotFoundError(message)


def require_root(spec: DatasetSpec, root: Path | None) -> Path:
    """``root``, or the spec's default root; a :class:`DataError` with the spec's hint when there is neither."""
    if root is None:
        if spec.default_root is None:
            raise missing_data(f"{spec.name} needs a data path; {spec.hint}")
        root = spec.default_root
    return Path(root)


def require_dir(spec: DatasetSpec, root: Path | None) -> Path:
    """:func:`require_root`, which must also be an existing folder."""
    root = require_root(spec, root)
    if not root.is_dir():
        raise missing_data(f"{spec.name} data path {root} does not exist; {spec.hint}")
    return root


def stratified_holdout(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (kept, held-out), holding out ``round(fraction * n_c)`` of each class ``c``.

    Deterministic for a given ``seed``; both index arrays are sorted (file order).
    """
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"val_fraction={fraction} is out of range; use a value in [0, 1)")
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        held.append(rng.permutation(idx)[: int(round(fraction * len(idx)))])
    held_idx = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    mask = np.ones(len(labels), dtype=bool)
    mask[held_idx] = False
    return np.flatnonzero(mask), held_idx


def train_val_split(
    images: np.ndarray, labels: np.ndarray, split: str, fraction: float, seed: int, name: str
) -> tuple[np.ndarray, np.ndarray]:
    """The ``"train"`` or ``"val"`` part of an official train set (see the module docstring)."""
    keep, held = stratified_holdout(labels, fraction, seed)
    if split == "val" and len(held) == 0:
        raise ConfigError(f"{name}: val_fraction={fraction} leaves no validation images; use a value in (0, 1)")
    idx = held if split == "val" else keep
    return images[idx], labels[idx]
