"""The commands behind the programs in ``experiments/``, and the pieces they share.

* :mod:`mondeq.cli.train` (with :mod:`~mondeq.cli.train_options`): train a classifier;
* :mod:`mondeq.cli.certify`: certified against PGD robust accuracy of a trained run;
* :mod:`mondeq.cli.reproduce`: the paper's Table 1, row by row;
* :mod:`mondeq.cli.plots`: the figures they write;
* :mod:`mondeq.cli.options`: argparse types every program uses, the help formatter (each default
  said once), the run as the first positional argument and the reuse of its data root;
* :mod:`mondeq.cli.main`: the ``mondeq`` command, and :func:`~mondeq.cli.main.run_program`, the
  one error handling every program in ``experiments/`` runs under (a mistake is one line).

Each command module has ``main(argv=None)`` and runs as ``python -m mondeq.cli.<command>``; the
commands are not imported here, so importing the package stays cheap.
"""
from .options import device_arg, positive_float, positive_int

__all__ = ["device_arg", "positive_float", "positive_int"]
