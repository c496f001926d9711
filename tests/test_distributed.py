"""Collectives on the backend's device (NCCL takes no CPU tensor), per-rank random states, rank-0-only output.

CUDA is not available here, so the NCCL case is checked three ways: the device chooser maps NCCL to the
process's GPU; every collective helper, told the backend needs another device (``meta`` stands in for
``cuda``), hands the collective a tensor on that device; and no module but ``engine/distributed.py`` calls a
collective at all. tests/test_gpu.py repeats the check under a real NCCL group.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from deitlab.config import build_config
from deitlab.engine import distributed, train
from deitlab.engine.distributed import (
    DistInfo,
    all_gather_tensor,
    all_reduce_tensor,
    broadcast_flag,
    device_for_backend,
    init_distributed,
)
from deitlab.engine.evaluate import EvalCounts
from deitlab.engine.state import gather_rng_states, restore_rng_states

SRC = Path(__file__).resolve().parents[1] / "src" / "deitlab"
COLLECTIVE_CALL = re.compile(
    r"\b(dist|torch\.distributed)\.(all_reduce|all_gather\w*|broadcast\w*|reduce\w*|gather\w*|scatter\w*|barrier|"
    r"send|recv|isend|irecv|all_to_all\w*)\("
)


def test_nccl_needs_the_process_gpu_and_gloo_the_cpu() -> None:
    assert device_for_backend("nccl", 3) == torch.device("cuda", 3)
    assert device_for_backend("cpu:gloo,cuda:nccl", 1) == torch.device("cuda", 1)
    assert device_for_backend("gloo", 0) == torch.device("cpu")
    assert distributed.backend_for("cuda") == "nccl" and distributed.backend_for("cpu") == "gloo"


def test_collective_device_follows_the_live_group(monkeypatch: pytest.MonkeyPatch) -> None:
    assert distributed.collective_device() == torch.device("cpu")  # no group
    monkeypatch.setattr(distributed, "is_grouped", lambda: True)
    monkeypatch.setattr(dist, "get_backend", lambda *a: "nccl")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 2)
    assert distributed.collective_device() == torch.device("cuda", 2)
    monkeypatch.setattr(dist, "get_backend", lambda *a: "gloo")
    assert distributed.collective_device() == torch.device("cpu")


@pytest.mark.parametrize(("device_type", "backend"), [("cuda", "nccl"), ("cpu", "gloo")])
def test_init_binds_nccl_to_the_local_gpu(monkeypatch: pytest.MonkeyPatch, device_type: str, backend: str) -> None:
    calls: list[tuple[str, dict]] = []
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda **kw: calls.append(("init", kw)))
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: calls.append(("set_device", {"index": i})))
    info = init_distributed(device_type)
    assert info == DistInfo(rank=3, world_size=4, local_rank=1)
    init = dict(calls)["init"]
    assert init["backend"] == backend
    if device_type == "cuda":
        assert dict(calls)["set_device"] == {"index": 1} and init["device_id"] == torch.device("cuda", 1)


class _Reached(Exception):
    """Raised by the fake collective once it has seen the tensor (a ``meta`` tensor holds no data to go on with)."""


def _collective_sites(gen: torch.Generator) -> dict[str, object]:
    counts = EvalCounts(3, n=4, loss_sum=2.5, top1={"cls": 3}, top5={"cls": 4}, agree=2,
                        confusion=torch.tensor([[1, 0, 0], [0, 1, 1], [0, 0, 1]]))  # fmt: skip
    return {
        "stop flag": lambda: broadcast_flag(True, DistInfo(0, 2)),
        "non-finite flag (device tensor)": lambda: broadcast_flag(torch.tensor(False), DistInfo(0, 2)),
        "evaluation counts": counts.all_reduce,
        "random states": lambda: gather_rng_states(gen),
        "all_reduce_tensor": lambda: all_reduce_tensor(torch.ones(3)),
        "all_gather_tensor": lambda: all_gather_tensor(torch.ones(3)),
    }


@pytest.mark.parametrize("needed", ["cpu", "meta"])  # gloo; meta stands in for NCCL's cuda (see the module doc)
def test_every_collective_gets_a_tensor_on_the_backend_device(monkeypatch: pytest.MonkeyPatch, needed: str) -> None:
    """A CPU tensor handed to a collective while the backend needs another device fails this test."""
    seen: list[torch.device] = []

    def fake(name: str):  # noqa: ANN202
        def collective(*args, **kwargs) -> None:  # noqa: ANN002, ANN003
            tensors = [a for a in args if isinstance(a, torch.Tensor)]
            tensors += [t for a in args if isinstance(a, list) for t in a]
            assert tensors, f"{name} got no tensor"
            for t in tensors:
                assert t.device == torch.device(needed), f"{name} got a tensor on {t.device}, not {needed}"
                seen.append(t.device)
            if needed == "meta":
                raise _Reached
            if name == "all_gather":  # a world of one: the output list is the input
                args[0][0].copy_(args[1])

        return collective

    monkeypatch.setattr(distributed, "is_grouped", lambda: True)
    monkeypatch.setattr(distributed, "collective_device", lambda: torch.device(needed))
    monkeypatch.setattr(dist, "get_world_size", lambda *a: 1)
    for name in ("all_reduce", "all_gather", "broadcast", "all_gather_into_tensor", "reduce", "barrier"):
        monkeypatch.setattr(dist, name, fake(name))
    for site, call in _collective_sites(torch.Generator().manual_seed(0)).items():
        before = len(seen)
        if needed == "meta":
            with pytest.raises(_Reached):
                call()
        else:
            call()
        assert len(seen) > before, f"{site} issued no collective"


def test_counts_survive_the_one_vector_all_reduce(monkeypatch: pytest.MonkeyPatch) -> None:
    """Packing the counts and the confusion matrix into one float64 vector and back loses nothing."""
    monkeypatch.setattr(distributed, "is_grouped", lambda: True)
    monkeypatch.setattr(distributed, "collective_device", lambda: torch.device("cpu"))
    monkeypatch.setattr(dist, "all_reduce", lambda t, op=None: t.mul_(2))  # two identical processes
    confusion = torch.tensor([[5, 1], [2, 7]])
    counts = EvalCounts(2, n=15, loss_sum=3.25, top1={"cls": 12, "dist": 11}, top5={"cls": 15, "dist": 15}, agree=9,
                        confusion=confusion.clone())  # fmt: skip
    counts.all_reduce()
    assert (counts.n, counts.loss_sum, counts.agree) == (30, 6.5, 18)
    assert counts.top1 == {"cls": 24, "dist": 22} and counts.top5 == {"cls": 30, "dist": 30}
    assert counts.confusion.dtype == torch.int64 and torch.equal(counts.confusion, 2 * confusion)


def test_only_engine_distributed_calls_collectives() -> None:
    offenders = []
    for path in SRC.rglob("*.py"):
        if path.name == "distributed.py" and path.parent.name == "engine":
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if COLLECTIVE_CALL.search(line):
                offenders.append(f"{path.relative_to(SRC)}:{i}: {line.strip()}")
    assert not offenders, "collectives outside engine/distributed.py (use its helpers):\n" + "\n".join(offenders)
    assert COLLECTIVE_CALL.search("    dist.all_reduce(t)") and COLLECTIVE_CALL.search("torch.distributed.barrier()")


def test_random_states_round_trip_per_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rank r of a resumed run gets rank r's streams back (faked 2-process gather); another world size keeps its
    own fresh streams rather than every rank taking rank 0's."""
    gens = [torch.Generator().manual_seed(10 + r) for r in range(2)]
    for g in gens:
        torch.rand(3, generator=g)
    monkeypatch.setattr(distributed, "is_grouped", lambda: True)
    monkeypatch.setattr(distributed, "collective_device", lambda: torch.device("cpu"))
    monkeypatch.setattr(dist, "get_world_size", lambda *a: 2)

    def gather(out: list[torch.Tensor], mine: torch.Tensor) -> None:
        out[0].copy_(mine)
        other = torch.cat([torch.get_rng_state(), gens[1].get_state()])  # what rank 1 would send (no CUDA here)
        out[1].copy_(other)

    monkeypatch.setattr(dist, "all_gather", gather)
    saved = gather_rng_states(gens[0])
    assert len(saved) == 2 and torch.equal(saved[1]["aug"], gens[1].get_state()) and saved[0]["cuda"] == []
    expect = torch.rand(4, generator=gens[1])
    fresh = torch.Generator().manual_seed(99)
    restore_rng_states(saved, fresh, DistInfo(rank=1, world_size=2))
    assert torch.equal(torch.rand(4, generator=fresh), expect)
    untouched = torch.Generator().manual_seed(7)
    restore_rng_states(saved, untouched, DistInfo(rank=0, world_size=3))
    assert torch.equal(untouched.get_state(), torch.Generator().manual_seed(7).get_state())


