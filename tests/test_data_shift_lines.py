"""RandAugment's translations and shears as 1-D line shifts (``shift_lines``): PIL's bicubic and bilinear, fills,
integer shifts, and a batch that mixes them with rotations (which keep ``grid_sample``)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from deitlab.data import apply_op
from deitlab.data.ops import shift_lines
from deitlab.data.rand_ops import warp_pil_affine
from deitlab.errors import ConfigError
from test_data_randaugment import batch, fill, from_pil, pil_images

# PIL affine data of timm's ops at magnitude m, sign s (auto_augment.py)
MATRICES = {
    "ShearX": lambda i, m, s: (1, s * m / 10 * 0.3, 0, 0, 1, 0),
    "ShearY": lambda i, m, s: (1, 0, 0, s * m / 10 * 0.3, 1, 0),
    "TranslateXRel": lambda i, m, s: (1, 0, s * m / 10 * 0.45 * i.size[0], 0, 1, 0),
    "TranslateYRel": lambda i, m, s: (1, 0, 0, 0, 1, s * m / 10 * 0.45 * i.size[1]),
}


@pytest.mark.parametrize("name", sorted(MATRICES))
@pytest.mark.parametrize("c", [3, 1])
def test_bicubic_shifts_match_pil(name: str, c: int) -> None:
    # PIL's Image.transform bicubic is the a = -1 cubic; torch's grid_sample (a = -0.75) differed by up to 25 levels
    x = batch(c)
    for m, s in ((3.0, 1.0), (7.0, -1.0), (9.5, 1.0)):
        ours = apply_op(name, x, m, s, interpolation="bicubic").int()
        ref = [i.transform(i.size, Image.AFFINE, MATRICES[name](i, m, s), resample=Image.BICUBIC, fillcolor=fill(i))
               for i in pil_images(x)]  # fmt: skip
        diff = (ours - from_pil(ref, c).int()).abs()
        assert diff.max() <= 1, (name, m, s)
        assert (diff > 0).float().mean() < 0.01, (name, m, s)


@settings(max_examples=40, deadline=None)
@given(shift=st.integers(-12, 12), dim=st.sampled_from([2, 3]), interp=st.sampled_from(["bilinear", "bicubic"]))
def test_integer_shift_moves_pixels_and_fills_the_rest(shift: int, dim: int, interp: str) -> None:
    x = batch(3, b=2, h=9, w=11)
    n, lines = x.shape[dim], x.shape[5 - dim]
    out = shift_lines(x, torch.full((2, lines), float(shift)), dim, interpolation=interp, fill=torch.tensor([1, 2, 3]))
    for p in range(n):
        got = out.select(dim, p)
        if 0 <= p + shift < n:
            assert torch.equal(got, x.select(dim, p + shift))
        else:
            assert bool((got == torch.tensor([1, 2, 3]).view(1, 3, 1)).all())


def test_a_mixed_batch_equals_each_row_alone() -> None:
    x = batch(3, b=6, h=20, w=24, seed=3)
    rot = math.radians(17)
    matrices = torch.tensor([
        [[1, 0.2, 0], [0, 1, 0]],  # shear x
        [[math.cos(rot), math.sin(rot), -2], [-math.sin(rot), math.cos(rot), 5]],  # rotation
        [[1, 0, 0], [-0.25, 1, 3.5]],  # shear y with a shift
        [[1, 0, -4.3], [0, 1, 0]],  # translate x
        [[1, 0, 0], [0, 1, 0]],  # identity
        [[1, 0, 0], [0, 1, 6.6]],  # translate y
    ], dtype=torch.float32)  # fmt: skip
    colour = torch.tensor([9.0, 99.0, 199.0])
    for interp in ("bilinear", "bicubic", "nearest"):
        both = warp_pil_affine(x, matrices, colour, interp)
        alone = torch.cat([warp_pil_affine(x[i : i + 1], matrices[i : i + 1], colour, interp) for i in range(6)])
        assert torch.equal(both, alone), interp
        inplace = x.clone()
        assert warp_pil_affine(inplace, matrices, colour, interp, out=inplace) is inplace
        assert torch.equal(inplace, both), interp
        grouped = [0, 3, 4, 2, 5, 1]  # each kind's rows in one run, as RandAugment sorts them (views, in place)
        inplace = x[grouped].clone()
        warp_pil_affine(inplace, matrices[grouped], colour, interp, out=inplace)
        assert torch.equal(inplace, both[grouped]), interp
    assert torch.equal(both[4], x[4])
    # every row against PIL's transform (the 1-D rows also at the edges, where grid_sample's float grid was off)
    lines = warp_pil_affine(x, matrices, colour, "bilinear").int()
    ref = [im.transform(im.size, Image.AFFINE, tuple(matrices[i].flatten().tolist()), resample=Image.BILINEAR,
                        fillcolor=(9, 99, 199)) for i, im in enumerate(pil_images(x))]  # fmt: skip
    assert (lines - from_pil(ref, 3).int()).abs().max() <= 1


def test_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="dim=1"):
        shift_lines(batch(1), torch.zeros(3, 18), 1)
    with pytest.raises(ConfigError, match="nearest"):
        shift_lines(batch(1), torch.zeros(3, 18), 3, interpolation="nearest")
