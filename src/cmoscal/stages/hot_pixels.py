"""Stage 5, hot pixels: classify pixels into the DQ bitmask with the current thresholds.

Rerunning this stage alone applies new thresholds to the existing model. Writes
``dark_model/dq_map.fits`` (with DQ_DEF), ``dark_model/hot_pixel_mask.fits`` (1 = warm or hot:
every dark-current outlier a user should mask), ``dark_model/hot_pixels.ecsv`` (every flagged
pixel with its rates), ``dark_model/hot_pixels.reg`` (the same pixels as SAOImage DS9 regions)
and ``calibration_model.fits``: the dark fit (``dark_model/dark_fit.fits``) with this DQ. This
stage is the model file's one writer, so a model on disk holds a classification of its own fit.
"""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from astropy.io import fits
from astropy.table import Table

from ..compute import concurrently, workers
from ..dq import DQ, DQ_DTYPE, dq_table, has, set_by
from ..errors import CampaignError
from ..fitsio import atomic_path, write_hdus, write_table
from ..hotpix import Thresholds, classify_pixels, log_rate_significance
from ..model import CalibrationModel
from ..noise import ReadNoisePrior, own_read_variance
from ..products import note, product, required, stage
from . import inventory as inventory_stage
from .dark_model import model_id

__all__ = ["log_rates", "run", "threshold_table", "write_regions"]

_REGION_COLOR = {"HOT": "red", "WARM": "orange"}


def log_rates(model: CalibrationModel, temperature: float):
    """ln of the dark rate [DN/s] at ``temperature`` and its variance, at the geometric-mean exposure.

    The variance is scaled by the pixel's reduced chi-square where that exceeds 1: a pixel whose
    samples scatter more than its noise model says is known no better than that scatter.
    """
    ln_rate, variance = model.log_rate(temperature, float(np.sqrt(model.exprange[0] * model.exprange[1])))
    scatter = np.fmax(np.nan_to_num(model.chi2r, nan=1.0), 1.0)
    return ln_rate, variance * scatter


def _own_read_noise(read_variance, dof: float, population: ReadNoisePrior) -> np.ndarray:
    """The pixels' own read noise [DN] behind the model's moderated read variances."""
    return np.sqrt(np.fmax(own_read_variance(read_variance, dof, population), 0))


def threshold_table(thresholds: dict, gain) -> Table:
    """The warm and hot thresholds as rates at each end of the range [DN/s, and e-/s when the gain is known]."""
    rows = thresholds["rates"]
    table = Table(rows=rows, names=("temperature", "warm_rate", "hot_rate"), units=("deg_C", "DN/s", "DN/s"))
    if gain:
        for name in ("warm", "hot"):
            table[f"{name}_rate_e"] = table[f"{name}_rate"].value * gain
            table[f"{name}_rate_e"].unit = "electron/s"
    return table


def write_regions(table: Table, path) -> None:
    """Write the flagged pixels of ``table`` (x, y from 0, class) as SAOImage DS9 boxes in image coordinates."""
    lines = ["# Region file format: DS9 version 4.1", "# cmoscal warm (orange) and hot (red) pixels", "image"]
    lines += [f"box({x + 1},{y + 1},1,1,0) # color={_REGION_COLOR[kind]} text={{{kind}}}"
              for x, y, kind in zip(table["x"], table["y"], table["class"])]
    with atomic_path(path) as tmp:
        with open(tmp, "w") as file:
            file.write("\n".join(lines) + "\n")


