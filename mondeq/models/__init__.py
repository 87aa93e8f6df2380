"""Classifiers built on a monDEQ layer: the classifier, its input normalisation, its readouts, and
the model zoo."""
from .classifier import MonDEQClassifier
from .normalization import InputNormalization
from .readouts import AvgPoolState, FlattenState, TierPool
from .run import load_run
from .zoo import DEFAULT_CHANNELS, MODELS, build_model, fc_mondeq, multitier_mondeq, single_conv_mondeq

__all__ = ["DEFAULT_CHANNELS", "MODELS", "build_model", "AvgPoolState", "FlattenState",
           "InputNormalization", "MonDEQClassifier", "TierPool", "fc_mondeq", "load_run",
           "multitier_mondeq", "single_conv_mondeq"]
