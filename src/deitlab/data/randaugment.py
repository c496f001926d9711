"""RandAugment on uint8 batches with timm's config strings and op semantics, vectorised per op.

Config string ``rand-<section>-<section>...`` (timm ``rand_augment_transform``), sections in any order:

==========  =====================================================================  =========
section     meaning                                                                default
==========  =====================================================================  =========
``mM``      magnitude M (0..mmax)                                                  10
``nN``      ops per image                                                          2
``pP``      probability of applying each chosen op                                 0.5
``mstdS``   per-application magnitude noise N(M, S); S > 100 = uniform in [0, M]    0
``mmaxX``   clamp magnitudes to [0, X]                                             10
``incI``    1 = the "increasing" op set (severity grows with M, as DeiT uses)     0
==========  =====================================================================  =========

Per image and layer (n layers in sequence), one op is drawn uniformly *with replacement* from the op set, applied
with probability ``p`` with magnitude ``m = clamp(N(M, S), 0, mmax)``; signed ops flip sign with probability 0.5.
Each layer gathers the rows that apply an op, sorted by op, so that every op runs once on a contiguous
sub-batch with per-sample magnitudes: all point ops of the layer share one 256-entry table lookup, all geometric
ops one ``grid_sample``. The level -> argument maps follow timm's ``auto_augment.py`` (``m`` in units of 1/10):

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
PIL exactly, geometric ops (bilinear) to within one grey level. Pixels that geometric ops move in from outside
get the fill colour (timm default (128, 128, 128); ``TrainAugment`` passes ``round(255 * mean)`` like timm's
``create_transform``). Two deliberate differences from timm: the interpolation is fixed (timm's default picks
bilinear or bicubic at random per call; DeiT fixes bicubic), and ``bits = 0`` posterises to black as older Pillow
did (Pillow 13 raises for it, which crashes timm's ``inc1`` set at magnitude 10).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

import torch

from deitlab.data.augment import _check_interp, as_generator, chunks, rand, warp_affine
from deitlab.errors import ConfigError

LEVEL_DENOM = 10.0

RAND_TRANSFORMS = (
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "Posterize",
    "Solarize",
    "SolarizeAdd",
    "Color",
    "Contrast",
    "Brightness",
    "Sharpness",
    "ShearX",
    "ShearY",
    "TranslateXRel",
    "TranslateYRel",
)
RAND_INCREASING_TRANSFORMS = (
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "PosterizeIncreasing",
    "SolarizeIncreasing",
    "SolarizeAdd",
    "ColorIncreasing",
    "ContrastIncreasing",
    "BrightnessIncreasing",
    "SharpnessIncreasing",
    "ShearX",
    "ShearY",
    "TranslateXRel",
    "TranslateYRel",
)


# ----------------------------------------------------------------------------------------------- pixel ops
# Point ops (the output pixel depends only on the input pixel and per-image statistics) are built as per-(image,
# channel) 256-entry lookup tables ``(k, C, 256)`` from a uint8 sub-batch ``(k, C, H, W)`` and a float ``(k,)``
# argument; a layer applies all its point ops with a single lookup. Color and Sharpness mix channels or
# neighbours and run directly.


def _v(t: torch.Tensor) -> torch.Tensor:
    return t.view(-1, 1, 1)


def _levels(x: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    return torch.arange(256, dtype=dtype).expand(x.shape[0], x.shape[1], 256)


def invert_lut(x: torch.Tensor, _arg=None) -> torch.Tensor:
    return 255 - _levels(x)


def posterize_lut(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    shift = (8 - bits.clamp(0, 8)).to(torch.int32).view(-1, 1, 1)
    mask = (255 >> shift) << shift  # bits = 0 -> mask 0 -> black
    return (_levels(x, torch.int32) & mask).float()


def solarize_lut(x: torch.Tensor, thresh: torch.Tensor) -> torch.Tensor:
    lv = _levels(x)
    return torch.where(lv >= _v(thresh), 255 - lv, lv)


def solarize_add_lut(x: torch.Tensor, add: torch.Tensor, thresh: int = 128) -> torch.Tensor:
    lv = _levels(x)
    return torch.where(lv < thresh, (lv + _v(add)).clamp(max=255), lv)


def _blend_lut(degenerate: torch.Tensor, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL ``Image.blend(constant, image, f)`` as a table: ``floor(clamp(d + f (v - d), 0, 255))`` in float32."""
    lv = _levels(x)
    return (degenerate + _v(factor) * (lv - degenerate)).clamp_(0, 255).floor_()


