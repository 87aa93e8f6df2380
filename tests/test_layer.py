"""The MonDEQ module and classifier: bad input, equilibrium property, checkpoint round trip."""
import pytest
import torch

from mondeq import MonDEQ, MonotoneLinear, fc_mondeq
from mondeq.training import load_checkpoint, save_checkpoint
from splitting import ConvergenceWarning, InvalidSettingError, NonFiniteInputError, StateShapeError
from tests.conftest import make_dense


def test_m_must_be_positive():
    for m in (0.0, -0.5):
        with pytest.raises(InvalidSettingError, match="m must be > 0"):
            MonotoneLinear(4, 3, m=m)


def test_alpha_must_be_positive():
    with pytest.raises(InvalidSettingError, match="alpha must be > 0"):
        MonDEQ(make_dense(), alpha=0.0)
    with pytest.raises(InvalidSettingError, match="alpha must be > 0"):
        fc_mondeq(alpha=-1.0)


def test_unknown_solver_is_named():
    with pytest.raises(InvalidSettingError, match="unknown solver 'prr'"):
        MonDEQ(make_dense(), solver="prr")


def test_nan_input_raises():
    layer = MonDEQ(make_dense(n_in=6))
    x = torch.randn(3, 6)
    x[1, 2] = float("nan")
    with pytest.raises(NonFiniteInputError, match="NaN"):
        layer(x)


@pytest.mark.parametrize("shape", [(3, 5), (3, 6, 1), (6,)])
def test_wrong_input_shape_raises(shape):
    layer = MonDEQ(make_dense(n_in=6))
    with pytest.raises(StateShapeError, match=r"expected \(batch, 6\)"):
        layer(torch.randn(*shape))


def test_layer_output_is_the_equilibrium():
    linear = make_dense(n_in=6, n=9, scale=1.5)
    layer = MonDEQ(linear, solver="pr", tol=1e-10, max_iter=1000)
    x = torch.randn(4, 6)
    with torch.no_grad():
        (z,) = layer(x)
        w = linear.weight()
        torch.testing.assert_close(z, torch.relu(z @ w.T + linear.U(x)), atol=1e-8, rtol=0)


def test_unconverged_solve_warns():
    layer = MonDEQ(make_dense(n_in=6, scale=2.0), tol=1e-12, max_iter=2)
    with pytest.warns(ConvergenceWarning, match="raise max_iter"):
        layer(torch.randn(3, 6))


def test_classifier_accepts_images_and_reports_stats():
    torch.set_default_dtype(torch.float32)
    model = fc_mondeq(784, 20, 10)
    logits, stats = model.forward_with_stats(torch.rand(5, 1, 28, 28))
    assert logits.shape == (5, 10)
    assert stats.forward.iterations >= 1
    logits.sum().backward()
    assert stats.backward is not None
    assert all(p.grad is not None for p in model.parameters())


def test_head_matrix_is_the_linear_part_of_the_readout():
    model = fc_mondeq(12, 7, 3)
    torch.testing.assert_close(model.head_matrix(), model.head.weight.detach())


def test_checkpoint_round_trip(tmp_path):
    model = fc_mondeq(12, 7, 3)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.randn(4, 12)).sum().backward()
    opt.step()
    save_checkpoint(tmp_path / "c.pt", model=model, optimizer=opt, epoch=3, history=[{"a": 1}], config={"k": 2})
    other = fc_mondeq(12, 7, 3)
    other_opt = torch.optim.Adam(other.parameters(), lr=0.1)
    state = load_checkpoint(tmp_path / "c.pt", model=other, optimizer=other_opt)
    assert state["epoch"] == 3 and state["history"] == [{"a": 1}]
    for a, b in zip(model.parameters(), other.parameters()):
        torch.testing.assert_close(a, b)
    assert other_opt.state_dict()["state"].keys() == opt.state_dict()["state"].keys()
    with pytest.raises(FileNotFoundError, match="no checkpoint at .*missing.pt"):
        load_checkpoint(tmp_path / "missing.pt", model=other)


# ------------------------------------------------------------- sharp edges of the first hour


def test_solver_can_be_reassigned_by_name_after_construction():
    from splitting import douglas_rachford

    layer = MonDEQ(make_dense(n_in=6, n=8), solver="pr", tol=1e-8, max_iter=2000)
    layer.solver = "dr"
    assert layer.solver is douglas_rachford
    x = torch.randn(3, 6)
    with torch.no_grad():
        _, stats = layer.forward_with_stats(x)
        op, bias = layer.linear.operator(), layer.linear.bias(x)
    direct = douglas_rachford(op, layer.nonlinearity, bias, alpha=1.0, tol=1e-8, max_iter=2000)
    assert stats.forward.iterations == direct.iterations
    with pytest.raises(InvalidSettingError, match="unknown solver"):
        layer.solver = "gauss-seidel"


