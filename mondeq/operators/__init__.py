"""Monotone parametrisations of W = (1 − m)I − FᵀF + Gᵀ − G and their operators.

* :mod:`.dense`: dense F, G (:class:`MonotoneLinear`);
* :mod:`.conv`: circular convolutions, resolvent by the FFT (:class:`MonotoneConv`);
* :mod:`.multitier`: several tiers coupled by stride-2 convolutions, exact FFT resolvent
  (:class:`MonotoneMultiTier`);
* :mod:`.structure`: each family's exact block-diagonal form (:class:`BlockStructure`, from
  ``block_structure()``), which every bound, penalty and loss reads;
* :mod:`.fft`: the Fourier-domain block algebra both convolutional operators share;
* :mod:`.last_application`, :mod:`.autodiff`: the shared memo of the last application and the
  test for tensors of forward-mode or ``torch.func`` transforms.
"""
from .conv import ConvOperator, ConvResolvent, MonotoneConv
from .dense import MonotoneLinear
from .multitier import MonotoneMultiTier, MultiTierOperator, MultiTierResolvent
from .structure import BlockStructure, probed_structure

__all__ = ["BlockStructure", "ConvOperator", "ConvResolvent", "MonotoneConv", "MonotoneLinear",
           "MonotoneMultiTier", "MultiTierOperator", "MultiTierResolvent", "probed_structure"]
