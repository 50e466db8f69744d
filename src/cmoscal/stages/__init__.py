"""The calibration stages, one module per notebook, each reading what earlier stages wrote.

Every module has ``run(params)``, wrapped by :func:`cmoscal.products.stage` (lock on the
output folder, a clean start, campaign warnings recorded, the ledger updated), and the
loaders later stages and the notebooks use. ``STAGES`` maps each name to its ``run``, in
pipeline order.
"""

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

STAGES = {module.__name__.rsplit(".", 1)[1]: module.run
          for module in (inventory, bias, dark_masters, dark_model, hot_pixels, synthesis, evaluation, summary,
                         calibration, comparison)}
