"""Shared fixtures: float64 by default, seeded RNG, device list for CUDA-parametrised tests."""
from __future__ import annotations

import os

import pytest
import torch

import simulated_cuda

if simulated_cuda.requested():  # MONDEQ_SIMULATE_CUDA=1: CUDA tests run on the simulated device
    simulated_cuda.activate()   # before any test module asks torch.cuda.is_available()

from mondeq.operators.dense import MonotoneLinear  # noqa: E402

# Under pytest-xdist (``-n auto``, the README's command) each worker gets its share of the cores,
# and so do the programs the tests start (OMP_NUM_THREADS is inherited): no oversubscription.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    _THREADS = max(1, (os.cpu_count() or 1) // _WORKERS)
    torch.set_num_threads(_THREADS)
    os.environ.setdefault("OMP_NUM_THREADS", str(_THREADS))

MAX_WORKERS = 8
"""``-n auto`` starts one worker a core, at most this many (each imports torch: ~1 GB at peak)."""


def pytest_xdist_auto_num_workers(config) -> int:
    return max(1, min(os.cpu_count() or 1, MAX_WORKERS))


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


def make_conv(size: int, m: float = 0.2, scale: float = 1.0):
    """A float64 single-conv parametrisation (1 → 2 channels, 3×3, ``size``×``size`` grid);
    ``scale`` enlarges F, G."""
    from mondeq.operators.conv import MonotoneConv

    linear = MonotoneConv(1, 2, size, kernel_size=3, m=m, dtype=torch.float64)
    with torch.no_grad():
        linear.F.mul_(scale)
        linear.G.mul_(scale)
    return linear


def make_multitier(m: float = 0.2, scale: float = 1.0):
    """A float64 two-tier parametrisation (2, 2 channels on a 4×4 grid); ``scale`` enlarges
    every parameter but U."""
    from mondeq.operators.multitier import MonotoneMultiTier

    linear = MonotoneMultiTier(1, (2, 2), 4, m=m, dtype=torch.float64)
    with torch.no_grad():
        for name, p in linear.named_parameters():
            if not name.startswith("U"):
                p.mul_(scale)
    return linear


def direct_residual(weight: torch.Tensor, prox, bias, z) -> torch.Tensor:
    """‖z − σ(Wz + b)‖/‖z‖ per sample from the dense matrix ``weight``, independent of the
    solvers (0/0 counts as 0, as the stopping rule says)."""
    from splitting.state import flatten

    flat, b = flatten(z), flatten(bias)
    diff = (flat - prox(flat @ weight.T + b)).norm(dim=1)
    return torch.where(diff == 0, 0.0, diff / flat.norm(dim=1))


def dense_weight(F: torch.Tensor, G: torch.Tensor, m: float) -> torch.Tensor:
    """W = (1 − m)I − FᵀF + Gᵀ − G, differentiable in F and G."""
    eye = torch.eye(F.shape[0], dtype=F.dtype)
    return (1 - m) * eye - F.T @ F + G.T - G


def random_params(n_in: int = 4, n: int = 5, batch: int = 3) -> tuple[torch.Tensor, ...]:
    """``(x, U, b, F, G)`` of a small dense monDEQ, all requiring gradients (for gradcheck)."""
    return (torch.randn(batch, n_in, requires_grad=True),
            (0.5 * torch.randn(n, n_in)).requires_grad_(),
            (0.3 * torch.randn(n)).requires_grad_(),
            (0.6 * torch.randn(n, n)).requires_grad_(),
            (0.6 * torch.randn(n, n)).requires_grad_())


def central_difference(value, params, directions, h: float = 1e-6) -> float:
    """(f(θ + h·d) − f(θ − h·d)) / 2h of ``value()`` along ``directions``, moving ``params`` in
    place (and back) under no_grad: the independent side of a directional-derivative test."""
    def at(t: float) -> float:
        with torch.no_grad():
            for p, d in zip(params, directions):
                p.add_(t * d)
            out = float(value())
            for p, d in zip(params, directions):
                p.sub_(t * d)
        return out

    return (at(h) - at(-h)) / (2 * h)


def load_experiment(name: str):
    """Import ``experiments/<name>.py`` as a module (the programs are scripts, not a package);
    the folder is on ``sys.path`` while it loads, for programs that import a sibling."""
    import importlib.util
    import sys
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "experiments"
    sys.path.insert(0, str(folder))
    try:
        spec = importlib.util.spec_from_file_location(f"{name}_experiment", folder / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up by name
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(folder))
    return module


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a URL fails the test (the data tests must stay offline)."""
    import urllib.request

    def refuse(*args, **kwargs):
        raise AssertionError("test attempted network access")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
