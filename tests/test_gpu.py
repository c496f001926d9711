"""On a CUDA GPU only (skipped elsewhere): bf16 and fp16 training, the fp16 scaler and CUDA RNG states through a
resume, and every collective of the run on the GPU under a real (1-process) NCCL group. About 30-60 s.

    PYTHONPATH=$PWD/src python -m pytest -q -rs tests/test_gpu.py
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from deitlab.config import build_config
from deitlab.engine import train
from deitlab.engine.build import build_run
from deitlab.engine.checkpoint import load_resume, read_manifest, write_manifest
from deitlab.engine.distributed import DistInfo, broadcast_flag, collective_device
from deitlab.engine.evaluate import EvalCounts
from deitlab.engine.state import TrainState, gather_rng_states
from deitlab.io import read_checkpoint

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _cfg(tmp: Path, *extra: str):
    return build_config(overrides=[
        "model.name=deit_micro_distilled_patch4_28", "data.dataset=synthetic", "data.batch_size=32",
        "data.limit_train=256", "data.limit_eval=64", "train.epochs=1", "train.device=cuda", "model.kwargs.depth=2",
        "model.kwargs.embed_dim=64", "model.kwargs.num_heads=2", "train.progress=false", "data.test_at_end=false",
        "train.checkpoint_every_steps=2", "train.keep_last=10", "log.every_steps=1", "train.ema=true",
        f"train.output_dir={tmp}", *extra,
    ])  # fmt: skip


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains_and_resumes_with_scaler_and_cuda_rng(tmp_path: Path, precision: str) -> None:
    run = tmp_path / "run"
    result = train(_cfg(run, f"train.precision={precision}"))
    rows = [json.loads(line) for line in (run / "steps.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in rows), rows
    assert all(r["cuda_max_alloc_mb"] > 0 for r in rows)
    assert math.isfinite(result.history[-1]["train_loss"]) and result.final["acc"] >= 0
    assert ("loss_scale" in rows[0]) == (precision == "fp16")

    payload, _ = load_resume(run)
    cuda_states = payload["rng"][0]["cuda"]
    assert len(cuda_states) == torch.cuda.device_count() and all(s.dtype == torch.uint8 for s in cuda_states)
    if precision == "fp16":
        assert payload["scaler"]["scale"] > 0 and "_growth_tracker" in payload["scaler"]
    else:
        assert payload["scaler"] == {}

    # Resume from the checkpoint at step 4: the scaler and the CUDA generator come back as they were saved.
    part = tmp_path / "part"
    shutil.copytree(run, part)
    write_manifest(part, [e for e in read_manifest(part) if e.step <= 4])
    mid, _ = load_resume(part)
    assert mid["global_step"] == 4
    resumed = build_run(build_config(overrides=[f"train.resume={part}", "train.progress=false"]),
                        device=torch.device("cuda"), dist=DistInfo())  # fmt: skip
    state = TrainState.restore(resumed, resumed.resume)
    assert state.global_step == 4
    assert resumed.scaler.state_dict() == mid["scaler"]
    assert resumed.scaler.enabled == (precision == "fp16")
    assert torch.equal(torch.cuda.get_rng_state(0), mid["rng"][0]["cuda"][0])
    again = train(build_config(overrides=[f"train.resume={part}", "train.progress=false"]))
    assert again.history[-1]["step"] == 8
    weights = read_checkpoint(part / "model.safetensors")[0]
    assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


def test_every_collective_is_on_the_gpu_under_nccl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A real NCCL group (1 process): our helpers and a whole training run issue their collectives with CUDA
    tensors (NCCL would reject CPU ones), and the results are right."""
    torch.cuda.set_device(0)
    dist.init_process_group("nccl", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1,
                            device_id=torch.device("cuda", 0))  # fmt: skip
    seen: list[tuple[str, torch.device]] = []
    for name in ("all_reduce", "all_gather"):
        real = getattr(dist, name)

        def spy(*args, _real=real, _name=name, **kwargs):  # noqa: ANN002, ANN003, ANN202
            tensors = [a for a in args if isinstance(a, torch.Tensor)] + [t for a in args if isinstance(a, list)
                                                                          for t in a]  # fmt: skip
            seen.extend((_name, t.device) for t in tensors)
            return _real(*args, **kwargs)

        monkeypatch.setattr(dist, name, spy)
    try:
        assert collective_device() == torch.device("cuda", 0)
        assert broadcast_flag(True, DistInfo()) is True
        assert broadcast_flag(torch.tensor(False, device="cuda"), DistInfo()) is False
        confusion = torch.tensor([[3, 1], [0, 4]])
        counts = EvalCounts(2, n=8, loss_sum=1.5, top1={"cls": 7}, top5={"cls": 8}, agree=6, confusion=confusion)
        counts.all_reduce()
        assert (counts.n, counts.loss_sum, counts.top1["cls"], counts.agree) == (8, 1.5, 7, 6)
        assert torch.equal(counts.confusion, torch.tensor([[3, 1], [0, 4]]))
        states = gather_rng_states(torch.Generator().manual_seed(0))
        assert len(states) == 1 and len(states[0]["cuda"]) == torch.cuda.device_count()
        n_helpers = len(seen)
        result = train(_cfg(tmp_path / "run", "train.precision=bf16"))  # flags, eval counts, checkpoints' RNG gathers
        assert result.final["acc"] >= 0
    finally:
        dist.destroy_process_group()
    assert len(seen) > n_helpers + 8, seen  # the run issued collectives of its own
    wrong = [(name, d) for name, d in seen if d.type != "cuda"]
    assert not wrong, wrong
