"""The data registry: one :class:`~deitlab.data.imageset.DatasetSpec` per data set, and :func:`load_dataset`.

Small and medium data sets (MNIST, Fashion-MNIST, CIFAR, scikit-learn digits, an ImageFolder decoded to a fixed
size) live in memory as one uint8 ``(N, C, H, W)`` tensor, so a batch is one tensor index, not a per-image worker
pipeline (see ``loader.py``). Each file format has its reader in ``readers/``; this table says which reader
serves which name, with the facts known before reading. Splits: see ``imageset.py``.
"""

from __future__ import annotations

import difflib
from pathlib import Path

from deitlab.data.imageset import DatasetSpec, ImageSet
from deitlab.data.readers.cifar import read_cifar10, read_cifar100
from deitlab.data.readers.digits import read_digits
from deitlab.data.readers.idx import read_idx_set
from deitlab.data.readers.imagefolder import DEFAULT_IMG_SIZE, IMAGENET_MEAN, IMAGENET_STD, read_imagefolder_set
from deitlab.data.readers.npz import read_npz_set
from deitlab.data.readers.synthetic import SYNTHETIC_MEAN, SYNTHETIC_STD, read_synthetic
from deitlab.errors import ConfigError

FASHION_MNIST_DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist package
FASHION_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
DIGIT_CLASSES = tuple(str(i) for i in range(10))
MNIST_VAL_FRACTION = 1 / 12  # 5,000 of the 60,000 official training images: 500 per class
VAL_FRACTION = 0.1  # the other sets' default held-out share
SYNTHETIC_CLASSES = tuple(f"class_{i}" for i in range(10))  # make_synthetic's default num_classes

_FASHION_HINT = "install it with `apt-get install dataset-fashion-mnist` or pass --data-path DIR holding the idx files"
_CIFAR_HINT = (
    "download the *binary* version from https://www.cs.toronto.edu/~kriz/cifar.html, extract it, "
    "and pass --data-path DIR"
)
_IMAGEFOLDER_OPTIONS = ("img_size", "in_chans", "bad_images", "mean", "std", "workers")
_SYNTHETIC_OPTIONS = ("num_samples", "num_classes", "img_size", "in_chans")

# fmt: off
_SPECS = (
    # name, reader, classes, mean, std, in_chans, native size, source, hint, then the keywords that differ
    DatasetSpec("fashion_mnist", read_idx_set, FASHION_CLASSES, (0.2860,), (0.3530,), 1, 28,
                f"idx files (.gz or raw); default {FASHION_MNIST_DEFAULT_ROOT}", _FASHION_HINT,
                val_fraction=MNIST_VAL_FRACTION, default_root=FASHION_MNIST_DEFAULT_ROOT),
    DatasetSpec("mnist", read_idx_set, DIGIT_CLASSES, (0.1307,), (0.3081,), 1, 28,
                "idx files (.gz or raw) under --data-path",
                "pass --data-path DIR holding train-images-idx3-ubyte[.gz] and friends",
                val_fraction=MNIST_VAL_FRACTION),
    DatasetSpec("digits", read_digits, DIGIT_CLASSES, (0.3053,), (0.3759,), 1, 8,
                "scikit-learn's bundled 8x8 digits (1,797)", "install scikit-learn", val_fraction=VAL_FRACTION),
    DatasetSpec("cifar10", read_cifar10, CIFAR10_CLASSES, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
                3, 32, "CIFAR-10 binary batches", _CIFAR_HINT, val_fraction=VAL_FRACTION),
    DatasetSpec("cifar100", read_cifar100, tuple(str(i) for i in range(100)), (0.5071, 0.4865, 0.4409),
                (0.2673, 0.2564, 0.2762), 3, 32, "CIFAR-100 binary train.bin/test.bin (fine labels)", _CIFAR_HINT,
                val_fraction=VAL_FRACTION),
    DatasetSpec("imagefolder", read_imagefolder_set, None, IMAGENET_MEAN, IMAGENET_STD, 3, DEFAULT_IMG_SIZE,
                "root/{train,val,test}/<class>/<image>, decoded to img_size at load time",
                "pass --data-path DIR laid out as DIR/train/<class>/<image>", options=_IMAGEFOLDER_OPTIONS),
    DatasetSpec("npz", read_npz_set, None, None, None, None, None,
                "your arrays: FILE.npz with x_train, y_train (x_val, y_val, x_test, y_test, classes); "
                "stats from x_train",
                "pass --data-path FILE.npz holding x_train, y_train (x_test, y_test)", val_fraction=VAL_FRACTION),
    DatasetSpec("synthetic", read_synthetic, SYNTHETIC_CLASSES, (SYNTHETIC_MEAN,) * 3, (SYNTHETIC_STD,) * 3, 3, 32,
                "seeded random images with learnable class structure (tests, smoke runs)", "",
                options=_SYNTHETIC_OPTIONS),
)
# fmt: on
DATASETS: dict[str, DatasetSpec] = {spec.name: spec for spec in _SPECS}
DatasetInfo = DatasetSpec  # the name this record had before it carried the reader; still exported


def dataset_names() -> list[str]:
    """Names accepted by :func:`load_dataset`, sorted."""
    return sorted(DATASETS)


def dataset_spec(name: str) -> DatasetSpec:
    """The registry entry of ``name``; an unknown name lists the close matches."""
    if name not in DATASETS:
        close = difflib.get_close_matches(name, list(DATASETS), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown data set {name!r}; choose one of {', '.join(dataset_names())}{hint}")
    return DATASETS[name]


def load_dataset(
    name: str,
    *,
    split: str,
    root: str | Path | None = None,
    val_fraction: float | None = None,
    seed: int = 0,
    **options: object,
) -> ImageSet:
    """Read data set ``name`` (see :data:`DATASETS`) for ``split`` in ``("train", "val", "test")``.

    Args:
        name: one of :func:`dataset_names`.
        split: ``"train"``, ``"val"`` (held out of the official train set) or ``"test"`` (official test set).
        root: directory with the files; Fashion-MNIST falls back to Debian's ``/usr/share/datasets/fashion-mnist``.
        val_fraction: share of each class of the official train set held out as ``"val"``; ``None`` = the data
            set's default (1/12 for (Fashion-)MNIST, 0.1 for CIFAR, digits and npz). ImageFolder reads ``root/val``.
        seed: seed of the train/val split (and of synthetic images).
        **options: reader-specific options (ImageFolder: ``img_size``, ``in_chans``, ``bad_images``, ``mean``,
            ``std``, ``workers``; synthetic: ``num_samples``, ``num_classes``, ``img_size``, ``in_chans``).
    """
    spec = dataset_spec(name)
    if split not in spec.splits:
        raise ConfigError(f"unknown split {split!r}; choose one of {', '.join(spec.splits)}")
    bad = sorted(set(options) - set(spec.options))
    if bad:
        allowed = ", ".join(spec.options) or "none"
        raise ConfigError(f"{name} does not take option(s) {', '.join(bad)}; allowed: {allowed}")
    if spec.val_fraction is not None:
        options["val_fraction"] = spec.val_fraction if val_fraction is None else val_fraction
    elif val_fraction is not None:
        raise ConfigError(f"{name} does not take val_fraction (its val split is a directory or generated)")
    return spec.reader(spec, None if root is None else Path(root), split=split, seed=seed, **options)
