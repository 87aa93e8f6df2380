"""One training epoch and one evaluation pass, on any device and under torch.distributed.

Both loops move each batch to the model's device (a no-op when the data already lives there) and
keep their running sums on that device, so a CUDA step makes no host synchronisation of its own:
the sums are read once per epoch, and the progress bar reads them only every ``refresh`` steps.
Under torch.distributed the per-epoch figures are summed over ranks
(:func:`mondeq.training.distributed.all_reduce_sum`), so every rank returns the global figures; every
rank must therefore call these functions (they are collectives there).
"""
from __future__ import annotations

import contextlib
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn

from ..robustness.certification import certify
from .distributed import all_reduce_sum, unwrap
from ..robustness.lipschitz import lipschitz_bound
from .progress import ProgressBar
from ..errors import ConvergenceWarning, StepSizeWarning

__all__ = ["EpochSums", "EpochStats", "Evaluation", "evaluate", "train_epoch"]


@dataclass
class EpochStats:
    """Averages over one training epoch (over every rank under torch.distributed).

    Attributes:
        loss: mean training loss per sample.
        accuracy: training accuracy.
        forward_iterations, backward_iterations: mean solver iterations per step.
        step_time: mean wall time of a training step (forward, backward, optimizer), seconds; on
            CUDA measured with events, so without a synchronisation per step.
        steps: steps taken (by this rank).
        samples: samples seen (over every rank).
        forward_failed, backward_failed: solves that stopped unconverged (at ``max_iter`` or
            non-finite), summed over ranks; counted here instead of warned once per solve.
        solves: forward solves (one per step) over every rank: what the failures are out of.
    """

    loss: float
    accuracy: float
    forward_iterations: float
    backward_iterations: float
    step_time: float
    steps: int
    samples: int = 0
    forward_failed: int = 0
    backward_failed: int = 0
    solves: int = 0


@dataclass
class Evaluation:
    """Test-set figures for a classifier (over every rank's shard under torch.distributed).

    Attributes:
        accuracy: clean accuracy.
        forward_iterations: mean solver iterations per batch.
        lipschitz: Lipschitz bound of x ↦ z* in pixel scale, ‖U‖₂/(m·min_c σ_c)
            (:func:`mondeq.robustness.lipschitz.lipschitz_bound` of the classifier).
        certified: certified accuracy (radius > ε) at each ε passed to :func:`evaluate`.
        mean_slack: mean radius paid for the solver error (pixel scale).
        samples: test samples evaluated.
        radii: THIS rank's per-example sound certified ℓ2 radius, in pixel scale.
        slack: THIS rank's per-example radius paid for the solver error (same scale).
        failed: forward solves (one per batch, at the layer's own settings) that did not
            converge, summed over ranks; counted instead of warned.
        certify_failed: the same for the re-solves at ``certify_tol`` (they only cost radius).
        solves: forward solves at the layer's settings (one per batch) over every rank.
    """

    accuracy: float
    forward_iterations: float
    lipschitz: float
    radii: Tensor = field(repr=False)
    slack: Tensor = field(default_factory=lambda: torch.zeros(0), repr=False)
    certified: dict[float, float] = field(default_factory=dict)
    mean_slack: float = 0.0
    samples: int = 0
    failed: int = 0
    certify_failed: int = 0
    solves: int = 0