@pytest.mark.slow
def test_training_inside_a_live_gloo_group_uses_the_group_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real loop, evaluation and checkpoints in a real 1-process gloo group: every collective runs, on the
    group's device (the same run under NCCL is in tests/test_gpu.py)."""
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    seen: dict[str, list[torch.device]] = {}
    for name in ("all_reduce", "all_gather"):
        real = getattr(dist, name)

        def spy(*args, _real=real, _name=name, **kwargs):  # noqa: ANN002, ANN003, ANN202
            tensors = [a for a in args if isinstance(a, torch.Tensor)] + [t for a in args if isinstance(a, list)
                                                                          for t in a]  # fmt: skip
            seen.setdefault(_name, []).extend(t.device for t in tensors)
            return _real(*args, **kwargs)

        monkeypatch.setattr(dist, name, spy)
    try:
        cfg = build_config(overrides=[
            "model.name=deit_micro_patch4_28", "data.dataset=synthetic", "data.batch_size=32", "data.limit_train=64",
            "data.limit_eval=32", "train.epochs=1", "model.kwargs.depth=1", "model.kwargs.embed_dim=32",
            "model.kwargs.num_heads=2", "train.progress=false", "data.test_at_end=false",
            f"train.output_dir={tmp_path / 'run'}",
        ])  # fmt: skip
        result = train(cfg)
    finally:
        dist.destroy_process_group()
    assert result.final["acc"] >= 0
    assert len(seen["all_reduce"]) >= 3 and seen["all_gather"], seen  # flags, eval counts, RNG states
    assert {d.type for ds in seen.values() for d in ds} == {"cpu"}


