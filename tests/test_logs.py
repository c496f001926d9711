"""Live logs: the per-step JSONL, TensorBoard scalars, and runtime failures as one line with the likely fix."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

import deitlab.cli.train as cli_train
from deitlab.cli import explain_runtime, main
from deitlab.config import build_config
from deitlab.distill.losses import LossParts
from deitlab.engine import train
from deitlab.engine.callbacks import StepLog
from deitlab.engine.checkpoint import read_manifest, write_manifest
from deitlab.engine.run import StepOutcome
from deitlab.errors import ConfigError

ROW_KEYS = {"step", "epoch", "loss", "base", "distill", "lr", "grad_norm", "skipped", "img_per_s", "cpu_rss_mb"}
HAS_TENSORBOARD = importlib.util.find_spec("tensorboard") is not None


def _cfg(tmp: Path, *extra: str):
    return build_config(overrides=[
        "model.name=deit_micro_patch4_28", "data.dataset=synthetic", "data.batch_size=16", "data.limit_train=96",
        "data.limit_eval=16", "train.epochs=2", "model.kwargs.depth=1", "model.kwargs.embed_dim=16",
        "model.kwargs.num_heads=2", "train.progress=false", "data.test_at_end=false", "aug.rand_augment=null",
        f"train.output_dir={tmp}", *extra,
    ])  # fmt: skip


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "steps.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_step_log_rows_at_every_nth_step_and_after_a_resume(tmp_path: Path) -> None:
    """6 steps per epoch, 2 epochs, a row every 4 steps: steps 4, 8, 12, with the loss parts, lr, grad norm,
    throughput and memory. A resume from step 6 drops the rows of the steps it redoes and writes them again."""
    run = tmp_path / "run"
    result = train(_cfg(run, "log.every_steps=4", "train.checkpoint_every_steps=6", "train.keep_last=5"))
    rows = _rows(run)
    assert [r["step"] for r in rows] == [4, 8, 12] and [r["epoch"] for r in rows] == [0, 1, 1]
    for r in rows:
        assert r.keys() >= ROW_KEYS, ROW_KEYS - r.keys()
        assert r["loss"] > 0 and r["base"] == r["loss"] and r["distill"] == 0.0  # no teacher: the loss is its base
        assert r["grad_norm"] > 0 and r["img_per_s"] > 0 and r["cpu_rss_mb"] > 10 and r["skipped"] is False
        assert "cuda_max_alloc_mb" not in r and "loss_scale" not in r  # CPU, fp32
    lrs = [r["lr"] for r in rows]
    assert lrs[0] != lrs[1]  # the schedule moves: the row has the step's own learning rate
    assert result.history[-1]["step"] == 12

    # A run that died after step 9 with its checkpoint at step 6: steps 7-12 are redone, step 8's row too.
    part = tmp_path / "part"
    shutil.copytree(run, part)
    write_manifest(part, [e for e in read_manifest(part) if e.step <= 6])
    (part / "steps.jsonl").write_text((part / "steps.jsonl").read_text() + '{"step": 9, "cut by a cra')
    train(build_config(overrides=[f"train.resume={part}", "train.progress=false"]))
    assert [r["step"] for r in _rows(part)] == [4, 8, 12]


class _NoSync:
    """A loss value that fails when read on the host."""

    def detach(self) -> _NoSync:
        return self

    def __float__(self) -> float:
        raise AssertionError("a step that is not logged read a device value")


def test_step_log_reads_device_values_only_on_logged_steps(tmp_path: Path) -> None:
    class Fake:  # just what StepLog reads from a run and its state
        run_dir, device = tmp_path, torch.device("cpu")
        dist = type("D", (), {"world_size": 2})()
        scaler = type("S", (), {"enabled": False})()

    state = type("State", (), {"global_step": 0, "epoch": 0})()
    log = StepLog(every_steps=3)
    log.on_train_start(Fake, state)
    log.on_epoch_start(Fake, state)
    for step in range(1, 3):
        state.global_step = step
        outcome = StepOutcome(LossParts(_NoSync(), _NoSync(), _NoSync()), lr=0.1, images=8, seconds=0.1,
                              skipped=False, grad_norm=_NoSync())  # fmt: skip
        log.on_step_end(Fake, state, outcome)  # no row, no read
        assert outcome.record is None
    state.global_step = 3
    one = torch.tensor(1.5)
    outcome = StepOutcome(LossParts(one, one * 0, one), lr=0.1, images=8, seconds=0.1, skipped=False, grad_norm=one)
    log.on_step_end(Fake, state, outcome)
    log.on_train_end(Fake, state)
    assert outcome.record is not None and _rows(tmp_path) == [outcome.record]
    assert outcome.record["loss"] == 1.5 and outcome.record["grad_norm"] == 1.5
    assert outcome.record["img_per_s"] > 0  # 3 steps x 8 images x 2 processes over the elapsed time


@pytest.mark.slow
@pytest.mark.skipif(not HAS_TENSORBOARD, reason="tensorboard not installed: pip install 'deitlab[tensorboard]'")
def test_tensorboard_event_file_holds_step_and_epoch_scalars(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(_cfg(tmp_path / "run", "log.every_steps=4", "log.tensorboard=true"))
    events = list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/grad_norm", "train/img_per_s", "epoch/acc", "epoch/train_loss"} <= tags
    assert [e.step for e in acc.Scalars("train/loss")] == [4, 8, 12]
    assert [e.step for e in acc.Scalars("epoch/acc")] == [6, 12]
    first = _rows(tmp_path / "run")[0]
    assert acc.Scalars("train/loss")[0].value == pytest.approx(first["loss"])


def test_tensorboard_without_the_package_is_one_line_saying_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name))
    with pytest.raises(ConfigError, match=r"needs the tensorboard package: pip install 'deitlab\[tensorboard\]'"):
        train(_cfg(tmp_path / "run", "log.tensorboard=true"))
    assert not (tmp_path / "run").exists()  # it failed before anything was written


ARGS = ["train", "--model", "deit_micro_patch4_28", "--data-set", "synthetic"]


@pytest.mark.parametrize(
    ("error", "expect"),
    [
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.1 GiB total)"),
         r"^error: out of GPU memory \(CUDA out of memory\. Tried to allocate 2\.00 GiB .*lower --batch-size"),
        (RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: you tried to "
                      "allocate 1125899906842624 bytes."), r"^error: out of CPU memory .*lower --batch-size"),
        (MemoryError(), r"^error: out of CPU memory; lower --batch-size"),
        (dist.DistBackendError("[Rank 1] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=7, "
                               "OpType=ALLREDUCE) ran for 600000 milliseconds before timing out."),
         r"^error: a distributed collective timed out .*another process probably failed"),
        (RuntimeError("NCCL error in: ProcessGroupNCCL.cpp:1970, unhandled system error"),
         r"^error: the process group failed .*NCCL_DEBUG=INFO"),
    ],
)  # fmt: skip
def test_runtime_failures_are_one_line_with_the_likely_fix(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, error: BaseException, expect: str
) -> None:
    def fail(cfg):  # noqa: ANN001, ANN202
        raise error

    monkeypatch.setattr(cli_train, "train", fail)
    assert main(ARGS) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert __import__("re").search(expect, err), err
    with pytest.raises(type(error)):
        main([*ARGS, "--debug"])  # --debug shows the traceback instead


def test_unknown_runtime_errors_keep_their_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    """A RuntimeError that is not the machine's (a bug) is not dressed up as one line."""
    assert explain_runtime(RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)")) is None

    def fail(cfg):  # noqa: ANN001, ANN202
        raise RuntimeError("something unexpected")

    monkeypatch.setattr(cli_train, "train", fail)
    with pytest.raises(RuntimeError, match="something unexpected"):
        main(ARGS)
