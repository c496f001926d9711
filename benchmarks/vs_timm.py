"""deitlab vs timm side by side: the same weights in both (outputs asserted equal first), interleaved rounds.

Rows per model: inference at batch 1 and at a throughput batch, the training step (forward + backward + AdamW),
and, for the 224 px DeiTs, the distillation step with a RegNetY teacher (deitlab's DistillationLoss + FrozenTeacher
against timm's own ``timm.task.TokenDistillationTask``). Each row at fp32 and bf16 (+ fp16 on CUDA) with equal
settings, and best vs best: deitlab at the precision ``deitlab.optimize_for`` picks, timm at its fastest one here.
Every figure is timm's median time / deitlab's (> 1: deitlab faster) with the min-max spread of the per-round
ratios, plus deitlab's achieved GFLOP/s as % of the matmul peak of the same precision measured in this run, and
the activation memory kept for backward (peak CUDA memory on a GPU). Then the augmentation pipeline against timm's
``create_transform`` + ``Mixup`` (``bench_augment.py``). Both sides run eager (torch.compile is excluded: its
minutes of compile time would dominate a benchmark of this length).

Models: DeiT-Ti and DeiT-S distilled at 224; the demo's student ``vit_c_micro_distilled_32`` against its exact timm
twin (timm's ``VisionTransformerDistilled`` with a ``HybridEmbed`` whose backbone is the same three
``ConvNormAct`` 3x3 stride-2 convs); ``deit_micro_distilled_patch4_28`` against timm's ViT of the same shape.

    PYTHONPATH=src /work/timmvenv/bin/python benchmarks/vs_timm.py                 # CPU: ~15 min on 2 cores
    PYTHONPATH=src /work/timmvenv/bin/python benchmarks/vs_timm.py --device cuda
    PYTHONPATH=src /work/timmvenv/bin/python benchmarks/vs_timm.py --quick         # one model, 3 rounds

Writes benchmarks/results/vs_timm{.json,.md,.png} (``--out`` changes the stem).
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
import _common as C  # noqa: E402
import deitlab  # noqa: E402
import deitlab.optimize  # noqa: E402
import vs_timm_report  # noqa: E402
from deitlab.distill import DistillationLoss  # noqa: E402
from deitlab.distill.teacher import FrozenTeacher  # noqa: E402
from deitlab.engine.loop import grad_norm  # noqa: E402
from deitlab.engine.optim import build_optimizer  # noqa: E402
from deitlab.engine.scaler import StepScaler  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "vs_timm"
LR, WD = 5e-4, 0.05


def _timm_demo_student(**kw: Any) -> torch.nn.Module:
    from timm.layers import ConvNormAct
    from timm.models.deit import VisionTransformerDistilled
    from timm.models.vision_transformer_hybrid import HybridEmbed

    stem = torch.nn.Sequential(*(ConvNormAct(a, b, 3, stride=2, padding=1) for a, b in ((1, 32), (32, 64), (64, 128))))
    embed = functools.partial(HybridEmbed, backbone=stem)
    return VisionTransformerDistilled(img_size=32, patch_size=1, in_chans=1, num_classes=10, embed_dim=128, depth=6,
                                      num_heads=4, mlp_ratio=3.0, embed_layer=embed)  # fmt: skip


def _timm_micro_28() -> torch.nn.Module:
    from timm.models.deit import VisionTransformerDistilled

    return VisionTransformerDistilled(img_size=28, patch_size=4, in_chans=1, num_classes=10, embed_dim=128, depth=6,
                                      num_heads=4, mlp_ratio=3.0)  # fmt: skip


def _timm_named(name: str) -> Callable[[], torch.nn.Module]:
    def build() -> torch.nn.Module:
        import timm

        return timm.create_model(name, pretrained=False)

    return build


@dataclass
class Case:
    label: str  # what the rows measure, with the model names
    ours: str  # deitlab registry name
    timm: Callable[[], torch.nn.Module]
    shape: tuple[int, int, int]
    batch: dict[str, int]  # cpu/cuda throughput batch (the training batch too)
    distill: bool = False
    rename: dict[str, str] = field(default_factory=dict)  # our key prefix -> timm's


CASES = {
    "tiny": Case("DeiT-Ti distilled 224 (deit_tiny_distilled_patch16_224, both)", "deit_tiny_distilled_patch16_224",
                 _timm_named("deit_tiny_distilled_patch16_224"), (3, 224, 224), {"cpu": 32, "cuda": 256}, True),
    "small": Case("DeiT-S distilled 224 (deit_small_distilled_patch16_224, both)", "deit_small_distilled_patch16_224",
                  _timm_named("deit_small_distilled_patch16_224"), (3, 224, 224), {"cpu": 32, "cuda": 256}, True),
    "demo": Case("demo student 32 px (vit_c_micro_distilled_32 vs timm ViT-distilled + HybridEmbed(ConvNormAct x3))",
                 "vit_c_micro_distilled_32", _timm_demo_student, (1, 32, 32), {"cpu": 128, "cuda": 1024},
                 rename={"patch_embed.stem.": "patch_embed.backbone."}),
    "micro28": Case("micro ViT 28 px (deit_micro_distilled_patch4_28 vs timm ViT-distilled, same shape)",
                    "deit_micro_distilled_patch4_28", _timm_micro_28, (1, 28, 28), {"cpu": 128, "cuda": 1024}),
}  # fmt: skip


def build_pair(case: Case, device: torch.device) -> tuple[torch.nn.Module, torch.nn.Module]:
    """Our model and timm's with our weights; their eval outputs must agree before anything is timed."""
    torch.manual_seed(0)
    ours = deitlab.create_model(case.ours).to(device)
    theirs = case.timm().to(device)
    state = {}
    for k, v in ours.state_dict().items():
        for a, b in case.rename.items():
            k = k.replace(a, b)
        state[k] = v
    theirs.load_state_dict(state, strict=True)
    x = torch.randn(2, *case.shape, device=device)
    with torch.no_grad():
        diff = (ours.eval()(x).fused() - theirs.eval()(x)).abs().max().item()
    if diff > 1e-4:
        raise SystemExit(f"{case.label}: outputs differ by {diff:.2e} with the same weights; not benchmarking")
    return ours, theirs


