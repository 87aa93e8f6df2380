"""How far a training step is from the hardware floor (:mod:`mondeq.perf.floor`)."""
from .floor import FloorReport, KernelTimer, floor_line, report_line, step_floor

__all__ = ["FloorReport", "KernelTimer", "floor_line", "report_line", "step_floor"]
