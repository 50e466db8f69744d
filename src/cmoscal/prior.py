"""An earlier model of the same sensor as the prior of a new campaign's fits (the parameter ``prior_model``).

In orbit a calibration slot holds a few darks within a few degrees: they measure the dark rate and the
bias level there, but not how either changes with temperature. The earlier model (a ground campaign, or
the last in-flight update) knows that per pixel. With ``prior_model`` every pixel's fit takes the earlier
model's own values and covariance as a Gaussian prior of the parameters that describe the *shape* of its
curves: the bias slope b and the dark's slope (B or Ea), gamma and floor C. The bias level a and the dark
amplitude A, which drift as the sensor ages, have no prior. What the new frames determine moves; what
they cannot keeps the prior's value and uncertainty, so predictions away from the new temperatures carry
the prior's error honestly.

A pixel whose dark rate at the campaign's own point changed beyond the sensor's common drift by more than
``change_sigma`` (a new hot pixel, one that annealed) is not held to its past: it is refitted from the new
frames alone and flagged ``CHANGED``. The model records its parent (``PRIORID``, ``PRIORCMP``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table

from .darkfit import predict, predict_variance, prior_information
from .errors import CampaignError
from .forms import dark_form
from .model import CalibrationModel, shared_model, usable_model
from .products import MODEL_FILE, out

__all__ = ["bias_prior", "change_z", "dark_prior", "lineage", "load", "moved", "parent_id", "prior_file"]


def prior_file(params: dict) -> Path | None:
    """The model file of ``prior_model`` (given as an output_dir or the file); None when it is not set."""
    path = params["prior_model"]
    if not path:
        return None
    path = Path(path)
    path = path / MODEL_FILE if path.is_dir() else path
    if path.resolve() == (out(params) / MODEL_FILE).resolve():
        raise CampaignError("prior_model: it is this campaign's own model; give an earlier campaign's output_dir")
    return path


def load(params: dict, shape: tuple) -> CalibrationModel | None:
    """The prior model, checked: current (its ledger), classified, and of a sensor of ``shape``; None without one."""
    path = prior_file(params)
    if path is None:
        return None
    model = usable_model(path, "prior_model")
    if model.dq.shape != tuple(shape):
        raise CampaignError(f"prior_model: {path} is {'x'.join(map(str, model.dq.shape))} pixels, these frames "
                            f"{'x'.join(map(str, shape))}: not the same sensor and readout")
    return model


def parent_id(params: dict) -> str:
    """MODELID of the prior model ("" without one): the model id of a campaign fitted with it hashes it."""
    path = prior_file(params)
    return "" if path is None else str(fits.getval(path, "MODELID", ext=0, default=""))


def lineage(model: CalibrationModel, path: Path) -> dict:
    """Header keywords naming the parent model: PRIORID (its MODELID), PRIORCMP (campaign) and PRIORFIL (file)."""
    return dict(PRIORID=model.meta.get("MODELID", ""), PRIORCMP=str(model.meta.get("CAMPAIGN", ""))[:60],
                PRIORFIL=str(path)[-40:])


def dark_prior(params: dict, rows=slice(None)) -> tuple:
    """The dark prior of ``rows`` (:func:`cmoscal.darkfit.prior_information`, flattened to pixels)."""
    model = shared_model(prior_file(params))
    theta, information = prior_information(model.dark[:, rows], model.dark_cov[:, rows], model.chi2r[rows],
                                           model.fit_gamma)
    return theta.reshape(4, -1), information.reshape(10, -1)


def bias_prior(params: dict, rows=slice(None)) -> tuple:
    """Each pixel's bias slope b and its variance in the prior model, for ``rows``."""
    model = shared_model(prior_file(params))
    return model.bias_b[rows], model.bias_cov[1][rows]


def change_z(params_now, cov_now, params_before, cov_before, point: tuple, tmin: float, form: str):
    """z of each pixel's change of ln DC at ``point`` = (T, t, common shift): (ln DC now - ln DC before - shift) /
    its sigma, the two models' variances added."""
    T, t, shift = point
    now, before = (predict(p, T, t, tmin, form) for p in (params_now, params_before))
    with np.errstate(divide="ignore", invalid="ignore"):
        variance = (predict_variance(params_now, cov_now, T, t, tmin, form) / now ** 2
                    + predict_variance(params_before, cov_before, T, t, tmin, form) / before ** 2)
        return (np.log(now) - np.log(before) - shift) / np.sqrt(variance)


def moved(prior: CalibrationModel, model: CalibrationModel, usable: np.ndarray) -> tuple[Table, dict]:
    """What the new frames moved, per parameter: each pixel's change in units of the prior's sigma and its
    uncertainty relative to the prior's (1: the frames added nothing; 0: they determine it alone).

    Returns the summary (one row per parameter over the ``usable`` pixels: median change, median |change| /
    prior sigma, share moved beyond 1 and 3 prior sigma, median sigma ratio) and the per-parameter maps
    ``name -> (change / prior sigma, sigma ratio)``.
    """
    law = dark_form(model.form)
    names = [("bias a", "DN", prior.bias_a, prior.bias_cov[0], model.bias_a, model.bias_cov[0]),
             ("bias b", "DN/degC", prior.bias_b, prior.bias_cov[1], model.bias_b, model.bias_cov[1]),
             ("ln A", "", prior.dark[0], prior.dark_cov[0], model.dark[0], model.dark_cov[0]),
             (law.slope, law.unit, prior.dark[1], prior.dark_cov[1], model.dark[1], model.dark_cov[1])]
    if model.fit_gamma:
        names.append(("gamma", "", prior.dark[2], prior.dark_cov[2], model.dark[2], model.dark_cov[2]))
    if law.floor:
        names.append(("floor C", "DN/s^gamma" if model.fit_gamma else "DN/s", prior.dark[3], prior.dark_cov[6],
                      model.dark[3], model.dark_cov[6]))
    rows, maps = [], {}
    for name, unit, before, var_before, now, var_now in names:
        with np.errstate(divide="ignore", invalid="ignore"):
            shift = (now - before) / np.sqrt(var_before)
            ratio = np.sqrt(var_now / var_before)
        ok = usable & np.isfinite(shift) & np.isfinite(ratio)
        change = (now - before)[ok]
        rows.append((name, unit, int(ok.sum()), *(float(f(v)) if v.size else np.nan for f, v in (
            (np.median, change), (np.median, np.abs(shift[ok])), (np.mean, np.abs(shift[ok]) > 1),
            (np.mean, np.abs(shift[ok]) > 3), (np.median, ratio[ok])))))
        maps[name] = (np.where(ok, shift, np.nan), np.where(ok, ratio, np.nan))
    table = Table(rows=rows, names=("parameter", "unit", "pixels", "median_change", "median_abs_shift_sigma",
                                    "moved_1sigma", "moved_3sigma", "sigma_ratio"))
    for name in table.colnames[3:]:
        table[name].format = ".4g"
    return table, maps
