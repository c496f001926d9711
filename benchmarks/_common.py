"""Shared measurement helpers of the benchmarks: interleaved timing with medians and spread, the matmul peak of a
precision, FLOP counts, the memory a training step keeps for backward, and the machine metadata.

Every speed figure is a ratio of two things measured side by side in one process (absolute seconds depend on what
else the machine is doing); spreads come from the per-round values.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from deitlab.optimize.cache import machine_name
from deitlab.optimize.measure import autocast

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns: dict[str, Callable[[], Any]], device: torch.device, *, rounds: int, warmup: int = 2) -> dict:
    """Time each function once per round, alternating the order every round, after ``warmup`` calls each.

    Returns ``{name: [seconds per round]}``: a burst of load from another process hits every side alike.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            sync(device)
            t0 = time.perf_counter()
            fns[name]()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return times


def spread(values: list[float]) -> dict[str, float]:
    """Median, min and max (the benchmarks report the median and its min-max spread)."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def paired_ratio(slow: list[float], fast: list[float]) -> dict[str, float]:
    """``slow / fast`` per round (the two sides of one round ran back to back) as median and spread."""
    return spread([a / b for a, b in zip(slow, fast, strict=True)])


def matmul_peak(precision: str, device: torch.device, *, n: int | None = None, reps: int = 5) -> float:
    """FLOP/s of a large square matmul in ``precision`` (autocast-free, native dtype): the best of ``reps``."""
    n = n or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(n, n, device=device, dtype=DTYPES[precision])
    b = torch.randn(n, n, device=device, dtype=DTYPES[precision])
    best = float("inf")
    for i in range(reps + 1):
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        if i:
            best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of ``fn`` (matmuls, convolutions, attention) by ``torch.utils.flop_counter``."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def saved_for_backward_bytes(fn: Callable[[], Any]) -> int:
    """Bytes of distinct tensors autograd keeps for the backward pass during ``fn`` (the activation memory of a
    training step, comparable on any device)."""
    seen: dict[tuple[int, int], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        with contextlib.suppress(RuntimeError):  # tensors without storage (e.g. functional wrappers)
            key = (t.untyped_storage().data_ptr(), t.device.index or 0)
            seen[key] = max(seen.get(key, 0), t.untyped_storage().nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def peak_cuda_bytes(fn: Callable[[], Any], device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return int(torch.cuda.max_memory_allocated(device))


def amp(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    return autocast(device, precision)


def precisions_for(device: torch.device) -> list[str]:
    return ["fp32", "bf16", "fp16"] if device.type == "cuda" else ["fp32", "bf16"]


def metadata(device: torch.device, **extra: Any) -> dict[str, Any]:
    """What the results depend on: the processor/GPU model, versions, threads and the load around the run."""
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:
        load = None
    return {
        "device": device.type,
        "machine": machine_name(device),
        "cpu": machine_name(torch.device("cpu")),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "loadavg_before": load,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        **extra,
    }


def finish_metadata(meta: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):
        meta["loadavg_after"] = [round(v, 2) for v in os.getloadavg()]
