"""The C allocator's settings for CPU steps.

glibc's malloc serves every block above its mmap threshold (128 KiB, rising to at most 32 MiB) with a fresh
``mmap`` and unmaps it on free, so a training step whose activations come and go maps and zeroes tens of MB of new
pages each time: ~10,000 page faults and ~23 ms of system time per step of the demo's distillation step, which runs
1.15x faster without them (AMD EPYC Zen 4, ``benchmarks/allocator.py``). :func:`retain_freed_memory` raises the
thresholds so freed blocks stay in the process and are reused; the price is that the process keeps its peak memory
until it exits.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform

log = logging.getLogger(__name__)

# mallopt parameters (glibc malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# Blocks up to this size come from the heap and are kept after free. Larger ones (rare: a whole dataset) are still
# mapped and returned to the system.
RETAIN_BYTES = 1 << 30
ENV = "DEITLAB_MALLOC"  # "system": leave the allocator as it is
_applied: bool | None = None


def retain_freed_memory() -> bool:
    """Keep freed blocks below 1 GiB in the process instead of returning them to the system (glibc only; once per
    process). Returns whether the setting is in force. ``DEITLAB_MALLOC=system`` leaves the allocator alone."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get(ENV, "").lower() == "system":
        log.info("allocator: left as the system's (%s=system)", ENV)
        return False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = bool(libc.mallopt(M_MMAP_THRESHOLD, RETAIN_BYTES)) and bool(libc.mallopt(M_TRIM_THRESHOLD, RETAIN_BYTES))
    except (OSError, AttributeError):
        return False
    _applied = ok
    if ok:
        log.info("allocator: freed blocks under 1 GiB stay in the process (glibc mallopt; %s=system: off)", ENV)
    return ok
