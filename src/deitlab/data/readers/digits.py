"""scikit-learn's bundled 8x8 digits (1,797 images; needs the optional scikit-learn)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deitlab.data.imageset import DatasetSpec, ImageSet, stratified_holdout, train_val_split
from deitlab.errors import DataError

DIGITS_MAX = 16  # sklearn's digits are grey levels 0..16
DIGITS_TEST_FRACTION = 0.2  # the set has no official test split: a stratified 20% ...
DIGITS_TEST_SEED = 0  # ... fixed by this seed, so the test set never depends on the run's seed


def read_digits(spec: DatasetSpec, root: Path | None, *, split: str, val_fraction: float, seed: int) -> ImageSet:
    """The digits scaled to 0..255. Test = a stratified 20% fixed by seed 0; val is held out of the rest.

    ``root`` is unused: the data ships with scikit-learn.
    """
    try:
        from sklearn.datasets import load_digits  # optional dependency
    except ImportError as e:
        raise DataError("the digits data set needs scikit-learn; install it with `pip install scikit-learn`") from e
    d = load_digits()
    images = np.clip(np.round(d.images * (255.0 / DIGITS_MAX)), 0, 255).astype(np.uint8)[:, None]  # (N, 1, 8, 8)
    labels = d.target.astype(np.int64)
    rest, test = stratified_holdout(labels, DIGITS_TEST_FRACTION, seed=DIGITS_TEST_SEED)
    if split == "test":
        images, labels = images[test], labels[test]
    else:
        images, labels = train_val_split(images[rest], labels[rest], split, val_fraction, seed, spec.name)
    return spec.image_set(split, images, labels)
