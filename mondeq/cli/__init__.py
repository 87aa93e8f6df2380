"""Command-line pieces the programs share (argparse types, common options)."""
from .options import device_arg, positive_float, positive_int

__all__ = ["device_arg", "positive_float", "positive_int"]
