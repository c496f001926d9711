"""``deitlab demo``: the main job on the built-in default (teacher CNN + distilled ViT, table and plots)."""

from __future__ import annotations

import argparse

from deitlab.demo import format_table, run_demo

NAME = "demo"
HELP = "the main job: teacher CNN + distilled ViT on Fashion-MNIST, table and plots"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="a tiny smoke run (seconds): checks the pipeline end to end")
    p.add_argument("--baseline", action="store_true", help="also train a non-distilled student of the same budget")
    p.add_argument("--output-dir", default=None)
    p.add_argument("--data-set", default=None, choices=("fashion_mnist", "digits", "mnist"))
    p.add_argument("--data-path", default=None)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    result = run_demo(
        quick=args.quick, output_dir=args.output_dir, dataset=args.data_set, data_path=args.data_path,
        baseline=args.baseline, progress=not args.quiet,
    )  # fmt: skip
    print()
    print(format_table(result))
    print(f"plots: {result.out_dir / 'curves.png'}, {result.out_dir / 'confusion_student.png'}")
    return 0
