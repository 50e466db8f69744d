"""The noise model: what a master's error should be, per pixel.

Per frame sigma_1^2 = RV + S / g, where RV is the pixel's read variance (read noise,
telegraph noise and quantization, measured from the bias frames), S the dark signal [DN]
and g the gain [e-/DN]. A master of n frames has sigma_1^2 / n, plus the variance of
whatever bias was subtracted from it. This holds for one-frame masters too, whose own
scatter is unknown.

A pixel's read variance from a few bias frames is itself very uncertain (and, in integer DN,
often zero); it is moderated towards the sensor's population (empirical Bayes, Smyth 2004):
the population of true read variances is taken as a scaled inverse chi-square with d0 degrees
of freedom, and each pixel's read variance is its posterior mean (d0 s0^2 + d s^2) / (d0 + d - 2):
unbiased, and its inverse too (a residual over it has variance 1, where one over s^2 alone reads
d / (d - 2) high: x3 at d = 3). Telegraph pixels are the prior's second part, of any read variance
above the population's: a pixel far above the population keeps about its own estimate.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy.optimize import brentq
from scipy.special import betaln, chdtr, fdtr, fdtri

from .kernels import expected_variance, kernel_array, pooled_variance

__all__ = ["Noise", "ReadNoisePrior", "moderate", "own_read_variance", "read_noise_prior",
           "read_variance"]

TELEGRAPH_RANGE = 100.0  # telegraph pixels' read variances: log-uniform above the population's, as if to 100x
_EM_STEPS, _EM_SAMPLE = 100, 10_000  # expectation-maximization of the telegraph share: at most, on as many pixels
_GRID = (1e-6, 1e6, 8192)  # the moderation curve: from, to (x the population's scale) and points (to ~1e-5)
_NO_BIAS = np.zeros((3, 1, 1), np.float32)  # the kernels' bias covariance without a bias model (never read)


def read_variance(bias_variance: np.ndarray, bias_nframes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pool the per-frame scatter of every bias group into one read variance per pixel.

    Parameters
    ----------
    bias_variance : ndarray, shape (M, ny, nx)
        Variance of each master bias [DN^2] (NaN for one-frame masters: they do not count).
    bias_nframes : ndarray, shape (M, ny, nx)
        Frames each master used.

    Returns
    -------
    variance : ndarray, shape (ny, nx)
        Read variance of one frame [DN^2], weighted by degrees of freedom.
    dof : ndarray of int16, shape (ny, nx)
        Its degrees of freedom.
    """
    M, shape = len(bias_variance), np.shape(bias_variance)[1:]
    out, dof = np.empty(shape, np.float32), np.empty(shape, np.int16)
    pooled_variance(kernel_array(bias_variance, (M, *shape)).reshape(M, -1),
                    kernel_array(bias_nframes, (M, *shape), np.int16).reshape(M, -1), out.reshape(-1),
                    dof.reshape(-1))
    return out, dof


class ReadNoisePrior(NamedTuple):
    """What a pixel's read variance is before its own frames: the sensor's population, or a telegraph pixel.

    Attributes
    ----------
    variance : float
        Scale s0^2 of the population, a scaled inverse chi-square law of the true read variance [DN^2].
    dof : float
        Its degrees of freedom d0: how much one pixel's read variance is known before its own frames.
    telegraph_share : float
        Share of pixels outside it: telegraph pixels, whose read variance is anything above s0^2
        (log-uniform, as if up to TELEGRAPH_RANGE s0^2), so that their own frames tell it.
    """

    variance: float
    dof: float
    telegraph_share: float = 0.0


def _log_population_density(read_var, dof, prior: ReadNoisePrior):
    """ln density of an estimate s^2 of ``dof`` degrees of freedom in the population: s^2 / s0^2 is F(d, d0)."""
    d, d0, x = dof, prior.dof, read_var / prior.variance
    return (d / 2 * np.log(d / d0) + (d / 2 - 1) * np.log(x) - (d + d0) / 2 * np.log1p(d * x / d0)
            - betaln(d / 2, d0 / 2) - np.log(prior.variance))


