"""The engine hooks issue 10's experiments need: ``train_teacher_disagree`` per epoch (counts, resumed exactly)
and ``data.limit_train_mode=stratified`` (a seeded, class-balanced training subset)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

import deitlab
from deitlab.config import build_config
from deitlab.data import Mixup
from deitlab.distill.losses import DistillationLoss, LossParts, cross_entropy, teacher_disagreement
from deitlab.engine import train
from deitlab.engine.builders import build_augment, build_data, build_teacher, stratified_indices
from deitlab.engine.checkpoint import read_manifest, write_manifest
from deitlab.engine.state import EpochSums
from deitlab.errors import ConfigError
from deitlab.io import save_weights


# ---- train_teacher_disagree ------------------------------------------------------------------------------------
def test_teacher_disagreement_counts_argmax_mismatches_by_hand() -> None:
    teacher = torch.tensor([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 5.0], [1.0, 2.0, 0.0]])  # argmax 0 1 2 1
    assert int(teacher_disagreement(teacher, torch.tensor([0, 1, 2, 1]))) == 0
    assert int(teacher_disagreement(teacher, torch.tensor([0, 2, 2, 0]))) == 2
    # Mixed targets: the class with the larger weight (0.7·[row] + 0.3·[reversed row]).
    mixed = torch.tensor([[0.7, 0.3, 0.0], [0.3, 0.0, 0.7], [0.0, 0.3, 0.7], [0.3, 0.7, 0.0]])  # argmax 0 2 2 1
    assert int(teacher_disagreement(teacher, mixed)) == 1
    # Label smoothing ε=0.1 over K=3 (1-ε)·t + ε/K keeps every argmax: same count.
    assert int(teacher_disagreement(teacher, 0.9 * mixed + 0.1 / 3)) == 1


def test_the_loss_reports_the_count_only_when_a_teacher_runs() -> None:
    teacher_logits = torch.tensor([[3.0, 0.0], [0.0, 3.0], [3.0, 0.0]])
    loss = DistillationLoss(cross_entropy, lambda x: teacher_logits, distillation_type="hard", alpha=0.5, tau=1.0)
    parts = loss(torch.zeros(3, 1), torch.zeros(3, 2, requires_grad=True), torch.tensor([0, 0, 1]))
    assert int(parts.teacher_disagree) == 2
    plain = DistillationLoss(cross_entropy, None, distillation_type="none", alpha=0.5, tau=1.0)
    assert plain(torch.zeros(3, 1), torch.zeros(3, 2), torch.tensor([0, 0, 1])).teacher_disagree is None


def test_epoch_sums_count_views_and_survive_a_checkpoint_round_trip() -> None:
    sums = EpochSums()
    one = torch.ones(())
    sums.add(LossParts(one, one, one, torch.tensor(3)), 8)
    sums.add(LossParts(one, one, one), 8)  # a step without teacher: no views counted
    sums.add(LossParts(one, one, one, torch.tensor(1)), 8)
    assert (sums.teacher_disagree, sums.teacher_views, sums.n) == (4, 16, 24)
    assert EpochSums(**dataclasses.asdict(sums)) == sums
    old = {k: v for k, v in dataclasses.asdict(sums).items() if not k.startswith("teacher_")}
    assert EpochSums(**old).teacher_views == 0  # checkpoints written before the field existed still load


def _teacher(tmp_path: Path) -> Path:
    path = tmp_path / "teacher.safetensors"
    torch.manual_seed(1)
    save_weights(deitlab.create_model("resnet9_w16", in_chans=3, img_size=32, num_classes=10), path)
    return path


def _cfg(tmp_path: Path, name: str, *extra: str):
    return build_config(overrides=[
        "model.name=deit_micro_distilled_patch4_28", "model.kwargs.depth=1", "model.kwargs.embed_dim=32",
        "model.kwargs.num_heads=2", "data.dataset=synthetic", "data.limit_train=64", "data.limit_eval=32",
        "data.batch_size=16", "data.test_at_end=false", "train.epochs=1", "train.progress=false",
        "aug.rand_augment=null", "aug.re_prob=0", "aug.crop_scale=null", "aug.hflip=0", "aug.mixup=0", "aug.cutmix=0",
        "aug.eval_crop_pct=1", "distill.type=hard", f"teacher.path={_teacher(tmp_path)}",
        f"train.output_dir={tmp_path / name}", *extra,
    ])  # fmt: skip


@pytest.mark.slow  # two short trainings
def test_disagreement_without_augmentation_is_the_teachers_training_error(tmp_path: Path) -> None:
    """No crop, flip, erasing or mixing: each view is the image itself, so the logged figure must equal the
    (untrained, hence mostly wrong) teacher's error on the 64 training images, counted independently here."""
    cfg = _cfg(tmp_path, "run")
    result = train(cfg)
    data = build_data(cfg)
    train_aug = build_augment(cfg, data)[0]
    teacher = build_teacher(cfg, data, torch.device("cpu"))
    x = train_aug(data.train.images, torch.Generator().manual_seed(0))
    wrong = int((teacher(x).argmax(-1) != data.train.labels).sum())
    assert 0 < wrong < 64
    assert result.history[0]["train_teacher_disagree"] == pytest.approx(100.0 * wrong / 64)
    logged = json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[0])
    assert logged["train_teacher_disagree"] == pytest.approx(100.0 * wrong / 64)
    no_teacher = train(_cfg(tmp_path, "plain", "distill.type=none"))
    assert "train_teacher_disagree" not in no_teacher.history[0]


