"""A training run's machine-dependent settings: ``train.precision: auto`` and friends, resolved by
:func:`deitlab.optimize.plan_for` for the student (training step) and the teacher (inference), logged, and saved
as ``optimize.json`` in the run directory, so that a resumed run replays them instead of measuring again."""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import torch
import torch.distributed as torch_dist
from torch import nn

from deitlab.config import Config
from deitlab.distill.teacher import FrozenTeacher, fit_resolution
from deitlab.engine.distributed import DistInfo
from deitlab.io import atomic_write_bytes
from deitlab.optimize import Plan, apply_plan, plan_for

log = logging.getLogger(__name__)

PLANS_FILE = "optimize.json"


def _example(cfg: Config, in_chans: int, img_size: int, device: torch.device, world_size: int) -> torch.Tensor:
    """A batch shaped like the training step's input (per process, after augmentation); its values do not matter."""
    x = torch.randn(cfg.data.batch_size // world_size, in_chans, img_size, img_size, device=device)
    return x.contiguous(memory_format=torch.channels_last) if cfg.model.channels_last else x


def _agree(plan: Plan | None, dist: DistInfo) -> Plan:
    """Rank 0's plan on every process (all must run the same precision and kernels)."""
    if not (dist.enabled and torch_dist.is_initialized()):
        assert plan is not None
        return plan
    box = [plan.to_dict() if plan is not None else None]
    torch_dist.broadcast_object_list(box, src=0)
    return Plan.from_dict(box[0])


def _saved(run_dir: Path) -> dict[str, Plan]:
    path = run_dir / PLANS_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    plans = {role: Plan.from_dict(p) for role, p in data.items() if isinstance(p, dict)}
    for p in plans.values():
        p.source = "resumed"
    return plans


def tune_run(
    cfg: Config, model: nn.Module, teacher: FrozenTeacher | None, *, in_chans: int, img_size: int,
    device: torch.device, dist: DistInfo, steps: int, run_dir: Path,
) -> tuple[Config, dict[str, Plan]]:  # fmt: skip
    """Choose and apply the student's and the teacher's settings; returns the config with ``train.precision``
    resolved (what config.yaml and the checkpoints record) and the plans (for ``optimize.json``)."""
    saved = _saved(run_dir) if cfg.train.resume else {}
    example = _example(cfg, in_chans, img_size, device, dist.world_size)
    fixed = cfg.train.precision if cfg.train.precision != "auto" else None
    common = dict(compile=cfg.train.compile, expected_steps=steps)
    plans: dict[str, Plan] = {}
    student = saved.get("student")
    if student is None and dist.is_main:
        student = plan_for(
            model, example, "train", precision=cfg.train.precision,
            attention="keep" if "attn_impl" in cfg.model.kwargs else "auto",
            threads="keep" if cfg.train.threads else "auto", **common,
        )  # fmt: skip
    plans["student"] = _agree(student, dist)
    apply_plan(model, plans["student"])
    if teacher is not None:
        tplan = saved.get("teacher")
        if tplan is None and dist.is_main:
            t_example = fit_resolution(example, teacher.input_size)  # what the teacher's model itself sees
            if teacher.channels_last:
                t_example = t_example.contiguous(memory_format=torch.channels_last)
            tplan = plan_for(teacher.model, t_example, "infer", precision=fixed or "auto", threads="keep", **common)
        plans["teacher"] = _agree(tplan, dist)
        apply_plan(teacher.model, plans["teacher"])
        teacher.precision = plans["teacher"].precision
    for role, plan in plans.items():
        log.info("%s: %s", role, plan.summary())
    cfg = copy.deepcopy(cfg)
    cfg.train.precision = plans["student"].precision
    return cfg, plans


def save_plans(run_dir: Path, plans: dict[str, Plan], *, is_main: bool) -> None:
    """``optimize.json``: each plan with the measured times behind it (rank 0)."""
    if is_main:
        payload: dict[str, Any] = {role: p.to_dict() for role, p in plans.items()}
        atomic_write_bytes(run_dir / PLANS_FILE, json.dumps(payload, indent=1).encode())
