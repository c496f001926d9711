"""``optimize_for``: measure, on this machine and this model shape, which settings run the step fastest.

Stages, each measured at the winners of the ones before: precision (fp32, bf16 where the CPU or GPU has it, fp16
on CUDA), the attention kernel (fused SDPA or the explicit product), the CPU thread count (the current one or half:
fewer threads win when other processes share the cores), then ``torch.compile`` when the run is long enough to pay
for it. The rules are in :mod:`deitlab.optimize.choose`; the timings, minimum over interleaved rounds, in
:mod:`deitlab.optimize.measure`; the plan is cached per machine (:mod:`deitlab.optimize.cache`).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from deitlab.errors import ConfigError
from deitlab.optimize import choose
from deitlab.optimize.cache import cache_key, open_cache, use_inductor_cache
from deitlab.optimize.measure import (
    Setting,
    StepTimer,
    compile_error,
    compile_in_mode,
    plain_attention,
    precision_candidates,
    untouched,
)
from deitlab.optimize.memory import retain_freed_memory

log = logging.getLogger(__name__)

MODES = ("train", "infer")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
ATTENTIONS = ("auto", "sdpa", "explicit", "keep")
THREADS = ("auto", "keep")
COMPILES = ("auto", "always", "never")


@dataclass
class Plan:
    """What :func:`plan_for` decided, and why."""

    mode: str
    precision: str
    attention: str | None = None  # sdpa | explicit; None: the model's kernels left as built
    threads: int | None = None  # CPU threads to set; None: left as they are
    compile: bool = False
    times: dict[str, dict[str, float]] = field(default_factory=dict)  # stage -> candidate -> seconds per step
    compile_seconds: float | None = None  # the first compiled step, when a compile was measured
    compile_error: str | None = None  # why torch.compile failed on this machine, when it did
    compile_toolchain: str | None = None  # the C++ compiler found then: the failure is not retried until it changes
    reasons: dict[str, str] = field(default_factory=dict)  # stage -> why
    source: str = "measured"  # measured | cache | short run | fixed | resumed
    busy: bool = False  # measured while other processes loaded the CPU: used, but not cached
    key: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    def summary(self) -> str:
        """One line per decision: the choice, then the measured times or the reason."""
        lines = [f"precision {self.precision}: {self.reasons.get('precision', '')}"]
        if self.attention is not None or "attention" in self.reasons:
            lines.append(f"attention {self.attention or 'as built'}: {self.reasons.get('attention', '')}")
        if "threads" in self.reasons:
            lines.append(f"threads {self.threads or torch.get_num_threads()}: {self.reasons['threads']}")
        lines.append(f"torch.compile {'on' if self.compile else 'off'}: {self.reasons.get('compile', '')}")
        return f"optimize_for({self.mode}, {self.source}) -> " + "; ".join(lines)


def _check(mode: str, precision: str, attention: str, threads: str, compile: str) -> None:
    for name, value, allowed in (("mode", mode, MODES), ("precision", precision, PRECISIONS),
                                 ("attention", attention, ATTENTIONS), ("threads", threads, THREADS),
                                 ("compile", compile, COMPILES)):  # fmt: skip
        if value not in allowed:
            raise ConfigError(f"optimize_for: {name}={value!r} is not one of {', '.join(allowed)}")


def plan_for(
    model: nn.Module,
    example_batch: torch.Tensor,
    mode: str = "train",
    *,
    precision: str = "auto",
    attention: str = "auto",
    threads: str = "auto",
    compile: str = "auto",
    expected_steps: int | None = None,
    cache: bool = True,
) -> Plan:
    """Measure (or read from the cache) the fastest settings of ``model``'s step on ``example_batch``.

    Args:
        model: on the example's device; left as it was (weights, buffers, mode, kernels, random streams), except
            that a torch.compile kept by the plan stays compiled.
        example_batch: a real-shaped input batch (its values do not matter).
        mode: ``train`` (forward + backward) or ``infer`` (forward under inference mode).
        precision, attention, compile: ``auto`` to measure, or a fixed value (``keep`` leaves the kernels alone).
        threads: ``auto`` to try half the current CPU threads too; ``keep`` leaves them as they are.
        expected_steps: the run's length in steps; decides whether measuring and compiling can pay off.
        cache: read and write the per-machine cache.

    On the CPU this also keeps freed memory in the process (:func:`deitlab.optimize.memory.retain_freed_memory`,
    process-wide; ``DEITLAB_MALLOC=system`` switches it off).
    """
    _check(mode, precision, attention, threads, compile)
    device = example_batch.device
    if device.type == "cpu":
        retain_freed_memory()  # before any timing: page faults cost the demo's step 1.15x otherwise
    if precision in ("bf16", "fp16") and precision not in precision_candidates(device) and device.type == "cuda":
        raise ConfigError(f"precision {precision!r} is not supported by {torch.cuda.get_device_name(device)}")
    if precision == "fp16" and device.type != "cuda":
        raise ConfigError("precision 'fp16' needs a CUDA device; on the CPU use bf16 or auto")
    if not plain_attention(model):
        attention = "keep"
    tune_threads = threads == "auto" and device.type == "cpu" and torch.get_num_threads() > 1
    requested = {"precision": precision, "attention": attention, "threads": "auto" if tune_threads else "keep"}
    key = cache_key(model, example_batch, mode, requested)
    store = open_cache(cache)
    cached = store.get(key) if store is not None else None
    if cached is not None:
        plan = Plan.from_dict(cached)
        plan.source = "cache"
    else:
        with untouched(model, device):
            plan = _measure(StepTimer(model, example_batch, mode), requested, expected_steps)
        plan.key = key
        if store is not None and plan.source == "measured" and not plan.busy:
            store.put(key, plan.to_dict())
    _decide_compile(model, example_batch, mode, plan, compile, expected_steps, store, key)
    return plan


def _fixed(value: str | None, what: str) -> str:
    return f"{value} as asked" if value else f"{what} as built"


def _measure(timer: StepTimer, requested: dict[str, Any], expected_steps: int | None) -> Plan:
    """Precision, then attention kernel, then threads, each at the winners so far."""
    base = Setting(precision="fp32" if requested["precision"] == "auto" else requested["precision"])
    plan = Plan(mode=timer.mode, precision=base.precision, busy=_busy())
    precisions = precision_candidates(timer.device) if requested["precision"] == "auto" else [base.precision]
    attentions = ["sdpa", "explicit"] if requested["attention"] == "auto" else []
    n = torch.get_num_threads()
    threads = [n, max(1, n // 2)] if requested["threads"] == "auto" else []
    timer.step(base)  # the first step allocates and builds kernels: never timed
    probe = timer.timed(base)
    if not choose.worth_measuring(probe, expected_steps, len(precisions) + len(attentions) + len(threads)):
        plan.source = "short run"
        plan.reasons["precision"] = (
            f"{_fixed(requested['precision'] if requested['precision'] != 'auto' else None, 'fp32')}: a run of "
            f"{expected_steps} steps of ~{1000 * probe:.0f} ms is too short to repay measuring"
        )
        return plan
    best_s = probe
    if len(precisions) > 1:
        times = timer.compare({p: base.but(precision=p) for p in precisions})
        plan.precision = choose.pick_preferred(times, choose.PRECISION_PREFERENCE, choose.PRECISION_MARGIN)
        plan.times["precision"], plan.reasons["precision"] = times, choose.fmt_times(times)
        best_s = times[plan.precision]
    else:
        plan.reasons["precision"] = _fixed(requested["precision"] if requested["precision"] != "auto" else None,
                                           "the only one here")  # fmt: skip
    best = base.but(precision=plan.precision)
    if attentions:
        times = timer.compare({a: best.but(attention=a) for a in attentions})
        plan.attention = choose.pick_preferred(times, choose.ATTENTION_PREFERENCE, choose.ATTENTION_MARGIN)
        plan.times["attention"], plan.reasons["attention"] = times, choose.fmt_times(times)
        best, best_s = best.but(attention=plan.attention), times[plan.attention]
    elif requested["attention"] in ("sdpa", "explicit"):
        plan.attention, plan.reasons["attention"] = requested["attention"], "as asked"
    if len(threads) > 1 and threads[0] != threads[1]:
        times = timer.compare({str(t): best.but(threads=t) for t in threads})
        choice = int(choose.pick_preferred(times, [str(n)], choose.THREADS_MARGIN))
        plan.threads = choice if choice != n else None
        plan.times["threads"], plan.reasons["threads"] = times, choose.fmt_times(times)
        best_s = times[str(choice)]
    plan.times["best"] = {"step": best_s}
    return plan


def _busy() -> bool:
    """Whether other processes were keeping the CPU busy: their load beyond ours exceeds half the cores."""
    try:
        load = os.getloadavg()[0]
    except OSError:
        return False
    cores = os.cpu_count() or 1
    return load - torch.get_num_threads() > cores / 2


def _decide_compile(
    model: nn.Module, example: torch.Tensor, mode: str, plan: Plan, compile: str, expected_steps: int | None,
    store: Any, key: dict[str, Any],
) -> None:  # fmt: skip
    """Try torch.compile when the run can pay for it (or when asked) and keep it when it repays what remains; a
    compile measured before (cached) is weighed without compiling again."""
    if compile == "never" or example.device.type not in ("cpu", "cuda"):
        plan.compile, plan.reasons["compile"] = False, "switched off" if compile == "never" else "not on this device"
        return
    if plan.compile_error and compile == "auto" and plan.compile_toolchain == _toolchain():  # cached failure
        plan.compile, plan.reasons["compile"] = False, f"torch.compile failed here before ({plan.compile_error})"
        return
    step_s = plan.times.get("best", {}).get("step")
    measured = plan.times.get("compile")
    if compile == "auto":
        if step_s is None:
            plan.compile, plan.reasons["compile"] = False, "no measured step to weigh a compile against"
            return
        prior = choose.compile_prior(example.device.type, mode, plan.compile_seconds)
        try_it, why = choose.should_try_compile(step_s, expected_steps, prior)
        if not try_it or measured:
            keep, why = (False, why) if not try_it else choose.keep_compiled(
                measured["eager"], measured["compiled"], plan.compile_seconds or prior, expected_steps)  # fmt: skip
            plan.compile, plan.reasons["compile"] = keep, why + (" (measured before)" if measured else "")
            return
    elif measured:  # always, and measured before
        plan.compile, plan.reasons["compile"] = True, "asked (measured before: " + choose.fmt_times(measured) + ")"
        return
    use_inductor_cache()
    setting = Setting(plan.precision, plan.attention, plan.threads)
    timer = StepTimer(model, example, mode)
    with untouched(model, example.device):
        try:
            compile_s = timer.compile(setting)
            times = timer.compare({"eager": setting, "compiled": setting.but(compiled=True)})
        except Exception as exc:  # noqa: BLE001 - the eager steps ran: this failure is torch.compile's
            timer.drop_compiled()
            _compile_failed(plan, compile, compile_error(exc))
        else:
            keep, why = choose.keep_compiled(times["eager"], times["compiled"], compile_s, expected_steps)
            if compile == "always":
                keep, why = True, f"asked; {why}"
            plan.compile, plan.compile_seconds, plan.reasons["compile"] = keep, compile_s, why
            plan.times["compile"], plan.compile_error = times, None
            if not keep:
                timer.drop_compiled()
    if store is not None and plan.source in ("measured", "cache") and not plan.busy:
        store.put(key, plan.to_dict())


def _compile_failed(plan: Plan, compile: str, error: str) -> None:
    """Record a failed compile (run eager), or stop with one line when it was asked for."""
    if compile == "always":
        raise ConfigError(
            f"compile 'always' was asked, but torch.compile fails on this machine ({error}); install a C++ compiler "
            "(e.g. g++) or use compile 'auto' (falls back to eager) or 'never'"
        )
    plan.compile, plan.compile_error, plan.compile_toolchain = False, error, _toolchain()
    plan.reasons["compile"] = f"torch.compile failed here ({error}): eager"


def _toolchain() -> str:
    """The C++ compiler torch.compile's CPU code generation would call ('' when none is on the PATH)."""
    import torch._inductor.config as inductor

    return next((path for name in inductor.cpp.cxx if name and (path := shutil.which(name))), "")


