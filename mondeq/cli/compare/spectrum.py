r"""The spectrum of Peaceman-Rachford's linearised map on a dense monDEQ.

Near the solution the ReLU's active set is fixed and PR's map on its auxiliary variable is
linear, :math:`u \mapsto Tu + c` with

.. math:: T = (2R - I)(2P - I),\qquad R = (I + \alpha(I - W))^{-1},\qquad P = \mathrm{diag}(J),

:math:`J` the derivative of σ at the solution. Plain PR shrinks the error like :math:`\rho(T)^k`.
:func:`main` is the program ``experiments/pr_spectrum.py``.
"""
from __future__ import annotations

import argparse
import math
from typing import Sequence

import torch
from torch import Tensor

from splitting import BackwardProblem, peaceman_rachford

from ...models import MonDEQClassifier
from ..options import (HelpFormatter, chosen_run, data_root_arg, default_device, device_arg, hidden_alias,
                       positive_float, positive_int, run_argument, run_data_root)
from .command import load_checkpoint_model
from .measurement import ALPHAS
from .problem import EXACT, mnist_test_batch


def iteration_matrices(weight: Tensor, jacobian: Tensor, alpha: float) -> Tensor:
    """PR's linearised maps ``(2R − I)(2P − I)``, one per row of ``jacobian`` (batch × n × n)."""
    n = weight.shape[0]
    eye = torch.eye(n, dtype=weight.dtype, device=weight.device)
    cayley = 2 * torch.linalg.inv(eye + alpha * (eye - weight)) - eye
    reflection = 2 * torch.diag_embed(jacobian) - eye
    return cayley @ reflection


def pr_spectrum(model: MonDEQClassifier, x: Tensor, alphas: Sequence[float]) -> tuple[list[dict], int]:
    """Per α, the eigenvalue moduli of :math:`T` (one per image of ``x``) next to PR's iterations.

    Args:
        model: a classifier with a dense layer (W is formed as a matrix).
        x: inputs shaped for the layer, one spectrum per row.
        alphas: step sizes.

    Returns:
        ``(rows, n)``: one dict per α with the mean spectral radius ``rho``, the ``median`` and
        90% quantile ``q90`` of |λ|, the mean count ``near`` of |λ| ≥ 0.8ρ, PR's ``iterations``
        to a true residual of 1e-4 and the ``estimate`` log(1e-4)/log ρ; and the state size n.
    """
    layer = model.layer
    with torch.no_grad():
        op = layer.linear.operator()
        bias = tuple(b.detach() for b in layer.linear.bias(x))
        exact = peaceman_rachford(op, layer.nonlinearity, bias, **EXACT)
    weight = op.as_matrix().detach()
    (jacobian,) = BackwardProblem.at_solution(op, layer.nonlinearity, bias, exact).jacobian
    rows = []
    for alpha in alphas:
        moduli = torch.linalg.eigvals(iteration_matrices(weight, jacobian, alpha)).abs()
        rho = moduli.max(dim=1).values
        near = (moduli >= 0.8 * rho.unsqueeze(1)).sum(dim=1).double()
        with torch.no_grad():
            run = peaceman_rachford(op, layer.nonlinearity, bias, alpha=alpha, tol=1e-4, max_iter=5_000)
        rows.append({"alpha": alpha, "rho": float(rho.mean()), "median": float(moduli.median()),
                     "q90": float(moduli.quantile(0.9)), "near": float(near.mean()),
                     "iterations": run.iterations,
                     "estimate": math.log(1e-4) / math.log(float(rho.mean()))})
    return rows, weight.shape[0]


def main(argv: list[str] | None = None) -> list[dict]:
    """``experiments/pr_spectrum.py``: print the spectrum table of an FC checkpoint; returns its rows."""
    p = argparse.ArgumentParser(description="Why Anderson cannot halve Peaceman-Rachford's iterations "
                                            "on the FC model: the spectrum of PR's map.",
                                formatter_class=HelpFormatter)
    run_argument(p, help="an FC run of mondeq train: its --out folder or its checkpoint.pt")
    p.add_argument("--batch-size", type=positive_int, default=32, help="test images (one spectrum each)")
    hidden_alias(p, "--batch", dest="batch_size", type=positive_int)
    p.add_argument("--alphas", type=positive_float, nargs="+", default=list(ALPHAS),
                   help="step sizes α, each > 0")
    p.add_argument("--data-root", type=data_root_arg, default=None,
                   help="folder holding mnist/ (default: the RUN's own data root, else $MONDEQ_DATA, the "
                        "checkout's data/, then ~/.cache/mondeq)")
    p.add_argument("--device", type=device_arg, default=default_device(),
                   help="where the model, the data and the eigenvalue problems live (default: cuda when "
                        "available)")
    args = p.parse_args(argv)
    model, config = load_checkpoint_model(chosen_run(p, args), device=args.device)
    if config.get("model", "fc") != "fc":
        p.error(f"{args.run} is a {config.get('model')} run: the spectrum is computed for dense (fc) "
                "runs only")
    args.data_root = run_data_root(args.data_root, config)
    model = model.to(dtype=torch.float64)
    x, _ = mnist_test_batch(model, args.batch_size, device=args.device, dtype=torch.float64,
                            data_root=args.data_root)
    rows, n = pr_spectrum(model, x, args.alphas)
    print("   α      ρ   median|λ|  90%|λ|  #|λ|≥0.8ρ   PR it. to 1e-4   log(1e-4)/log ρ")
    for row in rows:
        print(f"{row['alpha']:6.4g}  {row['rho']:.3f}   {row['median']:.3f}    {row['q90']:.3f}   "
              f"{row['near']:7.1f}      {row['iterations']:6d}          {row['estimate']:6.1f}")
    print(f"(means over {len(x)} images; T is {n} × {n})")
    return rows
