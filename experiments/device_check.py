"""Check a lent accelerator in one capped run (≤ 8 minutes): the CUDA tests, training-step times
(eager, compiled, bf16) on the device and the CPU, and a CIFAR-10-sized epoch extrapolated to the
paper's 40 epochs. The same as ``mondeq device-check`` (see :mod:`mondeq.cli.device_check`).

    python experiments/device_check.py --out device_check.json
    python experiments/device_check.py --device cpu --quick
"""
import sys

from mondeq.cli.main import run_command

if __name__ == "__main__":  # the same program, options and one-line errors as `mondeq device-check`
    sys.exit(run_command("device-check"))
