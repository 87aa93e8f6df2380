"""A dependency-free text progress bar for long loops (training epochs, certification)."""
from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressBar:
    """``[#####.....] 50/100 12.3s loss=0.31`` redrawn in place; a plain line per update off a TTY.

    Args:
        total: number of steps.
        desc: label printed before the bar.
        stream: where to draw (default stderr).
        every: off a TTY, print only every ``every``-th update (and the last).
    """

    def __init__(self, total: int, desc: str = "", *, stream: TextIO | None = None, every: int = 50) -> None:
        self.total = max(int(total), 1)
        self.desc = desc
        self.stream = stream if stream is not None else sys.stderr
        self.tty = getattr(self.stream, "isatty", lambda: False)()
        self.every = every
        self.count = 0
        self.start = time.perf_counter()

    def update(self, n: int = 1, **metrics: float) -> None:
        """Advance by ``n`` steps and show ``metrics`` beside the bar."""
        self.count += n
        if not self.tty and self.count % self.every and self.count < self.total:
            return
        width = 24
        filled = int(width * self.count / self.total)
        text = " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
        line = (f"{self.desc} [{'#' * filled}{'.' * (width - filled)}] {self.count}/{self.total} "
                f"{time.perf_counter() - self.start:.1f}s {text}")
        self.stream.write(("\r" + line) if self.tty else line + "\n")
        self.stream.flush()

    def close(self) -> None:
        """Finish the line."""
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
