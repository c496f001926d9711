"""Your own arrays: a NumPy ``.npz`` file with ``x_train``/``y_train`` (and optionally ``x_val``/``y_val``,
``x_test``/``y_test``, ``classes``), as Keras-style data sets are usually saved.

Images may be uint8 (0-255) or float in [0, 1], laid out ``(N, H, W)``, ``(N, H, W, C)`` or ``(N, C, H, W)``
with C in {1, 3}. Files are read with ``allow_pickle=False``. NaN/Inf or out-of-range pixels and labels are
errors naming the file, the array and the first bad index.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from deitlab.data.datasets import ImageSet, _train_val
from deitlab.errors import DataError


def _to_nchw_uint8(x: np.ndarray, path: Path, key: str) -> np.ndarray:
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


def read_npz(root: Path | None, *, split: str, val_fraction: float = 0.1, seed: int = 0) -> ImageSet:
    """Read ``split`` from a ``.npz`` file (``root`` is the file, or a directory holding ``data.npz``)."""
    if root is None:
        raise DataError("npz needs a data path: pass --data-path FILE.npz holding x_train, y_train (x_test, y_test)")
    path = root / "data.npz" if root.is_dir() else root
    if not path.is_file():
        raise DataError(f"npz file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{path} is not a readable .npz file ({str(e).splitlines()[0][:120]})") from None
    if "x_train" not in arrays or "y_train" not in arrays:
        raise DataError(f"{path} must hold x_train and y_train (found: {', '.join(sorted(arrays)) or 'nothing'})")
    if split == "test" and "x_test" not in arrays:
        raise DataError(f"{path} has no x_test/y_test for the test split")
    if split == "val" and "x_val" in arrays:
        x, y, key = arrays["x_val"], arrays["y_val"], "x_val"
    elif split == "test":
        x, y, key = arrays["x_test"], arrays["y_test"], "x_test"
    else:
        x, y, key = arrays["x_train"], arrays["y_train"], "x_train"
    images = _to_nchw_uint8(x, path, key)
    labels = np.asarray(y).reshape(-1)
    if not np.issubdtype(labels.dtype, np.integer) or len(labels) != len(images):
        raise DataError(f"{path}: labels for {key} must be {len(images)} integers, got {labels.dtype} {labels.shape}")
    if key == "x_train" and "x_val" not in arrays:
        images, labels = _train_val(images, labels, split, val_fraction, seed, str(path))
    all_labels = np.concatenate(
        [np.asarray(arrays[k]).reshape(-1) for k in ("y_train", "y_val", "y_test") if k in arrays]
    )
    num_classes = int(all_labels.max()) + 1 if len(all_labels) else 0
    classes = [str(c) for c in arrays["classes"]] if "classes" in arrays else [str(i) for i in range(num_classes)]
    if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
        raise DataError(f"{path}: labels span {labels.min()}..{labels.max()} but there are {len(classes)} classes")
    train_x = _to_nchw_uint8(arrays["x_train"], path, "x_train").astype(np.float64) / 255
    mean = tuple(float(m) for m in train_x.mean(axis=(0, 2, 3)))
    std = tuple(max(float(s), 1e-3) for s in train_x.std(axis=(0, 2, 3)))
    return ImageSet(
        torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64)), classes, mean, std, f"{path.stem}/{split}"
    )
