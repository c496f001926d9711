"""The decision rules of :func:`deitlab.optimize_for`, as pure functions of measured times (tested without a clock).

Every rule prefers the safe, accurate setting and moves away from it only when a measurement says the move pays:
a lower precision must be faster than every more precise candidate's time by a margin, fewer threads must win by a
larger one (other processes make thread timings noisy), and ``torch.compile`` must pay back its compile time over
the expected run.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

# Most precise first: fp16 last, since training in it needs a loss scaler and it overflows where bf16 does not.
PRECISION_PREFERENCE = ("fp32", "bf16", "fp16")
# Fused kernel first: on a tie it keeps no (B, heads, N, N) map for the backward pass.
ATTENTION_PREFERENCE = ("sdpa", "explicit")

PRECISION_MARGIN = 0.05  # a less precise candidate must be 5% faster than the fastest more precise one
ATTENTION_MARGIN = 0.03
THREADS_MARGIN = 0.10  # fewer threads must win by 10%: thread timings suffer most from other processes
COMPILE_MARGIN = 0.05

# torch.compile: tried only when the expected run is long enough that a compile of COMPILE_PRIOR_S seconds (the
# planned mode's graph and the other batch sizes it may later meet; measured on this machine once known) would be repaid
# twice over by an optimistic speed-up; kept only when its measured speed-up repays what remains to pay.
OPTIMISTIC_COMPILE_SPEEDUP = 1.3
# An inference graph has no backward to trace and compiles several times faster (2 Zen 4 cores, cold cache: the demo
# student's training graph 50 s, the ResNet-9 teacher's inference graph 6 s).
COMPILE_PRIOR_S = {("cpu", "train"): 90.0, ("cpu", "infer"): 15.0, ("cuda", "train"): 60.0, ("cuda", "infer"): 30.0}
COMPILE_PAYBACK = 2.0
# Later graphs (another batch size, another grad mode) cost about this fraction of the first compile.
LATER_GRAPHS_FRACTION = 0.5

# Measuring costs about this many steps per candidate (one warm-up, then interleaved rounds).
MEASURE_STEPS_PER_CANDIDATE = 4
# The most the fastest candidate can plausibly save over fp32 eager (bf16 on a CPU with bf16 FMA units: ~4x).
PLAUSIBLE_SAVING = 0.5


def pick_preferred(times: Mapping[str, float], preference: Sequence[str], margin: float) -> str:
    """The most preferred candidate whose time is within ``margin`` of the fastest.

    >>> pick_preferred({"fp32": 1.0, "bf16": 0.52, "fp16": 0.50}, ("fp32", "bf16", "fp16"), 0.05)
    'bf16'
    """
    if not times:
        raise ValueError("no candidate was measured")
    fastest = min(times.values())
    ranked = [c for c in preference if c in times] + [c for c in times if c not in preference]
    return next(c for c in ranked if times[c] <= fastest * (1 + margin))


def worth_measuring(step_s: float, expected_steps: int | None, candidates: int) -> bool:
    """Whether measuring ``candidates`` settings (each costing about MEASURE_STEPS_PER_CANDIDATE steps) can pay for
    itself over ``expected_steps`` steps of ``step_s`` seconds, at the most plausible saving. Unknown length: yes."""
    if expected_steps is None:
        return True
    cost = candidates * MEASURE_STEPS_PER_CANDIDATE * step_s
    return expected_steps * step_s * PLAUSIBLE_SAVING > cost


def compile_prior(device_type: str, mode: str, measured_s: float | None) -> float:
    """The compile time to expect: the last one measured for this model on this machine, else a default."""
    if measured_s is not None:
        return measured_s * (1 + LATER_GRAPHS_FRACTION)
    return COMPILE_PRIOR_S.get((device_type, mode), COMPILE_PRIOR_S[("cuda", mode)])


def should_try_compile(step_s: float, expected_steps: int | None, prior_s: float) -> tuple[bool, str]:
    """Try ``torch.compile`` only if an optimistic speed-up would repay ``prior_s`` seconds of compiling twice."""
    if expected_steps is None:
        return False, "run length unknown (pass expected_steps to consider torch.compile)"
    eager_s = expected_steps * step_s
    gain = eager_s * (1 - 1 / OPTIMISTIC_COMPILE_SPEEDUP)
    if gain > COMPILE_PAYBACK * prior_s:
        return True, f"run ~{eager_s:.0f} s eager: even a {prior_s:.0f} s compile can pay off"
    return False, (
        f"run ~{eager_s:.0f} s eager: a {OPTIMISTIC_COMPILE_SPEEDUP}x speed-up would save at most {gain:.0f} s, "
        f"under {COMPILE_PAYBACK:.0f}x the ~{prior_s:.0f} s compile"
    )


def keep_compiled(eager_s: float, compiled_s: float, compile_s: float, expected_steps: int | None) -> tuple[bool, str]:
    """Keep a compiled model when it is faster by COMPILE_MARGIN and its saving over the run repays the graphs still
    to compile (evaluation mode, other batch sizes); the first compile is already paid."""
    speedup = eager_s / compiled_s if compiled_s > 0 else math.inf
    head = f"compiled in {compile_s:.1f} s, {speedup:.2f}x eager"
    if compiled_s > eager_s * (1 - COMPILE_MARGIN):
        return False, f"{head}: not faster"
    if expected_steps is not None:
        saving = expected_steps * (eager_s - compiled_s)
        if saving < LATER_GRAPHS_FRACTION * compile_s:
            return False, f"{head}: saves ~{saving:.0f} s, under the graphs still to compile"
    return True, head


def fmt_times(times: Mapping[str, float]) -> str:
    """``fp32 61.2 ms, bf16 30.4 ms`` (per step)."""
    return ", ".join(f"{k} {1000 * v:.1f} ms" for k, v in times.items())
