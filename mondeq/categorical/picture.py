"""The completions picture: for each test image, the observed pixels, the completion, the truth."""
from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor


def save_completions(path: Path, images: Tensor, observed: Tensor, completed: Tensor,
                     predicted: Tensor, labels: Tensor, *, columns: int = 8) -> None:
    """A grid of ``len(images)`` triples (observed on grey, completion, truth), titled with the
    predicted and true label. Tensors are ``(N, H, W)`` in [0, 1] (``observed`` bool)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    rows = (n + columns - 1) // columns
    fig, axes = plt.subplots(rows, 3 * columns, figsize=(1.1 * 3 * columns, 1.3 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        r, c = divmod(i, columns)
        seen = torch.where(observed[i], images[i], torch.full_like(images[i], 0.5))
        for j, (picture, title) in enumerate(((seen, "seen"), (completed[i], f"pred {int(predicted[i])}"),
                                               (images[i], f"true {int(labels[i])}"))):
            ax = axes[r, 3 * c + j]
            ax.imshow(picture.detach().cpu().numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_title(title, fontsize=7)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
