"""Stage 9, calibration (optional): calibrate the science frames of ``science_dir`` with the model.

Skipped when ``science_dir`` is not set. Writes ``calibrated/<name>_cal.fits`` (image, UNCERT,
MASK, DQ, DQ_DEF: see :mod:`cmoscal.calibrate`; sub-folders of ``science_dir`` mirrored) and
``calibrated/frames.ecsv`` (one row per frame: temperature, exposure, mean, standard deviation,
median uncertainty, or why it was refused).
"""

from __future__ import annotations

import warnings
from collections import Counter

import numpy as np
from astropy.nddata import CCDData
from astropy.table import Table

from ..calibrate import calibrate_file, refused_row, relative_name
from ..compute import run_tiles, workers
from ..errors import CampaignWarning
from ..fitsio import write_table
from ..inventory import find_fits
from ..model import CalibrationModel
from ..products import note, product, required, stage

__all__ = ["before_after", "calibrate_files", "normalized_residuals", "run"]

_COLUMNS = ("input", "output", "status", "reason", "temperature", "exptime", "mean", "std", "noise")


def calibrate_files(files, model_path, output_dir, params: dict, electrons: bool = False) -> Table:
    """Calibrate raw files (one tile each: threads or dask) into ``output_dir``; one row per frame.

    ``files`` holds ``(path, folder)`` pairs: outputs mirror the sub-folders below ``folder``
    (None: a loose file). Inputs that would write the same output are refused, not overwritten.
    """
    targets = Counter(relative_name(path, folder) for path, folder in files)
    clashes = [refused_row(str(path), f"another input also writes {relative_name(path, folder)}_cal.fits")
               for path, folder in files if targets[relative_name(path, folder)] > 1]
    tasks = [(path, str(model_path), str(output_dir), params, electrons, folder) for path, folder in files
             if targets[relative_name(path, folder)] == 1]
    rows = [row for result in run_tiles(calibrate_file, tasks, params, "calibrating") for row in result] + clashes
    table = Table(rows=[[r[c] for c in _COLUMNS] for r in rows], names=_COLUMNS,
                  dtype=(str, str, str, str, float, float, float, float, float)) if rows else Table(names=_COLUMNS)
    value_unit = "electron" if electrons else "DN"
    for name, unit in (("temperature", "deg_C"), ("exptime", "s"), ("mean", value_unit), ("std", value_unit),
                       ("noise", value_unit)):
        table[name].unit = unit
    return table


@stage("calibration")
def run(params: dict) -> Table:
    """Calibrate every frame of ``science_dir``; an empty table when it is not set."""
    if not params["science_dir"]:
        table = Table(names=_COLUMNS)
        table.meta["note"] = "science_dir is not set: no science frames to calibrate"
        return table
    files = [(path, params["science_dir"]) for path, skip in find_fits(params["science_dir"]) if not skip]
    folder = product(params, "calibrated")
    table = calibrate_files(files, required(params, "model"), folder, params)
    write_table(table, folder / "frames.ecsv")
    refused = table[table["status"] == "refused"]
    for row in refused:
        warnings.warn(f"science frame {row['input']} refused: {row['reason']}", CampaignWarning, stacklevel=2)
    note(calibrated=int(len(table) - len(refused)), refused=int(len(refused)))
    return table


def before_after(params: dict, output: str) -> dict:
    """The maps of one calibrated frame (DN) for :func:`cmoscal.plots.image_grid`: the raw frame, the
    bias(T) + dark(T, t) removed, the result, its uncertainty and its mask."""
    ccd = CCDData.read(output)
    model = CalibrationModel.read(product(params, "model"), workers(params))
    removed = model.dark_frame(ccd.header["CALTEMP"], ccd.header["CALEXPT"])
    return {"raw frame": (ccd.data + removed, "DN"),
            f"bias + dark removed (T = {ccd.header['CALTEMP']:.2f} degC, t = {ccd.header['CALEXPT']:.3g} s)":
                (removed, "DN"),
            "calibrated": (ccd.data, "DN"), "uncertainty": (ccd.uncertainty.array, "DN"),
            "mask": (ccd.mask.astype(np.uint8), "1 = masked")}


def normalized_residuals(table: Table, per_frame: int = 200_000, seed: int = 0) -> np.ndarray:
    """Calibrated value / uncertainty of unmasked pixels, pooled over the calibrated frames (a random
    sample of at most ``per_frame`` pixels each). For dark frames it should be a unit normal."""
    rng = np.random.default_rng(seed)
    pooled = []
    for output in table["output"][table["status"] == "calibrated"]:
        ccd = CCDData.read(output)
        z = (ccd.data / ccd.uncertainty.array)[~ccd.mask]
        pooled.append(rng.choice(z, per_frame, replace=False) if z.size > per_frame else z)
    return np.concatenate(pooled) if pooled else np.empty(0)
