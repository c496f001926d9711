"""fp16 loss scaling and the non-finite guard, and what a resume checkpoint adds for GPUs (scaler, CUDA RNG).

``torch.amp.GradScaler`` also runs on the CPU, so the scaler's interplay with the guard is tested here on a real
built run; the fp16 training itself (CUDA only) is in tests/test_gpu.py.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from deitlab.config import build_config
from deitlab.distill.losses import LossParts
from deitlab.engine.build import build_run
from deitlab.engine.distributed import DistInfo
from deitlab.engine.loop import backward_and_step
from deitlab.engine.run import Run
from deitlab.engine.scaler import StepScaler
from deitlab.engine.state import TrainState

CPU = torch.device("cpu")


def _run(tmp: Path, *extra: str, scaler: bool = True) -> Run:
    cfg = build_config(overrides=[
        "model.name=deit_micro_patch4_28", "data.dataset=synthetic", "data.batch_size=16", "data.limit_train=32",
        "data.limit_eval=16", "train.epochs=1", "model.kwargs.depth=1", "model.kwargs.embed_dim=16",
        "model.kwargs.num_heads=2", "train.progress=false", "data.test_at_end=false", "aug.mixup=0", "aug.cutmix=0",
        "train.ema=true", "train.ema_decay=0.5", f"train.output_dir={tmp}", *extra,
    ])  # fmt: skip
    run = build_run(cfg, device=CPU, dist=DistInfo())
    run.scaler = StepScaler("cpu", enabled=scaler)  # what fp16 on CUDA builds, on the CPU
    return run


def _parts(run: Run) -> LossParts:
    images, labels = next(iter(run.loader))
    out = run.model(run.eval_aug(images))
    return run.criterion(images, out, labels)


def _weights(run: Run) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in run.model.state_dict().items()}


def _poison_next_gradient(run: Run) -> None:
    """Make the next backward produce an inf gradient (an fp16 overflow) in one weight."""
    p = next(run.model.parameters())
    handle = p.register_hook(lambda g: (handle.remove(), g * math.inf)[1])


def test_scaler_skips_an_inf_gradient_without_counting_a_nonfinite_step(tmp_path: Path) -> None:
    run, state = _run(tmp_path / "run"), TrainState()
    before, ema_before = _weights(run), run.ema.state_dict()
    ema_before = {k: v.clone() for k, v in ema_before.items()}
    scale = run.scaler.scale()
    _poison_next_gradient(run)
    updated, norm = backward_and_step(run, state, _parts(run))
    assert not updated and not torch.isfinite(norm)
    assert state.nonfinite_run == 0 and state.sums.skipped == 0 and state.sums.scaler_skipped == 1
    assert run.scaler.scale() == scale / 2  # the scaler's own remedy: a lower scale
    assert all(torch.equal(before[k], v) for k, v in run.model.state_dict().items())
    assert all(torch.equal(ema_before[k], v) for k, v in run.ema.state_dict().items())
    updated, norm = backward_and_step(run, state, _parts(run))  # the next, finite step goes through
    assert updated and torch.isfinite(norm) and state.sums.scaler_skipped == 1
    assert any(not torch.equal(before[k], v) for k, v in run.model.state_dict().items())


def test_nonfinite_loss_is_the_guards_and_keeps_the_scale(tmp_path: Path) -> None:
    run, state = _run(tmp_path / "run"), TrainState()
    scale = run.scaler.scale()
    parts = _parts(run)
    nan = LossParts(parts.base, parts.distill, parts.total * math.nan)
    updated, _ = backward_and_step(run, state, nan)
    assert not updated and state.nonfinite_run == 1 and state.sums.skipped == 1 and state.sums.scaler_skipped == 0
    assert run.scaler.scale() == scale  # a lower scale cannot cure a forward pass that overflowed
    updated, _ = backward_and_step(run, state, _parts(run))  # the scaler's per-step record was cleared
    assert updated and state.nonfinite_run == 0


def test_without_a_scaler_an_inf_gradient_is_a_nonfinite_step(tmp_path: Path) -> None:
    run, state = _run(tmp_path / "run", scaler=False), TrainState()
    before = _weights(run)
    _poison_next_gradient(run)
    updated, _ = backward_and_step(run, state, _parts(run))
    assert not updated and state.nonfinite_run == 1 and state.sums.scaler_skipped == 0
    assert all(torch.equal(before[k], v) for k, v in run.model.state_dict().items())


def test_checkpoint_holds_the_scaler_and_every_cuda_rng_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run, state = _run(tmp_path / "a"), TrainState(global_step=5)
    _poison_next_gradient(run)
    backward_and_step(run, state, _parts(run))  # scale 65536 -> 32768, growth tracker reset
    cuda_states = [torch.arange(16, dtype=torch.uint8), torch.arange(16, 32, dtype=torch.uint8)]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [s.clone() for s in cuda_states])
    restored: list[tuple[int, torch.Tensor]] = []
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, i: restored.append((i, s)))
    payload = state.capture(run)
    assert payload["scaler"]["scale"] == 32768.0
    assert [torch.equal(a, b) for a, b in zip(payload["rng"][0]["cuda"], cuda_states)] == [True, True]

    other = _run(tmp_path / "b")
    assert other.scaler.scale() == 65536.0
    TrainState.restore(other, payload)
    assert other.scaler.state_dict() == run.scaler.state_dict()
    assert [i for i, _ in restored] == [0, 1] and all(torch.equal(s, cuda_states[i]) for i, s in restored)


def test_fp32_checkpoint_resumes_into_an_fp32_run(tmp_path: Path) -> None:
    """A disabled scaler saves {} and ignores it on restore (CPU runs keep resuming as before)."""
    run = _run(tmp_path / "a", scaler=False)
    payload = TrainState().capture(run)
    assert payload["scaler"] == {}
    TrainState.restore(_run(tmp_path / "b", scaler=False), payload)
