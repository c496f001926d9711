"""``deitlab eval MODEL``: any run, model folder or checkpoint on any data set, per-head accuracies."""

from __future__ import annotations

import argparse

from deitlab.engine.eval_checkpoint import evaluate_checkpoint
from deitlab.sources import SOURCE_HELP

NAME = "eval"
HELP = "evaluate a checkpoint on a data set: per-head top-1/top-5"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help=SOURCE_HELP)
    p.add_argument("--data-set", default=None, help="data set name (default: the one the run trained on)")
    p.add_argument("--data-path", default=None)
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                   help="autocast precision; auto: the fastest measured on this machine (cached)")  # fmt: skip
    p.add_argument("--model", default=None, help="registry name, for checkpoints without deitlab metadata")


def run(args: argparse.Namespace) -> int:
    report = evaluate_checkpoint(
        args.checkpoint, dataset=args.data_set, data_path=args.data_path, split=args.split,
        batch_size=args.batch_size, precision=args.precision, model_name=args.model,
    )  # fmt: skip
    print(f"{report['model']} on {report['dataset']} ({report['images']} images)")
    for k, v in report["metrics"].items():
        if k.startswith(("acc", "agreement")):
            print(f"  {k:20s} {v:7.2f}%")
    return 0
