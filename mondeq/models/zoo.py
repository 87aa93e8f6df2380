"""The model zoo: the paper's classifiers (fully connected, single convolution, multi-tier)."""
from __future__ import annotations

import numbers
from typing import Any, Callable, Mapping, Sequence

from torch import nn

from splitting import Prox

from ..errors import InvalidSettingError
from ..layer import MonDEQ
from ..parametrisation import check_sizes
from ..operators.conv import MonotoneConv
from ..operators.dense import MonotoneLinear
from ..operators.multitier import MonotoneMultiTier
from .classifier import MonDEQClassifier
from .feedforward import feedforward
from .nonlinearities import make_nonlinearity
from .normalization import InputNormalization
from .readouts import AvgPoolState, NormalizedLinear, TierPool


def _normalization(mean: Sequence[float] | float | None,
                   std: Sequence[float] | float | None) -> InputNormalization | None:
    """The input normalisation of a zoo constructor's ``mean``/``std`` (both ``None``: none)."""
    if mean is None and std is None:
        return None
    if mean is None or std is None:
        raise InvalidSettingError("give both mean and std for the input normalisation, or neither")
    as_list = (lambda v: [float(v)] if isinstance(v, (int, float)) else [float(t) for t in v])
    return InputNormalization(as_list(mean), as_list(std))


def fc_mondeq(in_features: int = 784, hidden: int = 87, num_classes: int = 10, *, m: float = 1.0,
              nonlinearity: Prox | None = None, solver: str | Callable = "pr", alpha: float = 1.0,
              tol: float = 1e-2, max_iter: int = 50, backward_tol: float | None = None,
              backward_max_iter: int | None = None, mean: Sequence[float] | float | None = None,
              std: Sequence[float] | float | None = None) -> MonDEQClassifier:
    """The paper's fully connected monDEQ classifier (87 hidden units on MNIST).

    ``mean``, ``std``: the per-channel input normalisation the classifier applies first
    (:class:`~mondeq.models.normalization.InputNormalization`; ``None``: identity); inputs are
    flattened channel-major, as ``(batch, C, H, W).reshape(batch, -1)`` does.

    Raises:
        InvalidSettingError: a size that is not a whole number ≥ 1.
    """
    check_sizes("fc_mondeq", in_features=in_features, hidden=hidden, num_classes=num_classes)
    layer = MonDEQ(MonotoneLinear(in_features, hidden, m=m), nonlinearity, solver=solver, alpha=alpha,
                   tol=tol, max_iter=max_iter, backward_tol=backward_tol,
                   backward_max_iter=backward_max_iter)
    return MonDEQClassifier(layer, nn.Linear(hidden, num_classes), normalization=_normalization(mean, std))


