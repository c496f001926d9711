"""The teacher cache (issue 11): remembered logits equal the teacher's, the teacher runs only on images it has not
seen, the memory cap holds, and ``distill.cache_teacher`` switches it on exactly where views repeat."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import deitlab
from deitlab.config import build_config
from deitlab.data.augment import TrainAugment
from deitlab.distill import CachedTeacher, FrozenTeacher
from deitlab.distill.teacher import ENTRY_OVERHEAD
from deitlab.engine import train
from deitlab.engine.builders import use_teacher_cache
from deitlab.engine.checkpoint import read_manifest
from deitlab.io import read_checkpoint, save_weights
from test_engine import _cfg, copy_run_cut_at


class CountingTeacher:
    """A deterministic 'teacher' (a fixed linear map) that counts the images it is asked about."""

    def __init__(self, in_features: int = 12, classes: int = 5) -> None:
        self.w = torch.randn(in_features, classes, generator=torch.Generator().manual_seed(0))
        self.seen = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.seen += x.shape[0]
        return x.reshape(x.shape[0], -1) @ self.w


def _pool(n: int = 10) -> torch.Tensor:
    return torch.randn(n, 3, 2, 2, generator=torch.Generator().manual_seed(1))


@settings(max_examples=30, deadline=None)
@given(st.lists(st.lists(st.integers(0, 9), min_size=1, max_size=8), min_size=1, max_size=6))
def test_cached_logits_equal_the_teachers_and_each_image_is_computed_once(batches: list[list[int]]) -> None:
    pool, teacher = _pool(), CountingTeacher()
    cached = CachedTeacher(teacher)  # type: ignore[arg-type]
    for idx in batches:
        x = pool[idx]
        torch.testing.assert_close(cached(x), x.reshape(len(idx), -1) @ teacher.w)
    distinct = len({i for idx in batches for i in idx})
    calls_for_new = sum(len(idx) for idx in batches) - cached.hits
    assert cached.misses == calls_for_new
    assert len(cached) == distinct
    # the teacher saw each distinct image at most as often as it appeared in the batch that first held it
    assert distinct <= teacher.seen <= distinct + sum(len(idx) - len(set(idx)) for idx in batches)


def test_a_repeated_epoch_never_calls_the_teacher() -> None:
    pool, teacher = _pool(), CountingTeacher()
    cached = CachedTeacher(teacher)  # type: ignore[arg-type]
    cached(pool[:6])
    cached(pool[6:])
    seen = teacher.seen
    out = cached(pool[[3, 1, 7, 0]])
    assert teacher.seen == seen == 10
    torch.testing.assert_close(out, pool[[3, 1, 7, 0]].reshape(4, -1) @ teacher.w)
    assert "ran on 10 of 14 training images (29% answered from memory" in cached.summary()


def test_a_mirrored_image_is_another_image() -> None:
    pool, teacher = _pool(), CountingTeacher()
    cached = CachedTeacher(teacher)  # type: ignore[arg-type]
    cached(pool)
    out = cached(pool.flip(-1))
    assert teacher.seen == 20
    torch.testing.assert_close(out, pool.flip(-1).reshape(10, -1) @ teacher.w)


def test_the_memory_cap_stops_growth_but_not_answers() -> None:
    pool, teacher = _pool(), CountingTeacher()
    cached = CachedTeacher(teacher, max_bytes=6 * (5 * 4 + ENTRY_OVERHEAD))  # room for six images of 5 logits
    cached(pool[:4])
    cached(pool[4:])  # would make ten: not remembered
    assert len(cached) == 4
    out = cached(pool)
    torch.testing.assert_close(out, pool.reshape(10, -1) @ teacher.w)
    assert teacher.seen == 4 + 6 + 6


def test_real_teacher_answers_from_memory_match_a_fresh_forward() -> None:
    torch.manual_seed(0)
    frozen = FrozenTeacher(deitlab.create_model("resnet9_w16", in_chans=1, num_classes=10), input_size=None)
    cached = CachedTeacher(frozen)
    x = torch.randn(16, 1, 32, 32)
    cached(x[:8])
    mixed = cached(x)  # half remembered, half fresh
    torch.testing.assert_close(mixed, frozen(x), rtol=1e-5, atol=1e-5)
    assert cached.hits == 8 and cached.misses == 16


AUTO = ["distill.type=hard", "teacher.model=resnet9_w16"]


@pytest.mark.parametrize(
    ("extra", "device", "expected"),
    [
        ([], "cpu", True),  # the FAST settings: no crop, RandAugment or erasing; flips only
        (["aug.crop_scale=[0.5,1.0]"], "cpu", False),
        (["aug.rand_augment=rand-m9-mstd0.5"], "cpu", False),
        (["aug.re_prob=0.25"], "cpu", False),
        ([], "cuda", False),
        (["distill.cache_teacher=always", "aug.re_prob=0.25"], "cuda", True),
        (["distill.cache_teacher=never"], "cpu", False),
        (["distill.type=none"], "cpu", False),
    ],
)
def test_auto_caches_only_where_views_repeat(tmp_path: Path, extra: list[str], device: str, expected: bool) -> None:
    cfg = _cfg(tmp_path, *AUTO, *extra)
    a = cfg.aug
    aug = TrainAugment(img_size=28, mean=(0.5,), std=(0.5,), scale=a.crop_scale, hflip=a.hflip,
                       rand_augment=a.rand_augment, re_prob=a.re_prob)  # fmt: skip
    got = use_teacher_cache(cfg, aug, mixing=False, per_image=False, device=torch.device(device))
    assert got is expected
    assert use_teacher_cache(cfg, aug, mixing=True, per_image=False, device=torch.device(device)) is (
        expected and "distill.cache_teacher=always" in extra
    )


def test_cached_and_uncached_runs_train_the_same_student(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """fp32, flips on: the teacher's answers from memory equal fresh ones, so the two runs end with the same
    weights (up to the last bits a batch's composition can move a convolution's output by)."""
    path = tmp_path / "teacher.safetensors"
    torch.manual_seed(0)
    save_weights(deitlab.create_model("resnet9_w16", in_chans=3, img_size=28, num_classes=10), path)
    common = ["distill.type=hard", f"teacher.path={path}", "train.precision=fp32", "train.epochs=3", "aug.mixup=0",
              "aug.cutmix=0"]  # fmt: skip
    results, summaries = {}, {}
    for mode in ("auto", "never"):
        with caplog.at_level("INFO", logger="deitlab.engine.train"):
            results[mode] = train(_cfg(tmp_path, *common, f"distill.cache_teacher={mode}", name=mode))
        summaries[mode] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("teacher cache:")]
        caplog.clear()
    assert summaries["never"] == []
    reused = [row["teacher_cache_reused"] for row in results["auto"].history]
    assert "teacher_cache_reused" not in results["never"].history[0]
    assert reused[0] == 0.0 and reused[0] < reused[1] < reused[2] < 100.0  # flips: more views seen each epoch
    # 3 epochs of 256 images, flips at p=0.5: at most 512 distinct views among the 768 the student saw
    ran, total = re.search(r"ran on ([\d,]+) of ([\d,]+)", summaries["auto"][0]).groups()  # type: ignore[union-attr]
    assert int(total.replace(",", "")) == 768
    assert 256 <= int(ran.replace(",", "")) <= 512
    for a, b in zip(results["auto"].history, results["never"].history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["agreement"] == pytest.approx(b["agreement"], abs=1e-9)


def test_resume_with_the_teacher_cache_reproduces_the_uninterrupted_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The cache is not saved in checkpoints: a resumed run asks the teacher again for the images it remembered.
    With hard distillation its argmax labels are the same, so the resumed run ends with identical weights."""
    path = tmp_path / "teacher.safetensors"
    torch.manual_seed(0)
    save_weights(deitlab.create_model("resnet9_w16", in_chans=3, img_size=28, num_classes=10), path)
    full = _cfg(tmp_path, "distill.type=hard", f"teacher.path={path}", "train.precision=fp32", "aug.mixup=0",
                "aug.cutmix=0", "train.checkpoint_every_steps=3", "train.keep_last=20", name="full")  # fmt: skip
    with caplog.at_level("INFO", logger="deitlab.engine.train"):
        train(full)
    assert "teacher cache: the teacher ran on" in caplog.text  # the cache was on
    cut = next(e for e in read_manifest(tmp_path / "full") if e.step % 8 != 0 and e.step > 8)  # inside epoch 2
    copy_run_cut_at(tmp_path / "full", tmp_path / "part", cut.step)
    train(build_config(overrides=[f"train.resume={tmp_path / 'part'}", "train.epochs=2", "train.progress=false"]))
    final = read_checkpoint(tmp_path / "full" / "model.safetensors")[0]
    again = read_checkpoint(tmp_path / "part" / "model.safetensors")[0]
    for k in final:
        assert torch.equal(final[k], again[k]), k
