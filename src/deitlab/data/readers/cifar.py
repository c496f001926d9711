"""CIFAR-10 / CIFAR-100 binary batches: records of label byte(s) then 3,072 pixel bytes (R, G, B planes, 32x32)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deitlab.data.imageset import DatasetSpec, ImageSet, missing_data, require_dir, train_val_split
from deitlab.errors import DataError

CIFAR_PIXELS = 3 * 32 * 32  # bytes of one image record after its label byte(s)


@dataclass(frozen=True)
class CifarLayout:
    """Where a CIFAR variant keeps its files and labels."""

    folder: str  # the extracted archive's sub-folder, used when root holds it
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    label_bytes: int  # label bytes before each image
    label_col: int  # which of them is the label used (CIFAR-100: the fine label)
    names_file: str  # optional class names, one per line


CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR10 = CifarLayout("cifar-10-batches-bin", CIFAR10_TRAIN_FILES, ("test_batch.bin",), 1, 0, "batches.meta.txt")
CIFAR100 = CifarLayout("cifar-100-binary", ("train.bin",), ("test.bin",), 2, 1, "fine_label_names.txt")


def read_cifar_records(path: Path, label_bytes: int, label_col: int, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 3, 32, 32)`` uint8 and int64 labels of one binary batch file."""
    rec = label_bytes + CIFAR_PIXELS
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % rec:
        raise DataError(
            f"CIFAR file {path} holds {raw.size} bytes, not a whole number of {rec}-byte records; "
            "it is truncated or not the binary version"
        )
    raw = raw.reshape(-1, rec)
    labels = raw[:, label_col].astype(np.int64)
    if labels.max() >= num_classes:
        raise DataError(f"CIFAR file {path} has label {labels.max()}; allowed 0..{num_classes - 1}")
    return raw[:, label_bytes:].reshape(-1, 3, 32, 32), labels


def read_names(path: Path, n: int) -> list[str] | None:
    """Class names, one per non-empty line, or ``None`` without the file."""
    if not path.is_file():
        return None
    names = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    if len(names) != n:
        raise DataError(f"{path} lists {len(names)} class names; expected {n}")
    return names


def read_cifar(
    spec: DatasetSpec, root: Path | None, layout: CifarLayout, *, split: str, val_fraction: float, seed: int
) -> ImageSet:
    """A CIFAR variant from ``root`` or its extracted sub-folder; class names from the names file if present."""
    root = require_dir(spec, root)
    if (root / layout.folder).is_dir():
        root = root / layout.folder
    files = layout.test_files if split == "test" else layout.train_files
    missing = [f for f in files if not (root / f).is_file()]
    if missing:
        raise missing_data(f"{spec.name}: {root} lacks {', '.join(missing)}; {spec.hint}")
    k = spec.num_classes
    parts = [read_cifar_records(root / f, layout.label_bytes, layout.label_col, k) for f in files]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    if split != "test":
        images, labels = train_val_split(images, labels, split, val_fraction, seed, spec.name)
    return spec.image_set(split, images, labels, read_names(root / layout.names_file, k))


def read_cifar10(spec: DatasetSpec, root: Path | None, **kw: object) -> ImageSet:
    return read_cifar(spec, root, CIFAR10, **kw)


def read_cifar100(spec: DatasetSpec, root: Path | None, **kw: object) -> ImageSet:
    return read_cifar(spec, root, CIFAR100, **kw)