@dataclass
class EpochSums:
    """Running sums of an epoch in progress on this rank (kept on the device while training).

    Passed to and returned through :func:`train_epoch`'s ``sums`` / ``after_step``, so that a
    checkpoint taken mid-epoch can resume the epoch with the same figures.
    """

    loss: Tensor | float = 0.0
    correct: Tensor | int = 0
    seen: int = 0
    forward_iterations: Tensor | int = 0
    backward_iterations: Tensor | int = 0
    step_time: float = 0.0
    steps: int = 0
    forward_failed: int = 0
    backward_failed: int = 0
    pending: list = field(default_factory=list, repr=False, compare=False)
    """CUDA (start, end) event pairs of steps whose time is not yet in ``step_time``."""

    def settle(self) -> None:
        """Add the steps timed by CUDA events to ``step_time`` (waits for the last of them)."""
        if self.pending:
            self.pending[-1][1].synchronize()
            self.step_time += sum(a.elapsed_time(b) for a, b in self.pending) / 1000.0
            self.pending.clear()

    def state_dict(self) -> dict[str, float | int]:
        """Plain numbers, step timing included (reads device values: a host synchronisation)."""
        self.settle()
        return {"loss": float(self.loss), "correct": int(self.correct), "seen": self.seen,
                "forward_iterations": int(self.forward_iterations),
                "backward_iterations": int(self.backward_iterations), "step_time": self.step_time,
                "steps": self.steps, "forward_failed": self.forward_failed,
                "backward_failed": self.backward_failed}


def _model_device(model: nn.Module) -> torch.device:
    first = next(iter(model.parameters()), None)
    return first.device if first is not None else torch.device("cpu")


def _to(t: Tensor, device: torch.device) -> Tensor:
    return t if t.device == device else t.to(device, non_blocking=True)


def _count(value) -> Tensor | int:
    """An iteration count as the solver gave it (a host int, or a device tensor)."""
    return value if isinstance(value, (int, Tensor)) else int(value)


@contextlib.contextmanager
def counted_failures():
    """Silence the per-solve convergence and step-size warnings: the loops count failed solves
    and the epoch summary reports the count, instead of one warning line per solve."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.simplefilter("ignore", StepSizeWarning)
        yield


def _failed_solves(call: Callable[[], object]) -> tuple[object, int]:
    """``call()`` and the number of solves inside it that warned they did not converge."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        warnings.simplefilter("ignore", StepSizeWarning)
        value = call()
    return value, sum(issubclass(w.category, ConvergenceWarning) for w in caught)


def train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer,
                data: Iterable[tuple[Tensor, Tensor]], *, steps: int,
                scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
                desc: str = "train",
                loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
                on_batch: Callable[[nn.Module, Tensor, Tensor], None] | None = None,
                amp: bool = False, progress: bool = True, refresh: int = 10,
                sums: EpochSums | None = None,
                after_step: Callable[[EpochSums], None] | None = None,
                regulariser: Callable[[], Tensor] | None = None) -> EpochStats:
    """One pass of training (cross entropy by default), with a progress bar.

    Args:
        model: the classifier, or its :func:`mondeq.training.distributed.wrap_model` wrapper.
        optimizer: its optimizer.
        data: (x, y) minibatches, on any device (moved to the model's).
        steps: number of minibatches (for the progress bar).
        scheduler: stepped once per minibatch when given.
        desc: progress-bar label.
        loss_fn: ``loss_fn(logits, y) -> scalar`` replacing cross entropy, e.g.
            :class:`mondeq.robustness.losses.LipschitzMarginLoss` for certified training.
        on_batch: ``on_batch(model, x, y)`` called before each step, outside the step timing,
            e.g. :class:`mondeq.training.step_size.AlphaTuner` to re-tune α every N steps.
        amp: run forward and loss under ``torch.autocast(device, dtype=torch.bfloat16)``.
        progress: draw the progress bar (pass ``False`` on every rank but the first).
        refresh: read the running loss for the bar every ``refresh`` steps (each read is a host
            synchronisation on CUDA).
        sums: the running sums of an epoch resumed mid-way (``data`` then holds only the
            remaining batches and ``steps`` still counts the whole epoch).
        after_step: ``after_step(sums)`` called after every step (e.g. a periodic checkpoint);
            it costs no synchronisation unless it reads the sums (``sums.state_dict()``).
        regulariser: ``regulariser() -> scalar`` added to every step's loss outside autocast,
            e.g. :class:`mondeq.training.regularisers.OperatorNormPenalty` (λ‖I − W‖₂); the
            reported loss then includes it.

    Solves that do not converge raise no warning here: they are counted in
    ``forward_failed`` / ``backward_failed`` of the returned stats.
    """
    with counted_failures():
        return _train_epoch(model, optimizer, data, steps=steps, scheduler=scheduler, desc=desc,
                            loss_fn=loss_fn, on_batch=on_batch, amp=amp, progress=progress,
                            refresh=refresh, sums=sums, after_step=after_step, regulariser=regulariser)