@pytest.mark.slow
def test_only_rank_zero_prints(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "deitlab", "--version"]
    zero = subprocess.run(cmd, env={**env, "RANK": "0"}, capture_output=True, text=True, timeout=120)
    one = subprocess.run(cmd, env={**env, "RANK": "1"}, capture_output=True, text=True, timeout=120)
    assert zero.returncode == one.returncode == 0, (zero.stderr, one.stderr)
    assert "deitlab" in zero.stdout and one.stdout == ""


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "deitlab",
           "train", *args]  # fmt: skip
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_two_process_resume_is_exact_with_per_rank_random_streams(tmp_path: Path) -> None:
    """Two gloo processes with random crops, flips and drop-path, killed after a mid-epoch checkpoint and resumed:
    the same weights as the uninterrupted run, because each rank gets its own random streams back (with rank 0's
    for everyone, the two ranks would augment alike after the resume)."""
    from deitlab.engine.checkpoint import read_manifest, write_manifest
    from deitlab.io import read_checkpoint

    common = [
        "--model", "deit_micro_patch4_28", "--data-set", "synthetic", "--batch-size", "16", "--epochs", "1",
        "--set", "data.limit_train=128", "--set", "data.limit_eval=32", "--set", "data.test_at_end=false",
        "--set", "model.kwargs.depth=1", "--set", "model.kwargs.embed_dim=16", "--set", "model.kwargs.num_heads=2",
        "--set", "aug.crop_scale=[0.3, 1.0]", "--set", "aug.rand_augment=null", "--set", "aug.mixup=0",
        "--set", "aug.cutmix=0", "--set", "model.drop_path_rate=0.2", "--set", "train.progress=false",
        "--set", "train.threads=1", "--set", "train.checkpoint_every_steps=3", "--set", "train.keep_last=10",
    ]  # fmt: skip
    full = _torchrun(*common, "--output-dir", str(tmp_path / "full"))
    assert full.returncode == 0, full.stderr[-3000:]
    part = tmp_path / "part"
    shutil.copytree(tmp_path / "full", part)
    write_manifest(part, [e for e in read_manifest(part) if e.step <= 3])
    resumed = _torchrun("--resume", str(part), "--set", "train.progress=false")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = read_checkpoint(tmp_path / "full" / "model.safetensors")[0]
    b = read_checkpoint(part / "model.safetensors")[0]
    assert all(torch.equal(a[k], b[k]) for k in a), "the resumed 2-process run differs from the uninterrupted one"
