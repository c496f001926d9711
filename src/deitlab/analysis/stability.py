"""Stability studies (Xiao et al., 2021 §5; SPEC §4, §6.1, §7): the EDF of errors, (lr, wd) search spaces, run grids.

- **EDF** (after Radosavovic et al., 2020): for n runs with top-1 errors e_i (in %),
  ``F(x) = (1/n)·#{i : e_i − min_j e_j ≤ x}``; a diverged run counts as error 100%.
- **Search spaces**: lr and wd sampled log-uniformly and independently in ``[c·low, c·high]`` around a centre c
  (default ×1/8…×4, as pycls's sweep tool). The paper's ViT ranges are for batch 2048: AdamW lr 2.5e-4…8e-3,
  wd 0.02…0.8; SGD lr 0.1…3.2, wd 4e-6…1.2e-4; :func:`paper_space` scales the lr linearly to another batch.
- **Run specs**: every study is a list of :class:`RunSpec` (a name + config overrides) run by
  :func:`deitlab.analysis.sweep.run_specs`; :func:`lr_wd_specs` and :func:`grid_specs` build the usual ones.
"""

from __future__ import annotations

import itertools
import math
import re
import statistics
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PAPER_BATCH = 2048
# (lr range, wd range) of Xiao et al. for ViTs at batch 2048 (SPEC §6.1).
PAPER_RANGES: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    "adamw": ((2.5e-4, 8e-3), (0.02, 0.8)),
    "sgd": ((0.1, 3.2), (4e-6, 1.2e-4)),
}
EDF_POINTS = (0.5, 1.0, 2.0, 5.0, 10.0)  # error gaps (percentage points) at which summaries read F
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.,=+-]*$")


# ---- EDF --------------------------------------------------------------------------------------------------------
def clean_errors(errors: Sequence[float | None], diverged: Sequence[bool] | None = None) -> list[float]:
    """Errors in %, with diverged runs, ``None`` and non-finite values replaced by 100."""
    if diverged is not None and len(diverged) != len(errors):
        raise ValueError(f"{len(diverged)} diverged flags for {len(errors)} errors; give one per run")
    flags = diverged or [False] * len(errors)
    return [100.0 if d or e is None or not math.isfinite(e) else float(e) for e, d in zip(errors, flags)]


def edf(errors: Sequence[float | None], diverged: Sequence[bool] | None = None) -> dict[str, Any]:
    """The empirical distribution function ``F(x) = (1/n)·#{i : e_i − min_j e_j ≤ x}`` of Xiao et al.

    Args:
        errors: top-1 errors in % (``None``/NaN, or ``diverged[i]``, mean the run diverged: 100%).

    Returns:
        ``{"n", "best": min_j e_j, "gaps": sorted e_i − best, "x": the distinct gaps, "F": F at each x}``;
        plotted as a step function of x, F(x) = 0 below 0 and 1 from the largest gap on.
    """
    e = clean_errors(errors, diverged)
    if not e:
        raise ValueError("edf needs at least one run's error")
    best = min(e)
    gaps = sorted(v - best for v in e)
    xs = sorted(set(gaps))
    return {"n": len(e), "best": best, "gaps": gaps, "x": xs, "F": [sum(g <= x for g in gaps) / len(e) for x in xs]}


def edf_at(
    errors: Sequence[float | None], points: Sequence[float], diverged: Sequence[bool] | None = None
) -> list[float]:
    """``F(x)`` of :func:`edf` at each of ``points``."""
    gaps = edf(errors, diverged)["gaps"]
    return [sum(g <= x for g in gaps) / len(gaps) for x in points]


# ---- (lr, wd) search spaces -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class SearchSpace:
    """Log-uniform ranges for the learning rate and the weight decay (lr already for the run's batch size).

    ``centre`` is the "good starting value" the ranges were built around (pycls: ranges = centre × 1/8…4); the
    training-length study runs there. Without one, the geometric middle of the ranges is used.
    """

    lr: tuple[float, float]
    wd: tuple[float, float]
    centre: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        for key, (lo, hi) in (("lr", self.lr), ("wd", self.wd)):
            if not 0 < lo <= hi:
                raise ValueError(f"{key} range ({lo}, {hi}) must satisfy 0 < low <= high")

    def middle(self) -> tuple[float, float]:
        """``centre`` if set, else the geometric means of the two ranges."""
        if self.centre is not None:
            return self.centre
        return math.sqrt(self.lr[0] * self.lr[1]), math.sqrt(self.wd[0] * self.wd[1])


