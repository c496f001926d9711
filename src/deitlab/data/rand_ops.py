"""RandAugment's ops on uint8 batches, and the table :data:`OPS` that names them (timm ``auto_augment.py``).

Every op is a :class:`RandOp`: its *kind* says how a batch runs it, its function computes it, and its level map
turns a magnitude ``m`` (0..mmax, in units of 1/10) and a sign (+-1, for signed ops) into the op's argument.

* ``"lut"`` -- point ops: the output pixel depends only on the input pixel and per-image statistics. The function
  builds per-(image, channel) 256-entry tables ``(k, C, 256)``, so a layer applies all its point ops with one
  lookup (:func:`apply_lut`).
* ``"blend"`` -- Color and Sharpness mix channels or neighbours; the function returns the blended uint8 batch.
* ``"geometric"`` -- the function returns PIL affine data ``(k, 2, 3)`` (output pixel -> input pixel), so a layer
  runs all its geometric ops as one warp (:func:`warp_pil_affine`).

======================  ==========================================  =============================================
op                      argument from magnitude m                   effect (PIL semantics)
======================  ==========================================  =============================================
AutoContrast            --                                          per-channel min..max stretched to 0..255
Equalize                --                                          per-channel histogram equalisation (PIL)
Invert                  --                                          255 - x
Rotate                  deg = +-30 m/10                             rotate about the centre, counter-clockwise
Posterize               bits = int(4 m/10)                          keep the top ``bits`` bits (0 -> black)
PosterizeIncreasing     bits = 4 - int(4 m/10)                      same
Solarize                t = min(256, int(256 m/10))                 x >= t -> 255 - x
SolarizeIncreasing      t = 256 - min(256, int(256 m/10))           same
SolarizeAdd             a = min(128, int(110 m/10))                 x < 128 -> min(255, x + a)
Color                   f = 1.8 m/10 + 0.1                          blend(gray(x), x, f)
ColorIncreasing         f = max(0.1, 1 +- 0.9 m/10)                 same
Contrast(Increasing)    as Color(Increasing)                        blend(mean of gray(x), x, f)
Brightness(Increasing)  as Color(Increasing)                        blend(0, x, f)
Sharpness(Increasing)   as Color(Increasing)                        blend(3x3 SMOOTH(x), x, f), border kept
ShearX / ShearY         s = +-0.3 m/10                              x_in = x + s*y / y_in = y + s*x (origin top-left)
TranslateXRel / YRel    d = +-0.45 m/10 * width / height            x_in = x + d / y_in = y + d
======================  ==========================================  =============================================

Blends truncate like PIL's ``Image.blend`` (``floor(clamp(a + f (b - a), 0, 255))``); point ops and blends match
PIL exactly, geometric ops (bilinear) to within one grey level.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from deitlab.data.ops import chunks, shift_lines, warp_affine

LEVEL_DENOM = 10.0  # magnitudes are in units of 1/10 of the strongest setting (timm's _LEVEL_DENOM)
# timm's level -> argument maps at full magnitude (m = LEVEL_DENOM); see the module docstring's table.
ROTATE_MAX_DEGREES = 30.0
POSTERIZE_MAX_BITS = 4
SOLARIZE_LEVELS = 256  # threshold 256 = no pixel is inverted
SOLARIZE_ADD_MAX, SOLARIZE_ADD_CAP = 110, 128
ENHANCE_SPAN, ENHANCE_MIN = 1.8, 0.1  # enhance factor 0.1 .. 1.9 (1 = unchanged)
ENHANCE_INCREASING_SPAN = 0.9  # factor 1 +- 0.9, floored at ENHANCE_MIN
SHEAR_MAX = 0.3
TRANSLATE_MAX_FRACTION = 0.45
SOLARIZE_ADD_THRESHOLD = 128  # SolarizeAdd brightens only pixels below this
# PIL's RGB -> L weights (ITU-R 601-2 luma in 16-bit fixed point) and rounding offset.
GRAY_WEIGHTS = (19595.0, 38470.0, 7471.0)
GRAY_SHIFT, GRAY_ROUND = 65536, 0x8000
SMOOTH_CENTER_EXTRA, SMOOTH_TOTAL = 4, 13  # PIL SMOOTH kernel: 1 1 1 / 1 5 1 / 1 1 1, divided by 13


# ----------------------------------------------------------------------------------------------- point ops (tables)


def _v(t: torch.Tensor) -> torch.Tensor:
    return t.view(-1, 1, 1)


def _levels(x: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.arange(256, dtype=dtype).expand(x.shape[0], x.shape[1], 256)


def invert_lut(x: torch.Tensor, _arg: torch.Tensor | None = None) -> torch.Tensor:
    return 255 - _levels(x)


def posterize_lut(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    shift = (8 - bits.clamp(0, 8)).to(torch.int32).view(-1, 1, 1)
    mask = (255 >> shift) << shift  # bits = 0 -> mask 0 -> black
    return (_levels(x, torch.int32) & mask).float()


def solarize_lut(x: torch.Tensor, thresh: torch.Tensor) -> torch.Tensor:
    lv = _levels(x)
    return torch.where(lv >= _v(thresh), 255 - lv, lv)


def solarize_add_lut(x: torch.Tensor, add: torch.Tensor, thresh: int = SOLARIZE_ADD_THRESHOLD) -> torch.Tensor:
    lv = _levels(x)
    return torch.where(lv < thresh, (lv + _v(add)).clamp(max=255), lv)


def _blend_lut(degenerate: torch.Tensor, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL ``Image.blend(constant, image, f)`` as a table: ``floor(clamp(d + f (v - d), 0, 255))`` in float32."""
    lv = _levels(x)
    return (degenerate + _v(factor) * (lv - degenerate)).clamp_(0, 255).floor_()


