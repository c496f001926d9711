"""``deitlab sweep``: Xiao et al.'s stability study — random (lr, wd) search per model and optimizer, then EDFs.

Each run is a short training from the base recipe (``-c`` files and ``--set`` overrides) with one (lr, wd) sample,
drawn log-uniformly and independently around a centre (default ×1/8…×4; without ``--adamw-centre``/``--sgd-centre``
the paper's ViT ranges, the lr scaled from batch 2048 to ours). Results go to ``<output-dir>/lr_wd/runs.jsonl`` one
line per finished run; rerunning the same command skips them (a crash loses at most the run in progress). Outputs:
``edf.png`` (one curve per model × optimizer), ``lr.png``, ``wd.png``, ``summary.json`` and, with
``--epoch-budgets``, ``epochs.png`` (accuracy vs training length at the centre).
"""

from __future__ import annotations

import argparse
import math

from deitlab.analysis.sweep import sweep
from deitlab.errors import ConfigError

NAME = "sweep"
HELP = "stability study: random (lr, wd) search per model and optimizer, EDF plots (Xiao et al.); resumable"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output-dir", required=True, help="where runs, runs.jsonl, JSON and PNG files go")
    p.add_argument("--models", nargs="+", required=True, help="registry names to compare (e.g. a ViT_P and ViT_C)")
    p.add_argument("-c", "--config", action="append", default=[], help="base recipe YAML (repeatable)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override (repeatable)")
    p.add_argument("--optimizers", nargs="+", default=["adamw", "sgd"], choices=("adamw", "sgd"))
    p.add_argument("--runs", type=int, default=16, help="(lr, wd) samples per model and optimizer (paper: 64)")
    p.add_argument("--adamw-centre", metavar="LR,WD", help="AdamW centre at the base batch (default: paper's)")
    p.add_argument("--sgd-centre", metavar="LR,WD", help="SGD centre at the base batch (default: paper's)")
    p.add_argument("--range", default="0.125,4", metavar="LOW,HIGH", help="sample in [centre*LOW, centre*HIGH]")
    p.add_argument("--seed", type=int, default=0, help="seed of the (lr, wd) samples")
    p.add_argument("--epoch-budgets", metavar="E1,E2,...", help="training-length study at the centre, e.g. 1,2,4,8")
    p.add_argument("--budget-seeds", default="0", metavar="S1,S2,...", help="training seeds per epoch budget")
    p.add_argument("--metric", default="test_acc", help="final metric whose 100 - value is the error (test_acc)")


def numbers(text: str, what: str, *, count: int | None = None, kind: type = float) -> list:
    """``"1,2,4"`` -> ``[1, 2, 4]``, with one clear error for anything else."""
    try:
        values = [kind(v) for v in text.split(",")]
    except ValueError:
        raise ConfigError(f"{what}={text!r}: expected comma-separated {kind.__name__}s") from None
    if count is not None and len(values) != count:
        raise ConfigError(f"{what}={text!r}: expected {count} comma-separated values, got {len(values)}")
    if any(isinstance(v, float) and not math.isfinite(v) for v in values):
        raise ConfigError(f"{what}={text!r}: values must be finite")
    return values


def _centres(args: argparse.Namespace) -> dict[str, tuple[float, float]]:
    centres = {}
    for opt, text in (("adamw", args.adamw_centre), ("sgd", args.sgd_centre)):
        if text is None:
            continue
        lr, wd = numbers(text, f"--{opt}-centre", count=2)
        if lr <= 0 or wd <= 0:
            raise ConfigError(f"--{opt}-centre={text!r}: lr and wd must be > 0")
        if opt not in args.optimizers:
            raise ConfigError(f"--{opt}-centre given but {opt} is not among --optimizers {' '.join(args.optimizers)}")
        centres[opt] = (lr, wd)
    return centres


def run(args: argparse.Namespace) -> int:
    low, high = numbers(args.range, "--range", count=2)
    if not 0 < low <= 1 <= high:
        raise ConfigError(f"--range={args.range!r}: need 0 < LOW <= 1 <= HIGH (pycls: 0.125,4)")
    if args.runs < 1:
        raise ConfigError(f"--runs={args.runs} must be >= 1")
    budgets = numbers(args.epoch_budgets, "--epoch-budgets", kind=int) if args.epoch_budgets else []
    if any(b < 1 for b in budgets):
        raise ConfigError(f"--epoch-budgets={args.epoch_budgets!r}: every budget must be >= 1 epoch")
    report = sweep(
        args.output_dir, models=args.models, optimizers=args.optimizers, n=args.runs, config_files=args.config,
        overrides=args.set, centres=_centres(args), low=low, high=high, seed=args.seed, epoch_budgets=budgets,
        budget_seeds=numbers(args.budget_seeds, "--budget-seeds", kind=int), metric=args.metric,
    )  # fmt: skip
    print(report.table)
    print(f"wrote {', '.join(f.name for f in report.files)} to {args.output_dir}")
    return 0
