"""Reproduce the monDEQ paper's Table 1, one row per command, and gather the results.

Winston & Kolter (2020), "Monotone operator equilibrium networks", Table 1: test accuracy of
monDEQs on MNIST (fully connected, single convolution, multi-tier), SVHN and CIFAR-10 (single
convolution, multi-tier), and CIFAR-10 with data augmentation. Each row here is the paper's
model size and training recipe, run by the training command (``experiments/train.py``, as
``python -m mondeq.cli.train``) in a subprocess:

    python experiments/reproduce.py --list                      # rows and their commands
    python experiments/reproduce.py --row mnist-fc              # one row, the paper's recipe
    python experiments/reproduce.py --row svhn-conv --data-root /datasets
    python experiments/reproduce.py --row mnist-fc -- --epochs 1 --train-limit 256   # quick look
    python experiments/reproduce.py --table                     # markdown table vs the paper

Arguments after ``--`` are forwarded to train.py and override the row's (argparse keeps the last
occurrence); the row's JSON then records them, and the table marks such runs as modified.

The recipe (every row): Adam, batch 128, Peaceman-Rachford with α = 1 re-tuned twice per epoch
(halving while the iteration count falls), tolerance 1e-2, at most 300 iterations, m = 1. The
per-row epochs, learning rates and schedules are those of the paper's code
(locuslab/monotone_op_net, ``examples.ipynb``, with the epochs it comments out): 40 epochs and
a step decay (×0.1 every 10 epochs, or every 25 for the single-convolution SVHN and CIFAR-10
models) with lr 1e-3 (1e-2 for the CIFAR-10 multi-tier model); the augmented CIFAR-10 rows run
65 epochs of one-cycle (peak 1e-2 single conv, 5e-2 multi-tier) with Adam's β1 cycled
0.95 → 0.85 → 0.95 (mondeq.training.schedules.one_cycle).

Each run writes ``train.py``'s folder ``RUNS/ROW/`` (results.json, curves.png, checkpoint.pt,
log.txt) and a summary ``RUNS/ROW.json``: row, dataset, model, accuracy, parameters, epochs,
hardware (device name, threads), wall time, the command. CIFAR-10 and SVHN must be on disk
(``--data-root`` or ``$MONDEQ_DATA``): train.py never downloads them.
"""
import sys

from mondeq.cli.main import run_command

if __name__ == "__main__":  # the same program, options and one-line errors as `mondeq reproduce`
    sys.exit(run_command("reproduce"))
