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

The spectra come from :func:`mondeq.cli.compare.pr_spectrum`. Runs on ``--device`` (default:
CUDA when available, else the CPU).

    python experiments/pr_spectrum.py runs/mnist_fc
"""
import sys

from mondeq.cli.main import run_command

if __name__ == "__main__":  # the same program, options and one-line errors as `mondeq spectrum`
    sys.exit(run_command("spectrum"))