def space_around(lr: float, wd: float, *, low: float = 1 / 8, high: float = 4.0) -> SearchSpace:
    """``lr ∈ [lr·low, lr·high]``, ``wd ∈ [wd·low, wd·high]`` (pycls: a good value × 1/8…4)."""
    if not 0 < low <= 1 <= high:
        raise ValueError(f"factors low={low}, high={high} must satisfy 0 < low <= 1 <= high")
    return SearchSpace((lr * low, lr * high), (wd * low, wd * high), centre=(lr, wd))


def paper_space(optimizer: str, batch_size: int) -> SearchSpace:
    """Xiao et al.'s ViT ranges for ``optimizer``, the lr scaled linearly from batch 2048 to ``batch_size``.

    The centre is 8 × the lower ends (the ranges are a good value × 1/8…4): AdamW lr 2e-3, wd 0.16; SGD lr 0.8,
    wd 3.2e-5, at batch 2048.
    """
    if optimizer not in PAPER_RANGES:
        raise ValueError(f"optimizer {optimizer!r} has no paper range; choose one of {', '.join(PAPER_RANGES)}")
    (lr_lo, lr_hi), wd = PAPER_RANGES[optimizer]
    k = batch_size / PAPER_BATCH
    return SearchSpace((lr_lo * k, lr_hi * k), wd, centre=(8 * lr_lo * k, 8 * wd[0]))


def sample_lr_wd(n: int, space: SearchSpace, *, seed: int = 0) -> list[tuple[float, float]]:
    """``n`` pairs ``(lr, wd)``, each log-uniform in its range and independent of the other.

    Draws come from one seeded stream in order, so the first k samples do not change when n grows (a sweep can
    be extended without redoing runs).
    """
    if n < 0:
        raise ValueError(f"n={n} must be >= 0")
    u = np.random.default_rng(seed).random((n, 2))
    log_lr, log_wd = (np.log(space.lr), np.log(space.wd))
    lr = np.exp(log_lr[0] + u[:, 0] * (log_lr[1] - log_lr[0]))
    wd = np.exp(log_wd[0] + u[:, 1] * (log_wd[1] - log_wd[0]))
    return [(float(a), float(b)) for a, b in zip(lr, wd)]


# ---- run specs --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunSpec:
    """One run of a study: a unique ``name`` (also its directory), config ``overrides`` and descriptive ``labels``."""

    name: str
    overrides: tuple[str, ...] = ()
    labels: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ValueError(f"run name {self.name!r} must be letters, digits and _.,=+- (it names a directory)")
        bad = [o for o in self.overrides if "=" not in o]
        if bad:
            raise ValueError(f"run {self.name}: override {bad[0]!r} must look like key=value")


def _label(value: Any) -> str:
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", text)


def lr_wd_specs(
    models: Sequence[str],
    optimizers: Sequence[str],
    n: int,
    *,
    spaces: Mapping[str, SearchSpace],
    seed: int = 0,
    extra: Sequence[str] = (),
) -> list[RunSpec]:
    """``n`` random (lr, wd) runs per model and optimizer (Xiao et al.'s hyper-parameter stability study).

    Every model gets the same samples for one optimizer (a paired comparison); ``optim.scale_lr=false`` because
    the spaces already hold lrs for the run's batch. Names: ``<model>-<optimizer>-<i:03d>``.
    """
    specs = []
    for opt in optimizers:
        if opt not in spaces:
            raise ValueError(f"no search space for optimizer {opt!r}; spaces has {', '.join(spaces) or 'none'}")
        samples = sample_lr_wd(n, spaces[opt], seed=seed * 7919 + zlib.crc32(opt.encode()))
        for model, (i, (lr, wd)) in itertools.product(models, enumerate(samples)):
            overrides = (f"model.name={model}", f"optim.name={opt}", f"optim.lr={lr:.6g}",
                         f"optim.weight_decay={wd:.6g}", "optim.scale_lr=false", *extra)  # fmt: skip
            labels = {"study": "lr_wd", "model": model, "optimizer": opt, "sample": i}
            specs.append(RunSpec(f"{model}-{opt}-{i:03d}", overrides, labels))
    return specs


