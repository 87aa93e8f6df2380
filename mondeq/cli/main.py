"""The ``mondeq`` command: one entry point, one subcommand per program.

    mondeq train [options]        train a classifier, report accuracy, iterations, certificates
    mondeq certify RUN [options]  certified ℓ2 accuracy against PGD for a trained run
    mondeq compare [RUN] [options] every splitting method × α: iterations and time to a residual
    mondeq spectrum RUN [options] eigenvalues of Peaceman-Rachford's linearised map
    mondeq reproduce [options]    the paper's Table 1, row by row
    mondeq device-check [options] check a lent GPU: the CUDA tests, step and epoch times
    mondeq dbm [options]          a monotone DBM: complete and classify partly seen MNIST
    mondeq pretrained [NAME]      the models that ship with the package, with their figures
    mondeq --version              the installed version

``python -m mondeq ...`` is the same command, and ``pip install .`` installs it as the console
script ``mondeq`` (setup.cfg's ``console_scripts``). Each subcommand's options are those of the
matching program in ``experiments/`` (``mondeq train --help``), in one vocabulary: ``--batch-size``,
``--data-root``, ``--device`` (cuda when available, else cpu), and a run given as the first
positional argument (its folder or its ``checkpoint.pt``; the run's own ``--data-root`` is reused).
A mistake ends in one ``error: ...`` line on stderr: status 2 for a bad option, 1 for a bad file
or a failed run; the programs in ``experiments/`` go through the same handling
(:func:`run_command`, :func:`run_program`). A new subcommand is one entry of :data:`SUBCOMMANDS`.
"""
from __future__ import annotations

import importlib
import os
import sys
from typing import Callable

from ..errors import MissingDatasetError, MonDEQError

SUBCOMMANDS = {
    "train": ("mondeq.cli.train", "train a monDEQ classifier and report accuracy, iterations and certificates"),
    "certify": ("mondeq.cli.certify", "certified ℓ2 accuracy against PGD for a trained run"),
    "compare": ("mondeq.cli.compare", "compare the splitting methods on a trained model"),
    "spectrum": ("mondeq.cli.compare.spectrum", "eigenvalues of Peaceman-Rachford's linearised map"),
    "reproduce": ("mondeq.cli.reproduce", "the paper's Table 1, row by row"),
    "device-check": ("mondeq.cli.device_check", "check a lent GPU in ≤ 8 minutes: CUDA tests, step and epoch times"),
    "dbm": ("mondeq.cli.dbm", "train a monotone deep Boltzmann machine to complete and classify MNIST"),
    "pretrained": ("mondeq.cli.pretrained", "the models that ship with the package, with their recorded figures"),
}


def usage() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = ["usage: mondeq <command> [options]", "", "commands:"]
    lines += [f"  {name:<{width}}  {text}" for name, (_, text) in SUBCOMMANDS.items()]
    lines += ["", "`mondeq <command> --help` lists a command's options; `mondeq --version` the version."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Dispatch to a subcommand's ``run(argv)`` (or ``main(argv)``); returns the exit status.

    Errors a user can fix are reported as one ``error: ...`` line on stderr, without a traceback:
    a bad option exits with status 2 (argparse's own convention), a bad file or a failed run
    (any :class:`mondeq.errors.MonDEQError`, a missing or unreadable file) with status 1
    (:func:`run_program`).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from .. import __version__
        print(f"mondeq {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        from ..errors import did_you_mean
        print(f"mondeq: error: unknown command {name!r}{did_you_mean(name, SUBCOMMANDS)}\n\n{usage()}",
              file=sys.stderr)
        return 2
    return run_command(name, rest, prog=f"mondeq {name}")


def run_command(name: str, argv: list[str] | None = None, *, prog: str | None = None) -> int:
    """Run the subcommand ``name`` (a key of :data:`SUBCOMMANDS`) with ``argv`` under the one
    error handling of :func:`run_program`; the programs in ``experiments/`` call this.

    Args:
        name: the subcommand.
        argv: its arguments (default: ``sys.argv[1:]``).
        prog: the program's name in argparse's messages (default: ``sys.argv[0]``).
    """
    module = importlib.import_module(SUBCOMMANDS[name][0])
    entry = module.run if hasattr(module, "run") else module.main
    return run_program(entry, argv, prog=prog)


def run_program(entry: Callable[[list[str]], object], argv: list[str] | None = None, *,
                prog: str | None = None) -> int:
    """Call ``entry(argv)`` (a program's ``main``) and turn what it raises into an exit status.

    A mistake ends in one ``error: ...`` line on stderr, never a traceback: argparse's own exit
    (status 2), a ``sys.exit("error: ...")``, any :class:`mondeq.errors.MonDEQError`, a missing
    or unreadable file, the device out of memory (status 1), an interrupt (status 130).
    ``entry``'s return value is the status when it is an int, else 0.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    sys.argv = [prog or sys.argv[0], *argv]  # argparse names the program in its messages
    try:
        status = entry(argv)
    except SystemExit as exit_:  # argparse (status 2) or a command's own `sys.exit("error: ...")`
        if isinstance(exit_.code, str):
            text = one_line(exit_.code)
            print(text if text.startswith("error:") else f"error: {text}", file=sys.stderr)
            return 1
        return 0 if exit_.code is None else int(exit_.code)
    except BrokenPipeError:  # `mondeq pretrained | head`: the reader left; nothing to report,
        try:  # and nothing for the interpreter's last flush of stdout to fail on
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):  # a stdout without a file descriptor (captured)
            pass
        return 0
    except (MonDEQError, OSError) as err:  # OSError: a missing, unreadable or misplaced file
        print(f"error: {error_text(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except RuntimeError as err:  # torch.OutOfMemoryError (a RuntimeError) is a setting to change
        if type(err).__name__ != "OutOfMemoryError":
            raise
        print(f"error: out of memory ({one_line(str(err)).split('. ')[0]}): lower --batch-size, or run on "
              "another --device", file=sys.stderr)
        return 1
    return status if isinstance(status, int) else 0


def error_text(err: BaseException) -> str:
    """One line for a user: the error's message, with its strerror and file for an OSError, and
    for a missing dataset how to point the command at the data."""
    if isinstance(err, MissingDatasetError):
        return (f"{one_line(str(err))}. Point the command at the folder holding mnist/, fashion-mnist/, "
                f"cifar10/, svhn/ (or at the dataset's own folder) with --data-root FOLDER or the environment variable $MONDEQ_DATA (an installed "
                f"package does not see a checkout's data/)")
    if isinstance(err, OSError) and err.strerror and err.filename is not None:
        return f"{err.strerror}: {err.filename}"
    return one_line(str(err)) or type(err).__name__


def one_line(text: str) -> str:
    """``text`` with every run of whitespace (newlines, tabs) made one space."""
    return " ".join(text.split())


def command_error(err: BaseException) -> int:
    """Print ``err`` as one ``error: ...`` line on stderr and return exit status 1 (a command's
    ``run`` calls this for the errors it catches itself)."""
    print(f"error: {error_text(err)}", file=sys.stderr)
    return 1
