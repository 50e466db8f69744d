"""The bias model: bias(T) = a + b * T per pixel, by weighted least squares."""

from __future__ import annotations

import numpy as np

__all__ = ["bias_at", "bias_variance_at", "fit_bias"]


def fit_bias(temperature: np.ndarray, masters: np.ndarray, weights: np.ndarray, rv: np.ndarray, prior=None):
    """Fit a straight line in temperature to the master biases of every pixel at once.

    Parameters
    ----------
    temperature : ndarray, shape (M,)
        Master temperatures [degC].
    masters : ndarray, shape (M, ...)
        Master biases [DN].
    weights : ndarray, shape (M, ...)
        Frames per master (0 for unusable samples): the master variance is RV / n.
    rv : ndarray, shape (...)
        Read variance of one frame [DN^2].
    prior : (float, float), optional
        Population slope [DN/degC] and its variance: a pixel whose usable masters span fewer
        than two temperatures gets this slope (and its own level); NaN without it.

    Returns
    -------
    a : ndarray
        Bias at 0 degC [DN].
    b : ndarray
        Slope [DN/degC].
    cov : ndarray, shape (3, ...)
        var(a), var(b), cov(a, b).
    rms : ndarray
        Residual RMS over the masters [DN].
    fallback : ndarray of bool
        Pixels that got the population slope.
    """
    T = temperature.reshape((-1,) + (1,) * (masters.ndim - 1)).astype(np.float64)
    w = np.where(np.isfinite(masters), weights, 0).astype(np.float64)
    y = np.where(w > 0, masters, 0).astype(np.float64)
    rv = rv.astype(np.float64)
    s0, s1, s2 = w.sum(0), (w * T).sum(0), (w * T * T).sum(0)
    sy, sty = (w * y).sum(0), (w * T * y).sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        det = s0 * s2 - s1 * s1
        spread = det > 1e-9 * s0 * s0  # >= 2 distinct temperatures
        b = np.where(spread, (s0 * sty - s1 * sy) / det, np.nan)
        a = (sy - b * s1) / s0
        cov = np.stack([rv * s2 / det, rv * s0 / det, -rv * s1 / det])
        fallback = ~spread & (s0 > 0)
        if prior is not None and fallback.any():
            slope, var_slope = prior
            mean_T = s1 / s0
            b = np.where(fallback, slope, b)
            a = np.where(fallback, sy / s0 - slope * mean_T, a)
            cov = np.where(fallback, np.stack([rv / s0 + mean_T ** 2 * var_slope, np.full(s0.shape, var_slope),
                                               -mean_T * var_slope]), cov)
        resid = np.where(w > 0, y - a - b * T, 0)
        rms = np.sqrt(np.sum(resid**2, 0) / np.sum(w > 0, 0))
    return a.astype(np.float32), b.astype(np.float32), cov.astype(np.float32), rms.astype(np.float32), fallback


def bias_at(a, b, temperature):
    """Bias [DN] at ``temperature`` [degC]."""
    return a + b * np.float32(temperature)


def bias_variance_at(cov, temperature):
    """Variance [DN^2] of the bias model at ``temperature`` [degC]."""
    T = np.float32(temperature)
    return cov[0] + T * T * cov[1] + 2 * T * cov[2]
