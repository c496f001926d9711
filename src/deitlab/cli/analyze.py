"""``deitlab analyze collapse|tokens|agreement|attention|curves``: measure trained models, write JSON + PNG.

- ``collapse``: DeepViT's cross-layer attention similarity, similar blocks, entropy and feature-to-final similarity.
- ``tokens``: cosine of a distilled model's class and distillation tokens through depth (DeiT §4).
- ``agreement``: per head (cls, dist, fused) accuracy, agreement with the teacher and each other, confusion matrices.
- ``attention``: each block's class-token attention and the attention rollout over a few images.
- ``curves``: training loss and accuracy per epoch of one or more runs (their ``log.jsonl``).

A model comes from a run directory (its ``config.yaml`` and weights) or from ``--model NAME [--checkpoint PATH]``.
Definitions: SPEC §7; the functions behind each kind live in :mod:`deitlab.analysis.report`.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from deitlab.analysis import report as rep
from deitlab.errors import ConfigError

NAME = "analyze"
HELP = "measure models: attention collapse, class vs distillation token, head agreement, attention maps, curves"

KINDS = {
    "collapse": "cross-layer attention similarity, similar blocks, entropy, feature-to-final (DeepViT)",
    "tokens": "cosine of the class and distillation tokens through depth (DeiT)",
    "agreement": "per-head accuracy, agreement with the teacher and between heads, confusion matrices",
    "attention": "per-block class-token attention and attention rollout over a few images",
    "curves": "overlay runs' training loss and accuracy per epoch",
}
DEFAULT_IMAGES = {"collapse": 64, "tokens": 64, "attention": 4, "agreement": None}
MULTI = ("collapse", "tokens")  # kinds that compare several models in one call


def _model_source(p: argparse.ArgumentParser, kind: str) -> None:
    what = "training run directories, compared in one table and plot" if kind in MULTI else "a training run directory"
    p.add_argument("runs", nargs="*", metavar="RUN_DIR", help=f"{what} (or --model/--checkpoint)")
    p.add_argument("--model", help="registry name (untrained unless --checkpoint is given)")
    p.add_argument("--checkpoint", help="weights for --model (.safetensors or .pth)")
    p.add_argument("--weights", default="best", choices=tuple(rep.WEIGHTS), help="which weights of a run directory")
    p.add_argument("--data-set", help="data set name (default: the run's own)")
    p.add_argument("--data-path")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    default = DEFAULT_IMAGES[kind]
    p.add_argument("--num-images", type=int, default=default,
                   help=f"images drawn at random (seeded) from the split (default: {default or 'all'})")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="which images are drawn")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="kind", metavar="KIND", parser_class=type(p), required=True)
    for kind, text in KINDS.items():
        q = sub.add_parser(kind, help=text, description=text)
        if kind == "curves":
            q.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories holding log.jsonl")
            q.add_argument("--labels", nargs="+", default=(), help="one legend label per run (default: folder names)")
        else:
            _model_source(q, kind)
        q.add_argument("--output-dir", help="where JSON and PNG files go (default: <run>/analysis or analysis/<model>)")
        if kind == "collapse":
            q.add_argument("--threshold", type=float, default=0.9, help="M^(l-1,l) above this counts as similar")
        if kind == "agreement":
            q.add_argument("--teacher-model", help="teacher registry name (default: the run's teacher)")
            q.add_argument("--teacher-path", help="teacher weights (default: the run's teacher)")
            q.add_argument("--batch-size", type=int, default=256)


def _output_dir(args: argparse.Namespace) -> Path:
    if args.output_dir:
        return Path(args.output_dir)
    if len(args.runs) == 1:
        return Path(args.runs[0]) / "analysis"
    source = getattr(args, "model", None) or (Path(args.checkpoint).stem if getattr(args, "checkpoint", None) else None)
    if not args.runs and source:
        return Path("analysis") / re.sub(r"[^A-Za-z0-9_.-]+", "_", source)
    raise ConfigError(f"several run directories ({len(args.runs)}): pass --output-dir for the combined results")


def _check_sources(args: argparse.Namespace) -> None:
    if args.runs and (args.model or args.checkpoint):
        raise ConfigError("give run directories or --model [--checkpoint], not both")
    if len(args.runs) > 1 and args.kind not in MULTI:
        raise ConfigError(f"analyze {args.kind} takes one run directory, got {len(args.runs)}")
    if not (args.runs or args.model or args.checkpoint):
        raise ConfigError(f"analyze {args.kind}: give a run directory, or --model NAME and/or --checkpoint PATH")


def _subjects(args: argparse.Namespace) -> list[rep.Subject]:
    common: dict[str, Any] = dict(
        weights=args.weights, data_set=args.data_set, data_path=args.data_path, split=args.split,
        num_images=args.num_images, seed=args.seed, device=args.device,
    )  # fmt: skip
    if not args.runs:
        return [rep.load_subject(model=args.model, checkpoint=args.checkpoint, **common)]
    return [rep.load_subject(run, **common) for run in args.runs]


def _analyze(args: argparse.Namespace, subjects: list[rep.Subject], out: Path) -> rep.Report:
    if args.kind == "curves":
        return rep.analyze_curves(args.runs, out, labels=args.labels)
    if args.kind == "collapse":
        return rep.analyze_collapse(subjects, out, threshold=args.threshold)
    if args.kind == "tokens":
        return rep.analyze_tokens(subjects, out)
    if args.kind == "agreement":
        return rep.analyze_agreement(
            subjects[0], out, teacher=args.teacher_model, teacher_checkpoint=args.teacher_path,
            batch_size=args.batch_size,
        )  # fmt: skip
    return rep.analyze_attention(subjects[0], out)


def _check(args: argparse.Namespace) -> None:
    if args.kind == "collapse" and not 0 < args.threshold <= 1:
        raise ConfigError(f"--threshold={args.threshold} must be in (0, 1]")
    if args.kind == "agreement" and args.batch_size < 1:
        raise ConfigError(f"--batch-size={args.batch_size} must be >= 1")
    if args.kind != "curves":
        _check_sources(args)


def run(args: argparse.Namespace) -> int:
    _check(args)
    out = _output_dir(args)
    report = _analyze(args, [] if args.kind == "curves" else _subjects(args), out)
    print(report.table)
    print(f"wrote {len(report.files)} files to {out}: {', '.join(f.name for f in report.files)}")
    return 0