def apply_plan(model: nn.Module, plan: Plan) -> nn.Module:
    """Set the plan's attention kernels, thread count and compile on ``model`` (in place; returned for chaining)."""
    if plan.attention is not None:
        for m in plain_attention(model):
            m.attn_impl = plan.attention
    if plan.threads is not None:
        torch.set_num_threads(plan.threads)
    if plan.compile and getattr(model, "_compiled_call_impl", None) is None:
        use_inductor_cache()
        compile_in_mode(model, plan.mode)
    return model


def optimize_for(
    model: nn.Module, example_batch: torch.Tensor, mode: str = "train", **options: Any
) -> tuple[nn.Module, str]:
    """The fastest settings for ``model`` on this machine, applied: returns the model (its attention kernels set,
    possibly compiled in place) and the autocast precision to run it in (``fp32``, ``bf16`` or ``fp16``; with fp16,
    train with a loss scaler).

    Measures a few real steps at ``example_batch``'s shape (forward + backward for ``mode="train"``, forward for
    ``"infer"``) once per machine and model shape, then reads the decision from the cache. ``options`` are those of
    :func:`plan_for` (``precision``, ``attention``, ``threads``, ``compile``, ``expected_steps``, ``cache``).
    The decision and the times behind it are logged at INFO level.
    """
    plan = plan_for(model, example_batch, mode, **options)
    # a pass too short to measure changes nothing: not worth a line on every `deitlab predict img.png`
    log.log(logging.DEBUG if plan.source == "short run" else logging.INFO, "%s", plan.summary())
    return apply_plan(model, plan), plan.precision


def precision_for_pass(
    model: nn.Module,
    precision: str,
    *,
    input_size: tuple[int, int, int],
    device: torch.device,
    batch_size: int,
    images: int,
) -> str:
    """The precision (and attention kernel, compile) to run ``model`` over ``images`` images of ``input_size``
    ``(C, H, W)`` in batches of ``batch_size`` (``deitlab eval`` and ``predict``): measured when ``precision`` is
    ``auto`` and the pass is long enough to repay measuring."""
    example = torch.randn(max(1, min(batch_size, images)), *input_size, device=device)
    steps = -(-max(images, 1) // batch_size)
    return optimize_for(model, example, "infer", precision=precision, threads="keep", expected_steps=steps)[1]
