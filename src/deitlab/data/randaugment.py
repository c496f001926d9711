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
Each layer gathers the rows that apply an op, sorted by the op's kind and then the op, so that every op runs once on
a contiguous sub-batch with per-sample magnitudes: all point ops of the layer share one 256-entry table lookup, all
geometric ops one ``grid_sample``. The ops, their level -> argument maps (timm's ``auto_augment.py``) and their PIL
semantics are the table in ``rand_ops.py``. Pixels that geometric ops move in from outside get the fill colour (timm
default (128, 128, 128); ``TrainAugment`` passes ``round(255 * mean)`` like timm's ``create_transform``). Two
deliberate differences from timm: the interpolation is fixed (timm's default picks bilinear or bicubic at random per
call; DeiT fixes bicubic), and ``bits = 0`` posterises to black as older Pillow did (Pillow 13 raises for it, which
crashes timm's ``inc1`` set at magnitude 10).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import NamedTuple

import torch

from deitlab.data.ops import as_generator, check_interpolation, chunks, rand
from deitlab.data.rand_ops import ALL_OPS, KINDS, LEVEL_DENOM, OPS, RandOp, apply_lut, histogram, warp_pil_affine
from deitlab.errors import ConfigError

__all__ = [
    "ALL_OPS",
    "RAND_INCREASING_TRANSFORMS",
    "RAND_TRANSFORMS",
    "RandAugment",
    "apply_op",
    "histogram",
    "parse_rand_augment",
]

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
UNIFORM_MSTD_ABOVE = 100  # timm: an mstd section above 100 means magnitudes uniform in [0, M]


def _op(name: str) -> RandOp:
    if name not in OPS:
        raise ConfigError(f"unknown RandAugment op {name!r}; choose one of {', '.join(ALL_OPS)}")
    return OPS[name]


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
    op = _op(name)
    m = torch.as_tensor(magnitude, dtype=torch.float32).expand(k).cpu()
    s = torch.as_tensor(sign, dtype=torch.float32).expand(k).cpu()
    arg = op.argument(m, s)
    if op.kind == "lut":
        return apply_lut(x, op.fn(x, arg))
    if op.kind == "blend":
        return op.fn(x, arg)
    return warp_pil_affine(x, op.fn(arg, h, w), _fill_tensor(fill, c), interpolation)


def _fill_tensor(fill: Sequence[float] | float, channels: int) -> torch.Tensor:
    fill_t = torch.as_tensor(fill, dtype=torch.float32).flatten()
    if fill_t.numel() == 1:
        fill_t = fill_t.expand(channels)
    if fill_t.numel() != channels:
        raise ConfigError(f"fill={tuple(fill_t.tolist())} needs 1 or {channels} values (one per channel)")
    return fill_t


# ----------------------------------------------------------------------------------------------- the policy


def _magnitude_std(text: str) -> float:
    std = float(text)
    return math.inf if std > UNIFORM_MSTD_ABOVE else std


# config section prefix -> (key of parse_rand_augment's result, parser of the text after the prefix)
_SECTIONS = {
    "m": ("magnitude", lambda v: float(int(v))),
    "n": ("num_ops", int),
    "p": ("prob", float),
    "mstd": ("magnitude_std", _magnitude_std),
    "mmax": ("magnitude_max", lambda v: float(int(v))),
    "inc": ("increasing", lambda v: bool(int(v))),
}


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
        prefix, val = (m.group(1), m.group(2)) if m else (sec, "")
        try:
            key, parse = _SECTIONS[prefix]
            out[key] = parse(val)
        except (KeyError, ValueError):
            raise ConfigError(
                f"RandAugment config {config!r}: cannot read section {sec!r}; allowed sections mM, nN, pP, "
                "mstdS, mmaxX, incI (e.g. 'rand-m9-mstd0.5-inc1')"
            ) from None
    if out["num_ops"] < 0 or not 0 <= out["prob"] <= 1 or out["magnitude_std"] < 0:
        raise ConfigError(f"RandAugment config {config!r}: need n >= 0, 0 <= p <= 1 and mstd >= 0")
    return out


class RandAugment:
    """timm-compatible RandAugment for uint8 batches; see the module docstring and ``rand_ops.py`` for the ops.

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
        check_interpolation(interpolation)
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
            sign = torch.where(rand(batch, g).cpu() > 0.5, -1.0, 1.0)  # signed ops flip with probability 0.5
            layers.append((choice, apply, mag, sign))
        return layers

    def apply_plan(
        self, x: torch.Tensor, layers: list[tuple[torch.Tensor, ...]], *, inplace: bool = False
    ) -> torch.Tensor:
        """Run a :meth:`plan` on a uint8 batch; returns the augmented batch (``x`` itself when ``inplace``).

        Per layer the applied rows are gathered sorted by (kind, op) -- point ops, then Color/Sharpness, then
        geometric ops -- so all point ops share one table lookup, all geometric ops one warp, and each of the
        others runs once on a contiguous slice; the rows are then scattered back.
        """
        if not inplace:
            x = x.clone()
        fill = _fill_tensor(self.fill, x.shape[1])
        for choice, apply, mag, sign in layers:
            rows, segments = self._segments(choice, apply, mag, sign)
            if len(rows) == 0:
                continue
            dev_rows = rows.to(x.device)
            sub = x.index_select(0, dev_rows)  # (n_applied, C, H, W), sorted by (kind, op)
            _lookup_rows(sub, segments["lut"])
            _blend_rows(sub, segments["blend"])
            _warp_rows(sub, segments["geometric"], fill, self.interpolation)
            x.index_copy_(0, dev_rows, sub)
        return x

    def _segments(
        self, choice: torch.Tensor, apply: torch.Tensor, mag: torch.Tensor, sign: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, list[_Segment]]]:
        """One layer's applied rows sorted by (kind, op index), and per kind the ``_Segment`` of each used op."""
        ops = [OPS[name] for name in self.ops]
        n = len(ops)
        # op indices in row order: by kind, then in ALL_OPS' order (which keeps each axis' shifts together)
        by_kind = sorted(range(n), key=lambda k: (KINDS.index(ops[k].kind), ALL_OPS.index(self.ops[k]), k))
        rank = torch.empty(n, dtype=torch.long)
        rank[by_kind] = torch.arange(n)
        key = torch.where(apply, rank[choice], n)  # n = not applied: sorts last
        order = torch.argsort(key, stable=True)
        rows = order[: int((key < n).sum())]
        counts = torch.bincount(key[rows], minlength=n).tolist()
        segments: dict[str, list[_Segment]] = {kind: [] for kind in KINDS}
        lo = 0
        for pos, k in enumerate(by_kind):
            hi = lo + counts[pos]
            if hi > lo:
                ids = rows[lo:hi]
                segments[ops[k].kind].append(_Segment(ops[k], lo, hi, ops[k].argument(mag[ids], sign[ids])))
            lo = hi
        return rows, segments

    def __repr__(self) -> str:
        return f"RandAugment({self.config!r}, fill={self.fill}, interpolation={self.interpolation!r})"


# ----------------------------------------------------------------------------------------------- running a layer


class _Segment(NamedTuple):
    """Rows ``lo:hi`` of a layer's gathered sub-batch that run ``op``, with one argument per row."""

    op: RandOp
    lo: int
    hi: int
    arg: torch.Tensor | None


def _span(segments: list[_Segment]) -> tuple[int, int]:
    return min(s.lo for s in segments), max(s.hi for s in segments)


def _lookup_rows(sub: torch.Tensor, segments: list[_Segment]) -> None:
    """All point ops of a layer, in place, as one table lookup over their (adjacent) rows."""
    if not segments:
        return
    lo_all, hi_all = _span(segments)
    lut = torch.empty(hi_all - lo_all, sub.shape[1], 256)
    for s in segments:
        lut[s.lo - lo_all : s.hi - lo_all] = s.op.fn(sub[s.lo : s.hi], s.arg)
    seg = sub[lo_all:hi_all]
    apply_lut(seg, lut, out=seg)


def _blend_rows(sub: torch.Tensor, segments: list[_Segment]) -> None:
    """Color/Sharpness in place, each op once on its rows (in cache-sized pieces on the CPU)."""
    for s in segments:
        for sl in chunks(s.hi - s.lo, sub.device, sub[0].numel()):
            sub[s.lo + sl.start : s.lo + sl.stop] = s.op.fn(sub[s.lo + sl.start : s.lo + sl.stop], s.arg[sl])


def _warp_rows(sub: torch.Tensor, segments: list[_Segment], fill: torch.Tensor, interpolation: str) -> None:
    """All geometric ops of a layer, in place, as one warp over their (adjacent) rows."""
    if not segments:
        return
    h, w = sub.shape[-2:]
    lo_all, hi_all = _span(segments)
    matrix = torch.empty(hi_all - lo_all, 2, 3)
    for s in segments:
        matrix[s.lo - lo_all : s.hi - lo_all] = s.op.fn(s.arg, h, w)
    seg = sub[lo_all:hi_all]
    warp_pil_affine(seg, matrix, fill, interpolation, out=seg)
