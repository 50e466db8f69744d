"""Pixel classification: the DQ bitmask.

Hot and warm pixels are outliers of the *log* dark rate, which is what a sensor's population
looks like (log-normal): at both ends of the calibrated range (a pixel hot anywhere in the
range is hot, and hot pixels often have a lower activation, so they stand out most where it
is cold), in units of the population's robust spread combined with the pixel's own
measurement error. Optionally an absolute rate threshold, as instrument teams use.
"""

from __future__ import annotations

import numpy as np
from astropy.table import Table

__all__ = ["DQ_BITS", "FIT_DQ", "classify_pixels", "dq_table", "log_rate_significance", "robust_threshold"]

#: name -> (value, description); one bit each, as in a JWST DQ_DEF table.
DQ_BITS = {
    "HOT": (1, "log dark rate > hot_sigma robust sigma above the population at either end of the range, "
               "or rate >= hot_rate_min"),
    "WARM": (2, "log dark rate > warm_sigma robust sigma above the population (and not hot)"),
    "NOISY": (4, "read noise above median + noisy_sigma * 1.4826 * MAD (e.g. telegraph noise)"),
    "SATURATED": (8, "saturated in at least one input frame: those samples are left out"),
    "FEW_SAMPLES": (16, "too few valid master samples for the pixel's own dark fit"),
    "POOR_FIT": (32, "reduced chi-square of the dark fit above poor_fit_chi2r"),
    "FALLBACK": (64, "own fit not trusted (undetermined or out of bounds): population B/Ea, gamma (or bias "
                     "slope) with the pixel's own amplitude"),
    "OUTLIER": (128, "master samples dropped as outliers (e.g. cosmic rays in one-frame masters)"),
    "FULL_WELL": (256, "samples on the pixel's full-well plateau dropped"),
    "DO_NOT_USE": (512, "no usable model (no valid sample): synthetic values are NaN"),
    "FRAME_SATURATED": (1024, "calibrated frames only: saturated in the science frame itself"),
    "OUT_OF_RANGE": (2048, "calibrated frames only: the frame's T or t is outside the calibrated range"),
    "FRAME_INVALID": (4096, "calibrated frames only: the science frame's own value is not a finite number"),
}

#: DQ bits the dark fit sets, from the kernel's flags (:data:`cmoscal.kernels.FIT_FLAGS`)
FIT_DQ = {"FALLBACK": "FALLBACK", "FEW_SAMPLES": "FEW_SAMPLES", "NO_SAMPLES": "DO_NOT_USE",
          "FULL_WELL": "FULL_WELL", "OUTLIERS": "OUTLIER"}


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


def classify_pixels(z_ends, rate_ref, read_noise, chi2r, fit_dq, params: dict, rate_min=None):
    """Return the DQ bitmask (uint16) and the thresholds used.

    Parameters
    ----------
    z_ends : ndarray, shape (2, ...)
        :func:`log_rate_significance` at the coldest and warmest calibrated temperature.
    rate_ref : ndarray
        Dark rate [DN/s] at the reference temperature (for ``rate_min``).
    read_noise : ndarray
        Per-pixel read noise [DN].
    chi2r : ndarray
        Reduced chi-square of the dark fit.
    fit_dq : ndarray of uint16
        Bits already set by the fits (SATURATED, FEW_SAMPLES, FALLBACK, ...).
    params : dict
        warm_sigma, hot_sigma, noisy_sigma, poor_fit_chi2r.
    rate_min : float, optional
        Absolute HOT threshold [DN/s].
    """
    significance = np.nanmax(np.where(np.isfinite(z_ends), z_ends, -np.inf), axis=0)
    thresholds = {"warm_sigma": params["warm_sigma"], "hot_sigma": params["hot_sigma"],
                  "noisy_read_noise": robust_threshold(read_noise, params["noisy_sigma"])}
    hot = significance > params["hot_sigma"]
    if rate_min is not None:
        thresholds["hot_rate_min"] = rate_min
        hot |= rate_ref >= rate_min
    usable = (fit_dq & DQ_BITS["DO_NOT_USE"][0]) == 0
    flags = {"HOT": hot & usable, "WARM": (significance > params["warm_sigma"]) & ~hot & usable,
             "NOISY": read_noise > thresholds["noisy_read_noise"],
             "POOR_FIT": chi2r > params["poor_fit_chi2r"]}
    dq = fit_dq.astype(np.uint16).copy()
    for name, flag in flags.items():
        dq |= np.where(flag, DQ_BITS[name][0], 0).astype(np.uint16)
    return dq, thresholds


def dq_table(dq: np.ndarray | None = None) -> Table:
    """The DQ_DEF table: bit, value, name, description (and pixel counts when ``dq`` is given)."""
    table = Table(rows=[(int(np.log2(v)), v, name, text) for name, (v, text) in DQ_BITS.items()],
                  names=("BIT", "VALUE", "NAME", "DESCRIPTION"))
    if dq is not None:
        per_value = np.bincount(np.asarray(dq, np.uint16).ravel(), minlength=1 << 16)  # pixels of each DQ value
        values = np.arange(per_value.size)
        table["NPIX"] = [int(per_value[(values & v) > 0].sum()) for v in table["VALUE"]]
        table["FRACTION"] = table["NPIX"] / dq.size
    return table
