"""Crash-proof training: SIGKILL at random points + --resume is bit-identical, SIGTERM stops cleanly, corrupt
checkpoints fall back to the previous one, non-finite steps are skipped and stop the run, DDP equals one process."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from deitlab.config import build_config
from deitlab.engine import TrainingDiverged, train
from deitlab.engine.checkpoint import load_resume, read_manifest
from deitlab.io import read_checkpoint

ARGS = [
    "--model", "deit_micro_distilled_patch4_28", "--data-set", "synthetic", "--batch-size", "32", "--epochs", "2",
    "--set", "data.limit_train=384", "--set", "data.limit_eval=64", "--set", "data.test_at_end=false",
    "--set", "model.kwargs.depth=2", "--set", "model.kwargs.embed_dim=48", "--set", "model.kwargs.num_heads=2",
    "--set", "aug.crop_scale=[0.5, 1.0]", "--set", "aug.re_prob=0.25", "--set", "aug.rand_augment=rand-m9-mstd0.5-inc1",
    "--set", "train.checkpoint_every_steps=1", "--set", "train.keep_last=3", "--set", "train.progress=false",
    "--set", "train.threads=1",
]  # fmt: skip
ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}


def _deitlab(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "deitlab", *args], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def _finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=600)
    return proc.returncode, out, err


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(run / "model.safetensors")[0]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    run = tmp_path_factory.mktemp("ref") / "run"
    rc, _, err = _finish(_deitlab("train", *ARGS, "--output-dir", str(run)))
    assert rc == 0, err
    return _weights(run)


def _wait_for_checkpoint(run: Path, proc: subprocess.Popen, min_step: int) -> None:
    deadline = time.time() + 300
    while time.time() < deadline:
        try:
            entries = read_manifest(run)
        except ValueError:
            entries = []
        if entries and entries[-1].step >= min_step:
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended before step {min_step}: {proc.stderr.read()[-2000:]}")
        time.sleep(0.02)
    raise AssertionError("no checkpoint appeared")


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sigkill_at_random_points_then_resume_is_bit_identical(
    tmp_path: Path, reference: dict[str, torch.Tensor], seed: int
) -> None:
    rng = random.Random(seed)
    run = tmp_path / "run"
    proc = _deitlab("train", *ARGS, "--output-dir", str(run))
    _wait_for_checkpoint(run, proc, min_step=rng.randint(1, 20))
    time.sleep(rng.uniform(0.0, 0.3))  # land anywhere: mid-step, mid-write, mid-evaluation
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    rc, _, err = _finish(_deitlab("train", "--resume", str(run)))
    assert rc == 0, err
    ours = _weights(run)
    assert all(torch.equal(ours[k], reference[k]) for k in reference)


@pytest.mark.slow
def test_sigterm_checkpoints_and_exits_cleanly(tmp_path: Path, reference: dict[str, torch.Tensor]) -> None:
    run = tmp_path / "run"
    proc = _deitlab("train", *ARGS, "--output-dir", str(run))
    _wait_for_checkpoint(run, proc, min_step=5)
    proc.send_signal(signal.SIGTERM)
    rc, out, err = _finish(proc)
    assert rc == 0, err
    assert f"resume with: deitlab train --resume {run}" in out
    rc, _, err = _finish(_deitlab("train", "--resume", str(run)))
    assert rc == 0, err
    ours = _weights(run)
    assert all(torch.equal(ours[k], reference[k]) for k in reference)


def _cfg(tmp: Path, *extra: str):
    """The subprocess runs' settings as an in-process config (one epoch)."""
    flags = dict(zip(ARGS[::2], ARGS[1::2]))
    over = [f"model.name={flags['--model']}", "data.dataset=synthetic", "data.batch_size=32", "train.epochs=1"]
    over += [v for k, v in zip(ARGS[::2], ARGS[1::2]) if k == "--set"]
    return build_config(overrides=[*over, f"train.output_dir={tmp}", *extra])


def test_corrupt_latest_checkpoint_falls_back_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    train(_cfg(tmp_path / "run"))
    entries = read_manifest(tmp_path / "run")
    assert len(entries) == 3  # keep-last-k
    latest = tmp_path / "run" / "checkpoints" / entries[-1].file
    latest.write_bytes(latest.read_bytes()[:1000])  # truncated by a crash or a full disk
    state, _ = load_resume(tmp_path / "run")
    assert state["global_step"] == entries[-2].step
    assert "skipping bad checkpoint" in caplog.text and "resuming from the older checkpoint" in caplog.text


def test_resume_file_with_pickled_code_is_refused(tmp_path: Path) -> None:
    import pickle

    class Evil:
        def __reduce__(self):  # noqa: ANN204
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    with (run / "checkpoints" / "ckpt-000000001.pt").open("wb") as f:
        pickle.dump({"model": Evil(), "global_step": 1}, f, protocol=2)
    with pytest.raises(ValueError, match="no readable checkpoint"):
        load_resume(run)
    assert not (tmp_path / "pwned").exists()


def test_non_finite_steps_are_skipped_then_the_run_stops(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path / "run", "optim.lr=1e12", "optim.warmup_epochs=0", "train.max_nonfinite=3",
               "optim.scale_lr=false")  # fmt: skip
    with pytest.raises(TrainingDiverged, match=r"training diverged at step \d+ .*3 non-finite steps in a row"):
        train(cfg)
    state, _ = load_resume(tmp_path / "run")  # the last good state was written
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_ddp_two_processes_equal_one_process(tmp_path: Path) -> None:
    common = [
        "--model", "deit_micro_patch4_28", "--data-set", "synthetic", "--batch-size", "32", "--epochs", "1",
        "--set", "data.limit_train=256", "--set", "data.limit_eval=64", "--set", "data.test_at_end=false",
        "--set", "model.kwargs.depth=2", "--set", "model.kwargs.embed_dim=32", "--set", "model.kwargs.num_heads=2",
        "--set", "aug.crop_scale=null", "--set", "aug.hflip=0", "--set", "aug.rand_augment=null",
        "--set", "aug.re_prob=0", "--set", "aug.mixup=0", "--set", "aug.cutmix=0", "--set", "model.drop_path_rate=0",
        "--set", "train.progress=false", "--set", "train.threads=1",
    ]  # fmt: skip
    single = subprocess.run([sys.executable, "-m", "deitlab", "train", *common, "--output-dir", str(tmp_path / "one")],
                            env=ENV, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert single.returncode == 0, single.stderr
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "deitlab",
         "train", *common, "--output-dir", str(tmp_path / "two")],
        env=ENV, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one, two = _weights(tmp_path / "one"), _weights(tmp_path / "two")
    diff = max((one[k].float() - two[k].float()).abs().max().item() for k in one)
    assert diff < 1e-4, diff
    assert (tmp_path / "two" / "log.jsonl").read_text().count("\n") == 1  # only rank 0 logged
    shutil.rmtree(tmp_path / "two")
