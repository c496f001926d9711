"""Image folders the way DeiT reads ImageNet: the random crop is taken from the ORIGINAL image in the loader workers,
reproducibly per (seed, epoch, position); in memory only within a budget; val without test."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deitlab.config import build_config
from deitlab.data import EvalGeometry, ImageFolder, RASampler, TrainGeometry, load_dataset
from deitlab.data.folders import open_folder_splits
from deitlab.data.geometry import resize_center_crop, sample_generator, to_tensor
from deitlab.data.loader import StreamLoader
from deitlab.engine import train
from deitlab.engine.checkpoint import read_manifest
from deitlab.errors import ConfigError, DataError
from deitlab.io import read_checkpoint
from test_engine import copy_run_cut_at  # tests/ is on sys.path (rootdir conftest)

GREEN = (0, 255, 0)
GREY = 128
MARK = 40  # the marker stripe's width in pixels, at the left edge of a 400 x 300 original


def marked_image(path: Path, size: tuple[int, int] = (400, 300)) -> Path:
    """A grey ``size`` (W, H) PNG with a pure green stripe in its leftmost :data:`MARK` columns."""
    arr = np.full((size[1], size[0], 3), GREY, dtype=np.uint8)
    arr[:, :MARK] = GREEN
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def layout_folder(root: Path, per_class: int, *, splits=("train", "val"), seed: int = 0) -> Path:
    """JPEGs of mixed sizes, two classes told apart only by layout: red over blue vs blue over red (same colours;
    a horizontal flip keeps the class)."""
    rng = np.random.default_rng(seed)
    sizes = [(300, 400), (400, 300), (320, 240), (256, 384)]
    for split in splits:
        for label, cls in enumerate(("rb", "br")):
            d = root / split / cls
            d.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                w, h = sizes[(i + label) % len(sizes)]
                img = rng.normal(128, 30, (h, w, 3))
                top, bottom = (np.array([200, 40, 40]), np.array([40, 40, 200]))[:: 1 if label == 0 else -1]
                img[: h // 2] = 0.5 * img[: h // 2] + 0.5 * top
                img[h // 2 :] = 0.5 * img[h // 2 :] + 0.5 * bottom
                Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(d / f"{i:03d}.jpg", quality=90)
    return root


def has_green(x: torch.Tensor) -> bool:
    """Any clearly green pixel in a uint8 (3, H, W) crop (resampling blurs the stripe's edge, not its colour)."""
    r, g, b = x.int()
    return bool(((g > 200) & (r < 60) & (b < 60)).any())


# ---------------------------------------------------------------------------------------------------------- geometry


def test_train_crop_is_cut_from_the_full_original(tmp_path):
    """A centre-crop-first pipeline (resize 300 -> 224, centre crop) never sees the stripe; crops of the original
    contain it exactly when their box reaches into it."""
    marked_image(tmp_path / "train" / "a" / "0.png")
    centre_first = load_dataset("imagefolder", split="train", root=tmp_path, img_size=224)
    assert not has_green(centre_first.images[0])  # the stripe is outside every crop of that image
    geo = TrainGeometry(64, interpolation="bilinear")
    folder = ImageFolder(tmp_path, split="train", geometry=geo, seed=7)
    seen = 0
    for position in range(200):
        x, _ = folder[(0, 0, position)]
        left, _, _, _ = geo.box(400, 300, sample_generator(7, 0, position))
        # the flip moves the stripe but cannot create or remove it
        assert has_green(x) == (left < MARK - 2), (position, left)
        seen += has_green(x)
    assert 10 < seen < 190  # both kinds of crops happen


def test_train_geometry_equals_pil_reference(tmp_path):
    """The worker's crop = PIL crop of the box torchvision's rule draws, resized bicubic (antialiased), flipped."""
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8))
    geo = TrainGeometry(48)
    for position in range(20):
        g = sample_generator(3, 1, position)
        out = to_tensor(geo(img, g))
        g = sample_generator(3, 1, position)
        left, top, w, h = geo.box(400, 300, g)
        ref = img.crop((left, top, left + w, top + h)).resize((48, 48), Image.Resampling.BICUBIC)
        if float(torch.rand(1, generator=g)) < 0.5:
            ref = ref.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        assert torch.equal(out, to_tensor(ref))
        assert 0.08 * 400 * 300 * 0.9 <= w * h <= 400 * 300 and 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1


