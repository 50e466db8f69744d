"""Pixel classification: the DQ bitmask.

Hot and warm pixels are outliers of the *log* dark rate, which is what a sensor's population
looks like (log-normal): at both ends of the calibrated range (a pixel hot anywhere in the
range is hot, and hot pixels often have a lower activation, so they stand out most where it
is cold). The thresholds are rates: the population median times its robust spread to the power
``warm_sigma`` (``hot_sigma``); optionally an absolute rate, as instrument teams use. A pixel is
flagged only when its rate exceeds a threshold by ``excess_sigma`` of its own uncertainty, taken
on the rate itself: at low signal a rate known only to a factor is never significant, however
high its estimate.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import chdtrc, chdtri, fdtrc, ndtr, stdtrit  # tails and quantiles (scipy.stats: 0.3 s to import)

from .compute import concurrently
from .dq import DQ, DQ_DTYPE, has

__all__ = ["Thresholds", "classify_pixels", "excess_significance", "log_rate_significance"]


def log_rate_significance(ln_rate: np.ndarray, var_ln_rate: np.ndarray, usable: np.ndarray):
    """How far each pixel's log dark rate lies above the population median, in units of its intrinsic spread.

    The intrinsic spread s_pop is the observed 1.4826 MAD with the typical measurement variance removed.

    Returns
    -------
    z : ndarray
    stats : dict
        median, observed and intrinsic spread of the log rate, the typical measurement error.
    """
    v = ln_rate[usable & np.isfinite(ln_rate) & np.isfinite(var_ln_rate)]
    median = float(np.median(v))
    observed = float(1.4826 * np.median(np.abs(v - median)))
    typical = float(np.median(var_ln_rate[usable & np.isfinite(var_ln_rate)]))
    intrinsic = float(np.sqrt(max(observed ** 2 - typical, (0.1 * observed) ** 2)))
    return (ln_rate - median) / intrinsic, dict(median=median, observed=observed, intrinsic=intrinsic,
                                                 typical_error=float(np.sqrt(typical)))


def excess_significance(ln_rate: np.ndarray, var_ln_rate: np.ndarray, threshold: float) -> np.ndarray:
    """How many of its own sigma each pixel's rate lies above the rate ``threshold`` [DN/s].

    (rate - threshold) / sigma_rate with sigma_rate = rate * sigma(ln rate): on the rate itself,
    so a pixel whose rate is known only to a factor (sigma(ln rate) > 1 / excess) is never
    significant, however high its estimate (at low signal a log-rate error is not Gaussian).
    """
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        return -np.expm1(np.log(threshold) - ln_rate) / np.sqrt(var_ln_rate)


@dataclass(frozen=True)
class Thresholds:
    """The classification thresholds: the parameters of the same names."""

    warm_sigma: float
    hot_sigma: float
    excess_sigma: float
    noisy_sigma: float
    poor_fit_chi2r: float
    unreliable_dark_error: float

    @classmethod
    def from_params(cls, params: dict) -> Thresholds:
        """The thresholds of a campaign's parameters."""
        return cls(**{name: params[name] for name in cls.__dataclass_fields__})


def _poor_fit(chi2r, dof, noise_dof: float, limits: Thresholds) -> np.ndarray:
    """Reduced chi-square above poor_fit_chi2r and beyond chance at excess_sigma: F(dof, noise_dof), the noise
    being known from ``noise_dof`` degrees of freedom."""
    poor = (chi2r > limits.poor_fit_chi2r) & (dof > 0)
    candidates = np.flatnonzero(poor)  # the chance is computed for these few only
    poor.flat[candidates] = fdtrc(dof.flat[candidates], noise_dof,
                                  chi2r.flat[candidates]) < ndtr(-limits.excess_sigma)
    return poor


def _noisy(read_noise, own_dof: float, limits: Thresholds) -> tuple[np.ndarray, float]:
    """NOISY pixels and their read-noise level [DN]: the pixel's own read noise above median + noisy_sigma * 1.4826
    * MAD, and beyond chance at noisy_sigma for a pixel of the typical read variance (median s^2 over the median of
    chi2(d) / d): whole-DN estimates from a few frames bunch up, so their robust spread alone can be too small."""
    v = read_noise[np.isfinite(read_noise)]
    median = float(np.median(v))
    level = median + limits.noisy_sigma * 1.4826 * float(np.median(np.abs(v - median)))
    noisy = read_noise > level
    candidates = np.flatnonzero(noisy)  # the chance is computed for these few only
    typical = median ** 2 * own_dof / chdtri(own_dof, 0.5)
    noisy.flat[candidates] = chdtrc(own_dof, own_dof * read_noise.flat[candidates] ** 2 / typical) < ndtr(
        -limits.noisy_sigma)
    return noisy, level


