"""Training-step speed, deitlab vs timm, side by side in one process (same weights, same batch, same threads).

Runs in a venv that has both (timm does not import beside the CPU torch wheel):
    PYTHONPATH=src /work/timmvenv/bin/python benchmarks/bench_train_speed.py
Without timm it measures deitlab alone. Prints a table and writes benchmarks/results/bench_train_speed.json.
Each row: forward + backward + AdamW step, images/s, median of several timed steps after warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import deitlab
from deitlab.models import DistilledLogits

CASES = [
    # name, deitlab model, timm model, overrides, batch, input
    ("DeiT-Ti 224", "deit_tiny_patch16_224", "deit_tiny_patch16_224", {}, 32, (3, 224, 224)),
    (
        "DeiT-Ti distilled 224",
        "deit_tiny_distilled_patch16_224",
        "deit_tiny_distilled_patch16_224",
        {},
        32,
        (3, 224, 224),
    ),  # fmt: skip
    (
        "micro ViT 28px (demo size)",
        "deit_micro_patch4_28",
        "deit_tiny_patch16_224",
        dict(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=128, depth=6, num_heads=4, mlp_ratio=3.0),
        128,
        (1, 28, 28),
    ),  # fmt: skip
]


def step_time(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, precision: str, steps: int) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    dtype = torch.bfloat16 if precision == "bf16" else None
    times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
            out = model(x)
            if isinstance(out, DistilledLogits):
                loss = F.cross_entropy(out.cls_logits.float(), y) + F.cross_entropy(out.dist_logits.float(), y)
            elif isinstance(out, tuple):  # timm's distilled model in training mode
                loss = F.cross_entropy(out[0].float(), y) + F.cross_entropy(out[1].float(), y)
            else:
                loss = F.cross_entropy(out.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return x.shape[0] / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    try:
        import timm
    except ImportError:
        timm = None
    rows = []
    for label, ours_name, timm_name, over, batch, shape in CASES:
        torch.manual_seed(0)
        ours = deitlab.create_model(ours_name, **over).train()
        theirs = None
        if timm is not None:
            t_over = {k: v for k, v in over.items()}
            theirs = timm.create_model(timm_name, pretrained=False, **t_over).train()
            if "distilled" in timm_name:
                theirs.set_distilled_training(True)
            theirs.load_state_dict(ours.state_dict())  # same weights
        x = torch.randn(batch, *shape)
        y = torch.randint(0, ours.num_classes, (batch,))
        for precision in ("fp32", "bf16"):
            r_ours = step_time(ours, x, y, precision, args.steps)
            r_timm = step_time(theirs, x, y, precision, args.steps) if theirs is not None else None
            rows.append({"case": label, "precision": precision, "batch": batch, "deitlab_img_s": r_ours,
                         "timm_img_s": r_timm, "ratio": r_ours / r_timm if r_timm else None})  # fmt: skip
            ratio = f"{r_ours / r_timm:.2f}x" if r_timm else "-"
            print(f"{label:28s} {precision}  deitlab {r_ours:7.1f} img/s  timm {r_timm or 0:7.1f} img/s  {ratio}",
                  flush=True)  # fmt: skip
    print("\n| case | precision | batch | deitlab img/s | timm img/s | deitlab / timm |\n|---|---|---|---|---|---|")
    for r in rows:
        timm_s = f"{r['timm_img_s']:.1f}" if r["timm_img_s"] else "-"
        ratio = f"{r['ratio']:.2f}x" if r["ratio"] else "-"
        print(f"| {r['case']} | {r['precision']} | {r['batch']} | {r['deitlab_img_s']:.1f} | {timm_s} | {ratio} |")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    meta = {"torch": torch.__version__, "timm": getattr(timm, "__version__", None), "threads": args.threads,
            "cpu": platform.processor() or platform.machine(), "loadavg": os.getloadavg()}  # fmt: skip
    (out / "bench_train_speed.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
