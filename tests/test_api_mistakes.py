"""What a user of the Python API gets for the common mistakes: the right answer for raw uint8
images, typed errors naming the fix for the rest, warnings that name the user's own line, advice
that fits a solve stalled at its round-off floor, and an ``import mondeq`` that does not load
torch's compiler."""
from __future__ import annotations

import os
import subprocess
import sys
import warnings

import pytest
import torch

import mondeq
from mondeq import MonDEQ, MonotoneConv, MonotoneLinear, build_model, certify, fc_mondeq, pgd
from mondeq.errors import (ClassifierTypeError, ConvergenceWarning, InputDTypeError, InvalidSettingError,
                           MonDEQError, StateShapeError, StepSizeWarning, UnsupportedDerivativeError)
from mondeq.models import multitier_mondeq, single_conv_mondeq
from mondeq.robustness import robust_accuracy

MEAN, STD = 0.1307, 0.3081


# --- pixel dtypes ---------------------------------------------------------------------------------

@pytest.mark.parametrize("normalised", [True, False])
def test_uint8_images_give_the_logits_of_their_pixels_over_255(normalised):
    torch.manual_seed(0)
    model = fc_mondeq(16, 8, 3, tol=1e-10, max_iter=500, **(dict(mean=MEAN, std=STD) if normalised else {}))
    raw = torch.randint(0, 256, (5, 16), dtype=torch.uint8)
    expected = model(raw.double() / 255)
    torch.testing.assert_close(model(raw), expected, rtol=1e-12, atol=1e-12)
    assert bool(torch.isfinite(model(raw)).all())
    y = expected.argmax(1)
    torch.testing.assert_close(certify(model, raw, y).radius, certify(model, raw.double() / 255, y).radius)
    assert pgd(model, raw, y, 0.1, steps=2).x_adv.is_floating_point()


@pytest.mark.parametrize("mistake, cause", [(lambda x: 255 * x, "divide them by 255"),
                                            (lambda x: (x - MEAN) / STD, "normalised already")])