def classify_pixels(rates, populations, rate_ref, rate_error, read_noise, own_dof, noise_dof, chi2r, dof, fit_dq,
                    limits: Thresholds, rate_min=None, threads: int = 1):
    """Return the DQ word (:mod:`cmoscal.dq`) and the thresholds used.

    Parameters
    ----------
    rates : sequence of (ndarray, ndarray)
        ln of the dark rate [DN/s] and its variance at the coldest and warmest calibrated temperature.
    populations : sequence of dict
        :func:`log_rate_significance`'s statistics at the same temperatures.
    rate_ref : tuple of ndarray
        ln rate and its variance at the reference temperature (for ``rate_min``).
    rate_error : ndarray
        Relative 1-sigma error of the dark rate at the reference temperature.
    read_noise : ndarray
        Per-pixel read noise from the pixel's own frames [DN] (before moderation: :mod:`cmoscal.noise`), of
        ``own_dof`` degrees of freedom.
    noise_dof : float
        Degrees of freedom of the read noise the fits weighed their samples with: excesses and chi-squares are
        judged by Student's t and F laws of them, so an uncertain noise model flags no more by chance.
    chi2r, dof : ndarray
        Reduced chi-square of the dark fit and its degrees of freedom: POOR_FIT needs chi2r above poor_fit_chi2r
        and beyond chance at excess_sigma (a fit of 3 degrees of freedom exceeds 3 by chance in 3 %).
    fit_dq : ndarray
        Bits already set by the fits (SATURATED, FEW_SAMPLES, FALLBACK, ...).
    limits : Thresholds
        warm_sigma, hot_sigma, excess_sigma, noisy_sigma, poor_fit_chi2r, unreliable_dark_error.
    rate_min : float, optional
        Absolute HOT threshold [DN/s].
    threads : int, default 1
        The flags are computed on up to this many threads at once.

    Returns
    -------
    dq : ndarray
    thresholds : dict
        The parameters used, the noisy read-noise level [DN], and ``rates``: per end of the range
        (temperature, warm rate, hot rate) [degC, DN/s].
    """
    thresholds = {"warm_sigma": limits.warm_sigma, "hot_sigma": limits.hot_sigma,
                  "excess_sigma": limits.excess_sigma, "unreliable_dark_error": limits.unreliable_dark_error,
                  "rates": [(population["temperature"], *(np.exp(population["median"] + k * population["intrinsic"])
                                                          for k in (limits.warm_sigma, limits.hot_sigma)))
                            for population in populations]}
    if rate_min is not None:
        thresholds["hot_rate_min"] = rate_min

    significant = float(stdtrit(noise_dof, ndtr(limits.excess_sigma)))  # excess_sigma's tail of Student's t

    def above(rate, threshold):
        return lambda: excess_significance(*rate, threshold) > significant

    calls = [above(rate, levels[k]) for k in (1, 2) for rate, levels in zip(rates, thresholds["rates"])]
    calls += [above(rate_ref, rate_min)] if rate_min is not None else []
    calls += [lambda: ~has(fit_dq, DQ.DO_NOT_USE), lambda: _noisy(read_noise, own_dof, limits),
              lambda: _poor_fit(chi2r, dof, noise_dof, limits)]
    *excess, usable, (noisy, thresholds["noisy_read_noise"]), poor_fit = concurrently(calls, threads)
    warm, hot = np.logical_or.reduce(excess[:len(rates)]), np.logical_or.reduce(excess[len(rates):])
    flags = {DQ.HOT: hot & usable, DQ.WARM: warm & ~hot & usable,
             DQ.NOISY: noisy, DQ.POOR_FIT: poor_fit,
             DQ.UNRELIABLE_DARK: (rate_error > limits.unreliable_dark_error) & usable}
    dq = fit_dq.astype(DQ_DTYPE)
    for value, flag in flags.items():
        dq[flag] |= DQ_DTYPE(value)
    return dq, thresholds
