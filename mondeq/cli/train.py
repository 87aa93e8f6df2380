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
import json
import sys
import time

import torch

from ..data import DATASETS, Augmentation, load_dataset, normalize_dataset
from ..errors import CheckpointError
from ..models import build_model
from ..robustness import LipschitzMarginLoss
from ..training import (DeviceData, EpochSums, evaluate, load_checkpoint, read_checkpoint, save_checkpoint,
                        train_epoch)
from ..training.data_order import epoch_order
from ..training.distributed import (DistInfo, broadcast_object, rank_batches, setup, shard, teardown,
                                    wrap_model)
from ..training.resume import gather_objects, plain
from ..training.schedules import make_schedule
from ..training.step_size import AlphaTuner
from .plots import plot_curves
from .train_options import MODELS, TIGHT_TOL, parse_args, resume_config

__all__ = ["MODELS", "Run", "execute", "load_data", "main", "report", "run"]


def load_data(args: argparse.Namespace, info: DistInfo, device: torch.device):
    """Training and this rank's test shard, placed on the device; the train set stays in pixel
    scale with --augment (crops pad with black, as torchvision's do, then normalise per batch)."""
    x_train, y_train = load_dataset(args.dataset, args.data_root, train=True)
    x_test, y_test = load_dataset(args.dataset, args.data_root, train=False)
    x_train, y_train = x_train[: args.train_limit], y_train[: args.train_limit]
    x_test, y_test = x_test[: args.test_limit], y_test[: args.test_limit]
    if not args.augment:
        x_train = normalize_dataset(x_train, args.dataset)
    mine = shard(len(x_test), info)
    return (DeviceData(x_train, y_train, device),
            DeviceData(normalize_dataset(x_test[mine], args.dataset), y_test[mine], device), len(x_test))


class Run:
    """The mutable state of one training run, and the one place that checkpoints it."""

    def __init__(self, args: argparse.Namespace, info: DistInfo, device: torch.device) -> None:
        self.args, self.info, self.device = args, info, device
        spec = DATASETS[args.dataset]
        torch.manual_seed(args.seed)
        self.model = build_model(vars(args)).to(device=device, dtype=torch.float32)
        self.n_params = sum(p.numel() for p in self.model.parameters())
        self.train_data, self.test_data, self.test_size = load_data(args, info, device)
        self.steps = len(rank_batches(torch.arange(len(self.train_data)), args.batch_size, info))
        total = self.steps * args.epochs
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=args.lr)
        milestones = [e * self.steps for e in args.milestones] if args.milestones else None
        self.scheduler = make_schedule(args.schedule, self.optimizer, total_steps=total, lr=args.lr,
                                       milestones=milestones, gamma=args.gamma)
        self.pixel_scale = min(spec.std)  # sound: a pixel δ is at most δ/min std in every channel
        self.loss_fn = None
        if args.certified_eps > 0:  # radii in pixel scale → the model's normalised scale
            self.loss_fn = LipschitzMarginLoss(self.model, args.certified_eps / self.pixel_scale,
                                               warmup_steps=round(args.certified_warmup * total),
                                               ramp_steps=round(args.certified_ramp * total),
                                               lipschitz_penalty=args.lipschitz_penalty,
                                               lipschitz_target=args.lipschitz_target,
                                               power_iterations=args.power_iterations)
        self.tuner = AlphaTuner(args.tune_alpha_every) if args.tune_alpha_every else None
        self.history: list[dict] = []
        self.first_epoch = 1
        self.partial: dict | None = None  # where a checkpoint taken inside an epoch stood
        self.augment: Augmentation | None = None
        self.checkpoint = args.out / "checkpoint.pt"
        self.config = {k: plain(v) for k, v in vars(args).items() if k not in ("explicit", "resume")}
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
                 "loss": self.loss_fn.state_dict() if self.loss_fn is not None else None}
        save_checkpoint(self.checkpoint, model=self.model, optimizer=self.optimizer, scheduler=self.scheduler,
                        epoch=epoch, history=self.history, config=self.config, extra=extra)

    def restore(self, state: dict) -> None:
        """Every rank loads the same checkpoint state (read by rank 0 and broadcast)."""
        load_checkpoint(self.checkpoint, model=self.model, optimizer=self.optimizer,
                        scheduler=self.scheduler, state=state)
        self.history, self.first_epoch = state["history"], state["epoch"] + 1
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
                           loss_fn=self.loss_fn, on_batch=self.tuner, amp=args.amp,
                           progress=self.info.is_main, sums=sums,
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
            yield normalize_dataset(self.augment(x), args.dataset), y

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
        FileNotFoundError, CheckpointError: ``--resume`` without a readable checkpoint.
    """
    args = parse_args(argv)
    info, device = setup(args.device)
    try:
        result = execute(args, info, device)
    except BaseException:
        teardown(wait=False)  # the other ranks may never reach a barrier
        raise
    teardown()  # waits for every rank: rank 0 may still be writing
    return result


def execute(args: argparse.Namespace, info: DistInfo, device: torch.device) -> dict:
    """Train (or finish training) the run ``args`` describes on this process's ``device``."""
    say = print if info.is_main else (lambda *a, **k: None)
    state = None
    if args.resume:
        checkpoint = args.out / "checkpoint.pt"
        state = broadcast_object(read_checkpoint(checkpoint) if info.is_main else None)
        args = resume_config(args, state["config"], checkpoint)
    run = Run(args, info, device)
    if state is not None:
        run.restore(state)
        inside = (f", step {run.partial['step']} of epoch {run.partial['epoch']}"
                  if run.partial is not None else "")
        say(f"resumed from {run.checkpoint} after epoch {state['epoch']}{inside}")
    if info.is_main:
        args.out.mkdir(parents=True, exist_ok=True)
    if run.first_epoch > args.epochs:
        say(f"nothing to do: checkpoint already at epoch {run.first_epoch - 1} of {args.epochs}")
        return {}
    model = wrap_model(run.model, info, device)
    say(f"{args.dataset} {args.model} monDEQ, {run.n_params} parameters, {args.solver.upper()} α={args.alpha:g} "
        f"tol={args.tol:g}; {len(run.train_data)} train / {run.test_size} test images; {device}"
        f"{' bf16 autocast' if args.amp else ''}, {info.world_size} process(es)")
    wall = time.perf_counter()
    for epoch in range(run.first_epoch, args.epochs + 1):
        started = time.perf_counter()
        stats = run.train(model, epoch)
        epoch_time = time.perf_counter() - started
        ev = evaluate(run.model, run.test_batches(), input_scale=run.pixel_scale,
                      certify_tol=args.certify_tol, epsilons=args.epsilons)
        run.history.append({
            "epoch": epoch, "train_loss": stats.loss, "train_accuracy": stats.accuracy,
            "test_accuracy": ev.accuracy, "forward_iterations": stats.forward_iterations,
            "backward_iterations": stats.backward_iterations, "test_forward_iterations": ev.forward_iterations,
            "step_time_ms": 1000 * stats.step_time, "epoch_time_s": epoch_time,
            "images_per_s": stats.samples / epoch_time, "lipschitz": ev.lipschitz,
            "certified": {str(k): v for k, v in ev.certified.items()}, "certificate_slack": ev.mean_slack,
            "train_eps": run.loss_fn.current_eps() * run.pixel_scale if run.loss_fn is not None else 0.0,
            "alpha": run.model.layer.alpha,
        })
        say(f"epoch {epoch}: loss {stats.loss:.4f}  test acc {100 * ev.accuracy:.2f}%  "
            f"iterations fwd {stats.forward_iterations:.1f} bwd {stats.backward_iterations:.1f}  "
            f"step {1000 * stats.step_time:.2f} ms  Lipschitz ‖U‖₂/m {ev.lipschitz:.2f}  certified "
            + " ".join(f"ε={k:g}: {100 * v:.1f}%" for k, v in ev.certified.items()), flush=True)
        run.save(epoch)
    return report(run, time.perf_counter() - wall, say)


