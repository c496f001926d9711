"""The C allocator's effect on a CPU training step: glibc's default (``DEITLAB_MALLOC=system``) against deitlab's
``retain_freed_memory`` (freed blocks stay in the process), each in its own process, the two interleaved.

The step is the demo student's distillation step (``vit_c_micro_distilled_32`` + the ResNet-9 teacher, batch 128,
forward + backward + AdamW) in the precision ``deitlab.optimize_for`` picks here. Each child reports its step time,
page faults and system time per step; the table gives medians over the rounds and the paired ratio.

    PYTHONPATH=src python benchmarks/allocator.py [--rounds 3] [--steps 40]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
import _common as C  # noqa: E402
import deitlab  # noqa: E402
from deitlab.distill import DistillationLoss, FrozenTeacher  # noqa: E402
from deitlab.engine.optim import build_optimizer  # noqa: E402

OUT = Path(__file__).parent / "results" / "allocator"
STUDENT, TEACHER, BATCH = "vit_c_micro_distilled_32", "resnet9_w16", 128
SIDES = {"system": {"DEITLAB_MALLOC": "system"}, "retain": {"DEITLAB_MALLOC": ""}}


def child(steps: int) -> dict[str, float]:
    """Time ``steps`` distillation steps (after 5 untimed) in this process, as the environment set it up."""
    torch.manual_seed(0)
    model = deitlab.create_model(STUDENT, num_classes=10, in_chans=1, img_size=32).train()
    x, y = torch.randn(BATCH, 1, 32, 32), torch.randint(0, 10, (BATCH,))
    model, precision = deitlab.optimize_for(model, x, "train", compile="never", cache=False)
    teacher_model = deitlab.create_model(TEACHER, num_classes=10, in_chans=1)
    teacher = FrozenTeacher(teacher_model, precision=precision, channels_last=True, input_size=32)
    criterion = DistillationLoss(F.cross_entropy, teacher, distillation_type="hard", alpha=0.5, tau=1.0)
    opt = build_optimizer(model, name="adamw", lr=1e-4, weight_decay=0.05)

    def step() -> None:
        with C.amp(x.device, precision):
            parts = criterion(x, model(x), y)
        opt.zero_grad(set_to_none=True)
        parts.total.backward()
        opt.step()

    for _ in range(5):
        step()
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(steps):
        step()
    seconds, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    return {"step_ms": 1000 * seconds / steps, "faults_per_step": (r1.ru_minflt - r0.ru_minflt) / steps,
            "sys_ms_per_step": 1000 * (r1.ru_stime - r0.ru_stime) / steps, "precision": precision}  # fmt: skip


def run_child(side: str, steps: int) -> dict[str, float]:
    env = {**os.environ, **SIDES[side]}
    out = subprocess.run([sys.executable, __file__, "--child", "--steps", str(steps)], env=env, check=True,
                         capture_output=True, text=True).stdout  # fmt: skip
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.steps)))
        return 0
    rows: dict[str, list[dict[str, float]]] = {s: [] for s in SIDES}
    for r in range(args.rounds):
        for side in list(SIDES) if r % 2 == 0 else list(SIDES)[::-1]:
            rows[side].append(run_child(side, args.steps))
            print(f"round {r + 1}/{args.rounds} {side}: {rows[side][-1]['step_ms']:.1f} ms/step", flush=True)
    med = {s: {k: statistics.median(v[k] for v in rows[s]) for k in ("step_ms", "faults_per_step",
                                                                      "sys_ms_per_step")} for s in SIDES}  # fmt: skip
    ratios = C.spread([a["step_ms"] / b["step_ms"] for a, b in zip(rows["system"], rows["retain"], strict=True)])
    meta = C.metadata(torch.device("cpu"), student=STUDENT, teacher=TEACHER, batch=BATCH,
                      precision=rows["retain"][0]["precision"], rounds=args.rounds, steps=args.steps)  # fmt: skip
    C.finish_metadata(meta)
    lines = [f"# Allocator: glibc default vs retain_freed_memory ({meta['cpu']}, {meta['threads']} threads)", "",
             f"Demo distillation step ({STUDENT} + {TEACHER}, batch {BATCH}, {meta['precision']}), "
             f"{args.steps} steps per process, {args.rounds} interleaved rounds, medians.", "",
             "| allocator | step ms | page faults / step | system ms / step |", "|---|---|---|---|"]  # fmt: skip
    for s in SIDES:
        m = med[s]
        lines.append(f"| {s} | {m['step_ms']:.1f} | {m['faults_per_step']:.0f} | {m['sys_ms_per_step']:.1f} |")
    spread = f"rounds {ratios['min']:.2f}-{ratios['max']:.2f}"
    lines += ["", f"system / retain step time: {ratios['median']:.2f}x ({spread})"]
    print("\n".join(lines))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.with_suffix(".md").write_text("\n".join(lines) + "\n")
    OUT.with_suffix(".json").write_text(json.dumps({"meta": meta, "rounds": rows, "median": med, "ratio": ratios},
                                                   indent=1) + "\n")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
