"""Recipes shipped in the package: readable with importlib.resources, listed by `deitlab recipes`, usable as
`-c NAME`; the DeiT recipes equal DeiT main.py's defaults; `--print-config` and `--help` say everything."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

import pytest
import torch
import yaml

from deitlab.cli import main
from deitlab.config import all_keys, build_config, config_from_dict, get_value
from deitlab.config.help import KEY_HELP, keys_help
from deitlab.config.recipes import load_recipe, recipe_description, recipe_names
from deitlab.data import ImageSet
from deitlab.data.readers.imagefolder import IMAGENET_MEAN, IMAGENET_STD
from deitlab.engine.builders import Data, build_augment
from deitlab.errors import ConfigError
from deitlab.models import get_model_entry

# facebookresearch/deit main.py's argument defaults (the version with distillation and --finetune), as dotted keys.
# The global batch is the paper's 1024 (main.py's --batch-size is per GPU: 64 x 16 GPUs; README: 256 x 4).
DEIT_MAIN_PY = {
    "train.epochs": 300,  # --epochs 300
    "data.batch_size": 1024,
    "model.img_size": 224,  # --input-size 224
    "model.drop_rate": 0.0,  # --drop 0.0
    "model.drop_path_rate": 0.1,  # --drop-path 0.1
    "train.ema": True,  # --model-ema: parser.set_defaults(model_ema=True)
    "train.ema_decay": 0.99996,  # --model-ema-decay
    "optim.name": "adamw",  # --opt adamw
    "optim.eps": 1e-8,  # --opt-eps
    "optim.betas": (0.9, 0.999),  # --opt-betas None -> AdamW's defaults
    "optim.clip_grad": None,  # --clip-grad None
    "optim.momentum": 0.9,  # --momentum
    "optim.weight_decay": 0.05,  # --weight-decay
    "optim.lr": 5e-4,  # --lr, then lr * batch * world / 512
    "optim.scale_lr": True,
    "optim.warmup_lr": 1e-6,  # --warmup-lr
    "optim.min_lr": 1e-5,  # --min-lr
    "optim.warmup_epochs": 5.0,  # --warmup-epochs
    "aug.rand_augment": "rand-m9-mstd0.5-inc1",  # --aa
    "aug.label_smoothing": 0.1,  # --smoothing
    "aug.interpolation": "bicubic",  # --train-interpolation
    "data.repeated_aug": 3,  # --repeated-aug: set_defaults(repeated_aug=True), RASampler's 3 copies
    "aug.re_prob": 0.25,  # --reprob
    "aug.mixup": 0.8,
    "aug.cutmix": 1.0,
    "aug.mix_prob": 1.0,  # --mixup-prob
    "aug.switch_prob": 0.5,  # --mixup-switch-prob
    "aug.eval_crop_pct": 0.875,  # --eval-crop-ratio
    "aug.crop_scale": (0.08, 1.0),  # timm create_transform: RandomResizedCropAndInterpolation defaults
    "aug.crop_ratio": (3 / 4, 4 / 3),
    "aug.hflip": 0.5,
    "distill.alpha": 0.5,  # --distillation-alpha
    "distill.tau": 1.0,  # --distillation-tau
    "data.workers": 10,  # --num_workers
    "data.dataset": "imagefolder",  # IMNET: datasets.ImageFolder(root/train, root/val)
    "data.eval_split": "val",
}
DEIT_RECIPES = {
    "deit_tiny": "deit_tiny_patch16_224",
    "deit_small": "deit_small_patch16_224",
    "deit_base": "deit_base_patch16_224",
    "deit_tiny_distilled": "deit_tiny_distilled_patch16_224",
    "deit_small_distilled": "deit_small_distilled_patch16_224",
    "deit_base_distilled": "deit_base_distilled_patch16_224",
}


@pytest.mark.parametrize("name", sorted(DEIT_RECIPES))
def test_deit_recipes_equal_deit_main_py_defaults(name):
    cfg = build_config([name])
    differing = {k: (get_value(cfg, k), v) for k, v in DEIT_MAIN_PY.items() if get_value(cfg, k) != pytest.approx(v)}
    assert not differing, differing
    assert cfg.model.name == DEIT_RECIPES[name]
    if "distilled" in name:  # DeiT's README trains the distilled models with hard distillation from RegNetY-16GF
        assert (cfg.distill.type, cfg.teacher.model) == ("hard", "regnety_160")
    else:
        assert cfg.distill.type == "none"  # --distillation-type none
    # what the built augmentation does with it: pixel-mode erasing, one box; ImageNet statistics for folders
    data = Data(ImageSet(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.arange(4) % 2, ["a", "b"],
                         IMAGENET_MEAN, IMAGENET_STD, "x"), None, None, 224)  # fmt: skip
    train_aug, eval_aug, mix = build_augment(cfg, data)
    assert (train_aug.re_mode, train_aug.re_count, train_aug.mean) == ("pixel", 1, (0.485, 0.456, 0.406))
    assert (train_aug.rand_augment.num_ops, train_aug.rand_augment.magnitude) == (2, 9)
    assert (mix.mixup_alpha, mix.cutmix_alpha, mix.prob, mix.switch_prob, mix.label_smoothing) == (0.8, 1, 1, 0.5, 0.1)
    assert eval_aug.crop_pct == 0.875 and IMAGENET_STD == (0.229, 0.224, 0.225)


def test_finetune_384_recipes_follow_deit_readme():
    cfg = build_config(["deit_base_384_finetune"])
    got = (cfg.model.name, cfg.model.img_size, cfg.data.batch_size, cfg.optim.lr, cfg.optim.weight_decay)
    assert got == ("deit_base_patch16_384", 384, 512, 5e-6, 1e-8)
    assert (cfg.train.epochs, cfg.optim.min_lr, cfg.model.finetune) == (30, 5e-6, "deit_base_patch16_224-b5f2ef4d.pth")
    dist = build_config(["deit_base_distilled_384_finetune"])
    assert (dist.model.name, dist.distill.type, dist.teacher.model, dist.teacher.img_size) == (
        "deit_base_distilled_patch16_384", "hard", "regnety_160", 224)  # fmt: skip


def test_other_recipes_follow_their_papers():
    vitc = build_config(["vit_c_4gf"])  # SPEC 6.1: batch 2048, 400 epochs, EMA, no repeated augmentation
    assert (vitc.model.name, vitc.data.batch_size, vitc.train.epochs, vitc.train.ema, vitc.data.repeated_aug) == (
        "vit_c_4gf", 2048, 400, True, 1)  # fmt: skip
    assert vitc.optim.lr * vitc.data.batch_size / 512 == pytest.approx(2e-3)
    deep = build_config(["deepvit_32b"])  # SPEC 5: AdamW 5e-4 cosine, 300 epochs, batch 256, 224 px
    assert (deep.model.name, deep.data.batch_size, deep.train.epochs, deep.optim.lr) == ("deepvit_32b", 256, 300, 5e-4)
    assert build_config(["demo_student"]).model.name == "vit_c_micro_distilled_32"


def test_every_recipe_is_package_data_with_a_description_and_a_real_model():
    names = recipe_names()
    assert {*DEIT_RECIPES, "deit_base_384_finetune", "vit_c_4gf", "deepvit_32b", "demo_teacher", "demo_student"} <= set(
        names
    )
    folder = resources.files("deitlab").joinpath("recipes")
    for name in names:
        assert folder.joinpath(name + ".yaml").is_file()
        assert 20 < len(recipe_description(name)) <= 120
        cfg = build_config([name])
        get_model_entry(cfg.model.name)  # raises for an unknown model
        assert set(load_recipe(name)) <= {"model", "teacher", "distill", "data", "aug", "optim", "train"}
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert '"recipes/*.yaml"' in pyproject  # shipped in wheels


def test_config_by_name_or_path_and_errors(tmp_path, monkeypatch):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({"train": {"epochs": 3}}))
    by_name = build_config(["deit_small", str(path)])
    assert by_name.model.name == "deit_small_patch16_224" and by_name.train.epochs == 3  # later files override
    with pytest.raises(ConfigError, match="did you mean deit_small"):
        build_config(["deit_smal"])
    with pytest.raises(ConfigError, match="config file not found"):
        build_config([str(tmp_path / "nope.yaml")])
    monkeypatch.chdir(tmp_path)
    Path("deit_small").write_text(yaml.safe_dump({"train": {"epochs": 7}}))
    assert build_config(["deit_small"]).train.epochs == 7  # an existing file wins over a recipe name


def test_recipes_verb_lists_and_prints(capsys):
    assert main(["recipes"]) == 0
    out = capsys.readouterr().out
    for name in recipe_names():
        assert re.search(rf"^{name}\s+\S", out, re.M), name
    assert main(["recipes", "deit_tiny"]) == 0
    assert capsys.readouterr().out.startswith("# DeiT-Ti")
    assert main(["recipes", "nope"]) == 2
    assert "no config file or recipe named 'nope'" in capsys.readouterr().err


def test_print_config_is_the_resolved_yaml(capsys):
    assert main(["train", "-c", "deit_small_distilled", "--lr", "1e-3", "--print-config"]) == 0
    out = capsys.readouterr().out
    cfg = config_from_dict(yaml.safe_load(out))
    assert cfg == build_config(["deit_small_distilled"], ["optim.lr=1e-3"])
    assert "repeated_aug: 3" in out and "ema: true" in out and "type: hard" in out


def test_train_help_lists_every_key_with_default_and_meaning(capsys):
    keys = all_keys()
    assert set(KEY_HELP) == set(keys)  # every key has a meaning, no meaning is stale
    assert all(len(KEY_HELP[k]) > 10 for k in keys)
    assert main(["train", "--help"]) == 0
    out = capsys.readouterr().out
    for key in keys:
        assert re.search(rf"^  {re.escape(key)}\s", out, re.M), key
    assert re.search(r"optim\.lr\s+0\.0005\s+base learning rate", out) and "[--lr]" in out
    assert "src/deitlab" not in out and "deitlab recipes" in out
    assert keys_help().count("\n") >= len(keys)
