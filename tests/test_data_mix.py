"""Mixup / CutMix: soft targets, smoothing values, pasted-area lambda, odd and tiny batches."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from deitlab.data import Mixup, one_hot_smooth
from deitlab.data.mix import _swap_pairs_
from deitlab.errors import ConfigError


def data(b=6, k=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3, 10, 12, generator=g), torch.randint(0, k, (b,), generator=g)


def test_one_hot_smooth_exact_values():
    t = one_hot_smooth(torch.tensor([2, 0]), 4, 0.1)
    assert torch.allclose(t[0], torch.tensor([0.025, 0.025, 0.925, 0.025]))
    assert torch.allclose(t.sum(1), torch.ones(2))
    assert torch.equal(one_hot_smooth(torch.tensor([1]), 3, 0.0), torch.tensor([[0.0, 1.0, 0.0]]))
    with pytest.raises(ConfigError, match="labels must be in 0..3"):
        one_hot_smooth(torch.tensor([4]), 4, 0.1)


@pytest.mark.parametrize("seed", range(6))
def test_targets_rows_sum_to_one_and_match_lambda(seed):
    x, y = data(seed=seed)
    mix = Mixup(num_classes=5, mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1)
    xm, t = mix(x, y, seed)
    assert t.shape == (6, 5) and torch.allclose(t.sum(1), torch.ones(6))
    lam = mix.last_lam
    ref = lam * one_hot_smooth(y, 5, 0.1) + (1 - lam) * one_hot_smooth(y.flip(0), 5, 0.1)
    assert torch.allclose(t, ref)
    if mix.last_mode == "mixup":
        assert torch.allclose(xm, lam * x + (1 - lam) * x.flip(0), atol=1e-6)


def test_cutmix_lambda_is_pasted_area_fraction():
    x, y = data(b=4)
    mix = Mixup(num_classes=5, mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.0)
    for seed in range(20):
        xm, t = mix(x, y, seed)
        assert mix.last_mode == "cutmix"
        pasted = (xm != x).any(dim=1)  # (B, H, W): pixels taken from the partner image
        frac = pasted[0].float().mean().item()
        assert abs((1 - mix.last_lam) - frac) < 1e-6
        assert torch.equal(pasted[0], pasted[1])  # one box for the whole batch
        lam = mix.last_lam
        assert torch.allclose(t, lam * one_hot_smooth(y, 5) + (1 - lam) * one_hot_smooth(y.flip(0), 5))


def test_prob_zero_changes_nothing_and_input_untouched():
    x, y = data()
    keep = x.clone()
    xm, t = Mixup(num_classes=5, prob=0.0, label_smoothing=0.1)(x, y, 0)
    assert torch.equal(xm, x) and torch.allclose(t, one_hot_smooth(y, 5, 0.1))
    Mixup(num_classes=5)(x, y, 1)
    assert torch.equal(x, keep)
    off = Mixup(num_classes=5)
    off.enabled = False
    assert torch.equal(off(x, y, 0)[0], x) and off.last_mode == "none"


@pytest.mark.parametrize("b", [1, 2, 5, 6, 33])
def test_inplace_equals_out_of_place(b):
    x, y = data(b=b)
    for seed in range(4):  # both mixup and cutmix get drawn
        mix = Mixup(num_classes=5)
        ref, t_ref = mix(x, y, seed)
        x2 = x.clone()
        out, t = mix(x2, y, seed, inplace=True)
        assert out is x2 and torch.allclose(out, ref, atol=1e-6) and torch.equal(t, t_ref)


def test_odd_and_single_batches():
    x, y = data(b=5)
    mix = Mixup(num_classes=5, mixup_alpha=0.8, cutmix_alpha=0.0, label_smoothing=0.0)
    xm, t = mix(x, y, 0)
    assert torch.allclose(xm[2], x[2])  # the middle image pairs with itself
    assert torch.allclose(t[2], one_hot_smooth(y[2:3], 5)[0])
    x1, y1 = data(b=1)
    for m in (mix, Mixup(num_classes=5, mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.1)):
        xm, t = m(x1, y1, 3)
        assert torch.allclose(xm, x1) and torch.allclose(t, one_hot_smooth(y1, 5, m.label_smoothing))


def test_determinism_and_validation():
    x, y = data()
    mix = Mixup(num_classes=5)
    a, b = mix(x, y, torch.Generator().manual_seed(4)), mix(x, y, torch.Generator().manual_seed(4))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    lams = set()
    for s in range(8):
        mix(x, y, s)
        lams.add(round(mix.last_lam, 6))
    assert len(lams) > 4
    for kw in (
        {"mixup_alpha": 0.0, "cutmix_alpha": 0.0},
        {"prob": 2.0},
        {"label_smoothing": 1.0},
        {"mode": "pair"},
        {"num_classes": 0},
    ):
        with pytest.raises(ConfigError):
            Mixup(**{"num_classes": 5, **kw})
    with pytest.raises(ConfigError, match="float"):
        mix(x.to(torch.uint8), y)


@settings(max_examples=25, deadline=None)
@given(b=st.integers(1, 9), y0=st.integers(0, 3), x0=st.integers(0, 3))
def test_swapping_pairs_in_a_strided_box_is_the_batch_reversed(b: int, y0: int, x0: int) -> None:
    x = torch.randn(b, 2, 6, 7)
    want = x.clone()
    want[:, :, y0:5, x0:6] = x[:, :, y0:5, x0:6].flip(0)
    _swap_pairs_(x[:, :, y0:5, x0:6])
    assert torch.equal(x, want)
