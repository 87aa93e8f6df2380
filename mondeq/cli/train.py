"""The training command: train a monDEQ classifier and report accuracy, solver iterations,
Lipschitz bound and certified ℓ2 accuracy (``experiments/train.py``; its docstring describes the
outputs, exact resume, devices and several processes).

:class:`Run` holds one run's mutable state and is the one place that checkpoints it;
:func:`execute` trains (or finishes) the run on one process; :func:`report` writes
``results.json`` and ``curves.png`` and prints the final report; :func:`main` parses the command
line and sets up and tears down the process group around :func:`execute`.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time

import torch

from splitting import STEP_LIMITS
from ..data import DATASETS, Augmentation, load_dataset
from ..errors import CheckpointError, MissingDependencyError, NonFiniteInputError
from ..models import build_model
from ..perf import report_line
from ..robustness.certified_losses import make_certified_loss
from ..robustness.joint_training import training_bound
from ..training import (DeviceData, EpochSums, adam, evaluate, load_checkpoint, read_checkpoint, save_checkpoint,
                        train_epoch)
from ..training.data_order import epoch_order
from ..training.logs import EpochLog, tensorboard_available
from ..training.regularisers import make_operator_penalty, operator_norm_bound
from ..training.distributed import (DistInfo, broadcast_object, rank_batches, setup, shard, teardown,
                                    wrap_model)
from ..training.resume import gather_objects, plain
from ..training.schedules import make_schedule
from ..training.step_size import STEP_RULES, AlphaTuner, StableStep
from .main import error_text, run_command
from .plots import plot_curves
from .robustness_report import LOOSENESS_IMAGES, final_certificate, looseness_report
from .train_options import MODELS, diverged_hint, parse_args, refuse_existing_run, replace_run, resume_config

__all__ = ["MODELS", "Run", "execute", "load_data", "main", "report", "run"]


def load_data(args: argparse.Namespace, info: DistInfo, device: torch.device):
    """Training and this rank's test shard, placed on the device, in pixel scale: the model owns
    its normalisation (with --augment, crops pad with black pixels, as torchvision's do)."""
    x_train, y_train = load_dataset(args.dataset, args.data_root, train=True)
    x_test, y_test = load_dataset(args.dataset, args.data_root, train=False)
    x_train, y_train = x_train[: args.train_limit], y_train[: args.train_limit]
    x_test, y_test = x_test[: args.test_limit], y_test[: args.test_limit]
    mine = shard(len(x_test), info)
    return (DeviceData(x_train, y_train, device),
            DeviceData(x_test[mine], y_test[mine], device), len(x_test))


class Run:
    """The mutable state of one training run, and the one place that checkpoints it."""

    def __init__(self, args: argparse.Namespace, info: DistInfo, device: torch.device) -> None:
        self.args, self.info, self.device = args, info, device
        torch.manual_seed(args.seed)
        self.model = build_model(vars(args)).to(device=device, dtype=torch.float32)
        self.n_params = sum(p.numel() for p in self.model.parameters() if p.requires_grad)  # cnn: F, G frozen
        self.train_data, self.test_data, self.test_size = load_data(args, info, device)
        self.steps = len(rank_batches(torch.arange(len(self.train_data)), args.batch_size, info))
        total = self.steps * args.epochs
        self.optimizer = adam(self.model.parameters(), lr=args.lr)
        milestones = [e * self.steps for e in args.milestones] if args.milestones else None
        self.scheduler = make_schedule(args.schedule, self.optimizer, total_steps=total, lr=args.lr,
                                       milestones=milestones, gamma=args.gamma)
        self.loss_fn = None
        # the loss's margin constants and the reported certificates' (plain training: the product's)
        self.certified_bound = (training_bound(self.model, getattr(args, "certified_bound", "product"))
                                if args.certified_eps > 0 else "product")
        if args.certified_eps > 0:  # a pixel-scale radius, as the model's inputs
            self.loss_fn = make_certified_loss(getattr(args, "loss", "margin"), self.model, args.certified_eps,
                                               warmup_steps=round(args.certified_warmup * total),
                                               ramp_steps=round(args.certified_ramp * total),
                                               lipschitz_penalty=args.lipschitz_penalty,
                                               lipschitz_target=args.lipschitz_target,
                                               power_iterations=args.power_iterations,
                                               bound=self.certified_bound)
        self.regulariser = make_operator_penalty(self.model, getattr(args, "operator_penalty", 0.0),
                                                 iterations=getattr(args, "operator_penalty_iterations", 0))
        self.tuner = AlphaTuner(args.tune_alpha_every) if args.tune_alpha_every else None
        # FB without --alpha: α = 0.9·2m/L² from the current W before every step (and evaluation)
        self.step_rule = (StableStep(limit=STEP_LIMITS[args.solver])
                          if getattr(args, "auto_alpha", False) else None)
        if self.step_rule is not None:
            self.step_rule.apply(self.model)
        self.history: list[dict] = []
        self.first_epoch = 1
        self.partial: dict | None = None  # where a checkpoint taken inside an epoch stood
        self.augment: Augmentation | None = None
        self.checkpoint = args.out / "checkpoint.pt"
        self.config = {k: plain(v) for k, v in vars(args).items() if k not in ("explicit", "resume", "overwrite")}
        self.config["world_size"] = info.world_size

    def save(self, epoch: int, partial: dict | None = None) -> None:
        """Checkpoint after ``epoch`` completed epochs; ``partial``: this rank's state inside the
        next epoch (gathered from every rank: a collective when distributed)."""
        if partial is not None:
            partial = {"epoch": partial["epoch"], "step": partial["step"],
                       "ranks": gather_objects({k: partial[k] for k in ("sums", "augment")})}
        if not self.info.is_main:
            return
        extra = {"partial": partial, "tuner": self.tuner.state_dict() if self.tuner is not None else None,
                 "loss": self.loss_fn.state_dict() if self.loss_fn is not None else None,
                 "regulariser": self.regulariser.state_dict() if self.regulariser is not None else None}
        save_checkpoint(self.checkpoint, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                        epoch=epoch, history=self.history, config=self.config, extra=extra)

    def restore(self, state: dict) -> None:
        """Every rank loads the same checkpoint state (read by rank 0 and broadcast)."""
        load_checkpoint(self.checkpoint, model=self.model, optimizer=self.optimizer,
                        scheduler=self.scheduler, state=state)
        self.history, self.first_epoch = list(state["history"]), int(state["epoch"]) + 1
        extra = state.get("extra", {})
        self.partial = extra.get("partial")
        if self.partial is not None and len(self.partial["ranks"]) != self.info.world_size:
            raise SystemExit(f"error: {self.checkpoint} was written inside epoch {self.partial['epoch']} by "
                             f"{len(self.partial['ranks'])} process(es); resume it with as many "
                             f"(torchrun --nproc_per_node), not {self.info.world_size}")
        if self.tuner is not None and extra.get("tuner") is not None:
            self.tuner.load_state_dict(extra["tuner"])
        if self.loss_fn is not None and extra.get("loss") is not None:
            self.loss_fn.load_state_dict(extra["loss"])
        if self.regulariser is not None and extra.get("regulariser") is not None:
            self.regulariser.load_state_dict(extra["regulariser"])

    def train(self, model: torch.nn.Module, epoch: int):
        """One epoch (or the rest of one, after a checkpoint taken inside it)."""
        args, skip, sums = self.args, 0, None
        self.augment = (Augmentation(DATASETS[args.dataset], padding=4, device=self.device,
                                     seed=(args.seed * 1_000_003 + epoch) * 1009 + self.info.rank)
                        if args.augment else None)
        if self.partial is not None and self.partial["epoch"] == epoch:
            mine = self.partial["ranks"][self.info.rank]
            skip, sums = self.partial["step"], EpochSums(**mine["sums"])
            if self.augment is not None:
                self.augment.load_state_dict(mine["augment"])
        self.partial = None

        def after_step(acc: EpochSums) -> None:
            if acc.steps % args.checkpoint_every == 0 and acc.steps < self.steps:
                self.save(epoch - 1, {"epoch": epoch, "step": acc.steps, "sums": acc.state_dict(),
                                      "augment": self.augment.state_dict() if self.augment else None})

        return train_epoch(model, self.optimizer, self.epoch_batches(epoch, skip), steps=self.steps,
                           scheduler=self.scheduler, desc=f"epoch {epoch}/{args.epochs}",
                           loss_fn=self.loss_fn, on_batch=self.tuner or self.step_rule, amp=args.amp,
                           progress=self.info.is_main, sums=sums, regulariser=self.regulariser,
                           after_step=after_step if args.checkpoint_every else None)

    def epoch_batches(self, epoch: int, skip: int = 0):
        """This rank's batches of ``epoch`` from step ``skip`` on: the order and the crops are pure
        functions of (seed, epoch, rank), so resuming needs no data-order state (epochs count
        from 1 here and from 0 in ``epoch_order``)."""
        args = self.args
        steps = rank_batches(epoch_order(len(self.train_data), seed=args.seed, epoch=epoch - 1),
                             args.batch_size, self.info)[skip:]
        if self.augment is None:
            yield from self.train_data.batches(steps)
            return
        for x, y in self.train_data.batches(steps):
            yield self.augment(x), y

    def test_batches(self):
        """This rank's test shard in batches of 1000."""
        n = len(self.test_data)
        return self.test_data.batches([torch.arange(s, min(s + 1000, n)) for s in range(0, n, 1000)])


def main(argv: list[str] | None = None) -> dict:
    """Run the training command.

    Args:
        argv: the command line without the program name (default: ``sys.argv[1:]``).

    Returns:
        The report written to ``results.json`` (``{}`` when a resumed run had nothing left to do).

    Raises:
        SystemExit: invalid options, or a resume that contradicts the saved run.
        RunExistsError: ``--out`` holds a run and neither ``--resume`` nor ``--overwrite`` was given.
        FileNotFoundError, CheckpointError: ``--resume`` without a readable checkpoint.
    """
    args = parse_args(argv)
    refuse_existing_run(args)
    info, device = setup(args.device)
    try:
        result = execute(args, info, device)
    except BaseException:
        teardown(wait=False)  # the other ranks may never reach a barrier
        raise
    teardown()  # waits for every rank: rank 0 may still be writing
    return result


@contextlib.contextmanager
def damaged_checkpoint(path):
    """Report a checkpoint whose contents do not fit this run (a missing key, a tensor of the
    wrong shape, a value of the wrong type) as a :class:`CheckpointError` naming the file."""
    try:
        yield
    except (KeyError, TypeError, AttributeError, IndexError, RuntimeError) as err:
        raise CheckpointError(f"checkpoint {path} is damaged or was written by another program: "
                              f"{type(err).__name__} {str(err).splitlines()[0] if str(err) else ''} while "
                              "restoring it; start a new run with --overwrite (replaces it) or another --out") from err


def execute(args: argparse.Namespace, info: DistInfo, device: torch.device) -> dict:
    """Train (or finish training) the run ``args`` describes on this process's ``device``."""
    say = print if info.is_main else (lambda *a, **k: None)
    state = None
    if args.resume:
        checkpoint = args.out / "checkpoint.pt"
        if not checkpoint.is_file():
            raise FileNotFoundError(f"no checkpoint at {checkpoint}: --resume continues a run that has saved "
                                    "one (after its first epoch); train without --resume first")
        state = broadcast_object(read_checkpoint(checkpoint) if info.is_main else None)
        with damaged_checkpoint(checkpoint):
            args = resume_config(args, state["config"], checkpoint)
    if getattr(args, "tensorboard", False):
        tensorboard_available()  # every rank: a missing package must not leave the others waiting;
        # checked before the data are loaded
    run = Run(args, info, device)
    if state is not None:
        with damaged_checkpoint(run.checkpoint):
            run.restore(state)
        inside = (f", step {run.partial['step']} of epoch {run.partial['epoch']}"
                  if run.partial is not None else "")
        say(f"resumed from {run.checkpoint} after epoch {state['epoch']}{inside}")
    if info.is_main:
        if getattr(args, "overwrite", False) and not args.resume:
            replace_run(args.out, say)
        args.out.mkdir(parents=True, exist_ok=True)
    if run.first_epoch > args.epochs:
        say(f"nothing to do: checkpoint already at epoch {run.first_epoch - 1} of {args.epochs}")
        return {}
    model = wrap_model(run.model, info, device)
    alpha = (f"α=0.9·{STEP_RULES[args.solver]} (now {run.model.layer.alpha:.3g})" if run.step_rule is not None
             else f"α={args.alpha:g}")
    kind = "plain CNN (W = 0)" if args.model == "cnn" else "monDEQ"
    say(f"{args.dataset} {args.model} {kind}, {run.n_params} trained parameters, {args.solver.upper()} {alpha} "
        f"tol={args.tol:g}; {len(run.train_data)} train / {run.test_size} test images; {device}"
        f"{' bf16 autocast' if args.amp else ''}, {info.world_size} process(es)")
    wall = time.perf_counter()
    log = (EpochLog(args.out, tensorboard=getattr(args, "tensorboard", False), first_epoch=run.first_epoch)
           if info.is_main else None)
    try:
        train_epochs(run, model, log, wall, say)
    finally:
        if log is not None:
            log.close()
    return report(run, time.perf_counter() - wall, say)


def train_epochs(run: Run, model: torch.nn.Module, log: EpochLog | None, wall: float, say) -> None:
    """The epoch loop: after each epoch, checkpoint, then (rank 0, ``log`` given) rewrite
    ``metrics.csv`` and ``results.json`` from the history, so a killed run keeps both."""
    args = run.args
    for epoch in range(run.first_epoch, args.epochs + 1):
        started = time.perf_counter()
        stats = run.train(model, epoch)
        epoch_time = time.perf_counter() - started
        if run.step_rule is not None:  # the α of the W the epoch ended with
            run.step_rule.apply(run.model)
        ev = evaluate(run.model, run.test_batches(), certify_tol=args.certify_tol,
                      epsilons=args.epsilons, bound=run.certified_bound)
        run.history.append({
            "epoch": epoch, "train_loss": stats.loss, "train_accuracy": stats.accuracy,
            "test_accuracy": ev.accuracy, "forward_iterations": stats.forward_iterations,
            "backward_iterations": stats.backward_iterations, "test_forward_iterations": ev.forward_iterations,
            "step_time_ms": 1000 * stats.step_time, "epoch_time_s": epoch_time,
            "images_per_s": stats.samples / epoch_time, "lipschitz": ev.lipschitz,
            "certified": {str(k): v for k, v in ev.certified.items()}, "certificate_slack": ev.mean_slack,
            "train_eps": run.loss_fn.current_eps() if run.loss_fn is not None else 0.0,
            "alpha": run.model.layer.alpha, "forward_failed": stats.forward_failed,
            "backward_failed": stats.backward_failed, "test_failed": ev.failed,
            "train_solves": stats.solves, "test_solves": ev.solves,
            "operator_norm": operator_norm_bound(run.model),
        })
        say(f"epoch {epoch}: loss {stats.loss:.4f}  test acc {100 * ev.accuracy:.2f}%  "
            f"iterations fwd {stats.forward_iterations:.1f} bwd {stats.backward_iterations:.1f}  "
            f"step {1000 * stats.step_time:.2f} ms  Lipschitz ‖U‖₂/(m·σ) {ev.lipschitz:.2f}  certified "
            + " ".join(f"ε={k:g}: {100 * v:.1f}%" for k, v in ev.certified.items()) + (f" (monitor: {run.certified_bound} "
            f"bound, radii less {ev.mean_slack:.2g} px of solver slack; re-solved tightly at the end)" if ev.certified else ""),
            flush=True)
        if stats.forward_failed or stats.backward_failed or ev.failed:
            say(f"warning: epoch {epoch}: {failed_solves(stats.forward_failed, stats.backward_failed, ev.failed)} "
                f"did not reach --tol {args.tol:g} within --max-iter {args.max_iter}; raise --max-iter"
                + (f", or omit --alpha ({args.solver} then keeps α < {STEP_RULES[args.solver]})"
                   if args.solver in STEP_LIMITS and run.step_rule is None else
                   ", loosen --tol or use --tune-alpha-every"), flush=True)
        run.save(epoch)
        if log is not None:
            log.write(run.history)
            write_results(run, results_so_far(run, time.perf_counter() - wall, complete=False))


def results_so_far(run: Run, train_wall: float, *, complete: bool) -> dict:
    """The ``results.json`` report of the epochs done: ``final`` is the last of them and
    ``complete`` says whether the run has finished (with its tight certification, if any)."""
    return {"config": run.config, "parameters": run.n_params, "certified_bound": run.certified_bound,
            "history": run.history,
            "final": run.history[-1], "train_wall_time_s": train_wall, "complete": complete}


def write_results(run: Run, result: dict) -> None:
    """Write ``results.json`` atomically (a crash mid-write keeps the previous report)."""
    path = run.args.out / "results.json"
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    os.replace(tmp, path)


def capped_solves(history: list[dict]) -> str:
    """The solves of every epoch that stopped at --max-iter (or non-finite) before --tol, out of
    how many, e.g. ``0 of 940 forward, 0 of 940 backward solves (train), 0 of 20 forward (test)``
    (the totals are left out for a run whose older epochs did not record them)."""
    def total(kind: str) -> str:
        return (f" of {sum(e[kind] for e in history)}" if all(kind in e for e in history) else "")
    failed = [sum(e.get(k, 0) for e in history) for k in ("forward_failed", "backward_failed", "test_failed")]
    train, test = total("train_solves"), total("test_solves")
    return (f"{failed[0]}{train} forward, {failed[1]}{train} backward solves (train), "
            f"{failed[2]}{test} forward (test), all epochs")


def failed_solves(forward: int, backward: int, test: int) -> str:
    """The count of unconverged solves in words, e.g. ``2 forward, 0 backward (train), 1 (test) solves``."""
    return f"{forward} forward, {backward} backward (train), {test} forward (test) solves"


def report(run: Run, train_wall: float, say) -> dict:
    """Write ``results.json`` and ``curves.png`` (rank 0) and print the final report.

    The test set is certified once more by :func:`mondeq.certify`'s rule (the one certificate of
    the API and ``mondeq certify``: :func:`~mondeq.cli.robustness_report.final_certificate`);
    the per-epoch figures are the cheaper monitoring at ``--tol``.
    """
    args, final = run.args, run.history[-1]
    result = results_so_far(run, train_wall, complete=True)
    result["certified_tight"], certificate_lines = final_certificate(run.model, run.test_batches(), args.epsilons,
                                                                     run_folder=args.out)
    loose = None
    if args.certified_eps > 0 and run.info.is_main:  # float64 copy, LOOSENESS_IMAGES images
        say(f"measuring the bound's looseness on {min(LOOSENESS_IMAGES, len(run.test_data.labels))} test "
            "images (ratio ascent and PGD in float64; minutes for conv and multi-tier models)")
        loose = looseness_report(run.model, run.test_data.images, run.test_data.labels, args.epsilons,
                                 bound=run.certified_bound)
    if loose is not None:
        result["looseness"] = loose[0]
    if run.info.is_main:
        write_results(run, result)
        plot_curves(run.history, args.out / "curves.png")
    say("\nfinal report")
    say(f"  test accuracy            {100 * final['test_accuracy']:.2f}%")
    say(f"  solver iterations        forward {final['forward_iterations']:.1f}, backward "
        f"{final['backward_iterations']:.1f} (train), forward {final['test_forward_iterations']:.1f} (test)")
    if args.solver in ("pr", "dr") and run.info.is_main:  # the floor model: one resolvent application an iteration
        say("  step vs its floor        " + report_line(
            getattr(run.model, "module", run.model), args.batch_size // run.info.world_size,
            step_seconds=final["step_time_ms"] / 1000, forward_iterations=final["forward_iterations"],
            backward_iterations=final["backward_iterations"]))
    say(f"  iteration cap reached    {capped_solves(run.history)}; the others met --tol {args.tol:g}")
    say(f"  Lipschitz bound          {final['lipschitz']:.3f} (pixel scale: ‖U‖₂/m / min σ), "
        f"{final['lipschitz'] * run.model.pixel_scale:.3f} (‖U‖₂/m, normalised input)")
    for line in certificate_lines:
        say(line)
    solve_tol = args.tol if args.certify_tol is None else args.certify_tol
    say("                           " + ", ".join(f"ε={k}: {100 * v:.1f}%" for k, v in final["certified"].items())
        + f" (per-epoch monitoring: {run.certified_bound} bound{', scalar multipliers' if run.certified_bound == 'joint' else ''}, "
          f"solve at tol {solve_tol:g}; "
          f"sound, radii pay {final['certificate_slack']:.2g} pixel on average for the solver error)")
    say(f"  ‖I − W‖₂                 {final['operator_norm']:.3f} (m = {args.m:g}; nonlinearity "
        f"{getattr(args, 'nonlinearity', 'relu')})")
    for line in loose[1] if loose is not None else []:
        say(f"  looseness                {line}")
    say(f"  training wall time       {train_wall:.1f} s")
    say(f"  wrote {args.out / 'results.json'}, {args.out / 'metrics.csv'}, {args.out / 'curves.png'}, "
        f"{run.checkpoint}" + (f", {args.out / 'tensorboard'}/" if getattr(args, "tensorboard", False) else ""))
    return result


def run(argv: list[str] | None = None) -> int:
    """:func:`main` as a command (``mondeq train``): its exit status, and a missing or unreadable
    checkpoint reported in one line instead of a traceback."""
    try:
        return 0 if main(argv) is not None else 1
    except (FileNotFoundError, CheckpointError, MissingDependencyError) as err:
        sys.exit(f"error: {error_text(err)}")
    except NonFiniteInputError:
        sys.exit(f"error: training diverged: {diverged_hint(argv)}")


if __name__ == "__main__":  # python -m mondeq.cli.train: the same program as experiments/train.py
    sys.exit(run_command("train"))
