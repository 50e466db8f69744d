"""Stage 10, comparison (optional): what changed since the reference campaign of the same sensor.

Skipped when ``reference_campaign`` is not set. Compares this campaign's model with the
reference's (see :mod:`cmoscal.compare`) and writes ``comparison/changes.ecsv`` (one row per
quantity), ``comparison/pixels.ecsv`` (warm and hot pixels: persistent, new, gone,
reclassified), ``comparison/changed_pixels.ecsv`` (every pixel whose class changed) and
``comparison/change_maps.fits`` (change and z map of every quantity, and the class map).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from astropy.io import fits

from ..compare import CLASSES, Comparison, compare_models
from ..compute import workers
from ..errors import CampaignError, CampaignWarning
from ..fitsio import provenance, read_table, write_hdus, write_table
from ..model import CalibrationModel, usable_model
from ..products import note, out, product, required, stage

__all__ = ["load", "run"]


def _extension(name: str) -> str:
    """A FITS extension name for a quantity ('dark rate at 7.4 degC, 7.75 s' -> 'DARK_RATE')."""
    return "_".join(name.split(" at ")[0].upper().split())


@stage("comparison")
def run(params: dict) -> Comparison | None:
    """Compare with ``reference_campaign`` and write the comparison products; None when it is not set."""
    reference_path = params["reference_campaign"]
    if not reference_path:
        return None
    own = product(params, "model")
    if Path(reference_path).resolve() in (out(params).resolve(), own.resolve()):
        raise CampaignError("reference_campaign: it is this campaign's own output_dir; give an earlier campaign's")
    reference = usable_model(reference_path, "the comparison stage")
    current = CalibrationModel.read(required(params, "model"), workers(params))
    for key in ("INSTRUME", "DETECTOR"):
        before, now = reference.meta.get(key, "UNKNOWN"), current.meta.get(key, "UNKNOWN")
        if "UNKNOWN" not in (before, now) and before != now:
            warnings.warn(f"the reference campaign's {key} is {before}, this campaign's {now}: is it the same sensor?",
                          CampaignWarning, stacklevel=2)
    result = compare_models(reference, current, params["change_sigma"])
    meta = dict(reference=str(reference_path), reference_campaign=reference.meta.get("CAMPAIGN", ""),
                reference_model=reference.meta.get("MODELID", ""), model=current.meta.get("MODELID", ""),
                temperature=float(result.temperature), exptime=float(result.exptime), sigma=float(result.sigma))
    folder = product(params, "comparison")
    for table, name in ((result.changes, "changes"), (result.pixels, "pixels"), (result.changed, "changed_pixels")):
        table.meta.update(meta)
        write_table(table, folder / f"{name}.ecsv")
    header = provenance(fits.Header(), bunit="", description="class of each pixel since the reference campaign",
                        CLASSES=(", ".join(f"{code}={name}" for code, name in enumerate(CLASSES)), "pixel codes"),
                        REFMODEL=(meta["reference_model"], "MODELID of the reference campaign's model"),
                        MODELID=(meta["model"], "MODELID of this campaign's model"),
                        CMPTEMP=(result.temperature, "degC, where the dark rates are compared"),
                        CMPEXPT=(result.exptime, "s, exposure of that comparison"),
                        CMPSIGMA=(result.sigma, "significance threshold"))
    header.add_history(f"reference: {reference_path}")
    extensions = []
    for row in result.changes:
        change, z = result.maps[row["quantity"]]
        extensions += [(f"D_{_extension(row['quantity'])}", change.astype(np.float32), row["unit"]),
                       (f"Z_{_extension(row['quantity'])}", z.astype(np.float32), "")]
    write_hdus(folder / "change_maps.fits", result.classes, header, extensions, checksum=True)
    counts = dict(zip(result.pixels["class"], result.pixels["warm_or_hot"]))
    note(new=counts["new"], gone=counts["gone"], persistent=counts["persistent"])
    return result


def load(params: dict) -> dict:
    """The comparison tables written by :func:`run` (changes, pixels, changed)."""
    folder = required(params, "comparison", "changes.ecsv").parent
    return {name: read_table(folder / f"{file}.ecsv")
            for name, file in (("changes", "changes"), ("pixels", "pixels"), ("changed", "changed_pixels"))}
