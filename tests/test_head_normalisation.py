"""Last-layer normalisation (--normalize-head): the head applies unit-norm rows, the certificate
reads exactly those rows, and build_model / load_run rebuild it."""
import os
import subprocess
import sys
from pathlib import Path

import torch

from mondeq import build_model, certify, fc_mondeq, load_run
from mondeq.robustness.lipschitz import head_matrix
from mondeq.models.readouts import NormalizedLinear

ROOT = Path(__file__).resolve().parents[1]


def normalised_model(seed=0):
    torch.manual_seed(seed)
    model = fc_mondeq(6, 8, 4, tol=1e-12, max_iter=500)
    model.head = NormalizedLinear.from_linear(model.head)
    with torch.no_grad():  # rows of very different norms: the raw and normalised heads differ
        model.head.weight.mul_(torch.tensor([[0.1], [1.0], [5.0], [30.0]]))
    return model.double().eval()


def test_head_outputs_unit_rows_and_ignores_row_scale() -> None:
    model = normalised_model()
    head = model.head
    rows = head.weight / head.weight.norm(dim=1, keepdim=True)
    z = torch.randn(5, 8, dtype=torch.float64)
    torch.testing.assert_close(head(z), z @ rows.T + head.bias)
    before = head(z)
    with torch.no_grad():
        head.weight[2] *= 7.0
    torch.testing.assert_close(head(z), before)


def test_certificate_uses_the_normalised_rows() -> None:
    model = normalised_model()
    h = head_matrix(model, differentiable=False)
    torch.testing.assert_close(h, model.head.normalized_weight().detach(), rtol=0, atol=1e-15)
    torch.testing.assert_close(h.norm(dim=1), torch.ones(4, dtype=torch.float64))
    x = torch.rand(30, 6, dtype=torch.float64)
    cert = certify(model, x, epsilons=[0.1], tol=None, bound="product")  # the logits model(x) gives
    # radius from the definition, computed here from the logits the model outputs
    logits = model(x).detach()
    y = logits.argmax(1)
    lip = float(torch.linalg.matrix_norm(model.layer.linear.U.weight.detach(), 2)) / model.layer.linear.m
    diff = (h[y][:, None, :] - h[None]).norm(dim=2)
    ratio = (logits.gather(1, y[:, None]) - logits) / (diff * lip)
    ratio.scatter_(1, y[:, None], float("inf"))
    torch.testing.assert_close(cert.radius_unsound, ratio.min(1).values.clamp(min=0), rtol=1e-9, atol=1e-12)
    # the raw rows would give other radii: the test would see a certificate of the wrong head
    raw = model.head.weight.detach()
    raw_diff = (raw[y][:, None, :] - raw[None]).norm(dim=2)
    raw_ratio = ((logits.gather(1, y[:, None]) - logits) / (raw_diff * lip)).scatter(1, y[:, None], float("inf"))
    assert not torch.allclose(raw_ratio.min(1).values.clamp(min=0), cert.radius_unsound)


def test_build_model_normalises_the_head_with_the_same_draws() -> None:
    torch.manual_seed(3)
    plain = build_model({"model": "fc", "hidden": 10})
    after_plain = torch.rand(3)
    torch.manual_seed(3)
    normed = build_model({"model": "fc", "hidden": 10, "normalize_head": True})
    after_normed = torch.rand(3)
    assert type(plain.head) is torch.nn.Linear and isinstance(normed.head, NormalizedLinear)
    assert torch.equal(plain.head.weight, normed.head.weight) and torch.equal(after_plain, after_normed)
    assert plain.state_dict().keys() == normed.state_dict().keys()


def test_a_trained_run_with_a_normalised_head_loads_as_trained(tmp_path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(ROOT / "experiments" / "train.py"), "--normalize-head",
                           "--certified-eps", "0.3", "--loss", "emma", "--train-limit", "64", "--test-limit",
                           "16", "--hidden", "10", "--epochs", "1", "--batch-size", "32", "--epsilons", "0.3",
                           "--out", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    model = load_run(tmp_path)
    assert isinstance(model.head, NormalizedLinear)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["config"]["normalize_head"] is True
    x = torch.rand(4, 784, dtype=torch.float32)
    w = state["model"]["head.weight"]
    z = model.readout(model.layer(model.layer_input(x)))
    torch.testing.assert_close(model(x), z @ (w / w.norm(dim=1, keepdim=True)).T + state["model"]["head.bias"])
