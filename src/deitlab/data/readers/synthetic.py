"""Seeded random images with learnable class structure, for tests and smoke runs (no files)."""

from __future__ import annotations

from pathlib import Path

import torch

from deitlab.data.imageset import SPLITS, DatasetSpec, ImageSet
from deitlab.errors import ConfigError

DEFAULT_SAMPLES = {"train": 2048, "val": 512, "test": 512}
TEMPLATE_GRID = 4  # class templates are random 4x4 grids, upsampled: smooth, so small models can learn them
SPLIT_SEED_STRIDE = 1009  # samples of split s use seed * 1009 + 1 + s: distinct streams per (seed, split)
# pixel = TEMPLATE_WEIGHT * template + OFFSET + PIXEL_NOISE * N(0, 1) + IMAGE_NOISE * N(0, 1) per image, in [0, 1]
TEMPLATE_WEIGHT, OFFSET, PIXEL_NOISE, IMAGE_NOISE = 0.7, 0.15, 0.1, 0.05
SYNTHETIC_MEAN, SYNTHETIC_STD = 0.5, 0.25  # nominal per-channel statistics


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
    if split not in SPLITS:
        raise ConfigError(f"synthetic: unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    n = num_samples if num_samples is not None else DEFAULT_SAMPLES[split]
    if n < 0:
        raise ConfigError(f"synthetic: num_samples={n} must be >= 0")
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(num_classes, in_chans, TEMPLATE_GRID, TEMPLATE_GRID, generator=g)
    templates = torch.nn.functional.interpolate(coarse, size=(img_size, img_size), mode="bilinear", align_corners=False)
    g = torch.Generator().manual_seed(seed * SPLIT_SEED_STRIDE + 1 + SPLITS.index(split))
    labels = torch.randperm(n, generator=g) % num_classes
    x = templates[labels]  # (n, C, S, S)
    x = (
        TEMPLATE_WEIGHT * x
        + OFFSET
        + PIXEL_NOISE * torch.randn(x.shape, generator=g)
        + IMAGE_NOISE * torch.randn(n, 1, 1, 1, generator=g)
    )
    images = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    return ImageSet(
        images,
        labels.long(),
        [f"class_{i}" for i in range(num_classes)],
        (SYNTHETIC_MEAN,) * in_chans,
        (SYNTHETIC_STD,) * in_chans,
        f"synthetic/{split}",
    )


def read_synthetic(spec: DatasetSpec, root: Path | None, *, split: str, seed: int, **options: int) -> ImageSet:
    """:func:`make_synthetic` as a registry reader (``root`` is unused)."""
    return make_synthetic(split=split, seed=seed, **options)