@pytest.mark.parametrize("bad", [torch.nn.Tanh(), torch.relu, "relu"], ids=["Tanh", "torch.relu", "str"])
def test_non_prox_nonlinearity_points_to_the_prox_interface(bad):
    with pytest.raises(TypeError, match="splitting.Prox"):
        MonDEQ(make_dense(), bad)


@pytest.mark.parametrize("setting", [dict(alpha=float("inf")), dict(alpha=float("nan")), dict(max_iter=0),
                                     dict(max_iter=2.5), dict(tol=0.0), dict(tol=float("inf"))])
def test_invalid_layer_settings_are_refused_at_construction(setting):
    with pytest.raises(InvalidSettingError):
        MonDEQ(make_dense(), **setting)


def test_infinite_margin_is_refused():
    with pytest.raises(InvalidSettingError, match="m must be > 0"):
        MonotoneLinear(4, 3, m=float("inf"))


def test_empty_batch_is_refused_clearly():
    with pytest.raises(StateShapeError, match="empty batch"):
        MonDEQ(make_dense(n_in=6))(torch.zeros(0, 6))


def test_lipschitz_bound_accepts_a_classifier():
    from mondeq import lipschitz_bound

    model = fc_mondeq(6, 5, 3).double()
    expected = float(torch.linalg.matrix_norm(model.layer.linear.U.weight.detach(), 2)) / model.layer.linear.m
    for target in (model, model.layer, model.layer.linear):
        assert lipschitz_bound(target) == pytest.approx(expected)
    with pytest.raises(TypeError, match="lipschitz_bound"):
        lipschitz_bound(torch.nn.Linear(3, 3))


def test_statistics_and_layer_print_compactly():
    layer = MonDEQ(make_dense(n_in=6, n=50), tol=1e-6, max_iter=300)
    _, stats = layer.forward_with_stats(torch.randn(64, 6))
    for text in (repr(stats), str(stats.forward)):
        assert "tensor(" not in text and len(text) < 400
    assert "iterations=" in repr(stats.forward) and "converged=True" in repr(stats.forward)
    text = repr(layer)
    assert "nonlinearity=ReLU()" in text and "m=0.5" in text


def test_certificates_refuse_a_readout_not_known_to_be_affine():
    from mondeq.errors import NonAffineReadoutError
    from mondeq.models import MonDEQClassifier

    class SquaredReadout(torch.nn.Module):
        def forward(self, z):
            return z[0] ** 2

    layer = MonDEQ(make_dense(n_in=6, n=5))
    model = MonDEQClassifier(layer, torch.nn.Linear(5, 3), readout=SquaredReadout()).double()
    with pytest.raises(NonAffineReadoutError, match="not known to be affine"):
        model.head_matrix()
    nonlinear_head = MonDEQClassifier(layer, torch.nn.Sequential(torch.nn.Linear(5, 3), torch.nn.Tanh()))
    with pytest.raises(NonAffineReadoutError, match="head"):
        nonlinear_head.double().head_matrix()


def test_certify_is_importable_as_a_function():
    import mondeq.robustness.certification  # noqa: F401  (importing the module must not shadow the function)
    from mondeq import certify

    model = fc_mondeq(6, 5, 3, tol=1e-8, max_iter=500).double()
    cert = certify(model, torch.randn(4, 6, dtype=torch.float64), torch.tensor([0, 1, 2, 0]))
    assert callable(certify) and cert.radius.shape == (4,)


def test_lipschitz_margin_loss_refuses_a_non_affine_readout():
    from mondeq import LipschitzMarginLoss
    from mondeq.errors import NonAffineReadoutError
    from mondeq.models import MonDEQClassifier

    class SquaredReadout(torch.nn.Module):
        def forward(self, z):
            return z[0] ** 2

    model = MonDEQClassifier(MonDEQ(make_dense(n_in=6, n=5)), torch.nn.Linear(5, 3), readout=SquaredReadout())
    loss = LipschitzMarginLoss(model.double(), 0.5)
    with pytest.raises(NonAffineReadoutError):
        loss(model(torch.randn(4, 6, dtype=torch.float64)), torch.tensor([0, 1, 2, 0]))
