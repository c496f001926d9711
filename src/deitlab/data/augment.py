"""Batched, device-side augmentation: every op takes a whole ``(B, C, H, W)`` batch wherever it lives.

The training pipeline (:class:`TrainAugment`) follows timm's ``create_transform`` as DeiT uses it --
RandomResizedCrop + horizontal flip, RandAugment, normalise, random erasing -- but as a handful of batched tensor
ops instead of a per-image PIL pipeline in loader workers. Mixup/CutMix (``mix.py``) runs after it, on the labels
too. Randomness comes only from an explicit ``torch.Generator`` (or an int seed), so a batch is reproducible;
the shared random and warping helpers live in ``ops.py``.

CPU note: on cores shared with other busy processes, use ``torch.set_num_threads(1)`` for the process that
augments -- every multi-threaded op otherwise waits for a descheduled thread, and a batch can take 10-50x longer
(``benchmarks/bench_augment.py`` shows both).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from deitlab.data.ops import (
    as_generator,
    check_batch,
    check_interpolation,
    check_probabilities,
    chunks,
    rand,
    randint_inclusive,
    resize_crops,
    to_pair,
    warp_affine,
)
from deitlab.data.randaugment import RandAugment
from deitlab.errors import ConfigError

CROP_ATTEMPTS = 10  # RandomResizedCrop boxes drawn per image before the centre-crop fallback (torchvision, timm)
ERASING_ATTEMPTS = 10  # random-erasing boxes drawn per slot before giving up on it (timm)
# "auto" crops with per-crop antialiased resizes on the CPU from this output area up; below it, one batched
# grid_sample costs less than the per-crop calls save.
RESIZE_BACKEND_MIN_AREA = 64 * 64

# ----------------------------------------------------------------------------------------------- crop + flip


def rrc_params(
    batch: int,
    height: int,
    width: int,
    scale: Sequence[float],
    ratio: Sequence[float],
    g: torch.Generator,
    attempts: int = CROP_ATTEMPTS,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(top, left, h, w)`` int64 ``(B,)`` crop boxes with torchvision/timm RandomResizedCrop semantics.

    Each sample draws ``attempts`` (area, log-aspect) pairs and keeps the first box that fits; samples with
    none fall back to the centre crop clamped to ``ratio``.
    """
    area = height * width
    log_r = (math.log(ratio[0]), math.log(ratio[1]))
    target = (rand((batch, attempts), g).double() * (scale[1] - scale[0]) + scale[0]) * area
    aspect = torch.exp(rand((batch, attempts), g).double() * (log_r[1] - log_r[0]) + log_r[0])
    w = torch.round(torch.sqrt(target * aspect)).long()
    h = torch.round(torch.sqrt(target / aspect)).long()
    ok = (w <= width) & (h <= height) & (w > 0) & (h > 0)
    first = ok.long().argmax(dim=1, keepdim=True)
    w = w.gather(1, first).squeeze(1)
    h = h.gather(1, first).squeeze(1)
    found = ok.any(dim=1)
    in_ratio = width / height
    if in_ratio < min(ratio):
        fw, fh = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        fw, fh = int(round(height * max(ratio))), height
    else:
        fw, fh = width, height
    w = torch.where(found, w, torch.full_like(w, fw))
    h = torch.where(found, h, torch.full_like(h, fh))
    top = randint_inclusive(0, height - h, g)
    left = randint_inclusive(0, width - w, g)
    top = torch.where(found, top, (height - h) // 2)
    left = torch.where(found, left, (width - w) // 2)
    return top, left, h, w


def random_resized_crop_flip(
    x: torch.Tensor,
    size: int | Sequence[int],
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    hflip: float = 0.5,
    *,
    interpolation: str = "bilinear",
    backend: str = "auto",
    generator: torch.Generator | int | None = None,
) -> torch.Tensor:
    """RandomResizedCrop + random horizontal flip of a whole batch.

    Crop boxes follow torchvision's ``RandomResizedCrop.get_params`` (integer boxes, 10 attempts, centre-crop
    fallback), drawn for the whole batch at once. Two resampling backends give the same boxes and flips:

    * ``"grid"``: per-sample affine grids and one ``grid_sample`` call for the batch (per CPU chunk); pixel
      centres aligned as PIL's resize; no antialiasing when a crop is shrunk. Any device, uint8 or float.
    * ``"resize"``: one antialiased ``F.interpolate`` per crop -- PIL's resize filter (bicubic a = -0.5), which
      timm's RandomResizedCrop uses, and on the CPU 2-3x faster than ``grid_sample`` thanks to torch's uint8 kernels.

    ``"auto"`` picks ``"resize"`` for uint8 batches on the CPU with outputs of at least 64 x 64 (below that the
    per-crop calls cost more than they save) and ``"grid"`` elsewhere.
    Output dtype = input dtype (uint8 is rounded).
    """
    check_batch(x, "random_resized_crop_flip")
    check_interpolation(interpolation)
    if backend not in ("auto", "grid", "resize"):
        raise ConfigError(f"backend={backend!r} is not supported; choose auto, grid or resize")
    if not (0 < scale[0] <= scale[1]) or not (0 < ratio[0] <= ratio[1]):
        raise ConfigError(f"scale={tuple(scale)} / ratio={tuple(ratio)} must be positive (min, max) ranges")
    g = as_generator(generator)
    b, c, height, width = x.shape
    out_h, out_w = to_pair(size)
    top, left, h, w = rrc_params(b, height, width, scale, ratio, g)
    flip = rand(b, g) < hflip
    if backend == "auto":
        big = out_h * out_w >= RESIZE_BACKEND_MIN_AREA
        backend = "resize" if x.device.type == "cpu" and x.dtype == torch.uint8 and big else "grid"
    if backend == "resize":
        boxes = list(zip(top.tolist(), left.tolist(), h.tolist(), w.tolist(), flip.tolist()))
        return resize_crops(x, boxes, (out_h, out_w), interpolation)
    sx = w.float() / width
    sx = torch.where(flip, -sx, sx)  # a mirrored x axis = horizontal flip of the crop
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0] = sx
    theta[:, 0, 2] = (2 * left + w).float() / width - 1
    theta[:, 1, 1] = h.float() / height
    theta[:, 1, 2] = (2 * top + h).float() / height - 1
    return warp_affine(x, theta, (out_h, out_w), interpolation=interpolation, fill=None)


# ----------------------------------------------------------------------------------------------- normalise, eval


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (0..255) batch -> float32 ``(x / 255 - mean) / std`` per channel (contiguous)."""
    check_batch(x, "normalize")
    if len(mean) != x.shape[1] or len(std) != x.shape[1]:
        raise ConfigError(f"mean={tuple(mean)} / std={tuple(std)} need {x.shape[1]} entries (one per channel)")
    m = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1) * 255
    inv = 1.0 / (torch.tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1) * 255)
    out = torch.empty(x.shape, dtype=torch.float32, device=x.device)
    for sl in chunks(x.shape[0], x.device, x[0].numel()):
        torch.mul(x[sl].float().sub_(m), inv, out=out[sl])
    return out


def eval_transform(
    x: torch.Tensor, size: int, crop_pct: float = 0.875, *, interpolation: str = "bicubic"
) -> torch.Tensor:
    """timm/DeiT evaluation geometry on a uint8 batch: resize the shorter side to ``floor(size / crop_pct)``, then
    centre-crop ``size x size`` (224 / 0.875 -> 256 -> 224). Antialiased, PIL-compatible bicubic; uint8 out.

    With ``crop_pct=1`` and images already ``size`` on the shorter side this is just the centre crop.
    """
    check_batch(x, "eval_transform")
    check_interpolation(interpolation)
    if not 0 < crop_pct <= 1:
        raise ConfigError(f"crop_pct={crop_pct} must be in (0, 1]; DeiT uses 0.875")
    h, w = x.shape[-2:]
    short = math.floor(size / crop_pct)
    if min(h, w) != short:
        nh, nw = (short, int(short * w / h)) if h <= w else (int(short * h / w), short)
        kw = {"antialias": True} if interpolation != "nearest" else {}
        y = F.interpolate(x.float(), size=(nh, nw), mode=interpolation, align_corners=None, **kw)
        x = y.round_().clamp_(0, 255).to(torch.uint8) if x.dtype == torch.uint8 else y.to(x.dtype)
        h, w = nh, nw
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return x[:, :, top : top + size, left : left + size]


# ----------------------------------------------------------------------------------------------- random erasing


def random_erasing(
    x: torch.Tensor,
    p: float = 0.25,
    *,
    mode: str = "pixel",
    count: int = 1,
    min_count: int = 1,
    min_area: float = 0.02,
    max_area: float = 1 / 3,
    min_aspect: float = 0.3,
    max_aspect: float | None = None,
    generator: torch.Generator | int | None = None,
) -> torch.Tensor:
    """timm's ``RandomErasing`` on a *normalised* float batch, in place (the batch is also returned).

    Each image is erased with probability ``p``: it gets ``randint(min_count, count)`` boxes, each of area
    ``U(min_area, max_area) * H * W / n_boxes`` and aspect ``exp(U(log min_aspect, log max_aspect))`` (10 tries
    to fit, else no box). ``mode``: ``"pixel"`` = per-pixel N(0, 1) noise, ``"rand"`` = one N(0, 1) colour per
    box and channel, ``"const"`` = zeros (the dataset mean after normalisation). Boxes are drawn for the whole
    batch at once; filling is one slice assignment per erased box (about ``p * B`` small ops).
    """
    check_batch(x, "random_erasing")
    if mode not in ("pixel", "rand", "const"):
        raise ConfigError(f"random erasing mode={mode!r} is not supported; choose pixel, rand or const")
    if not 1 <= min_count <= count:
        raise ConfigError(f"random erasing needs 1 <= min_count <= count, got min_count={min_count}, count={count}")
    if not x.is_floating_point():
        raise ConfigError(f"random_erasing expects the normalised float batch, got dtype {x.dtype}")
    g = as_generator(generator)
    c = x.shape[1]
    boxes = erasing_boxes(
        x.shape[0], x.shape[-2], x.shape[-1], p, count, min_count, min_area, max_area, min_aspect, max_aspect, g
    )
    sizes = [c * h * w if mode == "pixel" else c for _, _, _, h, w in boxes]
    noise = torch.randn(sum(sizes), generator=g, device=g.device, dtype=x.dtype).to(x.device) if boxes else None
    start = 0
    for (i, top, left, h, w), n in zip(boxes, sizes):
        box = x[i, :, top : top + h, left : left + w]
        if mode == "pixel":
            box.copy_(noise[start : start + n].view(c, h, w))
        elif mode == "rand":
            box.copy_(noise[start : start + n].view(c, 1, 1).expand_as(box))
        else:
            box.zero_()
        start += n
    return x


def erasing_boxes(
    batch: int,
    height: int,
    width: int,
    p: float,
    count: int,
    min_count: int,
    min_area: float,
    max_area: float,
    min_aspect: float,
    max_aspect: float | None,
    g: torch.Generator,
) -> list[tuple[int, int, int, int, int]]:
    """Draw random-erasing boxes ``(image, top, left, h, w)`` for a batch (all draws vectorised, 10 tries per box)."""
    max_aspect = max_aspect or 1 / min_aspect
    log_a = (math.log(min_aspect), math.log(max_aspect))
    erase = rand(batch, g) < p
    n_boxes = randint_inclusive(min_count, torch.full((batch,), count), g)
    boxes = []
    for slot in range(count):
        target = (rand((batch, ERASING_ATTEMPTS), g).double() * (max_area - min_area) + min_area) * (height * width)
        target = target / n_boxes.view(batch, 1).double()
        aspect = torch.exp(rand((batch, ERASING_ATTEMPTS), g).double() * (log_a[1] - log_a[0]) + log_a[0])
        h = torch.round(torch.sqrt(target * aspect)).long()  # timm: h uses * aspect, w uses / aspect
        w = torch.round(torch.sqrt(target / aspect)).long()
        ok = (w < width) & (h < height)
        first = ok.long().argmax(dim=1, keepdim=True)
        h, w = h.gather(1, first).squeeze(1), w.gather(1, first).squeeze(1)
        top = randint_inclusive(0, (height - h).clamp(min=0), g)
        left = randint_inclusive(0, (width - w).clamp(min=0), g)
        active = erase & ok.any(dim=1) & (slot < n_boxes)
        for i in active.nonzero().squeeze(1).tolist():
            boxes.append((i, int(top[i]), int(left[i]), int(h[i]), int(w[i])))
    return boxes


# ----------------------------------------------------------------------------------------------- pipelines


class TrainAugment:
    """The DeiT/timm training transform for uint8 batches: RRC + flip -> RandAugment -> normalise -> erasing.

    Built once from explicit settings; ``aug(images_uint8, generator)`` returns the normalised float32 batch.
    Mixup/CutMix is applied separately (it needs the labels), see :class:`deitlab.data.mix.Mixup`.

    Args:
        img_size: output side (or ``(H, W)``).
        mean, std: per-channel normalisation in [0, 1] units.
        scale, ratio: RandomResizedCrop area and aspect ranges; ``scale=None`` skips the crop (images must
            already be ``img_size``) -- useful for tiny images.
        hflip: horizontal flip probability.
        rand_augment: timm RandAugment string (``"rand-m9-mstd0.5-inc1"``) or ``None``.
        re_prob, re_mode, re_count: random erasing probability, fill mode and maximum boxes per image.
        interpolation: resampling of the crop and of RandAugment's geometric ops (DeiT: bicubic).
        ra_interpolation: override for RandAugment's geometric ops only (bilinear is ~2.5x cheaper on the CPU).
        fill: RandAugment fill colour in 0..255; default ``round(255 * mean)`` per channel, as timm's
            ``create_transform`` passes ``img_mean`` to RandAugment.
    """

    def __init__(
        self,
        *,
        img_size: int | Sequence[int],
        mean: Sequence[float],
        std: Sequence[float],
        scale: Sequence[float] | None = (0.08, 1.0),
        ratio: Sequence[float] = (3 / 4, 4 / 3),
        hflip: float = 0.5,
        rand_augment: str | None = "rand-m9-mstd0.5-inc1",
        re_prob: float = 0.25,
        re_mode: str = "pixel",
        re_count: int = 1,
        interpolation: str = "bicubic",
        ra_interpolation: str | None = None,
        fill: Sequence[float] | None = None,
    ) -> None:
        check_interpolation(interpolation)
        if len(mean) != len(std):
            raise ConfigError(f"mean={tuple(mean)} and std={tuple(std)} must have one entry per channel")
        check_probabilities(hflip=hflip, re_prob=re_prob)
        self.img_size = to_pair(img_size)
        self.mean, self.std = tuple(mean), tuple(std)
        self.scale = None if scale is None else tuple(scale)
        self.ratio, self.hflip = tuple(ratio), hflip
        self.interpolation = interpolation
        if fill is None:
            fill = tuple(min(255, round(255 * m)) for m in self.mean)
        ra_interp = ra_interpolation or interpolation
        self.rand_augment = RandAugment(rand_augment, fill=fill, interpolation=ra_interp) if rand_augment else None
        self.re_prob, self.re_mode, self.re_count = re_prob, re_mode, re_count
        random_erasing(torch.zeros(1, 1, 4, 4), 0.0, mode=re_mode, count=re_count, generator=0)  # validate early

    @property
    def few_views(self) -> bool:
        """Whether an image has at most two training views, itself and its mirror (no crop, RandAugment or
        erasing): a frozen teacher's answers on them can then be remembered (``deitlab.distill.CachedTeacher``)."""
        return self.scale is None and self.rand_augment is None and self.re_prob == 0

    def __call__(self, images: torch.Tensor, generator: torch.Generator | int | None = None) -> torch.Tensor:
        check_batch(images, "TrainAugment")
        if images.dtype != torch.uint8:
            raise ConfigError(f"TrainAugment expects a uint8 batch, got {images.dtype}")
        g = as_generator(generator)
        x = images
        if self.scale is not None:
            x = random_resized_crop_flip(
                x, self.img_size, self.scale, self.ratio, self.hflip, interpolation=self.interpolation, generator=g
            )
        else:
            if tuple(x.shape[-2:]) != self.img_size:
                raise ConfigError(f"scale=None needs images of size {self.img_size}, got {tuple(x.shape[-2:])}")
            flip = (rand(x.shape[0], g) < self.hflip).to(x.device)
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
        if self.rand_augment is not None:
            x = self.rand_augment(x, g, inplace=x is not images)
        x = normalize(x, self.mean, self.std)
        if self.re_prob > 0:
            x = random_erasing(x, self.re_prob, mode=self.re_mode, count=self.re_count, generator=g)
        return x.contiguous()

    def __repr__(self) -> str:
        return (
            f"TrainAugment(img_size={self.img_size}, scale={self.scale}, ratio={self.ratio}, hflip={self.hflip}, "
            f"rand_augment={self.rand_augment!r}, re_prob={self.re_prob}, re_mode={self.re_mode!r}, "
            f"interpolation={self.interpolation!r})"
        )


class EvalAugment:
    """Evaluation transform: :func:`eval_transform` (resize + centre crop) then :func:`normalize`."""

    def __init__(
        self,
        *,
        img_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        crop_pct: float = 0.875,
        interpolation: str = "bicubic",
    ) -> None:
        check_interpolation(interpolation)
        if not 0 < crop_pct <= 1:
            raise ConfigError(f"crop_pct={crop_pct} must be in (0, 1]; DeiT uses 0.875")
        self.img_size, self.crop_pct, self.interpolation = int(img_size), crop_pct, interpolation
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, images: torch.Tensor, generator: torch.Generator | int | None = None) -> torch.Tensor:
        x = eval_transform(images, self.img_size, self.crop_pct, interpolation=self.interpolation)
        return normalize(x, self.mean, self.std).contiguous()

    def __repr__(self) -> str:
        return f"EvalAugment(img_size={self.img_size}, crop_pct={self.crop_pct}, interpolation={self.interpolation!r})"
