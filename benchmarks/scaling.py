"""How deitlab's training step scales: img/s and memory against batch size, image size (tokens) and depth.

Three sweeps of the training step (forward + backward + AdamW, deitlab's optimizer), every point of a sweep timed
once per round, round-robin (so load from other processes hits all points alike), median and min-max over rounds:

* batch: ``deit_tiny_distilled_patch16_224`` and the demo student ``vit_c_micro_distilled_32``;
* image size 28...224 px (49...3,136 tokens) of ``deit_micro_distilled_patch4_28`` (4x4 patches), with the fused
  SDPA kernel and the explicit product (the one that materialises the maps), the batch shrinking as the tokens grow
  (about as many tokens per step at every size);
* depth 12...32 blocks of ``deit_micro_distilled_patch4_28`` (plain) and ``deepvit_micro_distilled_patch4_28``
  (re-attention in every block) at 28 px: re-attention's overhead at equal depth (goal <= 1.15x).

Memory is what autograd keeps for backward (any device) and, on CUDA, the peak allocated. All points run at one
precision: ``--precision auto`` takes what ``deitlab.optimize_for`` picks for the first model.

    PYTHONPATH=src python benchmarks/scaling.py [--device cuda] [--rounds 3] [--quick]

Writes benchmarks/results/scaling{.json,.md,.png}: log-log plots, every row labelled with its model.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
import _common as C  # noqa: E402
import deitlab  # noqa: E402
import deitlab.optimize  # noqa: E402
from deitlab.engine.optim import build_optimizer  # noqa: E402
from deitlab.optimize.measure import plain_attention  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "scaling"
MICRO = "deit_micro_distilled_patch4_28"
REATTN = "deepvit_micro_distilled_patch4_28"


def train_step(model: torch.nn.Module, x: torch.Tensor, precision: str) -> Callable[[], None]:
    model.train()
    y = torch.randint(0, model.num_classes, (x.shape[0],), device=x.device)
    opt = build_optimizer(model, name="adamw", lr=1e-4, weight_decay=0.05)

    def run() -> None:
        with C.amp(x.device, precision):
            out = model(x)
            loss = (F.cross_entropy(out.cls_logits.float(), y) + F.cross_entropy(out.dist_logits.float(), y)) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return run


def memory(model: torch.nn.Module, x: torch.Tensor, run: Callable[[], None]) -> dict[str, float | None]:
    def fwd_bwd() -> None:
        out = model(x)
        (out.cls_logits.float().mean() + out.dist_logits.float().mean()).backward()
        model.zero_grad(set_to_none=True)

    peak = C.peak_cuda_bytes(run, x.device)
    return {"saved_mb": C.saved_for_backward_bytes(fwd_bwd) / 2**20, "peak_cuda_mb": peak / 2**20 if peak else None}


def sweep(points: list[dict[str, Any]], device: torch.device, precision: str, rounds: int) -> list[dict[str, Any]]:
    """Build every point's model and step, time them round-robin, and report img/s and memory per point."""
    fns, rows = {}, []
    for p in points:
        torch.manual_seed(0)
        model = deitlab.create_model(p["model"], **p.get("kwargs", {})).to(device)
        if p.get("attention"):
            for m in plain_attention(model):
                m.attn_impl = p["attention"]
        c, s = model.patch_embed.in_chans, p.get("kwargs", {}).get("img_size", model.patch_embed.img_size[0])
        x = torch.randn(p["batch"], c, s, s, device=device)
        fns[p["label"]] = train_step(model, x, precision)
        rows.append({**p, "tokens": model.patch_embed.num_patches, "precision": precision,
                     **memory(model, x, fns[p["label"]])})  # fmt: skip
        print(f"  built {p['label']}", flush=True)
    times = C.interleaved(fns, device, rounds=rounds, warmup=1)
    for r in rows:
        t = times[r["label"]]
        r["step_s"], r["step_s_rounds"] = C.spread(t), t
        r["img_s"] = C.spread([r["batch"] / v for v in t])
        print(f"  {r['label']:60s} {r['img_s']['median']:9.1f} img/s  saved {r['saved_mb']:8.1f} MB", flush=True)
    return rows