def brightness_lut(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend_lut(torch.zeros(()), x, factor)


def contrast_lut(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    mean = torch.floor(_gray(x).double().mean(dim=(1, 2, 3)) + 0.5).float().cpu()  # int(mean + 0.5), ImageStat
    return _blend_lut(_v(mean), x, factor)


def autocontrast_lut(x: torch.Tensor, _arg=None) -> torch.Tensor:
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


def equalize_lut(x: torch.Tensor, _arg=None) -> torch.Tensor:
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


def _gray(x: torch.Tensor) -> torch.Tensor:
    """PIL's RGB -> L conversion ``(r*19595 + g*38470 + b*7471 + 0x8000) >> 16`` as float ``(k, 1, H, W)``.

    Every partial sum is an integer below 2**24, so float32 gives PIL's integer result exactly.
    """
    if x.shape[1] == 1:
        return x.float()
    w = torch.tensor([[19595.0, 38470.0, 7471.0]], device=x.device)
    k, _, h, wd = x.shape
    acc = torch.matmul(w, x.reshape(k, 3, h * wd).float()).view(k, 1, h, wd)
    return acc.add_(0x8000).div_(65536).floor_()


def _blend(degenerate: torch.Tensor, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL ``Image.blend(degenerate, x, factor)``: ``floor(clamp(d + f (x - d), 0, 255))`` (float ``degenerate``)."""
    f = factor.to(x.device, torch.float32).view(-1, 1, 1, 1)
    out = torch.addcmul(degenerate, x.float() - degenerate, f)
    return out.clamp_(0, 255).to(torch.uint8)  # values are >= 0, so truncation is PIL's floor


def color(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x  # PIL's Color on an L image blends the image with itself
    return _blend(_gray(x).expand_as(x), x, factor)


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
    degenerate[:, :, 1:-1, 1:-1] = box.add_(center, alpha=4).div_(13).add_(0.5).floor_()
    return _blend(degenerate, x, factor)


def _geometric(
    x: torch.Tensor, matrix: torch.Tensor, fill: torch.Tensor, interpolation: str, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Warp with ``matrix`` ``(k, 2, 3)`` mapping output pixel coordinates to input ones (PIL's affine data)."""
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


def _affine(a, b, c, d, e, f) -> torch.Tensor:
    return torch.stack([torch.stack([a, b, c], -1), torch.stack([d, e, f], -1)], -2)


# ----------------------------------------------------------------------------------------------- level -> argument


def _signed(level, sign):
    return level * sign


_LEVELS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "Rotate": lambda m, s: _signed(m / LEVEL_DENOM * 30.0, s),
    "Posterize": lambda m, s: torch.floor(m / LEVEL_DENOM * 4),
    "PosterizeIncreasing": lambda m, s: 4 - torch.floor(m / LEVEL_DENOM * 4),
    "Solarize": lambda m, s: torch.floor(m / LEVEL_DENOM * 256).clamp(max=256),
    "SolarizeIncreasing": lambda m, s: 256 - torch.floor(m / LEVEL_DENOM * 256).clamp(max=256),
    "SolarizeAdd": lambda m, s: torch.floor(m / LEVEL_DENOM * 110).clamp(max=128),
    "Enhance": lambda m, s: m / LEVEL_DENOM * 1.8 + 0.1,
    "EnhanceIncreasing": lambda m, s: (1.0 + _signed(m / LEVEL_DENOM * 0.9, s)).clamp(min=0.1),
    "Shear": lambda m, s: _signed(m / LEVEL_DENOM * 0.3, s),
    "TranslateRel": lambda m, s: _signed(m / LEVEL_DENOM * 0.45, s),
}

_LUT_OPS: dict[str, tuple[Callable, str | None]] = {
    "AutoContrast": (autocontrast_lut, None),
    "Equalize": (equalize_lut, None),
    "Invert": (invert_lut, None),
    "Posterize": (posterize_lut, "Posterize"),
    "PosterizeIncreasing": (posterize_lut, "PosterizeIncreasing"),
    "Solarize": (solarize_lut, "Solarize"),
    "SolarizeIncreasing": (solarize_lut, "SolarizeIncreasing"),
    "SolarizeAdd": (solarize_add_lut, "SolarizeAdd"),
    "Contrast": (contrast_lut, "Enhance"),
    "ContrastIncreasing": (contrast_lut, "EnhanceIncreasing"),
    "Brightness": (brightness_lut, "Enhance"),
    "BrightnessIncreasing": (brightness_lut, "EnhanceIncreasing"),
}
_BLEND_OPS: dict[str, tuple[Callable, str]] = {
    "Color": (color, "Enhance"),
    "ColorIncreasing": (color, "EnhanceIncreasing"),
    "Sharpness": (sharpness, "Enhance"),
    "SharpnessIncreasing": (sharpness, "EnhanceIncreasing"),
}
GEOMETRIC_OPS = ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
ALL_OPS = tuple(_LUT_OPS) + tuple(_BLEND_OPS) + GEOMETRIC_OPS
_GROUP = {**dict.fromkeys(_LUT_OPS, 0), **dict.fromkeys(_BLEND_OPS, 1), **dict.fromkeys(GEOMETRIC_OPS, 2)}


def geometric_matrix(name: str, arg: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """PIL affine data ``(k, 2, 3)`` (output pixel -> input pixel) of a geometric op with argument ``arg``."""
    one, zero = torch.ones_like(arg), torch.zeros_like(arg)
    if name == "ShearX":
        return _affine(one, arg, zero, zero, one, zero)
    if name == "ShearY":
        return _affine(one, zero, zero, arg, one, zero)
    if name == "TranslateXRel":
        return _affine(one, zero, arg * width, zero, one, zero)
    if name == "TranslateYRel":
        return _affine(one, zero, zero, zero, one, arg * height)
    if name == "Rotate":  # PIL Image.rotate: counter-clockwise by `arg` degrees about the centre
        t = -torch.deg2rad(arg)
        cx, cy = width / 2.0, height / 2.0
        cos, sin = torch.cos(t), torch.sin(t)
        return _affine(cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy)
    raise ConfigError(f"unknown geometric op {name!r}; choose one of {', '.join(GEOMETRIC_OPS)}")


def apply_op(
    name: str,
    x: torch.Tensor,
    magnitude: torch.Tensor | float,
    sign: torch.Tensor | float = 1.0,
    *,
    fill: Sequence[float] | float = 128,
    interpolation: str = "bilinear",
) -> torch.Tensor:
    """Apply RandAugment op ``name`` to every image of a uint8 batch with per-sample ``magnitude`` (0..mmax).

    ``sign`` (+-1 per sample) picks the direction of the signed ops. Useful on its own for tests and visualisation.
    """
    if x.dtype != torch.uint8 or x.ndim != 4:
        raise ConfigError(f"RandAugment ops expect a uint8 (B, C, H, W) batch, got {x.dtype} {tuple(x.shape)}")
    k, c, h, w = x.shape
    m = torch.as_tensor(magnitude, dtype=torch.float32).expand(k).cpu()
    s = torch.as_tensor(sign, dtype=torch.float32).expand(k).cpu()
    if name in _LUT_OPS:
        fn, level = _LUT_OPS[name]
        return apply_lut(x, fn(x, None if level is None else _LEVELS[level](m, s)))
    if name in _BLEND_OPS:
        fn, level = _BLEND_OPS[name]
        return fn(x, _LEVELS[level](m, s))
    if name not in GEOMETRIC_OPS:
        raise ConfigError(f"unknown RandAugment op {name!r}; choose one of {', '.join(ALL_OPS)}")
    matrix = geometric_matrix(name, _level_of(name)(m, s), h, w)
    return _geometric(x, matrix, _fill_tensor(fill, c), interpolation)


def _level_of(name: str) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    return _LEVELS[{"Rotate": "Rotate", "ShearX": "Shear", "ShearY": "Shear"}.get(name, "TranslateRel")]


def _fill_tensor(fill: Sequence[float] | float, channels: int) -> torch.Tensor:
    fill_t = torch.as_tensor(fill, dtype=torch.float32).flatten()
    if fill_t.numel() == 1:
        fill_t = fill_t.expand(channels)
    if fill_t.numel() != channels:
        raise ConfigError(f"fill={tuple(fill_t.tolist())} needs 1 or {channels} values (one per channel)")
    return fill_t


# ----------------------------------------------------------------------------------------------- the policy


def parse_rand_augment(config: str) -> dict:
    """Parse a timm RandAugment string into ``num_ops, magnitude, prob, magnitude_std, magnitude_max, increasing``."""
    parts = config.split("-")
    if parts[0] != "rand":
        raise ConfigError(f"RandAugment config {config!r} must start with 'rand', e.g. 'rand-m9-mstd0.5-inc1'")
    out = {
        "num_ops": 2,
        "magnitude": 10.0,
        "prob": 0.5,
        "magnitude_std": 0.0,
        "magnitude_max": LEVEL_DENOM,
        "increasing": False,
    }
    for sec in parts[1:]:
        m = re.fullmatch(r"([a-z]+)(\d.*)", sec)
        key, val = (m.group(1), m.group(2)) if m else (sec, "")
        try:
            if key == "m":
                out["magnitude"] = float(int(val))
            elif key == "n":
                out["num_ops"] = int(val)
            elif key == "p":
                out["prob"] = float(val)
            elif key == "mstd":
                std = float(val)
                out["magnitude_std"] = math.inf if std > 100 else std
            elif key == "mmax":
                out["magnitude_max"] = float(int(val))
            elif key == "inc":
                out["increasing"] = bool(int(val))
            else:
                raise ValueError
        except ValueError:
            raise ConfigError(
                f"RandAugment config {config!r}: cannot read section {sec!r}; allowed sections mM, nN, pP, "
                "mstdS, mmaxX, incI (e.g. 'rand-m9-mstd0.5-inc1')"
            ) from None
    if out["num_ops"] < 0 or not 0 <= out["prob"] <= 1 or out["magnitude_std"] < 0:
        raise ConfigError(f"RandAugment config {config!r}: need n >= 0, 0 <= p <= 1 and mstd >= 0")
    return out


class RandAugment:
    """timm-compatible RandAugment for uint8 batches; see the module docstring for the op table.

    Args:
        config: timm string, e.g. ``"rand-m9-mstd0.5-inc1"`` (DeiT).
        fill: colour (0..255, scalar or per channel) for pixels that geometric ops move in from outside.
        interpolation: ``"bilinear"``, ``"bicubic"`` or ``"nearest"`` for the geometric ops.
        ops: override the op set (names from :data:`ALL_OPS`).
    """

    def __init__(
        self,
        config: str = "rand-m9-mstd0.5-inc1",
        *,
        fill: Sequence[float] | float = 128,
        interpolation: str = "bilinear",
        ops: Sequence[str] | None = None,
    ) -> None:
        _check_interp(interpolation)
        self.config = config
        cfg = parse_rand_augment(config)
        self.num_ops, self.magnitude, self.prob = cfg["num_ops"], cfg["magnitude"], cfg["prob"]
        self.magnitude_std, self.magnitude_max = cfg["magnitude_std"], cfg["magnitude_max"]
        self.ops = (
            tuple(ops) if ops is not None else (RAND_INCREASING_TRANSFORMS if cfg["increasing"] else RAND_TRANSFORMS)
        )
        unknown = [o for o in self.ops if o not in ALL_OPS]
        if unknown or not self.ops:
            raise ConfigError(f"unknown RandAugment op(s) {unknown or '(empty set)'}; choose from {', '.join(ALL_OPS)}")
        self.fill, self.interpolation = fill, interpolation

    def sample_magnitudes(self, n: int, g: torch.Generator) -> torch.Tensor:
        """``n`` magnitudes: ``N(M, mstd)`` (or ``U(0, M)`` when mstd is infinite), clamped to ``[0, mmax]``."""
        if math.isinf(self.magnitude_std):
            m = rand(n, g).cpu() * self.magnitude
        elif self.magnitude_std > 0:
            m = self.magnitude + self.magnitude_std * torch.randn(n, generator=g, device=g.device).cpu()
        else:
            m = torch.full((n,), self.magnitude)
        return m.clamp(0.0, self.magnitude_max)

    def __call__(
        self, x: torch.Tensor, generator: torch.Generator | int | None = None, *, inplace: bool = False
    ) -> torch.Tensor:
        """Augment a uint8 batch; returns a new batch unless ``inplace``."""
        if x.dtype != torch.uint8 or x.ndim != 4:
            raise ConfigError(f"RandAugment expects a uint8 (B, C, H, W) batch, got {x.dtype} {tuple(x.shape)}")
        return self.apply_plan(x, self.plan(x.shape[0], as_generator(generator)), inplace=inplace)

    def plan(self, batch: int, generator: torch.Generator | int | None = None) -> list[tuple[torch.Tensor, ...]]:
        """Draw the random choices for a batch: per layer ``(op index, applied?, magnitude, sign)``, each ``(B,)``.

        Everything is drawn before any pixel is touched, so the random stream does not depend on the data.
        """
        g = as_generator(generator)
        layers = []
        for _ in range(self.num_ops):
            choice = torch.randint(len(self.ops), (batch,), generator=g, device=g.device).cpu()
            apply = rand(batch, g).cpu() < self.prob
            mag = self.sample_magnitudes(batch, g)
            sign = torch.where(rand(batch, g).cpu() > 0.5, -1.0, 1.0)
            layers.append((choice, apply, mag, sign))
        return layers

    def apply_plan(
        self, x: torch.Tensor, layers: list[tuple[torch.Tensor, ...]], *, inplace: bool = False
    ) -> torch.Tensor:
        """Run a :meth:`plan` on a uint8 batch; returns the augmented batch (``x`` itself when ``inplace``).

        Per layer the applied rows are gathered sorted by (op group, op) -- point ops, then Color/Sharpness, then
        geometric ops -- so all point ops share one table lookup, all geometric ops one warp, and each of the
        others runs once on a contiguous slice; the rows are then scattered back.
        """
        b, c, h, w = x.shape
        if not inplace:
            x = x.clone()
        n = len(self.ops)
        group = torch.tensor([_GROUP[name] for name in self.ops])
        fill = _fill_tensor(self.fill, c)
        for choice, apply, mag, sign in layers:
            key = torch.where(apply, group[choice] * n + choice, 3 * n)
            order = torch.argsort(key, stable=True)
            key = key[order]
            n_applied = int((key < 3 * n).sum())
            if n_applied == 0:
                continue
            rows = order[:n_applied]
            sub = x.index_select(0, rows.to(x.device))  # (n_applied, C, H, W), sorted by op
            bounds = torch.bincount(key[:n_applied], minlength=3 * n).cumsum(0).tolist()
            start_of = [0] + bounds[:-1]
            args = {}  # op index -> (lo, hi) row range in `sub`
            for k in range(n):
                lo, hi = start_of[int(group[k]) * n + k], bounds[int(group[k]) * n + k]
                if hi > lo:
                    args[k] = (lo, hi)
            lut_rows = [(k, lo, hi) for k, (lo, hi) in args.items() if self.ops[k] in _LUT_OPS]
            if lut_rows:
                lo_all, hi_all = min(r[1] for r in lut_rows), max(r[2] for r in lut_rows)
                seg = sub[lo_all:hi_all]
                lut = torch.empty(hi_all - lo_all, c, 256)
                for k, lo, hi in lut_rows:
                    fn, level = _LUT_OPS[self.ops[k]]
                    ids = rows[lo:hi]
                    arg = None if level is None else _LEVELS[level](mag[ids], sign[ids])
                    lut[lo - lo_all : hi - lo_all] = fn(sub[lo:hi], arg)
                apply_lut(seg, lut, out=seg)
            geo = []
            for k, (lo, hi) in args.items():
                ids = rows[lo:hi]
                if self.ops[k] in _BLEND_OPS:
                    fn, level = _BLEND_OPS[self.ops[k]]
                    factor = _LEVELS[level](mag[ids], sign[ids])
                    for sl in chunks(hi - lo, x.device, x[0].numel()):  # cache-sized pieces on the CPU
                        sub[lo + sl.start : lo + sl.stop] = fn(sub[lo + sl.start : lo + sl.stop], factor[sl])
                elif self.ops[k] in GEOMETRIC_OPS:
                    geo.append(
                        (lo, hi, geometric_matrix(self.ops[k], _level_of(self.ops[k])(mag[ids], sign[ids]), h, w))
                    )
            if geo:
                lo_all, hi_all = min(r[0] for r in geo), max(r[1] for r in geo)
                matrix = torch.empty(hi_all - lo_all, 2, 3)
                for lo, hi, m in geo:
                    matrix[lo - lo_all : hi - lo_all] = m
                seg = sub[lo_all:hi_all]
                _geometric(seg, matrix, fill, self.interpolation, out=seg)
            x.index_copy_(0, rows.to(x.device), sub)
        return x

    def __repr__(self) -> str:
        return f"RandAugment({self.config!r}, fill={self.fill}, interpolation={self.interpolation!r})"
