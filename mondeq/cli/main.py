"""The ``mondeq`` command: one entry point, one subcommand per program.

    mondeq train [options]        train a classifier, report accuracy, iterations, certificates
    mondeq certify RUN [options]  certified ℓ2 accuracy against PGD for a trained run
    mondeq compare [options]      every splitting method × α: iterations and time to a residual
    mondeq spectrum [options]     eigenvalues of Peaceman-Rachford's linearised map
    mondeq reproduce [options]    the paper's Table 1, row by row

``python -m mondeq ...`` is the same command. Each subcommand's options are those of the
matching program in ``experiments/`` (``mondeq train --help``).
"""
from __future__ import annotations

import importlib
import sys

SUBCOMMANDS = {
    "train": ("mondeq.cli.train", "train a monDEQ classifier and report accuracy, iterations and certificates"),
    "certify": ("mondeq.cli.certify", "certified ℓ2 accuracy against PGD for a trained run"),
    "compare": ("mondeq.cli.compare", "compare the splitting methods on a trained model"),
    "spectrum": ("mondeq.cli.compare.spectrum", "eigenvalues of Peaceman-Rachford's linearised map"),
    "reproduce": ("mondeq.cli.reproduce", "the paper's Table 1, row by row"),
}


def usage() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = ["usage: mondeq <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in SUBCOMMANDS.items()]
    lines += ["", "`mondeq <command> --help` lists a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a subcommand's ``main(argv)``; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"mondeq: error: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(SUBCOMMANDS[name][0])
    sys.argv = [f"mondeq {name}", *rest]  # argparse names the program in its messages
    status = module.run(rest) if hasattr(module, "run") else module.main(rest)
    return status if isinstance(status, int) else 0
