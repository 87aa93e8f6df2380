"""Data-based bias start of the completion DBM (``set_bias_from_data``, ``mondeq dbm --bias-init data``)."""
import pytest
import torch

from mondeq.categorical.build import build_dbm, model_config
from mondeq.categorical.model import to_bins


@pytest.mark.parametrize("architecture", ["dense", "conv"])
def test_without_couplings_the_mean_field_is_the_datas_per_position_marginals(architecture):
    """With W = 0 and biases from data, every hidden pixel's marginal is the frequency of each bin
    at its position in the data (smoothed), and the label's is the class frequency: the layout of
    the biases is the one the model reads (a transposed layout would mix positions and bins)."""
    side = 12 if architecture == "conv" else 8  # the conv tiers: 12 × 12, 6 × 6, 3 × 3
    settings = dict(image=(side, side), bins=3, hidden=3, rank=5, m=0.5, tol=1e-10, max_iter=500)
    if architecture == "conv":
        settings.update(channels=(4, 8))
    model = build_dbm(model_config(architecture=architecture, **settings), dtype=torch.float64)
    with torch.no_grad():
        for p in model.coupling.parameters():
            p.zero_()
    generator = torch.Generator().manual_seed(0)
    ramp = torch.linspace(0, 1, side * side).view(side, side)  # marginals that differ by pixel
    images = (ramp + 0.3 * torch.rand(200, side, side, generator=generator)).clamp(0, 1)
    labels = torch.randint(0, 10, (200,), generator=generator) % 4  # classes 0..3 only
    model.set_bias_from_data(images, labels, smoothing=1.0)

    counts = torch.nn.functional.one_hot(to_bins(images, 3), 3).sum(0).double() + 1.0
    expected = counts / counts.sum(-1, keepdim=True)
    observed = torch.zeros(2, side, side, dtype=torch.bool)
    out = model(to_bins(images[:2], 3), observed)
    torch.testing.assert_close(out.pixels, expected.expand(2, side, side, 3), rtol=1e-8, atol=1e-8)
    classes = torch.bincount(labels, minlength=10).double() + 1.0
    torch.testing.assert_close(out.label, (classes / classes.sum()).expand(2, 10), rtol=1e-8, atol=1e-8)


def test_the_commands_bias_start_is_zero_unless_asked_and_refuses_other_values():
    """``mondeq dbm`` keeps its zero start unless ``--bias-init data`` is given, and refuses a
    start it does not know."""
    from mondeq.cli import dbm

    assert dbm.parser().parse_args([]).bias_init == "zero"
    with pytest.raises(SystemExit):
        dbm.parser().parse_args(["--bias-init", "ones"])
