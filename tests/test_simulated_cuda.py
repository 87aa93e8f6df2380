"""The simulated CUDA device (tests/simulated_cuda.py) catches device-placement bugs.

Each test turns the simulation on for itself (it runs with or without ``MONDEQ_SIMULATE_CUDA``).
Planted bugs, one at a time via monkeypatch, leave a tensor on the CPU inside the library (the
solver loop, the conv resolvent, augmentation) or hand a device tensor to a CPU-only call (the
checkpoint's RNG restore); the same operation passes without the plant and raises, naming the
operation, with it.
"""
from __future__ import annotations

import io

import pytest
import torch

import simulated_cuda
from simulated_cuda import SimulatedDeviceError, is_simulated


@pytest.fixture
def cuda():
    with simulated_cuda.simulated():
        yield torch.device("cuda")


class _Planted:
    """Stands for ``torch`` inside one library module, with some of its functions replaced."""

    def __init__(self, **replacements):
        self._replacements = replacements

    def __getattr__(self, name):
        return self._replacements.get(name, getattr(torch, name))


def _without_device(name: str):
    """``torch.<name>`` that forgets its ``device=`` (the tensor stays on the CPU)."""
    function = getattr(torch, name)
    return lambda *args, device=None, **kwargs: function(*args, **kwargs)


# ------------------------------------------------------------------- the device itself

def test_simulated_tensors_say_cuda_and_refuse_cpu_tensors(cuda):
    assert torch.cuda.is_available()
    x = torch.randn(3, 4, device="cuda")
    assert x.device.type == "cuda" and x.is_cuda and is_simulated(x)
    assert torch.zeros_like(x).is_cuda and torch.ones(2).device.type == "cpu"
    assert not is_simulated(x.cpu()) and x.cpu().device.type == "cpu"
    assert x.to("cpu").to(cuda).is_cuda and torch.randn(2).cuda().is_cuda
    assert (x + torch.tensor(2.0)).is_cuda  # a 0-d CPU scalar is fine, as on a GPU
    with pytest.raises(SimulatedDeviceError, match=r"aten\.mm"):
        x @ torch.randn(4, 2)
    with pytest.raises(SimulatedDeviceError, match=r"aten\.add"):
        torch.randn(3, 4) + x
    with pytest.raises(TypeError, match="numpy"):
        x.numpy()
    with pytest.raises(SimulatedDeviceError, match="generator"):
        torch.randn(3, generator=torch.Generator(device="cuda"))
    torch.testing.assert_close((x * 2).cpu(), x.cpu() * 2)


def test_autograd_modules_and_optimizers_stay_on_the_device(cuda):
    model = torch.nn.Linear(4, 2).to(cuda)
    assert all(p.is_cuda for p in model.parameters())
    optimizer = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.randn(5, 4, device=cuda)).square().sum().backward()
    assert all(p.grad.is_cuda for p in model.parameters())
    optimizer.step()
    assert all(p.is_cuda for p in model.parameters())
    with pytest.raises(SimulatedDeviceError, match=r"aten\.(addmm|mm|linear)"):
        model(torch.randn(5, 4))


def test_save_load_pinned_memory_and_cuda_functions(cuda):
    buffer = io.BytesIO()
    torch.save({"on_device": torch.ones(2, device=cuda), "host": torch.ones(2)}, buffer)
    for where, expected in ((None, ("cuda", "cpu")), ("cpu", ("cpu", "cpu")), ("cuda", ("cuda", "cuda"))):
        buffer.seek(0)
        state = torch.load(buffer, map_location=where, weights_only=True)
        assert (state["on_device"].device.type, state["host"].device.type) == expected, where
    pinned = torch.empty(3, pin_memory=True)
    assert pinned.is_pinned() and torch.ones(2).pin_memory().is_pinned()
    pinned.copy_(torch.arange(3.0, device=cuda), non_blocking=True)
    event = torch.cuda.Event()
    event.record()
    event.synchronize()
    torch.cuda.synchronize()
    assert pinned.tolist() == [0.0, 1.0, 2.0]
    free, total = torch.cuda.mem_get_info(cuda)
    assert 0 < free <= total