def single_conv_mondeq(in_channels: int = 1, image_size: int = 28, channels: int = 54,
                       num_classes: int = 10, *, kernel_size: int = 3, padding: int = 1, pool: int = 4,
                       m: float = 1.0, nonlinearity: Prox | None = None, solver: str | Callable = "pr",
                       alpha: float = 1.0, tol: float = 1e-2, max_iter: int = 50,
                       backward_tol: float | None = None,
                       backward_max_iter: int | None = None, mean: Sequence[float] | float | None = None,
                       std: Sequence[float] | float | None = None) -> MonDEQClassifier:
    """The paper's single-convolution monDEQ classifier (MNIST: 54 channels, 3 × 3 kernels, m = 1).

    The input is zero-padded by ``padding`` (28 → 30 on MNIST, as in the paper's code), the state
    is ``(channels, 30, 30)``, the readout averages 4 × 4 windows (30 → 7, the last two rows and
    columns fall outside every window) and a linear head maps the ``54·7·7`` features to logits:
    79,498 parameters with the defaults (the paper quotes about 84K). ``mean``, ``std``: the
    per-channel input normalisation, as in :func:`fc_mondeq`.

    Raises:
        InvalidSettingError: a size that is not a whole number ≥ 1 (``padding`` ≥ 0), or a
            pooling window larger than the state.
    """
    check_sizes("single_conv_mondeq", in_channels=in_channels, image_size=image_size, channels=channels,
                num_classes=num_classes, kernel_size=kernel_size, pool=pool)
    check_sizes("single_conv_mondeq", minimum=0, padding=padding)
    linear = MonotoneConv(in_channels, channels, image_size, kernel_size=kernel_size, padding=padding, m=m)
    layer = MonDEQ(linear, nonlinearity, solver=solver, alpha=alpha, tol=tol, max_iter=max_iter,
                   backward_tol=backward_tol, backward_max_iter=backward_max_iter)
    features = channels * (linear.size[0] // pool) * (linear.size[1] // pool)
    if not features:
        raise InvalidSettingError(f"single_conv_mondeq: pool {pool} exceeds the state's grid {tuple(linear.size)}")
    return MonDEQClassifier(layer, nn.Linear(features, num_classes), readout=AvgPoolState(pool),
                            normalization=_normalization(mean, std))


def multitier_mondeq(in_channels: int = 1, image_size: int | tuple[int, int] = 28,
                          channels: Sequence[int] = (16, 32, 32), num_classes: int = 10, *,
                          kernel_size: int = 3, padding: int = 0, m: float = 1.0,
                          nonlinearity: Prox | None = None, solver: str | Callable = "pr",
                          alpha: float = 1.0, tol: float = 1e-2, max_iter: int = 50,
                          backward_tol: float | None = None, backward_max_iter: int | None = None,
                          pool_all_tiers: bool = False, pool_size: int = 4,
                          mean: Sequence[float] | float | None = None,
                          std: Sequence[float] | float | None = None) -> MonDEQClassifier:
    """The paper's multi-tier convolutional monDEQ classifier (MNIST: channels (16, 32, 32)).

    Tiers have grids ``(image_size + 2·padding) / 2^i``: 28 → 28, 14, 7 on MNIST and 32 → 32, 16,
    8 on CIFAR-10/SVHN, both unpadded (the paper pads MNIST to 30, which cannot halve twice on
    an exact circular grid). The readout average-pools the last tier (every tier with
    ``pool_all_tiers``) to ``pool_size × pool_size`` (4 × 4, as the paper's code: 8 × 8 pooled by
    2) and a linear head maps it to logits: 60,650 parameters on MNIST with the defaults.

    Args:
        in_channels, image_size: input shape (one int for square images).
        channels: channels of each tier.
        num_classes: logits.
        kernel_size, padding, m: see :class:`~mondeq.operators.multitier.MonotoneMultiTier`.
        nonlinearity, solver, alpha, tol, max_iter, backward_tol, backward_max_iter: see
            :class:`~mondeq.layer.MonDEQ`.
        pool_all_tiers: pool and concatenate every tier instead of the last.
        pool_size: pooled grid side per tier (adaptive average pooling; 7 × 7 → 4 × 4 uses
            overlapping windows, still a fixed linear map).
        mean, std: the per-channel input normalisation applied first (``None``: identity).

    Raises:
        InvalidSettingError: a size that is not a whole number ≥ 1, or tiers that do not fit.
    """
    check_sizes("multitier_mondeq", in_channels=in_channels, num_classes=num_classes, pool_size=pool_size,
                **({"image_size": image_size} if isinstance(image_size, numbers.Integral) else
                   {f"image_size[{i}]": v for i, v in enumerate(image_size)}))
    linear = MonotoneMultiTier(in_channels, channels, image_size, kernel_size=kernel_size,
                               padding=padding, m=m)
    layer = MonDEQ(linear, nonlinearity, solver=solver, alpha=alpha, tol=tol, max_iter=max_iter,
                   backward_tol=backward_tol, backward_max_iter=backward_max_iter)
    readout = TierPool("all" if pool_all_tiers else "last", output_size=pool_size)
    if min(linear.sizes[-1]) < readout.output_size:  # the last tier is the smallest
        raise InvalidSettingError(f"pool_size {pool_size} exceeds the last tier's grid {linear.sizes[-1]}")
    head = nn.Linear(readout.features(linear.channels), num_classes)
    return MonDEQClassifier(layer, head, readout=readout, normalization=_normalization(mean, std))


DEFAULT_CHANNELS = {"conv": {"mnist": (54,), "cifar10": (81,), "svhn": (81,)},
                    "cnn": {"mnist": (54,), "cifar10": (81,), "svhn": (81,)},
                    "multitier": {"mnist": (16, 32, 32), "cifar10": (16, 32, 60), "svhn": (16, 32, 60)}}
"""The paper's widths (Table 1) for each model and dataset, when a config names none."""

MODELS = ("fc", "conv", "multitier", "cnn")
"""The architectures :func:`build_model` knows, by the name a run's config gives them (``"cnn"``:
the single-conv architecture with W = 0, a plain CNN reference, :mod:`~mondeq.models.feedforward`)."""

SOLVER_KEYS = ("m", "solver", "alpha", "tol", "max_iter")
"""Config keys that set the layer (defaults: those of the constructors)."""


def _input_shape(config: Mapping[str, Any]) -> tuple[int, int, int]:
    """(channels, image side, classes) from the config's dataset, or from explicit keys."""
    explicit = [config.get(k) for k in ("in_channels", "image_size", "num_classes")]
    if all(v is not None for v in explicit):
        return tuple(int(v) for v in explicit)  # type: ignore[return-value]
    from ..data.specs import DATASETS  # the data package is only needed for dataset names

    name = config.get("dataset", "mnist")
    if name not in DATASETS:
        raise InvalidSettingError(f"unknown dataset {name!r} in the model config; choose one of "
                                  f"{sorted(DATASETS)} or give in_channels, image_size, num_classes")
    spec = DATASETS[name]
    return spec.in_channels, spec.image_size, spec.num_classes


def _config_normalization(config: Mapping[str, Any], in_channels: int) -> dict[str, Any]:
    """``mean``/``std`` keyword arguments for the constructors from a config: explicit ``mean``
    and ``std`` keys, none with ``normalize: False`` or explicit shape keys and no dataset, else
    the dataset's statistics (:data:`mondeq.data.DATASETS`)."""
    if config.get("mean") is not None or config.get("std") is not None:
        return {"mean": config.get("mean"), "std": config.get("std")}
    explicit = all(config.get(k) is not None for k in ("in_channels", "image_size", "num_classes"))
    if config.get("normalize", True) is False or (explicit and config.get("dataset") is None):
        return {}
    from ..data.specs import DATASETS

    spec = DATASETS.get(config.get("dataset") or "mnist")
    if spec is None:
        raise InvalidSettingError(f"unknown dataset {config.get('dataset')!r} in the model config; "
                                  f"choose one of {sorted(DATASETS)}, or give mean and std")
    if spec.in_channels != in_channels:
        raise InvalidSettingError(f"the config gives {in_channels} input channels but dataset "
                                  f"{spec.name!r} has {spec.in_channels}; give mean and std, or "
                                  f"normalize: false")
    return {"mean": spec.mean, "std": spec.std}


def build_model(config: Mapping[str, Any]) -> MonDEQClassifier:
    """The classifier a run's configuration describes, on the CPU in the default dtype.

    One registry for every program: ``config`` is the ``config`` dict that
    ``experiments/train.py`` saves in ``results.json`` and ``checkpoint.pt`` (any mapping with
    these keys works). Keys read: ``model`` (``"fc"``, ``"conv"``, ``"multitier"`` or ``"cnn"``; default
    ``"fc"``), ``dataset`` (for the input shape and the default widths; default ``"mnist"``) or
    explicit ``in_channels``, ``image_size``, ``num_classes``; ``hidden`` (fc; default 87),
    ``channels`` (conv: one width, multitier: one per tier; default :data:`DEFAULT_CHANNELS`),
    the layer settings :data:`SOLVER_KEYS`, ``nonlinearity`` (a name of
    :data:`~mondeq.models.nonlinearities.NONLINEARITIES`; default and absent: ``"relu"``, so runs
    saved before the key existed rebuild as they were), and ``normalize_head`` (a row-normalised head,
    :class:`~mondeq.models.readouts.NormalizedLinear`). Parameters are drawn from the global RNG, in
    the same order as the constructors draw them.

    The model owns its input normalisation and takes pixel-scale inputs: the dataset's per-channel
    mean and std (:data:`mondeq.data.DATASETS`) unless the config gives ``mean`` and ``std``, or
    ``normalize: False`` (identity; also the default for explicit shape keys without a dataset).

    Raises:
        InvalidSettingError: an unknown model, dataset or nonlinearity, channels that do not fit
            the model, or a size (hidden, channels) that is not a whole number ≥ 1.
    """
    kind = config.get("model") or "fc"
    if kind not in MODELS:
        raise InvalidSettingError(f"unknown model {kind!r}; choose one of {list(MODELS)}")
    in_channels, image_size, classes = _input_shape(config)
    settings = {k: config[k] for k in SOLVER_KEYS if config.get(k) is not None}
    settings["nonlinearity"] = make_nonlinearity(config.get("nonlinearity"))
    settings.update(_config_normalization(config, in_channels))
    if kind == "fc":
        hidden = config.get("hidden")
        return _with_head(config, fc_mondeq(in_channels * image_size ** 2, 87 if hidden is None else hidden,
                                            classes, **settings))
    channels = config.get("channels")
    if channels is None:
        channels = DEFAULT_CHANNELS[kind].get(config.get("dataset", "mnist"), DEFAULT_CHANNELS[kind]["mnist"])
    channels = tuple(channels if isinstance(channels, (list, tuple)) else (channels,))
    if kind in ("conv", "cnn"):
        if len(channels) != 1:
            raise InvalidSettingError(f"channels: the {kind} model takes one width, got {list(channels)}")
        model = single_conv_mondeq(in_channels, image_size, channels[0], classes, **settings)
        return _with_head(config, feedforward(model) if kind == "cnn" else model)
    return _with_head(config, multitier_mondeq(in_channels, image_size, channels, classes, **settings))


def _with_head(config: Mapping[str, Any], model: MonDEQClassifier) -> MonDEQClassifier:
    """``model`` with its head row-normalised when the config says ``normalize_head: True``
    (:class:`~mondeq.models.readouts.NormalizedLinear`, same weights, no random draws)."""
    if config.get("normalize_head"):
        model.head = NormalizedLinear.from_linear(model.head)
    return model
