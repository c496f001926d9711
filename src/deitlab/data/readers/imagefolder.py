"""ImageFolder trees (``root/<split>/<class>/<image>``): a per-image Dataset for training, and a fixed-size reader.

- :class:`ImageFolder` keeps each ORIGINAL image (decoded per item from its file, or held in memory) and shapes it
  in the DataLoader worker with a :mod:`~deitlab.data.geometry` transform: DeiT's RandomResizedCrop + flip on the
  original for training, resize + centre crop for evaluation. This is what ``deitlab train`` uses.
- :func:`read_image_folder` decodes every image to one fixed ``img_size`` (shorter side resized, centre crop) into an
  :class:`~deitlab.data.imageset.ImageSet`: the registry reader behind ``load_dataset("imagefolder", ...)``, for
  evaluation and small experiments (a random crop of these would crop an already-cropped image).

Both decode with PIL and convert to RGB (or L for one channel). Classes are the sorted sub-folder names, as in
torchvision's ``ImageFolder``. Unreadable images follow ``bad_images``: ``"error"`` raises :class:`DataError` naming
the file; ``"skip"`` drops it, logs a warning with the count and the first few paths, and lists it in ``skipped``.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from PIL import Image

from deitlab.data.geometry import Geometry, sample_generator, to_tensor
from deitlab.data.imageset import DatasetSpec, ImageSet, missing_data, require_dir
from deitlab.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
BAD_IMAGE_POLICIES = ("error", "skip")
DEFAULT_IMG_SIZE = 224  # ImageNet's training resolution
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GRAY_MEAN, GRAY_STD = (0.5,), (0.5,)  # default statistics of one-channel folders
DEFAULT_WORKERS = 4  # decoding threads, at most one per core
PARALLEL_MIN_IMAGES = 64  # below this, one thread decodes faster than a pool starts
MEMORY_PROBE = 256  # image headers read to estimate a large folder's decoded size
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
T = TypeVar("T")


def scan_image_folder(split_dir: str | Path) -> tuple[list[tuple[str, int]], list[str]]:
    """List ``(path, label)`` for every image under ``split_dir/<class>/`` (recursively), and the class names.

    Raises:
        DataError: the folder is missing, has no class sub-folders, or holds no image files.
    """
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise missing_data(f"image folder {split_dir} does not exist; expected DIR/<split>/<class>/<image> files")
    classes = sorted(e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise DataError(f"image folder {split_dir} has no class sub-folders; expected {split_dir}/<class>/<image>")
    samples = []
    for label, cls in enumerate(classes):
        for dirpath, _, files in sorted(os.walk(split_dir / cls, followlinks=True)):
            for f in sorted(files):
                if f.lower().endswith(IMG_EXTENSIONS):
                    samples.append((os.path.join(dirpath, f), label))
    if not samples:
        raise DataError(
            f"image folder {split_dir} has {len(classes)} class folder(s) but no images with extensions "
            f"{', '.join(IMG_EXTENSIONS)}"
        )
    return samples, classes


def open_image(path: str, in_chans: int = 3) -> Image.Image:
    """Decode ``path`` completely into memory as RGB (or L for ``in_chans=1``); raises the decoder's exception."""
    with Image.open(path) as img:
        return img.convert("RGB" if in_chans == 3 else "L")


def decode_image(path: str, img_size: int, in_chans: int = 3) -> np.ndarray:
    """Decode ``path`` to a uint8 ``(img_size, img_size, C)`` array: shorter side resized, then centre-cropped.

    Raises the decoder's own exception for an unreadable file (callers apply the bad-image policy).
    """
    with Image.open(path) as img:
        # JPEG draft mode decodes at a reduced scale (>= the target) -- much faster for large photos.
        img.draft("RGB" if in_chans == 3 else "L", (img_size, img_size))
        img = img.convert("RGB" if in_chans == 3 else "L")
        w, h = img.size
        scale = img_size / min(w, h)
        nw, nh = max(img_size, round(w * scale)), max(img_size, round(h * scale))
        if (nw, nh) != (w, h):
            img = img.resize((nw, nh), Image.Resampling.BICUBIC)
        left, top = (nw - img_size) // 2, (nh - img_size) // 2
        img = img.crop((left, top, left + img_size, top + img_size))
        arr = np.asarray(img, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def _bad_image(path: str, error: Exception, bad_images: str, *, warn: bool) -> None:
    """The bad-image policy for one file: ``"error"`` raises a :class:`DataError` naming it; ``"skip"`` gives
    ``None`` (logged with the decoder's reason when ``warn``)."""
    if bad_images == "error":
        raise DataError(
            f"cannot decode image {path} ({type(error).__name__}: {error}); fix or delete it, or pass bad_images='skip'"
        ) from error
    if warn:
        logger.warning("imagefolder: skipping unreadable image %s (%s)", path, error)


def decode_or_skip(
    path: str, img_size: int, in_chans: int, bad_images: str, *, warn: bool = False
) -> np.ndarray | None:
    """:func:`decode_image` under the bad-image policy: an unreadable file raises a :class:`DataError` naming it
    (``"error"``) or gives ``None`` (``"skip"``; with ``warn``, logged with the decoder's reason)."""
    try:
        return decode_image(path, img_size, in_chans)
    except _DECODE_ERRORS as e:
        return _bad_image(path, e, bad_images, warn=warn)


def _map(fn: Callable[[tuple[str, int]], T], samples: list[tuple[str, int]], workers: int | None) -> list[T]:
    """``[fn(s) for s in samples]`` on a thread pool (PIL releases the GIL while decoding) when it pays off."""
    workers = min(DEFAULT_WORKERS, os.cpu_count() or 1) if workers is None else max(1, int(workers))
    if workers > 1 and len(samples) > PARALLEL_MIN_IMAGES:
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(fn, samples))
    return [fn(s) for s in samples]