def _telegraph_terms(read_var, dof, prior: ReadNoisePrior):
    """ln density of an estimate s^2 among telegraph pixels, and their posterior mean of the read variance.

    Their sigma^2 is log-uniform above s0^2, at 1 / ln(TELEGRAPH_RANGE) per unit of ln sigma^2 (as if over that
    range, without its end: a pixel far above keeps its own estimate); with u = d s^2 / sigma^2 ~ chi2(d) and
    b = d s^2 / s0^2, the density is P(chi2(d) < b) / (ln K s^2) and the mean
    d s^2 / (d - 2) P(chi2(d - 2) < b) / P(chi2(d) < b).
    """
    b = dof * read_var / prior.variance
    mass = chdtr(dof, b)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_density = np.log(mass) - np.log(np.log(TELEGRAPH_RANGE) * read_var)
        mean = dof * read_var / (dof - 2) * chdtr(dof - 2, b) / mass
    return log_density, mean


def _posterior(read_var, dof, prior: ReadNoisePrior):
    """Each estimate's chance of being a telegraph pixel's, and the posterior mean of its read variance."""
    x = np.maximum(read_var, 1e-6 * prior.variance)  # whole-DN estimates of 0: as the smallest variance
    offset, slope = _population_line(dof, prior)
    population_mean = offset + slope * x
    if prior.telegraph_share <= 0 or dof <= 2:  # below 3, a telegraph pixel's own frames cannot tell its variance
        return np.zeros_like(x), population_mean
    log_telegraph, telegraph_mean = _telegraph_terms(x, dof, prior)
    odds = (np.log(prior.telegraph_share) + log_telegraph - np.log1p(-prior.telegraph_share)
            - _log_population_density(x, dof, prior))
    beyond = ~np.isfinite(odds)  # both densities vanish: far above (or below) every read variance of the prior
    chance = np.where(beyond, x > prior.variance, np.exp(-np.logaddexp(0, -np.where(beyond, 0, odds))))
    telegraph_mean = np.where(np.isfinite(telegraph_mean), telegraph_mean, dof * x / (dof - 2))
    return chance, population_mean + chance * (telegraph_mean - population_mean)


