"""Readers: idx, CIFAR binary, ImageFolder (in memory and streamed), digits, synthetic, and their errors."""

from __future__ import annotations

import gzip
import logging
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deitlab.data import (
    DATASETS,
    EvalGeometry,
    ImageFolder,
    ImageSet,
    dataset_names,
    load_dataset,
    read_idx,
    stratified_holdout,
)
from deitlab.errors import ConfigError, DataError

FASHION = Path("/usr/share/datasets/fashion-mnist")


def write_idx(path: Path, arr: np.ndarray, gz: bool) -> Path:
    arr = np.asarray(arr, dtype=np.uint8)
    raw = bytes([0, 0, 0x08, arr.ndim]) + b"".join(struct.pack(">I", d) for d in arr.shape) + arr.tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        path.write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)
    return path


def make_mnist_dir(root: Path, n_train: int = 120, n_test: int = 30, gz: bool = True) -> Path:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(root / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)), gz)
        write_idx(root / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10, gz)
    return root


# ----------------------------------------------------------------------------------------------- idx


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_reader_gz_and_raw(tmp_path, gz):
    root = make_mnist_dir(tmp_path / "m", gz=gz)
    train = load_dataset("mnist", split="train", root=root, val_fraction=0.25)
    val = load_dataset("mnist", split="val", root=root, val_fraction=0.25)
    test = load_dataset("mnist", split="test", root=root)
    assert (len(train), len(val), len(test)) == (90, 30, 30)
    assert train.images.dtype == torch.uint8 and train.images.shape[1:] == (1, 28, 28)
    assert train.img_size == (28, 28) and train.in_chans == 1 and train.num_classes == 10
    assert torch.equal(val.labels.bincount(minlength=10), torch.full((10,), 3))  # stratified: 3 of 12 per class
    raw = read_idx(root / ("train-images-idx3-ubyte" + (".gz" if gz else "")))
    all_imgs = torch.cat([train.images, val.images])[:, 0]
    assert sorted(map(bytes, all_imgs.numpy())) == sorted(map(bytes, raw))  # train + val = the official train set


def test_idx_truncated_names_file(tmp_path):
    p = write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((10, 28, 28)), gz=False)
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(DataError, match="train-images-idx3-ubyte.*truncated"):
        read_idx(p)


def test_idx_bad_magic_names_file(tmp_path):
    p = tmp_path / "train-labels-idx1-ubyte"
    p.write_bytes(b"\x12\x34\x08\x01" + struct.pack(">I", 3) + b"\x00\x01\x02")
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.*magic"):
        read_idx(p)


def test_idx_bad_gzip_and_wrong_dims(tmp_path):
    p = tmp_path / "t10k-images-idx3-ubyte.gz"
    noise = np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes()
    p.write_bytes(gzip.compress(noise)[:2000])  # cut inside the deflate stream
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.gz.*gzip"):
        read_idx(p)
    q = write_idx(tmp_path / "x", np.zeros((4, 2)), gz=False)
    with pytest.raises(DataError, match="declares 2 dimensions; expected 3"):
        read_idx(q, ndim=3)


def test_idx_label_out_of_range(tmp_path):
    root = make_mnist_dir(tmp_path / "m", gz=False)
    write_idx(root / "t10k-labels-idx1-ubyte", np.full(30, 12), gz=False)
    with pytest.raises(DataError, match="label 12"):
        load_dataset("mnist", split="test", root=root)