def _classify(params: dict, model: CalibrationModel, tref: float, threads: int) -> tuple[np.ndarray, dict]:
    """Classify the pixels of ``model`` (its DQ left as it is): the DQ, and the significance at both ends of the
    range, the population statistics, the thresholds and the table of flagged pixels (the most significant first)."""
    fit_dq = model.dq.astype(DQ_DTYPE) & ~DQ_DTYPE(set_by("hot_pixels"))  # a rerun with new thresholds starts clean
    usable = ~has(fit_dq, DQ.DO_NOT_USE)
    ends = model.trange
    population = ReadNoisePrior(model.meta["RNPOPVAR"], model.meta["RNPOPDOF"], model.meta["RNTELFRC"])
    own_dof = model.meta["RNOWNDOF"]
    needed = list(dict.fromkeys((*ends, tref)))  # each temperature once, on threads of their own, and the errors
    bands = np.array_split(model.read_variance, threads)  # the pixels' own read noise, the longest, in row bands
    calls = [functools.partial(_own_read_noise, band, own_dof, population) for band in bands]
    calls += [functools.partial(log_rates, model, T) for T in needed]
    calls += [lambda: model.log_rate(tref, model.exprange[1])[1],  # as the model states it, where the dark is largest
              lambda: model.dark_dof]
    *found, stated, dof = concurrently(calls, threads)
    own, rates = np.concatenate(found[:len(bands)]), dict(zip(needed, found[len(bands):]))
    significance, populations = zip(*concurrently([functools.partial(log_rate_significance, *rates[T], usable)
                                                   for T in ends], threads))
    populations = [dict(stats, temperature=T) for stats, T in zip(populations, ends)]
    rate_min = params["hot_rate_min"]
    if rate_min is not None and params["hot_rate_unit"] == "e-/s":
        if not model.meta.get("GAIN"):
            raise CampaignError("hot_rate_unit: e-/s needs the gain, which is unknown for this campaign (set gain)")
        rate_min = rate_min / model.meta["GAIN"]
    dq, thresholds = classify_pixels([rates[T] for T in ends], populations, rates[tref], np.sqrt(stated), own, own_dof,
                                     model.meta["RNDOF"], model.chi2r, dof, fit_dq, Thresholds.from_params(params),
                                     rate_min, threads)
    flagged = np.flatnonzero(has(dq, DQ.HOT | DQ.WARM).ravel())
    y, x = np.unravel_index(flagged, dq.shape)
    hot = has(dq.ravel()[flagged], DQ.HOT)
    table = Table({"x": x, "y": y, "class": np.where(hot, "HOT", "WARM"),
                   f"rate_{ends[0]:.1f}C": np.exp(rates[ends[0]][0].ravel()[flagged]),
                   f"rate_{ends[1]:.1f}C": np.exp(rates[ends[1]][0].ravel()[flagged]),
                   "rate_error": np.sqrt(rates[ends[0]][1].ravel()[flagged]),
                   "spread_cold": significance[0].ravel()[flagged], "spread_warm": significance[1].ravel()[flagged],
                   "DQ": dq.ravel()[flagged]})
    for name in table.colnames[3:5]:
        table[name].unit = "DN/s"
    order = np.argsort(-np.nan_to_num(np.maximum(table["spread_cold"], table["spread_warm"]), nan=-np.inf))
    return dq, dict(significance=significance, populations=populations, thresholds=thresholds, flagged=table[order])


def _write_classification(params: dict, model: CalibrationModel, table: Table, threads: int) -> Table:
    """Write dq_map (with DQ_DEF), hot_pixel_mask, hot_pixels.ecsv and its regions; return the DQ_DEF table."""
    dq = model.dq
    header = model.header()
    header["BUNIT"], header["DESCRIP"], header["REFTYPE"] = "", "DQ bitmask; bits named in the DQ_DEF extension", "DQ"
    definitions = dq_table(dq)
    mask_header = header.copy()
    mask_header["DESCRIP"], mask_header["REFTYPE"] = "warm and hot pixels (1 = mask): DQ bits WARM or HOT", "MASK"
    mask = has(dq, DQ.HOT | DQ.WARM).astype(np.uint8)
    concurrently([lambda: write_table(table, product(params, "hot_pixels")),
                  lambda: write_regions(table, product(params, "hot_pixel_regions")),
                  lambda: write_hdus(product(params, "dq_map"), dq, header,
                                     [("DQ_DEF", fits.table_to_hdu(definitions), "")], checksum=True),
                  lambda: write_hdus(product(params, "hot_pixel_mask"), mask, mask_header, checksum=True)], threads)
    return definitions


@stage("hot_pixels")
def run(params: dict) -> dict:
    """Classify pixels, write dq_map, hot_pixel_mask, hot_pixels.ecsv and the model file with this DQ.

    The model file's other extensions are written while the pixels are classified, its DQ last.
    Returns the model, the significance at both ends of the range, the population statistics,
    the thresholds, the table of flagged pixels and the DQ_DEF table with counts.
    """
    threads = workers(params)
    model = CalibrationModel.read(required(params, "dark_fit"), threads)
    tref = params["hot_reference_temperature"]
    tref = float(model.trange[1] if tref is None else tref)
    model.meta.update(TREFHOT=tref, DQCLASS=True, MODELID=model_id(params, inventory_stage.load(params), "hot_pixels"))
    with ThreadPoolExecutor(2) as background:
        classified = background.submit(_classify, params, model, tref, threads)
        model_written = background.submit(model.write, product(params, "model"), threads,
                                          lambda: classified.result()[0])
        model.dq, result = classified.result()
        definitions = _write_classification(params, model, result["flagged"], threads)
        model_written.result()
    hot = int(np.count_nonzero(result["flagged"]["class"] == "HOT"))
    note(hot=hot, warm=len(result["flagged"]) - hot)
    return dict(result, model=model, threshold_rates=threshold_table(result["thresholds"], model.meta.get("GAIN")),
                reference_temperature=tref, dq_table=definitions)
