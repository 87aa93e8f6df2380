r"""Why Anderson cannot halve Peaceman-Rachford's iterations on the FC model: the spectrum of PR's map.

Near the solution the ReLU's active set is fixed, and PR's map on its auxiliary variable is
linear, :math:`u \mapsto T u + c` with

.. math:: T = (2R - I)(2P - I),\qquad R = (I + \alpha(I - W))^{-1},\qquad P = \mathrm{diag}(J),

J the 0/1 derivative of the ReLU at the solution (the backward problem's map is the same with
:math:`W^\top`, and has the same eigenvalues). Plain PR shrinks the error like
:math:`\rho(T)^k`. Anderson with memory m, like any Krylov method, can only do better by
cancelling the few eigenvalues that dominate; when many eigenvalues of similar modulus spread
around the origin, no polynomial of low degree is small on all of them and the acceleration
is a constant factor at best.

For each α this prints, over a batch of MNIST test images (one T per image, dense eigenvalues):
the spectral radius, the median and 90% quantile of |λ|, the number of eigenvalues with
|λ| ≥ 0.8·ρ (how many an accelerator would have to cancel), and PR's observed iterations to a
true residual of 1e-4 next to the estimate log(1e-4)/log ρ. Dense models only (the conv model's
T is not block diagonal in frequency once the ReLU mask is applied).

Runs on ``--device`` (default: CUDA when available, else the CPU).

    python experiments/pr_spectrum.py --checkpoint runs/mnist_fc/checkpoint.pt
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from compare_splitting import build_model, device_arg, problems
from mondeq.data import load_mnist, normalize
from splitting import peaceman_rachford

ALPHAS = tuple(2.0 ** -k for k in range(7))


def iteration_matrices(weight: torch.Tensor, jacobian: torch.Tensor, alpha: float) -> torch.Tensor:
    """PR's linearised maps ``(2R − I)(2P − I)``, one per row of ``jacobian`` (batch × n × n)."""
    n = weight.shape[0]
    eye = torch.eye(n, dtype=weight.dtype, device=weight.device)
    cayley = 2 * torch.linalg.inv(eye + alpha * (eye - weight)) - eye
    reflection = 2 * torch.diag_embed(jacobian) - eye
    return cayley @ reflection


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, required=True, help="an FC checkpoint of experiments/train.py")
    p.add_argument("--batch", type=int, default=32, help="test images (one spectrum each)")
    p.add_argument("--alphas", type=float, nargs="+", default=list(ALPHAS))
    p.add_argument("--device", type=device_arg, default="cuda" if torch.cuda.is_available() else "cpu",
                   help="where the model, the data and the eigenvalue problems live")
    args = p.parse_args(argv)
    if args.batch < 1:
        p.error(f"--batch must be >= 1, got {args.batch}")
    state = torch.load(args.checkpoint, map_location=args.device, weights_only=False)
    if state["config"].get("model", "fc") != "fc":
        p.error("dense (fc) checkpoints only")
    model = build_model(state["config"]).to(device=args.device, dtype=torch.float64)
    model.load_state_dict(state["model"])
    x, y = load_mnist(train=False)
    x = normalize(x[: args.batch]).reshape(-1, 784).to(device=args.device, dtype=torch.float64)
    y = y[: args.batch].to(args.device)
    forward = problems(model, x, y)["forward"]
    weight = forward.op.as_matrix().detach()
    with torch.no_grad():
        z = peaceman_rachford(forward.op, forward.prox, forward.bias, alpha=0.5, tol=1e-13, max_iter=20_000).z
        jacobian = forward.prox.derivative(z[0] @ weight.T + forward.bias[0])
    rows = []
    print("   α      ρ   median|λ|  90%|λ|  #|λ|≥0.8ρ   PR it. to 1e-4   log(1e-4)/log ρ")
    for alpha in args.alphas:
        moduli = torch.linalg.eigvals(iteration_matrices(weight, jacobian, alpha)).abs()
        rho = moduli.max(dim=1).values
        near = (moduli >= 0.8 * rho.unsqueeze(1)).sum(dim=1).double()
        with torch.no_grad():
            run = peaceman_rachford(forward.op, forward.prox, forward.bias, alpha=alpha, tol=1e-4,
                                    max_iter=5_000, residual="fixed_point")
        row = {"alpha": alpha, "rho": float(rho.mean()), "median": float(moduli.median()),
               "q90": float(moduli.quantile(0.9)), "near": float(near.mean()),
               "iterations": run.iterations, "estimate": math.log(1e-4) / math.log(float(rho.mean()))}
        rows.append(row)
        print(f"{alpha:6.4g}  {row['rho']:.3f}   {row['median']:.3f}    {row['q90']:.3f}   "
              f"{row['near']:7.1f}      {row['iterations']:6d}          {row['estimate']:6.1f}")
    n = weight.shape[0]
    print(f"(means over {len(x)} images; T is {n} × {n})")
    return rows


if __name__ == "__main__":
    main()
