"""RASampler / ShuffleSampler: epoch length, coverage, repeats across replicas, determinism, resume."""

from __future__ import annotations

import math
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from deitlab.data import RASampler, ShuffleSampler
from deitlab.errors import ConfigError


def all_replicas(n, world, repeats, seed, epoch, shuffle=True):
    out = []
    for rank in range(world):
        s = RASampler(n, num_replicas=world, rank=rank, num_repeats=repeats, seed=seed, shuffle=shuffle)
        s.set_epoch(epoch)
        out.append(list(s))
    return out


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 2000),
    world=st.integers(1, 8),
    repeats=st.integers(1, 4),
    seed=st.integers(0, 2**31 - 1),
    epoch=st.integers(0, 1000),
)
def test_ra_sampler_properties(n, world, repeats, seed, epoch):
    parts = all_replicas(n, world, repeats, seed, epoch)
    per = math.ceil(n / world)
    assert all(len(p) == per for p in parts)
    assert all(0 <= i < n for p in parts for i in p)
    union = [i for p in parts for i in p]
    assert len(union) == per * world
    counts = Counter(union)
    # the epoch holds the first n entries of the repeated permutation, then < world wrapped ones
    distinct = math.ceil(n / repeats)
    assert len(counts) == distinct
    pad = per * world - n
    over = sum(max(0, c - repeats) for c in counts.values())
    assert over <= pad
    for p in parts:  # consecutive copies are dealt to different replicas
        c = Counter(p)
        assert max(c.values()) <= math.ceil(repeats / world) + math.ceil(pad / max(1, n)) + 1
    assert all_replicas(n, world, repeats, seed, epoch) == parts  # deterministic per (seed, epoch)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(2, 2000), repeats=st.integers(1, 4), seed=st.integers(0, 2**31 - 1))
def test_epochs_differ(n, repeats, seed):
    if math.ceil(n / repeats) < 2:
        return  # a single distinct index cannot be reordered
    a = all_replicas(n, 1, repeats, seed, 0)[0]
    b = all_replicas(n, 1, repeats, seed, 1)[0]
    if n >= 4 * repeats:  # tiny permutations may coincide by chance
        assert a != b


def test_repeats_are_consecutive_and_cover_a_third():
    s = RASampler(12, num_repeats=3, shuffle=False)
    assert list(s) == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    s = RASampler(300, num_repeats=3, seed=5)
    idx = list(s)
    assert len(idx) == 300 and len(set(idx)) == 100
    assert all(idx[3 * j] == idx[3 * j + 1] == idx[3 * j + 2] for j in range(100))
    # with 3 replicas the three copies of an image go to three different replicas
    parts = all_replicas(300, 3, 3, 5, 0)
    assert parts[0] == parts[1] == parts[2] and sorted(set(parts[0])) == sorted(set(idx))


def test_small_dataset_still_yields_samples():
    # DeiT's sampler yields floor(len/256)*256/world = 0 samples here
    parts = all_replicas(5, 8, 3, 0, 0)
    assert all(len(p) == 1 for p in parts)
    assert len(list(RASampler(1, num_repeats=3))) == 1


def test_plain_shuffle_is_a_permutation():
    s = ShuffleSampler(50, seed=1)
    s.set_epoch(3)
    assert sorted(s) == list(range(50)) and list(s) != list(range(50))
    parts = [list(ShuffleSampler(50, num_replicas=4, rank=r)) for r in range(4)]
    union = Counter(sum(parts, []))
    assert set(union) == set(range(50)) and sum(union.values()) == 52  # 13 per replica, 2 wrapped repeats
    assert sorted(union.values())[-3:] == [1, 2, 2]
    assert list(ShuffleSampler(5, shuffle=False)) == [0, 1, 2, 3, 4]


def test_validation():
    with pytest.raises(ConfigError, match="empty"):
        RASampler(0)
    with pytest.raises(ConfigError, match="rank"):
        RASampler(10, num_replicas=2, rank=2)
    with pytest.raises(ConfigError, match="num_repeats"):
        RASampler(10, num_repeats=0)
