r"""The fixed input normalisation a classifier applies first: per channel,

.. math:: \hat x_c = (x_c - \mu_c) / \sigma_c .

It is a fixed affine map :math:`x \mapsto D(x - \mu)` with :math:`D = \mathrm{diag}(1/\sigma_c)`,
so :math:`\|\hat x - \hat x'\|_2 \le \|x - x'\|_2 / \min_c \sigma_c`: a Lipschitz constant
:math:`L` of the network on normalised inputs is :math:`L / \min_c \sigma_c` on pixels
(:attr:`InputNormalization.pixel_scale` is :math:`\min_c \sigma_c`). Inputs, ε and radii are in
pixel scale everywhere in the public API; only this module and the layer see normalised values.

**Pixel dtypes** (:func:`as_pixels`, applied by every classifier before its normalisation):
``uint8`` images are raw 0..255 pixels and are divided by 255 (the convention of image files and
``torchvision``'s ``ToTensor``); floating images of any dtype are pixels in [0, 1] and are computed
in the model's dtype. Other integer dtypes and ``bool`` have no agreed scale (16-bit images are
0..65535, label-like int64 tensors are not images) and are refused with :class:`InputDTypeError`.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from ..errors import InputDTypeError, InputShapeError, InvalidSettingError

#: What a ``uint8`` pixel is divided by: raw images hold 0..255.
UINT8_PIXEL_MAX = 255.0


def as_pixels(x: Tensor, dtype: torch.dtype) -> Tensor:
    """Pixel-scale images in ``dtype`` (the model's): ``uint8`` 0..255 divided by 255, floating
    values cast (the gradient flows back in the caller's dtype); see the module docstring.

    Raises:
        InputDTypeError: ``x`` is not a tensor, or has another integer dtype, ``bool`` or a
            complex dtype.
    """
    if not isinstance(x, Tensor):
        raise InputDTypeError(f"the model takes a tensor of pixel-scale images, got {type(x).__name__}; "
                              f"convert with torch.as_tensor(x, dtype=torch.float32)")
    if x.dtype == torch.uint8:
        return x.to(dtype) / UINT8_PIXEL_MAX
    if x.is_floating_point():
        return x if x.dtype == dtype or torch.is_autocast_enabled(x.device.type) else x.to(dtype)
    hint = ("x.float() / 255 if they are 0..255 pixels, x.float() / 65535 for 16-bit images"
            if not (x.dtype == torch.bool or x.is_complex()) else "x.float()")
    raise InputDTypeError(f"images of dtype {x.dtype} have no agreed pixel scale: the model takes uint8 "
                          f"(0..255) or floating pixels in [0, 1]; convert them ({hint})")


class InputNormalization(nn.Module):
    r"""Per-channel :math:`(x - \mu)/\sigma` on channel-major inputs.

    The statistics are constants of the data, not parameters: buffers (saved in the state dict)
    kept in float64 whatever the model's dtype (``.to(dtype)`` moves them across devices only),
    so the pixel scale :math:`\min_c\sigma_c` is the exact number given; they are cast to the
    input's dtype when applied (float32 for half-precision inputs, whose result is cast back),
    which gives bit for bit ``mondeq.data.normalize``'s values. Integer inputs are first made
    pixels by :func:`as_pixels` (never cast the statistics to an integer dtype).

    Args:
        mean: :math:`\mu`, one value per channel.
        std: :math:`\sigma`, one positive value per channel.

    Raises:
        InvalidSettingError: a non-positive or non-finite σ, or ``mean`` and ``std`` of different
            lengths.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        mean_t = torch.as_tensor(mean, dtype=torch.float64).reshape(-1)
        std_t = torch.as_tensor(std, dtype=torch.float64).reshape(-1)
        if mean_t.numel() != std_t.numel() or mean_t.numel() == 0:
            raise InvalidSettingError(f"input normalisation: mean has {mean_t.numel()} values and std "
                                      f"{std_t.numel()}; give one of each per input channel")
        if not bool(torch.isfinite(mean_t).all() & (std_t > 0).all() & torch.isfinite(std_t).all()):
            raise InvalidSettingError(f"input normalisation needs finite means and positive finite stds, "
                                      f"got mean {mean_t.tolist()}, std {std_t.tolist()}")
        self.register_buffer("mean", mean_t)
        self.register_buffer("std", std_t)

    @property
    def channels(self) -> int:
        """Number of input channels."""
        return self.mean.numel()

    @property
    def pixel_scale(self) -> float:
        r""":math:`\min_c \sigma_c`: pixel-scale distances are at least this times normalised ones."""
        return float(self.std.min())

    def forward(self, x: Tensor) -> Tensor:
        """``(x − mean)/std`` per channel, same shape as ``x`` (batch first, channels next, or
        flattened channel-major as a fully connected layer takes them)."""
        per_example = x[0].numel() if len(x) else 0
        if x.ndim < 2 or (len(x) and per_example % self.channels):
            raise InputShapeError(f"input of shape {tuple(x.shape)} does not split into "
                                  f"{self.channels} channels per example")
        if not x.is_floating_point():  # an integer mean/std would round to 0 and divide by 0
            x = as_pixels(x, torch.get_default_dtype())
        flat = x.reshape(len(x), self.channels, -1)
        work = torch.promote_types(x.dtype, torch.float32)  # never the statistics in half precision
        mean = self.mean.to(device=x.device, dtype=work)[:, None]
        std = self.std.to(device=x.device, dtype=work)[:, None]
        return ((flat.to(work) - mean) / std).to(x.dtype).reshape(x.shape)

    def _apply(self, fn, recurse=True):  # noqa: ANN001 (nn.Module's signature)
        # Follow the model across devices but keep float64: the probe tells where fn sends tensors.
        device = fn(torch.zeros((), dtype=torch.float64, device=self.mean.device)).device
        self.mean = self.mean.to(device)
        self.std = self.std.to(device)
        return self

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001
        # A state dict saved before models owned their normalisation has neither entry: the model
        # was then fed (x − μ)/σ by the program with exactly the statistics it was built with
        # (its dataset's), so keeping them is the conversion.
        if prefix + "mean" not in state_dict and prefix + "std" not in state_dict:
            state_dict[prefix + "mean"] = self.mean
            state_dict[prefix + "std"] = self.std
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"mean={self.mean.tolist()}, std={self.std.tolist()}"
