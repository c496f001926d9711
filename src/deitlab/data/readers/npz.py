"""Your own arrays: a NumPy ``.npz`` file with ``x_train``/``y_train`` (and optionally ``x_val``/``y_val``,
``x_test``/``y_test``, ``classes``), as Keras-style data sets are usually saved.

Images may be uint8 (0-255) or float in [0, 1], laid out ``(N, H, W)``, ``(N, H, W, C)`` or ``(N, C, H, W)``
with C in {1, 3}. Files are read with ``allow_pickle=False``. NaN/Inf or out-of-range pixels and labels are
errors naming the file, the array and the first bad index. Without ``x_val``, ``"val"`` is held out of
``x_train`` as for the official data sets. Statistics come from ``x_train``.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from deitlab.data.imageset import DatasetSpec, ImageSet, missing_data, require_root, train_val_split
from deitlab.errors import DataError

MIN_STD = 1e-3  # floor of the per-channel std taken from x_train, so a constant channel does not divide by 0
SPLIT_ARRAYS = {"train": ("x_train", "y_train"), "val": ("x_val", "y_val"), "test": ("x_test", "y_test")}


def to_nchw_uint8(x: np.ndarray, path: Path, key: str) -> np.ndarray:
    """Pixels of any accepted layout and type as contiguous uint8 ``(N, C, H, W)``; errors name ``path``/``key``."""
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise DataError(
            f"{path}: {key} has shape {x.shape}; expected (N, H, W), (N, H, W, C) or (N, C, H, W), C in 1, 3"
        )
    if np.issubdtype(x.dtype, np.floating):
        bad = ~np.isfinite(x)
        if bad.any():
            i = int(np.argwhere(bad)[0][0])
            raise DataError(f"{path}: {key} holds NaN or Inf (first in image {i}); clean the data before training")
        if x.min() < 0 or x.max() > 1:
            raise DataError(f"{path}: float {key} spans [{x.min():.3g}, {x.max():.3g}]; expected [0, 1] (or uint8)")
        x = np.round(x * 255)
    elif x.dtype != np.uint8 and (x.min() < 0 or x.max() > 255):
        raise DataError(f"{path}: integer {key} spans [{x.min()}, {x.max()}]; expected 0..255")
    return np.ascontiguousarray(x.astype(np.uint8))


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """Every array of ``path`` (no pickles), or a :class:`DataError` naming the file."""
    if not path.is_file():
        raise missing_data(f"npz file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{path} is not a readable .npz file ({str(e).splitlines()[0][:120]})") from None
    if "x_train" not in arrays or "y_train" not in arrays:
        raise DataError(f"{path} must hold x_train and y_train (found: {', '.join(sorted(arrays)) or 'nothing'})")
    return arrays


def _classes(arrays: dict[str, np.ndarray]) -> list[str]:
    """The ``classes`` array, or ``0..max label`` over every label array."""
    if "classes" in arrays:
        return [str(c) for c in arrays["classes"]]
    all_labels = np.concatenate(
        [np.asarray(arrays[k]).reshape(-1) for k in ("y_train", "y_val", "y_test") if k in arrays]
    )
    return [str(i) for i in range(int(all_labels.max()) + 1 if len(all_labels) else 0)]


def read_npz(path: str | Path, *, split: str, val_fraction: float = 0.1, seed: int = 0) -> ImageSet:
    """Read ``split`` from a ``.npz`` file (``path`` is the file, or a directory holding ``data.npz``)."""
    path = Path(path)
    path = path / "data.npz" if path.is_dir() else path
    arrays = load_npz(path)
    if split == "test" and "x_test" not in arrays:
        raise DataError(f"{path} has no x_test/y_test for the test split")
    key, label_key = SPLIT_ARRAYS[split] if split == "test" or "x_val" in arrays else SPLIT_ARRAYS["train"]
    images = to_nchw_uint8(arrays[key], path, key)
    labels = np.asarray(arrays[label_key]).reshape(-1)
    if not np.issubdtype(labels.dtype, np.integer) or len(labels) != len(images):
        raise DataError(f"{path}: labels for {key} must be {len(images)} integers, got {labels.dtype} {labels.shape}")
    if key == "x_train" and "x_val" not in arrays:
        images, labels = train_val_split(images, labels, split, val_fraction, seed, str(path))
    classes = _classes(arrays)
    if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
        raise DataError(f"{path}: labels span {labels.min()}..{labels.max()} but there are {len(classes)} classes")
    train_x = to_nchw_uint8(arrays["x_train"], path, "x_train").astype(np.float64) / 255
    mean = tuple(float(m) for m in train_x.mean(axis=(0, 2, 3)))
    std = tuple(max(float(s), MIN_STD) for s in train_x.std(axis=(0, 2, 3)))
    return ImageSet(
        torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64)), classes, mean, std, f"{path.stem}/{split}"
    )


def read_npz_set(spec: DatasetSpec, root: Path | None, *, split: str, val_fraction: float, seed: int) -> ImageSet:
    """:func:`read_npz` as a registry reader."""
    return read_npz(require_root(spec, root), split=split, val_fraction=val_fraction, seed=seed)
