"""deitlab against timm 1.0.31 without importing timm: state-dict keys/shapes and outputs from committed fixtures.

The fixtures are written by ``tests/fixtures/make_timm_fixtures.py`` (run in an environment with timm); see its
docstring for what each one holds.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from torch import nn

from deitlab.models import DistilledLogits, RegNet, create_model
from deitlab.models.regnet import StageSpec, regnet_stages

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TIMM_KEYS = json.loads((FIXTURES / "timm_keys.json").read_text())["models"]
ATOL = 1e-5


@pytest.fixture(scope="module")
def ref() -> dict:
    with safe_open(str(FIXTURES / "timm_outputs.safetensors"), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118  (safe_open is not a Mapping)
    return {"meta": {k: json.loads(v) for k, v in meta.items() if k in ("vit", "deit_distilled", "regnet")}, **tensors}


def _state(ref: dict, prefix: str) -> dict[str, torch.Tensor]:
    """The float64 state dict stored under ``{prefix}.state.``."""
    p = f"{prefix}.state."
    return {k[len(p) :]: v.double() if v.is_floating_point() else v for k, v in ref.items() if k.startswith(p)}


def _nparams(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# ---- keys and shapes ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(TIMM_KEYS))
def test_state_dict_keys_and_shapes_equal_timm(name: str) -> None:
    with torch.device("meta"):  # shapes only: no memory, no init cost (regnety_320 has 145M parameters)
        model = create_model(name)
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    theirs = dict(TIMM_KEYS[name]["keys"])
    assert ours == theirs, (
        f"{name}: only ours {sorted(ours.keys() - theirs.keys())[:5]}, "
        f"only timm {sorted(theirs.keys() - ours.keys())[:5]}, "
        f"other shape {[k for k in ours.keys() & theirs.keys() if ours[k] != theirs[k]][:5]}"
    )
    assert _nparams(model) == TIMM_KEYS[name]["num_params"]
    assert list(ours) == list(theirs)  # the same order too (cls_token, pos_embed, dist_token, ...)


@pytest.mark.parametrize(("name", "count"), [("regnety_160", 83_590_140), ("regnety_002", 3_162_996)])
def test_regnety_parameter_counts(name: str, count: int) -> None:
    with torch.device("meta"):
        assert _nparams(create_model(name)) == count


def test_regnet_stages_match_the_paper() -> None:
    # Radosavovic et al. 2020, Table 1 / appendix: RegNetY-200MF and RegNetY-16GF (= DeiT's teacher).
    y002 = regnet_stages(depth=13, w0=24, wa=36.44, wm=2.49, group_width=8)
    assert [(s.width, s.depth) for s in y002] == [(24, 1), (56, 1), (152, 4), (368, 7)]
    y160 = regnet_stages(depth=18, w0=200, wa=106.23, wm=2.48, group_width=112)
    assert y160 == [StageSpec(224, 2, 112), StageSpec(448, 4, 112), StageSpec(1232, 11, 112), StageSpec(3024, 1, 112)]


# ---- outputs for the same weights -------------------------------------------------------------------------------
def test_vit_reproduces_timm(ref: dict) -> None:
    spec = ref["meta"]["vit"]["deitlab"]
    model = create_model(spec["name"], **spec["overrides"]).double().eval()
    model.load_state_dict(_state(ref, "vit"), strict=True)
    with torch.no_grad():
        out = model(ref["vit.input"])
    torch.testing.assert_close(out, ref["vit.logits"], atol=ATOL, rtol=0)


def test_distilled_vit_reproduces_both_timm_heads(ref: dict) -> None:
    spec = ref["meta"]["deit_distilled"]["deitlab"]
    model = create_model(spec["name"], **spec["overrides"]).double().eval()
    model.load_state_dict({**_state(ref, "vit"), **_state(ref, "deit_distilled")}, strict=True)
    x = ref["vit.input"]
    with torch.no_grad():
        out = model(x)
        fused = model.predict(x)
    assert isinstance(out, DistilledLogits)
    torch.testing.assert_close(out.cls_logits, ref["deit_distilled.logits_cls"], atol=ATOL, rtol=0)
    torch.testing.assert_close(out.dist_logits, ref["deit_distilled.logits_dist"], atol=ATOL, rtol=0)
    torch.testing.assert_close(fused, ref["deit_distilled.logits_fused"], atol=ATOL, rtol=0)


@pytest.mark.parametrize("stem_stride", [2, 1])
def test_regnet_reproduces_timm(ref: dict, stem_stride: int) -> None:
    kwargs = ref["meta"]["regnet"]["deitlab"]["kwargs"]
    model = RegNet(**kwargs, stem_stride=stem_stride).double().eval()
    model.load_state_dict(_state(ref, "regnet"), strict=True)
    x = ref["regnet.input"]
    with torch.no_grad():
        feats = model.forward_features(x)
        logits = model.forward_head(feats)
    if stem_stride == 2:
        torch.testing.assert_close(feats, ref["regnet.features"], atol=ATOL, rtol=0)
        torch.testing.assert_close(logits, ref["regnet.logits"], atol=ATOL, rtol=0)
    else:
        torch.testing.assert_close(logits, ref["regnet.logits_stem_s1"], atol=ATOL, rtol=0)
    torch.testing.assert_close(model.predict(x), logits)


# ---- the small teacher ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("zero_init_last", [True, False])
def test_small_teacher_trains_on_28px(zero_init_last: bool) -> None:
    model = create_model("regnety_002_s1", zero_init_last=zero_init_last).train()
    assert model.img_size == (28, 28) and model.num_classes == 10 and model.no_weight_decay() == set()
    x = torch.randn(2, 1, 28, 28)
    feats = model.forward_features(x)
    assert feats.shape == (2, 368, 2, 2)  # stride-1 stem: 28 -> 14 -> 7 -> 4 -> 2
    logits = model.forward_head(feats)
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    logits.logsumexp(-1).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing[:5]
    if not zero_init_last:  # with zero-initialised last BNs the residual branches start with zero gradient
        zero = [n for n, p in model.named_parameters() if not p.grad.any()]
        assert not zero, zero[:5]


def test_reset_classifier_and_pre_logits() -> None:
    model = create_model("regnety_002_s1").eval()
    model.reset_classifier(3)
    x = torch.randn(1, 1, 32, 32)
    assert model(x).shape == (1, 3) and model.num_classes == 3
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (1, 368)
    model.reset_classifier(0)
    assert model(x).shape == (1, 368)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        (dict(stem_stride=4), "stem_stride=4"),
        (dict(w0=20), "w0=20"),
        (dict(wm=1.0), "wm=1.0"),
        (dict(wa=-1.0), "wa=-1.0"),
        (dict(num_classes=-1), "num_classes=-1"),
        (dict(img_size=(28,)), "img_size=(28,)"),
        (dict(se_ratio=1.5), "se_ratio=1.5"),
    ],
)
def test_bad_regnet_arguments_raise_value_error(kwargs: dict, needle: str) -> None:
    with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        create_model("regnety_002_s1", **kwargs)
