"""The model zoo: every registered model works at a small size; exact sizes; attention paths; token API."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import deitlab
from deitlab.models import DistilledLogits, get_model_entry, list_models
from deitlab.models.complexity import complexity, model_in_chans
from deitlab.models.vit import DistilledVisionTransformer, VisionTransformer


def small_overrides(name: str) -> dict:
    """Shrink a registered model for a fast test while keeping its family's structure."""
    d = dict(get_model_entry(name).defaults)
    if d.get("embed_dim") is None:  # CNNs (RegNetY): only the input and class count change
        return dict(img_size=32, num_classes=7)
    heads = d.get("num_heads", 12)
    out = dict(img_size=32, num_classes=7, depth=2, embed_dim=8 * heads)
    if isinstance(d.get("reattention"), tuple):
        out["reattention"] = (False, True)
    return out


# CNNs keep their full width at the small size: the two largest take seconds to build and run.
LARGEST_MODELS = ("regnety_160", "regnety_320")


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in LARGEST_MODELS else n for n in list_models()]
)
def test_every_model_trains_at_small_size(name: str) -> None:
    model = deitlab.create_model(name, drop_path_rate=0.1, **small_overrides(name))
    x = torch.randn(2, model_in_chans(model), 32, 32)
    model.train()
    out = model(x)
    logits = torch.cat(list(out)) if isinstance(out, DistilledLogits) else out
    assert logits.shape[-1] == 7 and torch.isfinite(logits).all()
    logits.square().mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not no_grad, f"parameters without a finite gradient: {no_grad[:5]}"
    model.eval()
    with torch.no_grad():
        pred = model.predict(x)
    assert pred.shape == (2, 7) and torch.isfinite(pred).all()


# timm's counts at 1000 classes (SPEC §1).
EXACT_PARAMS = {
    "deit_tiny_patch16_224": 5_717_416,
    "deit_small_patch16_224": 22_050_664,
    "deit_tiny_distilled_patch16_224": 5_910_800,
    "deit_small_distilled_patch16_224": 22_436_432,
    "deit_base_distilled_patch16_224": 87_338_192,
}
# Xiao et al. Tables 1-2 and Zhou et al. Table 3, to the printed precision (millions).
PRINTED_PARAMS_M = {
    "vit_p_1gf": 4.8, "vit_p_4gf": 18.5, "vit_p_18gf": 86.6, "vit_p_36gf": 178.4,
    "vit_c_1gf": 4.6, "vit_c_4gf": 17.8, "vit_c_18gf": 81.6, "vit_c_36gf": 167.8,
    "deepvit_16b": 24.4, "deepvit_24b": 36.3, "deepvit_32b": 48.1,
}  # fmt: skip
PRINTED_GFLOPS = {
    "vit_p_1gf": 1.1, "vit_p_4gf": 3.9, "vit_p_18gf": 17.5, "vit_p_36gf": 35.9,
    "vit_c_1gf": 1.1, "vit_c_4gf": 4.0, "vit_c_18gf": 17.7, "vit_c_36gf": 35.0,
}  # fmt: skip


def _meta(name: str, **kw) -> nn.Module:
    with torch.device("meta"):
        return deitlab.create_model(name, **kw)


