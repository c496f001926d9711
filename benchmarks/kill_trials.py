"""Kill a training run with SIGKILL at random moments, again and again, resuming each time.

After every kill, every checkpoint the manifest lists is verified (size, SHA-256, and a safe
``torch.load(weights_only=True)``); at the end the weights are compared with an uninterrupted run.

    python benchmarks/kill_trials.py --kills 50
Prints a summary and writes benchmarks/results/kill_trials.json. Goal: 0 unreadable checkpoints, identical weights.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from deitlab.engine.checkpoint import CKPT_DIR, load_verified, read_manifest
from deitlab.errors import CheckpointError
from deitlab.io import read_checkpoint

ARGS = [
    "--model", "deit_micro_distilled_patch4_28", "--data-set", "synthetic", "--batch-size", "32", "--epochs", "40",
    "--set", "data.limit_train=512", "--set", "data.limit_eval=64", "--set", "data.test_at_end=false",
    "--set", "model.kwargs.depth=2", "--set", "model.kwargs.embed_dim=48", "--set", "model.kwargs.num_heads=2",
    "--set", "train.checkpoint_every_steps=1", "--set", "train.keep_last=3", "--set", "train.progress=false",
    "--set", "train.threads=1", "--set", "aug.mixup=0.8", "--set", "aug.cutmix=1.0",
]  # fmt: skip
ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}


def run(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "deitlab", "train", *args], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip


def _latest_step(run_dir: Path) -> int:
    try:
        entries = read_manifest(run_dir)
    except CheckpointError:
        return -1
    return entries[-1].step if entries else -1


def verify(run_dir: Path) -> tuple[int, int]:
    """(checkpoints listed, unreadable ones) right now."""
    try:
        entries = read_manifest(run_dir)
    except CheckpointError:
        return 1, 1
    bad = 0
    for e in entries:
        try:
            load_verified(run_dir / CKPT_DIR / e.file, e)
        except (CheckpointError, OSError):
            bad += 1
    return len(entries), bad


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="deitlab-kills-"))
    t0 = time.perf_counter()
    ref = run([*ARGS, "--output-dir", str(work / "reference")])
    assert ref.wait() == 0, ref.stderr.read()
    ref_seconds = time.perf_counter() - t0  # reported: how long the same run takes without kills
    target = work / "killed"
    proc = run([*ARGS, "--output-dir", str(target)])
    kills = restarts = listed = unreadable = 0
    kill_steps: list[int] = []
    steps_done = 0
    while kills < args.kills:
        # Strike only once this process is training (its first new checkpoint exists), then anywhere within 0.6 s:
        # mid-step, mid-write, mid-evaluation.
        while proc.poll() is None and _latest_step(target) <= steps_done:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.6))
        if proc.poll() is not None:  # the run finished before we struck
            if proc.returncode != 0:
                raise SystemExit(f"run failed: {proc.stderr.read()[-2000:]}")
            break
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
        kill_steps.append(_latest_step(target))
        n, bad = verify(target)
        listed += n
        unreadable += bad
        steps_done = _latest_step(target)
        has_ckpt = (target / "manifest.json").exists()
        proc = run(["--resume", str(target)] if has_ckpt else [*ARGS, "--output-dir", str(target), "--overwrite"])
        restarts += 1
    code = proc.wait()
    assert code == 0, proc.stderr.read()[-2000:]
    a = read_checkpoint(work / "reference" / "model.safetensors")[0]
    b = read_checkpoint(target / "model.safetensors")[0]
    identical = all(torch.equal(a[k], b[k]) for k in a)
    summary = {"kills": kills, "restarts": restarts, "steps_at_kills": kill_steps, "checkpoints_verified": listed,
               "unreadable": unreadable,
               "final_weights_identical": identical, "reference_seconds": ref_seconds,
               "seconds": time.perf_counter() - t0}  # fmt: skip
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "kill_trials.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
