"""Train a monDEQ classifier (MNIST, CIFAR-10 or SVHN) and report accuracy, solver iterations,
Lipschitz bound and certified ℓ2 accuracy.

The default run trains the paper's fully connected monDEQ on MNIST (87 hidden units, m = 1, ReLU,
Peaceman-Rachford with α = 1, tol 1e-2) and writes, under ``--out`` (default
``runs/{dataset}_{model}``):

* ``results.json``: configuration, per-epoch history and the final report;
* ``curves.png``: training loss, test accuracy and solver iterations per epoch;
* ``checkpoint.pt``: saved after every epoch (and every ``--checkpoint-every`` steps).

**Exact resume.** ``--resume`` continues from ``OUT/checkpoint.pt`` with the run's saved
configuration; the data order is a pure function of (seed, epoch) and the checkpoint holds the
weights, optimizer, schedule, α, the α tuner and every RNG, so a run killed at any moment and
resumed ends with the same weights, bit for bit on CPU, as the uninterrupted run. Options given
on the command line that contradict the saved configuration are refused. ``--epochs`` may
change only when the schedule does not depend on the run's length (``constant``, or ``step``
with explicit ``--milestones``, and no certified-training ramp): a cosine or one-cycle schedule
planned for 4 epochs has already decayed, so "4 more epochs" would be a different run.

**Devices.** ``--device`` (default cuda when available) holds the model, the optimizer and the
data (the whole dataset when it fits, else pinned batches copied without blocking); ``--amp``
runs the training step under bfloat16 autocast (the equilibrium solve stays in float32).

**Several processes.** Under ``torchrun --nproc_per_node N`` each process trains on its share of
every global batch (``--batch-size`` is the global batch) with DistributedDataParallel (gloo on
CPU, nccl on CUDA); metrics are summed over processes and only rank 0 prints and writes files.

Certified training: ``--certified-eps 1.58`` trains for that ℓ2 radius in pixel scale with the
Lipschitz-margin loss (``mondeq.robustness.losses.LipschitzMarginLoss``). Certificates are sound: they
subtract the solver's error, and pixel-scale radii use the smallest channel std.

Example::

    python experiments/train.py --epochs 3
    python experiments/train.py --resume                  # after a crash: same run, same result
    python experiments/train.py --dataset cifar10 --model conv --augment --data-root /datasets
    torchrun --nproc_per_node 2 experiments/train.py --device cpu
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from mondeq import LipschitzMarginLoss, build_model
from mondeq.data import DATASETS, Augmentation, load_dataset, normalize_dataset
from mondeq.training.distributed import (DistInfo, broadcast_object, rank_batches, setup, shard, teardown,
                                wrap_model)
from mondeq.training.schedules import make_schedule
from mondeq.training import (CheckpointError, DeviceData, EpochSums, evaluate, load_checkpoint, read_checkpoint,
                             save_checkpoint, train_epoch)
from mondeq.training.data_order import epoch_order
from mondeq.training.resume import gather_objects, plain
from mondeq.training.step_size import AlphaTuner

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling train_options, also when loaded by path
from train_options import (DEFAULT_CHANNELS, MODELS, TIGHT_TOL,  # noqa: E402,F401 (MODELS: certify.py)
                           multitier_mondeq, parse_args, resume_config)


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


def plot_curves(history: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(epochs, [h["train_loss"] for h in history], marker="o")
    axes[0].set(title="training loss", xlabel="epoch", yscale="log")
    axes[1].plot(epochs, [100 * h["test_accuracy"] for h in history], marker="o", label="clean")
    for eps in history[-1]["certified"]:
        axes[1].plot(epochs, [100 * h["certified"][eps] for h in history], marker=".", label=f"certified ε={eps}")
    axes[1].set(title="test accuracy (%)", xlabel="epoch")
    axes[1].legend(fontsize=7)
    axes[2].plot(epochs, [h["forward_iterations"] for h in history], marker="o", label="forward")
    axes[2].plot(epochs, [h["backward_iterations"] for h in history], marker="o", label="backward")
    axes[2].set(title="mean solver iterations", xlabel="epoch")
    axes[2].legend()
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
        n = len(self.test_data)
        return self.test_data.batches([torch.arange(s, min(s + 1000, n)) for s in range(0, n, 1000)])


def main(argv: list[str] | None = None) -> dict:
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


if __name__ == "__main__":
    try:
        sys.exit(0 if main() is not None else 1)
    except (FileNotFoundError, CheckpointError) as err:  # a missing or unreadable checkpoint
        sys.exit(f"error: {err}")