def test_geometry_matches_torchvision():
    """Same boxes and sizes as torchvision's PIL transforms (DeiT's pipeline): eval and the train crop."""
    tv = pytest.importorskip("torchvision.transforms")
    tvf = pytest.importorskip("torchvision.transforms.functional")
    img = Image.fromarray(np.random.default_rng(2).integers(0, 256, (300, 400, 3), dtype=np.uint8))
    ev = tv.Compose([tv.Resize(256, interpolation=tv.InterpolationMode.BICUBIC), tv.CenterCrop(224)])
    assert torch.equal(to_tensor(EvalGeometry(224)(img)), to_tensor(ev(img)))
    geo = TrainGeometry(96, hflip=0.0)
    left, top, w, h = geo.box(400, 300, sample_generator(0, 0, 5))
    ref = tvf.resized_crop(img, top, left, h, w, [96, 96], interpolation=tv.InterpolationMode.BICUBIC)
    assert torch.equal(to_tensor(geo(img, sample_generator(0, 0, 5))), to_tensor(ref))


def test_eval_geometry_arithmetic():
    img = Image.new("RGB", (400, 300))
    assert resize_center_crop(img, 224, 0.875, "bicubic").size == (224, 224)
    assert EvalGeometry(32, crop_pct=1.0)(Image.new("L", (32, 50))).size == (32, 32)
    with pytest.raises(ConfigError, match="crop_pct"):
        EvalGeometry(32, crop_pct=0.0)
    with pytest.raises(ConfigError, match="scale"):
        TrainGeometry(32, scale=(0.5, 0.1))


# ---------------------------------------------------------------------------------------------------------- keys


def test_crops_are_a_function_of_seed_epoch_position(tmp_path):
    root = layout_folder(tmp_path, 3, splits=("train",))
    folder = ImageFolder(root, split="train", geometry=TrainGeometry(32), seed=1)
    a, b = folder[(2, 0, 5)][0], folder[(2, 0, 5)][0]
    assert torch.equal(a, b)
    assert not torch.equal(a, folder[(2, 0, 6)][0])  # another position (a repeated-augmentation copy)
    assert not torch.equal(a, folder[(2, 1, 5)][0])  # another epoch
    folder.load_into_memory()
    assert torch.equal(a, folder[(2, 0, 5)][0])  # in memory: the very same pixels


def test_stream_loader_keys_resume_and_workers(tmp_path):
    root = layout_folder(tmp_path, 5, splits=("train",))
    folder = ImageFolder(root, split="train", geometry=TrainGeometry(24), seed=0)
    sampler = RASampler(len(folder), num_repeats=3, seed=0)
    loader = StreamLoader(folder, batch_size=4, sampler=sampler, drop_last=True, workers=0)
    loader.set_epoch(2)
    full = loader.keyed_batches()
    positions = [k[2] for batch in full for k in batch]
    assert positions == list(range(len(positions)))  # one position per sample: repeats get their own crops
    assert [k[0] for k in full[0]][:3] == [full[0][0][0]] * 3  # RA: three consecutive copies of one image
    loader.skip(1)
    assert loader.keyed_batches() == full[1:]  # a resumed epoch hands out the same keys
    loader.set_epoch(2)
    x0 = [x for x, _ in loader]
    parallel = StreamLoader(folder, batch_size=4, sampler=sampler, drop_last=True, workers=2)
    parallel.set_epoch(2)
    assert all(torch.equal(a, b) for a, (b, _) in zip(x0, parallel))  # workers do not change the crops
    ranks = [RASampler(len(folder), num_replicas=2, rank=r, num_repeats=3, seed=0) for r in (0, 1)]
    keys = [StreamLoader(folder, batch_size=2, sampler=s, drop_last=True, workers=0).keyed_batches() for s in ranks]
    pos = [{k[2] for batch in ks for k in batch} for ks in keys]
    assert not pos[0] & pos[1]  # the two processes never share a position


# ---------------------------------------------------------------------------------------------------------- splits


