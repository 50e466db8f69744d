"""Pixel classification: the DQ bitmask.

Hot and warm pixels are outliers of the *log* dark rate, which is what a sensor's population
looks like (log-normal): at both ends of the calibrated range (a pixel hot anywhere in the
range is hot, and hot pixels often have a lower activation, so they stand out most where it
is cold), in units of the population's robust spread combined with the pixel's own
measurement error. Optionally an absolute rate threshold, as instrument teams use.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .dq import DQ, DQ_DTYPE, has

__all__ = ["Thresholds", "classify_pixels", "log_rate_significance", "robust_threshold"]

def robust_threshold(values: np.ndarray, k: float) -> float:
    """median + k * 1.4826 * MAD of the finite ``values``."""
    v = values[np.isfinite(values)]
    median = np.median(v)
    return float(median + k * 1.4826 * np.median(np.abs(v - median)))


def log_rate_significance(ln_rate: np.ndarray, var_ln_rate: np.ndarray, usable: np.ndarray):
    """How far each pixel's log dark rate lies above the population, in sigma.

    sigma^2 = s_pop^2 + var_pixel: s_pop is the population's intrinsic robust spread (the
    observed 1.4826 MAD with the typical measurement variance removed), var_pixel the pixel's
    own measurement variance, so a poorly measured pixel needs a larger excess.

    Returns
    -------
    z : ndarray
    stats : dict
        median, observed and intrinsic spread of the log rate.
    """
    v = ln_rate[usable & np.isfinite(ln_rate) & np.isfinite(var_ln_rate)]
    median = float(np.median(v))
    observed = float(1.4826 * np.median(np.abs(v - median)))
    typical = float(np.median(var_ln_rate[usable & np.isfinite(var_ln_rate)]))
    intrinsic = float(np.sqrt(max(observed ** 2 - typical, (0.1 * observed) ** 2)))
    with np.errstate(invalid="ignore"):
        z = (ln_rate - median) / np.sqrt(intrinsic ** 2 + var_ln_rate)
    return z, dict(median=median, observed=observed, intrinsic=intrinsic, typical_error=float(np.sqrt(typical)))


@dataclass(frozen=True)
class Thresholds:
    """The classification thresholds: the parameters of the same names."""

    warm_sigma: float
    hot_sigma: float
    noisy_sigma: float
    poor_fit_chi2r: float
    unreliable_dark_error: float

    @classmethod
    def from_params(cls, params: dict) -> Thresholds:
        """The thresholds of a campaign's parameters."""
        return cls(**{name: params[name] for name in cls.__dataclass_fields__})


def classify_pixels(z_ends, rate_error, rate_ref, read_noise, chi2r, fit_dq, limits: Thresholds, rate_min=None):
    """Return the DQ word (:mod:`cmoscal.dq`) and the thresholds used.

    Parameters
    ----------
    z_ends : ndarray, shape (2, ...)
        :func:`log_rate_significance` at the coldest and warmest calibrated temperature.
    rate_error : ndarray
        Relative 1-sigma error of the dark rate at the reference temperature.
    rate_ref : ndarray
        Dark rate [DN/s] at the reference temperature (for ``rate_min``).
    read_noise : ndarray
        Per-pixel read noise [DN].
    chi2r : ndarray
        Reduced chi-square of the dark fit.
    fit_dq : ndarray
        Bits already set by the fits (SATURATED, FEW_SAMPLES, FALLBACK, ...).
    limits : Thresholds
        warm_sigma, hot_sigma, noisy_sigma, poor_fit_chi2r, unreliable_dark_error.
    rate_min : float, optional
        Absolute HOT threshold [DN/s].
    """
    significance = np.nanmax(np.where(np.isfinite(z_ends), z_ends, -np.inf), axis=0)
    thresholds = {"warm_sigma": limits.warm_sigma, "hot_sigma": limits.hot_sigma,
                  "noisy_read_noise": robust_threshold(read_noise, limits.noisy_sigma),
                  "unreliable_dark_error": limits.unreliable_dark_error}
    hot = significance > limits.hot_sigma
    if rate_min is not None:
        thresholds["hot_rate_min"] = rate_min
        hot |= rate_ref >= rate_min
    usable = ~has(fit_dq, DQ.DO_NOT_USE)
    flags = {DQ.HOT: hot & usable, DQ.WARM: (significance > limits.warm_sigma) & ~hot & usable,
             DQ.NOISY: read_noise > thresholds["noisy_read_noise"], DQ.POOR_FIT: chi2r > limits.poor_fit_chi2r,
             DQ.UNRELIABLE_DARK: (rate_error > limits.unreliable_dark_error) & usable}
    dq = fit_dq.astype(DQ_DTYPE)
    for value, flag in flags.items():
        dq[flag] |= DQ_DTYPE(value)
    return dq, thresholds
