"""Inference throughput: onnxruntime vs PyTorch (eager, fp32) on the same exported models, side by side.

Models: the demo's student ``vit_c_micro_distilled_32`` (1 x 32 x 32 input) and DeiT-Ti
``deit_tiny_distilled_patch16_224`` (3 x 224 x 224), fused heads, random weights (speed does not depend on
them), or a trained model given with ``--model``. Each model is exported with ``deitlab.export.export_model`` (so
the ONNX file passes its parity check first); then for each batch size (1 and 64) the two runtimes are timed in
alternating rounds, each round running one of them for at least ``--min-time`` seconds, and the median round is
kept. Alternating rounds make the *ratio* robust on a machine shared with other jobs; the absolute img/s are
only as steady as the machine. Both runtimes use the same number of threads (``--threads``, default 1 and 2:
on cores shared with other busy processes one thread is the robust setting, as ``bench_augment.py`` shows).

    PYTHONPATH=src python benchmarks/bench_export.py            # needs the extra: pip install 'deitlab[export]'

It prints a table, writes ``benchmarks/results/bench_export.json`` and a bar chart ``bench_export.png``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch

import deitlab
from deitlab.export import export_model, onnx_session
from deitlab.preprocess import Preprocessing
from deitlab.sources import resolve_model

RESULTS = Path(__file__).parent / "results" / "bench_export.json"
MODELS = ("vit_c_micro_distilled_32", "deit_tiny_distilled_patch16_224")


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        name = next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), "")
        return name or platform.processor() or platform.machine()
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or platform.machine()


def images_per_second(fn, batch: int, min_time: float) -> float:
    """One round: run ``fn`` until ``min_time`` has passed (at least twice); images per second."""
    n, t0 = 0, time.perf_counter()
    while True:
        fn()
        n += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= min_time and n >= 2:
            return n * batch / elapsed


def predictor_for(name: str, source: str | None) -> deitlab.Predictor:
    if source:
        return resolve_model(source)
    model = deitlab.create_model(name).eval()
    c, h = model.patch_embed.in_chans, model.patch_embed.img_size[0]
    return deitlab.Predictor(model, Preprocessing.default_for(c, h), source=f"{name} (random weights)")


def bench_model(predictor: deitlab.Predictor, batches: list[int], rounds: int, min_time: float,
                thread_counts: list[int], workdir: Path) -> list[dict]:  # fmt: skip
    name = predictor.model.model_name
    report = export_model(predictor, workdir / f"{name}.onnx", batch_size=4)
    print(f"{name}: exported ({report.exporter}, opset {report.opset}); onnxruntime vs PyTorch max abs difference "
          f"{report.max_abs_diff:.2e}")  # fmt: skip
    rows = []
    for threads in thread_counts:
        torch.set_num_threads(threads)
        session = onnx_session(report.path, threads=threads)
        for b in batches:
            row = bench_pair(predictor, session, torch.randn(b, *report.input_shape[1:]), rounds, min_time)
            row.update(model=name, threads=threads, max_abs_diff=report.max_abs_diff)
            rows.append(row)
            print(f"  {threads} thread(s), batch {b:3d}: PyTorch {row['pytorch_img_s']:8.1f} img/s, onnxruntime "
                  f"{row['onnxruntime_img_s']:8.1f} img/s, ratio {row['ratio_ort_over_pytorch']:.2f} "
                  f"({row['ratio_min']:.2f}-{row['ratio_max']:.2f})")  # fmt: skip
    return rows


def bench_pair(predictor: deitlab.Predictor, session, x: torch.Tensor, rounds: int, min_time: float) -> dict:  # noqa: ANN001
    """PyTorch and onnxruntime on batch ``x`` in alternating rounds; medians and the spread of the ratio."""
    xn = x.numpy()

    def run_torch() -> None:
        predictor.logits(x)

    def run_ort() -> None:
        session.run(None, {"images": xn})

    run_torch(), run_ort()  # warm-up: first-call allocations and graph set-up
    pt, ort = [], []
    for _ in range(rounds):
        pt.append(images_per_second(run_torch, len(x), min_time))
        ort.append(images_per_second(run_ort, len(x), min_time))
    ratios = [o / p for o, p in zip(ort, pt)]
    return {
        "batch": len(x), "pytorch_img_s": statistics.median(pt), "onnxruntime_img_s": statistics.median(ort),
        "ratio_ort_over_pytorch": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
        "rounds": rounds,
    }  # fmt: skip


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.6))
    labels = [f"{r['model'].split('_')[0]}_{r['model'].split('_')[1]}\nb{r['batch']} t{r['threads']}" for r in rows]
    xs = range(len(rows))
    ax.bar([x - 0.2 for x in xs], [r["pytorch_img_s"] for r in rows], 0.4, label="PyTorch (eager, fp32)")
    ax.bar([x + 0.2 for x in xs], [r["onnxruntime_img_s"] for r in rows], 0.4, label="onnxruntime (CPU)")
    for x, r in zip(xs, rows):
        top = max(r["pytorch_img_s"], r["onnxruntime_img_s"])
        ax.text(x, top * 1.15, f"x{r['ratio_ort_over_pytorch']:.2f}", ha="center", fontsize=9)
    ax.set_yscale("log")
    ax.set_ylim(top=4 * max(max(r["pytorch_img_s"], r["onnxruntime_img_s"]) for r in rows))
    ax.set_ylabel("images / s (log)")
    ax.set_xticks(list(xs), labels, fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), help="registry names (random weights)")
    p.add_argument("--model", default=None, help="a trained model (run, folder, file) instead of --models")
    p.add_argument("--batches", nargs="+", type=int, default=[1, 64])
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds per runtime and batch size")
    p.add_argument("--min-time", type=float, default=1.0, help="seconds per round")
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2], help="thread counts (both runtimes alike)")
    p.add_argument("--output", type=Path, default=RESULTS)
    args = p.parse_args()
    cpu = cpu_name()
    print(f"CPU: {cpu}; PyTorch {torch.__version__} and onnxruntime with {args.threads} threads alike")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in [args.model] if args.model else args.models:
            predictor = predictor_for(name, args.model)
            rows += bench_model(predictor, args.batches, args.rounds, args.min_time, args.threads, Path(tmp))
    import onnxruntime

    payload = {"cpu": cpu, "threads": args.threads, "torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
               "rows": rows}  # fmt: skip
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(payload, indent=1))
    png = args.output.with_suffix(".png")
    plot(rows, png, f"inference on {cpu} (b: batch, t: threads; median of {args.rounds} alternating rounds)")
    print("\n| model | threads | batch | PyTorch img/s | onnxruntime img/s | ratio (ORT / PyTorch) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        rates = f"{r['pytorch_img_s']:.1f} | {r['onnxruntime_img_s']:.1f}"
        ratio = f"{r['ratio_ort_over_pytorch']:.2f} ({r['ratio_min']:.2f}-{r['ratio_max']:.2f})"
        print(f"| {r['model']} | {r['threads']} | {r['batch']} | {rates} | {ratio} |")
    print(f"\nwrote {args.output} and {png}")


if __name__ == "__main__":
    main()
