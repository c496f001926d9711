"""Fine-tuning at a new resolution: position embeddings resampled, a new head when the class count differs, a
distilled student started from a plain checkpoint, and a teacher kept at its own resolution."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from safetensors import torch as safetensors_torch

import deitlab
from deitlab.config import build_config
from deitlab.data import ImageSet
from deitlab.distill.teacher import FrozenTeacher, fit_resolution, teacher_input_size
from deitlab.engine import train
from deitlab.engine.build import build_run
from deitlab.engine.builders import Data, build_device, build_teacher
from deitlab.engine.distributed import DistInfo
from deitlab.errors import CheckpointError
from deitlab.io import save_weights
from deitlab.layers import resample_pos_embed
from deitlab.models.weights import load_pretrained, match_distillation_token

SMALL = dict(embed_dim=32, depth=2, num_heads=2, in_chans=3)


def _plain(tmp_path: Path, img_size: int = 32, num_classes: int = 10) -> tuple[torch.nn.Module, Path]:
    model = deitlab.create_model("deit_micro_patch4_28", img_size=img_size, num_classes=num_classes, **SMALL)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()  # distinct values everywhere, so that copies are recognisable
    path = tmp_path / "plain.safetensors"
    save_weights(model, path)
    return model, path


def test_plain_checkpoint_starts_a_distilled_student(tmp_path, caplog):
    plain, path = _plain(tmp_path)
    student = deitlab.create_model("deit_micro_distilled_patch4_28", img_size=48, num_classes=10, **SMALL)
    with caplog.at_level(logging.INFO):
        dropped = load_pretrained(student, path)
    assert dropped == []
    assert torch.equal(student.dist_token, student.cls_token) and torch.equal(student.cls_token, plain.cls_token)
    assert torch.equal(student.head_dist.weight, student.head.weight)
    assert torch.equal(student.head_dist.bias, plain.head.bias)
    pos = student.pos_embed  # (1, 2 + 12*12, D): [cls, dist, grid]
    assert torch.equal(pos[:, 0], plain.pos_embed[:, 0]) and torch.equal(pos[:, 1], plain.pos_embed[:, 0])
    expected = resample_pos_embed(plain.pos_embed.detach(), (12, 12), num_prefix_tokens=1)[:, 1:]
    assert torch.allclose(pos[:, 2:], expected)
    assert torch.equal(student.blocks[1].mlp.fc2.weight, plain.blocks[1].mlp.fc2.weight)
    assert "initialised dist_token" in caplog.text and "resampled pos_embed" in caplog.text
    x = torch.randn(2, 3, 48, 48)
    out = student.eval()(x)
    assert torch.allclose(out.cls_logits, out.dist_logits)  # the two heads start as one


def test_new_class_count_resets_the_heads_and_distilled_to_plain(tmp_path, caplog):
    _, path = _plain(tmp_path, num_classes=10)
    student = deitlab.create_model("deit_micro_distilled_patch4_28", img_size=32, num_classes=5, **SMALL)
    head_before = student.head.weight.clone()
    with caplog.at_level(logging.WARNING):
        dropped = load_pretrained(student, path)
    assert set(dropped) == {"head.weight", "head.bias", "head_dist.weight", "head_dist.bias"}
    assert torch.equal(student.head.weight, head_before) and "new head starts from scratch" in caplog.text
    distilled = deitlab.create_model("deit_micro_distilled_patch4_28", img_size=32, num_classes=10, **SMALL)
    save_weights(distilled, tmp_path / "distilled.safetensors")
    plain = deitlab.create_model("deit_micro_patch4_28", img_size=48, num_classes=10, **SMALL)
    load_pretrained(plain, tmp_path / "distilled.safetensors")
    assert torch.equal(plain.cls_token, distilled.cls_token) and torch.equal(plain.head.weight, distilled.head.weight)
    with pytest.raises(CheckpointError, match="no such weights file"):
        load_pretrained(plain, tmp_path / "missing.safetensors")


def test_match_distillation_token_is_pure_and_leaves_matching_states_alone():
    state = {
        "cls_token": torch.ones(1, 1, 4),
        "pos_embed": torch.arange(12.0).view(1, 3, 4),
        "head.weight": torch.eye(4),
    }
    same, note = match_distillation_token(state, distilled=False)
    assert same is state and note is None
    out, note = match_distillation_token(state, distilled=True)
    assert set(state) == {"cls_token", "pos_embed", "head.weight"}  # the input is untouched
    assert out["pos_embed"].shape == (1, 4, 4) and torch.equal(out["pos_embed"][0, 1], state["pos_embed"][0, 0])
    assert torch.equal(out["head_dist.weight"], torch.eye(4)) and "dist_token" in note


def test_teacher_resolution():
    x = torch.randn(2, 3, 48, 48)
    assert fit_resolution(x, None) is x and fit_resolution(x, 48) is x
    y = fit_resolution(x, 32)
    assert y.shape == (2, 3, 32, 32)
    const = torch.full((1, 3, 48, 48), 0.7)
    assert torch.allclose(fit_resolution(const, 32), torch.full((1, 3, 32, 32), 0.7), atol=1e-5)
    vit = deitlab.create_model("deit_micro_patch4_28", img_size=32, num_classes=10, **SMALL)
    cnn = deitlab.create_model("resnet9_w16", img_size=32, num_classes=10, in_chans=3)
    assert teacher_input_size(vit, None, 48) == 32  # a ViT's grid fixes its input size
    assert teacher_input_size(cnn, None, 48) == 48  # a CNN takes the student's
    assert teacher_input_size(cnn, 40, 48) == 40  # teacher.img_size wins
    seen = []
    vit.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[-1]))
    FrozenTeacher(vit, input_size=32)(x)
    assert seen == [32]


def test_registry_vit_teacher_keeps_its_own_resolution(tmp_path):
    """A ViT teacher file without deitlab metadata (a timm/DeiT state dict) is built at its registry size (28 px
    here) and fed the student's 48 px batches resized, not rebuilt at 48 px with resampled position embeddings."""
    teacher = deitlab.create_model("deit_micro_patch4_28")  # 28 px, 1 channel, 10 classes
    safetensors_torch.save_file({k: v.contiguous() for k, v in teacher.state_dict().items()}, tmp_path / "t.st")
    cfg = build_config(overrides=["distill.type=hard", "teacher.model=deit_micro_patch4_28",
                                  f"teacher.path={tmp_path / 't.st'}"])  # fmt: skip
    images = torch.zeros(4, 1, 48, 48, dtype=torch.uint8)
    data = Data(ImageSet(images, torch.arange(4), [str(i) for i in range(10)], (0.5,), (0.5,), "x"), None, None, 48)
    frozen = build_teacher(cfg, data, torch.device("cpu"))
    assert frozen.input_size == 28 and frozen.model.pos_embed.shape == teacher.pos_embed.shape
    assert torch.equal(frozen.model.pos_embed, teacher.pos_embed)
    assert frozen(torch.randn(2, 1, 48, 48)).shape == (2, 10)
    cfg.teacher.img_size = 48  # asked for explicitly: built at 48 (position embeddings resampled)
    assert build_teacher(cfg, data, torch.device("cpu")).input_size is None


