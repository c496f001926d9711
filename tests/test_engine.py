"""The training engine on real and synthetic data: the loss falls, resume is exact, the teacher never moves."""

from __future__ import annotations

import inspect
import json
import shutil
from pathlib import Path

import pytest
import torch

import deitlab
from deitlab.config import build_config
from deitlab.distill import DistillationLoss
from deitlab.engine import train
from deitlab.engine.checkpoint import read_manifest, write_manifest
from deitlab.engine.optim import build_optimizer, lr_at, param_groups
from deitlab.errors import ConfigError
from deitlab.io import read_checkpoint, save_weights

FAST = [
    "aug.rand_augment=null", "aug.re_prob=0", "aug.crop_scale=null", "aug.eval_crop_pct=1", "train.progress=false",
    "model.kwargs.depth=1", "model.kwargs.embed_dim=32", "model.kwargs.num_heads=2", "optim.warmup_epochs=0.5",
    "model.drop_path_rate=0.1", "data.test_at_end=false",
]  # fmt: skip


def _cfg(tmp: Path, *extra: str, name: str = "run"):
    return build_config(
        overrides=[
            "model.name=deit_micro_distilled_patch4_28", "data.dataset=synthetic", "data.batch_size=32",
            "data.limit_train=256", "data.limit_eval=64", "train.epochs=2", f"train.output_dir={tmp / name}", *FAST,
            *extra,
        ]
    )  # fmt: skip


def copy_run_cut_at(full: Path, part: Path, step: int) -> None:
    """Copy run ``full`` to ``part`` as if it had died right after its checkpoint at ``step``: later checkpoints and
    their manifest entries are gone."""
    entries = read_manifest(full)
    shutil.copytree(full, part)
    write_manifest(part, [e for e in entries if e.step <= step])
    for e in entries:
        if e.step > step:
            (part / "checkpoints" / e.file).unlink()


def test_lr_schedule_is_a_pure_function_of_the_step() -> None:
    kw = dict(base_lr=1e-3, total_steps=100, warmup_steps=10, warmup_lr=1e-6, min_lr=1e-5)
    assert lr_at(0, **kw) == pytest.approx(1e-6)
    assert lr_at(5, **kw) == pytest.approx(1e-6 + (1e-3 - 1e-6) / 2)
    assert lr_at(10, **kw) == pytest.approx(1e-3)
    assert lr_at(55, **kw) == pytest.approx(1e-5 + 0.5 * (1e-3 - 1e-5))  # half-way down the cosine
    assert lr_at(100, **kw) == pytest.approx(1e-5)
    steps = [lr_at(s, **kw) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(steps, steps[1:]))


def test_no_weight_decay_on_norms_biases_tokens_and_pos_embed() -> None:
    model = deitlab.create_model("deit_micro_distilled_patch4_28")
    decay, no_decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    exempt = {names[id(p)] for p in no_decay["params"]}
    assert {"cls_token", "dist_token", "pos_embed", "norm.weight", "blocks.0.attn.qkv.bias"} <= exempt
    assert all(names[id(p)].endswith("weight") and p.ndim > 1 for p in decay["params"])
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    opt = build_optimizer(model, name="adamw", lr=1e-3, weight_decay=0.05)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))


