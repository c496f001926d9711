"""BatchLoader: batches follow the sampler order, drop_last, skip for mid-epoch resume."""

from __future__ import annotations

import pytest
import torch

from deitlab.data import BatchLoader, RASampler, ShuffleSampler, TrainAugment, load_dataset
from deitlab.errors import ConfigError


@pytest.fixture
def ds():
    return load_dataset("synthetic", split="train", num_samples=50, img_size=8, in_chans=1, num_classes=5)


def test_batches_cover_sampler_order(ds):
    sampler = RASampler(len(ds), num_repeats=3, seed=2)
    sampler.set_epoch(4)
    loader = BatchLoader(ds, batch_size=16, sampler=sampler, drop_last=False)
    batches = list(loader)
    assert len(loader) == len(batches) == 4 and [len(b[1]) for b in batches] == [16, 16, 16, 2]
    order = sampler.epoch_indices()
    x = torch.cat([b[0] for b in batches])
    y = torch.cat([b[1] for b in batches])
    assert torch.equal(x, ds.images[order]) and torch.equal(y, ds.labels[order])
    assert x.dtype == torch.uint8 and y.dtype == torch.int64
    dropped = BatchLoader(ds, batch_size=16, sampler=sampler, drop_last=True)
    assert len(dropped) == 3 and len(list(dropped)) == 3


def test_skip_resumes_mid_epoch(ds):
    loader = BatchLoader(ds, batch_size=8, sampler=ShuffleSampler(len(ds), seed=1), drop_last=True)
    loader.set_epoch(2)
    full = list(loader)
    loader.skip(4)
    rest = list(loader)
    assert len(rest) == len(full) - 4
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(rest, full[4:]))
    assert len(list(loader)) == len(full)  # skip applies to one iteration only
    with pytest.raises(ConfigError, match="cannot skip"):
        loader.skip(len(full) + 1)


def test_loader_feeds_train_augment(ds):
    aug = TrainAugment(img_size=8, mean=ds.mean, std=ds.std, scale=(0.5, 1.0))
    loader = BatchLoader(ds, batch_size=10, sampler=RASampler(len(ds)), drop_last=True)
    g = torch.Generator().manual_seed(0)
    for x, y in loader:
        out = aug(x, g)
        assert out.shape == (10, 1, 8, 8) and out.dtype == torch.float32 and y.shape == (10,)


def test_sampler_size_must_match(ds):
    with pytest.raises(ConfigError, match="num_samples=len"):
        BatchLoader(ds, batch_size=4, sampler=RASampler(len(ds) + 1), drop_last=False)
