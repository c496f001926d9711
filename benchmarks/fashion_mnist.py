"""DeiT's distillation protocol (Table 3) in miniature, on Fashion-MNIST with a 2-core CPU budget.

Trains the demo's ResNet-9 teacher once, then the micro ViT (ViT_C stem) at the same budget four ways:
    none        plain student, labels only
    soft        plain student, Hinton KD on its single head (tau = 3, alpha = 0.5)
    hard        plain student, hard-label distillation on its single head
    hard+token  DeiT's distilled student: class head <- labels, distillation head <- teacher argmax
and records test top-1 (per head for the distilled one), teacher agreement, wall time and img/s.

    python benchmarks/fashion_mnist.py                 # full protocol, ~28 min on 2 cores
    python benchmarks/fashion_mnist.py --epochs 1      # a quick pass
Writes benchmarks/results/fashion_mnist.json and .png (curves) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path

import torch

from deitlab.analysis.plots import plot_curves
from deitlab.config import build_config
from deitlab.config.recipes import load_recipe
from deitlab.engine import train

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None, help="student epochs (default: the demo recipe's)")
    parser.add_argument("--teacher-epochs", type=int, default=None)
    parser.add_argument("--out", default="runs/bench-fashion-mnist")
    parser.add_argument("--data-path", default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(2)
    out = Path(args.out)
    common = ["train.overwrite=true", "train.progress=false"] + (
        [f"data.path={args.data_path}"] if args.data_path else []
    )
    t_over = common + [f"train.output_dir={out / 'teacher'}"]
    if args.teacher_epochs:
        t_over.append(f"train.epochs={args.teacher_epochs}")
    teacher_cfg = build_config(["demo_teacher"], t_over)
    t0 = time.perf_counter()
    teacher = train(teacher_cfg)
    teacher_row = {"run": "teacher", "model": teacher_cfg.model.name, "test_acc": teacher.final["test_acc"],
                   "img_per_s": teacher.images_per_second, "seconds": time.perf_counter() - t0}  # fmt: skip
    student_base = load_recipe("demo_student")
    distilled = student_base["model"]["name"]  # the demo's student, and its twin without a distillation token
    plain = distilled.replace("_distilled", "")
    weights = out / "teacher" / "model.safetensors"
    variants = {
        "none": [f"model.name={plain}", "distill.type=none"],
        "soft": [f"model.name={plain}", "distill.type=soft", "distill.tau=3.0", f"teacher.path={weights}"],
        "hard": [f"model.name={plain}", "distill.type=hard", f"teacher.path={weights}"],
        "hard+token": [f"model.name={distilled}", "distill.type=hard", f"teacher.path={weights}"],
    }
    rows = [teacher_row]
    histories = {f"teacher {teacher_cfg.model.name}": teacher.history}
    for name, over in variants.items():
        extra = [f"train.epochs={args.epochs}"] if args.epochs else []
        cfg = build_config(base=student_base, overrides=common + over + extra + [f"train.output_dir={out / name}"])
        t0 = time.perf_counter()
        r = train(cfg)
        histories[name] = r.history
        f = r.final
        rows.append({
            "run": name, "model": cfg.model.name, "test_acc": f["test_acc"],
            "test_acc_cls": f.get("test_acc_cls"), "test_acc_dist": f.get("test_acc_dist"),
            "test_acc_fused_softmax": f.get("test_acc_fused_softmax"), "test_agreement": f.get("test_agreement"),
            "img_per_s": r.images_per_second, "seconds": time.perf_counter() - t0, "epochs": cfg.train.epochs,
        })  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    payload = {"machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
               "torch": torch.__version__, "rows": rows}  # fmt: skip
    (RESULTS / "fashion_mnist.json").write_text(json.dumps(payload, indent=1))
    plot_curves(histories, RESULTS / "fashion_mnist.png", title="Fashion-MNIST: distillation at one budget")
    print("| run | model | test top-1 | class head | dist head | fused (softmax) | agreement | img/s | wall |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        cells = [r.get(k) for k in ("test_acc_cls", "test_acc_dist", "test_acc_fused_softmax", "test_agreement")]
        shown = " | ".join("" if c is None else f"{c:.2f}" for c in cells)
        speed = f"{r['img_per_s']:.0f} | {r['seconds']:.0f} s"
        print(f"| {r['run']} | {r['model']} | {r['test_acc']:.2f} | {shown} | {speed} |")


if __name__ == "__main__":
    main()
