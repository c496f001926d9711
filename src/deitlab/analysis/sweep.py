"""A resumable runner for studies made of many short trainings (``deitlab sweep`` and the issue-10 experiments).

A study is a list of :class:`~deitlab.analysis.stability.RunSpec` (a name + config overrides). :func:`run_specs`
trains each one from a base config, and after every finished run rewrites ``<out>/runs.jsonl`` atomically with one
more line (one line per finished run). Rerunning the same command skips the runs already recorded, so a crash or a
kill loses at most the run in progress, which then starts again from scratch. A run that diverges (the engine raises
:class:`~deitlab.engine.TrainingDiverged`, or its accuracy is not finite) is a finished run with error 100%.
"""

from __future__ import annotations

import json
import logging
import math
import multiprocessing
import shutil
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

import torch

from deitlab.analysis import plots
from deitlab.analysis._output import Report, finite_or_none, format_table, write_json
from deitlab.analysis.stability import (
    RunSpec,
    SearchSpace,
    aggregate,
    edf,
    field_of,
    grid_specs,
    lr_wd_specs,
    paper_space,
    space_around,
    summarize_lr_wd,
)
from deitlab.config import build_config
from deitlab.engine import TrainingDiverged, train
from deitlab.errors import ConfigError
from deitlab.io import atomic_write_bytes
from deitlab.models import get_model_entry

log = logging.getLogger(__name__)

RESULTS_FILE = "runs.jsonl"
# Per-epoch values kept in each record: train_teacher_disagree is the engine's (issue 10, experiment 1); the attention
# probe of experiment 4 adds attn_entropy_late and similar_blocks.
HISTORY_KEYS = ("epoch", "train_loss", "acc", "acc_cls", "acc_dist", "agreement", "lr", "train_teacher_disagree",
                "attn_entropy_late", "similar_blocks")  # fmt: skip


