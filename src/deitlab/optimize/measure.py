"""Timing a model's real step (forward, plus backward in training) under candidate settings, interleaved.

The steps run on the caller's model, not a copy (no second model in memory, and a kept ``torch.compile`` is the one
measured); :func:`untouched` puts back everything a step changes: BatchNorm statistics and other buffers, gradients,
train/eval mode, attention kernels and the random streams, so that a run that is tuned trains exactly as one that
is not.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import torch
from torch import nn

from deitlab.layers.attention import Attention, ReAttention

log = logging.getLogger(__name__)

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
MIN_ROUNDS = 3
MAX_ROUNDS = 7
ROUNDS_BUDGET_S = 2.0  # rounds beyond MIN_ROUNDS only while a comparison has taken less than this


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast to ``precision``; fp32 switches autocast *off*, so an fp32 model called inside someone else's
    bf16 region (a teacher inside the student's step) really runs in fp32."""
    dtype = DTYPES[precision]
    if dtype is None:
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=dtype)


def plain_attention(model: nn.Module) -> list[Attention]:
    """The attention layers whose kernel may be chosen (re-attention always materialises its maps)."""
    return [m for m in model.modules() if isinstance(m, Attention) and not isinstance(m, ReAttention)]


def bf16_cpu() -> bool:
    """Whether this CPU runs bf16 natively (AVX512-BF16 or AMX); without it autocast emulates bf16, slowly."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def precision_candidates(device: torch.device) -> list[str]:
    if device.type == "cuda":
        return ["fp32", *(["bf16"] if torch.cuda.is_bf16_supported() else []), "fp16"]
    if device.type == "cpu" and bf16_cpu():
        return ["fp32", "bf16"]
    return ["fp32"]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class Setting:
    """One candidate: autocast precision, attention kernel (None: as built), CPU threads (None: as is), compiled."""

    precision: str = "fp32"
    attention: str | None = None
    threads: int | None = None
    compiled: bool = False

    def but(self, **changes: object) -> Setting:
        return replace(self, **changes)


@contextlib.contextmanager
def untouched(model: nn.Module, device: torch.device) -> Iterator[None]:
    """Restore buffers, gradients, mode, attention kernels, thread count and random streams after timing steps."""
    training = model.training
    buffers = [b.detach().clone() for b in model.buffers()]
    kernels = {m: m.attn_impl for m in plain_attention(model)}
    threads = torch.get_num_threads()
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=cuda):
            yield
    finally:
        with torch.no_grad():
            for b, saved in zip(model.buffers(), buffers, strict=True):
                b.copy_(saved)
        for p in model.parameters():
            p.grad = None
        model.train(training)
        for m, impl in kernels.items():
            m.attn_impl = impl
        torch.set_num_threads(threads)


def _timing_loss(out: object) -> torch.Tensor:
    """A scalar from any output (tensor, tuple of heads, dict): its cost is negligible next to the model's."""
    if isinstance(out, torch.Tensor):
        return out.float().mean()
    parts = out.values() if isinstance(out, dict) else out
    return sum(_timing_loss(o) for o in parts if isinstance(o, torch.Tensor | tuple | list | dict))


class StepTimer:
    """Builds and times the real step of ``model`` on ``example`` in ``mode`` under a :class:`Setting`."""

    def __init__(self, model: nn.Module, example: torch.Tensor, mode: str) -> None:
        self.model, self.example, self.mode = model, example, mode
        self.device = example.device
        self.kernels = plain_attention(model)
        self.compiled_impl: Callable | None = None  # the compiled __call__, once compiled

    def _apply(self, s: Setting) -> None:
        if s.threads is not None:
            torch.set_num_threads(s.threads)
        if s.attention is not None:
            for m in self.kernels:
                m.attn_impl = s.attention
        if self.compiled_impl is not None:
            self.model._compiled_call_impl = self.compiled_impl if s.compiled else None

    def step(self, s: Setting) -> None:
        """One step under ``s``; the model is left in the step's mode with its gradients cleared."""
        self._apply(s)
        if self.mode == "train":
            self.model.train()
            with autocast(self.device, s.precision):
                loss = _timing_loss(self.model(self.example))
            loss.backward()
            for p in self.model.parameters():
                p.grad = None
        else:
            self.model.eval()
            with torch.no_grad(), autocast(self.device, s.precision):  # as the teacher and evaluate() run it
                self.model(self.example)

    def timed(self, s: Setting) -> float:
        sync(self.device)
        t0 = time.perf_counter()
        self.step(s)
        sync(self.device)
        return time.perf_counter() - t0

    def compare(self, candidates: dict[str, Setting]) -> dict[str, float]:
        """Seconds per step of each candidate: one warm-up each, then rounds that run every candidate once (so
        that a burst of load from other processes hits all of them), the minimum over rounds."""
        for s in candidates.values():
            self.step(s)
        times: dict[str, list[float]] = {name: [] for name in candidates}
        t0 = time.perf_counter()
        for r in range(MAX_ROUNDS):
            for name, s in candidates.items():
                times[name].append(self.timed(s))
            if r + 1 >= MIN_ROUNDS and time.perf_counter() - t0 > ROUNDS_BUDGET_S:
                break
        return {name: min(t) for name, t in times.items()}

    def compile(self, s: Setting) -> float:
        """Compile the model in place for this mode (:func:`compile_in_mode`); the seconds of its first step."""
        compile_in_mode(self.model, self.mode, fall_back=False)  # a failure is the caller's to handle
        self.compiled_impl = self.model._compiled_call_impl
        return self.timed(s.but(compiled=True))

    def drop_compiled(self) -> None:
        self.model._compiled_call_impl = None
        self.compiled_impl = None


def compile_error(exc: BaseException) -> str:
    """A torch.compile failure in one line: its type and the first line of its message (the backend's own error
    when dynamo wraps it: ``BackendCompilerFailed``'s first line only says which backend raised)."""
    exc = getattr(exc, "inner_exception", None) or exc
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}".rstrip(": ")[:300]


def compile_in_mode(model: nn.Module, mode: str, *, fall_back: bool = True) -> None:
    """``torch.compile`` the model's ``__call__`` in place for one mode: a training plan compiles the training
    graph and leaves evaluation eager, an inference plan the reverse. Evaluation then costs no second compile
    (23 of the 73 s of a cold compile of the demo student on 2 Zen 4 cores) and no recompile for a last, smaller
    batch; the state dict keeps its keys (no ``_orig_mod.`` wrapper).

    With ``fall_back``, a first compiled call that fails (no C++ compiler on this machine, an operation the
    compiler cannot handle) is run eager instead: if the eager call works, the failure was the compiler's, it is
    logged once and the model stays eager; if the eager call fails too, that (the model's own) error is raised."""
    compiled = torch.compile(model._call_impl)
    training = mode == "train"
    worked = False  # after one compiled call has returned, its errors are the model's

    def call(*args: object, **kwargs: object) -> object:
        nonlocal worked
        if model.training != training:
            return model._call_impl(*args, **kwargs)
        if worked or not fall_back:
            return compiled(*args, **kwargs)
        try:
            out = compiled(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - the eager call below tells the compiler's failure from the model's
            out = model._call_impl(*args, **kwargs)
            log.warning("torch.compile failed here (%s): the model runs eager", compile_error(exc))
            model._compiled_call_impl = None
            return out
        worked = True
        return out

    model._compiled_call_impl = call