def brightness_lut(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend_lut(torch.zeros(()), x, factor)


def contrast_lut(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    mean = torch.floor(gray(x).double().mean(dim=(1, 2, 3)) + 0.5).float().cpu()  # int(mean + 0.5), ImageStat
    return _blend_lut(_v(mean), x, factor)


def autocontrast_lut(x: torch.Tensor, _arg: torch.Tensor | None = None) -> torch.Tensor:
    lo = x.amin(dim=(2, 3)).double().cpu()  # (k, C)
    hi = x.amax(dim=(2, 3)).double().cpu()
    scale = 255.0 / (hi - lo).clamp(min=1)
    levels = _levels(x, torch.float64)
    lut = torch.floor(levels * scale[..., None] - (lo * scale)[..., None]).clamp_(0, 255)  # int() as PIL
    return torch.where((hi > lo)[..., None], lut, levels).float()


def histogram(x: torch.Tensor) -> torch.Tensor:
    """Per-(image, channel) 256-bin histograms ``(k, C, 256)`` (int64) with one ``bincount``."""
    k, c = x.shape[:2]
    offs = torch.arange(0, k * c * 256, 256, device=x.device, dtype=torch.int32).view(k * c, 1)
    flat = torch.add(x.reshape(k * c, -1), offs).view(-1)  # uint8 + int32 offsets -> int32 bin index
    return torch.bincount(flat, minlength=k * c * 256).view(k, c, 256)


def equalize_lut(x: torch.Tensor, _arg: torch.Tensor | None = None) -> torch.Tensor:
    """PIL ``ImageOps.equalize`` per image and channel: ``lut[i] = (step // 2 + cdf_excl[i]) // step`` where
    ``step = (N - count of the last non-empty bin) // 255``; identity when ``step == 0``."""
    hist = histogram(x).cpu()  # (k, C, 256)
    levels = torch.arange(256)
    last = torch.where(hist > 0, levels, -1).amax(dim=-1, keepdim=True)  # index of the last non-empty bin
    step = (hist.sum(dim=-1, keepdim=True) - hist.gather(-1, last.clamp(min=0))) // 255
    cdf_excl = hist.cumsum(-1) - hist
    lut = (step // 2 + cdf_excl) // step.clamp(min=1)
    return torch.where(step > 0, lut.clamp(max=255), levels).float()


def apply_lut(x: torch.Tensor, lut: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``out[i, c] = lut[i, c][x[i, c]]`` for a uint8 batch and a ``(k, C, 256)`` table (one lookup per chunk)."""
    k, c = x.shape[:2]
    table = lut.to(device=x.device, dtype=torch.uint8).reshape(k * c * 256)
    out = torch.empty_like(x) if out is None else out
    for sl in chunks(k, x.device, x[0].numel()):
        n = (sl.stop - sl.start) * c
        offs = torch.arange(
            sl.start * c * 256, sl.start * c * 256 + n * 256, 256, device=x.device, dtype=torch.int32
        ).view(n, 1)
        idx = torch.add(x[sl].reshape(n, -1), offs).view(-1)  # uint8 + int32 offsets -> int32 table index
        out[sl] = table.index_select(0, idx).view(out[sl].shape)
    return out


# ----------------------------------------------------------------------------------------------- blends


def gray(x: torch.Tensor) -> torch.Tensor:
    """PIL's RGB -> L conversion ``(r*19595 + g*38470 + b*7471 + 0x8000) >> 16`` as float ``(k, 1, H, W)``.

    Every partial sum is an integer below 2**24, so float32 gives PIL's integer result exactly.
    """
    if x.shape[1] == 1:
        return x.float()
    w = torch.tensor([GRAY_WEIGHTS], device=x.device)
    k, _, h, wd = x.shape
    acc = torch.matmul(w, x.reshape(k, 3, h * wd).float()).view(k, 1, h, wd)
    return acc.add_(GRAY_ROUND).div_(GRAY_SHIFT).floor_()


def _blend(degenerate: torch.Tensor, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL ``Image.blend(degenerate, x, factor)``: ``floor(clamp(d + f (x - d), 0, 255))`` (float ``degenerate``)."""
    f = factor.to(x.device, torch.float32).view(-1, 1, 1, 1)
    out = torch.addcmul(degenerate, x.float() - degenerate, f)
    return out.clamp_(0, 255).to(torch.uint8)  # values are >= 0, so truncation is PIL's floor


def color(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x  # PIL's Color on an L image blends the image with itself
    return _blend(gray(x).expand_as(x), x, factor)


def sharpness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with PIL's SMOOTH filter (3x3 kernel 1 1 1 / 1 5 1 / 1 1 1, /13, rounded; border pixels kept)."""
    h, w = x.shape[-2:]
    if h < 3 or w < 3:
        return x
    degenerate = x.float()
    rows = degenerate[:, :, :-2] + degenerate[:, :, 1:-1] + degenerate[:, :, 2:]  # 3x3 box sums, separably
    box = rows[..., :-2] + rows[..., 1:-1] + rows[..., 2:]
    center = degenerate[:, :, 1:-1, 1:-1]
    # integer sums; sum/13 is never within 1/26 of .5, so this rounds exactly as PIL does
    smooth = box.add_(center, alpha=SMOOTH_CENTER_EXTRA).div_(SMOOTH_TOTAL).add_(0.5).floor_()
    degenerate[:, :, 1:-1, 1:-1] = smooth
    return _blend(degenerate, x, factor)


# ----------------------------------------------------------------------------------------------- geometric ops


def _affine(
    a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, d: torch.Tensor, e: torch.Tensor, f: torch.Tensor
) -> torch.Tensor:
    """Six ``(k,)`` tensors -> ``(k, 2, 3)`` affine data ``[[a, b, c], [d, e, f]]``."""
    return torch.stack([torch.stack([a, b, c], -1), torch.stack([d, e, f], -1)], -2)


def shear_x_matrix(s: torch.Tensor, height: int, width: int) -> torch.Tensor:
    one, zero = torch.ones_like(s), torch.zeros_like(s)
    return _affine(one, s, zero, zero, one, zero)


def shear_y_matrix(s: torch.Tensor, height: int, width: int) -> torch.Tensor:
    one, zero = torch.ones_like(s), torch.zeros_like(s)
    return _affine(one, zero, zero, s, one, zero)


def translate_x_matrix(d: torch.Tensor, height: int, width: int) -> torch.Tensor:
    one, zero = torch.ones_like(d), torch.zeros_like(d)
    return _affine(one, zero, d * width, zero, one, zero)


def translate_y_matrix(d: torch.Tensor, height: int, width: int) -> torch.Tensor:
    one, zero = torch.ones_like(d), torch.zeros_like(d)
    return _affine(one, zero, zero, zero, one, d * height)


def rotate_matrix(degrees: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """PIL ``Image.rotate``: counter-clockwise by ``degrees`` about the centre."""
    t = -torch.deg2rad(degrees)
    cx, cy = width / 2.0, height / 2.0
    cos, sin = torch.cos(t), torch.sin(t)
    return _affine(cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy)


def warp_pil_affine(
    x: torch.Tensor, matrix: torch.Tensor, fill: torch.Tensor, interpolation: str, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Warp with PIL affine data ``matrix`` ``(k, 2, 3)`` mapping output pixel coordinates to input ones.

    Rows whose map moves pixels along one axis only (translations and shears: 4 of RandAugment's 5 geometric ops)
    take :func:`~deitlab.data.ops.shift_lines`, a 1-D filter; the rest (rotations) one ``grid_sample``.
    """
    out = torch.empty_like(x) if out is None else out
    a, b, c = matrix[:, 0, 0], matrix[:, 0, 1], matrix[:, 0, 2]
    d, e, f = matrix[:, 1, 0], matrix[:, 1, 1], matrix[:, 1, 2]
    unit = (a == 1) & (e == 1)
    along_x = unit & (d == 0) & (f == 0)  # x_in = x + b (y + 1/2) + c, y_in = y
    along_y = unit & (b == 0) & (c == 0) & ~along_x  # y_in = y + d (x + 1/2) + f, x_in = x
    if interpolation == "nearest":  # keep grid_sample's rounding of the source point
        along_x, along_y = torch.zeros_like(along_x), torch.zeros_like(along_y)
    h, w = x.shape[-2:]
    for rows, dim in ((along_x, 3), (along_y, 2), (~(along_x | along_y), 0)):
        ids = rows.nonzero().squeeze(1)
        if len(ids) == 0:
            continue
        lo, hi = int(ids[0]), int(ids[-1]) + 1
        span = hi - lo == len(ids)  # one run of rows (RandAugment sorts its rows by op): views, no copies
        part, dest = (x[lo:hi], out[lo:hi]) if span else (x.index_select(0, ids.to(x.device)), None)
        if dim == 3:
            shift = b[ids, None] * (torch.arange(h) + 0.5) + c[ids, None]  # (n, H)
            done = shift_lines(part, shift, 3, interpolation=interpolation, fill=fill, out=dest)
        elif dim == 2:
            shift = d[ids, None] * (torch.arange(w) + 0.5) + f[ids, None]  # (n, W)
            done = shift_lines(part, shift, 2, interpolation=interpolation, fill=fill, out=dest)
        else:
            done = _grid_warp(part, matrix[ids], fill, interpolation, dest)
        if not span:
            out.index_copy_(0, ids.to(x.device), done)
    return out


def _grid_warp(
    x: torch.Tensor, matrix: torch.Tensor, fill: torch.Tensor, interpolation: str, out: torch.Tensor | None
) -> torch.Tensor:
    """Any PIL affine map through ``grid_sample`` (the pixel-space map converted to normalised coordinates)."""
    k, _, h, w = x.shape
    # Pixel coords p = (n + 1) * size / 2 for normalised n; convert the pixel-space map to normalised space.
    a, b, c = matrix[:, 0, 0], matrix[:, 0, 1], matrix[:, 0, 2]
    d, e, f = matrix[:, 1, 0], matrix[:, 1, 1], matrix[:, 1, 2]
    theta = torch.empty(k, 2, 3)
    theta[:, 0, 0] = a
    theta[:, 0, 1] = b * h / w
    theta[:, 0, 2] = a + b * h / w + 2 * c / w - 1
    theta[:, 1, 0] = d * w / h
    theta[:, 1, 1] = e
    theta[:, 1, 2] = d * w / h + e + 2 * f / h - 1
    return warp_affine(x, theta, interpolation=interpolation, fill=fill, out=out, rounding="floor")  # as PIL


# ----------------------------------------------------------------------------------------------- level -> argument
# Each map takes per-sample magnitudes m and signs s, both float32 (k,), and returns the op's argument (k,).


def rotate_level(m: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return m / LEVEL_DENOM * ROTATE_MAX_DEGREES * s


def posterize_level(m: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return torch.floor(m / LEVEL_DENOM * POSTERIZE_MAX_BITS)


def posterize_increasing_level(m: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return POSTERIZE_MAX_BITS - torch.floor(m / LEVEL_DENOM * POSTERIZE_MAX_BITS)


def solarize_level(m: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return torch.floor(m / LEVEL_DENOM * SOLARIZE_LEVELS).clamp(max=SOLARIZE_LEVELS)


def solarize_increasing_level(m: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return SOLARIZE_LEVELS - torch.floor(m / LEVEL_DENOM * SOLARIZE_LEVELS).clamp(max=SOLARIZE_LEVELS)


def solarize_add_level(m: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return torch.floor(m / LEVEL_DENOM * SOLARIZE_ADD_MAX).clamp(max=SOLARIZE_ADD_CAP)


def enhance_level(m: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return m / LEVEL_DENOM * ENHANCE_SPAN + ENHANCE_MIN


def enhance_increasing_level(m: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return (1.0 + m / LEVEL_DENOM * ENHANCE_INCREASING_SPAN * s).clamp(min=ENHANCE_MIN)


def shear_level(m: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return m / LEVEL_DENOM * SHEAR_MAX * s


def translate_level(m: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    return m / LEVEL_DENOM * TRANSLATE_MAX_FRACTION * s


# ----------------------------------------------------------------------------------------------- the table

KINDS = ("lut", "blend", "geometric")  # also the order in which a layer lays out its rows (see RandAugment)


@dataclass(frozen=True)
class RandOp:
    """One RandAugment op.

    Attributes:
        kind: ``"lut"`` (``fn(x, arg)`` -> ``(k, C, 256)`` tables), ``"blend"`` (``fn(x, arg)`` -> uint8 batch) or
            ``"geometric"`` (``fn(arg, height, width)`` -> ``(k, 2, 3)`` PIL affine data).
        fn: the op, as above.
        level: magnitude, sign -> argument; ``None`` for ops without one.
    """

    kind: str
    fn: Callable[..., torch.Tensor]
    level: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None

    def argument(self, magnitude: torch.Tensor, sign: torch.Tensor) -> torch.Tensor | None:
        return None if self.level is None else self.level(magnitude, sign)


OPS: dict[str, RandOp] = {
    "AutoContrast": RandOp("lut", autocontrast_lut),
    "Equalize": RandOp("lut", equalize_lut),
    "Invert": RandOp("lut", invert_lut),
    "Posterize": RandOp("lut", posterize_lut, posterize_level),
    "PosterizeIncreasing": RandOp("lut", posterize_lut, posterize_increasing_level),
    "Solarize": RandOp("lut", solarize_lut, solarize_level),
    "SolarizeIncreasing": RandOp("lut", solarize_lut, solarize_increasing_level),
    "SolarizeAdd": RandOp("lut", solarize_add_lut, solarize_add_level),
    "Contrast": RandOp("lut", contrast_lut, enhance_level),
    "ContrastIncreasing": RandOp("lut", contrast_lut, enhance_increasing_level),
    "Brightness": RandOp("lut", brightness_lut, enhance_level),
    "BrightnessIncreasing": RandOp("lut", brightness_lut, enhance_increasing_level),
    "Color": RandOp("blend", color, enhance_level),
    "ColorIncreasing": RandOp("blend", color, enhance_increasing_level),
    "Sharpness": RandOp("blend", sharpness, enhance_level),
    "SharpnessIncreasing": RandOp("blend", sharpness, enhance_increasing_level),
    "Rotate": RandOp("geometric", rotate_matrix, rotate_level),
    # the ops that move pixels along x, then along y: RandAugment's rows of each axis form one run (warp_pil_affine)
    "ShearX": RandOp("geometric", shear_x_matrix, shear_level),
    "TranslateXRel": RandOp("geometric", translate_x_matrix, translate_level),
    "ShearY": RandOp("geometric", shear_y_matrix, shear_level),
    "TranslateYRel": RandOp("geometric", translate_y_matrix, translate_level),
}
ALL_OPS = tuple(OPS)
