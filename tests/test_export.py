"""Graph capture of a classifier (``torch.jit.trace``, ``torch.jit.script``, ``torch.export``)
is refused at once with :class:`mondeq.errors.UnsupportedExportError`, which says what to do,
instead of an internal error from deep inside the solver."""
from __future__ import annotations

import pytest
import torch

from mondeq import MonDEQError, fc_mondeq
from mondeq.errors import UnsupportedExportError

ADVICE = "Run the model eagerly"


@pytest.fixture
def model_and_input():
    torch.manual_seed(0)
    return fc_mondeq(20, 8, 3).eval(), torch.rand(4, 20)


def test_jit_trace_is_refused_with_advice(model_and_input):
    model, x = model_and_input
    with pytest.raises(UnsupportedExportError, match=f"torch.jit.trace.*{ADVICE}"):
        torch.jit.trace(model, x)


def test_jit_script_is_refused_before_compiling(model_and_input):
    model, _ = model_and_input
    with pytest.raises(UnsupportedExportError, match=f"torch.jit.script.*{ADVICE}"):
        torch.jit.script(model)


def test_torch_export_is_refused_with_advice(model_and_input):
    model, x = model_and_input
    with pytest.raises(MonDEQError, match=f"torch.export.*{ADVICE}"):
        torch.export.export(model, (x,))


def test_strict_torch_export_reports_the_refusal(model_and_input):
    model, x = model_and_input
    with pytest.raises(RuntimeError, match=f"cannot capture a monDEQ layer.*{ADVICE}"):
        torch.export.export(model, (x,), strict=True)


def test_the_model_still_runs_eagerly_after_a_refused_capture(model_and_input):
    model, x = model_and_input
    with pytest.raises(UnsupportedExportError):
        torch.jit.trace(model, x)
    assert model(x).shape == (4, 3)