def test_floats_outside_the_pixel_range_are_named_with_their_likely_cause(mistake, cause):
    """0..255 floats, or images normalised by the user as well as by the model: ``pgd`` (whose
    clamping to its bounds would move the clean images) refuses them, ``certify`` of an image
    classifier warns from the user's line; pixels in [0, 1] pass silently, and ``bounds=None``
    (inputs that are not pixels) and models without a normalisation are not checked."""
    from mondeq.errors import InputRangeError, InputRangeWarning

    torch.manual_seed(0)
    model = fc_mondeq(16, 8, 3, mean=MEAN, std=STD)
    x = torch.rand(6, 16)
    y = model(x).argmax(1)
    bad = mistake(x)
    with pytest.raises(InputRangeError, match=f"outside the pixel range.*{cause}"):
        pgd(model, bad, y, 0.1, steps=1)
    with pytest.raises(InputRangeError):
        robust_accuracy(model, bad, y, [0.1], steps=1)
    with pytest.warns(InputRangeWarning, match=cause) as caught:
        certify(model, bad, y)
    assert caught[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        certify(model, x, y)
        pgd(model, x, y, 0.1, steps=1)
        pgd(model, bad, y, 0.1, steps=1, bounds=None)
        certify(fc_mondeq(16, 8, 3), bad, y)


@pytest.mark.parametrize("dtype", [torch.int8, torch.int16, torch.int32, torch.int64, torch.bool])
def test_other_integer_images_are_refused_with_the_conversion(dtype):
    model = fc_mondeq(16, 8, 3, mean=MEAN, std=STD)
    x = torch.ones(2, 16, dtype=dtype)
    with pytest.raises(InputDTypeError, match="no agreed pixel scale.*x.float()"):
        model(x)
    with pytest.raises(InputDTypeError):
        certify(model, x, torch.tensor([0, 1]))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_floating_images_of_any_precision_are_computed_in_the_models(dtype):
    torch.manual_seed(0)
    model = fc_mondeq(16, 8, 3, tol=1e-10, max_iter=500, mean=MEAN, std=STD)  # float64 (conftest)
    x = torch.rand(4, 16).to(dtype)
    logits = model(x)
    assert logits.dtype == torch.float64
    torch.testing.assert_close(logits, model(x.double()), rtol=0, atol=0)


# --- typed errors for wrong calls -----------------------------------------------------------------

def test_certify_refuses_negative_eps_takes_a_scalar_and_wants_the_classifier():
    torch.manual_seed(0)
    model = fc_mondeq(4, 6, 3)
    x, y = torch.rand(5, 4), torch.tensor([0, 1, 2, 0, 1])
    for bad in ([-0.1], [0.1, float("nan")], -1.0, ["a"]):
        with pytest.raises(InvalidSettingError, match="ε|epsilons"):
            certify(model, x, y, epsilons=bad)
    assert certify(model, x, y, epsilons=0.1).certified.keys() == {0.1}
    assert certify(model, x, y, epsilons=torch.tensor(0.1)).certified.keys() == {0.1}
    with pytest.raises(ClassifierTypeError, match="not its MonDEQ layer.*pass the model"):
        certify(model.layer, x, y)
    with pytest.raises(ClassifierTypeError, match="monDEQ classifier"):
        certify(torch.nn.Linear(4, 3), x, y)
    with pytest.raises(InvalidSettingError, match="eps must be >= 0"):
        pgd(model, x, y, -0.1)


def test_empty_batches_get_the_same_typed_error_everywhere():
    model = fc_mondeq(4, 6, 3)
    x, y = torch.rand(0, 4), torch.zeros(0, dtype=torch.long)
    for call in (lambda: model(x), lambda: certify(model, x, y), lambda: pgd(model, x, y, 0.1),
                 lambda: robust_accuracy(model, x, y, [0.1])):
        with pytest.raises(StateShapeError, match="empty batch"):
            call()


@pytest.mark.parametrize("build", [
    lambda: fc_mondeq(4, 0, 3), lambda: fc_mondeq(4, -3, 3), lambda: fc_mondeq(-1, 5, 3),
    lambda: fc_mondeq(4, 5, 0), lambda: fc_mondeq(4, 2.5, 3),
    lambda: build_model({"model": "fc", "hidden": 0}), lambda: build_model({"model": "conv", "channels": [-2]}),
    lambda: single_conv_mondeq(1, 8, 0, 3), lambda: single_conv_mondeq(1, 8, 4, 3, pool=0),
    lambda: single_conv_mondeq(1, 8, 4, 3, pool=20), lambda: multitier_mondeq(1, 8, (0, 2), 3),
    lambda: multitier_mondeq(1, -8, (2, 2), 3), lambda: MonotoneLinear(4, 0), lambda: MonotoneLinear(-4, 3),
    lambda: MonotoneConv(1, -1, 8), lambda: MonotoneConv(0, 2, 8),
])
def test_zero_and_negative_sizes_are_refused_by_name(build):
    with pytest.raises(InvalidSettingError, match="must be|exceeds|positive"):
        build()


def test_vmap_over_the_model_raises_unsupported_derivative_error():
    model = fc_mondeq(4, 6, 3)
    x = torch.rand(5, 4)
    with pytest.raises(UnsupportedDerivativeError, match="vmap"):
        torch.func.vmap(model)(x[:, None])
    with pytest.raises(UnsupportedDerivativeError, match="vmap"):
        torch.func.jacrev(model)(x)


# --- warnings and advice --------------------------------------------------------------------------

def _where(caught) -> set[str]:
    return {os.path.basename(w.filename) for w in caught}


def test_warnings_name_the_callers_line():
    model = fc_mondeq(4, 6, 3, tol=1e-12, max_iter=1)
    x = torch.rand(5, 4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = model(x)
    assert caught and _where(caught) == {os.path.basename(__file__)}, [(w.filename, w.lineno) for w in caught]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out.sum().backward()
    assert caught and _where(caught) == {os.path.basename(__file__)}, [(w.filename, w.lineno) for w in caught]
    layer = MonDEQ(MonotoneLinear(4, 6), solver="fb", alpha=50.0, tol=1e-6, max_iter=5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        layer(x)
    steps = [w for w in caught if issubclass(w.category, StepSizeWarning)]
    assert steps and _where(steps) == {os.path.basename(__file__)}


def _solve_warning(model: torch.nn.Module, x: torch.Tensor) -> str:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model(x)
    messages = [str(w.message) for w in caught if issubclass(w.category, ConvergenceWarning)]
    assert len(messages) == 1, messages
    return messages[0]


def test_a_float32_solve_stalled_at_its_floor_is_told_float64_not_more_iterations():
    torch.manual_seed(1)
    model = fc_mondeq(20, 30, 3, tol=1e-9, max_iter=300).float()
    message = _solve_warning(model, torch.rand(8, 20))
    assert "round-off floor of float32" in message and "float64" in message and "loosen tol" in message
    assert "raise max_iter" not in message
    # a solve that is merely short of iterations is told to raise max_iter, in either precision
    for dtype in (torch.float32, torch.float64):
        short = fc_mondeq(20, 30, 3, tol=1e-6, max_iter=3).to(dtype)
        assert "raise max_iter" in _solve_warning(short, torch.rand(8, 20, dtype=dtype))


# --- import cost ----------------------------------------------------------------------------------

def test_import_mondeq_does_not_load_torch_compiler():
    heavy = ("torch._dynamo", "sympy", "scipy.fft")  # each adds 0.2 s to 2 s; loaded on first use
    code = f"import sys, mondeq; print(*[m in sys.modules for m in {heavy!r}])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.stdout.split() == ["False"] * len(heavy), out.stdout + out.stderr
    assert issubclass(ClassifierTypeError, MonDEQError) and issubclass(InputDTypeError, TypeError)
    assert mondeq.certify is certify
