"""The splitting-method comparison behind ``experiments/compare_splitting.py`` and
``experiments/pr_spectrum.py``: the problems, the measurements and the reports.

* :mod:`.problem`: the model of a checkpoint (or a quick one), an MNIST test batch, and its
  forward and backward (implicit-gradient) splitting problems;
* :mod:`.measurement`: iterations and wall time of each method and α to the true-residual thresholds;
* :mod:`.report`: the CSV, the Markdown tables and checks, and the plots;
* :mod:`.spectrum`: the spectrum of Peaceman-Rachford's linearised map (its ``main`` is
  ``experiments/pr_spectrum.py``);
* :mod:`.command`: the options and :func:`main` of ``experiments/compare_splitting.py``
  (``mondeq compare``).
"""
from .command import main, parse_args
from .measurement import ALPHAS, THRESHOLDS, Run, best_alpha, measure, solver_for, synchronize, time_runs
from .problem import SplittingProblem, load_model, mnist_test_batch, problems, quick_model
from .report import alpha_label, cell, checks, markdown, plot, write_csv
from .spectrum import iteration_matrices, pr_spectrum

__all__ = ["ALPHAS", "THRESHOLDS", "Run", "SplittingProblem", "alpha_label", "best_alpha", "cell",
           "checks", "iteration_matrices", "load_model", "main", "markdown", "measure", "mnist_test_batch",
           "parse_args", "plot", "pr_spectrum", "problems", "quick_model", "solver_for", "synchronize",
           "time_runs", "write_csv"]
