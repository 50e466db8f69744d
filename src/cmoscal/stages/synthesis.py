"""Stage 6, synthesis: synthetic bias and dark frames from the model.

Writes ``synthetic/synthetic_bias_XX.XC.fits`` and ``synthetic/synthetic_dark_XX.XC_YYs.fits``
(float32 DN with its uncertainty, UNCERT, as CCDData.read opens it) at every point of ``synthesize`` and, with
``generate_set``, at every master's temperature and exposure. A point further outside the
calibrated ranges than the model allows is refused (listed with the reason, nothing written).
"""

from __future__ import annotations

import warnings

import numpy as np
from astropy.table import Table

from ..compute import workers
from ..errors import CampaignError, CampaignWarning, OutOfRangeWarning
from ..inventory import frame_label
from ..masters import master_index
from ..model import shared_model, write_synthetic
from ..products import MODEL_FILE, product, required, stage

__all__ = ["points", "run"]


def points(params: dict) -> list[tuple[str, float, float | None]]:
    """(kind, temperature, exptime) of the frames to synthesize."""
    chosen = [(float(p["temperature"]), float(p["exptime"])) for p in params["synthesize"]]
    found = [("bias", T, None) for T, _ in chosen] + [("dark", T, t) for T, t in chosen]
    if params["generate_set"]:
        found += [("bias", h["TEMP"], None) for _, h in master_index(product(params, "bias_masters"))]
        found += [("dark", h["TEMP"], h["EXPTIME"]) for _, h in master_index(product(params, "dark_masters"))]
    return found


@stage("synthesis")
def run(params: dict) -> Table:
    """Write the synthetic frames; return one row per frame (mean, std, and any warning or refusal)."""
    model = shared_model(required(params, "model"), workers(params))
    rows = []
    for kind, T, t in points(params):
        name = f"synthetic_{frame_label(kind, T, t)}.fits"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", OutOfRangeWarning)
            try:
                data = write_synthetic(model, product(params, "synthetic", name), T, t, history=[MODEL_FILE])
                note = "; ".join(str(w.message) for w in caught)
                rows.append((name, kind, T, t or 0.0, float(np.nanmean(data)), float(np.nanstd(data)), note))
            except CampaignError as err:
                rows.append((name, kind, T, t or 0.0, np.nan, np.nan, f"refused: {err}"))
        if rows[-1][-1]:
            warnings.warn(f"{name}: {rows[-1][-1]}", CampaignWarning, stacklevel=2)
    return Table(rows=rows, names=("file", "kind", "temperature", "exptime", "mean", "std", "note"),
                 dtype=(str, str, float, float, float, float, str),
                 units=(None, None, "deg_C", "s", "DN", "DN", None))