def _splits(root: Path, **kw):
    return open_folder_splits(root, train_geometry=TrainGeometry(16), eval_geometry=EvalGeometry(16), **kw)


def test_memory_budget_decides_and_explains(tmp_path, caplog):
    root = layout_folder(tmp_path, 3)
    exact = sum(w * h * 3 for w, h in (Image.open(p).size for p in root.rglob("*.jpg")))
    with caplog.at_level(logging.INFO):
        fits = _splits(root, budget_gb=1.0)
    assert fits.in_memory and fits.train.in_memory and fits.decoded_bytes == exact
    assert "in memory" in caplog.text
    streamed = _splits(root, budget_gb=exact / 2 / 2**30)
    assert not streamed.in_memory and not streamed.train.in_memory
    with pytest.raises(ConfigError) as e:
        _splits(root, budget_gb=exact / 2 / 2**30, stream=False)
    msg = str(e.value)
    assert "12 images" in msg and "MiB decoded" in msg and "memory budget" in msg and "data.stream=true" in msg
    assert not _splits(root, budget_gb=1.0, stream=True).in_memory


def test_val_without_test_and_test_without_val(tmp_path, caplog):
    root = layout_folder(tmp_path / "imagenet_like", 2)  # train/ + val/, as ImageNet
    with caplog.at_level(logging.INFO):
        s = _splits(root)
    assert (s.eval_split, s.test_split) == ("val", "val") and s.test is s.eval
    assert "no test/ folder" in caplog.text
    other = layout_folder(tmp_path / "train_test", 2, splits=("train", "test"))
    s = _splits(other)
    assert (s.eval_split, s.test_split) == ("test", "test")
    bare = layout_folder(tmp_path / "bare", 2, splits=("train",))
    with pytest.raises(DataError, match="no val/ or test/ folder"):
        _splits(bare)
    (root / "val" / "extra").mkdir()
    Image.new("RGB", (8, 8)).save(root / "val" / "extra" / "x.png")
    with pytest.raises(DataError, match="other class folders"):
        _splits(root)


# ---------------------------------------------------------------------------------------------------------- training


def _folder_run(root: Path, out: Path, *extra: str):
    return build_config(overrides=[
        "data.dataset=imagefolder", f"data.path={root}", "model.name=deit_micro_patch4_28", "model.img_size=32",
        "data.batch_size=8", "data.workers=0", "train.epochs=2", "optim.lr=2e-3", "optim.scale_lr=false",
        "optim.warmup_epochs=0", "aug.rand_augment=rand-m9-mstd0.5-inc1", "train.progress=false",
        "train.device=cpu", f"train.output_dir={out}", *extra,
    ])  # fmt: skip


@pytest.mark.slow
def test_folder_training_reports_splits_and_resumes_exactly(tmp_path):
    """A run on originals streamed through workers-side crops + batched augmentation resumes bit-exactly from a
    mid-epoch checkpoint, and its results say the final evaluation read val (no test/ folder)."""
    root = layout_folder(tmp_path / "data", 16)  # 32 train images, batch 8: 4 steps per epoch
    extra = ("data.repeated_aug=3", "train.checkpoint_every_steps=3", "train.keep_last=20")
    full = train(_folder_run(root, tmp_path / "full", *extra))
    assert full.splits == {"eval": "val", "test": "val"}
    saved = json.loads((tmp_path / "full" / "results.json").read_text())
    assert saved["splits"] == {"eval": "val", "test": "val"} and "test_acc" in saved["final"]
    card = json.loads((tmp_path / "full" / "model" / "config.json").read_text())
    crop = card["pretrained_cfg"]["crop_pct"]
    assert crop < 1 and card["preprocessing"]["native_size"] == [int(32 / crop)] * 2  # DeiT's eval resize, once
    entries = read_manifest(tmp_path / "full")
    cut = next(e for e in entries if e.step == 6)  # inside the second epoch
    part = tmp_path / "part"
    copy_run_cut_at(tmp_path / "full", part, cut.step)
    train(build_config(overrides=[f"train.resume={part}", "train.progress=false"]))
    a, _ = read_checkpoint(tmp_path / "full" / "model.safetensors")
    b, _ = read_checkpoint(part / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
