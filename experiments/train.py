"""Train a monDEQ classifier (MNIST, CIFAR-10 or SVHN) and report accuracy, solver iterations,
Lipschitz bound and certified ℓ2 accuracy.

The default run trains the paper's fully connected monDEQ on MNIST (87 hidden units, m = 1, ReLU,
Peaceman-Rachford with α = 1, tol 1e-2) and writes, under ``--out`` (default
``runs/{dataset}_{model}``):

* ``results.json``: configuration, per-epoch history and the final report;
* ``curves.png``: training loss, test accuracy and solver iterations per epoch;
* ``checkpoint.pt``: saved after every epoch (and every ``--checkpoint-every`` steps).

**Exact resume.** ``--resume`` continues from ``OUT/checkpoint.pt`` with the run's saved
configuration; the data order is a pure function of (seed, epoch) and the checkpoint holds the
weights, optimizer, schedule, α, the α tuner and every RNG, so a run killed at any moment and
resumed ends with the same weights, bit for bit on CPU, as the uninterrupted run. Options given
on the command line that contradict the saved configuration are refused. ``--epochs`` may
change only when the schedule does not depend on the run's length (``constant``, or ``step``
with explicit ``--milestones``, and no certified-training ramp): a cosine or one-cycle schedule
planned for 4 epochs has already decayed, so "4 more epochs" would be a different run.

**Devices.** ``--device`` (default cuda when available) holds the model, the optimizer and the
data (the whole dataset when it fits, else pinned batches copied without blocking); ``--amp``
runs the training step under bfloat16 autocast (the equilibrium solve stays in float32).

**Several processes.** Under ``torchrun --nproc_per_node N`` each process trains on its share of
every global batch (``--batch-size`` is the global batch) with DistributedDataParallel (gloo on
CPU, nccl on CUDA); metrics are summed over processes and only rank 0 prints and writes files.

Certified training: ``--certified-eps 1.58`` trains for that ℓ2 radius in pixel scale with the
Lipschitz-margin loss (``mondeq.robustness.losses.LipschitzMarginLoss``). Certificates are sound: they
subtract the solver's error, and pixel-scale radii use the smallest channel std.

Example::

    python experiments/train.py --epochs 3
    python experiments/train.py --resume                  # after a crash: same run, same result
    python experiments/train.py --dataset cifar10 --model conv --augment --data-root /datasets
    torchrun --nproc_per_node 2 experiments/train.py --device cpu
"""
import sys

from mondeq.cli.main import run_command

if __name__ == "__main__":  # the same program, options and one-line errors as `mondeq train`
    sys.exit(run_command("train"))
