"""In-memory image datasets: one uint8 ``(N, C, H, W)`` tensor plus labels, read from the usual file formats.

Every reader returns an :class:`ImageSet`; :func:`load_dataset` picks the reader by name and split. Small and
medium data sets (MNIST, Fashion-MNIST, CIFAR, scikit-learn digits, an ImageFolder decoded to a fixed size)
live in memory so a batch is one tensor index, not a per-image worker pipeline (see ``loader.py``).

Splits. ``"test"`` is the official test set. ``"val"`` is a deterministic, *stratified* held-out slice of the
official train set -- for each class, a ``numpy.random.default_rng(seed)`` permutation of that class's indices
(classes visited in label order) gives its first ``round(val_fraction * n_class)`` images -- and ``"train"`` is the
rest of the official train set, in file order. With the default ``val_fraction=1/12`` Fashion-MNIST gives 500
images per class: 55,000 train / 5,000 val / 10,000 test. The test split never depends on ``seed``.
"""

from __future__ import annotations

import difflib
import gzip
import inspect
import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from deitlab.errors import ConfigError, DataError

SPLITS = ("train", "val", "test")
FASHION_MNIST_DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


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
class DatasetInfo:
    """What the CLI can say about a data set before reading it."""

    name: str
    in_chans: int
    img_size: int
    num_classes: int | None
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str


_FASHION_HINT = "install it with `apt-get install dataset-fashion-mnist` or pass --data-path DIR holding the idx files"
_CIFAR_HINT = (
    "download the *binary* version from https://www.cs.toronto.edu/~kriz/cifar.html, extract it, "
    "and pass --data-path DIR"
)

DATASETS: dict[str, DatasetInfo] = {
    "fashion_mnist": DatasetInfo(
        "fashion_mnist",
        1,
        28,
        10,
        (0.2860,),
        (0.3530,),
        f"idx files (.gz or raw); default {FASHION_MNIST_DEFAULT_ROOT}; {_FASHION_HINT}",
    ),
    "mnist": DatasetInfo("mnist", 1, 28, 10, (0.1307,), (0.3081,), "idx files (.gz or raw) under --data-path"),
    "digits": DatasetInfo("digits", 1, 8, 10, (0.3053,), (0.3759,), "scikit-learn's bundled 8x8 digits (1,797)"),
    "cifar10": DatasetInfo(
        "cifar10",
        3,
        32,
        10,
        (0.4914, 0.4822, 0.4465),
        (0.2470, 0.2435, 0.2616),
        f"CIFAR-10 binary batches; {_CIFAR_HINT}",
    ),
    "cifar100": DatasetInfo(
        "cifar100",
        3,
        32,
        100,
        (0.5071, 0.4865, 0.4409),
        (0.2673, 0.2564, 0.2762),
        f"CIFAR-100 binary train.bin/test.bin (fine labels); {_CIFAR_HINT}",
    ),
    "imagefolder": DatasetInfo(
        "imagefolder",
        3,
        224,
        None,
        IMAGENET_MEAN,
        IMAGENET_STD,
        "root/{train,val,test}/<class>/<image>, decoded to img_size at load time",
    ),
    "npz": DatasetInfo(
        "npz",
        1,
        28,
        None,
        (0.5,),
        (0.25,),
        "your arrays: FILE.npz with x_train, y_train (x_val, y_val, x_test, y_test, classes); stats from x_train",
    ),  # fmt: skip
    "synthetic": DatasetInfo(
        "synthetic",
        3,
        32,
        10,
        (0.5, 0.5, 0.5),
        (0.25, 0.25, 0.25),
        "seeded random images with learnable class structure (tests, smoke runs)",
    ),
}


def dataset_names() -> list[str]:
    """Names accepted by :func:`load_dataset`, sorted."""
    return sorted(DATASETS)


# ----------------------------------------------------------------------------------------------- splits


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


