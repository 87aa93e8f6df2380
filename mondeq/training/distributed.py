r"""Data-parallel training with ``torch.distributed``: one process per device, launched by torchrun.

The library needs no launcher of its own. ``torchrun --nproc_per_node N prog.py`` starts N
processes and sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``;
:func:`setup` reads them, joins the process group (gloo on CPU, nccl on CUDA) and picks the
process's device. A plain ``python prog.py`` gives a trivial one-process :class:`DistInfo` and no
process group, so the same program runs both ways and every helper here is a no-op without a group.

**Why the implicit backward is DDP-safe, unchanged.** The forward solve runs without a graph;
the graph is *one* application of the layer map at the equilibrium,
:math:`v = W\,\mathrm{sg}(z^\star) + U x + b`, :math:`z = \sigma(v)` (see
:mod:`splitting.implicit`). The backward linear solve :math:`u = (I - J W^\top)^{-1} J \bar g`
happens inside the custom autograd node of σ, whose output is the gradient with respect to
:math:`v`. Autograd then pushes :math:`u` through :math:`v`'s ordinary graph into F, G, U and b,
so every parameter's ``.grad`` is accumulated by autograd exactly once per backward, which is
where DistributedDataParallel's allreduce hooks fire. No parameter is read by the solver in a
way DDP cannot see, and the solve's iteration count (which differs between ranks) changes only
how :math:`u` is computed, not which parameters receive gradients. DDP averages the gradients,
so with a *mean* loss over each rank's equal share of the global batch the update equals the
single-process update on the whole batch, up to the solver's tolerance: the stopping test is per
batch, so at a loose ``tol`` each sample's :math:`\hat z` depends on its batch mates. One thing
does need care: DDP arms its hooks in the *wrapper's* forward, so a training step must call the
wrapper (:class:`DistributedMonDEQ` offers ``forward_with_stats`` for that), never the bare model.

**What must agree across ranks** (and what this module offers for it): the data order
(:func:`mondeq.training.data_order.epoch_order`, a pure function of seed and epoch, and :func:`rank_batches`, each rank's
share of every global batch); the splitting step α (decided on rank 0 and broadcast, see
:mod:`mondeq.training.step_size`; :func:`broadcast_object`); metrics (:func:`all_reduce_sum` of counts and
sums, then divide); and outputs (only ``DistInfo.is_main`` writes files or prints).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from splitting import EquilibriumStats, State
from ..errors import InvalidSettingError


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits in the job.

    Attributes:
        rank: global rank, 0 … world_size − 1.
        world_size: number of processes in the job.
        local_rank: rank on this machine (selects the CUDA device).
    """

    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that prints, writes results and saves checkpoints."""
        return self.rank == 0


def is_distributed() -> bool:
    """Whether a process group is initialised (and so collectives are real)."""
    return dist.is_available() and dist.is_initialized()


def setup(device: str | None = None) -> tuple[DistInfo, torch.device]:
    """Join the process group described by torchrun's environment, and pick this process's device.

    With ``WORLD_SIZE`` > 1 in the environment the default process group is initialised from the
    ``env://`` variables (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``): backend gloo
    on CPU, nccl on CUDA, where each process takes ``cuda:LOCAL_RANK``. Otherwise nothing is
    initialised and the result is ``DistInfo(0, 1, 0)``.

    Args:
        device: ``"cpu"``, ``"cuda"`` or ``"cuda:K"`` (under torchrun, ``cuda`` means
            ``cuda:LOCAL_RANK``); ``None`` picks cuda when available, else cpu.

    Returns:
        ``(info, device)``.

    Raises:
        InvalidSettingError: CUDA asked for but not available, or fewer CUDA devices than local
            processes.
    """
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InvalidSettingError("device 'cuda' was requested but torch.cuda.is_available() is "
                                  "False; pass --device cpu")
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo(0, 1, 0), dev
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise InvalidSettingError(
                f"local rank {local_rank} needs cuda:{local_rank} but this machine has "
                f"{torch.cuda.device_count()} CUDA device(s); use --nproc_per_node ≤ the device count")
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    if not is_distributed():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs = {"device_id": dev} if dev.type == "cuda" else {}
        dist.init_process_group(backend=backend, init_method="env://", rank=rank,
                                world_size=world_size, **kwargs)
    return DistInfo(rank, world_size, local_rank), dev


def teardown(*, wait: bool = True) -> None:
    """Destroy the process group, if one was initialised (call once, at the end of the program).

    With ``wait`` (the normal exit) every rank first meets at a barrier: a rank that left while
    another was still communicating (rank 0 writing its outputs) made gloo abort the group
    ("terminate called without an active exception"). Pass ``wait=False`` when leaving on an
    error, where the other ranks may never arrive.
    """
    if is_distributed():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (no-op without a process group)."""
    if is_distributed():
        dist.barrier()


