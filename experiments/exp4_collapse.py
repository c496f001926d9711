"""Experiment 4: attention collapse in a deep narrow ViT and its re-attention twin (Zhou et al., 2021, DeepViT).

A 24-block ViT of width 64 (4 heads of 16, MLP ×3, 4×4 patches, 28 px) and its DeepViT twin (re-attention in every
block, as DeepViT-24B), each trained with 3 seeds on 50k stratified Fashion-MNIST images for 3 epochs by the same
recipe (AdamW lr 1e-3, wd 0.05, stochastic depth 0.1, flips, label smoothing 0.1), then measured on 256 test
images: the cross-layer similarity of the softmax attention maps (and, for re-attention, of the mixed maps it
applies), the number of similar blocks (adjacent similarity > 0.9), the attention entropy per block (an untrained or
undertrained model's near-uniform maps all look alike and score ≈ 1, so entropy is reported beside similarity and
the untrained models are measured too), the cosine of each block's output with the final output, and accuracy.

    python experiments/exp4_collapse.py [--out experiments/results/exp4] [--quick] [--list]

Paper (ImageNet, width 384, 12 heads): similar blocks 24B: ViT 11 → DeepViT 0; 32B: 15 → 0; top-1 79.35 → 79.99.
Expected wall time on a quiet 2-core machine: about 75 minutes (6 runs: ViT-24 ~300 img/s, DeepViT-24 ~160 img/s;
measured at 196 and 97 img/s on the shared machine); see docs/RESULTS.md.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path
from typing import Any

import torch

import _common as c
import deitlab
from deitlab.analysis import attention_collapse, grid_specs
from deitlab.analysis.report import analyze_collapse, load_subject
from deitlab.engine.build import build_run
from deitlab.engine.builders import build_device
from deitlab.engine.distributed import cleanup, init_distributed
from deitlab.engine.run import Callback
from deitlab.engine.train import TrainResult, fit

NAME = "exp4"
DEPTH, WIDTH, HEADS = 24, 64, 4
TWINS = {"ViT-24": "deit_micro_patch4_28", "DeepViT-24": "deepvit_micro_patch4_28"}
SHAPE = [f"model.kwargs.depth={DEPTH}", f"model.kwargs.embed_dim={WIDTH}", f"model.kwargs.num_heads={HEADS}"]
RECIPE = [
    *SHAPE, "data.batch_size=128", "data.limit_train=50000", "data.limit_train_mode=stratified", "train.epochs=3",
    "train.eval_every=3", "optim.lr=1e-3", "optim.scale_lr=false",
    "optim.weight_decay=0.05",
    "optim.warmup_epochs=0.5", "model.drop_path_rate=0.1", "aug.crop_scale=null", "aug.rand_augment=null",
    "aug.re_prob=0", "aug.mixup=0", "aug.cutmix=0", "aug.label_smoothing=0.1", "aug.eval_crop_pct=1",
    "train.precision=bf16",
]  # fmt: skip
QUICK = ["model.kwargs.depth=4", "model.kwargs.embed_dim=32", "data.limit_train=256", "data.batch_size=32",
         "train.epochs=1", "train.precision=fp32"]  # fmt: skip
PROBE_IMAGES = 32
NEAR_UNIFORM = 0.9  # mean entropy / log N above this: the maps are still close to uniform
IMAGES = 256


class EntropyProbe(Callback):
    """After every epoch: attention entropy (late half of the blocks, / log N) and similar blocks on 32 validation
    images, added to the epoch's log record, so that each run shows when its maps stopped being near-uniform."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def on_epoch_end(self, run: Any, state: Any, row: dict[str, Any]) -> None:
        r = attention_collapse(run.model, run.eval_aug(self.images.to(run.device)))
        late = r["entropy"][len(r["entropy"]) // 2 :]
        row["attn_entropy_late"] = sum(late) / len(late) / r["max_entropy"]
        row["similar_blocks"] = r["similar_blocks"]


def train_with_probe(cfg: Any) -> TrainResult:
    """``deitlab.engine.train`` with an :class:`EntropyProbe` before the epoch log (so its values are logged)."""
    device = build_device(cfg)
    dist = init_distributed(device.type)
    try:
        run = build_run(cfg, device=device, dist=dist)
        run.callbacks.callbacks.insert(0, EntropyProbe(run.data.eval.images[:PROBE_IMAGES]))
        return fit(run)
    finally:
        cleanup(dist)


def specs(quick: bool, seeds: list[int] | None = None) -> list:
    seeds = seeds or ([0] if quick else [0, 1, 2])
    axes = {"model": [(label, [f"model.name={name}"]) for label, name in TWINS.items()], "train.seed": seeds}
    return grid_specs(axes, study="collapse")


def measure(out: Path, records: list[dict[str, Any]], quick: bool) -> dict[str, Any]:
    """Collapse measurements of every trained run and of each untrained twin (cached per run in measure.json)."""
    n = 8 if quick else IMAGES
    trained = [load_subject(r["run_dir"], weights="final", num_images=n) for r in records]
    for s, r in zip(trained, records):
        s.label = r["name"]
    like = trained[0]  # same images, same shape (depth, width, heads, classes), random weights
    shape = dict(like.config.model.kwargs, img_size=int(like.images.shape[-1]), num_classes=len(like.classes),
                 in_chans=int(like.images.shape[1]))  # fmt: skip
    untrained = [
        dataclasses.replace(
            like, model=deitlab.create_model(name, **shape).eval(), name=name, label=f"{label} untrained"
        )  # fmt: skip
        for label, name in TWINS.items()
    ]
    return analyze_collapse([*trained, *untrained], out / "collapse").data


def summarize(records: list[dict[str, Any]], collapse: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for label in TWINS:
        runs = [r for r in records if r["labels"]["model"] == label]
        res = [collapse[r["name"]] for r in runs]
        log_n = res[0]["max_entropy"] if res else math.nan
        half = len(res[0]["entropy"]) // 2 if res else 0
        rows.append({
            "model": label, "runs": len(runs),
            "acc": c.mean_std(r["acc"] for r in runs),
            "similar_blocks": c.mean_std(x["similar_blocks"] for x in res),
            "similar_blocks_mixed": c.mean_std(x["mixed"]["similar_blocks"] for x in res if "mixed" in x),
            "entropy_late": c.mean_std(sum(x["entropy"][half:]) / len(x["entropy"][half:]) / log_n for x in res),
            "adjacent_late": c.mean_std(sum(x["adjacent"][half:]) / len(x["adjacent"][half:]) for x in res),
            "feature_to_final_mid": c.mean_std(x["feature_to_final"][half - 1] for x in res),
            "untrained": {k: collapse[f"{label} untrained"][k] for k in ("similar_blocks", "max_entropy")},
            "entropy_by_epoch": _by_epoch(runs, "attn_entropy_late"),
            "similar_by_epoch": _by_epoch(runs, "similar_blocks"),
            "untrained_entropy_late": sum(collapse[f"{label} untrained"]["entropy"][half:])
            / max(1, len(collapse[f"{label} untrained"]["entropy"][half:])) / log_n,
        })  # fmt: skip
    return rows


def _by_epoch(runs: list[dict[str, Any]], key: str) -> list[float | None]:
    """Mean over seeds of a probe value after each epoch."""
    epochs = max((len(r["history"]) for r in runs), default=0)
    out = []
    for e in range(epochs):
        stats = c.mean_std(r["history"][e].get(key) for r in runs if e < len(r["history"]))
        out.append(stats["mean"] if stats else None)
    return out


def markdown(rows: list[dict[str, Any]], records: list[dict[str, Any]], quick: bool) -> str:
    table = [[r["model"], r["runs"], c.pm(r["acc"]), c.pm(r["similar_blocks"], 1), c.pm(r["similar_blocks_mixed"], 1),
              c.pm(r["adjacent_late"], 3), c.pm(r["entropy_late"], 3), f"{r['untrained_entropy_late']:.3f}",
              r["untrained"]["similar_blocks"], c.pm(r["feature_to_final_mid"], 3)] for r in rows]  # fmt: skip
    near = [r["model"] for r in rows if r["entropy_late"] and r["entropy_late"]["mean"] > NEAR_UNIFORM]
    verdict = (f"Warning: the late blocks of {', '.join(near)} are still near-uniform (entropy > {NEAR_UNIFORM} log N):"
               " their similarity says little." if near else
               f"The trained maps are no longer near-uniform (late-block entropy ≤ {NEAR_UNIFORM} log N).")  # fmt: skip
    return "\n".join([
        f"## Experiment 4: attention collapse, ViT vs DeepViT ({DEPTH} blocks, width {WIDTH}, {HEADS} heads)",
        "",
        "Command: `python experiments/exp4_collapse.py`" + (" (`--quick`: smoke run, not results)" if quick else ""),
        f"CPU: {c.cpu_model()}; wall time of the runs: {c.wall_time(records) / 60:.1f} min.",
        "",
        c.md_table(["model", "seeds", "test acc %", "similar blocks", "similar (mixed maps)", "adjacent sim, late half",
                    "entropy / log N, late half", "(untrained)", "similar, untrained", "feature-to-final, mid"],
                   table),  # fmt: skip
        "",
        verdict,
        "",
        "During training (probe on 32 validation images after each epoch, mean over seeds):",
        "",
        *[f"- {r['model']}: late-half entropy / log N "
          + ", ".join("–" if v is None else f"{v:.3f}" for v in r["entropy_by_epoch"])
          + "; similar blocks " + ", ".join("–" if v is None else f"{v:.1f}" for v in r["similar_by_epoch"])
          for r in rows],
        "",
        "Paper (ImageNet, width 384): similar blocks ViT-24B 11 → DeepViT-24B 0, top-1 79.35 → 79.99.",
        "",
        "![collapse curves](collapse/collapse_curves.png)",
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = c.parser(__doc__, NAME)
    p.add_argument("--seeds", type=c.int_list, default=None, help="training seeds (default 0,1,2)")
    p.add_argument("--epochs", type=int, default=None,
                   help="train longer than the default 3 epochs (in a new --out folder: the runs differ)")  # fmt: skip
    args = p.parse_args(argv)
    out = c.setup(args, NAME)
    longer = [f"train.epochs={args.epochs}", f"train.eval_every={args.epochs}"] if args.epochs else []
    base = [*c.data_overrides(args), *RECIPE, *(QUICK if args.quick else []), *longer]
    run_list = specs(args.quick, args.seeds)
    records = c.run_phase(run_list, out / "runs", base, listing=args.list, train_fn=train_with_probe, jobs=args.jobs)
    if args.list:
        print(f"total: {len(run_list)} runs")
        return 0
    collapse = measure(out, records, args.quick)
    rows = summarize(records, collapse)
    c.write_outputs(out, NAME, {"summary": rows, "collapse": collapse, "runs": records},
                    markdown(rows, records, args.quick))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
