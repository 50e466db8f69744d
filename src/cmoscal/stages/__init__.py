"""The calibration stages, one module per notebook, each reading what earlier stages wrote.

What each stage reads and owns is declared once, in :data:`cmoscal.products.PIPELINE`. Every
module here has ``run(params)``, wrapped by :func:`cmoscal.products.stage` (lock on the output
folder, a clean start, campaign warnings recorded, the ledger updated), and the loaders later
stages and the notebooks use. ``STAGES`` maps each name to its ``run``, in pipeline order.
"""

from ..products import PIPELINE
from . import (
    bias,
    calibration,
    comparison,
    dark_masters,
    dark_model,
    evaluation,
    hot_pixels,
    inventory,
    summary,
    synthesis,
)

__all__ = ["STAGES"]

_MODULES = {module.__name__.rsplit(".", 1)[1]: module for module in (
    inventory, bias, dark_masters, dark_model, hot_pixels, synthesis, evaluation, summary, calibration, comparison)}
STAGES = {spec.name: _MODULES[spec.name].run for spec in PIPELINE}