def _train_epoch(model, optimizer, data, *, steps, scheduler, desc, loss_fn, on_batch, amp, progress,
                 refresh, sums, after_step, regulariser) -> EpochStats:
    model.train()
    device = _model_device(model)
    cuda = device.type == "cuda"
    bar = ProgressBar(steps, desc) if progress else None
    acc = EpochSums() if sums is None else EpochSums(**sums.state_dict())
    acc.loss = torch.as_tensor(acc.loss, dtype=torch.float64, device=device)
    acc.correct = torch.as_tensor(acc.correct, dtype=torch.int64, device=device)
    if bar is not None and acc.steps:
        bar.update(acc.steps, loss=float(acc.loss) / max(acc.seen, 1))
    shown = float("nan")
    for x, y in data:
        x, y = _to(x, device), _to(y, device)
        if on_batch is not None:
            on_batch(model, x, y)
        if cuda:
            start_event = torch.cuda.Event(enable_timing=True)
            start_event.record()
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16) if amp else contextlib.nullcontext():
            logits, stats = model.forward_with_stats(x)
            loss = nn.functional.cross_entropy(logits, y) if loss_fn is None else loss_fn(logits, y)
        if regulariser is not None:
            loss = loss + regulariser()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        if cuda:
            end_event = torch.cuda.Event(enable_timing=True)
            end_event.record()
            acc.pending.append((start_event, end_event))
        else:
            acc.step_time += time.perf_counter() - start
        acc.steps += 1
        acc.loss += loss.detach().to(torch.float64) * len(y)
        acc.correct += (logits.detach().argmax(1) == y).sum()
        acc.seen += len(y)
        acc.forward_iterations = acc.forward_iterations + _count(stats.forward.iterations)
        acc.backward_iterations = acc.backward_iterations + (
            _count(stats.backward.iterations) if stats.backward is not None else 0)
        acc.forward_failed += int(not stats.forward.converged)
        acc.backward_failed += int(stats.backward is not None and not stats.backward.converged)
        if bar is not None:
            if acc.steps % refresh == 0 or acc.steps == steps or acc.steps == 1:
                shown = float(acc.loss) / acc.seen
            bar.update(loss=shown)
        if after_step is not None:
            after_step(acc)
    if bar is not None:
        bar.close()
    acc.settle()

    def f64(v) -> Tensor:
        return torch.as_tensor(v, dtype=torch.float64, device=device)

    totals = all_reduce_sum(torch.stack([acc.loss, f64(acc.correct), f64(float(acc.seen)),
                                         f64(acc.forward_iterations), f64(acc.backward_iterations),
                                         f64(float(acc.steps)), f64(acc.step_time),
                                         f64(float(acc.forward_failed)), f64(float(acc.backward_failed))]))
    (loss_total, correct_total, seen_total, fw_total, bw_total, steps_total, time_total, fw_failed,
     bw_failed) = totals.tolist()
    n = max(steps_total, 1.0)
    return EpochStats(loss=loss_total / max(seen_total, 1.0), accuracy=correct_total / max(seen_total, 1.0),
                      forward_iterations=fw_total / n, backward_iterations=bw_total / n,
                      step_time=time_total / n, steps=acc.steps, samples=int(seen_total),
                      forward_failed=int(fw_failed), backward_failed=int(bw_failed), solves=int(steps_total))


