"""EMA of weights and buffers (by hand numbers), raw and EMA metrics on val and test, and the quoted headline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from deitlab.config import build_config
from deitlab.engine import loop, train
from deitlab.engine.ema import ModelEma
from deitlab.errors import ConfigError


def test_ema_averages_weights_and_float_buffers_and_copies_integer_ones() -> None:
    model = nn.Sequential(nn.Linear(2, 2, bias=False), nn.BatchNorm1d(2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    ema = ModelEma(model, decay=0.75)
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[5.0, 6.0], [7.0, 8.0]]))
    bn = model[1]
    bn.running_mean.copy_(torch.tensor([4.0, -8.0]))  # EMA copy holds the initial 0, 0
    bn.running_var.copy_(torch.tensor([5.0, 9.0]))  # ... and 1, 1
    bn.num_batches_tracked.fill_(7)
    ema.update(model)
    e = ema.module
    # 0.75 * old + 0.25 * new, by hand
    torch.testing.assert_close(e[0].weight, torch.tensor([[2.0, 3.0], [4.0, 5.0]]))
    torch.testing.assert_close(e[1].running_mean, torch.tensor([1.0, -2.0]))
    torch.testing.assert_close(e[1].running_var, torch.tensor([2.0, 3.0]))
    assert e[1].num_batches_tracked.item() == 7 and e[1].num_batches_tracked.dtype == torch.int64
    ema.update(model)  # again: 0.75 * [1, -2] + 0.25 * [4, -8]
    torch.testing.assert_close(e[1].running_mean, torch.tensor([1.75, -3.5]))
    assert not any(p.requires_grad for p in e.parameters()) and not e.training


def _cfg(tmp: Path, *extra: str):
    return build_config(overrides=[
        "model.name=deit_micro_patch4_28", "data.dataset=synthetic", "data.batch_size=32", "data.limit_train=64",
        "data.limit_eval=32", "train.epochs=1", "model.kwargs.depth=1", "model.kwargs.embed_dim=16",
        "model.kwargs.num_heads=2", "train.progress=false", "aug.mixup=0", "aug.cutmix=0", "train.ema=true",
        "train.ema_decay=0.9", f"train.output_dir={tmp}", *extra,
    ])  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("weights", ["raw", "ema"])
def test_val_and_test_report_raw_and_ema_and_the_headline_says_whose(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, weights: str
) -> None:
    evaluated: list[tuple[str, str]] = []
    real = loop.evaluate_model

    def spy(run, model, batches, prefix, teacher=None):  # noqa: ANN001, ANN202
        evaluated.append((prefix, "ema" if run.ema is not None and model is run.ema.module else "raw"))
        return real(run, model, batches, prefix, teacher)

    monkeypatch.setattr(loop, "evaluate_model", spy)
    result = train(_cfg(tmp_path / "run", f"train.headline_weights={weights}"))
    assert evaluated == [("", "raw"), ("ema_", "ema"), ("test_", "raw"), ("test_ema_", "ema")]
    for key in ("acc", "ema_acc", "test_acc", "test_ema_acc", "test_ema_acc_cls", "test_ema_loss"):
        assert key in result.final, key
    key = "test_acc" if weights == "raw" else "test_ema_acc"
    expect = {"weights": weights, "split": "test", "key": key, "acc": result.final[key]}
    assert result.headline == expect
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["headline"] == expect and saved["final"]["test_ema_acc"] == result.final["test_ema_acc"]


def test_headline_falls_back_to_the_evaluation_split() -> None:
    metrics = {"acc": 50.0, "ema_acc": 60.0}
    assert loop.headline(metrics, "ema", "synthetic/val") == {
        "weights": "ema", "split": "synthetic/val", "key": "ema_acc", "acc": 60.0,
    }  # fmt: skip


def test_ema_headline_without_an_ema_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="train.headline_weights='ema' needs an EMA"):
        _cfg(tmp_path, "train.ema=false", "train.headline_weights=ema")
