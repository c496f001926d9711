"""Attention collapse: cross-layer similarity, entropy and feature-to-final against hand-computed cases, properties
of random maps, and the analysis on tiny plain, distilled and re-attention models."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import deitlab
from deitlab.analysis import (
    attention_collapse,
    attention_entropy,
    capture,
    count_similar_blocks,
    cross_layer_similarity,
    feature_to_final,
)
from deitlab.layers import Attention

TINY = {
    "plain": ("deit_micro_patch4_28", {}),
    "distilled": ("deit_micro_distilled_patch4_28", {}),
    "reattention": ("deepvit_micro_patch4_28", {}),
}


def tiny(kind: str, depth: int = 3) -> torch.nn.Module:
    name, kw = TINY[kind]
    return deitlab.create_model(name, depth=depth, **kw).eval()


def as_map(*heads: list[list[float]]) -> torch.Tensor:
    """(1, H, N, N) from H hand-written N×N maps."""
    return torch.tensor(heads, dtype=torch.float64)[None]


# ---- hand-computed cases -----------------------------------------------------------------------------------------
def test_identical_maps_have_similarity_one() -> None:
    a = as_map([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.3, 0.3, 0.4]])
    m = cross_layer_similarity([a, a.clone()])
    assert m.flatten().tolist() == pytest.approx([1, 1, 1, 1], abs=1e-12)


def test_maps_with_orthogonal_columns_have_similarity_zero() -> None:
    # block 1 = identity, block 2 = swap: column t of one is (1,0) where the other's is (0,1)
    m = cross_layer_similarity([as_map([[1, 0], [0, 1]]), as_map([[0, 1], [1, 0]])])
    assert m[0, 1].item() == pytest.approx(0.0, abs=1e-12)
    assert m[0, 0].item() == m[1, 1].item() == pytest.approx(1.0)


def test_similarity_by_hand_columns_and_heads_are_averaged() -> None:
    # identity vs uniform: each column (1,0) vs (.5,.5) -> cos = 0.5 / (1 * sqrt(0.5)) = 1/sqrt(2)
    m = cross_layer_similarity([as_map([[1, 0], [0, 1]]), as_map([[0.5, 0.5], [0.5, 0.5]])])
    assert m[0, 1].item() == pytest.approx(1 / math.sqrt(2))
    # two heads: one identical (1), one orthogonal (0) -> mean 0.5
    a = as_map([[1, 0], [0, 1]], [[1, 0], [0, 1]])
    b = as_map([[1, 0], [0, 1]], [[0, 1], [1, 0]])
    assert cross_layer_similarity([a, b])[0, 1].item() == pytest.approx(0.5)


def test_uniform_attention_has_entropy_log_n_and_one_hot_zero() -> None:
    n = 5
    uniform = torch.full((2, 3, n, n), 1 / n)
    one_hot = torch.eye(n).expand(2, 3, n, n)
    half = as_map([[0.5, 0.5, 0, 0], [0.25, 0.25, 0.25, 0.25], [1, 0, 0, 0], [0, 0, 0.5, 0.5]])
    # rows: log 2, log 4 = 2 log 2, 0, log 2 -> mean (1 + 2 + 0 + 1) log 2 / 4 = log 2
    ent = attention_entropy([uniform, one_hot, half])
    assert ent == pytest.approx([math.log(n), 0.0, math.log(2)])


def test_similar_blocks_counts_blocks_from_the_second_above_the_threshold() -> None:
    assert count_similar_blocks([0.95, 0.5, 0.91, 0.9], threshold=0.9) == 2  # 0.9 itself is not above
    maps = [as_map([[1, 0], [0, 1]])] * 3 + [as_map([[0, 1], [1, 0]])]
    m = cross_layer_similarity(maps)
    assert count_similar_blocks(m.diagonal(1).tolist()) == 2  # blocks 2 and 3 repeat block 1; block 4 differs


def test_feature_to_final_by_hand() -> None:
    last = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])  # (B=1, N=2, D=2)
    first = torch.tensor([[[1.0, 1.0], [3.0, 0.0]]])  # token 0: cos 1/sqrt(2); token 1: cos 0
    assert feature_to_final([first, last]) == pytest.approx([0.5 / math.sqrt(2), 1.0])


def test_bad_maps_are_refused_with_the_shape() -> None:
    with pytest.raises(ValueError, match=r"\(B, heads, N, N\)"):
        cross_layer_similarity([torch.rand(2, 3, 4)])
    with pytest.raises(ValueError, match="block 1"):
        cross_layer_similarity([torch.rand(1, 2, 3, 3), torch.rand(1, 2, 4, 4)])
    with pytest.raises(ValueError, match="no attention maps"):
        attention_entropy([])


# ---- properties -------------------------------------------------------------------------------------------------
def _random_maps(seed: int, layers: int, b: int, h: int, n: int, signed: bool = False) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = [torch.randn(b, h, n, n, generator=g) * 3 for _ in range(layers)]
    return [x if signed else x.softmax(-1) for x in logits]


shapes = dict(
    seed=st.integers(0, 10_000), layers=st.integers(1, 4), b=st.integers(1, 2), h=st.integers(1, 3), n=st.integers(2, 6)
)


@settings(max_examples=40, deadline=None)
@given(**shapes)
def test_similarity_is_symmetric_with_unit_diagonal_and_bounded(seed: int, layers: int, b: int, h: int, n: int) -> None:
    maps = _random_maps(seed, layers, b, h, n)
    m = cross_layer_similarity(maps)
    assert m.shape == (layers, layers)
    assert torch.allclose(m, m.T, atol=1e-12)
    assert torch.allclose(m.diagonal(), torch.ones(layers, dtype=m.dtype), atol=1e-12)
    assert (m >= -1e-12).all() and (m <= 1 + 1e-12).all()  # non-negative maps: cosines in [0, 1]
    scaled = cross_layer_similarity([3.0 * a for a in maps])  # cosine ignores scale
    assert torch.allclose(scaled, m, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(**shapes)
def test_signed_maps_stay_in_minus_one_one_and_entropy_in_zero_log_n(
    seed: int, layers: int, b: int, h: int, n: int
) -> None:
    m = cross_layer_similarity(_random_maps(seed, layers, b, h, n, signed=True))
    assert (m >= -1 - 1e-12).all() and (m <= 1 + 1e-12).all()
    ent = attention_entropy(_random_maps(seed, layers, b, h, n))
    assert all(-1e-12 <= e <= math.log(n) + 1e-9 for e in ent)


# ---- tiny registry models ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(TINY))
def test_collapse_on_tiny_models_has_the_documented_shapes_and_ranges(kind: str) -> None:
    model = tiny(kind)
    r = attention_collapse(model, torch.randn(3, 1, 28, 28), batch_size=2)
    n_tokens = 49 + model.num_prefix_tokens
    assert r["num_blocks"] == 3 and r["num_images"] == 3 and r["threshold"] == 0.9
    assert len(r["similarity"]) == 3 and all(len(row) == 3 for row in r["similarity"])
    assert len(r["adjacent"]) == 2 and len(r["entropy"]) == 3 and len(r["feature_to_final"]) == 3
    assert all(v == pytest.approx(1.0) for v in torch.tensor(r["similarity"]).diagonal().tolist())
    assert 0 <= r["similar_blocks"] <= 2
    assert r["max_entropy"] == pytest.approx(math.log(n_tokens))
    assert all(0 <= e <= math.log(n_tokens) + 1e-6 for e in r["entropy"])
    assert r["feature_to_final"][-1] == pytest.approx(1.0)
    assert ("mixed" in r) == (kind == "reattention")
    json.dumps(r, allow_nan=False)


def test_collapse_does_not_depend_on_the_batch_size() -> None:
    model, x = tiny("plain"), torch.randn(5, 1, 28, 28)
    a, b = attention_collapse(model, x, batch_size=5), attention_collapse(model, x, batch_size=2)
    assert torch.allclose(torch.tensor(a["similarity"]), torch.tensor(b["similarity"]), atol=1e-6)
    assert a["entropy"] == pytest.approx(b["entropy"], abs=1e-6)


def test_reattention_reports_the_softmax_maps_and_the_mixed_maps_separately() -> None:
    model, x = tiny("reattention", depth=2), torch.randn(2, 1, 28, 28)
    c = capture(model, x)
    assert c.reattention == [True, True]
    for soft, mixed in zip(c.softmax, c.applied):
        assert torch.allclose(soft.sum(-1), torch.ones(soft.shape[:-1]), atol=1e-5)  # distributions
        assert not torch.allclose(soft, mixed)  # the mixed map is another map
    inputs = []
    handle = model.blocks[1].norm1.register_forward_hook(lambda _m, _args, out: inputs.append(out))  # attn's input
    capture(model, x)
    handle.remove()
    attn = model.blocks[1].attn
    with torch.no_grad():  # the parent's softmax map of the block's own q, k is what was captured
        q, k, _ = attn._qkv(inputs[0])
        assert torch.allclose(Attention.attention_map(attn, q, k), c.softmax[1], atol=1e-6)
    r = attention_collapse(model, x)
    assert r["map"] == "softmax" and len(r["mixed"]["adjacent"]) == 1
    assert not any(b.attn.reatten_matrix._forward_pre_hooks for b in model.blocks)  # hooks removed


def test_a_partly_re_attending_model_with_scaled_blocks() -> None:
    # DeepViT-S/L's layout in miniature: plain blocks then re-attention, scale_adjustment on every block
    model = deitlab.create_model(
        "deepvit_s", depth=3, reattention=(False, False, True), img_size=32, embed_dim=48, num_heads=4
    ).eval()
    c = capture(model, torch.randn(2, 3, 32, 32))
    assert c.reattention == [False, False, True]
    assert all(torch.equal(s, a) for s, a in zip(c.softmax[:2], c.applied[:2]))  # plain: one map
    assert torch.allclose(c.softmax[2].sum(-1), torch.ones(c.softmax[2].shape[:-1]), atol=1e-5)
    assert not torch.allclose(c.softmax[2], c.applied[2])
    r = attention_collapse(model, torch.randn(2, 3, 32, 32))
    assert len(r["mixed"]["similarity"]) == 3


def test_a_cnn_is_refused_clearly() -> None:
    with pytest.raises(TypeError, match="not a vision transformer"):
        attention_collapse(deitlab.create_model("resnet9_w16", num_classes=10), torch.randn(1, 3, 32, 32))
