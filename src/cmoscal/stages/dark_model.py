"""Stage 4, dark model: fit DC(T, t) to every pixel; compare the model forms; write the model.

Writes ``dark_model/`` maps (dark_A_map, dark_B_map or dark_Ea_map, dark_gamma_map, their
sigma maps, dark_chi2r_map), ``dark_model/model_comparison.ecsv``, ``dark_model/outliers.fits``
(every master sample dropped as an outlier or on a full-well plateau) and
``dark_model/dark_fit.fits`` (the model with the DQ of the fits, which the hot_pixels stage
classifies into ``calibration_model.fits``). Campaign-wide numbers (gain, population parameters for fallback
pixels) come from the master headers and fixed sample rows, so the result does not depend on
the tiling.
"""

from __future__ import annotations

import hashlib
import json
import warnings

import numpy as np
from astropy.io import fits
from astropy.table import Table

from .. import __version__
from ..compute import concurrently, row_bands, run_tiles, sample_rows
from ..darkfit import compare_forms, fit_dark, predict
from ..dq import DQ, DQ_DTYPE, from_fit_flags
from ..errors import CampaignError, CampaignWarning
from ..fitsio import read_product, reference, write_hdus, write_table
from ..forms import FORMS, dark_form
from ..inventory import frame_label
from ..kernels import FIT_FLAGS
from ..masters import inverse_gain, load_masters, master_index
from ..model import CalibrationModel
from ..noise import Noise
from ..products import note, product, required, shaping, stage
from . import bias as bias_stage
from . import inventory as inventory_stage

__all__ = ["fit_inputs", "fit_options", "gain", "model_id", "run", "sample_inputs"]


