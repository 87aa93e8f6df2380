r"""The problems the comparison solves, for one MNIST test batch of a trained classifier.

* forward: :math:`0 \in (I - W)z - (Ux + b) + \partial f(z)`, i.e.
  :math:`z^\star = \sigma(Wz^\star + Ux + b)`;
* backward: the implicit-gradient problem :math:`(I - W^\top)u + Du \ni \bar g` of
  :class:`splitting.BackwardProblem`, for the cross-entropy gradient
  :math:`\bar g = \partial\ell/\partial z^\star`, reusing the forward factorisation as training does.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from splitting import BackwardProblem, LinearOperator, Prox, Resolvent, State, peaceman_rachford
from splitting.state import batch_norm

from ...data import batches, load_mnist, mnist_root, num_batches
from ...errors import InvalidSettingError
from ...models import MonDEQClassifier, build_model, load_run
from ...training import adam, train_epoch

#: Settings of the reference solves (the "exact" solutions, used to recognise blow-up).
EXACT = dict(alpha=0.5, tol=1e-13, max_iter=20_000)


def load_model(checkpoint: Path, *, device: torch.device) -> tuple[MonDEQClassifier, dict]:
    """The classifier of a run of ``mondeq train`` (:func:`mondeq.load_run`: any checkpoint with
    ``config`` and ``model``, its input normalisation included), and its config with a
    ``trained`` description.

    Raises:
        FileNotFoundError, CheckpointError, DeviceUnavailableError: as :func:`mondeq.load_run`.
        InvalidSettingError: the checkpoint was not trained on MNIST (the comparison's data).
    """
    model = load_run(checkpoint, map_location=device)
    config = model.run_config
    if config.get("dataset", "mnist") != "mnist":
        raise InvalidSettingError(f"the comparison runs on MNIST; the checkpoint was trained on "
                                  f"{config['dataset']!r}")
    return model, {**config, "trained": f"checkpoint {checkpoint}"}


def quick_model(kind: str, *, train_limit: int, seed: int, device: torch.device,
                out: Path, data_root: Path | None = None) -> tuple[MonDEQClassifier, dict]:
    """Train ``kind`` for one epoch on ``train_limit`` MNIST images (PR, α = 1, tol 1e-2: the
    defaults) and save it to ``out/quick_checkpoint.pt`` (MNIST from the data root ``data_root``,
    the data-root rule when None)."""
    config = {"model": kind, "m": 1.0, "hidden": 87,
              "channels": (16, 32, 32) if kind == "multitier" else 54}
    model = build_model(config).to(device)
    x, y = load_mnist(mnist_root(data_root), train=True, download=False)
    x, y = x[:train_limit].to(device), y[:train_limit].to(device)  # pixels: the model normalises
    optimizer = adam(model.parameters(), lr=3e-3 if kind == "fc" else 1e-3)
    generator = torch.Generator(device=device).manual_seed(seed)
    data = batches(x, y, 128, shuffle=True, generator=generator)
    stats = train_epoch(model, optimizer, data, steps=num_batches(len(x), 128), desc=f"quick {kind}")
    print(f"trained a quick {kind} model: loss {stats.loss:.3f}, train accuracy {100 * stats.accuracy:.1f}%")
    path = out / "quick_checkpoint.pt"
    torch.save({"config": config, "model": model.state_dict()}, path)
    return model, {**config, "trained": f"1 epoch on {len(x)} images, saved to {path}"}


def mnist_test_batch(model: MonDEQClassifier, size: int, *, device: torch.device,
                     dtype: torch.dtype, data_root: Path | None = None) -> tuple[Tensor, Tensor]:
    """The first ``size`` MNIST test images as ``model``'s layer sees them (normalised by the
    model, shaped for the layer: :meth:`~mondeq.models.MonDEQClassifier.layer_input`), and labels."""
    x, y = load_mnist(mnist_root(data_root), train=False, download=False)
    x = x[:size].to(device=device, dtype=dtype)
    with torch.no_grad():
        return model.layer_input(x), y[:size].to(device)


@dataclass
class SplittingProblem:
    """One direction's problem: what a solver call needs, and the size of its solution.

    Attributes:
        op, prox, bias: the solver's operator, nonlinearity and bias.
        reference_norm: ‖solution‖ per sample (from a 1e-13 solve), to recognise blow-up.
        backward: the implicit-gradient problem, for the backward direction (its forward
            factorisation is reused, transposed); ``None`` for the forward direction.
    """

    op: LinearOperator
    prox: Prox
    bias: State
    reference_norm: Tensor
    backward: BackwardProblem | None = None

    def resolvent(self, alpha: float) -> Resolvent | None:
        """The factorisation a Rachford-type solver should reuse at α (``None``: it makes its own,
        and the time of doing so is part of the forward solve)."""
        return None if self.backward is None else self.backward.resolvent(alpha)


def problems(model: MonDEQClassifier, x: Tensor, y: Tensor) -> dict[str, SplittingProblem]:
    """The forward problem and the backward (implicit-gradient) problem of the batch ``(x, y)``."""
    layer = model.layer
    with torch.no_grad():
        op = layer.linear.operator()
        bias = tuple(b.detach() for b in layer.linear.bias(x))
        exact = peaceman_rachford(op, layer.nonlinearity, bias, **EXACT)
    backward = BackwardProblem.at_solution(op, layer.nonlinearity, bias, exact)
    z = tuple(t.clone().requires_grad_() for t in exact.z)
    loss = torch.nn.functional.cross_entropy(model.logits_from_state(z), y)
    # the readout may read only some tiers (multi-tier: the last); the others get a zero gradient
    grads = torch.autograd.grad(loss, z, allow_unused=True)
    grad = tuple(torch.zeros_like(t) if g is None else g.detach() for g, t in zip(grads, z))
    with torch.no_grad():
        back_exact = backward.solve(grad, solver=peaceman_rachford, **EXACT)
    return {"forward": SplittingProblem(op, layer.nonlinearity, bias, batch_norm(exact.z)),
            "backward": SplittingProblem(backward.operator, backward.nonlinearity, grad,
                                         batch_norm(back_exact.z), backward)}