def test_missing_paths_say_how_to_get_data(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion_mnist", split="train", root=tmp_path / "nope")
    with pytest.raises(DataError, match="no train-images-idx3-ubyte"):
        load_dataset("fashion_mnist", split="train", root=tmp_path)
    with pytest.raises(DataError, match="cifar.html"):
        load_dataset("cifar10", split="train", root=tmp_path / "nope")
    with pytest.raises(DataError, match="needs a data path"):
        load_dataset("imagefolder", split="train")


@pytest.mark.skipif(not FASHION.is_dir(), reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_real_fashion_mnist():
    train = load_dataset("fashion_mnist", split="train")
    val = load_dataset("fashion_mnist", split="val")
    test = load_dataset("fashion_mnist", split="test")
    assert len(train) + len(val) == 60000 and len(val) == 5000 and len(test) == 10000
    assert train.images.shape[1:] == (1, 28, 28)
    for ds in (train, val, test):
        assert int(ds.labels.min()) == 0 and int(ds.labels.max()) == 9
    assert torch.equal(val.labels.bincount(), torch.full((10,), 500))
    again = load_dataset("fashion_mnist", split="val")
    assert torch.equal(again.images, val.images)  # deterministic split
    other = load_dataset("fashion_mnist", split="val", seed=1)
    assert not torch.equal(other.images, val.images)
    mean = train.images.float().mean().item() / 255
    assert abs(mean - DATASETS["fashion_mnist"].mean[0]) < 0.01


# ----------------------------------------------------------------------------------------------- CIFAR


def test_cifar10_binary(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "cifar-10-batches-bin"
    root.mkdir()
    records = {}
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        labels = rng.integers(0, 10, 6).astype(np.uint8)
        pix = rng.integers(0, 256, (6, 3072)).astype(np.uint8)
        (root / name).write_bytes(np.concatenate([labels[:, None], pix], 1).tobytes())
        records[name] = (labels, pix)
    (root / "batches.meta.txt").write_text("\n".join(f"c{i}" for i in range(10)) + "\n\n")
    test = load_dataset("cifar10", split="test", root=tmp_path)  # finds the extracted sub-folder
    labels, pix = records["test_batch.bin"]
    assert test.images.shape == (6, 3, 32, 32) and test.classes[3] == "c3"
    assert torch.equal(test.labels, torch.from_numpy(labels.astype(np.int64)))
    assert torch.equal(test.images[2].reshape(-1), torch.from_numpy(pix[2]))  # R plane, then G, then B
    train = load_dataset("cifar10", split="train", root=root, val_fraction=0.0)
    assert len(train) == 30


def test_cifar100_binary_uses_fine_labels(tmp_path):
    rng = np.random.default_rng(0)
    for name, n in (("train.bin", 8), ("test.bin", 4)):
        coarse = rng.integers(0, 20, n).astype(np.uint8)
        fine = rng.integers(0, 100, n).astype(np.uint8)
        pix = rng.integers(0, 256, (n, 3072)).astype(np.uint8)
        (tmp_path / name).write_bytes(np.concatenate([coarse[:, None], fine[:, None], pix], 1).tobytes())
    test = load_dataset("cifar100", split="test", root=tmp_path)
    assert test.num_classes == 100 and test.images.shape == (4, 3, 32, 32)
    assert torch.equal(test.labels, torch.from_numpy(fine.astype(np.int64)))


def test_cifar_truncated(tmp_path):
    (tmp_path / "test.bin").write_bytes(b"\x01" * 3074 * 2 + b"\x00" * 10)
    (tmp_path / "train.bin").write_bytes(b"")
    with pytest.raises(DataError, match="test.bin.*3074-byte records"):
        load_dataset("cifar100", split="test", root=tmp_path)


# ----------------------------------------------------------------------------------------------- ImageFolder


def make_folder(root: Path, split: str = "train", per_class: int = 3, size=(40, 30)) -> Path:
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        d = root / split / cls
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(arr).save(d / f"{i}.png" if i % 2 else d / f"{i}.jpg")
    return root


def test_imagefolder_reads_and_resizes(tmp_path):
    root = make_folder(tmp_path)
    ds = load_dataset("imagefolder", split="train", root=root, img_size=16)
    assert ds.images.shape == (6, 3, 16, 16) and ds.classes == ["cat", "dog"]
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1] and ds.skipped == []
    gray = load_dataset("imagefolder", split="train", root=root, img_size=8, in_chans=1)
    assert gray.images.shape == (6, 1, 8, 8) and gray.mean == (0.5,)


def test_imagefolder_corrupt_image_policies(tmp_path, caplog):
    root = make_folder(tmp_path)
    bad = root / "train" / "dog" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(DataError, match="broken.jpg"):
        load_dataset("imagefolder", split="train", root=root, img_size=16)
    with caplog.at_level(logging.WARNING):
        ds = load_dataset("imagefolder", split="train", root=root, img_size=16, bad_images="skip")
    assert len(ds) == 6 and ds.skipped == [str(bad)]
    assert "skipped 1 unreadable" in caplog.text and "broken.jpg" in caplog.text
    with pytest.raises(ConfigError, match="bad_images"):
        load_dataset("imagefolder", split="train", root=root, bad_images="ignore")


def test_imagefolder_empty_and_missing(tmp_path):
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError, match="no class sub-folders"):
        load_dataset("imagefolder", split="train", root=tmp_path)
    (tmp_path / "train" / "a").mkdir()
    (tmp_path / "train" / "a" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="no images"):
        load_dataset("imagefolder", split="train", root=tmp_path)
    with pytest.raises(DataError, match="val.*does not exist"):
        load_dataset("imagefolder", split="val", root=tmp_path)


def test_imagefolder_dataset_with_workers_and_bad_files(tmp_path):
    root = make_folder(tmp_path, per_class=4)
    (root / "train" / "cat" / "zz_bad.png").write_bytes(b"garbage")
    # crop_pct=1: resize + centre crop, the same geometry read_image_folder decodes with (bicubic, antialiased)
    stream = ImageFolder(root, split="train", geometry=EvalGeometry(16, crop_pct=1.0), bad_images="skip")
    mem = load_dataset("imagefolder", split="train", root=root, img_size=16, bad_images="skip")
    dl = torch.utils.data.DataLoader(stream, batch_size=3, num_workers=2, multiprocessing_context="fork")
    xs, ys = zip(*dl)
    x, y = torch.cat(xs), torch.cat(ys)
    assert x.dtype == torch.uint8 and x.shape == (9, 3, 16, 16)
    assert torch.equal(x[:4], mem.images[:4]) and torch.equal(x[5:], mem.images[4:])  # bad file -> next one
    assert y.tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 1]
    strict = ImageFolder(root, split="train", geometry=EvalGeometry(16, crop_pct=1.0))
    with pytest.raises(DataError, match="zz_bad.png"):
        strict[4]
    stream.load_into_memory()  # in memory, an unreadable file is dropped instead
    assert len(stream) == 8 and stream.skipped == [str(root / "train" / "cat" / "zz_bad.png")]
    assert torch.equal(torch.stack([stream[i][0] for i in range(8)]), mem.images)


