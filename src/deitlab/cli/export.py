"""``deitlab export MODEL --format onnx|pt2 --output FILE``: a file for deployment runtimes, checked on the spot.

ONNX (opset >= 17, input ``images`` with a dynamic batch axis, output ``logits``, or ``cls_logits`` and
``dist_logits`` with ``--heads both``) is run with onnxruntime right after export, ``.pt2`` (``torch.export``)
after ``torch.export.load``; the largest absolute difference to PyTorch is printed and must be <= 1e-4 (fp32),
else the exit code is 1. ONNX needs the optional extra: ``pip install 'deitlab[export]'``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from deitlab.errors import ConfigError, DeitlabError
from deitlab.export import DEFAULT_OPSET, FORMATS, HEAD_CHOICES, TOLERANCE, export_model, require_onnx
from deitlab.sources import SOURCE_HELP, resolve_model

NAME = "export"
HELP = "export a model to ONNX or torch.export (.pt2), checked against PyTorch"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help=SOURCE_HELP)
    p.add_argument("--format", default="onnx", choices=FORMATS)
    p.add_argument("--output", default=None, help="the file to write (default: <architecture>.<format>)")
    p.add_argument("--heads", default="fused", choices=HEAD_CHOICES, help="fused logits, or both heads")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (>= 17; default {DEFAULT_OPSET})")
    p.add_argument("--batch-size", type=int, default=8, help="the check batch (a second size checks the dynamic axis)")
    p.add_argument("--tolerance", type=float, default=TOLERANCE, help="max abs difference to PyTorch (fp32)")
    p.add_argument("--prefer", default="best", choices=("best", "final"), help="run directories: which model")
    p.add_argument("--model-name", default=None, help="registry name, for weights files that do not record it")


def run(args: argparse.Namespace) -> int:
    if args.format == "onnx":
        require_onnx()  # before loading anything: the missing extra is the whole message
    predictor = resolve_model(args.model, model_name=args.model_name, prefer=args.prefer)
    name = getattr(predictor.model, "model_name", "model")
    output = Path(args.output or f"{name}.{args.format}")
    if output.is_dir():
        raise ConfigError(f"--output {output} is a directory; give a file name")
    r = export_model(
        predictor, output, fmt=args.format, heads=args.heads, opset=args.opset, batch_size=args.batch_size,
        tolerance=args.tolerance,
    )  # fmt: skip
    kind = f"ONNX opset {r.opset}, {r.exporter} exporter" if r.format == "onnx" else "torch.export program"
    print(f"wrote {r.path} ({kind}, {r.size_bytes / 1e6:.2f} MB, {r.seconds:.1f} s) from {predictor.source}")
    shape = ", ".join(map(str, r.input_shape[1:]))
    print(f"  input  images (batch, {shape}) float32; outputs {', '.join(r.outputs)} (batch, classes)")
    for note in r.notes:
        print(f"  note: {note}")
    runtime = "onnxruntime" if r.format == "onnx" else "torch.export.load"
    verdict = "OK" if r.ok else "FAILED"
    print(
        f"  check: {runtime} vs PyTorch on batches of {' and '.join(map(str, r.checked_batches))}: "
        f"max abs difference {r.max_abs_diff:.2e} (limit {r.tolerance:.0e}) {verdict}"
    )
    if not r.ok:
        raise DeitlabError(
            f"the exported model differs from PyTorch by {r.max_abs_diff:.2e} > {r.tolerance:.0e}; "
            f"the file is kept at {r.path} for inspection"
        )
    return 0
