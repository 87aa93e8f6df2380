"""The layer applies W once per forward with Peaceman-Rachford: the solver's confirming
application (the true residual of the returned state) is reused by the layer's differentiable
application at the detached solution, which gets its kernel gradients all the same."""
import pytest
import torch

import mondeq.operators.conv as conv_module
import mondeq.operators.multitier.operator as multitier_module
from mondeq import MonDEQ
from mondeq.operators.conv import MonotoneConv
from mondeq.operators.multitier import MonotoneMultiTier

CASES = {
    # the module-level function each operator calls when it really applies W
    "conv": (conv_module, "irfft2_blocks", lambda: MonotoneConv(1, 3, 6, m=0.5), (2, 1, 6, 6)),
    "multitier": (multitier_module, "apply_multitier", lambda: MonotoneMultiTier(1, (2, 3), 4, m=0.5),
                  (2, 1, 4, 4)),
}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_the_layer_reuses_the_solvers_confirming_application(kind, monkeypatch):
    module, name, build, shape = CASES[kind]
    calls = []
    original = getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a, **k: calls.append(1) or original(*a, **k))
    torch.manual_seed(0)
    layer = MonDEQ(build(), solver="pr", alpha=1.0, tol=1e-4, max_iter=500)
    z, stats = layer.forward_with_stats(torch.randn(*shape))
    assert stats.forward.converged
    assert len(calls) == 1
    sum(t.sum() for t in z).backward()
    kernels = [p for n, p in layer.linear.named_parameters() if not n.startswith("U")]
    assert all(p.grad is not None for p in kernels) and any(p.grad.abs().sum() > 0 for p in kernels)
