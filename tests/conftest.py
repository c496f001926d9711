"""Shared test set-up: deterministic seeds, two threads (CI has two cores), small helpers."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch

torch.set_num_threads(2)
# deitlab.optimize_for's per-machine cache: the tests' own, never the user's ~/.cache/deitlab.
os.environ.setdefault("DEITLAB_CACHE", tempfile.mkdtemp(prefix="deitlab-cache-"))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
