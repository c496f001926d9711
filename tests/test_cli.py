"""The command line: the demo end to end, eval, and one-line errors with the right exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deitlab.cli import main, parse_train_args


def _run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "deitlab", *args], capture_output=True, text=True, cwd=cwd, env=env, timeout=600
    )


@pytest.mark.slow
def test_demo_quick_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    proc = _run("demo", "--quick", "--quiet", "--output-dir", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "distilled student" in proc.stdout and "fused (logits)" in proc.stdout
    files = ["curves.png", "confusion_student.png", "results.json", "results.md", "teacher/model.safetensors"]
    files += ["student/model.safetensors", "student/log.jsonl", "student/config.yaml"]
    for f in files:
        assert (out / f).is_file(), f
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    results = json.loads((out / "results.json").read_text())
    assert {"test_acc_cls", "test_acc_dist", "test_acc_fused", "test_agreement"} <= results["student"].keys()
    assert "test_acc" in results["teacher"]

    proc = _run("eval", str(out / "student"), "--split", "val")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "acc_dist" in proc.stdout and "acc_fused" in proc.stdout


@pytest.mark.slow
def test_models_listing() -> None:
    proc = _run("models", "deit_tiny*")
    assert proc.returncode == 0
    assert "deit_tiny_patch16_224" in proc.stdout and "5.72M" in proc.stdout and "1.25" in proc.stdout


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["models", "nonexistent"], 2, "no registered model matches"),
        (["train", "--lrr", "1"], 2, "did you mean --lr"),
        (["train", "--model", "deit_tiny_patch16_22", "--data-set", "synthetic"], 2, "did you mean"),
        (["train", "--epochs", "0"], 2, "train.epochs=0 is out of range"),
        (["train", "--set", "optim.lrr=1"], 2, "did you mean 'optim.lr'"),
        (["eval", "/nonexistent/run"], 1, "checkpoint not found"),
        (["bogus"], 2, "invalid choice"),
    ],
)
def test_errors_are_one_line_with_exit_codes(args: list[str], code: int, message: str, capsys) -> None:
    assert main(args) == code
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1, err


def test_train_flag_parsing() -> None:
    files, overrides = parse_train_args(
        ["-c", "a.yaml", "--lr=1e-3", "--model-ema", "--epochs", "3", "--set", "aug.mixup=0", "--overwrite"]
    )
    assert files == ["a.yaml"]
    assert overrides == ["optim.lr=1e-3", "train.ema=true", "train.epochs=3", "aug.mixup=0", "train.overwrite=true"]
