"""The noise model: what a master's error should be, per pixel.

Per frame sigma_1^2 = RV + S / g, where RV is the pixel's read variance (read noise,
telegraph noise and quantization, measured from the bias frames), S the dark signal [DN]
and g the gain [e-/DN]. A master of n frames has sigma_1^2 / n, plus the variance of
whatever bias was subtracted from it. This holds for one-frame masters too, whose own
scatter is unknown.
"""

from __future__ import annotations

import numpy as np

__all__ = ["master_noise", "read_variance"]


def read_variance(bias_variance: np.ndarray, bias_nframes: np.ndarray) -> np.ndarray:
    """Pool the per-frame scatter of every bias group into one read variance per pixel.

    Parameters
    ----------
    bias_variance : ndarray, shape (M, ny, nx)
        Variance of each master bias [DN^2] (NaN for one-frame masters: they do not count).
    bias_nframes : ndarray, shape (M, ny, nx)
        Frames each master used.

    Returns
    -------
    ndarray, shape (ny, nx)
        Read variance of one frame [DN^2], weighted by degrees of freedom.
    """
    n = bias_nframes.astype(np.float64)
    dof = np.where(np.isfinite(bias_variance) & (n > 1), n - 1, 0)
    per_frame = np.where(dof > 0, bias_variance * n, 0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (np.sum(dof * per_frame, axis=0) / np.sum(dof, axis=0)).astype(np.float32)


def master_noise(read_var, nframes, inv_gain: float, bias_var=0.0):
    """Signal-independent variance and shot-noise scale of master samples.

    Parameters
    ----------
    read_var : ndarray
        Read variance of one frame [DN^2].
    nframes : ndarray
        Frames per master sample (0 counts as 1: such samples are invalid anyway).
    inv_gain : float
        1 / gain [DN/e-].
    bias_var : float or ndarray
        Variance of the bias removed from each master [DN^2].

    Returns
    -------
    base_var, shot_scale : ndarray
        A master of signal S has variance ``base_var + shot_scale * S``.
    """
    n = np.maximum(nframes, 1)
    return read_var / n + bias_var, inv_gain / n