def read_noise_prior(read_var: np.ndarray, dof: np.ndarray) -> ReadNoisePrior:
    """The population of read variances and the share of telegraph pixels, from the pixels' estimates.

    Every pixel of a population of scaled inverse chi-square variances (s0^2, d0) has s^2 / s0^2
    distributed as F(d, d0): the population's spread and the pixel's own chance together. d0 is the
    one whose F has the estimates' interquartile range over median (quartiles: telegraph pixels, a
    few per cent far above, do not widen it); a population no wider than chance gets d0 = the degrees
    of freedom that measured it (the pixels' sum). The scale comes from the mean of the estimates below
    that F's 99.9th percentile, corrected for the share of the mean the cut removes (a mean, because
    whole-DN values put the median of few-frame variances on a coarse grid). The telegraph share
    follows by expectation-maximization, the population held.

    Parameters
    ----------
    read_var : ndarray
        Per-pixel read variances [DN^2] (NaN: not measured).
    dof : ndarray
        Their degrees of freedom.
    """
    usable = np.isfinite(read_var) & (dof > 0)
    if not usable.any():
        return ReadNoisePrior(0.0, 0.0)
    values = read_var[usable].astype(np.float64)
    low, median, high = np.percentile(values, (25, 50, 75))
    d, most = float(np.median(dof[usable])), float(np.sum(dof[usable]))

    def spread(d0):  # interquartile range over median of F(d, d0)
        q = fdtri(d, d0, np.array([0.25, 0.5, 0.75]))
        return (q[2] - q[0]) / q[1]

    observed = (high - low) / median if median > 0 else np.inf
    d0 = most if observed <= spread(most) else 4.0 if observed >= spread(4.0) else \
        brentq(lambda x: spread(x) - observed, 4.0, most)
    cut = float(fdtri(d, d0, 0.999))
    below = values[values <= cut * median / fdtri(d, d0, 0.5)]
    # E[X; X <= q] / E[X] for X ~ F(d, d0): X size-biased is F(d + 2, d0 - 2) scaled by (d + 2) d0 / (d (d0 - 2))
    kept = fdtr(d + 2, d0 - 2, cut * d * (d0 - 2) / ((d + 2) * d0))
    prior = ReadNoisePrior(float(np.mean(below) / kept * (d0 - 2) / d0), float(d0))
    if d <= 2:
        return prior
    sample = values[::max(1, values.size // _EM_SAMPLE)]
    prior = prior._replace(telegraph_share=0.01)
    for _ in range(_EM_STEPS):
        share = float(np.clip(_posterior(sample, d, prior)[0].mean(), 1 / sample.size, 0.5))
        converged = abs(share - prior.telegraph_share) < 1e-4
        prior = prior._replace(telegraph_share=share)
        if converged:
            break
    return prior


@functools.lru_cache(maxsize=16)
def _moderation_curve(dof: float, prior: ReadNoisePrior):
    """Own estimates s^2 on a fine logarithmic grid, the same for every tile of a frame, their posterior means,
    and the range of s^2 where these are the population's straight line to 1e-5 (the chance of a telegraph
    pixel too small to count): most pixels are moderated by the line, the others interpolated."""
    own = prior.variance * np.geomspace(*_GRID)
    mean = _posterior(own, dof, prior)[1]
    offset, slope = _population_line(dof, prior)
    on_line = np.abs(mean - (offset + slope * own)) <= 1e-5 * mean
    edges = np.flatnonzero(np.diff(np.concatenate(([0], on_line.view(np.int8), [0]))))
    if edges.size == 0:
        return own, mean, (np.inf, -np.inf)
    start, stop = edges.reshape(-1, 2)[np.argmax(np.diff(edges.reshape(-1, 2)))]  # the longest run on the line
    return own, mean, (own[start], own[stop - 1])


def _population_line(dof, prior: ReadNoisePrior):
    """(offset, slope) of the population's posterior mean, (d0 s0^2 + d s^2) / (d0 + d - 2)."""
    scale = prior.dof + dof - 2
    return prior.dof * prior.variance / scale, dof / scale


def moderate(read_var: np.ndarray, dof, prior: ReadNoisePrior) -> np.ndarray:
    """Per-pixel read variances moderated by ``prior``: their posterior mean, float32 (NaN where the pixel has no
    estimate of its own): (d0 s0^2 + d s^2) / (d0 + d - 2) in the population, about d s^2 / (d - 2) for a
    telegraph pixel, weighed by the chance of each (on :func:`_moderation_curve`; computed beyond it)."""
    read_var = np.asarray(read_var, np.float64)
    out = np.full(read_var.shape, np.nan, np.float32)
    finite = np.isfinite(read_var)
    dof = np.broadcast_to(dof, read_var.shape)
    counts = dof[finite]
    for d in np.unique(counts) if counts.size and counts.min() != counts.max() else counts[:1]:
        pixels = finite & (dof == d)
        own, mean, (low, high) = _moderation_curve(float(d), prior)
        offset, slope = _population_line(float(d), prior)
        out[pixels] = offset + slope * read_var[pixels]
        off_line = pixels & ((read_var < low) | (read_var > high))
        out[off_line] = np.interp(read_var[off_line], own, mean)
        beyond = pixels & (read_var > own[-1])
        out[beyond] = _posterior(read_var[beyond], float(d), prior)[1]
    return out


def own_read_variance(read_var: np.ndarray, dof: float, prior: ReadNoisePrior) -> np.ndarray:
    """The pixels' own read variances s^2 behind moderated ones (the inverse of :func:`moderate`, which grows
    with s^2), float64; beyond the curve, where every pixel is a telegraph pixel (if any), d s^2 / (d - 2)."""
    own, mean, (low, high) = _moderation_curve(dof, prior)
    offset, slope = _population_line(dof, prior)
    read_var = np.asarray(read_var, np.float64)
    out = (read_var - offset) / slope
    off_line = (read_var < offset + slope * low) | (read_var > offset + slope * high)
    values = read_var[off_line]
    telegraph = _posterior(own[-1:], dof, prior)[0][0] > 0.5
    out[off_line] = np.where(values <= mean[-1], np.interp(values, mean, own),
                             values * (dof - 2) / dof if telegraph else out[off_line])
    return out


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
        its variance enters a sample's expected variance (:meth:`variance`); in the dark fit, whose weights are
        the samples' own noise, it counts once, as the error common to all masters of a pixel
        (:func:`cmoscal.kernels.fit_pixels`).
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
