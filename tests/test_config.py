"""Configuration: YAML + dotted overrides + DeiT aliases, typed, validated, with helpful errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from deitlab.config import ALIASES, Config, all_keys, build_config, config_from_dict, dump_yaml
from deitlab.errors import ConfigError


def test_defaults_follow_deit_recipe() -> None:
    c = Config()
    assert (c.optim.lr, c.optim.weight_decay, c.optim.warmup_epochs, c.optim.min_lr) == (5e-4, 0.05, 5.0, 1e-5)
    assert (c.aug.mixup, c.aug.cutmix, c.aug.label_smoothing, c.aug.re_prob) == (0.8, 1.0, 0.1, 0.25)
    assert c.aug.rand_augment == "rand-m9-mstd0.5-inc1" and c.model.drop_path_rate == 0.1
    assert (c.distill.type, c.distill.alpha, c.distill.tau) == ("none", 0.5, 1.0)


def test_yaml_then_overrides(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("optim:\n  lr: 0.001\ntrain:\n  epochs: 3\nmodel:\n  kwargs:\n    depth: 4\n")
    c = build_config([f], ["train.epochs=5", "aug.crop_scale=[0.5, 1.0]", "aug.rand_augment=null"])
    assert c.optim.lr == 1e-3 and c.train.epochs == 5 and c.model.kwargs == {"depth": 4}
    assert c.aug.crop_scale == (0.5, 1.0) and c.aug.rand_augment is None


def test_dump_and_reload_round_trip() -> None:
    c = build_config(overrides=["optim.betas=[0.8, 0.99]", "model.kwargs.embed_dim=96"])
    again = config_from_dict(yaml.safe_load(dump_yaml(c)))
    assert again == c


def test_aliases_point_at_real_keys() -> None:
    keys = set(all_keys())
    assert set(ALIASES.values()) <= keys


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("optim.lrr=1", "unknown config key 'optim.lrr'; did you mean 'optim.lr'"),
        ("trian.epochs=3", "did you mean 'train.epochs'"),
        ("train.epochs=abc", "train.epochs expects an int, got 'abc'"),
        ("train.epochs=2.5", "expects an int"),
        ("optim.lr=fast", "optim.lr expects a float"),
        ("train.epochs=0", r"train.epochs=0 is out of range; it must be >= 1"),
        ("optim.lr=-0.1", "optim.lr=-0.1 is out of range"),
        ("data.batch_size=0", "data.batch_size=0 is out of range"),
        ("distill.type=sotf", "did you mean 'soft'"),
        ("distill.alpha=1.5", "distill.alpha=1.5"),
        ("distill.tau=0", "distill.tau=0.0"),
        ("train.precision=fp8", "train.precision='fp8' is not one of"),
        ("aug.crop_scale=[0.9, 0.2]", "aug.crop_scale"),
        ("train.ema=maybe", "train.ema expects a bool"),
        ("lr", "must look like key=value"),
    ],
)
def test_bad_values(override: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_config(overrides=[override])


def test_distillation_needs_teacher() -> None:
    with pytest.raises(ConfigError, match="needs a teacher"):
        build_config(overrides=["distill.type=hard"])
    assert build_config(overrides=["distill.type=hard", "teacher.path=t.safetensors"]).distill.type == "hard"


def test_bad_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        build_config([tmp_path / "nope.yaml"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        build_config([bad])
    typo = tmp_path / "typo.yaml"
    typo.write_text("optim:\n  weight_decai: 0.1\n")
    with pytest.raises(ConfigError, match="did you mean 'optim.weight_decay'"):
        build_config([typo])