def teachers(device: torch.device, name: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    import timm

    ours = deitlab.create_model(name).to(device).eval()
    theirs = timm.create_model(name, pretrained=False).to(device).eval()
    theirs.load_state_dict(ours.state_dict())
    return ours, theirs


# ---- the steps --------------------------------------------------------------------------------------------------
_PLANS: dict[tuple, deitlab.optimize.Plan] = {}


def tuned(model: torch.nn.Module, x: torch.Tensor, mode: str, precision: str) -> str:
    """What deitlab runs: ``optimize_for``'s plan (kernel, and precision when ``auto``), measured once per model,
    shape, mode and requested precision in this benchmark (eager and at the benchmark's thread count)."""
    key = (id(model), tuple(x.shape), mode, precision)
    if key not in _PLANS:
        _PLANS[key] = deitlab.optimize.plan_for(model, x, mode, precision=precision, threads="keep", compile="never")
        print(f"    {_PLANS[key].summary()}", flush=True)
    deitlab.optimize.apply_plan(model, _PLANS[key])
    return _PLANS[key].precision


def ours_infer(model: torch.nn.Module, x: torch.Tensor, precision: str) -> tuple[Callable, str]:
    model.eval()
    precision = tuned(model, x, "infer", precision)

    def run() -> None:
        with torch.inference_mode(), C.amp(x.device, precision):
            model(x)

    return run, precision


def timm_infer(model: torch.nn.Module, x: torch.Tensor, precision: str) -> Callable:
    model.eval()

    def run() -> None:
        with torch.inference_mode(), C.amp(x.device, precision):
            model(x)

    return run


class _Clocked:
    """A teacher that appends the seconds of each of its calls to ``clock`` (CPU: calls are synchronous)."""

    def __init__(self, teacher: Callable, clock: list[float]) -> None:
        self.teacher, self.clock = teacher, clock

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        out = self.teacher(x)
        C.sync(x.device)
        self.clock.append(time.perf_counter() - t0)
        return out


def ours_train(model, x, y, precision, teacher=None, teacher_precision=None, clock=None) -> tuple[Callable, str]:  # noqa: ANN001, E501
    """deitlab's step: DistillationLoss (+ FrozenTeacher), AdamW over DeiT's groups, the loop's gradient-norm check;
    ``clock`` (a list) receives the seconds of each teacher call."""
    model.train()
    precision = tuned(model, x, "train", precision)
    frozen = None
    if teacher is not None:
        frozen = FrozenTeacher(teacher, precision=teacher_precision or precision, channels_last=True)
        if clock is not None:
            frozen = _Clocked(frozen, clock)
    kind = "hard" if frozen is not None else "none"
    criterion = DistillationLoss(F.cross_entropy, frozen, distillation_type=kind, alpha=0.5, tau=1.0)
    opt = build_optimizer(model, name="adamw", lr=LR, weight_decay=WD)
    scaler = StepScaler(x.device.type, enabled=precision == "fp16")

    def run() -> None:  # engine.loop.backward_and_step, one process
        with C.amp(x.device, precision):
            parts = criterion(x, model(x), y)
        opt.zero_grad(set_to_none=True)
        scaler.backward(parts.total, opt)
        if bool(scaler.guard_flag(parts.total, grad_norm(model))):
            scaler.skip()
            return
        scaler.step(opt)

    return run, precision


def timm_train(model, x, y, precision, teacher=None) -> Callable:  # noqa: ANN001
    """timm's step: timm's AdamW (create_optimizer_v2) and, with a teacher, timm.task.TokenDistillationTask."""
    from timm.optim import create_optimizer_v2

    model.train()
    model.set_distilled_training(True)
    opt = create_optimizer_v2(model, "adamw", lr=LR, weight_decay=WD)
    scaler = torch.amp.GradScaler(x.device.type, enabled=precision == "fp16")  # timm train.py's NativeScaler
    task = None
    if teacher is not None:
        from timm.task import TokenDistillationTask

        task = TokenDistillationTask(model, teacher, criterion=torch.nn.CrossEntropyLoss(), distill_type="hard",
                                     task_loss_weight=0.5, device=x.device, verbose=False)  # fmt: skip

    def run() -> None:
        with C.amp(x.device, precision):
            if task is not None:
                loss = task(x, y)["loss"]
            else:
                cls, dist = model(x)
                loss = (F.cross_entropy(cls, y) + F.cross_entropy(dist, y)) / 2
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()

    return run


# ---- rows -------------------------------------------------------------------------------------------------------
def measure_row(name: str, make: Callable[[str, str], tuple[Callable, Callable, str]], precisions: list[str],
                args: argparse.Namespace, device: torch.device) -> dict[str, Any]:  # fmt: skip
    """``make(precision, which)`` -> (deitlab fn, timm fn, deitlab's precision); ``which`` is "equal" or "best"."""
    row: dict[str, Any] = {"row": name, "precisions": {}}
    timm_median = {}
    for p in precisions:
        ours, theirs, _ = make(p, "equal")
        t = C.interleaved({"deitlab": ours, "timm": theirs}, device, rounds=args.rounds)
        row["precisions"][p] = {"deitlab_s": C.spread(t["deitlab"]), "timm_s": C.spread(t["timm"]),
                                "ratio": C.paired_ratio(t["timm"], t["deitlab"])}  # fmt: skip
        timm_median[p] = row["precisions"][p]["timm_s"]["median"]
        print(f"  {name:24s} {p}: timm/deitlab {row['precisions'][p]['ratio']['median']:.2f}x", flush=True)
    timm_best = min(timm_median, key=timm_median.get)
    ours, _, ours_best = make("auto", "best")
    _, theirs, _ = make(timm_best, "equal")
    t = C.interleaved({"deitlab": ours, "timm": theirs}, device, rounds=args.rounds)
    row["best"] = {"deitlab_precision": ours_best, "timm_precision": timm_best, "deitlab_s": C.spread(t["deitlab"]),
                   "timm_s": C.spread(t["timm"]), "ratio": C.paired_ratio(t["timm"], t["deitlab"])}  # fmt: skip
    print(f"  {name:24s} best ({ours_best} vs {timm_best}): {row['best']['ratio']['median']:.2f}x", flush=True)
    return row


def add_flops(row: dict[str, Any], flops: int, batch: int) -> None:
    row["gflop_per_step"] = flops / 1e9
    row["batch"] = batch


def finalize(rows: list[dict[str, Any]], peaks: dict[str, float]) -> None:
    """Achieved GFLOP/s, % of the matmul peak of the precision each side ran, and img/s, for every model row."""
    for row in rows:
        if "gflop_per_step" not in row:
            continue
        flops = row["gflop_per_step"] * 1e9
        for p, r in [*row["precisions"].items(), ("best", row["best"])]:
            for side in ("deitlab", "timm"):
                prec = r.get(f"{side}_precision", p)
                achieved = flops / r[f"{side}_s"]["median"]
                r[f"{side}_gflops"] = achieved / 1e9
                r[f"{side}_pct_peak"] = 100 * achieved / peaks[prec]
                r[f"{side}_img_s"] = row["batch"] / r[f"{side}_s"]["median"]


def bench_case(key: str, args: argparse.Namespace, device: torch.device) -> list[dict]:
    case = CASES[key]
    ours, theirs = build_pair(case, device)
    precisions = C.precisions_for(device)
    batch = case.batch[device.type]
    print(f"{case.label}", flush=True)
    rows = []
    for bs in (1, batch):
        x = torch.randn(bs, *case.shape, device=device)

        def make_infer(p: str, which: str, x: torch.Tensor = x) -> tuple[Callable, Callable, str]:
            fn, prec = ours_infer(ours, x, p)
            return fn, timm_infer(theirs, x, p if p != "auto" else "fp32"), prec

        row = measure_row(f"inference b{bs}", make_infer, precisions, args, device)
        with torch.inference_mode():
            add_flops(row, C.count_flops(lambda x=x: ours.eval()(x)), bs)
        rows.append(row)
        if args.compile and bs > 1:
            rows.append(bench_compiled_infer(ours, theirs, x, args, device, row["gflop_per_step"]))
    x = torch.randn(batch, *case.shape, device=device)
    y = torch.randint(0, ours.num_classes, (batch,), device=device)

    def make_train(p: str, which: str) -> tuple[Callable, Callable, str]:
        fn, prec = ours_train(ours, x, y, p)
        return fn, timm_train(theirs, x, y, p if p != "auto" else "fp32"), prec

    row = measure_row("train step", make_train, precisions, args, device)
    add_flops(row, C.count_flops(lambda: _fwd_bwd(ours.train(), x)), batch)
    row["saved_for_backward_mb"] = {
        side: C.saved_for_backward_bytes(lambda m=m: _fwd_bwd(m.train(), x)) / 2**20
        for side, m in (("deitlab", ours), ("timm", theirs))
    }
    row["peak_cuda_mb"] = _cuda_peaks(make_train, device)
    rows.append(row)
    if case.distill and not args.no_distill:
        rows.append(bench_distill(ours, theirs, x, y, args, device))
    if args.compile:
        rows.append(bench_compiled(ours, theirs, x, y, args, device, row["gflop_per_step"]))
    for r in rows:
        r["model"] = case.label
    return rows


def _fwd_bwd(model: torch.nn.Module, x: torch.Tensor) -> None:
    out = model(x)
    sum(o.float().mean() for o in (out if isinstance(out, tuple) else (out,))).backward()
    model.zero_grad(set_to_none=True)


def _cuda_peaks(make: Callable, device: torch.device) -> dict[str, float] | None:
    if device.type != "cuda":
        return None
    ours, theirs, _ = make("auto", "best")
    return {"deitlab": C.peak_cuda_bytes(ours, device) / 2**20, "timm": C.peak_cuda_bytes(theirs, device) / 2**20}


def bench_distill(ours, theirs, x, y, args, device) -> dict[str, Any]:  # noqa: ANN001
    """The distillation step, and the teacher's overhead in it against the teacher's own forward."""
    t_ours, t_theirs = teachers(device, args.teacher)
    plain_ours, _ = ours_train(ours, x, y, "auto")

    def make(p: str, which: str) -> tuple[Callable, Callable, str]:
        t_prec = None
        if which == "best":  # the teacher at its own best precision, channels-last, in inference mode
            t_prec = tuned(t_ours, x.contiguous(memory_format=torch.channels_last), "infer", "auto")
        fn, prec = ours_train(ours, x, y, p, teacher=t_ours, teacher_precision=t_prec)
        return fn, timm_train(theirs, x, y, p if p != "auto" else "fp32", teacher=t_theirs), prec

    row = measure_row(f"distill step ({args.teacher})", make, C.precisions_for(device), args, device)
    # The teacher's time inside the step, clocked around its call, against its own forward on the same input
    # (the student's NCHW batch: the channels-last conversion is part of the teacher's cost) and on a batch
    # already channels-last; also the step difference (distill - plain), noisier on shared cores.
    t_prec = tuned(t_ours, x.contiguous(memory_format=torch.channels_last), "infer", "auto")
    clock: list[float] = []
    distill_fn, _ = ours_train(ours, x, y, "auto", teacher=t_ours, teacher_precision=t_prec, clock=clock)
    alone = FrozenTeacher(t_ours, precision=t_prec, channels_last=True)
    x_cl = x.contiguous(memory_format=torch.channels_last)

    def teacher_nchw() -> None:
        with torch.inference_mode():
            alone(x)

    def teacher_cl() -> None:
        with torch.inference_mode():
            alone(x_cl)

    fns = {"distill": distill_fn, "plain": plain_ours, "teacher": teacher_nchw, "teacher_cl": teacher_cl}
    t = C.interleaved(fns, device, rounds=args.rounds)
    inside = clock[-args.rounds :]  # the timed rounds (the warm-up calls come first)
    overhead = [d - p for d, p in zip(t["distill"], t["plain"], strict=True)]
    row["teacher_overhead"] = {"inside_step_s": C.spread(inside), "teacher_forward_s": C.spread(t["teacher"]),
                               "teacher_forward_channels_last_s": C.spread(t["teacher_cl"]),
                               "ratio": C.paired_ratio(inside, t["teacher"]),
                               "ratio_vs_channels_last_input": C.paired_ratio(inside, t["teacher_cl"]),
                               "step_difference_s": C.spread(overhead),
                               "step_difference_ratio": C.paired_ratio(overhead, t["teacher"])}  # fmt: skip
    flops = C.count_flops(lambda: _fwd_bwd(ours.train(), x))
    with torch.inference_mode():
        flops += C.count_flops(lambda: t_ours(x))
    add_flops(row, flops, x.shape[0])
    return row


def bench_compiled(ours, theirs, x, y, args, device, gflop: float) -> dict[str, Any]:  # noqa: ANN001
    """What deitlab runs for a long training: ``optimize_for`` with torch.compile (on a copy of the model), against
    timm's default eager step, each at its best precision; the compile time is reported beside the ratio."""
    model = copy.deepcopy(ours).train()
    plan = deitlab.optimize.plan_for(model, x, "train", threads="keep", compile="always")
    deitlab.optimize.apply_plan(model, plan)
    print(f"    {plan.summary()}", flush=True)
    fn, _ = ours_train(model, x, y, plan.precision)
    timm_prec = min(("fp32", "bf16"), key=lambda p: statistics.median(
        C.interleaved({p: timm_train(theirs, x, y, p)}, device, rounds=2, warmup=1)[p]))  # fmt: skip
    t = C.interleaved({"deitlab": fn, "timm": timm_train(theirs, x, y, timm_prec)}, device, rounds=args.rounds)
    best = {"deitlab_precision": plan.precision, "timm_precision": timm_prec, "deitlab_s": C.spread(t["deitlab"]),
            "timm_s": C.spread(t["timm"]), "ratio": C.paired_ratio(t["timm"], t["deitlab"])}  # fmt: skip
    print(f"  train step, deitlab compiled: {best['ratio']['median']:.2f}x (compile {plan.compile_seconds:.0f} s)")
    return {"row": "train step, deitlab compiled vs timm eager", "precisions": {}, "best": best,
            "compile_seconds": plan.compile_seconds, "gflop_per_step": gflop, "batch": x.shape[0]}  # fmt: skip


def bench_compiled_infer(ours, theirs, x, args, device, gflop: float) -> dict[str, Any]:  # noqa: ANN001
    """What deitlab runs for a long inference pass (``deitlab eval`` of a test set, ``predict`` of a folder):
    ``optimize_for(mode="infer")`` with torch.compile, against timm eager and timm compiled, each at its best
    precision; the compile times are reported beside the ratios."""
    model = copy.deepcopy(ours).eval()
    plan = deitlab.optimize.plan_for(model, x, "infer", threads="keep", compile="always", cache=False)
    deitlab.optimize.apply_plan(model, plan)
    print(f"    {plan.summary()}", flush=True)
    fn, _ = ours_infer(model, x, plan.precision)
    timm_prec = min(("fp32", "bf16"), key=lambda p: statistics.median(
        C.interleaved({p: timm_infer(theirs, x, p)}, device, rounds=2, warmup=1)[p]))  # fmt: skip
    timm_compiled = torch.compile(copy.deepcopy(theirs).eval())
    t0 = time.perf_counter()
    timm_compiled_fn = timm_infer(timm_compiled, x, timm_prec)
    timm_compiled_fn()
    timm_compile_s = time.perf_counter() - t0
    fns = {"deitlab": fn, "timm": timm_infer(theirs, x, timm_prec), "timm_compiled": timm_compiled_fn}
    t = C.interleaved(fns, device, rounds=args.rounds)
    best = {"deitlab_precision": plan.precision, "timm_precision": timm_prec, "deitlab_s": C.spread(t["deitlab"]),
            "timm_s": C.spread(t["timm"]), "ratio": C.paired_ratio(t["timm"], t["deitlab"]),
            "timm_compiled_s": C.spread(t["timm_compiled"]),
            "ratio_vs_timm_compiled": C.paired_ratio(t["timm_compiled"], t["deitlab"])}  # fmt: skip
    print(f"  inference b{x.shape[0]}, deitlab compiled: {best['ratio']['median']:.2f}x vs timm eager, "
          f"{best['ratio_vs_timm_compiled']['median']:.2f}x vs timm compiled (compile {plan.compile_seconds:.0f} s / "
          f"{timm_compile_s:.0f} s)", flush=True)  # fmt: skip
    return {"row": f"inference b{x.shape[0]}, deitlab compiled vs timm eager", "precisions": {}, "best": best,
            "compile_seconds": plan.compile_seconds, "timm_compile_seconds": timm_compile_s,
            "gflop_per_step": gflop, "batch": x.shape[0]}  # fmt: skip


def bench_augmentation(args: argparse.Namespace) -> list[dict[str, Any]]:
    """deitlab's batched pipeline vs timm's per-image create_transform + Mixup (bench_augment.py), CPU, rounds."""
    import bench_augment

    deitlab.optimize.retain_freed_memory()  # the process setting deitlab's training applies (plan_for on the CPU)
    rows = []
    for size, src, chans in ((224, 256, 3), (28, 28, 1)):
        per_round: dict[str, list[float]] = {}
        for _ in range(max(1, args.rounds // 2)):
            rows_ = bench_augment.bench_size(size, src, chans, args.aug_batch, args.aug_min_time, True, 2, args.device)
            for r in rows_:
                per_round.setdefault(r["pipeline"], []).append(r["img_per_s"])
        where = "" if args.device == "cpu" else f" on {args.device}"
        ours = per_round[f"deitlab batched{where} (2 thr)"]
        for base in ("timm per-image (1 process)", "timm per-image (2 workers)"):
            rows.append({"model": f"augmentation {size} px x{chans} (RRC, flip, RandAugment m9, erasing, Mixup/CutMix)",
                         "row": f"deitlab batched{where} vs {base} (CPU)", "deitlab_img_s": C.spread(ours),
                         "timm_img_s": C.spread(per_round[base]),
                         "ratio": C.paired_ratio(ours, per_round[base])})  # fmt: skip
            print(f"  augmentation {size}px vs {base}: {rows[-1]['ratio']['median']:.2f}x", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--models", default="tiny,small,demo,micro28", help=f"comma list of {', '.join(CASES)}")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    ap.add_argument("--teacher", default="regnety_004", help="RegNetY teacher of the distillation rows")
    ap.add_argument("--no-distill", action="store_true")
    ap.add_argument("--no-augment", action="store_true")
    ap.add_argument("--compile", action="store_true", help="add deitlab compiled (as for a long run or pass) vs timm")
    ap.add_argument("--aug-batch", type=int, default=256)
    ap.add_argument("--aug-min-time", type=float, default=1.0)
    ap.add_argument("--quick", action="store_true", help="demo student only, 3 rounds, no augmentation")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    if args.quick:
        args.models, args.rounds, args.no_augment = "demo", 3, True
    if args.threads:
        torch.set_num_threads(args.threads)
    import timm

    device = torch.device(args.device)
    meta = C.metadata(device, timm=timm.__version__, rounds=args.rounds, teacher=args.teacher)
    peaks = {p: C.matmul_peak(p, device) for p in C.precisions_for(device)}
    rows = []
    for key in filter(None, (k.strip() for k in args.models.split(","))):  # --models "": augmentation only
        rows += bench_case(key, args, device)
    if not args.no_augment:
        rows += bench_augmentation(args)
    end_peaks = {p: C.matmul_peak(p, device) for p in peaks}
    peaks = {p: max(peaks[p], end_peaks[p]) for p in peaks}  # the better of the two: the lower % of peak
    meta["matmul_peak_gflops"] = {p: v / 1e9 for p, v in peaks.items()}
    finalize(rows, peaks)
    C.finish_metadata(meta)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta, "rows": rows}
    args.out.with_suffix(".json").write_text(json.dumps(payload, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(vs_timm_report.markdown(payload))
    vs_timm_report.plot(payload, args.out.with_suffix(".png"))
    print(vs_timm_report.markdown(payload))


if __name__ == "__main__":
    main()