def _nparams(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize(("name", "count"), EXACT_PARAMS.items())
def test_deit_parameter_counts_equal_timm(name: str, count: int) -> None:
    assert _nparams(_meta(name)) == count


@pytest.mark.parametrize(("name", "millions"), PRINTED_PARAMS_M.items())
def test_parameter_counts_match_papers(name: str, millions: float) -> None:
    assert round(_nparams(_meta(name)) / 1e6, 1) == millions


@pytest.mark.parametrize(("name", "gflops"), PRINTED_GFLOPS.items())
def test_flops_match_paper(name: str, gflops: float) -> None:
    assert round(complexity(_meta(name)).gflops, 1) == pytest.approx(gflops, abs=0.11)


@pytest.mark.parametrize("size", ["1gf", "4gf", "18gf", "36gf"])
def test_vit_c_flops_within_10_percent_of_vit_p(size: str) -> None:
    c, p = complexity(_meta(f"vit_c_{size}")), complexity(_meta(f"vit_p_{size}"))
    assert abs(c.flops / p.flops - 1) < 0.10
    assert len(_meta(f"vit_c_{size}").blocks) == len(_meta(f"vit_p_{size}").blocks) - 1


@pytest.mark.parametrize("variant", ["s1", "s2", "s3", "s4"])
def test_vit_c_stem_variants_keep_stride_16_and_4gf_budget(variant: str) -> None:
    m = _meta(f"vit_c_4gf_{variant}")
    assert m.patch_embed.patch_size == 16 and m.patch_embed.num_patches == 196
    assert abs(complexity(m).flops / complexity(_meta("vit_c_4gf")).flops - 1) < 0.10


def test_complexity_of_deit_tiny_matches_published_figure() -> None:
    c = complexity(deitlab.create_model("deit_tiny_patch16_224"))
    assert c.params == 5_717_416
    assert 1.24e9 < c.flops < 1.27e9  # timm/fvcore: 1.26 GMACs


def test_deepvit_reattention_placement() -> None:
    s, big = _meta("deepvit_s"), _meta("deepvit_l")
    flags = [hasattr(b.attn, "reatten_matrix") for b in s.blocks]
    assert flags == [False] * 11 + [True] * 5
    assert [hasattr(b.attn, "reatten_matrix") for b in big.blocks] == [False] * 20 + [True] * 12
    assert all(b.scale_adjustment == 0.5 for b in s.blocks)
    assert s.blocks[-1].attn.reatten_scale == pytest.approx(33**-0.5)  # transform_scale, head_dim 396/12
    assert big.blocks[-1].attn.reatten_scale == 1.0
    assert all(hasattr(b.attn, "reatten_matrix") for b in _meta("deepvit_16b").blocks)
    assert not any(hasattr(b.attn, "reatten_matrix") for b in _meta("vit_deep_16b").blocks)


# ---- attention paths -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["deit_tiny_distilled_patch16_224", "vit_c_1gf", "deepvit_s"])
def test_fused_and_explicit_attention_agree(name: str) -> None:
    model = deitlab.create_model(name, **small_overrides(name)).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        fused = model.forward_intermediates(x)
        explicit = model.forward_intermediates(x, return_attention=True)
    for a, b in zip(fused.tokens, explicit.tokens):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert len(explicit.attentions) == len(model.blocks)
    n = model.patch_embed.num_patches + model.num_prefix_tokens
    assert explicit.attentions[0].shape == (3, model.blocks[0].attn.num_heads, n, n)
    # plain attention maps are row-stochastic
    torch.testing.assert_close(explicit.attentions[0].sum(-1), torch.ones(3, model.blocks[0].attn.num_heads, n))
    torch.testing.assert_close(model.norm(fused.tokens[-1]), model.forward_features(x))


def test_reattention_with_identity_theta_and_frozen_identity_norm_is_plain_attention() -> None:
    from deitlab.layers import Attention, ReAttention

    re = ReAttention(48, num_heads=6).eval()
    plain = Attention(48, num_heads=6).eval()
    plain.load_state_dict({k: v for k, v in re.state_dict().items() if k.startswith(("qkv", "proj"))})
    with torch.no_grad():
        re.reatten_matrix.weight.copy_(torch.eye(6).view(6, 6, 1, 1))
        re.reatten_matrix.bias.zero_()
        re.var_norm.running_mean.zero_()
        re.var_norm.running_var.fill_(1.0 - re.var_norm.eps)  # (x - 0) / sqrt(var + eps) = x
        x = torch.randn(2, 10, 48)
        torch.testing.assert_close(re(x), plain(x), atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(re.forward_with_attn(x)[1], plain.forward_with_attn(x)[1], atol=1e-6, rtol=1e-6)


def test_reattention_mixes_heads() -> None:
    """With a non-diagonal Θ, a head's map becomes a combination of the heads' maps (before the norm)."""
    from deitlab.layers import ReAttention

    re = ReAttention(16, num_heads=2).eval()
    theta = torch.tensor([[0.25, 0.75], [1.0, 0.0]])
    with torch.no_grad():
        re.reatten_matrix.weight.copy_(theta.view(2, 2, 1, 1))
        re.reatten_matrix.bias.zero_()
        re.var_norm.running_var.fill_(1.0 - re.var_norm.eps)
        x = torch.randn(1, 5, 16)
        q, k, _ = re._qkv(x)
        raw = torch.softmax(q @ k.transpose(-2, -1) * re.scale, -1)
        mixed = re.attention_map(q, k)
    torch.testing.assert_close(mixed[:, 0], 0.25 * raw[:, 0] + 0.75 * raw[:, 1])
    torch.testing.assert_close(mixed[:, 1], raw[:, 0])


def test_scaled_block_matches_official_formula() -> None:
    model = deitlab.create_model("deepvit_s", **small_overrides("deepvit_s")).eval()
    blk = model.blocks[0]
    x = torch.randn(2, 5, blk.norm1.normalized_shape[0])
    s = 0.5
    with torch.no_grad():
        ref = x + blk.attn(blk.norm1(x * s)) / s
        ref = ref + blk.mlp(blk.norm2(ref * s)) / s
        torch.testing.assert_close(blk(x), ref)


# ---- distilled models ------------------------------------------------------------------------------------------
def test_distilled_output_type_is_the_same_in_train_and_eval() -> None:
    model = deitlab.create_model("deit_tiny_distilled_patch16_224", img_size=32, depth=1, num_classes=5)
    x = torch.randn(2, 3, 32, 32)
    out_train = model.train()(x)
    out_eval = model.eval()(x)
    assert type(out_train) is type(out_eval) is DistilledLogits
    assert out_eval.cls_logits.shape == out_eval.dist_logits.shape == (2, 5)
    torch.testing.assert_close(out_eval.fused(), (out_eval.cls_logits + out_eval.dist_logits) / 2)
    probs = (out_eval.cls_logits.softmax(-1) + out_eval.dist_logits.softmax(-1)) / 2
    torch.testing.assert_close(out_eval.fused("softmax").softmax(-1), probs)
    torch.testing.assert_close(model.predict(x), out_eval.fused("logits"))
    with pytest.raises(ValueError, match="'mean'"):
        out_eval.fused("mean")


def test_distilled_token_order_and_keys() -> None:
    model = deitlab.create_model("deit_tiny_distilled_patch16_224", img_size=32, depth=1)
    keys = set(model.state_dict())
    assert {
        "cls_token",
        "dist_token",
        "pos_embed",
        "patch_embed.proj.weight",
        "head.weight",
        "head_dist.weight",
    } <= keys
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        model.head_dist.weight.zero_()
        model.head_dist.bias.fill_(3.0)
        feats = model.forward_features(x)
        out = model(x)
    torch.testing.assert_close(out.cls_logits, model.head(feats[:, 0]))  # token 0 = cls
    assert (out.dist_logits == 3.0).all()  # token 1 feeds head_dist
    assert model.pos_embed.shape[1] == model.patch_embed.num_patches + 2
    assert isinstance(model, DistilledVisionTransformer) and isinstance(model, VisionTransformer)


@pytest.mark.parametrize("name", ["vit_c_1gf", "deepvit_16b", "deepvit_s", "vit_p_1gf"])
def test_every_vit_family_can_be_distilled(name: str) -> None:
    model = deitlab.create_model(name, distilled=True, **small_overrides(name))
    out = model(torch.randn(2, 3, 32, 32))
    assert isinstance(out, DistilledLogits) and out.dist_logits.shape == (2, 7)


def test_init_follows_deit() -> None:
    model = deitlab.create_model("deit_small_patch16_224", depth=2)
    for t in (model.pos_embed, model.cls_token, model.blocks[0].attn.qkv.weight, model.head.weight):
        assert abs(t.std().item() - 0.02) < 0.003 and t.abs().max() <= 2.0
    assert model.blocks[0].attn.qkv.bias.abs().sum() == 0 and (model.norm.weight == 1).all()


# ---- bad inputs ---------------------------------------------------------------------------------------------------
def test_unknown_model_lists_close_names() -> None:
    with pytest.raises(ValueError, match="deit_tiny_patch16_224"):
        deitlab.create_model("deit_tiny_patch16_22")


def test_bad_overrides_raise_value_error_naming_values() -> None:
    with pytest.raises(ValueError, match=r"img_size=\(30, 30\).*patch_size=16"):
        deitlab.create_model("deit_tiny_patch16_224", img_size=30)
    with pytest.raises(ValueError, match="embed_dim=100.*num_heads=3"):
        deitlab.create_model("deit_tiny_patch16_224", embed_dim=100)
    with pytest.raises(ValueError, match="'embed_dims'.*did you mean 'embed_dim'"):
        deitlab.create_model("deit_tiny_patch16_224", embed_dims=100)
    with pytest.raises(ValueError, match="patch_size=8 differs"):
        deitlab.create_model("vit_c_1gf", patch_size=8)
    with pytest.raises(ValueError, match="reattention lists 16 blocks but depth=4"):
        deitlab.create_model("deepvit_s", depth=4)
    with pytest.raises(ValueError, match="drop_path_rate"):
        deitlab.create_model("deit_tiny_patch16_224", drop_path_rate=1.5)


def test_wrong_input_size_is_a_clear_error() -> None:
    model = deitlab.create_model("deit_tiny_patch16_224", img_size=32, depth=1)
    with pytest.raises(ValueError, match=r"\(1, 3, 48, 48\).*\(B, 3, 32, 32\)"):
        model(torch.randn(1, 3, 48, 48))


def test_list_models_patterns() -> None:
    assert "deit_tiny_patch16_224" in deitlab.list_models("deit_*")
    assert all(n.startswith("vit_c") for n in deitlab.list_models("vit_c*"))
    assert deitlab.list_models("distilled") == [n for n in deitlab.list_models() if "distilled" in n]
    with pytest.raises(ValueError, match="already registered"):
        deitlab.register_model(VisionTransformer, name="deit_tiny_patch16_224")


def test_drop_path_rates_increase_linearly() -> None:
    model = deitlab.create_model("deit_tiny_patch16_224", depth=5, drop_path_rate=0.2)
    rates = [getattr(b.drop_path1, "drop_prob", 0.0) for b in model.blocks]
    assert rates == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])
    assert math.isclose(rates[-1], 0.2)


