"""cmoscal: per-pixel bias and dark calibration of CMOS cameras.

Stages (see :mod:`cmoscal.stages`): inventory, bias, dark masters, dark model, hot
pixels, synthesis, evaluation, summary, calibration, comparison. All models and products
are in 12-bit DN.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("cmoscal")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
