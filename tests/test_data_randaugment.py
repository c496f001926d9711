"""RandAugment: every op against PIL (the reference timm uses), config parsing, and the batched plan."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

from deitlab.data import RandAugment, apply_op, parse_rand_augment
from deitlab.data.randaugment import ALL_OPS, RAND_INCREASING_TRANSFORMS, RAND_TRANSFORMS, histogram
from deitlab.errors import ConfigError


def batch(c: int, b: int = 3, h: int = 18, w: int = 22, seed: int = 0) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, (b, c, h, w), dtype=np.uint8)
    a[:, :, :6] = rng.integers(60, 140, (b, c, 6, w))  # a low-contrast band: non-trivial statistics
    return torch.from_numpy(a)


def pil_images(x: torch.Tensor) -> list[Image.Image]:
    arr = x.permute(0, 2, 3, 1).numpy()
    return [Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a) for a in arr]


def from_pil(images: list[Image.Image], c: int) -> torch.Tensor:
    return torch.stack([torch.from_numpy(np.array(i).reshape(i.size[1], i.size[0], c)) for i in images]).permute(
        0, 3, 1, 2
    )


def enhance_inc(m, s):
    return max(0.1, 1 + s * m / 10 * 0.9)


def fill(img):
    return 128 if img.mode == "L" else (128, 128, 128)


# timm's op implementations on PIL with timm's level functions (auto_augment.py), magnitude m, sign s.
PIL_REFS = {
    "AutoContrast": lambda i, m, s: ImageOps.autocontrast(i),
    "Equalize": lambda i, m, s: ImageOps.equalize(i),
    "Invert": lambda i, m, s: ImageOps.invert(i),
    "Posterize": lambda i, m, s: ImageOps.posterize(i, int(m / 10 * 4)),
    "PosterizeIncreasing": lambda i, m, s: ImageOps.posterize(i, 4 - int(m / 10 * 4)),
    "Solarize": lambda i, m, s: ImageOps.solarize(i, min(256, int(m / 10 * 256))),
    "SolarizeIncreasing": lambda i, m, s: ImageOps.solarize(i, 256 - min(256, int(m / 10 * 256))),
    "SolarizeAdd": lambda i, m, s: i.point(
        [min(255, v + min(128, int(m / 10 * 110))) if v < 128 else v for v in range(256)] * len(i.getbands())
    ),
    "Color": lambda i, m, s: ImageEnhance.Color(i).enhance(m / 10 * 1.8 + 0.1),
    "ColorIncreasing": lambda i, m, s: ImageEnhance.Color(i).enhance(enhance_inc(m, s)),
    "Contrast": lambda i, m, s: ImageEnhance.Contrast(i).enhance(m / 10 * 1.8 + 0.1),
    "ContrastIncreasing": lambda i, m, s: ImageEnhance.Contrast(i).enhance(enhance_inc(m, s)),
    "Brightness": lambda i, m, s: ImageEnhance.Brightness(i).enhance(m / 10 * 1.8 + 0.1),
    "BrightnessIncreasing": lambda i, m, s: ImageEnhance.Brightness(i).enhance(enhance_inc(m, s)),
    "Sharpness": lambda i, m, s: ImageEnhance.Sharpness(i).enhance(m / 10 * 1.8 + 0.1),
    "SharpnessIncreasing": lambda i, m, s: ImageEnhance.Sharpness(i).enhance(enhance_inc(m, s)),
    "Rotate": lambda i, m, s: i.rotate(s * m / 10 * 30, resample=Image.BILINEAR, fillcolor=fill(i)),
    "ShearX": lambda i, m, s: i.transform(
        i.size, Image.AFFINE, (1, s * m / 10 * 0.3, 0, 0, 1, 0), resample=Image.BILINEAR, fillcolor=fill(i)
    ),
    "ShearY": lambda i, m, s: i.transform(
        i.size, Image.AFFINE, (1, 0, 0, s * m / 10 * 0.3, 1, 0), resample=Image.BILINEAR, fillcolor=fill(i)
    ),
    "TranslateXRel": lambda i, m, s: i.transform(
        i.size, Image.AFFINE, (1, 0, s * m / 10 * 0.45 * i.size[0], 0, 1, 0), resample=Image.BILINEAR, fillcolor=fill(i)
    ),
    "TranslateYRel": lambda i, m, s: i.transform(
        i.size, Image.AFFINE, (1, 0, 0, 0, 1, s * m / 10 * 0.45 * i.size[1]), resample=Image.BILINEAR, fillcolor=fill(i)
    ),
}


def test_reference_table_covers_every_op():
    assert set(PIL_REFS) == set(ALL_OPS)
    assert set(RAND_INCREASING_TRANSFORMS) <= set(ALL_OPS) and len(RAND_INCREASING_TRANSFORMS) == 15


@pytest.mark.parametrize("name", ALL_OPS)
@pytest.mark.parametrize("c", [3, 1])
def test_op_matches_pil(name, c):
    x = batch(c)
    for m, s in ((3.0, 1.0), (7.0, -1.0), (9.5, 1.0)):
        if name == "Posterize" and int(m / 10 * 4) < 1:
            continue  # Pillow >= 11 rejects bits=0 (we give black, as older Pillow did)
        ours = apply_op(name, x, m, s, interpolation="bilinear").int()
        ref = from_pil([PIL_REFS[name](i, m, s) for i in pil_images(x)], c).int()
        diff = (ours - ref).abs()
        # point ops and blends are exact; bilinear resampling may round differently by one level
        assert diff.max() <= 1, (name, m, s)
        assert (diff > 0).float().mean() < 0.05, (name, m, s)


def test_per_sample_magnitudes_and_signs():
    x = batch(3, b=4)
    m, s = torch.tensor([0.0, 3.0, 6.0, 9.0]), torch.tensor([1.0, -1.0, 1.0, -1.0])
    both = apply_op("Rotate", x, m, s)
    for i in range(4):
        assert torch.equal(both[i], apply_op("Rotate", x[i : i + 1], float(m[i]), float(s[i]))[0])


def test_identities_and_known_values():
    x = batch(3)
    for name in ("Rotate", "ShearX", "TranslateYRel"):
        assert torch.equal(apply_op(name, x, 0.0, interpolation="bicubic"), x)
    assert torch.equal(apply_op("Invert", x, 5.0), 255 - x)
    assert torch.equal(apply_op("PosterizeIncreasing", x, 10.0), torch.zeros_like(x))  # bits 0 -> black
    assert torch.equal(apply_op("SolarizeIncreasing", x, 0.0), x)  # threshold 256: nothing flips
    moved = apply_op("TranslateXRel", x, 10.0, 1.0, fill=(10, 20, 30))  # content moves left by 0.45 * width
    assert bool((moved[:, :, :, -5:] == torch.tensor([10, 20, 30]).view(1, 3, 1, 1)).all())


def test_equalize_known_histogram():
    # 4 levels of 1024 pixels: step = (4096 - 1024) // 255 = 12, lut[v] = (6 + pixels below v) // 12
    vals = torch.tensor([10, 20, 30, 40], dtype=torch.uint8).repeat_interleave(1024).view(1, 1, 64, 64)
    out = apply_op("Equalize", vals, 0.0)
    ref = from_pil([ImageOps.equalize(i) for i in pil_images(vals)], 1)
    assert torch.equal(out, ref)
    assert sorted(out.unique().tolist()) == [0, 85, 171, 255]  # 3078 // 12 = 256 is clipped to 255
    few = vals[:, :, :16, :16].contiguous()  # 256 pixels: step = (256 - 64) // 255 = 0 -> PIL leaves it alone
    assert torch.equal(apply_op("Equalize", few, 0.0), few)
    flat = torch.full((1, 1, 4, 4), 77, dtype=torch.uint8)
    assert torch.equal(apply_op("Equalize", flat, 0.0), flat)  # one level: identity
    assert torch.equal(histogram(vals)[0, 0, [10, 20, 30, 40]], torch.full((4,), 1024))


def test_parse_config_strings():
    cfg = parse_rand_augment("rand-m9-mstd0.5-inc1")
    assert cfg == {
        "num_ops": 2,
        "magnitude": 9.0,
        "prob": 0.5,
        "magnitude_std": 0.5,
        "magnitude_max": 10.0,
        "increasing": True,
    }
    cfg = parse_rand_augment("rand-n3-m12-mmax12-mstd101-p0.7")
    assert (cfg["num_ops"], cfg["magnitude"], cfg["magnitude_max"], cfg["prob"]) == (3, 12.0, 12.0, 0.7)
    assert cfg["magnitude_std"] == float("inf") and cfg["increasing"] is False
    assert RandAugment("rand-m9").ops == RAND_TRANSFORMS
    assert RandAugment("rand-m9-inc1").ops == RAND_INCREASING_TRANSFORMS
    for bad in ("augmix-m9", "rand-m9-q3", "rand-mx", "rand-p1.5"):
        with pytest.raises(ConfigError, match="rand"):
            parse_rand_augment(bad)


def test_magnitude_sampling():
    g = torch.Generator().manual_seed(0)
    m = RandAugment("rand-m9-mstd0.5").sample_magnitudes(20000, g)
    assert abs(m.mean() - 9.0) < 0.05 and 0.4 < m.std() < 0.5  # clamped at 10 trims the upper tail
    assert m.max() <= 10.0
    u = RandAugment("rand-m9-mstd101").sample_magnitudes(20000, g)
    assert u.min() >= 0 and abs(u.mean() - 4.5) < 0.1


def test_batched_plan_equals_per_image_sequence():
    x = batch(3, b=40, seed=1)
    ra = RandAugment("rand-m9-mstd0.5-inc1-n3", interpolation="bilinear", fill=(1, 2, 3))
    layers = ra.plan(40, torch.Generator().manual_seed(3))
    out = ra.apply_plan(x, layers)
    assert not torch.equal(out, x) and torch.equal(x, batch(3, b=40, seed=1))
    for i in range(40):
        ref = x[i : i + 1]
        for choice, apply, mag, sign in layers:
            if apply[i]:
                ref = apply_op(ra.ops[int(choice[i])], ref, float(mag[i]), float(sign[i]), fill=(1, 2, 3))
        assert torch.equal(out[i : i + 1], ref), i


def test_randaugment_determinism_and_probability():
    x = batch(1, b=32)
    ra = RandAugment("rand-m9-mstd0.5-inc1")
    a, b = ra(x, torch.Generator().manual_seed(0)), ra(x, torch.Generator().manual_seed(0))
    assert a.dtype == torch.uint8 and a.shape == x.shape and torch.equal(a, b)
    assert not torch.equal(a, ra(x, torch.Generator().manual_seed(1)))
    assert torch.equal(RandAugment("rand-m9-p0")(x, 0), x)
    changed = (ra(batch(1, b=400), 0) != batch(1, b=400)).flatten(1).any(1).float().mean()
    assert 0.6 < changed < 0.85  # 1 - 0.5 ** 2 = 0.75 get an op, a few ops leave an image unchanged
    inplace = x.clone()
    assert ra(inplace, 0, inplace=True) is inplace and torch.equal(inplace, a)  # int seed 0 = manual_seed(0)