@pytest.mark.parametrize("transform_scale", [False, True])
def test_reattention_map_is_the_official_conv_then_batchnorm(transform_scale: bool) -> None:
    """ReAttention.attention_map equals dvit_repo's 1x1 Conv2d + BatchNorm2d (x scale) on the softmax maps, in
    training (batch statistics, running stats updated alike) and in evaluation (running statistics)."""
    from deitlab.layers.attention import Attention, ReAttention

    torch.manual_seed(0)
    attn = ReAttention(48, num_heads=4, transform_scale=transform_scale)
    torch.nn.init.normal_(attn.reatten_matrix.bias)
    twin = copy.deepcopy(attn)
    q, k = torch.randn(3, 4, 9, 12), torch.randn(3, 4, 9, 12)  # (B, heads, N, head_dim)
    for mode in (True, False):
        attn.train(mode), twin.train(mode)
        got = attn.attention_map(q, k)
        maps = Attention.attention_map(twin, q, k)
        want = twin.var_norm(twin.reatten_matrix(maps)) * twin.reatten_scale
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)  # float32 sums in another order
        torch.testing.assert_close(attn.var_norm.running_mean, twin.var_norm.running_mean)
        torch.testing.assert_close(attn.var_norm.running_var, twin.var_norm.running_var)