def grid_specs(axes: Mapping[str, Sequence[Any]], *, extra: Sequence[str] = (), study: str = "grid") -> list[RunSpec]:
    """The cartesian product of ``axes``: every combination is one run.

    An axis named by a dotted config key (``"train.epochs": [1, 2, 4]``) sets that key and is labelled by its last
    part (``epochs``; ``model.name`` → ``model``), with the value itself as label; any other axis name takes
    ``(label, overrides)`` pairs, for settings that are bundles (``"aug": [("none", ["aug.mixup=0", ...]), ...]``).
    Names join ``<axis>=<label>`` with ``,``.
    """
    if not axes:
        raise ValueError("grid_specs needs at least one axis")
    options: list[list[tuple[str, Any, tuple[str, ...]]]] = []
    for axis, values in axes.items():
        if not values:
            raise ValueError(f"axis {axis!r} has no values")
        section, _, leaf = axis.rpartition(".")
        short = section.rsplit(".", 1)[-1] if leaf == "name" else leaf
        if section:
            options.append([(short, v, (f"{axis}={v}",)) for v in values])
        else:
            options.append([(short, label, tuple(ovr)) for label, ovr in values])
    specs = []
    for combo in itertools.product(*options):
        name = ",".join(f"{axis}={_label(label)}" for axis, label, _ in combo)
        overrides = tuple(o for _, _, ovr in combo for o in ovr) + tuple(extra)
        specs.append(RunSpec(name, overrides, {"study": study, **{axis: label for axis, label, _ in combo}}))
    return specs


# ---- summaries --------------------------------------------------------------------------------------------------
def field_of(record: Mapping[str, Any], key: str) -> Any:
    """``record["labels"][key]`` if set there, else ``record[key]``."""
    return record.get("labels", {}).get(key, record.get(key))


def aggregate(records: Sequence[Mapping[str, Any]], by: Sequence[str], value: str = "acc") -> list[dict[str, Any]]:
    """Mean, sample std (n−1; 0 for one run), min, max and n of ``value`` per group of ``by`` (diverged: NaN skipped).

    Groups keep the order in which they first appear.
    """
    groups: dict[tuple, list[float]] = {}
    for r in records:
        v = r.get(value)
        key = tuple(field_of(r, k) for k in by)
        groups.setdefault(key, [])
        if v is not None and math.isfinite(v):
            groups[key].append(float(v))
    out = []
    for key, vals in groups.items():
        stats = dict(zip(by, key), n=len(vals))
        if vals:
            std = statistics.stdev(vals) if len(vals) > 1 else 0.0
            stats.update(mean=statistics.fmean(vals), std=std, min=min(vals), max=max(vals))
        out.append(stats)
    return out


def summarize_lr_wd(records: Sequence[Mapping[str, Any]], by: Sequence[str] = ("model", "optimizer")) -> list[dict]:
    """Per group: runs, diverged runs, best / median error, F at :data:`EDF_POINTS`, the best run's lr and wd."""
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for r in records:
        groups.setdefault(tuple(field_of(r, k) for k in by), []).append(r)
    out = []
    for key, rs in groups.items():
        errors = clean_errors([r.get("error") for r in rs], [bool(r.get("diverged")) for r in rs])
        best = rs[errors.index(min(errors))]
        out.append({
            **dict(zip(by, key)), "n": len(rs), "diverged": sum(bool(r.get("diverged")) for r in rs),
            "best_error": min(errors), "median_error": statistics.median(errors),
            "edf_at": dict(zip(map(str, EDF_POINTS), edf_at(errors, EDF_POINTS))),
            "best_lr": best.get("lr"), "best_wd": best.get("wd"),
        })  # fmt: skip
    return out
