"""idx files (MNIST, Fashion-MNIST): ``train-images-idx3-ubyte[.gz]`` and friends, gzipped or raw."""

from __future__ import annotations

import gzip
import math
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from deitlab.data.imageset import DatasetSpec, ImageSet, missing_data, require_dir, train_val_split
from deitlab.errors import DataError

IDX_FILES = {  # split -> (image file, label file), without the optional .gz
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IDX_UBYTE = 0x08  # the idx type code of unsigned bytes, the only one these sets use
TORCHVISION_DIRS = ("FashionMNIST", "MNIST")  # torchvision's layout: root/<dir>/raw/<idx files>


def read_idx(path: str | Path, ndim: int | None = None) -> np.ndarray:
    """Read one idx file (``.gz`` or raw) of unsigned bytes into an array of its declared shape.

    Raises:
        DataError: the file is missing, not valid gzip, has a wrong magic number or dimension count, or its size
            does not match the header.
    """
    path = Path(path)
    if not path.is_file():
        raise missing_data(f"idx file {path} does not exist")
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"idx file {path} is not a readable gzip file ({e}); re-download or re-extract it") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != IDX_UBYTE:
        magic = raw[:4].hex() if len(raw) >= 4 else f"{len(raw)} bytes"
        raise DataError(f"idx file {path} has magic {magic}; expected 0000 08 0N (unsigned-byte idx with N dimensions)")
    nd = raw[3]
    if ndim is not None and nd != ndim:
        raise DataError(f"idx file {path} declares {nd} dimensions; expected {ndim}")
    header = 4 + 4 * nd  # magic, then one big-endian uint32 per dimension
    if len(raw) < header:
        raise DataError(f"idx file {path} is truncated: {len(raw)} bytes, shorter than its {header}-byte header")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(nd))
    expected = header + math.prod(dims)
    if len(raw) != expected:
        raise DataError(
            f"idx file {path} holds {len(raw)} bytes but its header {dims} needs {expected}; "
            "the file is truncated or corrupt"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()  # writable, owns its memory


def find_idx_file(roots: Sequence[Path], stem: str, hint: str) -> Path:
    """The first of ``root/stem.gz``, ``root/stem`` over ``roots``."""
    for r in roots:
        for cand in (r / f"{stem}.gz", r / stem):
            if cand.is_file():
                return cand
    raise missing_data(f"no {stem}[.gz] under {roots[0]}; {hint}")


def read_idx_set(spec: DatasetSpec, root: Path | None, *, split: str, val_fraction: float, seed: int) -> ImageSet:
    """An MNIST-like set: 28x28 grey images and labels in idx files under ``root`` (or torchvision's layout)."""
    root = require_dir(spec, root)
    roots = [root, root / "raw"] + [root / d / "raw" for d in TORCHVISION_DIRS]
    img_stem, lbl_stem = IDX_FILES["test" if split == "test" else "train"]
    img_path = find_idx_file(roots, img_stem, spec.hint)
    lbl_path = find_idx_file(roots, lbl_stem, spec.hint)
    images = read_idx(img_path, ndim=3)
    labels = read_idx(lbl_path, ndim=1)
    if len(images) != len(labels):
        raise DataError(f"{img_path} holds {len(images)} images but {lbl_path} holds {len(labels)} labels")
    if len(labels) and labels.max() >= spec.num_classes:
        raise DataError(f"{lbl_path} has label {labels.max()}; allowed 0..{spec.num_classes - 1}")
    if split != "test":
        images, labels = train_val_split(images, labels, split, val_fraction, seed, spec.name)
    return spec.image_set(split, images[:, None], labels)  # (N, 1, 28, 28)
