"""Experiment 2: class vs distillation token through depth (DeiT §4), on experiment 1's trained students.

For every distilled student experiment 1 trained (patchify and ViT_C, every size and augmentation, with and
without a teacher, every seed), on 256 test images: the cosine of the two learned input tokens (``cls_token``,
``dist_token``), of the two tokens' outputs after each block (averaged over images), after the final norm, and of
the two heads' weight vectors (per class, averaged). The students trained *without* a teacher are the control: both
heads learn the same labels, like the paper's "two class tokens" control (0.999).

Paper (DeiT-B, ImageNet): 0.06 at the input, 0.93 at the last layer; the class-token-only control 0.999.

    python experiments/exp2_tokens.py [--exp1 experiments/results/exp1] [--out experiments/results/exp2] [--quick]

Needs experiment 1's results (it trains nothing); a few minutes on 2 cores.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import _common as c
from deitlab.analysis.plots import plot_token_cosine
from deitlab.analysis.report import load_subject
from deitlab.analysis.sweep import read_records
from deitlab.analysis.tokens import token_similarity

NAME = "exp2"
IMAGES = 256
KEYS = ("input_cosine", "final_cosine", "head_cosine")


def _has_weights(run_dir: Path) -> bool:
    return any((run_dir / n).is_file() for n in ("model.safetensors", "model/model.safetensors"))


def students(exp1: Path) -> list[dict[str, Any]]:
    """Experiment 1's finished runs of distilled students (grid and table), in order."""
    records = [*read_records(exp1 / "grid" / "runs.jsonl"), *read_records(exp1 / "table" / "runs.jsonl")]
    distilled = [r for r in records if "distilled" in r["model"]]
    runs = [r for r in distilled if _has_weights(Path(r["run_dir"]))]
    if len(runs) < len(distilled):  # e.g. runs trained on a GPU machine whose weights were not brought back
        print(
            f"note: {len(distilled) - len(runs)} of {len(distilled)} distilled students have no weights here; "
            "measuring the others"
        )
    if not runs:
        raise SystemExit(f"error: no distilled students under {exp1}; run experiments/exp1_distillation.py first")
    return runs


def measure(out: Path, runs: Sequence[Mapping[str, Any]], num_images: int) -> dict[str, dict[str, Any]]:
    def one(run: Mapping[str, Any]) -> dict[str, Any]:
        s = load_subject(run["run_dir"], weights="final", num_images=num_images)
        return token_similarity(s.model, s.images)

    return {r["name"]: c.cached(out / "tokens_cache.json", r["name"], lambda r=r: one(r)) for r in runs}


def group(runs: Sequence[Mapping[str, Any]], tokens: Mapping[str, Any]) -> dict[tuple, dict[str, Any]]:
    """Mean ± std over seeds per (model, size, augmentation, arm): the scalars and the per-block curve."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in runs:
        lab = r["labels"]
        groups.setdefault((lab["model"], lab["size"], lab["aug"], lab["arm"]), []).append(tokens[r["name"]])
    out = {}
    for key, ts in groups.items():
        depth = len(ts[0]["block_cosine"])
        out[key] = {
            **{k: c.mean_std(t[k] for t in ts) for k in KEYS},
            "last_block": c.mean_std(t["block_cosine"][-1] for t in ts),
            "curve": [c.mean_std(t["block_cosine"][i] for t in ts)["mean"] for i in range(depth)],
            "seeds": len(ts),
        }
    return out


def plot(out: Path, groups: Mapping[tuple, Mapping[str, Any]], model: str) -> Path:
    """Mean curves of one model: every (size, augmentation, arm)."""
    curves = {
        f"{n}, {aug}, {arm}": {"input_cosine": g["input_cosine"]["mean"], "block_cosine": g["curve"],
                               "final_cosine": g["final_cosine"]["mean"], "head_cosine": g["head_cosine"]["mean"]}
        for (m, n, aug, arm), g in sorted(groups.items(), key=lambda kv: str(kv[0])) if m == model
    }  # fmt: skip
    return plot_token_cosine(curves, out / f"tokens_{model}.png", title=f"{model}: cos(class token, dist token)")


def markdown(groups: Mapping[tuple, Mapping[str, Any]], files: Sequence[Path], exp1: Path, quick: bool) -> str:
    rows = [[m, n, aug, arm, g["seeds"], c.pm(g["input_cosine"], 3), c.pm(g["last_block"], 3),
             c.pm(g["final_cosine"], 3), c.pm(g["head_cosine"], 3)]
            for (m, n, aug, arm), g in sorted(groups.items(), key=lambda kv: str(kv[0]))]  # fmt: skip
    return "\n".join([
        "## Experiment 2: class vs distillation token through depth (DeiT §4)",
        "",
        f"Command: `python experiments/exp2_tokens.py --exp1 {exp1}`" + (" (`--quick`: smoke run)" if quick else ""),
        f"CPU: {c.cpu_model()}. Students: experiment 1's; {IMAGES if not quick else 8} test images each.",
        "",
        c.md_table(["model", "images", "aug", "arm", "seeds", "cos at input", "cos after last block",
                    "cos after final norm", "cos of head weights"], rows),  # fmt: skip
        "",
        "Paper (DeiT-B, ImageNet): 0.06 at the input, 0.93 at the last layer; two class tokens trained on the same "
        "labels: 0.999.",
        "",
        *[f"![{f.stem}]({f.name})" for f in files],
    ])  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = c.parser(__doc__, NAME)
    p.add_argument("--exp1", type=Path, default=None, help="experiment 1's output folder")
    args = p.parse_args(argv)
    out = c.setup(args, NAME)
    exp1 = args.exp1 or c.RESULTS / ("exp1-quick" if args.quick else "exp1")
    runs = students(exp1)
    if args.list:
        print(f"{len(runs)} trained students of {exp1} to measure (no training)")
        return 0
    tokens = measure(out, runs, 8 if args.quick else IMAGES)
    groups = group(runs, tokens)
    files = [plot(out, groups, m) for m in sorted({k[0] for k in groups})]
    data = {"groups": {",".join(map(str, k)): v for k, v in groups.items()}, "tokens": tokens}
    c.write_outputs(out, NAME, data, markdown(groups, files, exp1, args.quick))
    return 0


if __name__ == "__main__":
    sys.exit(main())
