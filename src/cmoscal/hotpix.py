"""Pixel classification: the DQ bitmask (hot, warm, noisy, saturated, few samples, poor fit)."""

from __future__ import annotations

import numpy as np
from astropy.table import Table

__all__ = ["DQ_BITS", "classify_pixels", "dq_table", "robust_threshold"]

#: name -> (value, description); one bit each, as in a JWST DQ_DEF table.
DQ_BITS = {
    "HOT": (1, "dark rate above median + hot_sigma * 1.4826 * MAD at the reference temperature"),
    "WARM": (2, "dark rate above median + warm_sigma * 1.4826 * MAD (and not hot)"),
    "NOISY": (4, "read noise above median + noisy_sigma * 1.4826 * MAD (e.g. telegraph noise)"),
    "SATURATED": (8, "at or above saturation in at least one input frame"),
    "FEW_SAMPLES": (16, "too few valid master samples to fit the dark model: parameters are NaN"),
    "POOR_FIT": (32, "reduced chi-square of the dark fit above poor_fit_chi2r, or not converged"),
}


def robust_threshold(values: np.ndarray, k: float) -> float:
    """median + k * 1.4826 * MAD of the finite ``values``."""
    v = values[np.isfinite(values)]
    median = np.median(v)
    return float(median + k * 1.4826 * np.median(np.abs(v - median)))


def classify_pixels(rate, read_noise, saturated, few_samples, chi2r, converged, params: dict):
    """Return the DQ bitmask (uint16) and the thresholds used.

    Parameters
    ----------
    rate : ndarray
        Dark rate at the reference temperature [DN/s].
    read_noise : ndarray
        Per-pixel read noise [DN].
    saturated, few_samples, converged : ndarray of bool
    chi2r : ndarray
        Reduced chi-square of the dark fit.
    params : dict
        warm_sigma, hot_sigma, noisy_sigma, poor_fit_chi2r.
    """
    thresholds = {"hot_rate": robust_threshold(rate, params["hot_sigma"]),
                  "warm_rate": robust_threshold(rate, params["warm_sigma"]),
                  "noisy_read_noise": robust_threshold(read_noise, params["noisy_sigma"])}
    hot = rate > thresholds["hot_rate"]
    flags = {
        "HOT": hot,
        "WARM": (rate > thresholds["warm_rate"]) & ~hot,
        "NOISY": read_noise > thresholds["noisy_read_noise"],
        "SATURATED": saturated,
        "FEW_SAMPLES": few_samples,
        "POOR_FIT": ~few_samples & ((chi2r > params["poor_fit_chi2r"]) | ~converged),
    }
    dq = np.zeros(np.shape(rate), dtype=np.uint16)
    for name, flag in flags.items():
        dq |= np.where(flag, DQ_BITS[name][0], 0).astype(np.uint16)
    return dq, thresholds


def dq_table(dq: np.ndarray | None = None) -> Table:
    """The DQ_DEF table: bit, value, name, description (and pixel counts when ``dq`` is given)."""
    table = Table(rows=[(int(np.log2(v)), v, name, text) for name, (v, text) in DQ_BITS.items()],
                  names=("BIT", "VALUE", "NAME", "DESCRIPTION"))
    if dq is not None:
        table["NPIX"] = [int(np.count_nonzero(dq & v)) for v in table["VALUE"]]
        table["FRACTION"] = table["NPIX"] / dq.size
    return table
