"""The figures the commands write: training curves (train) and accuracy against radius (certify).

matplotlib is imported only when a figure is drawn, with the non-interactive Agg backend, so the
commands run on machines without a display and the package does not require it at import.
"""
from __future__ import annotations

from pathlib import Path

import torch


def _pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


#: The ε axis: radii are ℓ2 norms of a perturbation of the [0, 1] pixels, across all channels.
EPS_LABEL = "ℓ2 radius ε (pixel scale: images in [0, 1])"
#: Accuracy axes in %: a margin so a line at 0 % or 100 % is not hidden by the frame.
ACCURACY_LIMITS = (-3, 103)


def _integer_ticks(ax) -> None:
    """Ticks only at whole numbers (epochs: no 1.5)."""
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def plot_curves(history: list[dict], path: Path) -> None:
    """Training loss, test accuracy (clean and certified) and mean solver iterations per epoch.

    Args:
        history: one dict per epoch, as the training command records them in ``results.json``.
        path: the image to write (``curves.png``).
    """
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(epochs, [h["train_loss"] for h in history], marker="o")
    axes[0].set(title="training loss", xlabel="epoch", yscale="log")
    axes[1].plot(epochs, [100 * h["test_accuracy"] for h in history], marker="o", label="clean")
    for eps in history[-1]["certified"]:
        axes[1].plot(epochs, [100 * h["certified"][eps] for h in history], marker=".",
                     label=f"certified, ℓ2 ε={eps} (pixel)")
    axes[1].set(title="test accuracy (%)", xlabel="epoch", ylim=ACCURACY_LIMITS)
    axes[1].legend(fontsize=7)
    axes[2].plot(epochs, [h["forward_iterations"] for h in history], marker="o", label="forward")
    axes[2].plot(epochs, [h["backward_iterations"] for h in history], marker="o", label="backward")
    axes[2].set(title="mean solver iterations", xlabel="epoch")
    axes[2].legend()
    for ax in axes:
        ax.grid(alpha=0.3)
        _integer_ticks(ax)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_certified(path: Path, radii: dict[str, torch.Tensor], clean: float, pgd_acc: dict[float, float],
                   title: str, *, pgd_images: int | None = None) -> None:
    """Certified accuracy against ε for each set of radii, with PGD robust accuracy above it.

    Args:
        path: the image to write (``certify.png``).
        radii: curve label → certified radius of every test image (pixel scale, 0 if misclassified).
        clean: clean test accuracy (a horizontal line).
        pgd_acc: ε → PGD robust accuracy (an upper bound on the certified accuracy).
        title: the figure's title.
        pgd_images: how many images PGD attacked (the first ones), when fewer than were certified:
            the legend then says so, since the two curves are then measured on different sets.
    """
    plt = _pyplot()
    radii = {label: r.detach().cpu() for label, r in radii.items()}
    top = max(max(pgd_acc), float(max(r.max() for r in radii.values())) if radii else 1.0) * 1.05
    grid = torch.linspace(0, top, 300)
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for (label, r), style in zip(radii.items(), ("-", "--")):
        acc = [(100 * (r > e).double().mean()).item() for e in grid]
        ax.plot(grid, acc, style, label=label)
    eps = sorted(pgd_acc)
    certified_images = len(next(iter(radii.values()))) if radii else None
    pgd_label = "PGD robust (upper bound)"
    if pgd_images is not None and certified_images is not None and pgd_images != certified_images:
        pgd_label = (f"PGD robust (upper bound), first {pgd_images} images;\n"
                     f"certified and clean: all {certified_images}")
    ax.plot(eps, [100 * pgd_acc[e] for e in eps], "o-", label=pgd_label)
    ax.axhline(100 * clean, color="gray", lw=1.2, ls=":", label="clean", zorder=3)
    ax.set(xlabel=EPS_LABEL, ylabel="test accuracy (%)", title=title, ylim=ACCURACY_LIMITS)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
