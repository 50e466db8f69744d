"""Evaluation: synthetic frames against real masters, in units of the noise.

The key figure is the residual RMS divided by the master's expected noise
(``resid_noise``): 1.0 means the model is as good as the data allow. In-sample a
model with p parameters fitted to M masters should reach sqrt(1 - p/M); on held-out
masters (leave-one-group-out) about 1.
"""

from __future__ import annotations

import warnings

import numpy as np

from .bias import bias_at, bias_variance_at, fit_bias
from .darkfit import fit_dark, predict, predict_variance

__all__ = ["downsample", "leave_one_out_bias", "leave_one_out_dark", "residual_stats"]


PREVIEW_PIXELS = 384  # longest side of the preview maps kept for figures


def downsample(image: np.ndarray, max_pixels: int = PREVIEW_PIXELS) -> np.ndarray:
    """Block-average ``image`` so its longest side is at most ``max_pixels`` (NaN-aware)."""
    image = np.asarray(image, dtype=np.float32)
    factor = int(np.ceil(max(image.shape) / max_pixels))
    if factor <= 1:
        return image
    ny, nx = (s // factor * factor for s in image.shape)
    blocks = image[:ny, :nx].reshape(ny // factor, factor, nx // factor, factor)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN blocks stay NaN
        return np.nanmean(blocks, axis=(1, 3))


def _summary(values: np.ndarray, prefix: str) -> dict:
    v = values[np.isfinite(values)]
    if not v.size:
        return {f"{prefix}_mean": np.nan, f"{prefix}_median": np.nan, f"{prefix}_std": np.nan}
    return {f"{prefix}_mean": float(v.mean()), f"{prefix}_median": float(np.median(v)), f"{prefix}_std": float(v.std())}


def residual_stats(synthetic, master, expected_var, good, snr_min: float):
    """Compare a synthetic frame with a master.

    Parameters
    ----------
    synthetic, master : ndarray
        Frames [DN].
    expected_var : ndarray
        Expected variance of the master [DN^2] (noise model).
    good : ndarray of bool
        Pixels the summary uses.
    snr_min : float
        MAPE only where |master| > snr_min * expected noise.

    Returns
    -------
    mae : ndarray
        |synthetic - master| [DN].
    mape : ndarray
        100 |synthetic - master| / |master| [%], NaN where the signal is not significant.
    stats : dict
        mae_mean/median/std, mape_mean/median/std, mape_share (share of good pixels with
        a MAPE), resid_noise (RMS of residual / expected noise).
    """
    resid = synthetic - master
    sigma = np.sqrt(expected_var)
    mae = np.abs(resid)
    significant = np.abs(master) > snr_min * sigma
    with np.errstate(divide="ignore", invalid="ignore"):
        mape = np.where(significant, 100 * mae / np.abs(master), np.nan)
        z = resid / sigma
    use = good & np.isfinite(z)
    stats = {**_summary(mae[use], "mae"), **_summary(mape[use], "mape"),
             "mape_share": float(np.mean(significant[use])) if use.any() else np.nan,
             "resid_noise": float(np.sqrt(np.mean(z[use] ** 2))) if use.any() else np.nan}
    return mae.astype(np.float32), mape.astype(np.float32), stats


def leave_one_out_dark(signal, valid, base_var, shot_scale, temperature, exptime, tmin, form, fit_gamma,
                       max_iterations=50, min_dof=1):
    """Refit without each master in turn and predict it.

    Arguments as :func:`cmoscal.darkfit.fit_dark` (arrays of shape (M, npix)).

    Returns
    -------
    z : ndarray, shape (M, npix)
        (master - prediction) / sqrt(master noise + prediction variance); NaN where unusable.
    abs_error : ndarray, shape (M, npix)
        |master - prediction| [DN].
    """
    M = len(temperature)
    z = np.full(signal.shape, np.nan)
    abs_error = np.full(signal.shape, np.nan)
    for g in range(M):
        keep = np.arange(M) != g
        fit = fit_dark(signal[keep], valid[keep], base_var[keep], shot_scale[keep], temperature[keep],
                       exptime[keep], tmin, form, fit_gamma, max_iterations, min_dof)
        pred = predict(fit.params, temperature[g], exptime[g], tmin, form)
        var = base_var[g] + shot_scale[g] * pred + predict_variance(fit.params, fit.cov, temperature[g],
                                                                   exptime[g], tmin, form)
        resid = np.where(valid[g], signal[g] - pred, np.nan)
        z[g] = resid / np.sqrt(var)
        abs_error[g] = np.abs(resid)
    return z, abs_error


def leave_one_out_bias(temperature, masters, weights, rv):
    """Refit the bias line without each master in turn and predict it.

    Returns ``z`` (residual over sqrt(master variance + prediction variance)) and the
    absolute error [DN], both of shape (M, ...).
    """
    M = len(temperature)
    z = np.full(masters.shape, np.nan)
    abs_error = np.full(masters.shape, np.nan)
    for g in range(M):
        keep = np.arange(M) != g
        a, b, cov, _ = fit_bias(temperature[keep], masters[keep], weights[keep], rv)
        T = temperature[g]
        resid = masters[g] - bias_at(a, b, T)
        with np.errstate(divide="ignore", invalid="ignore"):
            var = rv / weights[g] + bias_variance_at(cov, T)
            z[g] = np.where(weights[g] > 0, resid / np.sqrt(var), np.nan)
        abs_error[g] = np.abs(resid)
    return z, abs_error
