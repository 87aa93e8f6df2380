"""The multi-tier convolutional operator: tiers on halving grids coupled by stride-2 convolutions.

* :mod:`.operator`: the parametrisation (:class:`MonotoneMultiTier`) and the operator W;
* :mod:`.apply`: applying W and Wᵀ in the Fourier domain, and its kernel gradients;
* :mod:`.aliasing`: which fine frequencies alias onto a coarse one under stride 2;
* :mod:`.resolvent`: the exact resolvent (block elimination over the tiers);
* :mod:`.norm`: ‖I − W‖₂, exactly or as a block bound.
"""
from .operator import MonotoneMultiTier, MultiTierOperator
from .resolvent import MultiTierResolvent

__all__ = ["MonotoneMultiTier", "MultiTierOperator", "MultiTierResolvent"]
