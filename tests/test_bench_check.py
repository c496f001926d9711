"""The speed regression guard (benchmarks/check.py) runs in CI through this test: deitlab's training step must stay
within 2x of its recorded ratio to a matmul of the same FLOPs, measured side by side in the same process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_train_step_speed_has_not_regressed(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    recorded = ROOT / "benchmarks" / "results" / "check.json"
    assert json.loads(recorded.read_text())["ratio"] > 0
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "check.py"), "--rounds", "5"], env=env,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.startswith("ok: step / same-FLOP matmul =")


@pytest.mark.slow
def test_the_guard_fails_on_a_2x_regression(tmp_path: Path) -> None:
    """A reference ratio far below what this machine measures is a regression: exit 1."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    fake = tmp_path / "check.json"
    reference = json.loads((ROOT / "benchmarks" / "results" / "check.json").read_text())
    fake.write_text(json.dumps({**reference, "ratio": 0.01}))
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "check.py"), "--rounds", "3", "--file", str(fake)],
                         env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert out.returncode == 1 and out.stdout.startswith("REGRESSION"), out.stdout + out.stderr