def _train_val(images: np.ndarray, labels: np.ndarray, split: str, fraction: float, seed: int, name: str):
    keep, held = stratified_holdout(labels, fraction, seed)
    if split == "val" and len(held) == 0:
        raise ConfigError(f"{name}: val_fraction={fraction} leaves no validation images; use a value in (0, 1)")
    idx = held if split == "val" else keep
    return images[idx], labels[idx]


# ----------------------------------------------------------------------------------------------- idx (MNIST)

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def read_idx(path: str | Path, ndim: int | None = None) -> np.ndarray:
    """Read one idx file (``.gz`` or raw) of unsigned bytes into an array of its declared shape.

    Raises:
        DataError: the file is missing, not valid gzip, has a wrong magic number or dimension count, or its size
            does not match the header.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"idx file {path} does not exist")
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"idx file {path} is not a readable gzip file ({e}); re-download or re-extract it") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        magic = raw[:4].hex() if len(raw) >= 4 else f"{len(raw)} bytes"
        raise DataError(f"idx file {path} has magic {magic}; expected 0000 08 0N (unsigned-byte idx with N dimensions)")
    nd = raw[3]
    if ndim is not None and nd != ndim:
        raise DataError(f"idx file {path} declares {nd} dimensions; expected {ndim}")
    header = 4 + 4 * nd
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


def _find_file(roots: Sequence[Path], stem: str, hint: str) -> Path:
    for r in roots:
        for cand in (r / f"{stem}.gz", r / stem):
            if cand.is_file():
                return cand
    raise DataError(f"no {stem}[.gz] under {roots[0]}; {hint}")


def _read_mnist_like(
    name: str,
    root: Path | None,
    default_root: Path | None,
    classes: list[str],
    hint: str,
    split: str,
    val_fraction: float,
    seed: int,
) -> ImageSet:
    if root is None:
        if default_root is None:
            raise DataError(f"{name} needs a data path; {hint}")
        root = default_root
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{name} data path {root} does not exist; {hint}")
    # Also accept torchvision's layout (root/FashionMNIST/raw, root/MNIST/raw).
    roots = [root, root / "raw"] + [root / d / "raw" for d in ("FashionMNIST", "MNIST")]
    img_stem, lbl_stem = _IDX_FILES["test" if split == "test" else "train"]
    img_path = _find_file(roots, img_stem, hint)
    lbl_path = _find_file(roots, lbl_stem, hint)
    images = read_idx(img_path, ndim=3)
    labels = read_idx(lbl_path, ndim=1)
    if len(images) != len(labels):
        raise DataError(f"{img_path} holds {len(images)} images but {lbl_path} holds {len(labels)} labels")
    if len(labels) and labels.max() >= len(classes):
        raise DataError(f"{lbl_path} has label {labels.max()}; allowed 0..{len(classes) - 1}")
    if split != "test":
        images, labels = _train_val(images, labels, split, val_fraction, seed, name)
    info = DATASETS[name]
    return ImageSet(
        torch.from_numpy(np.array(images, copy=True)).unsqueeze(1),
        torch.from_numpy(labels.astype(np.int64)),
        classes,
        info.mean,
        info.std,
        f"{name}/{split}",
    )


FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def read_fashion_mnist(root: Path | None, *, split: str, val_fraction: float = 1 / 12, seed: int = 0) -> ImageSet:
    return _read_mnist_like(
        "fashion_mnist", root, FASHION_MNIST_DEFAULT_ROOT, FASHION_CLASSES, _FASHION_HINT, split, val_fraction, seed
    )


def read_mnist(root: Path | None, *, split: str, val_fraction: float = 1 / 12, seed: int = 0) -> ImageSet:
    return _read_mnist_like(
        "mnist",
        root,
        None,
        [str(i) for i in range(10)],
        "pass --data-path DIR holding train-images-idx3-ubyte[.gz] and friends",
        split,
        val_fraction,
        seed,
    )


# ----------------------------------------------------------------------------------------------- CIFAR binary


def _read_cifar_records(path: Path, label_bytes: int, label_col: int, num_classes: int):
    rec = label_bytes + 3072
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


def _read_names(path: Path, n: int) -> list[str] | None:
    if not path.is_file():
        return None
    names = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    if len(names) != n:
        raise DataError(f"{path} lists {len(names)} class names; expected {n}")
    return names


def _read_cifar(name: str, root: Path | None, split: str, val_fraction: float, seed: int) -> ImageSet:
    ten = name == "cifar10"
    sub = "cifar-10-batches-bin" if ten else "cifar-100-binary"
    if root is None:
        raise DataError(f"{name} needs a data path; {_CIFAR_HINT}")
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{name} data path {root} does not exist; {_CIFAR_HINT}")
    if (root / sub).is_dir():
        root = root / sub
    if ten:
        files = ["test_batch.bin"] if split == "test" else [f"data_batch_{i}.bin" for i in range(1, 6)]
    else:
        files = ["test.bin"] if split == "test" else ["train.bin"]
    missing = [f for f in files if not (root / f).is_file()]
    if missing:
        raise DataError(f"{name}: {root} lacks {', '.join(missing)}; {_CIFAR_HINT}")
    k = 10 if ten else 100
    parts = [_read_cifar_records(root / f, 1 if ten else 2, 0 if ten else 1, k) for f in files]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    if ten:
        classes = _read_names(root / "batches.meta.txt", k) or list(CIFAR10_CLASSES)
    else:
        classes = _read_names(root / "fine_label_names.txt", k) or [str(i) for i in range(k)]
    if split != "test":
        images, labels = _train_val(images, labels, split, val_fraction, seed, name)
    info = DATASETS[name]
    return ImageSet(
        torch.from_numpy(np.array(images, copy=True)),
        torch.from_numpy(labels),
        classes,
        info.mean,
        info.std,
        f"{name}/{split}",
    )


def read_cifar10(root: Path | None, *, split: str, val_fraction: float = 0.1, seed: int = 0) -> ImageSet:
    return _read_cifar("cifar10", root, split, val_fraction, seed)


def read_cifar100(root: Path | None, *, split: str, val_fraction: float = 0.1, seed: int = 0) -> ImageSet:
    return _read_cifar("cifar100", root, split, val_fraction, seed)


# ----------------------------------------------------------------------------------------------- digits, synthetic


def read_digits(root: Path | None, *, split: str, val_fraction: float = 0.1, seed: int = 0) -> ImageSet:
    """scikit-learn's 8x8 digits scaled to 0..255. Test = a stratified 20% fixed by seed 0; val from the rest."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise DataError("the digits data set needs scikit-learn; install it with `pip install scikit-learn`") from e
    d = load_digits()
    images = np.clip(np.round(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)[:, None]
    labels = d.target.astype(np.int64)
    rest, test = stratified_holdout(labels, 0.2, seed=0)
    if split == "test":
        images, labels = images[test], labels[test]
    else:
        images, labels = _train_val(images[rest], labels[rest], split, val_fraction, seed, "digits")
    info = DATASETS["digits"]
    return ImageSet(
        torch.from_numpy(np.array(images, copy=True)),
        torch.from_numpy(labels),
        [str(i) for i in range(10)],
        info.mean,
        info.std,
        f"digits/{split}",
    )


def make_synthetic(
    *,
    split: str = "train",
    num_samples: int | None = None,
    num_classes: int = 10,
    img_size: int = 32,
    in_chans: int = 3,
    seed: int = 0,
) -> ImageSet:
    """Seeded random images whose class is learnable: a smooth per-class template plus per-image noise.

    Templates depend on ``seed`` only, so all splits share them; samples depend on ``(seed, split)``. Default
    sizes: 2,048 train, 512 val, 512 test.
    """
    for key, val, lo in (("num_classes", num_classes, 1), ("img_size", img_size, 1), ("in_chans", in_chans, 1)):
        if int(val) < lo:
            raise ConfigError(f"synthetic: {key}={val} must be >= {lo}")
    n = num_samples if num_samples is not None else (2048 if split == "train" else 512)
    if n < 0:
        raise ConfigError(f"synthetic: num_samples={n} must be >= 0")
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(num_classes, in_chans, 4, 4, generator=g)
    templates = torch.nn.functional.interpolate(coarse, size=(img_size, img_size), mode="bilinear", align_corners=False)
    g = torch.Generator().manual_seed(seed * 1009 + 1 + SPLITS.index(split))
    labels = torch.randperm(n, generator=g) % num_classes
    x = templates[labels]  # (n, C, S, S)
    x = 0.7 * x + 0.15 + 0.1 * torch.randn(x.shape, generator=g) + 0.05 * torch.randn(n, 1, 1, 1, generator=g)
    images = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    return ImageSet(
        images,
        labels.long(),
        [f"class_{i}" for i in range(num_classes)],
        (0.5,) * in_chans,
        (0.25,) * in_chans,
        f"synthetic/{split}",
    )


def _read_synthetic(root: Path | None, *, split: str, seed: int = 0, **kw) -> ImageSet:
    return make_synthetic(split=split, seed=seed, **kw)


def _read_npz(root: Path | None, *, split: str, **kw) -> ImageSet:
    from deitlab.data.arrays import read_npz

    return read_npz(root, split=split, **kw)


def _read_imagefolder(root: Path | None, *, split: str, **kw) -> ImageSet:
    from deitlab.data.imagefolder import read_image_folder

    if root is None:
        raise DataError("imagefolder needs a data path: pass --data-path DIR laid out as DIR/train/<class>/<image>")
    return read_image_folder(root, split=split, **kw)


# name -> (reader, reader-specific keyword options accepted through load_dataset's **kw)
_READERS: dict[str, tuple[Callable[..., ImageSet], tuple[str, ...]]] = {
    "fashion_mnist": (read_fashion_mnist, ()),
    "mnist": (read_mnist, ()),
    "digits": (read_digits, ()),
    "cifar10": (read_cifar10, ()),
    "cifar100": (read_cifar100, ()),
    "imagefolder": (_read_imagefolder, ("img_size", "in_chans", "bad_images", "mean", "std", "workers")),
    "synthetic": (_read_synthetic, ("num_samples", "num_classes", "img_size", "in_chans")),
    "npz": (_read_npz, ()),
}


def load_dataset(
    name: str,
    *,
    split: str,
    root: str | Path | None = None,
    val_fraction: float | None = None,
    seed: int = 0,
    **kw,
) -> ImageSet:
    """Read data set ``name`` (see :data:`DATASETS`) for ``split`` in ``("train", "val", "test")``.

    Args:
        name: one of :func:`dataset_names`.
        split: ``"train"``, ``"val"`` (held out of the official train set) or ``"test"`` (official test set).
        root: directory with the files; Fashion-MNIST falls back to Debian's ``/usr/share/datasets/fashion-mnist``.
        val_fraction: share of each class of the official train set held out as ``"val"``; ``None`` = the data
            set's default (1/12 for (Fashion-)MNIST, 0.1 for CIFAR and digits). ImageFolder reads ``root/val``.
        seed: seed of the train/val split (and of synthetic images).
        **kw: reader-specific options (ImageFolder: ``img_size``, ``in_chans``, ``bad_images``, ``mean``, ``std``,
            ``workers``; synthetic: ``num_samples``, ``num_classes``, ``img_size``, ``in_chans``).
    """
    if name not in _READERS:
        close = difflib.get_close_matches(name, list(_READERS), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown data set {name!r}; choose one of {', '.join(dataset_names())}{hint}")
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    reader, allowed = _READERS[name]
    bad = sorted(set(kw) - set(allowed))
    if bad:
        raise ConfigError(f"{name} does not take option(s) {', '.join(bad)}; allowed: {', '.join(allowed) or 'none'}")
    params = inspect.signature(reader).parameters
    if "seed" in params:
        kw["seed"] = seed
    if val_fraction is not None:
        if "val_fraction" not in params:
            raise ConfigError(f"{name} does not take val_fraction (its val split is a directory or generated)")
        kw["val_fraction"] = val_fraction
    return reader(None if root is None else Path(root), split=split, **kw)
