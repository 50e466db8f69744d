"""The bias model: bias(T) = a + b * T per pixel, by weighted least squares."""

from __future__ import annotations

import numpy as np

from .kernels import fit_lines, kernel_array

__all__ = ["bias_at", "bias_variance_at", "fit_bias"]


def fit_bias(temperature: np.ndarray, masters: np.ndarray, weights: np.ndarray, rv: np.ndarray, prior=None,
             pixel_prior=None):
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
    pixel_prior : (ndarray, ndarray), optional
        Each pixel's slope and its variance from an earlier model of the sensor: a Gaussian prior of the slope
        (the level, which drifts, is fitted freely), so a narrow temperature range keeps the earlier slope and
        its uncertainty. Replaces ``prior``.

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
    M, shape = len(masters), np.shape(masters)[1:]
    a, b, rms = (np.empty(shape, np.float32) for _ in range(3))
    cov, fallback = np.empty((3, *shape), np.float32), np.empty(shape, bool)

    def flat(x):
        return kernel_array(x, (M, *shape)).reshape(M, -1)

    def pixels(x):
        return kernel_array(x, shape, np.float64).reshape(-1)

    mode = 2 if pixel_prior is not None else int(prior is not None)
    slope, variance = pixel_prior if pixel_prior is not None else (prior if prior is not None else (np.nan, np.nan))
    fit_lines(np.asarray(temperature, np.float64), flat(masters), flat(weights), kernel_array(rv, shape).reshape(-1),
              pixels(slope), pixels(variance), mode, a.reshape(-1), b.reshape(-1), cov.reshape(3, -1),
              rms.reshape(-1), fallback.reshape(-1))
    return a, b, cov, rms, fallback


def bias_at(a, b, temperature):
    """Bias [DN] at ``temperature`` [degC]."""
    return a + b * np.float32(temperature)


def bias_variance_at(cov, temperature):
    """Variance [DN^2] of the bias model at ``temperature`` [degC]."""
    T = np.float32(temperature)
    return cov[0] + T * T * cov[1] + 2 * T * cov[2]
