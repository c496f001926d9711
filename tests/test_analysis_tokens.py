"""Class vs distillation token cosine: constructed tokens and heads, identical tokens stay identical."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import deitlab
from deitlab.analysis import head_cosine, token_similarity


def distilled(depth: int = 2) -> nn.Module:
    return deitlab.create_model("deit_micro_distilled_patch4_28", depth=depth).eval()


def test_constructed_input_tokens_and_heads() -> None:
    model = distilled()
    d = model.embed_dim
    with torch.no_grad():
        model.cls_token.zero_()
        model.dist_token.zero_()
        model.cls_token[0, 0, :2] = torch.tensor([1.0, 0.0])
        model.dist_token[0, 0, :2] = torch.tensor([1.0, 1.0])  # cos = 1/sqrt(2)
        model.head.weight.copy_(torch.eye(10, d))  # class c: e_c
        model.head_dist.weight.copy_(-torch.eye(10, d))  # class c: -e_c -> cos -1 for every class
    r = token_similarity(model, torch.randn(2, 1, 28, 28))
    assert r["input_cosine"] == pytest.approx(1 / math.sqrt(2))
    assert r["head_cosine"] == pytest.approx(-1.0)
    assert len(r["block_cosine"]) == 2 and r["num_images"] == 2
    assert all(-1 - 1e-9 <= v <= 1 + 1e-9 for v in [*r["block_cosine"], r["final_cosine"]])


def test_head_cosine_by_hand() -> None:
    a, b = nn.Linear(2, 2), nn.Linear(2, 2)
    with torch.no_grad():
        a.weight.copy_(torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
        b.weight.copy_(torch.tensor([[0.0, 3.0], [2.0, 2.0]]))  # class 0: orthogonal (0); class 1: parallel (1)
    assert head_cosine(a, b) == pytest.approx(0.5)


def test_identical_tokens_with_identical_position_rows_stay_identical() -> None:
    model = distilled(depth=3)
    with torch.no_grad():
        model.dist_token.copy_(model.cls_token)
        model.pos_embed[0, 1] = model.pos_embed[0, 0]
    r = token_similarity(model, torch.randn(3, 1, 28, 28), batch_size=2)
    assert r["input_cosine"] == pytest.approx(1.0)
    assert r["block_cosine"] == pytest.approx([1.0, 1.0, 1.0], abs=1e-6)
    assert r["final_cosine"] == pytest.approx(1.0, abs=1e-6)


def test_a_model_without_distillation_token_is_refused() -> None:
    with pytest.raises(TypeError, match="distillation token"):
        token_similarity(deitlab.create_model("deit_micro_patch4_28", depth=1), torch.randn(1, 1, 28, 28))