def _points(args: argparse.Namespace, device: torch.device) -> dict[str, list[dict[str, Any]]]:
    gpu = device.type == "cuda"
    tiny_b = [8, 16, 32, 64] + ([128, 256, 512] if gpu else [])
    demo_b = [32, 64, 128, 256, 512] + ([1024, 2048, 4096] if gpu else [])
    sizes = [28, 56, 84, 112, 168, 224]
    depths = [12, 16, 24, 32]
    bs_size, bs_depth = (4096, 1024) if gpu else (256, 64)  # tokens sweep: images x tokens / 49 per batch
    if args.quick:
        tiny_b, demo_b, sizes, depths = tiny_b[:2], demo_b[:3], sizes[:3], depths[:2]
    return {
        "batch": [{"label": f"deit_tiny_distilled_patch16_224 b{b}", "model": "deit_tiny_distilled_patch16_224",
                   "series": "deit_tiny_distilled_patch16_224", "batch": b, "x": b} for b in tiny_b]
        + [{"label": f"vit_c_micro_distilled_32 b{b}", "model": "vit_c_micro_distilled_32",
            "series": "vit_c_micro_distilled_32 (demo student)", "batch": b, "x": b} for b in demo_b],
        "tokens": [{"label": f"{MICRO} img_size={s} attn={a} b{_token_batch(s, bs_size)}", "model": MICRO,
                    "kwargs": {"img_size": s}, "attention": a, "series": f"{MICRO}, {a} attention",
                    "batch": _token_batch(s, bs_size), "x": (s // 4) ** 2}
                   for a in ("sdpa", "explicit") for s in sizes],
        "depth": [{"label": f"{m} depth={d}", "model": m, "kwargs": {"depth": d},
                   "series": f"{m} ({'re-attention' if m == REATTN else 'plain'})", "batch": bs_depth, "x": d}
                  for d in depths for m in (MICRO, REATTN)],  # each pair back to back in every round
    }  # fmt: skip


def _token_batch(img_size: int, images_at_28: int) -> int:
    """Batch of the tokens sweep: about the same number of tokens per step at every size (at least 2 images),
    so that the attention maps of 3,136 tokens fit in memory."""
    return max(2, images_at_28 * 49 // (img_size // 4) ** 2)


def overhead(depth_rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Re-attention's step time over the plain ViT's at each depth: the median (and min-max) of the per-round
    ratios of the two steps, which ran back to back in each round."""
    by = {(r["model"], r["kwargs"]["depth"]): r for r in depth_rows}
    rows = []
    for m, d in by:
        if m == MICRO:
            ratio = C.paired_ratio(by[(REATTN, d)]["step_s_rounds"], by[(MICRO, d)]["step_s_rounds"])
            rows.append({"depth": d, "model": f"{REATTN} / {MICRO}", "ratio": ratio["median"], "spread": ratio})
    return rows


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    xlabels = {"batch": "batch size", "tokens": "tokens (image size / 4)^2", "depth": "blocks"}
    for col, name in enumerate(("batch", "tokens", "depth")):
        rows = results["sweeps"].get(name, [])
        for series in dict.fromkeys(r["series"] for r in rows):
            pts = [r for r in rows if r["series"] == series]
            xs = [r["x"] for r in pts]
            axes[0, col].errorbar(xs, [r["img_s"]["median"] for r in pts], marker="o", label=series,
                                  yerr=[[r["img_s"]["median"] - r["img_s"]["min"] for r in pts],
                                        [r["img_s"]["max"] - r["img_s"]["median"] for r in pts]])  # fmt: skip
            mem = [r["peak_cuda_mb"] or r["saved_mb"] for r in pts]
            axes[1, col].plot(xs, mem, marker="o", label=series)
        for row, ylabel in ((0, "train img/s"), (1, "peak CUDA MB" if results["meta"]["device"] == "cuda"
                                                     else "MB kept for backward")):  # fmt: skip
            ax = axes[row, col]
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel(xlabels[name])
            ax.set_ylabel(ylabel)
            ax.legend(fontsize=7)
            ax.grid(True, which="both", alpha=0.3)
    over = ", ".join(f"{o['depth']}: {o['ratio']:.2f}x" for o in results["reattention_overhead"])
    axes[0, 2].set_title(f"re-attention / plain at equal depth: {over}", fontsize=8)
    meta = results["meta"]
    fig.suptitle(f"deitlab training-step scaling, {meta['device']}: {meta['machine'][:70]}, "
                 f"{meta['precision']}, {meta['threads']} threads", fontsize=10)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def markdown(results: dict[str, Any]) -> str:
    meta = results["meta"]
    lines = [f"# Training-step scaling ({meta['device']}: {meta['machine']})", "",
             f"torch {meta['torch']}, {meta['threads']} threads, {meta['precision']}, {meta['rounds']} rounds "
             f"(median, min-max); load {meta.get('loadavg_before')} -> {meta.get('loadavg_after')}.", "",
             "| sweep | model / point | batch | tokens | img/s | MB kept for backward | peak CUDA MB |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, rows in results["sweeps"].items():
        for r in rows:
            cuda = f"{r['peak_cuda_mb']:.0f}" if r["peak_cuda_mb"] else "-"
            img = f"{r['img_s']['median']:.1f} ({r['img_s']['min']:.1f}-{r['img_s']['max']:.1f})"
            cells = [name, r["label"], r["batch"], r["tokens"], img, f"{r['saved_mb']:.1f}", cuda]
            lines.append("| " + " | ".join(map(str, cells)) + " |")
    lines += ["", "| depth | re-attention / plain step time (goal <= 1.15x) |", "|---|---|"]
    for o in results["reattention_overhead"]:
        sp = f" ({o['spread']['min']:.2f}-{o['spread']['max']:.2f} over rounds)" if "spread" in o else ""
        lines.append(f"| {o['depth']} | {o['ratio']:.2f}x{sp} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--sweeps", default="batch,tokens,depth")
    ap.add_argument("--quick", action="store_true", help="the first few points of each sweep")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    precision = args.precision
    if precision == "auto":
        probe = deitlab.create_model(MICRO).to(device)
        x = torch.randn(64, 1, 28, 28, device=device)
        precision = deitlab.optimize.plan_for(probe, x, "train", threads="keep", compile="never").precision
    meta = C.metadata(device, precision=precision, rounds=args.rounds)
    points = _points(args, device)
    sweeps = {}
    for name in args.sweeps.split(","):
        print(f"{name} sweep", flush=True)
        sweeps[name] = sweep(points[name], device, precision, args.rounds)
    C.finish_metadata(meta)
    results = {"meta": meta, "sweeps": sweeps,
               "reattention_overhead": overhead(sweeps["depth"]) if "depth" in sweeps else []}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(markdown(results))
    plot(results, args.out.with_suffix(".png"))
    print(markdown(results))


if __name__ == "__main__":
    main()