@torch.no_grad()
def evaluate(model: nn.Module, data: Iterable[tuple[Tensor, Tensor]], *,
             certify_tol: float | None = None, epsilons: Sequence[float] = (),
             bound: str = "product", multipliers: str = "scalar",
             dtype: torch.dtype | None = None) -> Evaluation:
    """Clean accuracy, mean iterations, the Lipschitz bound and sound certified radii.

    Radii come from :func:`mondeq.certify`: they account for the solver's error, so they
    hold for the exact network at any tolerance. Under torch.distributed pass each rank its own
    shard of the test set (:func:`mondeq.training.distributed.shard`); counts are summed over ranks, so
    accuracy and certified accuracy equal those of one process on the whole set.

    Args:
        model: the classifier (or its DDP wrapper).
        data: (x, y) minibatches in pixel scale (the classifier normalises them), on any device
            (moved to the model's).
        certify_tol: re-solve at this tolerance before certifying (``None``: the layer's own).
            Accuracy and iterations are always those of the layer's own settings.
        epsilons: pixel-scale radii at which certified accuracy (radius > ε) is counted.
        bound: ``"product"``, ``"joint"`` or ``"auto"`` (:func:`mondeq.certify`).
        multipliers, dtype: :func:`mondeq.certify`'s, for the re-solve at ``certify_tol`` (the
            figures at the layer's own solve always use scalar multipliers, in the model's dtype:
            the constants the joint training loss uses). The training report passes
            :func:`mondeq.certify`'s defaults, so its certificate is the API's and the command's.
    """
    model = unwrap(model)
    device = _model_device(model)
    epsilons = [float(e) for e in epsilons]
    correct = torch.zeros((), dtype=torch.float64, device=device)
    certified = torch.zeros(len(epsilons), dtype=torch.float64, device=device)
    slack_sum = torch.zeros((), dtype=torch.float64, device=device)
    seen, iterations, batches_seen, radii, slack = 0, 0.0, 0, [], []
    failed = certify_failed = 0
    lipschitz = lipschitz_bound(model)  # pixel scale, as the radii
    eps = torch.tensor(epsilons, dtype=torch.float64, device=device)
    for x, y in data:
        x, y = _to(x, device), _to(y, device)
        cert, fails = _failed_solves(lambda: certify(model, x, y, tol=None, dtype=None, batch_size=None,
                                                     bound=bound, multipliers="scalar"))
        failed += fails
        correct += cert.correct.sum()
        seen += len(y)
        iterations += cert.forward_iterations
        batches_seen += 1
        if certify_tol is not None:
            cert, fails = _failed_solves(lambda: certify(model, x, y, tol=certify_tol, batch_size=None,
                                                         bound=bound, multipliers=multipliers, dtype=dtype))
            certify_failed += fails
        radius = cert.radius.to(torch.float64)
        certified += (radius[:, None] > eps[None, :]).sum(0)
        slack_sum += cert.slack.to(torch.float64).sum()
        radii.append(cert.radius)
        slack.append(cert.slack)
    sums = all_reduce_sum(torch.cat([torch.stack([correct, slack_sum,
                                                  torch.tensor(float(seen), dtype=torch.float64, device=device),
                                                  torch.tensor(iterations, dtype=torch.float64, device=device),
                                                  torch.tensor(float(batches_seen), dtype=torch.float64, device=device),
                                                  torch.tensor(float(failed), dtype=torch.float64, device=device),
                                                  torch.tensor(float(certify_failed), dtype=torch.float64,
                                                               device=device)]),
                                     certified])).tolist()
    correct_total, slack_total, seen_total, iterations_total, batches_total, failed_total, cert_failed = sums[:7]
    n = max(seen_total, 1.0)
    return Evaluation(accuracy=correct_total / n, forward_iterations=iterations_total / max(batches_total, 1.0),
                      lipschitz=lipschitz, radii=torch.cat(radii) if radii else torch.zeros(0),
                      slack=torch.cat(slack) if slack else torch.zeros(0),
                      certified={e: c / n for e, c in zip(epsilons, sums[7:])},
                      mean_slack=slack_total / n, samples=int(seen_total), failed=int(failed_total),
                      certify_failed=int(cert_failed), solves=int(batches_total))
