"""The training loop on a device: the data reaches the model's device (whole dataset or pinned
batches), a CUDA run's checkpoint loads on the CPU, and the per-epoch figures do not depend on
where the data came from. CUDA tests skip without a GPU."""
import importlib.util
from pathlib import Path

import pytest
import torch

from mondeq import fc_mondeq
from mondeq.training import DeviceData, evaluate, load_checkpoint, train_epoch
from tests.conftest import DEVICES, cuda_only

ROOT = Path(__file__).resolve().parents[1]


def _data(n=40):
    g = torch.Generator().manual_seed(3)
    return torch.randn(n, 1, 4, 3, generator=g, dtype=torch.float32), torch.randint(0, 3, (n,), generator=g)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("max_fraction", [0.5, 0.0], ids=["whole-dataset", "pinned-batches"])
def test_device_data_serves_the_indexed_batches_on_the_device(device, max_fraction):
    x, y = _data()
    data = DeviceData(x, y, device, max_fraction=max_fraction)
    assert data.on_device == (device == "cpu" or max_fraction > 0)
    index = [torch.tensor([3, 1, 4]), torch.tensor([15, 9]), torch.tensor([26, 5, 35, 8])]
    served = list(data.batches(index))
    assert len(served) == len(index)
    for (xb, yb), idx in zip(served, index):
        assert xb.device.type == device and yb.device.type == device
        assert torch.equal(xb.cpu(), x[idx]) and torch.equal(yb.cpu(), y[idx])


@pytest.mark.parametrize("device", DEVICES)
def test_epoch_figures_do_not_depend_on_where_batches_come_from(device):
    """Batches on the CPU are moved to the model's device; the result equals device batches."""
    x, y = _data()
    results = []
    for source in ("cpu", device):
        torch.manual_seed(0)
        model = fc_mondeq(12, 6, 3).float().to(device)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        batches = [(x[i:i + 8].to(source), y[i:i + 8].to(source)) for i in range(0, 40, 8)]
        stats = train_epoch(model, opt, batches, steps=5, progress=False)
        ev = evaluate(model, batches, epsilons=[0.01])
        results.append((stats.loss, stats.accuracy, stats.samples, ev.accuracy, ev.certified,
                        [p.detach().cpu() for p in model.parameters()]))
    (*a, pa), (*b, pb) = results
    assert a == b and all(torch.equal(p, q) for p, q in zip(pa, pb))
    assert a[2] == 40 and set(a[4]) == {0.01}



@pytest.mark.parametrize("device", DEVICES)
def test_sums_read_mid_epoch_carry_the_step_time_so_far(device):
    """``after_step`` sees the epoch's running sums; reading them (a checkpoint) includes the time
    of every step taken, and the epoch's mean step time is the last read's total over the steps."""
    x, y = _data()
    torch.manual_seed(0)
    model = fc_mondeq(12, 6, 3).float().to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    batches = [(x[i:i + 8], y[i:i + 8]) for i in range(0, 40, 8)]
    reads = []
    stats = train_epoch(model, opt, batches, steps=5, progress=False,
                        after_step=lambda sums: reads.append(sums.state_dict()))
    assert [r["steps"] for r in reads] == [1, 2, 3, 4, 5]
    assert [r["seen"] for r in reads] == [8, 16, 24, 32, 40]
    times = [r["step_time"] for r in reads]
    assert 0 < times[0] and all(a < b for a, b in zip(times, times[1:]))
    assert stats.step_time == pytest.approx(times[-1] / 5, rel=1e-12)

@cuda_only
def test_cuda_run_writes_a_checkpoint_that_loads_on_the_cpu(tmp_path):
    spec = importlib.util.spec_from_file_location("train_job", ROOT / "experiments" / "train.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    report = train.main(["--device", "cuda", "--train-limit", "256", "--test-limit", "64", "--epochs", "1",
                         "--hidden", "20", "--epsilons", "0.1", "--out", str(tmp_path)])
    assert report["final"]["forward_iterations"] >= 1
    model = fc_mondeq(784, 20, 10).float()
    state = load_checkpoint(tmp_path / "checkpoint.pt", model=model)
    assert next(model.parameters()).device.type == "cpu"
    assert state["rng"]["cuda"] and state["config"]["device"] == "cuda"