def model_id(params: dict, inventory, stage_name: str = "dark_model") -> str:
    """Identifier of the products of ``stage_name``: a hash of the frames used (path, plane, T, t) and of exactly
    the parameters that shape them (:func:`cmoscal.products.shaping`): the dark fit's id changes with no
    hot-pixel threshold, the model's (with its DQ) with each."""
    used = inventory[inventory["status"] == "ok"]
    frames = sorted(f"{p}[{q}] {T:.4f} {t:.6g}" for p, q, T, t in zip(used["path"], used["plane"],
                                                                        used["temperature"], used["exposure"]))
    text = json.dumps(dict(frames=frames, params=shaping(params, stage_name), cmoscal=__version__), sort_keys=True,
                      default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def gain(params: dict, index, inventory) -> tuple[float, str]:
    """1/gain [DN/e-] and where it comes from: the parameter, the dark frames, the headers, or unknown."""
    if params["gain"] is not None:
        return 1 / params["gain"], f"parameter gain = {params['gain']:g} e-/DN"
    measured = inverse_gain(np.sum([[h.get(f"GAINS{k}", 0.0) for k in range(5)] for _, h in index], axis=0))
    if measured > 0:
        return measured, "measured: photon transfer of dark frames"
    ok = inventory["status"] == "ok"
    egain = inventory["egain"][ok & np.isfinite(inventory["egain"])]
    if len(egain):
        value = float(np.median(egain)) * inventory.meta["scale_factor"]
        warnings.warn(f"gain not measurable (no dark group with >= 2 frames and shot noise): {value:.3g} e-/DN "
                      "from EGAIN in the headers", CampaignWarning, stacklevel=2)
        return 1 / value, "EGAIN in the raw headers"
    warnings.warn("gain unknown (no dark group with >= 2 frames, no EGAIN, no gain parameter): the noise model "
                  "has no shot noise, so chi-square and uncertainties of bright pixels are too optimistic; set gain",
                  CampaignWarning, stacklevel=2)
    return 0.0, "unknown"


def _dimension(params: dict, exptimes) -> bool:
    """True for the 2d model (gamma fitted), False for 1d."""
    several = len(np.unique(np.round(exptimes, 6))) >= 2
    if params["dark_model"] == "2d" and not several:
        raise CampaignError("dark_model: 2d needs darks at >= 2 exposure times; use 1d or auto")
    return params["dark_model"] == "2d" or (params["dark_model"] == "auto" and several)


def fit_inputs(params: dict, index, rows, inv_gain: float) -> dict:
    """Master darks of ``rows`` flattened to (M, npix), with their noise model (:class:`~cmoscal.darkfit.Noise`)."""
    darks = load_masters(index, rows, extensions=("NFRAMES", "NSATUR"))
    bias = bias_stage.load(params, rows)
    read_var = bias["read_noise"].astype(np.float32).reshape(-1) ** 2
    M = len(darks)

    def flat(stack):
        return stack.reshape(M, -1)

    if params["dark_bias"] == "model":
        noise = Noise(flat(darks.nframes), read_var, inv_gain,
                      bias=(bias["a"].reshape(-1), bias["b"].reshape(-1), bias["cov"].reshape(3, -1)))
    else:
        noise = Noise(flat(darks.nframes), read_var, inv_gain, extra_var=read_var / bias["header"]["NBIASMED"])
    return dict(darks=darks, shape=darks.data.shape[1:], signal=flat(darks.data), usable=flat(darks.nsaturated == 0),
                noise=noise)


def fit_options(params: dict, saturation: float, M: int, prior=(np.nan, np.nan, 0.0, 0.0)) -> dict:
    """Keyword arguments of :func:`cmoscal.darkfit.fit_dark` from the parameters."""
    slope = dark_form(params["dark_form"]).bounds(params["fit_bounds"])
    top = np.log(10 * saturation) if np.isfinite(saturation) else 60.0
    return dict(max_iterations=params["max_iterations"], min_dof=params["min_dof"],
                full_well=params["full_well_level"] * saturation if np.isfinite(saturation) else 0.0,
                outlier_sigma=params["outlier_sigma"], max_outliers=int(params["max_outlier_fraction"] * M),
                bounds={"lnA": (-np.inf, top), "slope": tuple(slope), "gamma": tuple(params["fit_bounds"]["gamma"])},
                prior=prior)


def _fit(inputs, form, fit_gamma, options, tmin):
    darks = inputs["darks"]
    return fit_dark(inputs["signal"], inputs["noise"], darks.temperature, darks.exptime, tmin, form, fit_gamma,
                    usable=inputs["usable"], **options)


def _fit_tile(params, index, rows, inv_gain, options, tmin, fit_gamma, bias_files) -> tuple:
    """Fit one band of rows (a task: runs in a thread or on a dask worker)."""
    inputs = fit_inputs(params, index, rows, inv_gain)
    fit = _fit(inputs, params["dark_form"], fit_gamma, options, tmin)
    shape = inputs["shape"]
    saturated = inputs["darks"].nsaturated.any(0)
    for path in bias_files:
        saturated |= read_product(path, "NSATUR", rows) > 0
    m, p = np.nonzero(fit.dropped)
    y, x = np.unravel_index(p, shape)
    darks = inputs["darks"]
    model = predict(fit.params[:, p], darks.temperature[m], darks.exptime[m], tmin, params["dark_form"])
    dropped = (m, y + (rows.start or 0), x, inputs["signal"][m, p], model)
    return (fit.params.reshape((3,) + shape), fit.cov.reshape((6,) + shape), fit.chi2r.reshape(shape),
            fit.nvalid.reshape(shape), fit.flags.reshape(shape), saturated, dropped)


def sample_inputs(params: dict, index, inv_gain: float) -> dict:
    """:func:`fit_inputs` on ``loo_pixels`` random pixels of a few random rows (all if 0).

    Adds ``rows`` (the rows read) and ``pixels`` (flat indices within them).
    """
    ny, nx = index[0][1]["NAXIS2"], index[0][1]["NAXIS1"]
    n = params["loo_pixels"]
    rng = np.random.default_rng(params["seed"])
    if n == 0 or n >= ny * nx:
        rows, pixels = slice(None), np.arange(ny * nx)
    else:
        rows = np.sort(rng.choice(ny, min(ny, 4 * -(-n // nx)), replace=False))
        pixels = np.sort(rng.choice(len(rows) * nx, n, replace=False))
    inputs = fit_inputs(params, index, rows, inv_gain)
    return dict(inputs, signal=inputs["signal"][:, pixels], usable=inputs["usable"][:, pixels],
                noise=inputs["noise"].columns(pixels), rows=rows, pixels=pixels)


def _sample_tile(params, index, rows, inv_gain, options, tmin, fit_gamma):
    """Fit a few rows (a task): the flags and parameters of their pixels."""
    fit = _fit(fit_inputs(params, index, rows, inv_gain), params["dark_form"], fit_gamma, options, tmin)
    return fit.flags, fit.params


def _population(params, index, inv_gain, options, tmin, fit_gamma) -> tuple:
    """Median and robust variance of slope and gamma over pixels with a trusted own fit (fixed sample rows).

    Returns the prior (slope, gamma, var slope, var gamma) and the share of trusted pixels.
    """
    rows = sample_rows(index[0][1]["NAXIS2"])
    tasks = [(params, index, part, inv_gain, options, tmin, fit_gamma) for part in np.array_split(rows, 4)]
    flags, theta = (np.concatenate(p, axis=-1) for p in zip(*run_tiles(_sample_tile, tasks, params)))
    own = (flags & FIT_FLAGS["CONVERGED"]).astype(bool) & ~(flags & FIT_FLAGS["FALLBACK"]).astype(bool)
    if not own.any():
        raise CampaignError("no pixel's dark fit is determined: the darks carry no measurable dark signal "
                            "(or the exposures/temperatures do not constrain the model)")
    center = [float(np.median(theta[k][own])) for k in (1, 2)]
    spread = [float((1.4826 * np.median(np.abs(theta[k][own] - c))) ** 2) for k, c in zip((1, 2), center)]
    return (center[0], center[1] if fit_gamma else 1.0, spread[0], spread[1] if fit_gamma else 0.0), float(own.mean())


def compare_models(params: dict, inputs: dict, options: dict, tmin: float, fit_gamma: bool) -> Table:
    """Fit every model (each form of :data:`cmoscal.forms.FORMS`, 2d / 1d) to the sample pixels; test which fits
    better.

    ``meta['verdict']`` says whether the forms differ significantly (Vuong's test on the
    per-pixel chi-square of the dimension in use), ``meta['better']`` names the better form
    ('' when the difference is not significant), ``meta['gamma']`` the likelihood-ratio test
    of 2d against 1d.
    """
    dims = (True, False) if fit_gamma else (False,)
    chi2, rows = {}, []
    for form in FORMS.values():
        for g in dims:
            opts = dict(options, bounds=dict(options["bounds"], slope=form.bounds(params["fit_bounds"])),
                        prior=(np.nan, np.nan, 0.0, 0.0))
            fit = _fit(inputs, form.name, g, opts, tmin)
            own = ~(fit.flags & FIT_FLAGS["FALLBACK"]).astype(bool)
            dof = fit.nvalid - (3 if g else 2)
            chi2[(form.name, g)] = np.where(own & (dof > 0), fit.chi2r * dof, np.nan)
            c = fit.chi2r[own]
            rows.append((form.name, "2d" if g else "1d", float(np.nanmedian(c)), float(np.nanmean(c)), int(own.sum())))
    table = Table(rows=rows, names=("form", "dimension", "chi2r_median", "chi2r_mean", "npix"))
    test = compare_forms({name: chi2[(name, fit_gamma)] for name in FORMS})
    table.meta.update(better=test["better"], verdict=test["verdict"], vuong_z=test["z"], used=params["dark_form"])
    if fit_gamma:
        a, b = chi2[(params["dark_form"], False)], chi2[(params["dark_form"], True)]
        both = np.isfinite(a) & np.isfinite(b)
        n = int(both.sum())
        gain = float(np.mean(a[both] - b[both]) - 1) if n else 0.0  # chi-square drop beyond its expectation, 1
        z = float((np.sum(a[both] - b[both]) - n) / np.sqrt(2 * n)) if n else 0.0
        improves = z >= 3 and gain >= 0.1
        table.meta["gamma"] = (f"fitting gamma {'improves' if improves else 'does not significantly improve'} the "
                               f"fit over gamma = 1 (likelihood ratio z = {z:+.1f}, chi-square drop {gain + 1:.3g} "
                               f"per pixel against 1 expected, {n} pixels)")
    return table


@stage("dark_model")
def run(params: dict) -> dict:
    """Fit the dark model to every pixel, tile by tile, and write the dark fit (the model with the DQ of the fits).

    Returns the model, the model comparison table, the per-master dropped-sample counts and
    the gain.
    """
    inventory = inventory_stage.load(params)
    index = master_index(required(params, "dark_masters"))
    bias_index = master_index(product(params, "bias_masters"))
    ny, nx = index[0][1]["NAXIS2"], index[0][1]["NAXIS1"]
    saturation = float(inventory.meta["saturation"])
    exptimes = np.array([h["EXPTIME"] for _, h in index])
    temperatures = np.array([h["TEMP"] for _, h in index])
    if len(np.unique(np.round(temperatures, 1))) < 2:
        raise CampaignError(f"the dark masters cover 1 temperature ({temperatures[0]:.1f} degC): the dark model "
                            "needs >= 2")
    fit_gamma = _dimension(params, exptimes)
    tmin = float(temperatures.min())
    inv_gain, gain_source = gain(params, index, inventory)
    options = fit_options(params, saturation, len(index))
    prior, trusted_share = _population(params, index, inv_gain, options, tmin, fit_gamma)
    options = dict(options, prior=prior)
    bands = row_bands(ny, len(index) * nx * 8 * 24, params)
    bias_files = [path for path, _ in bias_index]
    tasks = [(params, index, band, inv_gain, options, tmin, fit_gamma, bias_files) for band in bands]
    maps = (np.empty((3, ny, nx)), np.empty((6, ny, nx)), np.empty((ny, nx)), np.empty((ny, nx), np.int16),
            np.empty((ny, nx), np.uint8), np.empty((ny, nx), bool))
    dropped_parts = []
    for band, part in zip(bands, run_tiles(_fit_tile, tasks, params, "dark fit")):
        for whole, piece in zip(maps, part):  # placed as each tile arrives, while the next ones are fitted
            whole[..., band, :] = piece
        dropped_parts.append(part[6])
    dark, cov, chi2r, nvalid, flags, saturated = maps
    dropped = [np.concatenate([p[k] for p in dropped_parts]) for k in range(5)]
    bias = bias_stage.load(params)
    dq = from_fit_flags(flags, FIT_FLAGS)
    dq[saturated] |= DQ_DTYPE(DQ.SATURATED)
    dq[bias["fallback"] > 0] |= DQ_DTYPE(DQ.FALLBACK)
    bias_T = [h["TEMP"] for _, h in bias_index]
    model = CalibrationModel(
        bias_a=bias["a"], bias_b=bias["b"], bias_cov=bias["cov"], read_noise=bias["read_noise"], dark=dark,
        dark_cov=cov, chi2r=chi2r, nvalid=nvalid, dq=dq, form=params["dark_form"], fit_gamma=fit_gamma, tmin=tmin,
        trange=(float(min(temperatures.min(), min(bias_T))), float(max(temperatures.max(), max(bias_T)))),
        exprange=(float(exptimes.min()), float(exptimes.max())), max_extrapolation=params["max_extrapolation"],
        max_exposure_factor=params["max_exposure_factor"], prior=prior,
        meta=dict(CAMPAIGN=params["campaign"], GAIN=1 / inv_gain if inv_gain > 0 else 0.0, GAINSRC=gain_source[:40],
                  SCALEFAC=inventory.meta["scale_factor"], SATURATE=saturation, NBIASM=len(bias_index),
                  NDARKM=len(index), NBIAS=sum(h["NCOMBINE"] for _, h in bias_index), RNDOF=bias["header"]["RNDOF"],
                  RNSOURCE=bias["header"].get("RNSOURCE", "bias groups"),
                  NDARK=sum(h["NCOMBINE"] for _, h in index), DQCLASS=False))
    keywords = reference(params, inventory.meta, "CMOSCAL_MODEL")  # (value, comment); the model has the comments
    model.meta.update({k: v[0] if isinstance(v, tuple) else v for k, v in keywords.items()},
                      MODELID=model_id(params, inventory))
    model.history = [f"input: {p.name}" for p, _ in bias_index + index]
    per_master = _record_dropped(params, index, dropped, model)
    *_, comparison = concurrently([lambda: model.write(product(params, "dark_fit")), lambda: write_maps(params, model),
                                   lambda: compare_models(params, sample_inputs(params, index, inv_gain), options,
                                                          tmin, fit_gamma)], params)
    write_table(comparison, product(params, "model_comparison"))
    if comparison.meta["better"] and comparison.meta["better"] != params["dark_form"]:
        warnings.warn(f"dark_form={params['dark_form']} but {comparison.meta['verdict']}: consider dark_form: "
                      f"{comparison.meta['better']}", CampaignWarning, stacklevel=2)
    note(fallback_pixels=int(np.count_nonzero(flags & FIT_FLAGS["FALLBACK"])), dropped_samples=len(dropped[0]),
         trusted_share_sample=trusted_share)
    return dict(model=model, comparison=comparison, dropped=per_master, inv_gain=inv_gain, gain_source=gain_source,
                prior=prior)


def _record_dropped(params, index, dropped, model: CalibrationModel) -> Table:
    """Write ``dark_model/outliers.fits`` (one row per dropped sample: master, x, y, signal and model
    [DN]; the model's header) and return the counts per master."""
    m, y, x, signal, prediction = dropped
    T = np.array([h["TEMP"] for _, h in index])
    t = np.array([h["EXPTIME"] for _, h in index])
    names = [frame_label("dark", a, b) for a, b in zip(T, t)]
    samples = Table({"MASTER": np.array(names, dtype=str)[m] if len(m) else np.array([], dtype=str),
                     "X": x.astype(np.int32), "Y": y.astype(np.int32), "SIGNAL": signal.astype(np.float32),
                     "MODEL": prediction.astype(np.float32)},
                    descriptions={"MASTER": "master dark", "X": "column (0-based)", "Y": "row (0-based)",
                                  "SIGNAL": "bias-subtracted master value", "MODEL": "the pixel's model there"})
    header = model.header()
    header["BUNIT"], header["REFTYPE"] = "DN", "OUTLIERS"
    header["DESCRIP"] = "master samples the dark fit dropped as outliers"
    table_hdu = fits.table_to_hdu(samples)
    for name, unit in (("X", "pix"), ("Y", "pix"), ("SIGNAL", "DN"), ("MODEL", "DN")):  # astropy writes no DN itself
        table_hdu.columns[name].unit = unit
    write_hdus(product(params, "outliers"), None, header, [("SAMPLES", table_hdu, "")])
    counts = np.bincount(m, minlength=len(index))
    table = Table({"master": names, "temperature": T, "exptime": t, "dropped": counts,
                   "fraction": counts / model.dq.size})
    for row in table[table["fraction"] > 0.5]:
        warnings.warn(f"master {row['master']}: {row['fraction']:.0%} of its pixels are outliers of the model and "
                      "were dropped (light leak or wrong temperature/exposure?)", CampaignWarning, stacklevel=3)
    return table


def write_maps(params: dict, model: CalibrationModel) -> None:
    """The parameter maps of the dark model, one FITS file each."""
    header = model.header()
    sigma = np.sqrt(model.dark_cov[:3])  # planes 00 11 22: the variances
    A = np.exp(model.dark[0])
    a_unit = "DN/s^gamma" if model.fit_gamma else "DN/s"
    law = dark_form(model.form)
    maps = {"dark_A_map": (A, a_unit, "dark A: signal at TMIN and t = 1 s"),
            law.map_name: (model.dark[1], law.unit, law.meaning),
            "dark_gamma_map": (model.dark[2], "", "dark exposure exponent gamma" +
                               ("" if model.fit_gamma else " (fixed at 1: 1d model)")),
            "dark_A_sigma_map": (A * sigma[0], a_unit, "1-sigma uncertainty of dark A"),
            f"dark_{law.slope}_sigma_map": (sigma[1], law.unit, f"1-sigma uncertainty of dark {law.slope}"),
            "dark_gamma_sigma_map": (sigma[2], "", "1-sigma uncertainty of dark gamma"),
            "dark_chi2r_map": (model.chi2r, "", "reduced chi-square of the dark fit")}
    for name, (data, unit, text) in maps.items():
        h = header.copy()
        h["BUNIT"], h["DESCRIP"], h["REFTYPE"] = unit, text, name.removesuffix("_map").upper()
        write_hdus(product(params, "dark_fit").with_name(f"{name}.fits"), data.astype(np.float32), h)