def read_records(path: str | Path) -> list[dict[str, Any]]:
    """The records of a results file; a line cut by a crash (not valid JSON) is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and "name" in row:
            records.append(row)
    return records


def append_record(path: str | Path, record: Mapping[str, Any]) -> None:
    """Add one line to a results file by rewriting it atomically (a crash leaves the old or the new file)."""
    lines = [json.dumps(r) for r in read_records(path)] + [json.dumps(finite_or_none(record))]
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())


def _check_specs(specs: Sequence[RunSpec], done: Mapping[str, Mapping[str, Any]], base: Sequence[str]) -> None:
    names = [s.name for s in specs]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup:
        raise ConfigError(f"run name {dup!r} appears twice in the study; names must be unique")
    for s in specs:
        old = done.get(s.name)
        if old is None:
            continue
        for what, was, now in (("overrides", old.get("overrides", []), s.overrides),
                               ("base recipe", old.get("base_overrides", base), base)):  # fmt: skip
            if list(was) != list(now):
                raise ConfigError(
                    f"run {s.name!r} is already recorded with a different {what} ({list(was)} vs {list(now)}); use "
                    "another output folder for a changed study"
                )


def _record(
    spec: RunSpec, cfg: Any, result: Any, diverged: bool, wall: float, metric: str, base: Sequence[str] = ()
) -> dict[str, Any]:
    final = dict(result.final) if result is not None else {}
    key = metric if metric in final else "acc"
    acc = final.get(key)
    diverged = diverged or acc is None or not math.isfinite(acc)
    lr = cfg.optim.lr * (cfg.data.batch_size / 512 if cfg.optim.scale_lr else 1.0)  # DeiT's rule, as the engine
    history = [{k: r[k] for k in HISTORY_KEYS if k in r} for r in (result.history if result is not None else [])]
    return {
        "name": spec.name, "labels": dict(spec.labels), "overrides": list(spec.overrides),
        "base_overrides": list(base),
        "model": cfg.model.name, "optimizer": cfg.optim.name, "lr": lr, "wd": cfg.optim.weight_decay,
        "seed": cfg.train.seed, "epochs": cfg.train.epochs, "batch_size": cfg.data.batch_size,
        "limit_train": cfg.data.limit_train, "distill": cfg.distill.type,
        "metric": key, "acc": None if diverged else acc, "error": 100.0 if diverged else 100.0 - acc,
        "diverged": diverged, "final": final, "teacher": dict(result.teacher) if result is not None else {},
        "history": history, "wall_seconds": wall,
        "train_seconds": result.train_seconds if result is not None else None,
        "images_per_second": result.images_per_second if result is not None else None,
        "run_dir": str(cfg.train.output_dir), "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }  # fmt: skip


def _train_one(
    spec: RunSpec, cfg: Any, train_fn: Callable[[Any], Any], metric: str, base: Sequence[str]
) -> dict[str, Any] | None:
    """Train one run; its record, or ``None`` when it was stopped cleanly (Ctrl-C) and must run again."""
    t0 = time.perf_counter()
    result, diverged = None, False
    try:
        result = train_fn(cfg)
    except TrainingDiverged as e:
        diverged = True
        log.warning("run %s diverged: %s", spec.name, str(e).splitlines()[0])
    if result is not None and getattr(result, "stopped_early", False):
        return None
    return _record(spec, cfg, result, diverged, time.perf_counter() - t0, metric, base)


class _Book:
    """Records finished runs (runs.jsonl, the in-memory table, checkpoint clean-up) and logs progress with an ETA."""

    def __init__(self, results: Path, done: dict[str, Any], configs: Mapping[str, Any], *, total: int, todo: int,
                 jobs: int, keep: bool) -> None:  # fmt: skip
        self.results, self.done, self.configs, self.keep = results, done, configs, keep
        self.total, self.todo, self.jobs = total, todo, jobs
        self.spent, self.finished = 0.0, 0

    def record(self, spec: RunSpec, record: dict[str, Any]) -> None:
        append_record(self.results, record)
        self.done[spec.name] = finite_or_none(record)
        if not self.keep:
            shutil.rmtree(Path(self.configs[spec.name].train.output_dir) / "checkpoints", ignore_errors=True)
        self.finished += 1
        self.spent += record["wall_seconds"]
        left = self.todo - self.finished
        eta = _eta(self.spent / self.finished * left / self.jobs)
        log.info(
            "sweep %d/%d done, %d left, ETA %s: %s error %.2f%%%s (%.0f s)",
            self.total - left, self.total, left, eta, spec.name, record["error"],
            " (diverged)" if record["diverged"] else "", record["wall_seconds"],
        )  # fmt: skip


def _worker_init(threads: int) -> None:
    torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")


def _run_parallel(
    todo: Sequence[RunSpec],
    configs: Mapping[str, Any],
    jobs: int,
    train_fn: Callable[[Any], Any],
    metric: str,
    base: Sequence[str],
    record_done: Callable[[RunSpec, dict[str, Any]], None],
) -> None:
    """Train ``todo`` in ``jobs`` spawned processes; every finished run is recorded at once (a kill loses only the
    runs in progress). A worker's exception stops the study after the runs in flight and is raised here."""
    threads = max(1, torch.get_num_threads() // jobs)
    ctx = multiprocessing.get_context("spawn")  # CUDA and forked OpenMP pools do not survive fork()
    with ProcessPoolExecutor(jobs, mp_context=ctx, initializer=_worker_init, initargs=(threads,)) as pool:
        queue, running = list(todo), {}  # type: ignore[var-annotated]
        error: BaseException | None = None
        while queue or running:
            while queue and len(running) < jobs and error is None:
                spec = queue.pop(0)
                running[pool.submit(_train_one, spec, configs[spec.name], train_fn, metric, base)] = spec
            if not running:
                break
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for future in finished:
                spec = running.pop(future)
                error = error or _collect(future, spec, record_done)
        if error is not None:
            raise error


def _collect(
    future: Future, spec: RunSpec, record_done: Callable[[RunSpec, dict[str, Any]], None]
) -> BaseException | None:
    try:
        record = future.result()
    except Exception as e:  # noqa: BLE001 - re-raised by the caller once the runs in flight are recorded
        log.error("run %s failed: %s", spec.name, e)
        return e
    if record is None:
        log.warning("sweep stopped during %s (not recorded); rerun the same command to continue", spec.name)
    else:
        record_done(spec, record)
    return None


def _eta(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def run_specs(
    specs: Iterable[RunSpec],
    out_dir: str | Path,
    *,
    base_files: Sequence[str | Path] = (),
    base_overrides: Sequence[str] = (),
    metric: str = "test_acc",
    keep_checkpoints: bool = False,
    train_fn: Callable[[Any], Any] = train,
    jobs: int = 1,
) -> list[dict[str, Any]]:
    """Train every spec not yet recorded in ``<out_dir>/runs.jsonl``; return the records of all specs, in order.

    Each run's config is ``base_files`` ← ``base_overrides`` ← ``spec.overrides``, writing into
    ``<out_dir>/runs/<name>`` (replaced if a previous attempt was cut short). Every config is built and validated
    before the first run starts. The error of a run is ``100 − final[metric]`` (``metric`` falls back to ``acc``
    when the run has no test evaluation); diverged runs get 100. Progress (runs done / left, ETA) is logged.

    Args:
        keep_checkpoints: keep each run's resume checkpoints (otherwise deleted once the run is recorded; the
            final weights, config and logs stay).
        train_fn: the training function (``deitlab.engine.train``; replaceable in tests; with ``jobs`` > 1 it must be
            a module-level function, as the runs execute in spawned processes).
        jobs: runs trained at once, each in its own process with ``torch.get_num_threads() // jobs`` CPU threads
            (a many-core machine or a GPU that one small run leaves idle); runs.jsonl is written by this process only,
            in the order runs finish.
    """
    if jobs < 1:
        raise ConfigError(f"jobs={jobs} must be >= 1")
    specs = list(specs)
    out_dir = Path(out_dir)
    results = out_dir / RESULTS_FILE
    done = {r["name"]: r for r in read_records(results)}
    _check_specs(specs, done, base_overrides)
    todo = [s for s in specs if s.name not in done]
    fixed = ["train.overwrite=true", "train.progress=false"]
    configs = {
        s.name: build_config(
            files=list(base_files),
            overrides=[*base_overrides, *s.overrides, f"train.output_dir={out_dir / 'runs' / s.name}", *fixed],
        )
        for s in todo
    }
    for cfg in configs.values():
        get_model_entry(cfg.model.name)  # an unknown model fails now, with close names, not after hours of runs
    log.info("sweep %s: %d runs, %d already done, %d to run", out_dir, len(specs), len(specs) - len(todo), len(todo))
    out_dir.mkdir(parents=True, exist_ok=True)
    book = _Book(results, done, configs, total=len(specs), todo=len(todo), jobs=jobs, keep=keep_checkpoints)
    if jobs == 1:
        for spec in todo:
            record = _train_one(spec, configs[spec.name], train_fn, metric, base_overrides)
            if record is None:
                log.warning("sweep stopped during %s (not recorded); rerun the same command to continue", spec.name)
                break
            book.record(spec, record)
    else:
        _run_parallel(todo, configs, jobs, train_fn, metric, base_overrides, book.record)
    return [done[s.name] for s in specs if s.name in done]


# ---- `deitlab sweep`: the stability study of Xiao et al. ---------------------------------------------------------
def _group(records: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for r in records:
        groups.setdefault(f"{field_of(r, 'model')} {field_of(r, 'optimizer')}", []).append(r)
    return groups


def sweep_outputs(
    lr_wd: Sequence[Mapping[str, Any]], out_dir: str | Path, *, epochs: Sequence[Mapping[str, Any]] = ()
) -> list[Path]:
    """``summary.json``, ``edf.png``, ``lr.png``, ``wd.png`` (and ``epochs.png``) from a study's records.

    One EDF curve per model × optimizer; ``epochs`` are the training-length runs (accuracy vs epoch budget,
    mean ± std over seeds).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    groups = _group(lr_wd)
    curves = {k: edf([r.get("error") for r in rs], [bool(r.get("diverged")) for r in rs]) for k, rs in groups.items()}
    budget = aggregate(epochs, ("model", "optimizer", "epochs"))
    summary = {"lr_wd": summarize_lr_wd(lr_wd), "edf": curves, "epochs": budget}
    files = [write_json(out / "summary.json", summary)]
    if groups:
        files += [
            plots.plot_edf(curves, out / "edf.png"),
            plots.plot_scatter(groups, "lr", out / "lr.png"),
            plots.plot_scatter(groups, "wd", out / "wd.png"),
        ]
    if budget:
        series: dict[str, list[Mapping[str, Any]]] = {}
        for row in budget:
            series.setdefault(f"{row['model']} {row['optimizer']}", []).append(row)
        files.append(plots.plot_metric_vs(series, "epochs", out / "epochs.png", xlabel="epoch budget", logx=True))
    return files


def _spaces(
    optimizers: Sequence[str], centres: Mapping[str, tuple[float, float]], batch_size: int, low: float, high: float
) -> dict[str, SearchSpace]:
    unknown = sorted(set(centres) - set(optimizers))
    if unknown:
        raise ConfigError(f"centre given for {', '.join(unknown)}, which is not among the optimizers {optimizers}")
    return {
        opt: space_around(*centres[opt], low=low, high=high) if opt in centres else paper_space(opt, batch_size)
        for opt in optimizers
    }


def sweep(
    output_dir: str | Path,
    *,
    models: Sequence[str],
    optimizers: Sequence[str] = ("adamw", "sgd"),
    n: int = 16,
    config_files: Sequence[str | Path] = (),
    overrides: Sequence[str] = (),
    centres: Mapping[str, tuple[float, float]] | None = None,
    low: float = 1 / 8,
    high: float = 4.0,
    seed: int = 0,
    epoch_budgets: Sequence[int] = (),
    budget_seeds: Sequence[int] = (0,),
    metric: str = "test_acc",
    train_fn: Callable[[Any], Any] = train,
) -> Report:
    """Random (lr, wd) search per model × optimizer, then (optionally) accuracy vs epoch budget; resumable.

    Args:
        models: registry names to compare (e.g. a ViT_P and its ViT_C twin).
        config_files, overrides: the base recipe every run starts from (YAML files, ``key=value``).
        centres: ``{optimizer: (lr, wd)}`` at the base config's batch size; the samples are log-uniform in
            ``[c·low, c·high]``. An optimizer without a centre uses Xiao et al.'s ranges, the lr scaled from batch
            2048 to ours (:func:`~deitlab.analysis.stability.paper_space`).
        epoch_budgets: training lengths for the training-length study, each run at the centre of the space
            (:meth:`~deitlab.analysis.stability.SearchSpace.middle`), ``budget_seeds`` seeds each.

    Writes ``<output_dir>/lr_wd/runs.jsonl``, ``<output_dir>/epochs/runs.jsonl`` and the outputs of
    :func:`sweep_outputs`; returns the table of :func:`~deitlab.analysis.stability.summarize_lr_wd`.
    """
    out = Path(output_dir)
    base = build_config(files=list(config_files), overrides=list(overrides))
    spaces = _spaces(optimizers, centres or {}, base.data.batch_size, low, high)
    common = dict(base_files=config_files, base_overrides=overrides, metric=metric, train_fn=train_fn)
    lr_wd = run_specs(lr_wd_specs(models, optimizers, n, spaces=spaces, seed=seed), out / "lr_wd", **common)
    budget_runs: list[dict[str, Any]] = []
    if epoch_budgets:
        opts = [(opt, [f"optim.name={opt}", f"optim.lr={s.middle()[0]:.6g}", f"optim.weight_decay={s.middle()[1]:.6g}",
                       "optim.scale_lr=false"]) for opt, s in spaces.items()]  # fmt: skip
        axes = {"model.name": models, "opt": opts, "train.epochs": epoch_budgets, "train.seed": budget_seeds}
        budget_runs = run_specs(grid_specs(axes, study="epochs"), out / "epochs", **common)
    files = sweep_outputs(lr_wd, out, epochs=budget_runs)
    rows = [[s["model"], s["optimizer"], s["n"], s["diverged"], s["best_error"], s["median_error"],
             s["edf_at"]["1.0"], s["edf_at"]["5.0"], s["best_lr"], s["best_wd"]]
            for s in summarize_lr_wd(lr_wd)]  # fmt: skip
    header = ["model", "optimizer", "runs", "diverged", "best err %", "median err %", "F(1)", "F(5)", "best lr", "wd"]
    return Report(format_table(header, rows), files, {"lr_wd": lr_wd, "epochs": budget_runs})
