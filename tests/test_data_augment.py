"""Batched crop/flip, normalisation, eval geometry, random erasing and the Train/Eval pipelines."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from deitlab.data import EvalAugment, TrainAugment, eval_transform, normalize, random_erasing, random_resized_crop_flip
from deitlab.data.augment import rrc_params
from deitlab.data.ops import affine_grid, resize_crops
from deitlab.errors import ConfigError

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def smooth_batch(b=6, c=3, h=20, w=24, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.interpolate(torch.rand(b, c, 4, 4, generator=g), size=(h, w), mode="bilinear")
    return (x * 255).round().to(torch.uint8)


def test_affine_grid_matches_torch():
    theta = torch.randn(3, 2, 3)
    ref = torch.nn.functional.affine_grid(theta, (3, 1, 5, 7), align_corners=False)
    assert torch.allclose(affine_grid(theta, 5, 7), ref, atol=1e-6)


@pytest.mark.parametrize("backend", ["grid", "resize"])
def test_rrc_full_crop_is_identity_and_flip_mirrors(backend):
    x = smooth_batch()
    same = random_resized_crop_flip(
        x, (20, 24), scale=(1, 1), ratio=(24 / 20, 24 / 20), hflip=0.0, backend=backend, generator=0
    )
    assert torch.equal(same, x)
    flipped = random_resized_crop_flip(
        x, (20, 24), scale=(1, 1), ratio=(1.2, 1.2), hflip=1.0, backend=backend, generator=0
    )
    assert torch.equal(flipped, x.flip(3))


def test_rrc_deterministic_per_seed_and_backends_agree():
    x = smooth_batch(b=8, h=32, w=32)
    a = random_resized_crop_flip(x, 16, generator=torch.Generator().manual_seed(1))
    b = random_resized_crop_flip(x, 16, generator=torch.Generator().manual_seed(1))
    c = random_resized_crop_flip(x, 16, generator=torch.Generator().manual_seed(2))
    assert a.dtype == torch.uint8 and a.shape == (8, 3, 16, 16)
    assert torch.equal(a, b) and not torch.equal(a, c)
    grid = random_resized_crop_flip(x, 16, scale=(0.5, 1.0), backend="grid", generator=5)
    resize = random_resized_crop_flip(x, 16, scale=(0.5, 1.0), backend="resize", generator=5)
    assert (grid.float() - resize.float()).abs().mean() < 4  # same boxes; only the filters differ
    f = random_resized_crop_flip(x.float(), 16, scale=(0.5, 1.0), backend="grid", generator=5)  # float in and out
    assert f.dtype == torch.float32 and (f.round() - grid.float()).abs().max() <= 1


def test_rrc_params_follow_torchvision_bounds():
    g = torch.Generator().manual_seed(0)
    top, left, h, w = rrc_params(4000, 30, 40, (0.08, 1.0), (3 / 4, 4 / 3), g)
    assert bool(((top >= 0) & (left >= 0) & (top + h <= 30) & (left + w <= 40)).all())
    area = (h * w).double() / 1200
    assert area.min() >= 0.08 - 0.02 and area.max() <= 1.0
    aspect = w.double() / h.double()
    inside = (aspect >= 3 / 4 - 0.1) & (aspect <= 4 / 3 + 0.1)
    assert inside.float().mean() > 0.99
    # the fallback for an impossible request is the centre crop clamped to the ratio
    top, left, h, w = rrc_params(3, 10, 100, (0.99, 1.0), (1.0, 1.0), g)
    assert h.tolist() == [10] * 3 and w.tolist() == [10] * 3 and left.tolist() == [45] * 3


def test_normalize_values():
    x = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 1, 1, 3).expand(1, 3, 1, 3).contiguous()
    y = normalize(x, MEAN, STD)
    ref = (x.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    assert y.dtype == torch.float32 and torch.allclose(y, ref, atol=1e-5)
    with pytest.raises(ConfigError, match="one per channel"):
        normalize(x, (0.5,), (0.5,))


def test_eval_transform_matches_pil_resize_and_crop():
    x = smooth_batch(b=2, h=40, w=50, seed=3)
    y = eval_transform(x, 28, crop_pct=0.875)  # shorter side -> floor(28 / 0.875) = 32, then centre crop 28
    assert y.shape == (2, 3, 28, 28) and y.dtype == torch.uint8
    img = Image.fromarray(x[0].permute(1, 2, 0).numpy()).resize((40, 32), Image.BICUBIC)
    ref = torch.from_numpy(np.array(img)).permute(2, 0, 1)[:, 2:30, 6:34]
    assert (y[0].int() - ref.int()).abs().max() <= 1
    assert torch.equal(eval_transform(x[:, :, :28, :28], 28, crop_pct=1.0), x[:, :, :28, :28])


def test_random_erasing_boxes_and_probability():
    x = torch.zeros(400, 3, 20, 20)
    out = random_erasing(x.clone(), 1.0, mode="const", generator=0)
    assert torch.equal(out, x)  # const mode erases with zeros, the normalised mean
    ones = torch.ones(400, 3, 20, 20)
    out = random_erasing(ones.clone(), 1.0, mode="const", generator=0)
    erased = (out[:, 0] == 0).float().mean(dim=(1, 2))
    assert (erased > 0).float().mean() > 0.95  # nearly every image got a box (10 tries to fit)
    assert erased.max() <= 1 / 3 + 0.05 and erased[erased > 0].min() >= 0.02 - 0.01
    assert torch.equal(out[:, 0], out[:, 1])  # one box for all channels
    half = random_erasing(ones.clone(), 0.25, mode="pixel", generator=1)
    frac = ((half != 1).flatten(1).any(1)).float().mean()
    assert 0.15 < frac < 0.35
    noisy = half[half != 1]
    assert abs(noisy.mean()) < 0.1 and abs(noisy.std() - 1) < 0.1  # per-pixel N(0, 1)
    assert torch.equal(random_erasing(ones.clone(), 0.0, generator=1), ones)
    with pytest.raises(ConfigError, match="normalised float"):
        random_erasing(torch.zeros(1, 1, 4, 4, dtype=torch.uint8))


def test_random_erasing_count_splits_area():
    ones = torch.ones(300, 1, 32, 32)
    out = random_erasing(ones, 1.0, mode="const", count=3, min_count=3, max_area=0.3, generator=0)
    erased = (out[:, 0] == 0).float().mean(dim=(1, 2))
    assert erased.max() <= 0.3 + 0.05  # three boxes of at most 0.1 each


def test_train_augment_determinism_dtype_range():
    x = smooth_batch(b=16, h=24, w=24)
    aug = TrainAugment(img_size=16, mean=MEAN, std=STD, rand_augment="rand-m9-mstd0.5-inc1", re_prob=0.25)
    a = aug(x, torch.Generator().manual_seed(0))
    b = aug(x, torch.Generator().manual_seed(0))
    c = aug(x, torch.Generator().manual_seed(1))
    assert a.shape == (16, 3, 16, 16) and a.dtype == torch.float32 and a.is_contiguous()
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(x, smooth_batch(b=16, h=24, w=24))  # the input batch is not modified
    lo = (0 - max(MEAN)) / min(STD) - 6  # erasing noise is N(0, 1); pixels are within the normalised range
    hi = (1 - min(MEAN)) / min(STD) + 6
    assert a.min() > lo and a.max() < hi and torch.isfinite(a).all()
    plain = TrainAugment(img_size=24, mean=MEAN, std=STD, scale=None, hflip=0.0, rand_augment=None, re_prob=0.0)
    assert torch.allclose(plain(x, 0), normalize(x, MEAN, STD))
    with pytest.raises(ConfigError, match="uint8"):
        aug(x.float(), 0)


def test_eval_augment_and_options_validated():
    x = smooth_batch(b=2, h=32, w=32)
    ev = EvalAugment(img_size=28, mean=MEAN, std=STD, crop_pct=0.875)
    y = ev(x)
    assert y.shape == (2, 3, 28, 28) and torch.allclose(y, normalize(eval_transform(x, 28, 0.875), MEAN, STD))
    for kw in ({"interpolation": "lanczos"}, {"hflip": 1.5}, {"re_mode": "blur"}, {"rand_augment": "auto-m9"}):
        with pytest.raises(ConfigError):
            TrainAugment(img_size=8, mean=MEAN, std=STD, **kw)
    assert math.isclose(TrainAugment(img_size=8, mean=MEAN, std=STD).rand_augment.fill[0], round(255 * MEAN[0]))


@pytest.mark.parametrize("chans", [3, 1])
def test_crop_resizes_shared_by_threads_equal_one_call_per_crop(chans: int) -> None:
    x = torch.randint(0, 256, (9, chans, 40, 36), dtype=torch.uint8, generator=torch.Generator().manual_seed(5))
    boxes = [(i, 2 * i, 20 + i, 30 - i, i % 2 == 0) for i in range(9)]
    ref = torch.stack([
        (lambda r: r.flip(-1) if fl else r)(
            F.interpolate(x[i : i + 1, :, t : t + h, lft : lft + w], size=(24, 24), mode="bicubic", antialias=True)[0])
        for i, (t, lft, h, w, fl) in enumerate(boxes)
    ])  # fmt: skip
    before = torch.get_num_threads()
    try:
        for threads in (1, 2, 3):
            torch.set_num_threads(threads)
            assert torch.equal(resize_crops(x, boxes, (24, 24), "bicubic"), ref), threads
            assert torch.get_num_threads() == threads  # the caller's setting survives the crop threads
    finally:
        torch.set_num_threads(before)


def test_crop_threads_work_in_a_forked_child() -> None:
    import multiprocessing as mp

    x = torch.randint(0, 256, (4, 3, 30, 30), dtype=torch.uint8)
    boxes = [(0, 0, 30, 30, False)] * 4
    torch.set_num_threads(2)
    want = resize_crops(x, boxes, (16, 16), "bilinear")  # starts the parent's pool
    with mp.get_context("fork").Pool(1) as pool:
        got = pool.apply_async(resize_crops, (x, boxes, (16, 16), "bilinear")).get(timeout=60)
    assert torch.equal(got, want)
