"""Stage 2, bias: master biases per temperature, the read noise and the bias model bias(T) = a + b T.

Each raw bias frame is read once; the masters are then fitted band by band. Writes
``bias_grouped_by_temp/`` (master_bias_XX.XC.fits and frames.ecsv, the verdict on every
frame) and ``bias_model/`` maps: bias_a_map, bias_b_map, their sigma maps, bias_rms_map,
read_noise_map, bias_covariance and bias_fallback_map.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table

from .. import prior as prior_model
from ..bias import fit_bias
from ..compute import concurrently, row_bands, run_tiles, sample_rows, workers
from ..errors import CampaignError
from ..fitsio import provenance, read_image, read_product, read_table, reference, write_hdus, write_table
from ..inventory import frame_names, frame_refs, natural_key
from ..masters import (
    FrameRules,
    MasterTask,
    level_departure,
    load_masters,
    make_master,
    master_index,
    master_path,
    summarize_masters,
)
from ..model import BIAS_EQUATION
from ..noise import ReadNoisePrior, moderate, read_noise_prior, read_variance
from ..products import note, product, required, stage
from . import inventory as inventory_stage

__all__ = ["RESIDUALS", "frames_table", "load", "make_masters", "run"]

_MASTERS = {"bias": "bias_masters", "dark": "dark_masters"}  # the product holding the masters of each kind
RESIDUALS = "bias-fit residuals"  # RNSOURCE of a read noise from the line fit (one frame per bias group)
READ_NOISE_KEYS = ("RNDOF", "RNOWNDOF", "RNPOPDOF", "RNPOPVAR", "RNTELFRC")  # what the read noise rests on
MAPS = ("bias_a_map", "bias_b_map", "bias_a_sigma_map", "bias_b_sigma_map", "bias_rms_map", "read_noise_map",
        "bias_covariance", "bias_fallback_map")


def _expected_level(temperature: float, peers, log: bool) -> float:
    """Level [DN] at ``temperature`` from the (T, level) of up to 4 nearest peer groups, by a Theil-Sen line
    (in ln level when ``log``): robust to one bad peer."""
    from scipy.stats import theilslopes  # here: a rare path, and scipy.stats costs 0.3 s to import

    peers = sorted(peers, key=lambda p: abs(p[0] - temperature))[:4]
    T, level = np.array(peers).T
    y = np.log(level) if log else level
    slope, intercept, _, _ = theilslopes(y, T)
    value = intercept + slope * temperature
    return float(np.exp(value) if log else value)


def _neighbour_outliers(results, tasks, exptime_tolerance: float) -> dict:
    """Frames of groups with 1-2 usable frames whose level departs from that of the neighbouring groups
    (same exposure, >= 3 of them): ``{group index: {frame index: reason}}``."""
    medians = [np.median([lv for _, lv, _ in r["levels"]]) if r["levels"] else np.nan for r in results]
    found = {}
    for g, (result, task) in enumerate(zip(results, tasks)):
        if not 0 < len(result["levels"]) < 3:
            continue
        peers = [(np.mean(other.temperatures), medians[k]) for k, other in enumerate(tasks)
                 if k != g and np.isfinite(medians[k])
                 and (task.kind == "bias" or abs(other.exptime / task.exptime - 1) <= exptime_tolerance)]
        if len(peers) < 3:
            continue
        log = task.kind == "dark" and min(level for _, level in peers) > 0
        expected = _expected_level(float(np.mean(task.temperatures)), peers, log)
        for name, level, sigma in result["levels"]:
            reason = level_departure(level, expected, sigma, task.kind, task.rules,
                                     "expected from the neighbouring groups")
            if reason:
                found.setdefault(g, {})[task.names.index(name)] = reason
    return found


def make_masters(params: dict, inventory: Table, kind: str, bias_source=None, read_noise_map=None) -> Table:
    """Make the master of every group of ``kind`` (groups run as tiles); return the frames table.

    The frames table (also written as ``frames.ecsv`` beside the masters) has one row per frame:
    name, group, status (used / rejected), reason, saturated and NaN fractions. A group of 1-2
    frames is remade without those whose level departs from the neighbouring groups'
    (:func:`_neighbour_outliers`; groups of >= 3 judge their frames themselves).
    """
    ok = (inventory["status"] == "ok") & (inventory["type"] == kind)
    groups = sorted(set(inventory["group"][ok]), key=natural_key)
    rules = FrameRules.from_params(params)
    tasks = []
    for group in groups:
        rows = ok & (inventory["group"] == group)
        names = frame_names(inventory[rows])
        T, t = float(inventory["group_temperature"][rows][0]), float(inventory["group_exptime"][rows][0])
        tasks.append(MasterTask(frame_refs(inventory, rows), names, list(inventory["temperature"][rows]), t, kind,
                                master_path(params["output_dir"], kind, T, t), rules, inventory.meta["scale_factor"],
                                inventory.meta["saturation"], bias_source, read_noise_map))
    results = list(run_tiles(make_master, tasks, params, f"{kind} masters"))
    nbytes = sum(r["nbytes"] for r in results)
    for g, excluded in _neighbour_outliers(results, tasks, params["exptime_tolerance"]).items():
        results[g] = make_master(*tasks[g], excluded=excluded)
        nbytes += results[g]["nbytes"]
        if results[g]["path"] is None:
            tasks[g].path.unlink(missing_ok=True)
    records = [(name, group, *rest) for group, result in zip(groups, results) for name, *rest in result["frames"]]
    table = Table(rows=records, names=("frame", "group", "status", "reason", "saturated_fraction", "nan_fraction"),
                  dtype=(str, str, str, str, float, float)) if records else Table()
    folder = product(params, _MASTERS[kind])
    write_table(table, folder / "frames.ecsv")
    raw = sum(r.nbytes for task in tasks for r in task.refs)
    note(bytes_read=int(nbytes), raw_bytes=int(raw), masters=len(list(folder.glob("*.fits"))))
    return table


def frames_table(params: dict, kind: str) -> Table:
    """The frames table written by :func:`make_masters` for ``kind``."""
    return read_table(required(params, _MASTERS[kind], "frames.ecsv"))


def _bias_tile(index, rows, prior, from_residuals: bool, params=None, read_noise=None) -> tuple:
    """Read variance and bias line of one band of rows (a task: runs in a thread or on a dask worker).

    The read variance is pooled from the scatter inside the bias groups, or (``from_residuals``,
    when no group has two frames) taken from the residuals of each pixel's own line fit, with
    its usable masters - 2 degrees of freedom (NaN with none); with ``read_noise`` (a
    :class:`cmoscal.noise.ReadNoisePrior`) it is moderated towards that population before it
    weighs anything. With ``params`` naming a ``prior_model``, every pixel's slope has that model's
    as its prior (:mod:`cmoscal.prior`). Returns a, b, cov, rms, fallback, the read variance and
    its own degrees of freedom per pixel.
    """
    masters = load_masters(index, rows, extensions=("VARIANCE", "NFRAMES", "NSATUR"))
    weights = np.where(masters.valid, masters.nframes, 0)
    pixel_prior = prior_model.bias_prior(params, rows) if params and params["prior_model"] else None

    def moderated(rv, dof):
        return rv if read_noise is None else moderate(rv, dof, read_noise)

    if not from_residuals:
        rv, dof = read_variance(masters.variance, masters.nframes)
        rv = moderated(rv, dof)
        return (*fit_bias(masters.temperature, masters.data, weights, rv, prior, pixel_prior), rv, dof)
    a, b, cov, rms, fallback = fit_bias(masters.temperature, masters.data, weights,
                                        np.ones(masters.data.shape[1:], np.float32), prior)
    dof = np.maximum(np.count_nonzero(weights > 0, axis=0) - 2, 0).astype(np.int16)
    with np.errstate(divide="ignore", invalid="ignore"):
        rv = moderated(np.where(dof > 0, rms.astype(np.float64) ** 2 * (dof + 2) / dof, np.nan), dof)
    if pixel_prior is not None:  # the read variance known, the slope's prior can be weighed against the data
        return (*fit_bias(masters.temperature, masters.data, weights, rv, prior, pixel_prior), rv, dof)
    return a, b, (cov * rv).astype(np.float32), rms, fallback, rv, dof


def _population(index, ny: int, from_residuals: bool) -> tuple[tuple[float, float], ReadNoisePrior]:
    """Over fixed sample rows: the median and robust variance of the bias slope (for pixels that need it) and the
    population of read variances (:func:`cmoscal.noise.read_noise_prior`)."""
    _, b, _, _, fallback, rv, dof = _bias_tile(index, sample_rows(ny), None, from_residuals)
    read_noise = read_noise_prior(rv, dof)
    own = np.isfinite(b) & ~fallback
    if not own.any():
        return (0.0, 0.0), read_noise
    median = float(np.median(b[own]))
    return (median, float((1.4826 * np.median(np.abs(b[own] - median))) ** 2)), read_noise


@stage("bias")
def run(params: dict) -> dict:
    """Master biases, read noise and the bias model, tile by tile.

    Returns the maps (a, b, cov, rms, read_noise, fallback), the masters summary and the
    frames table.
    """
    inventory = inventory_stage.load(params)
    inventory_stage.raise_problems(inventory)
    frames = make_masters(params, inventory, "bias")
    folder = product(params, "bias_masters")
    index = master_index(folder)
    temperatures = sorted({round(h["TEMP"], 1) for _, h in index})
    if len(temperatures) < 2:
        raise CampaignError(f"the bias model needs master biases at >= 2 temperatures, found {len(temperatures)} "
                            "(see bias_grouped_by_temp/frames.ecsv for rejected frames)")
    from_residuals = max(h["NCOMBINE"] for _, h in index) < 2
    if from_residuals and len(index) < 3:
        raise CampaignError(f"every master bias has 1 usable frame and there are {len(index)}: the read noise needs "
                            "a bias group of >= 2 frames or biases at >= 3 temperatures (bias-fit residuals)")
    ny, nx = index[0][1]["NAXIS2"], index[0][1]["NAXIS1"]
    before = prior_model.load(params, (ny, nx))
    prior, read_noise = _population(index, ny, from_residuals)
    if read_noise.dof == 0:
        raise CampaignError("no pixel of the sample rows has a read noise from the master biases (every sample "
                            "saturated or not a number?): see bias_grouped_by_temp/")
    bands = row_bands(ny, len(index) * nx * 64, params)
    tasks = [(index, band, prior, from_residuals, params, read_noise) for band in bands]
    parts = zip(*run_tiles(_bias_tile, tasks, params, "bias model"))
    a, b, cov, rms, fallback, rv, _ = (np.concatenate(p, axis=p[0].ndim - 2) for p in parts)
    T = [h["TEMP"] for _, h in index]
    counts = [h["NCOMBINE"] for _, h in index]
    own_dof = len(index) - 2 if from_residuals else int(sum(n - 1 for n in counts))
    keywords = dict(BIASEQ=(BIAS_EQUATION, "a in DN, b in DN/degC, T in degC"),
                    TCALMIN=(float(min(T)), "degC"), TCALMAX=(float(max(T)), "degC"),
                    NBIASM=(len(index), "master biases"), NBIAS=(int(sum(counts)), "frames"),
                    NBIASMED=(float(np.median(counts)), "median frames per master"),
                    RNDOF=(own_dof + read_noise.dof, "degrees of freedom of the read noise"),
                    RNOWNDOF=(own_dof, "of them from the pixel's own frames"),
                    RNPOPDOF=(read_noise.dof, "of them from the population (moderation)"),
                    RNPOPVAR=(read_noise.variance, "DN2, scale of the population's read variance"),
                    RNTELFRC=(read_noise.telegraph_share, "share of telegraph pixels (read noise prior)"),
                    RNSOURCE=(RESIDUALS if from_residuals else "bias groups", "what the read noise comes from"),
                    BPRIOR=(prior[0], "DN/degC, population slope of fallback pixels"),
                    **(prior_model.lineage(before, prior_model.prior_file(params)) if before is not None else {}))
    inputs = [p.name for p, _ in index]
    maps = {"bias_a_map": (a, "DN", "bias at 0 degC (a of a + b*T)"),
            "bias_b_map": (b, "DN/degC", "bias temperature slope (b of a + b*T)"),
            "bias_a_sigma_map": (np.sqrt(cov[0]), "DN", "1-sigma uncertainty of bias a"),
            "bias_b_sigma_map": (np.sqrt(cov[1]), "DN/degC", "1-sigma uncertainty of bias b"),
            "bias_rms_map": (rms, "DN", "RMS residual of the bias fit over the masters"),
            "read_noise_map": (np.sqrt(rv), "DN", "read noise of one frame, from the " +
                               (RESIDUALS if from_residuals else "bias groups (pooled)") +
                               ", moderated towards the population"),
            "bias_covariance": (cov, "var(a) DN2; var(b); cov(a,b)", "bias parameter covariance planes"),
            "bias_fallback_map": (fallback.astype(np.uint8), "", "1 = fewer than 2 temperatures: population slope")}

    def write(name, data, unit, text):
        header = provenance(fits.Header(), bunit=unit, description=text, inputs=inputs,
                            CAMPAIGN=params["campaign"], **keywords,
                            **reference(params, inventory.meta, name.removesuffix("_map").upper()))
        write_hdus(product(params, "bias_model", f"{name}.fits"), data, header)

    concurrently([functools.partial(write, name, *entry) for name, entry in maps.items()], workers(params))
    note(fallback_pixels=int(fallback.sum()))
    return dict(masters=summarize_masters(folder), frames=frames, a=a, b=b, cov=cov, rms=rms,
                read_noise=np.sqrt(rv), fallback=fallback)


def load(params: dict, rows=slice(None), threads: int = 1) -> dict:
    """Rows of the bias model maps: a, b, cov, read_noise, fallback (read on up to ``threads`` threads), and the
    header of bias_a_map."""
    folder = product(params, "bias_model")

    def get(name):
        return read_image(required(params, "bias_model", f"{name}.fits"), 0, rows)

    a, b, cov, read_noise, fallback = concurrently([
        lambda: get("bias_a_map"), lambda: get("bias_b_map"),
        lambda: read_product(folder / "bias_covariance.fits", 0, rows), lambda: get("read_noise_map"),
        lambda: read_product(folder / "bias_fallback_map.fits", 0, rows)], threads)
    return dict(a=a, b=b, cov=cov, read_noise=read_noise, fallback=fallback,
                header=fits.getheader(folder / "bias_a_map.fits"), paths=dict(
                    a=folder / "bias_a_map.fits", b=folder / "bias_b_map.fits",
                    read_noise=folder / "read_noise_map.fits"))


def masters_path(params: dict) -> Path:
    """The folder of the master biases."""
    return product(params, "bias_masters")
