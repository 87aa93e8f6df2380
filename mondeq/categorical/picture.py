"""The completions picture: for each test image, the observed pixels, the completion, the truth."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor


def completion_grid(images: Tensor, observed: Tensor, completed: Tensor, *, columns: int = 4) -> Tensor:
    """One ``(rows·(H+2), columns·3·(W+2))`` array of triples (observed pixels on grey, completion,
    truth), each framed by a 1-pixel white border; tensors ``(N, H, W)`` in [0, 1]."""
    n, h, w = images.shape
    seen = torch.where(observed, images, torch.full_like(images, 0.5))
    triples = torch.stack([seen, completed, images], dim=1)  # (N, 3, H, W)
    framed = torch.nn.functional.pad(triples, (1, 1, 1, 1), value=1.0)
    rows = (n + columns - 1) // columns
    framed = torch.cat([framed, framed.new_ones(rows * columns - n, 3, h + 2, w + 2)])
    grid = framed.view(rows, columns, 3, h + 2, w + 2).permute(0, 3, 1, 2, 4)
    return grid.reshape(rows * (h + 2), columns * 3 * (w + 2))


def save_completions(path: Path, images: Tensor, observed: Tensor, completed: Tensor,
                     predicted: Tensor, labels: Tensor, *, columns: int = 4) -> None:
    """Draw :func:`completion_grid` with each triple's predicted and true label above it."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid = completion_grid(images.cpu(), observed.cpu(), completed.detach().cpu(), columns=columns)
    h, w = images.shape[1] + 2, images.shape[2] + 2
    fig, ax = plt.subplots(figsize=(grid.shape[1] / 28, grid.shape[0] / 28 + 0.3))
    ax.imshow(grid.numpy(), cmap="gray", vmin=0, vmax=1)
    ax.axis("off")
    ax.set_title("observed (grey: hidden) | completion (expected intensity) | truth", fontsize=8)
    for i in range(len(images)):
        r, c = divmod(i, columns)
        ax.text(c * 3 * w + 1.5 * w, r * h + 1, f"pred {int(predicted[i])} / true {int(labels[i])}",
                fontsize=6, color="red", ha="center", va="top")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
