"""Certify a trained monDEQ: sound certified ℓ2 accuracy against PGD robust accuracy on MNIST.

Loads ``OUT/checkpoint.pt`` written by ``experiments/train.py``, re-solves every test equilibrium at
a tight tolerance (``--tol``), computes sound certified radii (margins minus the solver slack),
attacks the test images with ℓ2 PGD in pixel scale, and counts counterexamples (PGD points inside a
certified radius that the tightly solved model misclassifies; there must be none). Writes, next to
the checkpoint (or under ``--out``):

* ``certify.json``: the table and the slack figures;
* ``certify.png``: certified accuracy against ε (tight and loose solve) and PGD robust accuracy.

Everything runs on ``--device`` (default: CUDA when available, else the CPU): the checkpoint is
loaded there (``map_location``), the test set moved there, and the PGD restarts draw from a
generator on that device.

Example::

    python experiments/train.py --certified-eps 1.58 --out runs/mnist_fc_cert
    python experiments/certify.py runs/mnist_fc_cert
"""
import sys

from mondeq.cli.main import run_command

if __name__ == "__main__":  # the same program, options and one-line errors as `mondeq certify`
    sys.exit(run_command("certify"))
