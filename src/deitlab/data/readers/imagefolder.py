"""ImageFolder trees (``root/<split>/<class>/<image>``): decoded into memory, or streamed for large sets.

Both paths decode with PIL, convert to RGB (or L for one channel), resize the shorter side to ``img_size``
(bicubic, PIL's antialiased filter) and centre-crop to ``img_size x img_size`` so images stack into one uint8
tensor. Classes are the sorted sub-folder names, as in torchvision's ``ImageFolder``.

Unreadable images follow ``bad_images``: ``"error"`` raises :class:`DataError` naming the file; ``"skip"`` drops it,
logs one warning with the count and the first few paths, and lists it in ``ImageSet.skipped``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

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
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


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


def decode_or_skip(
    path: str, img_size: int, in_chans: int, bad_images: str, *, warn: bool = False
) -> np.ndarray | None:
    """:func:`decode_image` under the bad-image policy: an unreadable file raises a :class:`DataError` naming it
    (``"error"``) or gives ``None`` (``"skip"``; with ``warn``, logged with the decoder's reason)."""
    try:
        return decode_image(path, img_size, in_chans)
    except _DECODE_ERRORS as e:
        if bad_images == "error":
            raise DataError(
                f"cannot decode image {path} ({type(e).__name__}: {e}); fix or delete it, or pass bad_images='skip'"
            ) from e
        if warn:
            logger.warning("imagefolder: skipping unreadable image %s (%s)", path, e)
        return None


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


class ImageFolderStream(torch.utils.data.Dataset):
    """Streaming ImageFolder for sets too large for memory: decodes one image per ``__getitem__``.

    Args:
        root: folder holding ``train/``, ``val/`` (and optionally ``test/``) class trees.
        split: sub-folder to read.
        img_size: side of the square images after resize + centre crop.
        in_chans: 3 (RGB) or 1 (grayscale).
        bad_images: ``"error"`` or ``"skip"`` for files PIL cannot decode.
        mean, std: normalisation statistics; default ImageNet's (RGB) or 0.5 (grayscale).

    Returns ``(uint8 (C, img_size, img_size) tensor, label)``, so a ``DataLoader`` (with workers) collates uint8
    batches that the batched :class:`~deitlab.data.augment.TrainAugment` then augments on the device. With
    ``bad_images="skip"`` an unreadable file is replaced by the next readable one (wrapping around) and a
    warning is logged; ``skipped`` collects the paths seen by *this* process (each worker has its own copy).
    """

    def __init__(
        self,
        root: str | Path,
        *,
        split: str,
        img_size: int = DEFAULT_IMG_SIZE,
        in_chans: int = 3,
        bad_images: str = "error",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        _check_options(img_size, in_chans, bad_images)
        self.mean, self.std = _stats(mean, std, in_chans)
        self.samples, self.classes = scan_image_folder(Path(root) / split)
        self.img_size, self.in_chans, self.bad_images = int(img_size), in_chans, bad_images
        self.labels = torch.tensor([lbl for _, lbl in self.samples], dtype=torch.int64)
        self.skipped: list[str] = []
        self.name = f"imagefolder/{split}"

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        n = len(self.samples)
        for k in range(n):
            path, label = self.samples[(index + k) % n]
            first_time = path not in self.skipped
            arr = decode_or_skip(path, self.img_size, self.in_chans, self.bad_images, warn=first_time)
            if arr is None:
                if first_time:
                    self.skipped.append(path)
                continue
            return torch.from_numpy(np.array(arr, copy=True)).permute(2, 0, 1).contiguous(), label
        raise DataError(f"image folder stream: none of its {n} images could be decoded")


def read_image_folder(root: str | Path, *, split: str, workers: int | None = None, **settings: Any) -> ImageSet:
    """Decode every image of ``root/split`` into memory: an :class:`ImageFolderStream`, read all at once.

    Args:
        root: folder holding ``train/``, ``val/`` (and optionally ``test/``) class trees.
        split: sub-folder to read.
        workers: decoding threads (PIL releases the GIL while decoding); default ``min(4, cpu_count)``.
        **settings: ``img_size`` (side after resize + centre crop, default 224), ``in_chans`` (3 = RGB or
            1 = grayscale), ``bad_images`` (``"error"`` or ``"skip"``), ``mean``, ``std`` (default ImageNet's for
            RGB, 0.5 for grayscale), as for :class:`ImageFolderStream`.
    """
    folder = ImageFolderStream(root, split=split, **settings)

    def load(item: tuple[str, int]) -> np.ndarray | None:
        return decode_or_skip(item[0], folder.img_size, folder.in_chans, folder.bad_images)

    samples = folder.samples
    workers = min(DEFAULT_WORKERS, os.cpu_count() or 1) if workers is None else max(1, int(workers))
    if workers > 1 and len(samples) > PARALLEL_MIN_IMAGES:
        with ThreadPoolExecutor(workers) as pool:
            arrays = list(pool.map(load, samples))
    else:
        arrays = [load(s) for s in samples]
    skipped = [s[0] for s, a in zip(samples, arrays) if a is None]
    kept = [(a, s[1]) for s, a in zip(samples, arrays) if a is not None]
    if skipped:
        logger.warning(
            "imagefolder %s: skipped %d unreadable image(s), e.g. %s",
            Path(root) / split,
            len(skipped),
            ", ".join(skipped[:3]),
        )
    if not kept:
        raise DataError(f"image folder {Path(root) / split}: none of its {len(samples)} images could be decoded")
    images = torch.from_numpy(np.stack([a for a, _ in kept])).permute(0, 3, 1, 2).contiguous()  # (N, C, S, S)
    labels = torch.tensor([lbl for _, lbl in kept], dtype=torch.int64)
    return ImageSet(images, labels, folder.classes, folder.mean, folder.std, folder.name, skipped)


def read_imagefolder_set(spec: DatasetSpec, root: Path | None, *, split: str, seed: int, **options: object) -> ImageSet:
    """:func:`read_image_folder` as a registry reader (``seed`` is unused: the val split is a folder)."""
    return read_image_folder(require_dir(spec, root), split=split, **options)
