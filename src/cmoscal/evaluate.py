"""Evaluation: synthetic frames against real masters, in units of the noise.

The key figure is the residual RMS divided by the master's expected noise (``resid_noise``):
1.0 means the model is as good as the data allow. In-sample a model absorbs part of each
master's noise, so a group of leverage h reaches sqrt(1 - h) (on average sqrt(1 - p/M) for p
parameters and M masters); on held-out masters (leave-one-group-out) about 1.
"""

from __future__ import annotations

import warnings

import numpy as np

from .bias import bias_at, bias_variance_at, fit_bias
from .darkfit import fit_dark, predict, predict_variance
from .kernels import residual_maps

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


def residual_stats(synthetic, master, expected_var, prediction_var, good, snr_min: float):
    """Compare a synthetic frame with a master.

    Parameters
    ----------
    synthetic, master : ndarray
        Frames [DN].
    expected_var, prediction_var : ndarray
        Expected variance of the master (noise model) and of the prediction [DN^2].
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
        mae_mean/median/std, mape_mean/median/std, mape_share (share of good pixels with a MAPE),
        resid_noise (RMS of residual / expected noise), resid_noise_expected (its in-sample
        expectation sqrt(1 - leverage)), npix.
    """
    shape = np.shape(master)
    f32 = lambda a: np.ascontiguousarray(np.broadcast_to(a, shape), dtype=np.float32).reshape(-1)  # noqa: E731
    mae, mape = np.empty(int(np.prod(shape)), np.float32), np.empty(int(np.prod(shape)), np.float32)
    use = np.ascontiguousarray(np.broadcast_to(good, shape)).reshape(-1)
    n, sz2, slev, nsig = residual_maps(f32(master), f32(synthetic), f32(expected_var), f32(prediction_var), use,
                                       float(snr_min), mae, mape)
    stats = {**_summary(mae[use], "mae"), **_summary(mape[use], "mape"),
             "mape_share": nsig / n if n else np.nan, "resid_noise": float(np.sqrt(sz2 / n)) if n else np.nan,
             "resid_noise_expected": float(np.sqrt(slev / n)) if n else np.nan, "npix": int(n)}
    return mae.reshape(shape), mape.reshape(shape), stats


def leave_one_out_dark(signal, valid, base_var, shot_scale, temperature, exptime, tmin, form, fit_gamma,
                       fit_options: dict):
    """Refit without each master in turn and predict it.

    Arguments as :func:`cmoscal.darkfit.fit_dark` (arrays of shape (M, npix)); ``fit_options``
    are its keyword arguments. A group is only predicted when the others still span two
    temperatures (and, for a 2d model, two exposures); otherwise its row is NaN.

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
        if len(np.unique(np.round(temperature[keep], 1))) < 2 or (
                fit_gamma and len(np.unique(np.round(exptime[keep], 6))) < 2):
            continue
        held = valid.copy()
        held[g] = False
        fit = fit_dark(signal, held, base_var, shot_scale, temperature, exptime, tmin, form, fit_gamma, **fit_options)
        pred = predict(fit.params, temperature[g], exptime[g], tmin, form)
        var = base_var[g] + shot_scale[g] * pred + predict_variance(fit.params, fit.cov, temperature[g], exptime[g],
                                                                   tmin, form)
        resid = np.where(valid[g], signal[g] - pred, np.nan)
        z[g] = resid / np.sqrt(var)
        abs_error[g] = np.abs(resid)
    return z, abs_error


def leave_one_out_bias(temperature, masters, weights, rv):
    """Refit the bias line without each master in turn and predict it.

    Needs masters at >= 3 temperatures (else every row is NaN). Returns ``z`` (residual over
    sqrt(master variance + prediction variance)) and the absolute error [DN], both (M, ...).
    """
    M = len(temperature)
    z = np.full(masters.shape, np.nan)
    abs_error = np.full(masters.shape, np.nan)
    if len(np.unique(np.round(temperature, 1))) < 3:
        return z, abs_error
    for g in range(M):
        keep = np.arange(M) != g
        a, b, cov, _, _ = fit_bias(temperature[keep], masters[keep], weights[keep], rv)
        T = temperature[g]
        resid = masters[g] - bias_at(a, b, T)
        with np.errstate(divide="ignore", invalid="ignore"):
            var = rv / weights[g] + bias_variance_at(cov, T)
            z[g] = np.where(weights[g] > 0, resid / np.sqrt(var), np.nan)
        abs_error[g] = np.abs(resid)
    return z, abs_error
