"""Per-epoch logs a PyTorch user expects: ``metrics.csv`` (one row per epoch) and, optionally,
TensorBoard event files with the same scalars.

Both are written from the run's history (the list of per-epoch records the training command
keeps in ``results.json`` and in its checkpoint), so they are safe across ``--resume``:

* the CSV is rewritten whole, atomically, from the history after every epoch, so an epoch re-run
  after a crash replaces its row instead of adding a second one, and a column that appears later
  (say, a new ε) gets its header;
* the TensorBoard writer is opened with ``purge_step`` at the first epoch this process runs, which
  tells TensorBoard to drop any events a crashed run wrote for that epoch or later.

Example:
    >>> log = EpochLog(Path("runs/x"), tensorboard=False)
    >>> log.write(history)  # after each epoch
    >>> log.close()
"""
from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path

from ..errors import MissingDependencyError

__all__ = ["CSV_NAME", "TENSORBOARD_DIR", "EpochLog", "csv_columns", "flatten_record", "open_tensorboard",
           "tensorboard_available"]

CSV_NAME = "metrics.csv"
TENSORBOARD_DIR = "tensorboard"

#: Column order of the CSV; a record's other numeric entries follow in the order it holds them.
_FIRST = ("epoch", "train_loss", "train_accuracy", "test_accuracy", "forward_iterations",
          "backward_iterations", "test_forward_iterations")
_LAST = ("alpha", "lipschitz", "certificate_slack", "train_eps", "step_time_ms", "epoch_time_s",
         "images_per_s")


def flatten_record(record: dict) -> dict[str, float]:
    """One epoch's numeric figures as flat ``column → value``.

    A nested dict of numbers (``certified``: ε → accuracy) becomes one column per key,
    ``certified_eps=0.1``; strings, lists and ``None`` are left out.
    """
    flat: dict[str, float] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            for sub, v in value.items():
                if isinstance(v, (int, float)) and not isinstance(v, bool):
                    flat[f"{key}_eps={sub}" if key == "certified" else f"{key}_{sub}"] = v
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            flat[key] = value
    return flat


def csv_columns(rows: list[dict[str, float]]) -> list[str]:
    """The header: the usual figures first (epoch, loss, accuracies, iterations), then every other
    column (failed solves, certified accuracies …), then α, the Lipschitz bound and timings."""
    seen: list[str] = []
    for row in rows:
        seen += [k for k in row if k not in seen]
    middle = [k for k in seen if k not in _FIRST and k not in _LAST]
    return [k for k in _FIRST if k in seen] + middle + [k for k in _LAST if k in seen]


def tensorboard_available() -> type:
    """:class:`torch.utils.tensorboard.SummaryWriter`, checking that TensorBoard is installed.

    Raises:
        MissingDependencyError: the ``tensorboard`` package is not installed.
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:  # torch raises ImportError naming tensorboard when it is missing
        raise MissingDependencyError("--tensorboard", "tensorboard", extra="tensorboard") from err
    return SummaryWriter


def open_tensorboard(log_dir: Path, *, purge_step: int | None = None):
    """A :class:`torch.utils.tensorboard.SummaryWriter` on ``log_dir``; ``purge_step``: drop the
    events already there from that step on (a resumed run re-writes them).

    Raises:
        MissingDependencyError: the ``tensorboard`` package is not installed.
    """
    return tensorboard_available()(log_dir=str(log_dir), purge_step=purge_step)


class EpochLog:
    """The CSV log of a run and, optionally, its TensorBoard events.

    Args:
        out: the run's output folder (``metrics.csv`` and ``tensorboard/`` go there).
        tensorboard: also write TensorBoard event files.
        first_epoch: the first epoch this process will log (after a resume: the one after the
            checkpoint); TensorBoard drops any events a crashed run left from it on.

    Raises:
        MissingDependencyError: ``tensorboard`` is asked for and the package is not installed.
    """

    def __init__(self, out: Path, *, tensorboard: bool = False, first_epoch: int = 1) -> None:
        self.path = Path(out) / CSV_NAME
        self.writer = (open_tensorboard(Path(out) / TENSORBOARD_DIR, purge_step=first_epoch)
                       if tensorboard else None)

    def write(self, history: list[dict]) -> None:
        """Rewrite the CSV from ``history`` (one row per epoch; a re-run epoch's later record wins)
        and send the last record's scalars to TensorBoard, at step = its epoch."""
        by_epoch: dict[int, dict[str, float]] = {}
        for record in history:
            by_epoch[int(record["epoch"])] = flatten_record(record)
        rows = [by_epoch[e] for e in sorted(by_epoch)]
        buffer = io.StringIO()
        table = csv.DictWriter(buffer, fieldnames=csv_columns(rows), restval="", lineterminator="\n")
        table.writeheader()
        table.writerows(rows)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(buffer.getvalue())
        os.replace(tmp, self.path)  # a crash mid-write leaves the previous file whole
        if self.writer is not None and history:
            last = flatten_record(history[-1])
            epoch = int(last.pop("epoch"))
            for name, value in last.items():
                if math.isfinite(value):
                    self.writer.add_scalar(_tag(name), value, global_step=epoch)
            self.writer.flush()

    def close(self) -> None:
        """Flush and close the TensorBoard writer (the CSV is always complete on disk)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _tag(column: str) -> str:
    """TensorBoard tag of a CSV column: certified accuracies grouped in one section."""
    if column.startswith("certified_eps="):
        return "certified_accuracy/eps=" + column.removeprefix("certified_eps=")
    return column