@pytest.mark.slow
def test_training_on_real_data_lowers_the_loss(tmp_path: Path) -> None:
    root = Path("/usr/share/datasets/fashion-mnist")
    dataset = "fashion_mnist" if root.is_dir() else "digits"
    cfg = build_config(
        overrides=[
            "model.name=vit_c_micro_distilled_28", f"data.dataset={dataset}", "data.batch_size=64",
            "data.limit_train=1536", "data.limit_eval=500", "train.epochs=3", "optim.lr=2e-3", "optim.scale_lr=false",
            "aug.mixup=0", "aug.cutmix=0", f"train.output_dir={tmp_path / 'real'}", "model.img_size=28",
            *[o for o in FAST if not o.startswith(("model.kwargs", "aug.crop_scale"))],
            "aug.crop_scale=[0.9, 1.0]", "model.kwargs.depth=2",
        ]
    )  # fmt: skip
    result = train(cfg)
    losses = [r["train_loss"] for r in result.history]
    assert losses[-1] < 0.8 * losses[0], losses
    assert result.final["acc"] > 40.0  # 10 classes: chance is 10%
    rows = [json.loads(line) for line in (tmp_path / "real" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert (tmp_path / "real" / "summary.csv").read_text().count("\n") == 4
    state, meta = read_checkpoint(tmp_path / "real" / "model.safetensors")
    assert meta["model"] == "vit_c_micro_distilled_28" and "dist_token" in state


def test_resume_reproduces_the_uninterrupted_run_exactly(tmp_path: Path) -> None:
    full = _cfg(tmp_path, "train.checkpoint_every_steps=3", "train.keep_last=20", "aug.mixup=0.8", "aug.cutmix=1.0",
                name="full")  # fmt: skip
    train(full)
    final = read_checkpoint(tmp_path / "full" / "model.safetensors")[0]
    entries = read_manifest(tmp_path / "full")
    assert len(entries) >= 5  # every 3 steps + epoch ends
    # Pretend the run died right after a mid-epoch checkpoint: keep the run dir only up to it.
    cut = next(e for e in entries if e.step % 8 != 0 and e.step > 8)  # inside the second epoch (8 steps/epoch)
    part = tmp_path / "part"
    copy_run_cut_at(tmp_path / "full", part, cut.step)
    resumed = build_config(overrides=[f"train.resume={part}", "train.epochs=2", "train.progress=false"])
    result = train(resumed)
    again = read_checkpoint(part / "model.safetensors")[0]
    assert final.keys() == again.keys()
    for k in final:
        assert torch.equal(final[k], again[k]), k
    assert [r["epoch"] for r in result.history] == [0, 1]


def test_distillation_run_keeps_teacher_frozen_and_reports_agreement(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The teacher the run actually uses, held in memory: no gradient reaches it, its weights and BN stats stay."""
    path = tmp_path / "teacher.safetensors"
    save_weights(deitlab.create_model("resnet9_w16", in_chans=3, img_size=32, num_classes=10), path)
    used: list[tuple[torch.nn.Module, dict[str, torch.Tensor]]] = []
    real_init = DistillationLoss.__init__

    def spy(self, *args, **kwargs) -> None:  # noqa: ANN001, ANN002, ANN003
        teacher = inspect.signature(real_init).bind(self, *args, **kwargs).arguments["teacher"]
        model = getattr(teacher, "model", teacher)  # FrozenTeacher wraps the module
        used.append((model, {k: v.detach().clone() for k, v in model.state_dict().items()}))
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(DistillationLoss, "__init__", spy)
    cfg = _cfg(tmp_path, "distill.type=soft", "distill.tau=2.0", f"teacher.path={path}", "train.epochs=1")
    result = train(cfg)
    assert "teacher_acc" in result.teacher and "agreement" in result.final
    assert result.history[0]["train_distill"] > 0
    assert len(used) == 1, "the run built no (or several) distillation losses"
    model, before = used[0]
    assert any("running_mean" in k for k in before)  # BatchNorm statistics are part of what must not move
    assert not model.training
    assert all(p.grad is None for p in model.parameters())
    after = model.state_dict()
    moved = [k for k in before if not torch.equal(before[k], after[k].to(before[k].device))]
    assert not moved, f"the teacher changed during the run: {moved[:5]}"


def test_teacher_with_another_class_count_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "t.safetensors"
    save_weights(deitlab.create_model("resnet9_w16", in_chans=3, num_classes=7), path)
    with pytest.raises(ConfigError, match="predicts 7 classes but the dataset has 10"):
        train(_cfg(tmp_path, "distill.type=hard", f"teacher.path={path}"))


def test_refuses_to_overwrite_another_run(tmp_path: Path) -> None:
    train(_cfg(tmp_path, "train.epochs=1", name="x"))
    with pytest.raises(ConfigError, match="already holds a run"):
        train(_cfg(tmp_path, "train.epochs=1", "train.overwrite=false", name="x"))


def test_batch_larger_than_dataset_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="fewer than one batch"):
        train(_cfg(tmp_path, "data.batch_size=512", "data.repeated_aug=3"))


def test_streaming_imagefolder_trains_like_the_in_memory_path(tmp_path: Path) -> None:
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    for split in ("train", "val", "test"):
        for c, color in (("cat", (200, 40, 40)), ("dog", (40, 40, 200))):
            d = tmp_path / "imgs" / split / c
            d.mkdir(parents=True)
            for i in range(12):
                noise = (torch.rand(24, 24, 3, generator=g) * 60).to(torch.uint8).numpy()
                Image.fromarray(noise + torch.tensor(color, dtype=torch.uint8).numpy()).save(d / f"{i}.png")
    common = [
        "model.name=deit_micro_patch4_28", "data.dataset=imagefolder", f"data.path={tmp_path / 'imgs'}",
        "model.img_size=16", "data.batch_size=8", "train.epochs=2", "aug.mixup=0", "aug.cutmix=0",
        "optim.lr=3e-3", "optim.scale_lr=false", *[o for o in FAST if o != "data.test_at_end=false"],
    ]  # fmt: skip
    streamed = train(build_config(overrides=[*common, "data.stream=true", "data.workers=0",
                                             f"train.output_dir={tmp_path / 's'}"]))  # fmt: skip
    memory = train(build_config(overrides=[*common, f"train.output_dir={tmp_path / 'm'}"]))
    assert streamed.final["test_acc"] == memory.final["test_acc"]
    a = read_checkpoint(tmp_path / "s" / "model.safetensors")[0]
    b = read_checkpoint(tmp_path / "m" / "model.safetensors")[0]
    assert all(torch.equal(a[k], b[k]) for k in a)  # same decoded pixels, same order, same updates


def test_resume_after_a_crash_during_the_end_of_epoch_evaluation(tmp_path: Path, monkeypatch) -> None:
    """The last step's checkpoint says 'epoch 0, all steps done'; resuming must evaluate, log and go on."""
    import importlib

    loop_module = importlib.import_module("deitlab.engine.loop")  # where the end-of-epoch evaluation lives

    extra = ("train.checkpoint_every_steps=4", "train.keep_last=20")
    train(_cfg(tmp_path, *extra, name="full"))
    real = loop_module.evaluate

    def crash(*a, **k):  # noqa: ANN002, ANN003
        raise RuntimeError("killed during evaluation")

    monkeypatch.setattr(loop_module, "evaluate", crash)
    with pytest.raises(RuntimeError, match="killed during evaluation"):
        train(_cfg(tmp_path, *extra, name="crashed"))
    assert read_manifest(tmp_path / "crashed")[-1].step == 8  # epoch 0 is 8 steps: all done, not evaluated
    monkeypatch.setattr(loop_module, "evaluate", real)
    result = train(build_config(overrides=[f"train.resume={tmp_path / 'crashed'}", "train.epochs=2",
                                           "train.progress=false"]))  # fmt: skip
    assert [r["epoch"] for r in result.history] == [0, 1]
    a = read_checkpoint(tmp_path / "full" / "model.safetensors")[0]
    b = read_checkpoint(tmp_path / "crashed" / "model.safetensors")[0]
    assert all(torch.equal(a[k], b[k]) for k in a)
