"""Evaluation: synthetic frames against real masters, in units of the noise.

The key figure is the residual RMS divided by the master's expected noise (``resid_noise``):
1.0 means the model is as good as the data allow. In-sample a model absorbs part of each
master's noise, so a group of leverage h reaches sqrt(1 - h) (on average sqrt(1 - p/M) for p
parameters and M masters; a master sharing the bias model's error with the prediction keeps
more, :meth:`cmoscal.model.CalibrationModel.fitted_prediction`); on held-out masters
(leave-one-group-out) about 1.
"""

from __future__ import annotations

import numpy as np

from .bias import bias_at, bias_variance_at, fit_bias
from .darkfit import fit_dark, predict, predict_bias_covariance, predict_variance
from .kernels import COMPARE_SUMS, block_mean, compare_frames, kernel_array

__all__ = ["compare", "downsample", "held_out_dark", "leave_one_out_bias"]


PREVIEW_PIXELS = 384  # longest side of the preview maps kept for figures


def _block_size(shape, max_pixels: int) -> int:
    """Side of the blocks that bring the longest side of ``shape`` to at most ``max_pixels``."""
    return max(int(np.ceil(max(shape) / max_pixels)), 1)


def downsample(image: np.ndarray, max_pixels: int = PREVIEW_PIXELS) -> np.ndarray:
    """Block-average ``image`` so its longest side is at most ``max_pixels`` (NaN-aware)."""
    image = np.asarray(image, dtype=np.float32)
    factor = _block_size(image.shape, max_pixels)
    if factor == 1:
        return image
    out = np.empty((image.shape[0] // factor, image.shape[1] // factor), np.float32)
    block_mean(image, factor, out)
    return out


def _median(values: np.ndarray) -> float:
    """Median of the finite ``values`` (NaN if none)."""
    v = values[np.isfinite(values)]
    return float(np.median(v)) if v.size else np.nan


def compare(synthetic, master, fitted_var, noise, temperature: float, good, hot, snr_min: float,
            preview: int = PREVIEW_PIXELS):
    """Compare a synthetic frame with a master, over normal and over hot pixels, in one compiled pass.

    Parameters
    ----------
    synthetic, master : ndarray, shape (ny, nx)
        Frames [DN].
    fitted_var : ndarray, shape (ny, nx)
        Variance [DN^2] the model's fit takes out of the master's residual (in-sample: the prediction's variance
        for a fit to the master's own noise; :meth:`cmoscal.model.CalibrationModel.fitted_prediction` when the master
        shares the bias model's error with the prediction); 0 for a master the model never saw.
    noise : Noise
        Noise model of the master (its master 0) at ``temperature``; no ``extra_var``.
    good, hot : ndarray of bool
        Pixels the summary uses; the hot pixels whose residual / noise is reported apart.
    snr_min : float
        MAPE only where |master| > snr_min * expected noise.
    preview : int
        Longest side of the previews.

    Returns
    -------
    mae : ndarray
        |synthetic - master| [DN].
    mape : ndarray
        100 |synthetic - master| / |master| [%], NaN where the signal is not significant.
    stats : dict
        mae_mean/median/std and mape_mean/median/std over good pixels (medians of a 1-in-4 sample
        on large sensors), mape_share (share of good pixels with a MAPE), resid_noise (RMS of residual /
        expected noise), resid_noise_expected (its in-sample expectation, the RMS of sqrt(1 - fitted_var /
        noise variance): sqrt(1 - leverage) for a fit to the master's own noise),
        resid_noise_hot, resid_mean and resid_mean_hot (mean of (synthetic - master) / expected noise: a
        systematic departure of the model at this group), npix.
    previews : tuple of ndarray
        Block means (as :func:`downsample`) of master, synthetic, mae, mape and z = (synthetic - master)
        / expected noise over ``good``, z scaled by the block size so that pure noise keeps sigma 1.
    """
    if noise.extra_var is not None:
        raise ValueError("compare: a noise model with extra_var is not supported")
    shape = np.shape(master)
    factor = _block_size(shape, preview)
    mae, mape = np.empty(shape, np.float32), np.empty(shape, np.float32)
    previews = np.empty((5, shape[0] // factor, shape[1] // factor), np.float32)
    use = kernel_array(good, shape, bool)
    count = np.count_nonzero(use)
    step = 4 if count > 1 << 20 else 1  # the medians: 1 in 4 of the good pixels on large sensors
    sample = np.empty((2, -(-count // step)), np.float32)
    nframes, read_var, cov = noise.planes(0, shape)
    sums = compare_frames(kernel_array(master, shape), kernel_array(synthetic, shape),
                          kernel_array(fitted_var, shape), nframes, read_var, noise.inv_gain, cov,
                          float(temperature), noise.bias is not None, use, kernel_array(hot, shape, bool),
                          float(snr_min), factor, step, mae, mape, previews, sample)
    s, hot_sums = (dict(zip(COMPARE_SUMS, row)) for row in sums)
    n, nsig = s["pixels"], s["significant"]
    with np.errstate(invalid="ignore", divide="ignore"):
        stats = {"mae_mean": s["mae"] / n, "mae_median": _median(sample[0]),
                 "mae_std": np.sqrt(max(s["mae2"] / n - (s["mae"] / n) ** 2, 0)),
                 "mape_mean": s["mape"] / nsig, "mape_median": _median(sample[1]),
                 "mape_std": np.sqrt(max(s["mape2"] / nsig - (s["mape"] / nsig) ** 2, 0)) if nsig else np.nan,
                 "mape_share": nsig / n, "resid_noise": np.sqrt(s["z2"] / n),
                 "resid_noise_expected": np.sqrt(s["expected_z2"] / n),
                 "resid_noise_hot": np.sqrt(hot_sums["z2"] / hot_sums["pixels"]), "resid_mean": s["z"] / n,
                 "resid_mean_hot": hot_sums["z"] / hot_sums["pixels"], "npix": int(n)}
    previews[4] *= factor
    return mae, mape, {k: float(v) for k, v in stats.items()}, tuple(previews)


def held_out_dark(g, signal, usable, noise, temperature, exptime, tmin, form, fit_gamma, fit_options: dict):
    """Refit without master ``g`` and predict it (a task: a thread or a dask worker).

    Arguments as :func:`cmoscal.darkfit.fit_dark` (``signal`` of shape (M, npix), its ``noise``
    model); ``fit_options`` are its keyword arguments. A group is only predicted when the others
    still span two temperatures (and, for a 2d model, two exposures); otherwise the result is NaN.

    Returns
    -------
    z : ndarray, shape (npix,)
        (master - prediction) / sqrt(master noise, with the bias model's + prediction variance + twice the
        prediction's covariance with that bias model); NaN where unusable.
    abs_error : ndarray, shape (npix,)
        |master - prediction| [DN].
    """
    keep = np.arange(len(temperature)) != g
    nan = np.full(signal.shape[1], np.nan)
    if len(np.unique(np.round(temperature[keep], 1))) < 2 or (
            fit_gamma and len(np.unique(np.round(exptime[keep], 6))) < 2):
        return nan, nan
    held = usable.copy()
    held[g] = False
    fit = fit_dark(signal, noise, temperature, exptime, tmin, form, fit_gamma, usable=held, **fit_options)
    pred = predict(fit.params, temperature[g], exptime[g], tmin, form)
    var = (noise.variance(g, pred, temperature[g])
           + predict_variance(fit.params, fit.cov, temperature[g], exptime[g], tmin, form)
           + 2 * predict_bias_covariance(fit.params, fit.bias_cross, temperature[g], exptime[g], tmin, form))
    resid = np.where(usable[g] & (noise.nframes[g] > 0), signal[g] - pred, np.nan)
    return resid / np.sqrt(var), np.abs(resid)


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
