"""Batch augmentation: random crop with zero padding and horizontal flip, reproducible from the seed."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mondeq.data import DATASETS, Augmentation, random_crop_flip
from tests.conftest import DEVICES, cuda_only


def _batch(n: int = 64, device: str = "cpu", dtype: torch.dtype = torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(123)
    return torch.rand(n, 3, 8, 10, generator=g, dtype=dtype).to(device)


def _reference(x: torch.Tensor, padding: int, flip: bool, seed: int) -> torch.Tensor:
    """Per-sample slicing with the same random draws (offsets (N, 2), then N flip bits)."""
    g = torch.Generator(device=x.device).manual_seed(seed)
    n, _, h, w = x.shape
    offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=g, device=x.device)
    flips = torch.randint(0, 2, (n, 1), generator=g, device=x.device) if flip else torch.zeros(n, 1)
    padded = F.pad(x, (padding,) * 4)
    out = []
    for i in range(n):
        r, c = int(offsets[i, 0]), int(offsets[i, 1])
        crop = padded[i, :, r:r + h, c:c + w]
        out.append(crop.flip(-1) if int(flips[i]) else crop)
    return torch.stack(out)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("padding, flip", [(4, True), (4, False), (0, True), (2, True)])
def test_matches_per_sample_slicing(device: str, padding: int, flip: bool) -> None:
    x = _batch(device=device, dtype=torch.float64)
    g = torch.Generator(device=device).manual_seed(7)
    y = random_crop_flip(x, padding=padding, flip=flip, generator=g)
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
    assert torch.equal(y, _reference(x, padding, flip, seed=7))


def test_identity_when_off() -> None:
    x = _batch()
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    assert torch.equal(random_crop_flip(x, padding=0, flip=False, generator=g), x)
    assert torch.equal(g.get_state(), state)           # nothing was drawn
    assert torch.equal(Augmentation(False, padding=0)(x), x)


def test_each_output_comes_from_its_own_input() -> None:
    """Sample order is kept: output i is a crop (or flipped crop) of input i, of no other."""
    x = _batch(n=16, dtype=torch.float64)
    y = random_crop_flip(x, padding=2, flip=True, generator=torch.Generator().manual_seed(1))
    padded = F.pad(x, (2,) * 4)
    for i in range(16):
        sources = set()
        for j in range(16):
            for r in range(5):
                for c in range(5):
                    crop = padded[j, :, r:r + 8, c:c + 10]
                    if torch.equal(y[i], crop) or torch.equal(y[i], crop.flip(-1)):
                        sources.add(j)
        assert sources == {i}


def test_reproducible_from_seed_and_random_across_seeds() -> None:
    x = _batch()
    run = lambda seed: random_crop_flip(x, padding=4, flip=True,
                                        generator=torch.Generator().manual_seed(seed))
    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))


def test_offsets_and_flips_cover_all_cases() -> None:
    """Two marker pixels reveal each sample's offsets and flip: all (2p+1)² offsets occur, about
    half of the samples flip (each with every offset), and none flips with flip=False."""
    n, p = 6000, 4
    x = torch.zeros(n, 1, 16, 16)
    x[:, 0, 7, 7], x[:, 0, 7, 8] = 1.0, 0.5       # padded to (11, 11) and (11, 12)
    everything = {(r, c) for r in range(2 * p + 1) for c in range(2 * p + 1)}
    for flip in (True, False):
        y = random_crop_flip(x, padding=p, flip=flip, generator=torch.Generator().manual_seed(0))
        one = (y == 1.0).flatten(1).float().argmax(1)
        half = (y == 0.5).flatten(1).float().argmax(1)
        assert torch.equal(one // 16, half // 16)     # both markers on one row, never cropped
        flipped = half % 16 < one % 16
        r = 11 - one // 16
        c = torch.where(flipped, one % 16 - 4, 11 - one % 16)
        if flip:
            assert 0.47 < flipped.float().mean() < 0.53
            assert set(zip(r[flipped].tolist(), c[flipped].tolist())) == everything
        else:
            assert not flipped.any()
        assert set(zip(r[~flipped].tolist(), c[~flipped].tolist())) == everything


def test_augmentation_follows_the_dataset_and_resumes_exactly() -> None:
    assert Augmentation(DATASETS["cifar10"]).flip is True
    assert Augmentation(DATASETS["svhn"]).flip is False
    assert Augmentation(DATASETS["mnist"]).flip is False
    x = _batch()
    a = Augmentation(DATASETS["cifar10"], seed=5)
    a(x)
    saved = a.state_dict()
    expected = [a(x), a(x)]
    b = Augmentation(DATASETS["svhn"], padding=1, seed=99)
    b.load_state_dict(saved)
    assert b.flip is True and b.padding == 4
    assert all(torch.equal(b(x), e) for e in expected)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="padding"):
        random_crop_flip(_batch(), padding=-1, flip=False, generator=torch.Generator())
    with pytest.raises(ValueError, match="N, C, H, W"):
        random_crop_flip(torch.zeros(3, 8, 8), padding=4, flip=True, generator=torch.Generator())


@cuda_only
def test_generator_on_another_device_is_refused() -> None:
    with pytest.raises(ValueError, match="generator"):
        random_crop_flip(_batch(device="cuda"), padding=4, flip=True, generator=torch.Generator())
