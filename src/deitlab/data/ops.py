"""Shared pixel and random-number helpers of the batched augmentation (a leaf: imports only torch and errors).

Randomness comes only from an explicit ``torch.Generator`` (or an int seed), so a batch is reproducible. Random
numbers are drawn on the generator's device (normally the CPU) and the few per-sample parameters are then moved
to the batch's device; the pixel work runs on the batch's device. ``augment.py`` (crop, flip, normalise, erasing),
``randaugment.py`` and ``mix.py`` all build on these.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn.functional as F

from deitlab.errors import ConfigError

INTERPOLATIONS = ("bilinear", "bicubic", "nearest")

# On the CPU, pixel work runs in chunks of about this many elements per image slice (8 MB of float32), so every
# intermediate (float copy, sampling grid, output) stays in cache; 2-3x faster than whole-batch passes on big
# images, and a single chunk for small ones. Other devices take the whole batch.
CPU_CHUNK_ELEMENTS = 2**21

# Seeds drawn from torch's global RNG when no generator is given: any non-negative int64 below 2**62.
SEED_BOUND = 2**62

# Added before a uint8 warp result is truncated with ``rounding="floor"``: absorbs float32 grid error (an identity
# warp must give back 128, not 127.99998) while staying far below one grey level.
FLOOR_EPSILON = 1e-3

MAX_CROP_THREADS = 8  # Python threads that share a batch's per-crop resizes (at most torch.get_num_threads())


def as_generator(generator: torch.Generator | int | None) -> torch.Generator:
    """A ``torch.Generator`` from a generator, an int seed, or ``None`` (seeded from torch's global RNG)."""
    if isinstance(generator, torch.Generator):
        return generator
    if generator is None:
        generator = int(torch.randint(0, SEED_BOUND, (1,)).item())
    return torch.Generator().manual_seed(int(generator))


def rand(shape: Sequence[int] | int, g: torch.Generator, device: torch.device | str | None = None) -> torch.Tensor:
    """Uniform [0, 1) float32 numbers from ``g``, moved to ``device``."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    out = torch.rand(shape, generator=g, device=g.device)
    return out if device is None else out.to(device)


def randint_inclusive(lo: torch.Tensor | int, hi: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Per-element uniform integers in ``[lo, hi]`` (``random.randint`` semantics), as int64."""
    lo_t = torch.as_tensor(lo, dtype=torch.float64)
    u = torch.rand(hi.shape, generator=g, device=g.device, dtype=torch.float64)
    return (lo_t + torch.floor(u * (hi.double() - lo_t + 1))).long()


def to_pair(size: int | Sequence[int]) -> tuple[int, int]:
    """``(height, width)`` from an int side or a pair."""
    if isinstance(size, int):
        return (size, size)
    if len(size) != 2:
        raise ConfigError(f"size={size} must be an int or (height, width)")
    return (int(size[0]), int(size[1]))


def check_interpolation(interpolation: str) -> None:
    """Refuse a resampling mode other than :data:`INTERPOLATIONS`."""
    if interpolation not in INTERPOLATIONS:
        raise ConfigError(
            f"interpolation={interpolation!r} is not supported; choose one of {', '.join(INTERPOLATIONS)}"
        )


def check_batch(x: torch.Tensor, what: str) -> None:
    """Refuse anything but a 4-d ``(B, C, H, W)`` batch, naming the op ``what``."""
    if x.ndim != 4:
        raise ConfigError(f"{what} expects a (B, C, H, W) batch, got shape {tuple(x.shape)}")


def check_probabilities(**values: float) -> None:
    """Refuse probabilities outside [0, 1], naming every argument (``check_probabilities(prob=p, hflip=h)``)."""
    if any(not 0 <= v <= 1 for v in values.values()):
        listed = " and ".join(f"{k}={v}" for k, v in values.items())
        raise ConfigError(f"{listed} are probabilities; use values in [0, 1]")


def chunks(batch: int, device: torch.device, per_item: int) -> list[slice]:
    """Slices covering ``range(batch)``: on the CPU ~``CPU_CHUNK_ELEMENTS / per_item`` items each (``per_item`` =
    elements per batch item), elsewhere one slice."""
    step = max(1, CPU_CHUNK_ELEMENTS // max(1, per_item)) if device.type == "cpu" else max(batch, 1)
    return [slice(i, min(i + step, batch)) for i in range(0, batch, step)]


def affine_grid(theta: torch.Tensor, out_h: int, out_w: int) -> torch.Tensor:
    """``F.affine_grid(theta, (B, C, out_h, out_w), align_corners=False)`` built by broadcasting.

    Same result, faster on the CPU than the batched matmul inside ``F.affine_grid``.
    """
    dev, dt = theta.device, theta.dtype
    xs = ((torch.arange(out_w, device=dev, dtype=dt) * 2 + 1) / out_w - 1).view(1, 1, out_w)  # pixel centres
    ys = ((torch.arange(out_h, device=dev, dtype=dt) * 2 + 1) / out_h - 1).view(1, out_h, 1)
    t = theta[:, :, :, None, None]  # (B, 2, 3, 1, 1)
    grid = torch.empty(theta.shape[0], out_h, out_w, 2, device=dev, dtype=dt)
    torch.add(t[:, 0, 0] * xs, t[:, 0, 1] * ys + t[:, 0, 2], out=grid[..., 0])
    torch.add(t[:, 1, 0] * xs, t[:, 1, 1] * ys + t[:, 1, 2], out=grid[..., 1])
    return grid


PIL_CUBIC_A = -1.0  # the cubic of PIL's Image.transform (Geometry.c: p1 + d (p2 + d (p3 + d p4))); grid_sample: -0.75
_TAPS = {"bilinear": (0, 1), "bicubic": (-1, 0, 1, 2)}


def _tap_weights(frac: torch.Tensor, interpolation: str) -> list[torch.Tensor]:
    """The 1-D resampling weights of the taps :data:`_TAPS` at fractional offset ``frac`` in [0, 1)."""
    if interpolation == "bilinear":
        return [1 - frac, frac]
    a, out = PIL_CUBIC_A, []
    for t in _TAPS["bicubic"]:
        d = (frac - t).abs()
        near = ((a + 2) * d - (a + 3)) * d * d + 1  # |d| <= 1
        far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a  # 1 < |d| < 2
        out.append(torch.where(d <= 1, near, far))
    return out


def shift_lines(
    x: torch.Tensor,
    shift: torch.Tensor,
    dim: int,
    *,
    interpolation: str = "bilinear",
    fill: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Resample every line of a batch along one axis by its own offset: a translation or a shear.

    ``dim`` is the axis the pixels move along (3: horizontal, 2: vertical); ``shift`` ``(B, L)`` gives each line
    across it (``L`` = H for ``dim=3``, W for ``dim=2``) its source offset in pixels: output pixel ``p`` of a line
    reads the input at ``p + shift``. One gather of each line's integer-shifted window and 2 (bilinear) or 4
    (bicubic, PIL's a = -1) weighted slices of it -- the work of a 1-D filter instead of ``grid_sample``'s 2-D
    one. Edges as :func:`warp_affine`: neighbours clamped to the border, ``fill`` where the source point lies
    outside the image. uint8 in, uint8 out, truncated as PIL's ``Image.transform`` does.
    """
    if dim not in (2, 3) or interpolation not in _TAPS:
        raise ConfigError(
            f"shift_lines: dim={dim}, interpolation={interpolation!r}; use dim 2 or 3 and bilinear or bicubic"
        )
    b, c = x.shape[:2]
    n = x.shape[dim]  # pixels along the axis
    if out is None:
        out = torch.empty_like(x)
    shift = shift.to(device=x.device, dtype=torch.float32)
    taps = _TAPS[interpolation]
    f = None if fill is None else fill.to(device=x.device, dtype=torch.float32).view(1, -1, 1, 1)
    span = torch.arange(n + len(taps) - 1, device=x.device)  # window positions
    pos = torch.arange(n, device=x.device, dtype=torch.float32)
    for sl in chunks(b, x.device, x[0].numel()):
        k = sl.stop - sl.start
        # per-line values broadcast against (k, H, W): lines are rows (dim 3) or columns (dim 2)
        lines = (k, -1, 1) if dim == 3 else (k, 1, -1)
        along = (1, 1, -1) if dim == 3 else (1, -1, 1)
        fl = torch.floor(shift[sl])  # (k, L)
        weights = _tap_weights(shift[sl] - fl, interpolation)  # each (k, L)
        # index of window position j in line l: clamp(j + floor(shift) + first tap)
        idx = (span.view(along) + fl.long().view(lines) + taps[0]).clamp_(0, n - 1)  # (k, H or n+t-1, W or n+t-1)
        window = torch.gather(x[sl], dim, idx.unsqueeze(1).expand(-1, c, -1, -1)).float()
        y = None
        for t, wt in enumerate(weights):
            part, wt = window.narrow(dim, t, n), wt.view(lines).unsqueeze(1)
            y = part * wt if y is None else y.addcmul_(part, wt)
        if f is not None:
            src = pos.view(along) + shift[sl].view(lines)  # (k, H, W): where each output pixel reads
            y = torch.where(((src > -0.5) & (src < n - 0.5)).unsqueeze(1), y, f)
        if x.dtype == torch.uint8:
            y = y.add_(FLOOR_EPSILON).clamp_(0, 255)  # the uint8 copy below truncates, as PIL does
        out[sl] = y
    return out


def warp_affine(
    x: torch.Tensor,
    theta: torch.Tensor,
    out_size: tuple[int, int] | None = None,
    *,
    interpolation: str = "bilinear",
    fill: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    rounding: str = "round",
) -> torch.Tensor:
    """Resample a batch through per-sample affine maps (normalised output -> input coordinates) with
    ``grid_sample`` (one call per CPU chunk, one call per batch elsewhere).

    ``fill`` (``(C,)`` in the input's pixel units) colours every output pixel whose source point lies outside
    the image, as PIL's ``Image.transform(..., fillcolor=)`` does (a sharp edge; inside, neighbours are clamped
    to the border). ``None`` clamps everything to the border. A uint8 input gives a uint8 output, rounded to
    nearest or, with ``rounding="floor"``, truncated as PIL's ``Image.transform`` does.
    ``out`` may be a preallocated output (it may also be ``x`` itself when the size is unchanged).
    """
    b, c = x.shape[:2]
    out_h, out_w = out_size if out_size is not None else x.shape[-2:]
    if out is None:
        out = torch.empty(b, c, out_h, out_w, dtype=x.dtype, device=x.device)
    theta = theta.to(device=x.device, dtype=torch.float32)
    f = None if fill is None else fill.to(device=x.device, dtype=torch.float32).view(1, -1, 1, 1)
    for sl in chunks(b, x.device, c * max(out_h * out_w, x.shape[-1] * x.shape[-2])):
        grid = affine_grid(theta[sl], out_h, out_w)
        y = F.grid_sample(x[sl].float(), grid, mode=interpolation, padding_mode="border", align_corners=False)
        if f is not None:
            inside = (grid.abs().amax(dim=-1) < 1).unsqueeze(1)  # (b, 1, H, W): source point inside the image
            y = torch.where(inside, y, f)
        if x.dtype == torch.uint8:  # the uint8 copy below truncates; bilinear stays within 0..255
            if rounding == "round":
                y = y.add_(0.5) if interpolation == "bilinear" else y.round_().clamp_(0, 255)
            else:
                y = y.add_(FLOOR_EPSILON) if interpolation == "bilinear" else y.add_(FLOOR_EPSILON).clamp_(0, 255)
        out[sl] = y
    return out


def resize_crops(
    x: torch.Tensor, boxes: list[tuple[int, int, int, int, bool]], size: tuple[int, int], interpolation: str
) -> torch.Tensor:
    """One antialiased ``F.interpolate`` per crop ``(top, left, h, w, flip)`` of ``x`` -> ``(B, C, *size)``.

    On the CPU each crop is made channels-last first (torch's uint8 resampling kernels are vectorised over RGB(A)
    pixels) and the crops are shared among up to ``torch.get_num_threads()`` Python threads that each run torch
    single-threaded: a 224 px resize is too small to split across cores, and the per-call overhead dominates.
    Results do not depend on the threads (each crop is one independent call).
    """
    out = torch.empty(x.shape[0], x.shape[1], *size, dtype=x.dtype, device=x.device)
    aa = {"antialias": True} if interpolation != "nearest" else {}
    channels_last = x.device.type == "cpu" and x.shape[1] in (3, 4)

    def one(i: int) -> None:
        t, lft, hh, ww, fl = boxes[i]
        crop = x[i : i + 1, :, t : t + hh, lft : lft + ww]
        if channels_last:
            crop = crop.contiguous(memory_format=torch.channels_last)
        res = F.interpolate(crop, size=size, mode=interpolation, **aa)[0]
        out[i] = res.flip(-1) if fl else res

    threads = min(torch.get_num_threads(), len(boxes), MAX_CROP_THREADS) if x.device.type == "cpu" else 1
    if threads < 2:
        for i in range(len(boxes)):
            one(i)
        return out

    def share(k: int) -> None:
        torch.set_num_threads(1)  # this Python thread's torch work runs on its own core
        for i in range(k, len(boxes), threads):
            one(i)

    main_threads = torch.get_num_threads()
    try:
        list(_crop_pool().map(share, range(threads)))
    finally:
        torch.set_num_threads(main_threads)
    return out


_CROP_POOL: dict[int, ThreadPoolExecutor] = {}  # by process id: a forked child (loader worker) starts its own


def _crop_pool() -> ThreadPoolExecutor:
    """The process's crop threads, started on first use."""
    pid = os.getpid()
    if pid not in _CROP_POOL:
        _CROP_POOL.clear()
        _CROP_POOL[pid] = ThreadPoolExecutor(MAX_CROP_THREADS, thread_name_prefix="deitlab-crops")
    return _CROP_POOL[pid]
