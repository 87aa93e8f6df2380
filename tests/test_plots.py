"""The figures are readable: whole-number epoch ticks, accuracy lines off the frame, the ε axis
names its scale, and the legend says when PGD saw fewer images than certification."""
import matplotlib.figure
import pytest
import torch

from mondeq.cli.plots import plot_certified, plot_curves


@pytest.fixture
def saved_figures(monkeypatch):
    """The figures the plotting functions save (they close them afterwards)."""
    figures, save = [], matplotlib.figure.Figure.savefig

    def recording_save(self, *a, **k):
        figures.append(self)
        return save(self, *a, **k)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", recording_save)
    return figures


def record(epoch):
    return {"epoch": epoch, "train_loss": 1.0 / epoch, "test_accuracy": 1.0, "forward_iterations": 6.0,
            "backward_iterations": 6.25, "certified": {"0.1": 0.5}}


@pytest.mark.parametrize("epochs", [2, 3, 7])
def test_curves_have_whole_epoch_ticks_and_a_visible_100_percent(tmp_path, saved_figures, epochs):
    plot_curves([record(e) for e in range(1, epochs + 1)], tmp_path / "curves.png")
    (fig,) = saved_figures
    for ax in fig.axes:
        lo, hi = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if lo <= t <= hi]
        assert ticks and all(float(t).is_integer() for t in ticks), ticks
    assert fig.axes[1].get_ylim()[1] > 100  # the clean line at 100 % is not on the frame


@pytest.mark.parametrize("pgd_images, says_counts", [(16, True), (64, False), (None, False)])
def test_certify_figure_labels(tmp_path, saved_figures, pgd_images, says_counts):
    radii = {"certified": torch.rand(64)}
    plot_certified(tmp_path / "certify.png", radii, 1.0, {0.1: 0.9, 0.5: 0.5}, "t", pgd_images=pgd_images)
    (fig,) = saved_figures
    (ax,) = fig.axes
    assert ax.get_ylim()[0] < 0 and ax.get_ylim()[1] > 100
    assert "pixel scale" in ax.get_xlabel() and "ℓ2" in ax.get_xlabel()
    legend = " ".join(t.get_text() for t in ax.get_legend().get_texts())
    assert ("first 16 images" in legend and "all 64" in legend) == says_counts
