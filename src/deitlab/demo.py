"""``deitlab demo``: the main job on the built-in default — no arguments, no network.

1. Train the CNN teacher (ResNet-9 w16) on Fashion-MNIST (or scikit-learn's digits when Fashion-MNIST is absent).
2. Train a distilled micro ViT (ViT_C stem, class + distillation tokens) from it by hard distillation.
3. Optionally (``--baseline``) the same ViT without distillation at the same budget.
4. Report a table (teacher acc; student class/distillation/fused acc; agreement; img/s; wall time) and save
   PNG plots (loss/accuracy curves, confusion matrix), checkpoints and ``results.json`` under ``runs/demo-*``.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from deitlab.analysis.plots import plot_confusion, plot_curves
from deitlab.config import Config, build_config
from deitlab.config.recipes import load_recipe
from deitlab.data import load_dataset
from deitlab.data.datasets import FASHION_MNIST_DEFAULT_ROOT
from deitlab.engine import TrainResult, train
from deitlab.errors import ConfigError, DataError
from deitlab.io import atomic_write_bytes
from deitlab.models import create_model

log = logging.getLogger(__name__)

# Smoke-test sizes: seconds, not minutes; the pipeline is the same.
_QUICK = [
    "train.epochs=1", "data.limit_train=512", "data.limit_eval=256", "data.batch_size=64", "train.eval_every=1",
]  # fmt: skip
_QUICK_STUDENT = ["model.kwargs.depth=1", "model.kwargs.embed_dim=32", "model.kwargs.num_heads=2"]
# The 8x8 digits (1,797 images) are upsampled to the same 32 px models; more epochs, since an epoch is tiny.
_DIGITS = ["data.dataset=digits", "data.pad=0", "model.img_size=32", "aug.crop_scale=[0.85, 1.0]", "aug.hflip=0",
           "data.batch_size=64"]  # fmt: skip
_DIGITS_TEACHER = [*_DIGITS, "train.epochs=30", "optim.warmup_epochs=2"]
_DIGITS_STUDENT = [*_DIGITS, "train.epochs=60", "optim.warmup_epochs=3"]


@dataclass
class DemoResult:
    out_dir: Path
    dataset: str
    teacher: TrainResult
    student: TrainResult
    baseline: TrainResult | None
    wall_seconds: float
    params: dict[str, int]
    models: dict[str, str]


def _recipe(name: str) -> dict[str, Any]:
    return load_recipe(name.removesuffix(".yaml"))


def pick_dataset(requested: str | None, data_path: str | None) -> str:
    """Fashion-MNIST when it is readable, else scikit-learn's digits (saying why and how to get it)."""
    if requested:
        return requested
    try:
        load_dataset("fashion_mnist", split="test", root=data_path)
        return "fashion_mnist"
    except DataError as e:
        log.warning(
            "Fashion-MNIST not found (%s). Using scikit-learn's 8x8 digits instead; for the real demo run "
            "`apt-get install dataset-fashion-mnist` (files in %s) or pass --data-path DIR.",
            str(e).split(";")[0], FASHION_MNIST_DEFAULT_ROOT,
        )  # fmt: skip
        return "digits"


def demo_configs(out_dir: Path, *, dataset: str, data_path: str | None, quick: bool) -> tuple[Config, Config, Config]:
    """The teacher, student and baseline configs of the demo (YAML recipes + dataset/quick overrides)."""
    common = [f"data.dataset={dataset}"] + ([f"data.path={data_path}"] if data_path else []) + ["train.overwrite=true"]
    t_extra, s_extra = (_DIGITS_TEACHER, _DIGITS_STUDENT) if dataset == "digits" else ([], [])
    if dataset not in ("fashion_mnist", "digits", "mnist"):
        raise ConfigError(f"the demo runs on fashion_mnist, mnist or digits, not {dataset!r}")
    quick_t = _QUICK if quick else []
    quick_s = _QUICK + _QUICK_STUDENT if quick else []
    teacher = build_config(
        base=_recipe("demo_teacher.yaml"),
        overrides=t_extra + common + quick_t + [f"train.output_dir={out_dir / 'teacher'}"],
    )
    teacher_weights = out_dir / "teacher" / "model.safetensors"
    student = build_config(
        base=_recipe("demo_student.yaml"),
        overrides=s_extra + common + quick_s + [f"train.output_dir={out_dir / 'student'}",
                                                f"teacher.path={teacher_weights}"],
    )  # fmt: skip
    baseline = build_config(
        base=_recipe("demo_student.yaml"),
        overrides=s_extra + common + quick_s + [f"train.output_dir={out_dir / 'baseline'}", "distill.type=none",
                                                f"model.name={student.model.name.replace('_distilled', '')}"],
    )  # fmt: skip
    return teacher, student, baseline