# ----------------------------------------------------------------------------------------------- others


def test_digits_and_synthetic():
    tr, va, te = (load_dataset("digits", split=s) for s in ("train", "val", "test"))
    assert len(tr) + len(va) + len(te) == 1797 and tr.images.shape[1:] == (1, 8, 8)
    assert int(tr.images.max()) == 255
    a = load_dataset("synthetic", split="train", num_samples=64, img_size=12, in_chans=2, num_classes=4, seed=3)
    b = load_dataset("synthetic", split="train", num_samples=64, img_size=12, in_chans=2, num_classes=4, seed=3)
    c = load_dataset("synthetic", split="val", num_samples=64, img_size=12, in_chans=2, num_classes=4, seed=3)
    assert a.images.shape == (64, 2, 12, 12) and torch.equal(a.images, b.images)
    assert not torch.equal(a.images, c.images)
    # learnable: the nearest class mean of train classifies val well above chance
    means = torch.stack([a.images[a.labels == k].float().mean(0) for k in range(4)])
    d = ((c.images.float()[:, None] - means[None]) ** 2).sum(dim=(2, 3, 4))
    assert (d.argmin(1) == c.labels).float().mean() > 0.9


def test_load_dataset_argument_errors():
    with pytest.raises(ConfigError, match="did you mean fashion_mnist"):
        load_dataset("fashion-mnist", split="train")
    with pytest.raises(ConfigError, match="unknown split"):
        load_dataset("synthetic", split="dev")
    with pytest.raises(ConfigError, match="does not take option"):
        load_dataset("synthetic", split="train", bad_images="skip")
    with pytest.raises(ConfigError, match="val_fraction"):
        load_dataset("digits", split="train", val_fraction=1.5)
    assert set(dataset_names()) == set(DATASETS) and "imagefolder" in DATASETS


def test_imageset_validates_and_subsets():
    imgs = torch.zeros(4, 1, 2, 2, dtype=torch.uint8)
    with pytest.raises(DataError, match="labels span 0..5"):
        ImageSet(imgs, torch.tensor([0, 1, 5, 2]), ["a", "b", "c"], (0.5,), (0.5,), "toy")
    ds = ImageSet(imgs, torch.tensor([0, 1, 2, 2]), ["a", "b", "c"], (0.5,), (0.5,), "toy")
    sub = ds.subset([3, 1])
    assert sub.labels.tolist() == [2, 1] and sub.classes == ds.classes and len(sub) == 2


def test_stratified_holdout_deterministic():
    labels = np.repeat(np.arange(5), 20)
    keep, held = stratified_holdout(labels, 0.1, seed=7)
    keep2, held2 = stratified_holdout(labels, 0.1, seed=7)
    assert np.array_equal(held, held2) and len(held) == 10 and len(keep) == 90
    assert np.array_equal(np.bincount(labels[held]), np.full(5, 2))
    assert not set(keep) & set(held)
