"""Compare splitting methods on a trained monDEQ: iterations and wall time to a true residual.

For every method in ``splitting.SOLVERS`` (FB, PR, DR, Anderson on PR and on FB) and every step
size α in a grid (default 1, 1/2, …, 1/64), on one MNIST test batch:

* forward: solve z* = σ(Wz* + Ux + b) from z = 0;
* backward: solve the implicit-gradient problem (I − Wᵀ)u + Du = ḡ (D = J⁻¹ − I) for the
  cross-entropy gradient ḡ = ∂ℓ/∂z*, reusing the forward factorisation as training does;

and record the iterations and wall time until the TRUE relative residual
‖z − σ(Wz + b)‖/‖z‖ (``splitting.natural_residual``; the worst sample of the batch) first falls
below 1e-2, 1e-4 and 1e-6. Each threshold is one solve with ``tol`` set to it: the solvers stop
only once every sample's true residual is confirmed below ``tol``, and report the first such
iteration, which is what training pays. Times are the same solves repeated (median of
``--repeats`` interleaved rounds; by default only for each method's best α, which is what the
tables and plots show). The residual traces plotted are the solvers' own per-iteration residuals
(exact for FB, the Rachford methods' cheap estimate otherwise) of the tightest solve. Runs that blow
up (FB beyond its step limit 2m/L²) are reported as diverged, not as errors.

Writes to ``--out``: ``comparison.csv`` (every run), ``comparison.md`` (tables), and
``residual_vs_iteration.png``, ``residual_vs_time.png`` (each method at its best α) and
``iterations_vs_alpha.png``.

Without a run a quick model is trained first (one epoch on ``--train-limit`` images).
Everything runs on ``--device`` (default: CUDA when available, else the CPU); on CUDA each timed
call is synchronised before the clock stops.

    python experiments/compare_splitting.py runs/mnist_fc --out runs/compare_fc
    python experiments/compare_splitting.py --model conv --batch-size 64 --out runs/compare_conv
"""
import sys

from mondeq.cli.main import run_command

if __name__ == "__main__":  # the same program, options and one-line errors as `mondeq compare`
    sys.exit(run_command("compare"))
