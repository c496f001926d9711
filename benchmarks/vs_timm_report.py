"""The markdown table and the PNG of ``vs_timm.py``'s results (also usable on a saved JSON:
``python benchmarks/vs_timm_report.py benchmarks/results/vs_timm.json``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _r(d: dict[str, float]) -> str:
    return f"{d['median']:.2f}x ({d['min']:.2f}-{d['max']:.2f})"


def _model_rows(rows: list[dict[str, Any]], precisions: list[str]) -> list[str]:
    head = ["model", "row", "batch", *[f"{p} timm/deitlab" for p in precisions], "best vs best (deitlab vs timm)",
            "deitlab img/s (best)", "deitlab % matmul peak (best)", "timm % peak (its best)", "notes"]  # fmt: skip
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        if "precisions" not in row:
            continue
        best = row["best"]
        notes = []
        if row.get("saved_for_backward_mb"):
            m = row["saved_for_backward_mb"]
            notes.append(f"saved for backward {m['deitlab']:.0f} / {m['timm']:.0f} MB")
        if row.get("peak_cuda_mb"):
            m = row["peak_cuda_mb"]
            notes.append(f"peak CUDA {m['deitlab']:.0f} / {m['timm']:.0f} MB")
        if row.get("compile_seconds"):
            notes.append(f"compile {row['compile_seconds']:.0f} s")
        if best.get("ratio_vs_timm_compiled"):
            notes.append(f"vs timm compiled too: {_r(best['ratio_vs_timm_compiled'])} (its compile "
                         f"{row['timm_compile_seconds']:.0f} s)")  # fmt: skip
        if row.get("teacher_overhead"):
            o = row["teacher_overhead"]
            if "inside_step_s" in o:  # clocked around the teacher's call
                note = (f"teacher in the step = {_r(o['ratio'])} its forward on the same input, "
                        f"{_r(o['ratio_vs_channels_last_input'])} on a channels-last batch; step difference "
                        f"{_r(o['step_difference_ratio'])}")  # fmt: skip
            else:  # results written before the clock: distillation step minus plain step
                note = f"teacher overhead (step difference) = {_r(o['ratio'])} its forward"
            notes.append(note)
        cells = [row["model"], row["row"], str(row.get("batch", ""))]
        cells += [_r(row["precisions"][p]["ratio"]) if p in row["precisions"] else "" for p in precisions]
        cells += [f"{_r(best['ratio'])} ({best['deitlab_precision']} vs {best['timm_precision']})",
                  f"{best.get('deitlab_img_s', 0):.1f}", f"{best.get('deitlab_pct_peak', 0):.0f}%",
                  f"{best.get('timm_pct_peak', 0):.0f}%", "; ".join(notes)]  # fmt: skip
        out.append("| " + " | ".join(cells) + " |")
    return out


def markdown(payload: dict[str, Any]) -> str:
    meta, rows = payload["meta"], payload["rows"]
    precisions = sorted({p for r in rows for p in r.get("precisions", {})}, key=["fp32", "bf16", "fp16"].index)
    peaks = ", ".join(f"{p} {v:.0f}" for p, v in meta.get("matmul_peak_gflops", {}).items())
    lines = [
        f"# deitlab vs timm ({meta['device']}: {meta['machine']})",
        "",
        f"torch {meta['torch']}, timm {meta['timm']}, {meta['threads']} threads, {meta['rounds']} interleaved rounds; "
        f"load average {meta.get('loadavg_before')} -> {meta.get('loadavg_after')}; {meta['date']}.",
        f"Matmul peak measured in this run (GFLOP/s): {peaks}.",
        "Ratios are timm's median time / deitlab's (> 1: deitlab faster), with the min-max of the per-round ratios. "
        "Same weights on both sides; eager on both sides.",
        "",
        *(_model_rows(rows, precisions) if any("precisions" in r for r in rows) else []),
    ]
    aug = [r for r in rows if "precisions" not in r]
    if aug:
        lines += [
            "",
            "| pipeline | comparison | deitlab img/s | timm img/s | deitlab / timm |",
            "|---|---|---|---|---|",
        ]
        for r in aug:
            lines.append(f"| {r['model']} | {r['row']} | {r['deitlab_img_s']['median']:.0f} | "
                         f"{r['timm_img_s']['median']:.0f} | {_r(r['ratio'])} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def plot(payload: dict[str, Any], path: Path) -> None:
    """Grouped bars: each row's ratio per precision and best vs best, with 1.0 (parity) and 1.3 (the goal)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in payload["rows"] if "precisions" in r]
    aug = [r for r in payload["rows"] if "precisions" not in r]
    labels = [f"{r['model'].split(' (')[0]}\n{r['row']}" for r in rows] + [
        f"{r['model'].split(' (')[0]}\nvs {r['row'].split('vs ')[-1]}" for r in aug
    ]
    series = {p: [r["precisions"].get(p, {}).get("ratio", {}).get("median", 0) for r in rows] + [0] * len(aug)
              for p in ("fp32", "bf16", "fp16") if any(p in r["precisions"] for r in rows)}  # fmt: skip
    series["best vs best"] = [r["best"]["ratio"]["median"] for r in rows] + [r["ratio"]["median"] for r in aug]
    fig, ax = plt.subplots(figsize=(max(8, 0.9 * len(labels)), 5))
    width = 0.8 / len(series)
    for i, (name, values) in enumerate(series.items()):
        ax.bar([j + i * width for j in range(len(labels))], values, width, label=name)
    ax.axhline(1.0, color="k", lw=1)
    ax.axhline(1.3, color="tab:red", lw=1, ls="--", label="goal 1.3x")
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(labels))], labels, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("timm time / deitlab time")
    meta = payload["meta"]
    ax.set_title(f"deitlab vs timm, {meta['device']}: {meta['machine'][:70]}, {meta['threads']} threads", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    src = Path(sys.argv[1])
    data = json.loads(src.read_text())
    src.with_suffix(".md").write_text(markdown(data))
    plot(data, src.with_suffix(".png"))
    print(markdown(data))
