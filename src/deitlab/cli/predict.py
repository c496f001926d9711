"""``deitlab predict MODEL IMAGES_OR_FOLDERS...``: classify images with a trained model's own preprocessing.

Prints one line per image with its top-k class names and probabilities; ``--output`` also writes them as JSONL
(one object per image) or CSV (one row per image). Unreadable images are reported on one line each and skipped:
exit code 0 when every image was classified, 1 when some were skipped (or none could be read).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

from deitlab.engine.builders import resolve_device
from deitlab.errors import ConfigError
from deitlab.io import atomic_write_bytes
from deitlab.predictor import DEFAULT_BATCH, HEADS, Prediction, expand_inputs
from deitlab.sources import SOURCE_HELP, resolve_model

NAME = "predict"
HELP = "classify images (PNG/JPEG, any size or mode) with a trained model: top-k class names"
OUTPUT_SUFFIXES = (".jsonl", ".csv")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help=SOURCE_HELP)
    p.add_argument("images", nargs="+", help="image files and/or folders (searched recursively)")
    p.add_argument("--top-k", type=int, default=5, help="classes to show per image (default 5)")
    p.add_argument("--head", default="fused", choices=HEADS, help="distilled models: fused heads, class or dist head")
    p.add_argument("--output", default=None, help="also write the predictions to FILE.jsonl or FILE.csv")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="auto: CUDA when available")
    p.add_argument(
        "--precision",
        default="auto",
        choices=("auto", "fp32", "bf16", "fp16"),
        help="auto: the fastest measured on this machine when there are enough images to repay it",
    )
    p.add_argument("--prefer", default="best", choices=("best", "final"), help="run directories: which model")
    p.add_argument("--model-name", default=None, help="registry name, for weights files that do not record it")


def format_line(pred: Prediction) -> str:
    return f"{pred.image}: " + ", ".join(f"{t['label']} {100 * t['prob']:.2f}%" for t in pred.top_k)


def to_jsonl(preds: list[Prediction]) -> str:
    return "".join(json.dumps(p.to_dict()) + "\n" for p in preds)


def to_csv(preds: list[Prediction], top_k: int) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["image"] + [f"{c}_{i + 1}" for i in range(top_k) for c in ("label", "index", "prob")])
    for p in preds:
        w.writerow([p.image] + [v for t in p.top_k for v in (t["label"], t["index"], t["prob"])])
    return buf.getvalue()


def run(args: argparse.Namespace) -> int:
    out = Path(args.output) if args.output else None
    if out is not None and out.suffix not in OUTPUT_SUFFIXES:
        raise ConfigError(f"--output {out}: use a .jsonl or .csv file name")
    predictor = resolve_model(args.model, model_name=args.model_name, prefer=args.prefer)
    predictor.to(resolve_device(args.device))
    images = list(expand_inputs(args.images))
    predictor.tune(len(images), args.batch_size, args.precision)
    done: list[Prediction] = []
    skipped = 0
    stream = predictor.iter_predict(
        images, top_k=args.top_k, head=args.head, batch_size=args.batch_size, on_error="skip"
    )
    for pred in stream:
        if pred.error:
            skipped += 1
            print(f"skipped: {pred.error}", file=sys.stderr)
            continue
        done.append(pred)
        print(format_line(pred))
    if out is not None:
        k = min(args.top_k, predictor.num_classes)
        atomic_write_bytes(out, (to_jsonl(done) if out.suffix == ".jsonl" else to_csv(done, k)).encode())
    where = f"; wrote {out}" if out is not None else ""
    if skipped:
        print(f"predicted {len(done)} image(s), skipped {skipped} unreadable (exit code 1){where}", file=sys.stderr)
        return 1
    print(f"predicted {len(done)} image(s) with {predictor.source} ({args.head} head){where}", file=sys.stderr)
    return 0