def report(run: Run, train_wall: float, say) -> dict:
    """Write ``results.json`` and ``curves.png`` (rank 0) and print the final report.

    Without ``--certify-tol`` the test set is certified once more from equilibria re-solved at
    ``TIGHT_TOL``, so the reported certificates pay almost no solver-error slack.
    """
    args, final = run.args, run.history[-1]
    result = {"config": run.config, "parameters": run.n_params, "history": run.history, "final": final,
              "train_wall_time_s": train_wall}
    if args.certify_tol is None:
        # One more certification with every equilibrium re-solved tightly: the slack (the radius
        # the solver error costs) then all but vanishes. Per-epoch figures keep the cheaper --tol.
        tight = evaluate(run.model, run.test_batches(), input_scale=run.pixel_scale, certify_tol=TIGHT_TOL,
                         epsilons=args.epsilons)
        result["certified_tight"] = {"tol": TIGHT_TOL, "slack": tight.mean_slack,
                                     "certified": {str(k): v for k, v in tight.certified.items()}}
    if run.info.is_main:
        (args.out / "results.json").write_text(json.dumps(result, indent=2))
        plot_curves(run.history, args.out / "curves.png")
    say("\nfinal report")
    say(f"  test accuracy            {100 * final['test_accuracy']:.2f}%")
    say(f"  solver iterations        forward {final['forward_iterations']:.1f}, backward "
        f"{final['backward_iterations']:.1f} (train), forward {final['test_forward_iterations']:.1f} (test)")
    say(f"  Lipschitz bound ‖U‖₂/m   {final['lipschitz']:.3f} (normalised input), "
        f"{final['lipschitz'] / run.pixel_scale:.3f} (pixel scale)")
    solve_tol = args.tol if args.certify_tol is None else args.certify_tol
    say("  certified ℓ2 accuracy    " + ", ".join(f"ε={k}: {100 * v:.1f}%" for k, v in final["certified"].items())
        + f" (sound; solve at tol {solve_tol:g}: radii pay {final['certificate_slack']:.2g} pixel on average "
          "for the solver error)")
    if "certified_tight" in result:
        tight = result["certified_tight"]
        say("                           " + ", ".join(f"ε={k}: {100 * v:.1f}%" for k, v in tight["certified"].items())
            + f" (sound; re-solved at tol {TIGHT_TOL:g}: slack {tight['slack']:.2g})")
        if args.epsilons and tight["slack"] > 0.1 * min(args.epsilons):
            say(f"                           the solver-error slack is large next to ε (a large ‖I − W‖₂): "
                f"`python experiments/certify.py {args.out} --dtype float64 --tol 1e-9` certifies with "
                f"a float64 solve at tol 1e-9")
    say(f"  training wall time       {train_wall:.1f} s")
    say(f"  wrote {args.out / 'results.json'}, {args.out / 'curves.png'}, {run.checkpoint}")
    return result


def run(argv: list[str] | None = None) -> int:
    """:func:`main` as a command (``mondeq train``): its exit status, and a missing or unreadable
    checkpoint reported in one line instead of a traceback."""
    try:
        return 0 if main(argv) is not None else 1
    except (FileNotFoundError, CheckpointError) as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":  # python -m mondeq.cli.train: the same program as experiments/train.py
    sys.exit(run())
