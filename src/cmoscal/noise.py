"""The noise model: what a master's error should be, per pixel.

Per frame sigma_1^2 = RV + S / g, where RV is the pixel's read variance (read
noise, telegraph noise and quantization, measured from the bias frames), S the
dark signal [DN] and g the gain [e-/DN]. A master of n frames has sigma_1^2 / n,
plus the variance of whatever bias was subtracted from it.
"""

from __future__ import annotations

import numpy as np

__all__ = ["inverse_gain", "read_variance"]


def read_variance(bias_variance: np.ndarray, bias_nframes: np.ndarray) -> np.ndarray:
    """Pool the per-frame scatter of every bias group into one read variance per pixel.

    Parameters
    ----------
    bias_variance : ndarray, shape (M, ny, nx)
        Variance of each master bias [DN^2].
    bias_nframes : ndarray, shape (M, ny, nx)
        Frames each master used.

    Returns
    -------
    ndarray, shape (ny, nx)
        Read variance of one frame [DN^2], weighted by degrees of freedom.
    """
    n = bias_nframes.astype(np.float64)
    dof = np.where(np.isfinite(bias_variance), n - 1, 0)
    per_frame = np.where(dof > 0, bias_variance * n, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (np.sum(dof * per_frame, axis=0) / np.sum(dof, axis=0)).astype(np.float32)


def inverse_gain(signal: np.ndarray, variance: np.ndarray, nframes: np.ndarray, rv: np.ndarray,
                 usable: np.ndarray) -> float:
    """Estimate 1/g [DN/e-] from the excess scatter of dark frames over the read variance.

    Least squares through the origin of (per-frame variance - RV) against the dark
    signal, over all masters and the ``usable`` pixels (exclude hot and noisy ones).
    Returns 0 when the darks carry no measurable shot noise.
    """
    excess = variance * nframes - rv
    ok = usable & np.isfinite(excess) & np.isfinite(signal) & (signal > 0)
    s, e = signal[ok].astype(np.float64), excess[ok].astype(np.float64)
    return max(float(np.sum(s * e) / np.sum(s * s)), 0.0) if s.size else 0.0
