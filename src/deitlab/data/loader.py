"""Training batches in the sampler's order, with ``set_epoch``/``skip`` for exact mid-epoch resume.

- :class:`BatchLoader`: an in-memory :class:`~deitlab.data.imageset.ImageSet` (MNIST, CIFAR, ...), one tensor index
  per batch and no per-image workers; the augmentation then runs batched on the device (``augment.py``).
- :class:`StreamLoader`: a per-image Dataset (:class:`~deitlab.data.readers.imagefolder.ImageFolder`) whose
  DataLoader workers decode each image and apply its geometry; it hands the dataset ``(index, epoch, position)``
  keys, so each sample's random crop is a function of where it sits in the epoch, not of the worker that loads it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from deitlab.data.imageset import ImageSet
from deitlab.data.samplers import RASampler
from deitlab.errors import ConfigError


class _EpochBatches:
    """The sampler's epoch order cut into batches, with ``set_epoch``/``skip`` for exact mid-epoch resume."""

    def __init__(self, dataset, *, batch_size: int, sampler: RASampler, drop_last: bool) -> None:  # noqa: ANN001
        if batch_size < 1:
            raise ConfigError(f"batch_size={batch_size} must be >= 1")
        if sampler.num_samples != len(dataset):
            name = getattr(dataset, "name", type(dataset).__name__)
            raise ConfigError(
                f"sampler covers {sampler.num_samples} samples but {name} has {len(dataset)}; build the "
                "sampler with num_samples=len(dataset)"
            )
        self.dataset, self.batch_size, self.sampler, self.drop_last = dataset, int(batch_size), sampler, drop_last
        self._start = 0

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def skip(self, n_batches: int) -> None:
        """Start the next iteration at batch ``n_batches`` (0 <= n_batches <= len(self))."""
        if not 0 <= n_batches <= len(self):
            raise ConfigError(f"cannot skip {n_batches} batches of an epoch that has {len(self)}")
        self._start = int(n_batches)

    def _batches(self) -> list[torch.Tensor]:
        """This epoch's remaining batches of indices; later iterations start at batch 0 again."""
        order = self.sampler.epoch_indices()
        start, self._start = self._start, 0
        return [order[b * self.batch_size : (b + 1) * self.batch_size] for b in range(start, len(self))]


class BatchLoader(_EpochBatches):
    """Yield ``(uint8 images (B, C, H, W), int64 labels (B,))`` in the sampler's order.

    Args:
        dataset: the in-memory image set.
        batch_size: samples per batch.
        sampler: a :class:`RASampler` (or :class:`ShuffleSampler`) over ``len(dataset)`` samples.
        drop_last: drop the last incomplete batch (training) or keep it (evaluation).
        device: move each batch there (``non_blocking`` from pinned memory when ``pin_memory``).
        pin_memory: pin the batch before a CUDA copy.

    To resume mid-epoch, ``set_epoch(e)`` then ``skip(k)``: the next iteration starts at batch ``k`` of epoch
    ``e`` (the batches are the same as in an uninterrupted run); later iterations start at 0 again.
    """

    def __init__(
        self,
        dataset: ImageSet,
        *,
        batch_size: int,
        sampler: RASampler,
        drop_last: bool,
        device: torch.device | str | None = None,
        pin_memory: bool = False,
    ) -> None:
        super().__init__(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last)
        self.device = None if device is None else torch.device(device)
        self.pin_memory = pin_memory

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        images, labels = self.dataset.images, self.dataset.labels
        for idx in self._batches():
            x, y = images[idx], labels[idx]
            if self.device is not None:
                if self.pin_memory and self.device.type == "cuda":
                    x, y = x.pin_memory(), y.pin_memory()
                x = x.to(self.device, non_blocking=self.pin_memory)
                y = y.to(self.device, non_blocking=self.pin_memory)
            yield x, y


class StreamLoader(_EpochBatches):
    """The :class:`BatchLoader` interface over a per-image ``Dataset`` (an ImageFolder): the sampler's epoch order is
    cut into batches and a ``DataLoader`` with ``workers`` processes loads them, each item keyed
    ``(index, epoch, position)`` -- ``position`` = the item's place in the epoch over all processes
    (``rank + world * local_position``). Batches are uint8 ``(B, C, H, W)`` like the in-memory path, so the rest
    of the augmentation stays batched on the device; ``pin_memory`` pins them for fast copies to a GPU.
    """

    def __init__(
        self,
        dataset: torch.utils.data.Dataset,
        *,
        batch_size: int,
        sampler: RASampler,
        drop_last: bool,
        workers: int = 4,
        pin_memory: bool = False,
    ) -> None:
        if workers < 0:
            raise ConfigError(f"workers={workers} must be >= 0")
        super().__init__(dataset, batch_size=batch_size, sampler=sampler, drop_last=drop_last)
        self.workers, self.pin_memory = workers, pin_memory

    def keyed_batches(self) -> list[list[tuple[int, int, int]]]:
        """This epoch's remaining batches as dataset keys ``(index, epoch, position)``."""
        start = self._start
        epoch, rank, world = self.sampler.epoch, self.sampler.rank, self.sampler.num_replicas
        out = []
        for b, idx in enumerate(self._batches(), start=start):
            first = b * self.batch_size
            out.append([(i, epoch, rank + world * (first + j)) for j, i in enumerate(idx.tolist())])
        return out

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        batches = self.keyed_batches()
        if batches:
            yield from _data_loader(self.dataset, batches, self.workers, self.pin_memory)


def sequential_batches(dataset: torch.utils.data.Dataset, batch_size: int, *, rank: int = 0, world_size: int = 1,
                       workers: int = 4, pin_memory: bool = False) -> torch.utils.data.DataLoader:  # fmt: skip
    """Evaluation batches of a per-image ``Dataset``: the unpadded shard ``rank::world_size``, in order."""
    shard = list(range(rank, len(dataset), world_size))
    batches = [shard[i : i + batch_size] for i in range(0, len(shard), batch_size)]
    return _data_loader(dataset, batches, workers, pin_memory)


def _data_loader(
    dataset: torch.utils.data.Dataset, batches: list, workers: int, pin: bool
) -> torch.utils.data.DataLoader:
    """A DataLoader over fixed batches of keys. Its own generator: every ``iter()`` of a DataLoader draws a worker base
    seed, which would otherwise come from torch's global RNG and shift it -- a run resumed mid-epoch (one more
    ``iter()``) would then drop different paths than the uninterrupted run. The crops never use that seed."""
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=batches, num_workers=workers, pin_memory=pin, generator=torch.Generator()
    )
