"""The calibration stages, one module per notebook, each reading what earlier stages wrote.

What each stage reads and owns is declared once, in :data:`cmoscal.products.PIPELINE`. Every
module here has ``run(params)``, wrapped by :func:`cmoscal.products.stage` (lock on the output
folder, a clean start, campaign warnings recorded, the ledger updated), and the loaders later
stages and the notebooks use. ``STAGES`` maps each name to its ``run``, in pipeline order.
"""

from importlib import import_module

from ..products import PIPELINE

__all__ = ["STAGES"]

STAGES = {spec.name: import_module(f"{__name__}.{spec.name}").run for spec in PIPELINE}
