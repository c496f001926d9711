"""Attention rollout against a two-block example computed by hand, and attention_maps on tiny models."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import deitlab
from deitlab.analysis import attention_maps, attention_rollout


def test_rollout_of_a_two_block_example_by_hand() -> None:
    # Block 1: both tokens attend to token 0.  Â1 = ½A1 + ½I = [[1, 0], [.5, .5]]
    # Block 2: both tokens attend to token 1.  Â2 = ½A2 + ½I = [[.5, .5], [0, 1]]
    # R = Â2 · Â1 = [[.5·1 + .5·.5, .5·0 + .5·.5], [0·1 + 1·.5, 0·0 + 1·.5]] = [[.75, .25], [.5, .5]]
    # (the other order, Â1 · Â2, would give [[.5, .5], [.25, .75]])
    a1 = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])  # (H=1, N=2, N=2)
    a2 = torch.tensor([[[0.0, 1.0], [0.0, 1.0]]])
    r = attention_rollout([a1, a2])
    assert r.tolist() == [[0.75, 0.25], [0.5, 0.5]]


def test_rollout_averages_heads_before_adding_the_residual() -> None:
    # heads identity and swap average to uniform: Â = ½·[[.5, .5], [.5, .5]] + ½I = [[.75, .25], [.25, .75]]
    a = torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [1.0, 0.0]]])
    assert attention_rollout([a]).tolist() == [[0.75, 0.25], [0.25, 0.75]]


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), layers=st.integers(1, 5), n=st.integers(2, 6))
def test_rollout_rows_are_distributions(seed: int, layers: int, n: int) -> None:
    g = torch.Generator().manual_seed(seed)
    maps = [torch.randn(3, n, n, generator=g).softmax(-1) for _ in range(layers)]
    r = attention_rollout(maps)
    assert torch.allclose(r.sum(-1), torch.ones(n, dtype=r.dtype), atol=1e-12)
    assert (r >= 0).all()
    batched = attention_rollout([m[None].expand(2, -1, -1, -1) for m in maps])  # a batch dimension works too
    assert torch.allclose(batched[1], r)


@pytest.mark.parametrize("name", ["deit_micro_patch4_28", "deit_micro_distilled_patch4_28", "deepvit_micro_patch4_28"])
def test_attention_maps_on_tiny_models(name: str) -> None:
    model = deitlab.create_model(name, depth=2).eval()
    m = attention_maps(model, torch.randn(1, 28, 28))
    prefix = model.num_prefix_tokens
    assert m["grid"] == (7, 7) and m["num_prefix_tokens"] == prefix
    assert len(m["attentions"]) == 2 and m["attentions"][0].shape == (4, 49 + prefix, 49 + prefix)
    assert m["cls_attention"].shape == (2, 7, 7) and m["cls_rollout"].shape == (7, 7)
    assert torch.allclose(m["rollout"].sum(-1), torch.ones(49 + prefix), atol=1e-5)
    assert float(m["cls_rollout"].sum()) < 1.0 + 1e-6  # the patch part of a distribution
    assert ("dist_rollout" in m) == ("distilled" in name)
    assert ("applied" in m) == name.startswith("deepvit")


def test_attention_maps_takes_one_image() -> None:
    model = deitlab.create_model("deit_micro_patch4_28", depth=1)
    with pytest.raises(ValueError, match="one image"):
        attention_maps(model, torch.randn(2, 1, 28, 28))
    with pytest.raises(ValueError, match="no attention maps"):
        attention_rollout([])
