"""Shared test set-up: deterministic seeds, two threads (CI has two cores), small helpers."""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
