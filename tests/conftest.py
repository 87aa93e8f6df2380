"""Shared fixtures: float64 by default, seeded RNG, device list for CUDA-parametrised tests."""
from __future__ import annotations

import pytest
import torch

from mondeq.dense import MonotoneLinear

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@pytest.fixture(autouse=True)
def _seed_and_dtype():
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def make_dense(n_in: int = 6, n: int = 5, m: float = 0.5, scale: float = 1.0) -> MonotoneLinear:
    """A small float64 dense parametrisation; ``scale`` enlarges F, G (a harder problem)."""
    linear = MonotoneLinear(n_in, n, m=m, dtype=torch.float64)
    with torch.no_grad():
        linear.F.mul_(scale)
        linear.G.mul_(scale)
    return linear