def rank_batches(order: Tensor, batch_size: int, info: DistInfo) -> list[Tensor]:
    """This rank's indices of every global batch of ``order``.

    ``order`` is cut into global batches of ``batch_size`` (the last may be smaller); each global
    batch is split into ``world_size`` contiguous parts whose sizes differ by at most one (the
    first ``len % world_size`` ranks get one more), and this rank takes part ``rank``. The union
    over ranks of step k is therefore exactly the single-process step-k batch, in order.

    Every rank gets the same number of steps (DDP needs one backward per rank per step). A last
    global batch with fewer than ``world_size`` samples would leave some rank empty, so it is
    dropped on every rank (the single-process run, ``world_size = 1``, never drops anything).

    DDP averages the ranks' gradients with equal weights. With a mean loss per rank, the step
    equals the single-process step exactly when every share of the batch has the same size, i.e.
    when ``world_size`` divides the batch; otherwise the samples of the smaller shares weigh
    slightly more (1/(world_size·share) instead of 1/batch). MNIST's 60 000 images in batches of
    128 (last batch 96) are split evenly by 1, 2, 4, 8, 16 or 32 processes.

    Args:
        order: the epoch's global order (e.g. :func:`~mondeq.training.data_order.epoch_order`), 1-D.
        batch_size: the GLOBAL batch size (summed over ranks), ≥ world_size.
        info: this process's place in the job.

    Returns:
        A list with one index tensor per step.
    """
    if batch_size < info.world_size:
        raise InvalidSettingError(f"the global batch size ({batch_size}) must be at least the number "
                                  f"of processes ({info.world_size}); raise --batch-size")
    steps = []
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        if len(batch) < info.world_size:
            break
        steps.append(torch.tensor_split(batch, info.world_size)[info.rank])
    return steps


def shard(n: int, info: DistInfo) -> Tensor:
    """This rank's contiguous share of ``range(n)`` for evaluation: nothing dropped or repeated.

    Shares differ in size by at most one, so reduce counts (:func:`all_reduce_sum`), not means.
    Evaluation has no backward, so unequal shares (and unequal numbers of batches) are safe.
    """
    return torch.tensor_split(torch.arange(n), info.world_size)[info.rank]


def all_reduce_sum(t: Tensor) -> Tensor:
    """The elementwise sum of ``t`` over ranks, on every rank (``t`` itself without a group).

    Reduce counts and sums, never means of unequal shares: accuracy is
    ``all_reduce_sum(correct) / all_reduce_sum(total)``. Works with gloo (CPU tensors) and nccl
    (CUDA tensors; a CPU tensor is reduced on this process's CUDA device and returned on the CPU).
    The input is not modified; with a group the result is a new, detached tensor.
    """
    if not is_distributed():
        return t
    if dist.get_backend() == "nccl" and t.device.type != "cuda":
        out = t.detach().to(torch.device("cuda", torch.cuda.current_device()))
    else:
        out = t.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.to(t.device)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` as held by rank ``src``, on every rank (any picklable object; ``obj`` without a group)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


class _StatsForward(nn.Module):
    """Routes ``forward_with_stats`` through ``forward``, so that DDP's forward sees it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, *, with_stats: bool = False, z0: State | None = None):
        if with_stats:
            return self.model.forward_with_stats(x, z0=z0)
        return self.model(x)


class DistributedMonDEQ(nn.parallel.DistributedDataParallel):
    """DistributedDataParallel over a classifier, with the classifier's ``forward_with_stats``.

    DDP only synchronises gradients of a backward that follows a call of the *wrapper*: its
    forward arms the gradient hooks. Calling ``unwrap(model).forward_with_stats(x)`` under DDP
    would train each rank on its own gradients without any error, so the wrapper offers the
    method itself, and :func:`mondeq.training.train_epoch` works on the wrapper unchanged.
    Everything else (``layer``, ``head``, ``state_dict`` of the bare model) is reached through
    :func:`unwrap`.
    """

    def forward_with_stats(self, x: Tensor, *,
                           z0: State | None = None) -> tuple[Tensor, EquilibriumStats]:
        """Logits and solver results, through DDP's forward (so the backward is synchronised)."""
        return self(x, with_stats=True, z0=z0)


def wrap_model(model: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    """``model`` wrapped for data-parallel training when ``info.world_size`` > 1, else ``model``.

    The wrapper is a :class:`DistributedMonDEQ` (DistributedDataParallel, ``device_ids`` set on
    CUDA). The model must already be on ``device``. DDP broadcasts rank 0's parameters and
    buffers at construction, so every rank starts from the same weights. Call the wrapper (or its
    ``forward_with_stats``) for training steps; reach the bare model (its ``layer.alpha``,
    ``state_dict`` for checkpoints, evaluation) through :func:`unwrap`.
    """
    if info.world_size <= 1:
        return model
    device = torch.device(device)
    if device.type == "cuda":
        return DistributedMonDEQ(_StatsForward(model), device_ids=[device], output_device=device)
    return DistributedMonDEQ(_StatsForward(model))


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside :func:`wrap_model`'s wrapper (``model`` itself otherwise)."""
    if isinstance(model, nn.parallel.DistributedDataParallel):
        model = model.module
    return model.model if isinstance(model, _StatsForward) else model
