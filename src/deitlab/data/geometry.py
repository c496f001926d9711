"""Per-image geometry for image folders, run in the DataLoader workers on the decoded ORIGINAL image.

DeiT trains with timm's ``create_transform``: RandomResizedCrop(scale 0.08-1, ratio 3/4-4/3, bicubic) and a
horizontal flip on the decoded PIL image, then RandAugment, normalisation and random erasing. Images in a folder
come in every size, so the geometric part has to run per image, where the original is: :class:`TrainGeometry`
(crop box drawn on the original, cropped, resized with PIL's antialiased filter, flipped) and :class:`EvalGeometry`
(shorter side resized to ``floor(size / crop_pct)``, centre crop, as DeiT's ``build_transform``). Both return a
uint8 ``(C, size, size)`` tensor; the rest of the train transform runs batched on the device afterwards
(:class:`~deitlab.data.augment.TrainAugment` with ``scale=None``, then Mixup/CutMix).

Randomness: one generator per sample, seeded from ``(seed, epoch, position)`` where ``position`` is the sample's
place in the epoch's order over all processes (:func:`sample_generator`). A resumed run therefore makes the same
crops, the number of loader workers does not matter, and the ``m`` copies of an image under repeated augmentation
(which sit at different positions) get different crops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from deitlab.data.augment import rrc_params
from deitlab.data.ops import check_interpolation, rand
from deitlab.errors import ConfigError

UINT32_MASK = 0xFFFFFFFF
PIL_FILTERS = {
    "bicubic": Image.Resampling.BICUBIC,  # PIL's resize is antialiased when it shrinks (support widened)
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
}


def sample_generator(seed: int, epoch: int, position: int) -> torch.Generator:
    """A ``torch.Generator`` seeded from ``(seed, epoch, position)`` through numpy's SeedSequence (nearby triples
    give unrelated streams). ``position`` may exceed 32 bits: its high word is a fourth entropy word."""
    words = [int(seed) & UINT32_MASK, int(epoch) & UINT32_MASK, int(position) & UINT32_MASK, int(position) >> 32]
    hi, lo = np.random.SeedSequence(words).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(hi) << 31 | int(lo) >> 1)  # two 32-bit words -> a 63-bit seed


def to_tensor(img: Image.Image) -> torch.Tensor:
    """A PIL image (RGB or L) -> uint8 ``(C, H, W)`` tensor (its own memory)."""
    arr = np.array(img, dtype=np.uint8, copy=True)
    t = torch.from_numpy(arr)
    return t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1).contiguous()


def resize_center_crop(img: Image.Image, size: int, crop_pct: float, interpolation: str) -> Image.Image:
    """timm/DeiT evaluation geometry on one image: shorter side to ``floor(size / crop_pct)`` (torchvision's
    ``Resize(int)`` arithmetic), then the centre ``size x size`` crop (torchvision's ``CenterCrop`` rounding)."""
    w, h = img.size
    short = math.floor(size / crop_pct)
    nw, nh = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
    if (nw, nh) != (w, h):
        img = img.resize((nw, nh), PIL_FILTERS[interpolation])
    top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def _check_size(size: int) -> int:
    if int(size) < 1:
        raise ConfigError(f"image size={size} must be a positive number of pixels")
    return int(size)


@dataclass(frozen=True)
class TrainGeometry:
    """DeiT's train geometry on one original image: RandomResizedCrop + horizontal flip -> ``size x size``.

    Crop boxes follow torchvision's ``RandomResizedCrop.get_params`` (:func:`~deitlab.data.augment.rrc_params`:
    10 attempts, then the centre crop clamped to ``ratio``), drawn on the original's own width and height; the
    box is cut out and resized with PIL (bicubic with PIL's antialiasing, as timm's PIL pipeline does).
    ``scale=None`` skips the random crop: the evaluation geometry at ``crop_pct=1`` (resize + centre crop), then
    the flip.
    """

    size: int
    scale: tuple[float, float] | None = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: float = 0.5
    interpolation: str = "bicubic"

    random = True  # needs a per-sample generator

    def __post_init__(self) -> None:
        _check_size(self.size)
        check_interpolation(self.interpolation)
        if self.scale is not None and not 0 < self.scale[0] <= self.scale[1]:
            raise ConfigError(f"crop scale={self.scale} must be a positive (min, max) range")
        if not 0 < self.ratio[0] <= self.ratio[1]:
            raise ConfigError(f"crop ratio={self.ratio} must be a positive (min, max) range")
        if not 0 <= self.hflip <= 1:
            raise ConfigError(f"hflip={self.hflip} is a probability; use a value in [0, 1]")

    def box(self, width: int, height: int, g: torch.Generator) -> tuple[int, int, int, int]:
        """The crop box ``(left, top, w, h)`` on a ``width x height`` original."""
        top, left, h, w = rrc_params(1, height, width, self.scale, self.ratio, g)
        return int(left[0]), int(top[0]), int(w[0]), int(h[0])

    def __call__(self, img: Image.Image, g: torch.Generator) -> Image.Image:
        if self.scale is None:
            img = resize_center_crop(img, self.size, 1.0, self.interpolation)
        else:
            left, top, w, h = self.box(*img.size, g)
            img = img.crop((left, top, left + w, top + h)).resize(
                (self.size, self.size), PIL_FILTERS[self.interpolation]
            )
        if float(rand(1, g)) < self.hflip:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return img


@dataclass(frozen=True)
class EvalGeometry:
    """DeiT's evaluation geometry on one original image: :func:`resize_center_crop` (224 / 0.875 -> 256 -> 224)."""

    size: int
    crop_pct: float = 0.875
    interpolation: str = "bicubic"

    random = False

    def __post_init__(self) -> None:
        _check_size(self.size)
        check_interpolation(self.interpolation)
        if not 0 < self.crop_pct <= 1:
            raise ConfigError(f"crop_pct={self.crop_pct} must be in (0, 1]; DeiT uses 0.875")

    def __call__(self, img: Image.Image, g: torch.Generator | None = None) -> Image.Image:
        return resize_center_crop(img, self.size, self.crop_pct, self.interpolation)


Geometry = TrainGeometry | EvalGeometry