def test_switching_off_restores_torch():
    with simulated_cuda.simulated():
        assert torch.cuda.is_available()
    if not simulated_cuda.requested():
        assert not torch.cuda.is_available()
        assert torch.Generator is simulated_cuda._Generator


# --------------------------------------------------------------------------- planted bugs

def _solve_on_device(device):
    from mondeq.operators.dense import MonotoneLinear
    from splitting import ReLU, peaceman_rachford

    linear = MonotoneLinear(7, 9, m=0.5).to(device)
    with torch.no_grad():
        result = peaceman_rachford(linear.operator(), ReLU(), linear.bias(torch.randn(5, 7, device=device)),
                                   alpha=1.0, tol=1e-6, max_iter=500)
    assert result.converged and result.z[0].is_cuda


def _conv_resolvent_on_device(device):
    from mondeq.operators.conv import MonotoneConv

    linear = MonotoneConv(2, 3, (6, 5), m=0.5).to(device)
    with torch.no_grad():
        r = torch.randn(4, 3, 6, 5, device=device)
        out = linear.operator().resolvent(0.7).solve((r,))
    assert out[0].is_cuda


def _augment_on_device(device):
    from mondeq.data import Augmentation

    augment = Augmentation(True, padding=2, seed=0, device=device)
    out = augment(torch.rand(4, 1, 8, 8, device=device))
    assert out.is_cuda and out.shape == (4, 1, 8, 8)


def _resume_on_device(device, tmp_path):
    from mondeq import fc_mondeq
    from mondeq.training import load_checkpoint, save_checkpoint

    model = fc_mondeq(6, 5, 3).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, model=model, optimizer=optimizer, epoch=1, history=[], config={})
    state = load_checkpoint(path, model=model, optimizer=optimizer, map_location="cuda")
    assert state["model"]["head.weight"].is_cuda


def _plant_loop(monkeypatch):
    import splitting.loop

    # the solver's zero start made without device= (torch.zeros_like would keep the device)
    monkeypatch.setattr(splitting.loop, "torch", _Planted(
        zeros_like=lambda t, **kwargs: torch.zeros(t.shape, dtype=t.dtype)))


def _plant_resolvent(monkeypatch):
    import mondeq.operators.fft

    # the identity blocks of I + α(I − W) built without device=
    monkeypatch.setattr(mondeq.operators.fft, "torch", _Planted(eye=_without_device("eye")))


def _plant_augment(monkeypatch):
    import mondeq.data.augment

    # the crop's row/column offsets built without device=
    monkeypatch.setattr(mondeq.data.augment, "torch", _Planted(arange=_without_device("arange")))


def _plant_checkpoint(monkeypatch):
    import mondeq.training.checkpoint as checkpoint

    def restore_rng_without_cpu(state):  # the saved RNG states applied where they were loaded
        torch.set_rng_state(state["cpu"])
        for device, rng in enumerate(state.get("cuda") or []):
            torch.cuda.set_rng_state(rng, device)

    monkeypatch.setattr(checkpoint, "restore_rng", restore_rng_without_cpu)


PLANTS = {
    "loop": (_plant_loop, _solve_on_device, r"operation aten\.\w+"),
    "resolvent": (_plant_resolvent, _conv_resolvent_on_device, r"operation aten\.\w+"),
    "augment": (_plant_augment, _augment_on_device, r"operation aten\.add"),
    "checkpoint": (_plant_checkpoint, _resume_on_device, r"operation torch\.set_rng_state"),
}


@pytest.mark.parametrize("where", sorted(PLANTS))
def test_planted_device_bug_is_caught_naming_the_operation(where, cuda, monkeypatch, tmp_path):
    plant, operation, message = PLANTS[where]
    run = (lambda: operation(cuda, tmp_path)) if where == "checkpoint" else (lambda: operation(cuda))
    run()  # the library as it is: passes on the simulated device
    plant(monkeypatch)
    with pytest.raises(SimulatedDeviceError, match=message) as caught:
        run()
    print(f"{where}: {caught.value}")
    monkeypatch.undo()
    run()
