"""The noise model: what a master's error should be, per pixel.

Per frame sigma_1^2 = RV + S / g, where RV is the pixel's read variance (read noise,
telegraph noise and quantization, measured from the bias frames), S the dark signal [DN]
and g the gain [e-/DN]. A master of n frames has sigma_1^2 / n, plus the variance of
whatever bias was subtracted from it. This holds for one-frame masters too, whose own
scatter is unknown.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .kernels import expected_variance, kernel_array, pooled_variance

__all__ = ["Noise", "ratio_factor", "read_variance"]

_NO_BIAS = np.zeros((3, 1, 1), np.float32)  # the kernels' bias covariance without a bias model (never read)


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
    M, shape = len(bias_variance), np.shape(bias_variance)[1:]
    out = np.empty(shape, np.float32)
    pooled_variance(kernel_array(bias_variance, (M, *shape)).reshape(M, -1),
                    kernel_array(bias_nframes, (M, *shape), np.int16).reshape(M, -1), out.reshape(-1))
    return out


def ratio_factor(dof: float) -> float:
    """dof / (dof - 2): the factor on a read variance from ``dof`` degrees of freedom that a residual is divided by.

    The estimated variance is unbiased but its inverse is not: E[sigma^2 / s^2] = dof / (dof - 2)
    for Gaussian noise, so residual / noise built on s^2 alone runs high (x1.15 at dof = 8).
    Exact for bias residuals, whose noise is all read noise. Below dof = 3 the inverse has no
    finite mean: 1 is returned and the summary marks the bias noise checks n/a.
    """
    return dof / (dof - 2) if dof > 2 else 1.0


@dataclass
class Noise:
    """The noise model of master dark samples, compact: sigma^2 = (read_var + S inv_gain) / n + bias variance.

    Attributes
    ----------
    nframes : ndarray, shape (M, npix)
        Frames per master sample.
    read_var : ndarray, shape (npix,)
        Read variance of one frame [DN^2].
    inv_gain : float
        1 / gain [DN/e-] (0: no shot noise known).
    bias : tuple of ndarray, optional
        (a, b, cov) of the bias model a + b T removed from every master [DN, DN/degC, (3, npix)]:
        its variance enters each sample and, being common to all masters of a pixel, is
        propagated into the parameter covariance.
    extra_var : ndarray, shape (npix,), optional
        Variance of another bias removed from every sample (e.g. the nearest master bias).
    """

    nframes: np.ndarray
    read_var: np.ndarray
    inv_gain: float
    bias: tuple | None = None
    extra_var: np.ndarray | None = None

    def columns(self, pixels):
        """The same noise model for a subset of pixels (flat indices)."""
        bias = None if self.bias is None else (self.bias[0][pixels], self.bias[1][pixels], self.bias[2][:, pixels])
        extra = None if self.extra_var is None else self.extra_var[pixels]
        return Noise(self.nframes[:, pixels], self.read_var[pixels], self.inv_gain, bias, extra)

    def planes(self, g, shape):
        """Frame counts (int16), read variance and bias covariance (3, ...) of master ``g`` shaped as the
        2-D ``shape`` (of as many pixels), as the noise kernels take them
        (:func:`cmoscal.kernels.expected_variance`, :func:`cmoscal.kernels.compare_frames`)."""
        nframes = kernel_array(np.reshape(self.nframes[g], shape), shape, np.int16)
        read_var = kernel_array(np.reshape(self.read_var, shape), shape)
        cov = _NO_BIAS if self.bias is None else kernel_array(np.reshape(self.bias[2], (3, *shape)), (3, *shape))
        return nframes, read_var, cov

    def variance(self, g, signal, temperature):
        """Expected variance [DN^2] (float32) of master ``g`` of signal ``signal`` at ``temperature``."""
        shape = np.shape(signal)
        plane = shape if len(shape) == 2 else (1, int(np.prod(shape)))
        out = np.empty(plane, np.float32)
        nframes, read_var, cov = self.planes(g, plane)
        expected_variance(nframes, read_var, kernel_array(np.reshape(signal, plane), plane), self.inv_gain, cov,
                          float(temperature), self.bias is not None, out)
        out = out.reshape(shape)
        return out if self.extra_var is None else out + self.extra_var
