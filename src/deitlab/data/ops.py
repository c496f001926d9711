"""Shared pixel and random-number helpers of the batched augmentation (a leaf: imports only torch and errors).

Randomness comes only from an explicit ``torch.Generator`` (or an int seed), so a batch is reproducible. Random
numbers are drawn on the generator's device (normally the CPU) and the few per-sample parameters are then moved
to the batch's device; the pixel work runs on the batch's device. ``augment.py`` (crop, flip, normalise, erasing),
``randaugment.py`` and ``mix.py`` all build on these.
"""

from __future__ import annotations

from collections.abc import Sequence

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