def run_demo(
    *,
    quick: bool = False,
    output_dir: str | Path | None = None,
    dataset: str | None = None,
    data_path: str | None = None,
    baseline: bool = False,
    progress: bool = True,
) -> DemoResult:
    """Run the demo end to end and write its table, plots and results under ``output_dir``."""
    t0 = time.perf_counter()
    out_dir = Path(output_dir or f"runs/demo-{time.strftime('%Y%m%d-%H%M%S')}")
    out_dir.mkdir(parents=True, exist_ok=True)
    dataset = pick_dataset(dataset, data_path)
    t_cfg, s_cfg, b_cfg = demo_configs(out_dir, dataset=dataset, data_path=data_path, quick=quick)
    for c in (t_cfg, s_cfg, b_cfg):
        c.train.progress = progress
    log.info("[1/%d] teacher %s on %s", 3 if baseline else 2, t_cfg.model.name, dataset)
    teacher = train(t_cfg)
    log.info("[2/%d] distilled student %s (hard distillation)", 3 if baseline else 2, s_cfg.model.name)
    student = train(s_cfg)
    _publish_student(out_dir)
    base = None
    if baseline:
        log.info("[3/3] baseline %s without distillation, same budget", b_cfg.model.name)
        base = train(b_cfg)
    params = {}
    for role, cfg in (("teacher", t_cfg), ("student", s_cfg), ("baseline", b_cfg)):
        with torch.device("meta"):
            m = create_model(cfg.model.name, **{**cfg.model.kwargs, "num_classes": 10})
        params[role] = sum(p.numel() for p in m.parameters())
    result = DemoResult(
        out_dir, dataset, teacher, student, base, time.perf_counter() - t0, params,
        {"teacher": t_cfg.model.name, "student": s_cfg.model.name, "baseline": b_cfg.model.name},
    )  # fmt: skip
    _write_outputs(result)
    return result


def _publish_student(out_dir: Path) -> None:
    """The student's model folders, also at the demo's top level: ``deitlab predict runs/<demo>/model img.png``."""
    for name in ("model", "model_best"):
        if (out_dir / "student" / name).is_dir():
            shutil.copytree(out_dir / "student" / name, out_dir / name, dirs_exist_ok=True)


def _write_outputs(r: DemoResult) -> None:
    runs = {f"teacher {r.models['teacher']}": r.teacher.history, f"student {r.models['student']}": r.student.history}
    if r.baseline is not None:
        runs[f"baseline {r.models['baseline']}"] = r.baseline.history
    plot_curves(runs, r.out_dir / "curves.png", title=f"deitlab demo on {r.dataset}")
    if r.student.confusion is not None:
        plot_confusion(r.student.confusion, r.student.classes, r.out_dir / "confusion_student.png",
                       title=f"student (fused heads), {r.dataset} test")  # fmt: skip
    if r.teacher.confusion is not None:
        plot_confusion(r.teacher.confusion, r.teacher.classes, r.out_dir / "confusion_teacher.png",
                       title=f"teacher, {r.dataset} test")  # fmt: skip
    table = format_table(r)
    atomic_write_bytes(r.out_dir / "results.md", (table + "\n").encode())
    payload = {
        "dataset": r.dataset, "wall_seconds": r.wall_seconds, "models": r.models, "params": r.params,
        "teacher": r.teacher.final, "student": r.student.final,
        "baseline": r.baseline.final if r.baseline else None,
        "img_per_s": {"teacher": r.teacher.images_per_second, "student": r.student.images_per_second},
        "threads": torch.get_num_threads(), "precision": _precisions(r.out_dir),
    }  # fmt: skip
    atomic_write_bytes(r.out_dir / "results.json", json.dumps(payload, indent=1).encode())


def _precisions(out_dir: Path) -> dict[str, str]:
    """What deitlab.optimize_for chose for each run of the demo (``<run>/optimize.json``): role -> precision."""
    chosen = {}
    for run in ("teacher", "student", "baseline"):
        try:
            plans = json.loads((out_dir / run / "optimize.json").read_text())
        except (OSError, ValueError):
            continue
        chosen[run] = plans["student"]["precision"]  # the run's trained model ("student" of its own run)
        if "teacher" in plans:
            chosen[f"{run}'s teacher (inference)"] = plans["teacher"]["precision"]
    return chosen


def _pct(d: dict[str, float], key: str) -> str:
    return f"{d[key]:.2f}" if key in d else "—"


def format_table(r: DemoResult) -> str:
    """The demo's result table (Markdown), on the test split."""
    s, t = r.student.final, r.teacher.final
    rows = [
        "| model | role | params | test top-1 | class head | dist head | fused (logits) | fused (softmax) "
        "| agreement w/ teacher | train img/s | train time |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        f"| {r.models['teacher']} | teacher | {r.params['teacher'] / 1e6:.2f}M | {_pct(t, 'test_acc')} | | | | | "
        f"| {r.teacher.images_per_second:.0f} | {r.teacher.train_seconds:.0f} s |",
        f"| {r.models['student']} | distilled student | {r.params['student'] / 1e6:.2f}M | {_pct(s, 'test_acc')} "
        f"| {_pct(s, 'test_acc_cls')} | {_pct(s, 'test_acc_dist')} | {_pct(s, 'test_acc_fused')} "
        f"| {_pct(s, 'test_acc_fused_softmax')} | {_pct(s, 'test_agreement')} | {r.student.images_per_second:.0f} "
        f"| {r.student.train_seconds:.0f} s |",
    ]
    if r.baseline is not None:
        b = r.baseline.final
        rows.append(
            f"| {r.models['baseline']} | no distillation | {r.params['baseline'] / 1e6:.2f}M | {_pct(b, 'test_acc')} "
            f"| {_pct(b, 'test_acc_cls')} | | | | | {r.baseline.images_per_second:.0f} "
            f"| {r.baseline.train_seconds:.0f} s |"
        )
    rows.append("")
    chosen = ", ".join(f"{k} {v}" for k, v in _precisions(r.out_dir).items())
    rows.append(
        f"{r.dataset}, test split; {torch.get_num_threads()} CPU threads; precision (optimize_for; each run's "
        f"optimize.json says why): {chosen or '-'}; total wall time {r.wall_seconds / 60:.1f} min; "
        f"outputs in {r.out_dir}"
    )
    return "\n".join(rows)
