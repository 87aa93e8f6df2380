r"""Monotone deep Boltzmann machines on MNIST: complete the hidden 60 % of every image and classify it.

Mean-field inference in a pairwise Markov random field over categorical variables (pixels with K
intensity bins, hidden variables, the label) is the equilibrium

.. math:: q = \mathrm{softmax}_{\text{blockwise}}(Wq + b),\qquad W = D - A^\top A \text{ hollow},\ I - W \succeq mI,

which with this parametrisation exists, is unique, and is found by every splitting method of the
library (Feng, Winston & Kolter, "Monotone deep Boltzmann machines", TMLR 2023). Observed pixels
are clamped. The program trains the model with implicit gradients, scores it and three baselines
on the same masks (per-position mean fill, an MLP on the masked image, an RBM with classic mean
field), times FB, PR and Anderson at two tolerances, and draws completions.

    python experiments/dbm.py --bins 2 --epochs 4 --out runs/dbm-k2
"""
import sys

from mondeq.cli.main import run_command

if __name__ == "__main__":  # the same program, options and one-line errors as `mondeq dbm`
    sys.exit(run_command("dbm"))
