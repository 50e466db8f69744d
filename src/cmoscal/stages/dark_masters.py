"""Stage 3, dark masters: bias-subtracted master darks per (temperature, exposure).

Each raw dark frame is read once; from it the bias is removed (the bias model at the frame's
own temperature, or the nearest master bias) and the frames of a group are combined with
temporal clipping (cosmic rays). Writes ``dark_masters/darks_TxxC_texpYYs.fits`` and
``dark_masters/frames.ecsv``. The gain sums of each group (for the noise model) are in the
master headers (GAINS0..., :data:`cmoscal.masters.GAIN_SUMS`).
"""

from __future__ import annotations

from astropy.table import Table

from ..errors import CampaignError
from ..masters import master_index
from ..products import product, stage
from . import bias as bias_stage
from . import inventory as inventory_stage

__all__ = ["run"]


@stage("dark_masters")
def run(params: dict) -> Table:
    """Make every master dark; return the frames table (the verdict on every dark frame)."""
    inventory = inventory_stage.load(params)
    bias = bias_stage.load(params, slice(0, 1))
    if params["dark_bias"] == "model":
        source = ("model", str(bias["paths"]["a"]), str(bias["paths"]["b"]))
    else:
        index = master_index(product(params, "bias_masters"))
        source = ("nearest", [str(p) for p, _ in index], [h["TEMP"] for _, h in index])
    frames = bias_stage.make_masters(params, inventory, "dark", source, str(bias["paths"]["read_noise"]))
    if not list(product(params, "dark_masters").glob("*.fits")):
        raise CampaignError("no usable dark frames: every dark frame was rejected (see dark_masters/frames.ecsv)")
    return frames
