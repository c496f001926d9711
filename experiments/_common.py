"""Plumbing shared by the miniature reproductions of issue 10: arguments, the resumable runner, statistics, Markdown.

Every experiment is a list of :class:`deitlab.analysis.RunSpec` run by :func:`deitlab.analysis.sweep.run_specs`:
one line per finished run in ``<out>/<phase>/runs.jsonl``, so rerunning the same command continues where a stopped
one left off (a killed run starts again; finished ones are skipped). Each script writes ``results.json``, PNG plots
and ``RESULTS.md`` (a fragment for ``docs/RESULTS.md``) into its output folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from deitlab.analysis import RunSpec
from deitlab.analysis.sweep import read_records, run_specs
from deitlab.engine import train
from deitlab.io import atomic_write_bytes

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
FASHION = Path("/usr/share/datasets/fashion-mnist")
log = logging.getLogger("experiments")


def parser(doc: str, name: str) -> argparse.ArgumentParser:
    """``--out``, ``--quick`` (seconds, synthetic data, tiny models), ``--list`` and ``--data-path``."""
    p = argparse.ArgumentParser(description=doc.strip().splitlines()[0], epilog=doc)
    p.add_argument("--out", type=Path, default=None, help=f"output folder (default experiments/results/{name})")
    p.add_argument("--quick", action="store_true", help="a seconds-long smoke run on synthetic data (tests)")
    p.add_argument("--list", action="store_true", help="print the run list (and its size) and exit")
    p.add_argument("--data-path", default=None, help=f"Fashion-MNIST idx files (default {FASHION})")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (the budgets assume 2 cores)")
    p.add_argument("--jobs", type=int, default=1, help="runs at once, each in its own process (many cores or a GPU)")
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    return p


def int_list(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]`` (an argparse type)."""
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None


def setup(args: argparse.Namespace, name: str) -> Path:
    """Logging, threads and the output folder (``<name>-quick`` beside the real one for ``--quick``)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(args.threads)
    # Absolute: run specs name files under it, and a rerun must produce the very same specs to resume.
    out = (args.out or RESULTS / (f"{name}-quick" if args.quick else name)).resolve()
    out.mkdir(parents=True, exist_ok=True)
    return out


def data_overrides(args: argparse.Namespace) -> list[str]:
    """Fashion-MNIST (real runs) or the synthetic set (``--quick``, so tests need no download)."""
    if args.quick:
        return ["data.dataset=synthetic", "data.limit_eval=64"]
    return ["data.dataset=fashion_mnist", *([f"data.path={args.data_path}"] if args.data_path else [])]


def run_phase(
    specs: Sequence[RunSpec],
    out: Path,
    base: Sequence[str],
    *,
    listing: bool = False,
    metric: str = "test_acc",
    train_fn: Callable[[Any], Any] = train,
    jobs: int = 1,
    train: bool = True,
) -> list[dict[str, Any]]:
    """Train the specs not yet recorded in ``out/runs.jsonl`` (see :func:`run_specs`; ``jobs`` runs at once, each
    with ``--threads // jobs`` threads); ``listing`` only prints; ``train=False`` returns the finished ones."""
    if not train:
        names = {s.name for s in specs}
        return [r for r in read_records(out / "runs.jsonl") if r["name"] in names]
    if listing:
        done = {r["name"] for r in read_records(out / "runs.jsonl")}
        for s in specs:
            print(f"{'done' if s.name in done else 'todo'}  {out.name}/{s.name}  {' '.join(s.overrides)}")
        print(f"{out.name}: {len(specs)} runs, {len(done & {s.name for s in specs})} done")
        return [r for r in read_records(out / "runs.jsonl") if r["name"] in {s.name for s in specs}]
    return run_specs(specs, out, base_overrides=list(base), metric=metric, train_fn=train_fn, jobs=jobs)


def cached(path: Path, key: str, compute: Callable[[], Any]) -> Any:
    """``compute()`` once per ``key``, kept in the JSON file ``path`` (so a rerun does not measure twice)."""
    table = json.loads(path.read_text()) if path.is_file() else {}
    if key not in table:
        table[key] = compute()
        atomic_write_bytes(path, json.dumps(table, indent=1).encode())
    return table[key]


# ---- statistics and text -----------------------------------------------------------------------------------------
def mean_std(values: Iterable[float | None]) -> dict[str, float] | None:
    """``{"mean", "std" (n-1; 0 for one value), "n"}`` of the finite values, or ``None`` when there are none."""
    vals = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not vals:
        return None
    return {"mean": statistics.fmean(vals), "std": statistics.stdev(vals) if len(vals) > 1 else 0.0, "n": len(vals)}


def pm(stats: Mapping[str, float] | None, digits: int = 2) -> str:
    """``"90.12 ± 0.15"`` (n > 1), ``"90.12"`` (n = 1) or ``"–"``."""
    if not stats:
        return "–"
    if stats["n"] > 1:
        return f"{stats['mean']:.{digits}f} ± {stats['std']:.{digits}f}"
    return f"{stats['mean']:.{digits}f}"


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join("–" if v is None else str(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        name = next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration, subprocess.SubprocessError):
        name = platform.processor() or platform.machine()
    gpu = f"; GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    return f"{name}, {torch.get_num_threads()} threads (of {os.cpu_count()} CPUs){gpu}"


def wall_time(records: Iterable[Mapping[str, Any]]) -> float:
    return sum(r.get("wall_seconds") or 0.0 for r in records)


def write_outputs(out: Path, name: str, results: Mapping[str, Any], markdown: str) -> None:
    """``results.json`` and ``RESULTS.md`` (the fragment for docs/RESULTS.md), atomically."""
    results = {**results, "experiment": name, "cpu": cpu_model(), "written": time.strftime("%Y-%m-%d %H:%M")}
    atomic_write_bytes(out / "results.json", json.dumps(results, indent=1, allow_nan=False).encode())
    atomic_write_bytes(out / "RESULTS.md", (markdown.rstrip() + "\n").encode())
    log.info("wrote %s and %s", out / "results.json", out / "RESULTS.md")
