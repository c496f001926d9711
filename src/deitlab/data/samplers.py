"""Epoch samplers: repeated augmentation (DeiT's ``RASampler``, fixed) and a plain shuffle, one interface.

Repeated augmentation (Hoffer et al. 2020; Berman et al. 2019) puts each chosen image ``num_repeats`` times
in an epoch, consecutively, so with several replicas the copies land on different processes (each gets its own
random augmentation). DeiT's sampler (``samplers.py``) then truncates each replica's list to
``floor(len / 256) * 256 / world`` samples, which drops a third of the epoch and empties data sets under 256
images (SPEC section 6.3). Here an epoch has as many samples as the data set:

1. ``perm`` = a permutation of ``range(num_samples)`` seeded by ``(seed, epoch)`` (identity if not shuffling);
2. every index repeated ``num_repeats`` times consecutively; keep the first ``num_samples``;
3. pad by wrapping to a multiple of ``num_replicas``; replica ``rank`` takes ``[rank::num_replicas]``.

So each replica yields ``ceil(num_samples / num_replicas)`` indices, about ``num_samples / num_repeats``
distinct images per epoch, and ``num_repeats=1`` is an ordinary (distributed) shuffle.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

from deitlab.errors import ConfigError

UINT32_MASK = 0xFFFFFFFF  # SeedSequence takes non-negative 32-bit words; larger seeds keep their low 32 bits


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A ``torch.Generator`` seeded from ``(seed, epoch)`` through numpy's SeedSequence (no collisions between
    nearby pairs, unlike ``seed + epoch``).

    An epoch's order is a pure function of ``(seed, epoch)``, so resuming needs no sampler state.
    """
    words = [int(seed) & UINT32_MASK, int(epoch) & UINT32_MASK]
    hi, lo = np.random.SeedSequence(words).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(hi) << 31 | int(lo) >> 1)  # two 32-bit words -> a 63-bit seed


class RASampler(Sampler[int]):
    """Repeated-augmentation sampler for one or many replicas; see the module docstring.

    Args:
        num_samples: size of the data set.
        num_replicas: number of processes (world size).
        rank: this process's index in ``[0, num_replicas)``.
        num_repeats: copies of each chosen index (DeiT: 3); 1 = plain shuffle.
        shuffle: permute per epoch; ``False`` keeps ``0, 0, 0, 1, 1, 1, ...`` order.
        seed: base seed, shared by all replicas.
    """

    def __init__(
        self,
        num_samples: int,
        *,
        num_replicas: int = 1,
        rank: int = 0,
        num_repeats: int = 3,
        shuffle: bool = True,
        seed: int = 0,
    ) -> None:
        if num_samples < 1:
            raise ConfigError(f"sampler num_samples={num_samples}: the data set is empty; it needs >= 1 sample")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ConfigError(f"sampler rank={rank}, num_replicas={num_replicas}: need 0 <= rank < num_replicas")
        if num_repeats < 1:
            raise ConfigError(f"sampler num_repeats={num_repeats} must be >= 1 (1 = no repeated augmentation)")
        self.num_samples, self.num_replicas, self.rank = int(num_samples), int(num_replicas), int(rank)
        self.num_repeats, self.shuffle, self.seed = int(num_repeats), bool(shuffle), int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return math.ceil(self.num_samples / self.num_replicas)

    def epoch_indices(self) -> torch.Tensor:
        """This replica's indices for the current epoch, int64 ``(len(self),)``."""
        n = self.num_samples
        if self.shuffle:
            order = torch.randperm(n, generator=epoch_generator(self.seed, self.epoch))
        else:
            order = torch.arange(n)
        order = order.repeat_interleave(self.num_repeats)[:n]
        total = len(self) * self.num_replicas
        if total > n:  # wrap around; more than once only when n < num_replicas
            order = order.repeat(math.ceil(total / n))[:total]
        return order[self.rank : total : self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        return iter(self.epoch_indices().tolist())

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_samples={self.num_samples}, num_replicas={self.num_replicas}, "
            f"rank={self.rank}, num_repeats={self.num_repeats}, shuffle={self.shuffle}, seed={self.seed})"
        )


class ShuffleSampler(RASampler):
    """Plain (distributed) shuffle: :class:`RASampler` with ``num_repeats=1``; ``shuffle=False`` for evaluation."""

    def __init__(
        self, num_samples: int, *, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0
    ) -> None:
        super().__init__(num_samples, num_replicas=num_replicas, rank=rank, num_repeats=1, shuffle=shuffle, seed=seed)