def _run(tmp_path: Path, name: str, *extra: str):
    return build_config(overrides=[
        "data.dataset=synthetic", "data.limit_train=512", "data.limit_eval=128", "data.batch_size=64",
        "data.test_at_end=false", "aug.rand_augment=null", "aug.re_prob=0", "aug.mixup=0", "aug.cutmix=0",
        "model.drop_path_rate=0", "optim.scale_lr=false", "optim.warmup_epochs=0", "train.progress=false",
        "train.device=cpu", f"train.output_dir={tmp_path / name}", *(f"model.kwargs.{k}={v}" for k, v in SMALL.items()),
        *extra,
    ])  # fmt: skip


@pytest.mark.slow
def test_finetune_32_to_48_px_with_a_32_px_teacher_trains(tmp_path, caplog):
    """A tiny ViT trained at 32 px is fine-tuned at 48 px as a distilled student; the teacher (the same 32 px
    model) sees the student's batches resized to 32 px. The fine-tune's loss falls."""
    base = train(_run(tmp_path, "base", "model.name=deit_micro_patch4_28", "model.img_size=32", "train.epochs=4",
                      "optim.lr=3e-3"))  # fmt: skip
    weights = tmp_path / "base" / "model.safetensors"
    cfg = _run(tmp_path, "ft", "model.name=deit_micro_distilled_patch4_28", "model.img_size=48", "train.epochs=3",
               f"model.finetune={weights}", f"teacher.path={weights}", "distill.type=hard", "optim.lr=1e-3",
               "train.overwrite=true")  # fmt: skip
    run = build_run(cfg, device=build_device(cfg), dist=DistInfo())
    assert run.teacher.input_size == 32 and run.model.pos_embed.shape == (1, 2 + 12 * 12, 32)
    assert torch.equal(run.model.dist_token, run.model.cls_token)
    with caplog.at_level(logging.INFO):
        ft = train(cfg)
    assert "initialised dist_token" in caplog.text and "resized to 32 px" in caplog.text
    losses = [r["train_loss"] for r in ft.history]
    assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < losses[0] - 0.05, losses
    assert base.final["acc"] > 30 and ft.teacher["teacher_acc"] > 30  # 10 classes: chance is 10%
    assert ft.final["acc"] > 30