@pytest.mark.slow  # two short trainings
def test_disagreement_resumes_exactly_from_a_mid_epoch_checkpoint(tmp_path: Path) -> None:
    extra = ("aug.mixup=0.8", "aug.cutmix=1.0", "train.checkpoint_every_steps=3",
             "train.keep_last=20")  # fmt: skip
    train(_cfg(tmp_path, "full", *extra))
    full = json.loads((tmp_path / "full" / "log.jsonl").read_text().splitlines()[0])
    part = tmp_path / "part"
    shutil.copytree(tmp_path / "full", part)
    entries = read_manifest(part)
    keep = [e for e in entries if e.step == 3]
    write_manifest(part, keep)
    for e in entries:
        if e.step != 3:
            (part / "checkpoints" / e.file).unlink()
    resumed = train(build_config(overrides=[f"train.resume={part}", "train.progress=false"]))
    assert resumed.history[0]["train_teacher_disagree"] == full["train_teacher_disagree"]
    assert 0 < full["train_teacher_disagree"] < 100


def test_mixup_targets_argmax_is_the_heavier_label() -> None:
    """The engine's targets under Mixup are ``lam·smooth(y) + (1-lam)·smooth(y_rev)``: argmax y iff lam > ½."""
    mix = Mixup(num_classes=4, mixup_alpha=1.0, cutmix_alpha=0.0, prob=1.0, label_smoothing=0.1)
    labels = torch.tensor([0, 1, 2, 3])
    x, targets = mix(torch.zeros(4, 1, 2, 2), labels, torch.Generator().manual_seed(0))
    lam = float(targets[0, 0] - 0.1 / 4) / 0.9
    expected = labels if lam > 0.5 else labels.flip(0)
    assert torch.equal(targets.argmax(-1), expected)


# ---- stratified subsets ----------------------------------------------------------------------------------------
def test_stratified_indices_balance_classes_and_depend_only_on_the_seed() -> None:
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 12)
    idx = stratified_indices(labels, 24, seed=0)
    assert torch.bincount(labels[idx]).tolist() == [8, 8, 8]
    assert torch.equal(idx, idx.sort().values) and len(set(idx.tolist())) == 24
    odd = stratified_indices(labels, 41, seed=0)
    assert torch.bincount(labels[odd]).tolist() == [15, 14, 12]  # class 2 has only 12: the rest is shared
    assert torch.bincount(labels[stratified_indices(labels, 11, seed=0)]).tolist() == [4, 4, 3]
    assert set(idx.tolist()) <= set(odd.tolist())  # a smaller subset is contained in a larger one
    assert torch.equal(stratified_indices(labels, 24, seed=0), idx)
    assert not torch.equal(stratified_indices(labels, 24, seed=1), idx)
    assert len(stratified_indices(labels, 1000, seed=0)) == len(labels)


def test_build_data_applies_the_mode(tmp_path: Path) -> None:
    base = ["data.dataset=synthetic", "data.limit_train=40", f"train.output_dir={tmp_path}"]
    first = build_data(build_config(overrides=base))
    ref = build_data(build_config(overrides=["data.dataset=synthetic"]))
    assert torch.equal(first.train.labels, ref.train.labels[:40])  # default: today's behaviour
    strat = build_data(build_config(overrides=[*base, "data.limit_train_mode=stratified"]))
    assert torch.bincount(strat.train.labels, minlength=10).tolist() == [4] * 10
    other = build_data(build_config(overrides=[*base, "data.limit_train_mode=stratified", "data.limit_train_seed=3"]))
    assert not torch.equal(strat.train.images, other.train.images)
    seeded = build_data(build_config(overrides=[*base, "data.limit_train_mode=stratified", "train.seed=5"]))
    assert torch.equal(strat.train.images, seeded.train.images)  # the training seed does not move the subset
    with pytest.raises(ConfigError, match="limit_train_mode"):
        build_config(overrides=["data.limit_train_mode=random"])


def _sum_worker(rank: int, init: str, out: str) -> None:
    import torch.distributed as dist

    from deitlab.engine.distributed import DistInfo, sum_across

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        total = sum_across([3.0 + rank, 10.0 * (rank + 1)], DistInfo(rank=rank, world_size=2))
        Path(f"{out}.{rank}").write_text(json.dumps(total))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two processes
def test_disagreement_counts_are_summed_across_processes(tmp_path: Path) -> None:
    """Each rank counts its own views; the logged share must use the sums over ranks (gloo, 2 processes)."""
    import torch.multiprocessing as mp

    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(_sum_worker, args=(init, str(tmp_path / "sum")), nprocs=2, join=True)
    for rank in (0, 1):
        assert json.loads((tmp_path / f"sum.{rank}").read_text()) == [7.0, 30.0]  # (3 + 4), (10 + 20)