def _report_skipped(folder: Path, skipped: list[str], total: int) -> None:
    if skipped:
        logger.warning("imagefolder %s: skipped %d unreadable image(s), e.g. %s", folder, len(skipped),
                       ", ".join(skipped[:3]))  # fmt: skip
    if len(skipped) == total:
        raise DataError(f"image folder {folder}: none of its {total} images could be decoded")


def _check_options(img_size: int, in_chans: int, bad_images: str) -> None:
    if bad_images not in BAD_IMAGE_POLICIES:
        raise ConfigError(f"bad_images={bad_images!r} is not a policy; choose one of {', '.join(BAD_IMAGE_POLICIES)}")
    if in_chans not in (1, 3):
        raise ConfigError(f"imagefolder in_chans={in_chans} is not supported; use 1 (grayscale) or 3 (RGB)")
    if int(img_size) < 1:
        raise ConfigError(f"imagefolder img_size={img_size} must be a positive number of pixels")


def _stats(
    mean: Sequence[float] | None, std: Sequence[float] | None, in_chans: int
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    mean = tuple(mean) if mean is not None else (IMAGENET_MEAN if in_chans == 3 else GRAY_MEAN)
    std = tuple(std) if std is not None else (IMAGENET_STD if in_chans == 3 else GRAY_STD)
    if len(mean) != in_chans or len(std) != in_chans:
        raise ConfigError(f"imagefolder mean={mean} / std={std} need {in_chans} entries each (one per channel)")
    return mean, std


class ImageFolder(torch.utils.data.Dataset):
    """``root/split/<class>/<image>`` as a Dataset of ``(uint8 (C, S, S) tensor, label)`` for a DataLoader.

    Each item is the ORIGINAL image -- decoded from its file (streaming) or taken from memory after
    :meth:`load_into_memory` -- shaped by ``geometry`` in the worker that loads it: DeiT's random crop + flip
    (:class:`~deitlab.data.geometry.TrainGeometry`) or the evaluation resize + centre crop
    (:class:`~deitlab.data.geometry.EvalGeometry`). Both modes give the same pixels for the same key.

    Keys: an ``int`` index, or ``(index, epoch, position)`` from :class:`~deitlab.data.loader.StreamLoader`; a
    random geometry draws from :func:`~deitlab.data.geometry.sample_generator` ``(seed, epoch, position)``
    (an int key counts as ``(index, 0, index)``), so the crops are reproducible and survive a resume.

    Args:
        root: folder holding ``train/``, ``val/`` (and optionally ``test/``) class trees.
        split: sub-folder to read.
        geometry: what each worker does to an original (its ``size`` is the output side).
        in_chans: 3 (RGB) or 1 (grayscale).
        bad_images: ``"error"`` or ``"skip"`` for files PIL cannot decode. Streaming, a skipped file is replaced
            by the next readable one (wrapping around) and logged once per worker; in memory it is dropped.
        mean, std: normalisation statistics; default ImageNet's (RGB) or 0.5 (grayscale).
        seed: base seed of the per-sample generators.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        split: str,
        geometry: Geometry,
        in_chans: int = 3,
        bad_images: str = "error",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        seed: int = 0,
    ) -> None:
        _check_options(geometry.size, in_chans, bad_images)
        self.mean, self.std = _stats(mean, std, in_chans)
        self.root, self.split = Path(root), split
        self.samples, self.classes = scan_image_folder(self.root / split)
        self.geometry, self.in_chans, self.bad_images, self.seed = geometry, in_chans, bad_images, int(seed)
        self.skipped: list[str] = []
        self.name = f"imagefolder/{split}"
        self._memory: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> torch.Tensor:
        return torch.tensor([lbl for _, lbl in self.samples], dtype=torch.int64)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def img_size(self) -> int:
        return int(self.geometry.size)

    @property
    def in_memory(self) -> bool:
        return self._memory is not None

    def with_geometry(self, geometry: Geometry) -> ImageFolder:
        """The same images (and memory, if loaded) with another per-image geometry."""
        other = copy.copy(self)
        other.geometry = geometry
        return other

    def subset(self, n: int) -> ImageFolder:
        """The first ``n`` images (file order), as ``data.limit_train`` / ``limit_eval`` take them."""
        other = copy.copy(self)
        other.samples = self.samples[:n]
        other._memory = None if self._memory is None else self._memory[:n]
        return other

    def decoded_bytes(self, probe: int = MEMORY_PROBE) -> tuple[int, bool]:
        """Bytes the decoded originals would take in memory, and whether that is exact.

        Reads image headers only (no decoding): every file for folders of up to ``probe`` images, else ``probe``
        evenly spaced files, scaled to the whole folder. Unreadable headers count as nothing.
        """
        n = len(self.samples)
        picks = range(n) if n <= probe else np.linspace(0, n - 1, probe).round().astype(int).tolist()
        total = 0
        for i in picks:
            try:
                with Image.open(self.samples[i][0]) as img:
                    w, h = img.size
            except _DECODE_ERRORS:
                continue
            total += w * h * self.in_chans
        return (total if n <= probe else round(total * n / len(picks))), n <= probe

    def load_into_memory(self, workers: int | None = None) -> None:
        """Decode every original into memory (threads: PIL releases the GIL); unreadable files follow
        ``bad_images`` (skipped ones are dropped and listed in ``skipped``)."""

        def load(item: tuple[str, int]) -> np.ndarray | None:
            try:
                return np.asarray(open_image(item[0], self.in_chans), dtype=np.uint8)
            except _DECODE_ERRORS as e:
                return _bad_image(item[0], e, self.bad_images, warn=False)

        arrays = _map(load, self.samples, workers)
        self.skipped = [s[0] for s, a in zip(self.samples, arrays) if a is None]
        _report_skipped(self.root / self.split, self.skipped, len(self.samples))
        self.samples = [s for s, a in zip(self.samples, arrays) if a is not None]
        self._memory = [a for a in arrays if a is not None]

    def _original(self, i: int) -> Image.Image | None:
        if self._memory is not None:
            return Image.fromarray(self._memory[i])
        path = self.samples[i][0]
        try:
            return open_image(path, self.in_chans)
        except _DECODE_ERRORS as e:
            first_time = path not in self.skipped
            if first_time and self.bad_images == "skip":
                self.skipped.append(path)
            return _bad_image(path, e, self.bad_images, warn=first_time)

    def __getitem__(self, key: int | tuple[int, int, int]) -> tuple[torch.Tensor, int]:
        index, epoch, position = (key, 0, key) if isinstance(key, int) else key
        g = sample_generator(self.seed, epoch, position) if self.geometry.random else None
        n = len(self.samples)
        for k in range(n):
            img = self._original((index + k) % n)
            if img is not None:
                return to_tensor(self.geometry(img, g)), self.samples[(index + k) % n][1]
        raise DataError(f"image folder {self.root / self.split}: none of its {n} images could be decoded")


def read_image_folder(
    root: str | Path,
    *,
    split: str,
    workers: int | None = None,
    img_size: int = DEFAULT_IMG_SIZE,
    in_chans: int = 3,
    bad_images: str = "error",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> ImageSet:
    """Decode every image of ``root/split`` into memory at one size: shorter side resized to ``img_size``, then the
    centre ``img_size x img_size`` crop (for training on originals, see :class:`ImageFolder`).

    Args:
        root: folder holding ``train/``, ``val/`` (and optionally ``test/``) class trees.
        split: sub-folder to read.
        workers: decoding threads (PIL releases the GIL while decoding); default ``min(4, cpu_count)``.
        img_size: side after resize + centre crop (default 224).
        in_chans: 3 (RGB) or 1 (grayscale).
        bad_images: ``"error"`` or ``"skip"`` for files PIL cannot decode.
        mean, std: normalisation statistics; default ImageNet's for RGB, 0.5 for grayscale.
    """
    _check_options(img_size, in_chans, bad_images)
    mean, std = _stats(mean, std, in_chans)
    folder = Path(root) / split
    samples, classes = scan_image_folder(folder)
    arrays = _map(lambda item: decode_or_skip(item[0], int(img_size), in_chans, bad_images), samples, workers)
    skipped = [s[0] for s, a in zip(samples, arrays) if a is None]
    _report_skipped(folder, skipped, len(samples))
    kept = [(a, s[1]) for s, a in zip(samples, arrays) if a is not None]
    images = torch.from_numpy(np.stack([a for a, _ in kept])).permute(0, 3, 1, 2).contiguous()  # (N, C, S, S)
    labels = torch.tensor([lbl for _, lbl in kept], dtype=torch.int64)
    return ImageSet(images, labels, classes, mean, std, f"imagefolder/{split}", skipped)


def read_imagefolder_set(spec: DatasetSpec, root: Path | None, *, split: str, seed: int, **options: object) -> ImageSet:
    """:func:`read_image_folder` as a registry reader (``seed`` is unused: the val split is a folder)."""
    return read_image_folder(require_dir(spec, root), split=split, **options)
