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

import functools
import hashlib
import json
import warnings
from typing import NamedTuple

import numpy as np
from astropy.io import fits
from astropy.table import Table

from .. import __version__
from .. import prior as prior_model
from ..compute import concurrently, row_bands, run_tiles, sample_rows, workers
from ..darkfit import deviance, fit_dark, has_prior, predict, select_form
from ..dq import DQ, DQ_DTYPE, from_fit_flags, has
from ..errors import CampaignError, CampaignWarning
from ..fitsio import read_product, reference, write_hdus, write_table
from ..forms import FORMS, dark_form
from ..inventory import frame_label
from ..kernels import COVARIANCE_PLANES, FIT_FLAGS
from ..masters import GAIN_SUMS, gain_error, inverse_gain, load_masters, master_index
from ..model import CalibrationModel, shared_model
from ..noise import Noise
from ..products import note, product, required, shaping, stage
from . import bias as bias_stage
from . import inventory as inventory_stage

__all__ = ["FitSetup", "TileFit", "compare_models", "fit_inputs", "fit_options", "gain", "gain_source_text",
           "map_writes", "model_id", "run", "sample_inputs"]


def model_id(params: dict, inventory, stage_name: str = "dark_model") -> str:
    """Identifier of the products of ``stage_name``: a hash of the frames used (path, plane, T, t), of exactly
    the parameters that shape them (:func:`cmoscal.products.shaping`) and of the prior model's id: the dark fit's
    id changes with no hot-pixel threshold, the model's (with its DQ) with each."""
    used = inventory[inventory["status"] == "ok"]
    frames = sorted(f"{p}[{q}] {T:.4f} {t:.6g}" for p, q, T, t in zip(used["path"], used["plane"],
                                                                        used["temperature"], used["exposure"]))
    text = json.dumps(dict(frames=frames, params=shaping(params, stage_name), prior=prior_model.parent_id(params),
                           cmoscal=__version__), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


#: the relative error of a measured gain above which the campaign is warned (the shot noise scales with it)
GAIN_ERROR_WARN = 0.05


def gain(params: dict, index, inventory, before: CalibrationModel | None = None) -> tuple[float, str, float]:
    """1/gain [DN/e-], where it comes from (the parameter, the prior model ``before``, the dark frames, the headers,
    or unknown) and the gain's statistical relative error (:func:`cmoscal.masters.gain_error`; 0 for a stated gain,
    NaN where not known).

    A gain measured from the darks to worse than :data:`GAIN_ERROR_WARN` is warned about: the noise model's shot
    noise, hence chi-square and the uncertainties of bright pixels, carry its error (a few in-flight darks measure it
    to ~10-20 %, a ground campaign to ~1 %). The statistical error leaves out the estimator's own bias: on simulated
    campaigns it reads the gain ~1-2 % high on 256x256, ~10-15 % on 48x48 with 2-3 frames.
    """
    if params["gain"] is not None:
        return 1 / params["gain"], f"parameter gain = {params['gain']:g} e-/DN", 0.0
    if before is not None and before.meta.get("GAIN", 0) > 0:
        source = f"prior model {before.meta.get('CAMPAIGN', '')}"
        return 1 / before.meta["GAIN"], source, before.meta.get("GAINERR", np.nan)
    sums = np.sum([[h.get(f"GAINS{k}", 0.0) for k in range(GAIN_SUMS)] for _, h in index], axis=0)
    measured = inverse_gain(sums)
    if measured > 0:
        error = gain_error(sums)
        if not error <= GAIN_ERROR_WARN:
            known = f"to +-{error:.0%} (statistical) only" if np.isfinite(error) else "with an unknown error"
            warnings.warn(f"gain {1 / measured:.3g} e-/DN measured from the darks {known}: the shot noise, chi-square "
                          "and the uncertainties of bright pixels carry that error; set gain if it is known",
                          CampaignWarning, stacklevel=2)
        return measured, "measured: photon transfer of dark frames", error
    ok = inventory["status"] == "ok"
    egain = inventory["egain"][ok & np.isfinite(inventory["egain"])]
    if len(egain):
        value = float(np.median(egain)) * inventory.meta["scale_factor"]
        warnings.warn(f"gain not measurable (no dark group with >= 2 frames and shot noise): {value:.3g} e-/DN "
                      "from EGAIN in the headers", CampaignWarning, stacklevel=2)
        return 1 / value, "EGAIN in the raw headers", np.nan
    warnings.warn("gain unknown (no dark group with >= 2 frames, no EGAIN, no gain parameter): the noise model "
                  "has no shot noise, so chi-square and uncertainties of bright pixels are too optimistic; set gain",
                  CampaignWarning, stacklevel=2)
    return 0.0, "unknown", np.nan


def gain_source_text(meta: dict) -> str:
    """Where a model's gain comes from and, where known, its statistical relative error (GAINSRC, GAINERR)."""
    error = meta.get("GAINERR", np.nan)
    return meta.get("GAINSRC", "unknown source") + (f"; +-{error:.1%} statistical" if error > 0 else "")


def _dimension(params: dict, exptimes) -> bool:
    """True for the 2d model (gamma fitted), False for 1d."""
    several = len(np.unique(np.round(exptimes, 6))) >= 2
    if params["dark_model"] == "2d" and not several:
        raise CampaignError("dark_model: 2d needs darks at >= 2 exposure times; use 1d or auto")
    return params["dark_model"] == "2d" or (params["dark_model"] == "auto" and several)


def fit_inputs(params: dict, index, rows, inv_gain: float, threads: int = 1) -> dict:
    """Master darks of ``rows`` flattened to (M, npix), with their noise model (:class:`~cmoscal.darkfit.Noise`),
    read on up to ``threads`` threads."""
    darks = load_masters(index, rows, extensions=("NFRAMES", "NSATUR"), threads=threads)
    bias = bias_stage.load(params, rows, threads)
    read_var = bias["read_noise"].astype(np.float32).reshape(-1) ** 2
    M = len(darks)

    def flat(stack):
        return stack.reshape(M, -1)

    if params["dark_bias"] == "model":
        noise = Noise(flat(darks.nframes), read_var, inv_gain,
                      bias=(bias["a"].reshape(-1), bias["b"].reshape(-1), bias["cov"].reshape(3, -1)))
    else:
        noise = Noise(flat(darks.nframes), read_var, inv_gain, extra_var=read_var / bias["header"]["NBIASMED"])
    prior = prior_model.dark_prior(params, rows) if params["prior_model"] else None
    return dict(darks=darks, shape=darks.data.shape[1:], signal=flat(darks.data), usable=flat(darks.nsaturated == 0),
                noise=noise, prior=prior)


def fit_options(params: dict, saturation: float, M: int, form: str,
                prior=(np.nan, np.nan, np.nan, 0.0, 0.0, 0.0)) -> dict:
    """Keyword arguments of :func:`cmoscal.darkfit.fit_dark` for the form ``form`` from the parameters."""
    slope = dark_form(form).bounds(params["fit_bounds"])
    top = np.log(10 * saturation) if np.isfinite(saturation) else 60.0
    return dict(max_iterations=params["max_iterations"], min_dof=params["min_dof"],
                full_well=params["full_well_level"] * saturation if np.isfinite(saturation) else 0.0,
                outlier_sigma=params["outlier_sigma"], max_outliers=int(params["max_outlier_fraction"] * M),
                bounds={"lnA": (-np.inf, top), "slope": tuple(slope), "gamma": tuple(params["fit_bounds"]["gamma"])},
                prior=prior)


class FitSetup(NamedTuple):
    """What every tile of the dark fit shares."""

    params: dict
    index: list
    inv_gain: float
    form: str
    fit_gamma: bool
    tmin: float
    options: dict
    change: tuple = ()  # with prior_model: (T, t, the sensor's common change of ln DC there) of the change test


def _fit(inputs, setup: FitSetup, pixels=slice(None)):
    darks = inputs["darks"]
    prior = inputs["prior"]
    return fit_dark(inputs["signal"][:, pixels], inputs["noise"].columns(pixels), darks.temperature, darks.exptime,
                    setup.tmin, setup.form, setup.fit_gamma, usable=inputs["usable"][:, pixels],
                    pixel_prior=None if prior is None else (prior[0][:, pixels], prior[1][:, pixels]), **setup.options)


def _changed(inputs, setup: FitSetup, fit) -> np.ndarray:
    """Pixels whose dark rate at ``setup.change`` moved beyond the sensor's common change by more than
    change_sigma against their prior (:func:`cmoscal.prior.change_z`); none without a prior."""
    if not setup.change:
        return np.zeros(fit.flags.shape, bool)
    theta, information = inputs["prior"]
    rows = inputs["rows"]
    before = shared_model(prior_model.prior_file(setup.params))
    cov = before.dark_cov[:, rows].reshape(len(before.dark_cov), -1)
    z = prior_model.change_z(fit.params, fit.cov, theta[:len(fit.params)], cov, setup.change, setup.tmin, setup.form)
    return has_prior((theta, information)) & ~(fit.flags & FIT_FLAGS["FALLBACK"]).astype(bool) & (
        np.abs(z) > setup.params["change_sigma"])


def _refit_changed(inputs, setup: FitSetup, fit):
    """The fit with the pixels that changed beyond their prior refitted from their own data alone; and those."""
    changed = _changed(inputs, setup, fit)
    pixels = np.flatnonzero(changed)
    if pixels.size:
        own = _fit(dict(inputs, prior=None), setup, pixels)
        for name in ("params", "cov", "bias_cross", "chi2r", "nvalid", "flags"):
            getattr(fit, name)[..., pixels] = getattr(own, name)
        fit.dropped[:, pixels] = own.dropped
    return fit, changed


class TileFit(NamedTuple):
    """The dark fit of one band of rows, as :func:`_fit_tile` returns it."""

    dark: np.ndarray
    cov: np.ndarray
    bias_cross: np.ndarray
    chi2r: np.ndarray
    nvalid: np.ndarray
    flags: np.ndarray
    saturated: np.ndarray
    changed: np.ndarray
    dropped: tuple


def _fit_tile(setup: FitSetup, rows, bias_files) -> TileFit:
    """Fit one band of rows (a task: runs in a thread or on a dask worker)."""
    inputs = dict(fit_inputs(setup.params, setup.index, rows, setup.inv_gain), rows=rows)
    fit, changed = _refit_changed(inputs, setup, _fit(inputs, setup))
    shape = inputs["shape"]
    saturated = inputs["darks"].nsaturated.any(0)
    for path in bias_files:
        saturated |= read_product(path, "NSATUR", rows) > 0
    m, p = np.nonzero(fit.dropped)
    y, x = np.unravel_index(p, shape)
    darks = inputs["darks"]
    model = predict(fit.params[:, p], darks.temperature[m], darks.exptime[m], setup.tmin, setup.form)
    dropped = (m, y + (rows.start or 0), x, inputs["signal"][m, p], model)
    return TileFit(fit.params.reshape((-1,) + shape), fit.cov.reshape((-1,) + shape),
                   fit.bias_cross.reshape((-1,) + shape), fit.chi2r.reshape(shape),
                   fit.nvalid.reshape(shape), fit.flags.reshape(shape), saturated, changed.reshape(shape), dropped)


def _place(maps: tuple, part: TileFit, rows) -> tuple:
    """Put a tile's maps into the whole ``maps`` (dark, cov, bias_cross, chi2r, nvalid, flags, saturated, changed)
    at ``rows``; return its dropped samples."""
    for whole, piece in zip(maps, part):
        whole[..., rows, :] = piece
    return part.dropped


def _fit_tile_in_place(maps: tuple, setup: FitSetup, rows, bias_files) -> tuple:
    """:func:`_fit_tile`, placed into ``maps`` by the worker itself; returns the dropped samples."""
    return _place(maps, _fit_tile(setup, rows, bias_files), rows)


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
    inputs = fit_inputs(params, index, rows, inv_gain, workers(params))
    prior = inputs["prior"]
    return dict(inputs, signal=inputs["signal"][:, pixels], usable=inputs["usable"][:, pixels],
                noise=inputs["noise"].columns(pixels), rows=rows, pixels=pixels,
                prior=None if prior is None else (prior[0][:, pixels], prior[1][:, pixels]))


def _sample_tile(setup: FitSetup, rows):
    """Fit a few rows (a task): the flags, parameters and covariance planes of their pixels."""
    fit = _fit(fit_inputs(setup.params, setup.index, rows, setup.inv_gain), setup)
    return fit.flags, fit.params, fit.cov


#: the share of the fits' scatter a population spread keeps at least, where the fits' own noise hides it
UNRESOLVED_SPREAD = 0.1


def _population(setup: FitSetup) -> tuple:
    """Median and variance of slope, gamma (and floor) over the pixels with a trusted own fit (fixed sample rows).

    The variance is the population's own: the robust variance (MAD as sigma) of the fits less their median
    estimation variance (the fits' noise widens their scatter; a prior of that width would overstate a fallback
    pixel's uncertainty), at least :data:`UNRESOLVED_SPREAD` of the scatter where the fits' noise hides it.
    Returns the prior (slope, gamma, floor, var slope, var gamma, var floor; the floor NaN for a form without one)
    and the share of trusted pixels.
    """
    rows = sample_rows(setup.index[0][1]["NAXIS2"])
    tasks = [(setup, part) for part in np.array_split(rows, max(4, workers(setup.params)))]
    flags, theta, cov = (np.concatenate(p, axis=-1) for p in zip(*run_tiles(_sample_tile, tasks, setup.params)))
    own = (flags & FIT_FLAGS["CONVERGED"]).astype(bool) & ~(flags & FIT_FLAGS["FALLBACK"]).astype(bool)
    if not own.any():
        raise CampaignError("no pixel's dark fit is determined: the darks carry no measurable dark signal "
                            "(or the exposures/temperatures do not constrain the model)")
    planes = (1, 2, 3) if len(theta) == 4 else (1, 2)
    center = [float(np.median(theta[k][own])) for k in planes]
    scatter = [float((1.4826 * np.median(np.abs(theta[k][own] - c))) ** 2) for k, c in zip(planes, center)]
    noise = [float(np.median(cov[COVARIANCE_PLANES.index((k, k))][own])) for k in planes]
    spread = [max(s - n, UNRESOLVED_SPREAD * s) for s, n in zip(scatter, noise)]
    gamma, floor = setup.fit_gamma, len(theta) == 4
    return (center[0], center[1] if gamma else 1.0, center[2] if floor else np.nan, spread[0],
            spread[1] if gamma else 0.0, spread[2] if floor else 0.0), float(own.mean())


def _median_mean(values) -> tuple[float, float]:
    """Median and mean of the finite ``values`` (NaN, NaN when there are none)."""
    values = values[np.isfinite(values)]
    return (float(np.median(values)), float(np.mean(values))) if values.size else (np.nan, np.nan)


def compare_models(params: dict, inputs: dict, saturation: float, tmin: float, fit_gamma: bool) -> Table:
    """Fit every form of :data:`cmoscal.forms.FORMS` to the sample pixels and choose the one the data support.

    The fits run on ``compute.workers`` threads, each form's pixels split so that every thread has a share.

    ``meta['used']`` is the form the model is fitted with: ``dark_form``, or with ``auto`` the
    choice of :func:`cmoscal.darkfit.select_form` (laws by Vuong's test, the floor by a likelihood
    ratio); ``meta['supported']`` that choice, ``meta['verdict']`` its evidence in words,
    ``vuong_z`` and ``floor_z`` the statistics, and ``meta['gamma']`` the likelihood-ratio test
    of 2d against 1d for the form used.
    """
    M, threads = len(inputs["darks"]), workers(params)

    def chi2_of(form, gamma, pixels):
        part = dict(inputs, signal=inputs["signal"][:, pixels], usable=inputs["usable"][:, pixels],
                    noise=inputs["noise"].columns(pixels), prior=None)  # a prior model is a prior of its own form only
        setup = FitSetup(params, [], 0.0, form, gamma, tmin, fit_options(params, saturation, M, form))
        fit = _fit(part, setup)
        own = ~(fit.flags & FIT_FLAGS["FALLBACK"]).astype(bool)
        darks = inputs["darks"]
        return (deviance(part["signal"], part["noise"], darks.temperature, darks.exptime, tmin, form, fit,
                         part["usable"]), fit.chi2r[own])

    def fitted(models):
        """chi2_of each (form, gamma) of ``models``, every thread fitting a share of the pixels."""
        shares = np.array_split(np.arange(inputs["signal"].shape[1]), threads)  # small tasks: forms differ in cost
        parts = concurrently([functools.partial(chi2_of, *model, share) for share in shares for model in models],
                             threads)
        return [tuple(np.concatenate(p) for p in zip(*parts[k::len(models)])) for k in range(len(models))]

    fits = fitted([(form, fit_gamma) for form in FORMS])
    chi2 = {form: total for form, (total, _) in zip(FORMS, fits)}
    choice = select_form(chi2)
    used = choice["form"] if params["dark_form"] == "auto" else params["dark_form"]
    rows = [(form, "2d" if fit_gamma else "1d", *_median_mean(c), int(c.size))
            for form, (_, c) in zip(FORMS, fits)]
    table = Table(rows=rows, names=("form", "dimension", "chi2r_median", "chi2r_mean", "npix"))
    table.meta.update(used=used, requested=params["dark_form"], supported=choice["form"], verdict=choice["verdict"],
                      better=choice["law"]["better"], vuong_z=choice["law"]["z"], floor_z=choice["floor"]["z"])
    if fit_gamma:
        a = fitted([(used, False)])[0][0]
        b = chi2[used]
        both = np.isfinite(a) & np.isfinite(b)
        n = int(both.sum())
        gain = float(np.mean(a[both] - b[both]) - 1) if n else 0.0  # chi-square drop beyond its expectation, 1
        z = float((np.sum(a[both] - b[both]) - n) / np.sqrt(2 * n)) if n else 0.0
        improves = z >= 3 and gain >= 0.1
        table.meta["gamma"] = (f"fitting gamma {'improves' if improves else 'does not significantly improve'} the "
                               f"fit over gamma = 1 (likelihood ratio z = {z:+.1f}, deviance drop {gain + 1:.3g} "
                               f"per pixel against 1 expected, {n} pixels)")
    return table


@stage("dark_model")
def run(params: dict) -> dict:
    """Fit the dark model to every pixel, tile by tile, and write the dark fit (the model with the DQ of the fits).

    Returns the model, the model comparison table, the per-master dropped-sample counts, the
    gain and, with ``prior_model``, the update (:func:`cmoscal.prior.moved`; else None).
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
    before = prior_model.load(params, (ny, nx))
    fit_gamma = _dimension(params, exptimes) if before is None else before.fit_gamma
    tmin = float(temperatures.min()) if before is None else before.tmin
    inv_gain, gain_source, gain_err = gain(params, index, inventory, before)
    sample = sample_inputs(params, index, inv_gain)
    comparison = compare_models(params, sample, saturation, tmin, fit_gamma)
    form = comparison.meta["used"] if before is None else before.form
    if before is not None:
        comparison.meta.update(used=form, verdict=f"{form}: the form of the prior model ({comparison.meta['verdict']})")
    elif form != comparison.meta["supported"]:
        warnings.warn(f"dark_form={form}, but the data support {comparison.meta['supported']}: "
                      f"{comparison.meta['verdict']}", CampaignWarning, stacklevel=2)
    setup = FitSetup(params, index, inv_gain, form, fit_gamma, tmin, fit_options(params, saturation, len(index), form))
    prior, trusted_share = _population(setup)
    setup = setup._replace(options=dict(setup.options, prior=prior))
    if before is not None:
        setup = setup._replace(change=_common_change(sample, setup, temperatures, exptimes))
    floor = FORMS[form].floor
    bands = row_bands(ny, len(index) * nx * 8 * 24, params)
    bias_files = [path for path, _ in bias_index]
    maps = (np.empty((3 + floor, ny, nx)), np.empty((6 + 4 * floor, ny, nx)), np.empty((6 + 2 * floor, ny, nx)),
            np.empty((ny, nx)), np.empty((ny, nx), np.int16), np.empty((ny, nx), np.uint8), np.empty((ny, nx), bool),
            np.empty((ny, nx), bool))
    tasks = [(setup, band, bias_files) for band in bands]
    if params["compute"]["scheduler"] == "threads":  # the workers share the maps: each places its own tile
        dropped_parts = list(run_tiles(_fit_tile_in_place, [(maps, *task) for task in tasks], params, "dark fit"))
    else:  # placed as each tile arrives, while the next ones are fitted
        dropped_parts = [_place(maps, part, band) for band, part in zip(bands, run_tiles(_fit_tile, tasks, params,
                                                                                          "dark fit"))]
    dark, cov, bias_cross, chi2r, nvalid, flags, saturated, changed = maps
    dropped = [np.concatenate([p[k] for p in dropped_parts]) for k in range(5)]
    bias = bias_stage.load(params, threads=workers(params))
    dq = from_fit_flags(flags, FIT_FLAGS)
    dq[saturated] |= DQ_DTYPE(DQ.SATURATED)
    dq[bias["fallback"] > 0] |= DQ_DTYPE(DQ.FALLBACK)
    dq[changed] |= DQ_DTYPE(DQ.CHANGED)
    bias_T = [h["TEMP"] for _, h in bias_index]
    calibrated = [*temperatures, *bias_T, *(before.trange if before is not None else ())]
    model = CalibrationModel(
        bias_a=bias["a"], bias_b=bias["b"], bias_cov=bias["cov"], read_noise=bias["read_noise"], dark=dark,
        dark_cov=cov, dark_bias_cov=bias_cross, chi2r=chi2r, nvalid=nvalid, dq=dq, form=form, fit_gamma=fit_gamma,
        tmin=tmin,
        trange=(float(min(calibrated)), float(max(calibrated))),
        exprange=(float(exptimes.min()), float(exptimes.max())), max_extrapolation=params["max_extrapolation"],
        max_exposure_factor=params["max_exposure_factor"], prior=prior,
        meta=dict(CAMPAIGN=params["campaign"], GAIN=1 / inv_gain if inv_gain > 0 else 0.0, GAINSRC=gain_source[:40],
                  GAINERR=gain_err,
                  SCALEFAC=inventory.meta["scale_factor"], SATURATE=saturation, NBIASM=len(bias_index),
                  NDARKM=len(index), NBIAS=sum(h["NCOMBINE"] for _, h in bias_index),
                  RNSOURCE=bias["header"].get("RNSOURCE", "bias groups"),
                  **{key: bias["header"][key] for key in bias_stage.READ_NOISE_KEYS},
                  NDARK=sum(h["NCOMBINE"] for _, h in index), DQCLASS=False, FORMREQ=params["dark_form"],
                  FORMVZ=comparison.meta["vuong_z"], FLOORZ=comparison.meta["floor_z"]))
    keywords = reference(params, inventory.meta, "CMOSCAL_MODEL")  # (value, comment); the model has the comments
    if before is not None:
        keywords.update(prior_model.lineage(before, prior_model.prior_file(params)))
    model.meta.update({k: v[0] if isinstance(v, tuple) else v for k, v in keywords.items()},
                      MODELID=model_id(params, inventory))
    model.history = [f"input: {p.name}" for p, _ in bias_index + index]
    if before is not None:
        model.history.append(f"prior: {prior_model.prior_file(params)} (MODELID {before.meta.get('MODELID', '?')})")
    per_master = _record_dropped(params, index, dropped, model)
    concurrently([lambda: model.write(product(params, "dark_fit"), workers(params)),
                  lambda: write_table(comparison, product(params, "model_comparison")), *map_writes(params, model)],
                 workers(params))
    update = _write_update(params, before, model, setup.change) if before is not None else None
    note(fallback_pixels=int(np.count_nonzero(flags & FIT_FLAGS["FALLBACK"])), dropped_samples=len(dropped[0]),
         trusted_share_sample=trusted_share)
    return dict(model=model, comparison=comparison, dropped=per_master, inv_gain=inv_gain, gain_source=gain_source,
                prior=prior, update=update)


def _common_change(sample: dict, setup: FitSetup, temperatures, exptimes) -> tuple:
    """Where the change test looks (the darks' mean temperature, their geometric-mean exposure) and the sensor's
    common change of ln DC there since the prior: the median over the sample pixels fitted with their prior."""
    fit = _fit(sample, setup)
    point = (float(np.mean(temperatures)), float(np.exp(np.mean(np.log(exptimes)))), 0.0)
    theta, information = sample["prior"]
    T, t, _ = point
    with np.errstate(divide="ignore", invalid="ignore"):
        change = np.log(predict(fit.params, T, t, setup.tmin, setup.form)) - np.log(
            predict(theta[:len(fit.params)], T, t, setup.tmin, setup.form))
    usable = has_prior((theta, information)) & np.isfinite(change)
    return point[:2] + (float(np.median(change[usable])) if usable.any() else 0.0,)


def _write_update(params: dict, before: CalibrationModel, model: CalibrationModel, change: tuple) -> tuple:
    """Write ``dark_model/prior_update.ecsv`` (what the frames moved, per parameter) and ``prior_update.fits`` (its
    maps); return both (:func:`cmoscal.prior.moved`)."""
    usable = (model.dq & (DQ.DO_NOT_USE | DQ.FALLBACK | DQ.CHANGED)) == 0
    table, maps = prior_model.moved(before, model, usable)
    T, t, shift = change
    table.meta.update(prior=str(prior_model.prior_file(params)), prior_model=before.meta.get("MODELID", ""),
                      prior_campaign=before.meta.get("CAMPAIGN", ""), change_temperature=T, change_exptime=t,
                      common_change_percent=100 * float(np.expm1(shift)), changed_pixels=int(has(model.dq,
                                                                                                  DQ.CHANGED).sum()),
                      change_sigma=params["change_sigma"])
    write_table(table, product(params, "prior_update"))
    header = model.header()
    header["BUNIT"], header["REFTYPE"] = "", "PRIOR_UPDATE"
    header["DESCRIP"] = "per parameter: (now - prior) / prior sigma, and sigma now / prior sigma"
    extensions = [(f"{name.replace(' ', '_').upper()}_{kind}", plane.astype(np.float32), "")
                  for name, (shift_map, ratio) in maps.items()
                  for kind, plane in (("SHIFT", shift_map), ("RATIO", ratio))]
    write_hdus(product(params, "prior_update_maps"), None, header, extensions)
    return table, maps


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


def map_writes(params: dict, model: CalibrationModel) -> list:
    """The writes of the parameter maps of the dark model, one FITS file each (calls to run concurrently: each
    computes its own map)."""
    header = model.header()
    a_unit = "DN/s^gamma" if model.fit_gamma else "DN/s"
    law = dark_form(model.form)

    def sigma(plane):  # planes 00 11 22 (and 33): the variances
        return np.sqrt(model.dark_cov[plane])

    maps = {"dark_A_map": (lambda: np.exp(model.dark[0]), a_unit, "dark A: signal at TMIN and t = 1 s"),
            law.map_name: (lambda: model.dark[1], law.unit, law.meaning),
            "dark_gamma_map": (lambda: model.dark[2], "", "dark exposure exponent gamma" +
                               ("" if model.fit_gamma else " (fixed at 1: 1d model)")),
            "dark_A_sigma_map": (lambda: np.exp(model.dark[0]) * sigma(0), a_unit, "1-sigma uncertainty of dark A"),
            f"dark_{law.slope}_sigma_map": (lambda: sigma(1), law.unit, f"1-sigma uncertainty of dark {law.slope}"),
            "dark_gamma_sigma_map": (lambda: sigma(2), "", "1-sigma uncertainty of dark gamma"),
            "dark_chi2r_map": (lambda: model.chi2r, "", "reduced chi-square of the dark fit")}
    if law.floor:
        maps.update(dark_floor_map=(lambda: model.dark[3], a_unit,
                                    "dark floor C: temperature-independent signal at t = 1 s"),
                    dark_floor_sigma_map=(lambda: sigma(6), a_unit, "1-sigma uncertainty of dark C"))

    def write(name, compute, unit, text):
        h = header.copy()
        h["BUNIT"], h["DESCRIP"], h["REFTYPE"] = unit, text, name.removesuffix("_map").upper()
        write_hdus(product(params, "dark_fit").with_name(f"{name}.fits"), compute().astype(np.float32), h)

    return [functools.partial(write, name, *entry) for name, entry in maps.items()]
