"""Dark-signal models fitted to every pixel at once.

Every form (:data:`cmoscal.forms.FORMS`: exponential, Arrhenius, each with or without a floor) is
``DC = t^gamma (C + exp(lnA + slope * x(T)))``, C = 0 without a floor; 2d fits gamma, 1d fixes
gamma = 1 (signal per second).

The estimator is noise-weighted nonlinear least squares: Levenberg-Marquardt steps, started
from the log-linear solution and reweighted from the model (the variance of a master depends
on its mean signal, so weights from the data themselves would bias the fit low), made robust
by refitting without samples far off the model (cosmic rays in one-frame masters) and
without samples on a pixel's full-well plateau. A pixel whose own fit is undetermined or
outside physical bounds gets the population slope and gamma and its own amplitude (flag
FALLBACK), never an absurd number. The bias model removed from the masters shifts them all
alike: the covariance and chi-square count its error once, and the fit returns the parameters'
covariance with that model, which a synthetic frame (bias + dark) needs. The per-pixel loop is
compiled (:mod:`cmoscal.kernels`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .forms import FORMS, dark_form
from .inventory import chain_groups
from .kernels import COVARIANCE_PLANES, CROSS_PLANES, FIT_FLAGS, fit_pixels, kernel_array
from .noise import Noise

__all__ = ["DarkFit", "compare_forms", "covariance_matrix", "design", "deviance", "fit_dark", "fit_loglinear",
           "floor_test", "has_prior", "linear_variance", "predict", "predict_bias_covariance", "predict_variance",
           "prior_information", "select_form", "temperature_feature"]
_TOLERANCE = 1e-3  # chi-square gain below which a pixel has converged (a step of ~0.03 sigma)
_LN_A_LOW = np.log(1e-9)  # A floor, DN/s^gamma: 1 DN in 30 years; keeps var(lnA) of dark-less pixels finite


def temperature_feature(temperature, tmin: float, name: str):
    """The temperature regressor x(T) of the form ``name`` (:data:`cmoscal.forms.FORMS`)."""
    return dark_form(name).feature(np.asarray(temperature, dtype=np.float64), tmin)


def design(temperature, exptime, tmin: float, form: str) -> np.ndarray:
    """Regressors ``[1, x(T), ln t]`` of each sample, shape (..., 3)."""
    x = temperature_feature(temperature, tmin, form)
    t = np.broadcast_to(np.log(np.asarray(exptime, dtype=np.float64)), np.shape(x))
    return np.stack([np.ones_like(x), x, t], axis=-1)


def covariance_matrix(planes: np.ndarray) -> np.ndarray:
    """(n, n, ...) covariance from the planes of :data:`cmoscal.kernels.COVARIANCE_PLANES` (6: n = 3, 10: n = 4)."""
    n = 4 if len(planes) == len(COVARIANCE_PLANES) else 3
    cov = np.zeros((n, n) + planes.shape[1:], dtype=np.float64)
    for plane, (i, j) in zip(planes, COVARIANCE_PLANES):
        cov[i, j] = cov[j, i] = plane
    return cov


@dataclass
class DarkFit:
    """Result of :func:`fit_dark` for ``npix`` pixels.

    Attributes
    ----------
    params : ndarray, shape (3, npix)
        lnA (A in DN / s^gamma at Tmin), slope (B [1/degC] or Ea [eV]), gamma; NaN only where
        a pixel has no valid sample at all.
    cov : ndarray, shape (6, npix)
        Covariance planes (lnA, slope, gamma): 00 11 22 01 02 12.
    bias_cross : ndarray, shape (6, npix)
        Covariance of (lnA, slope, gamma) with the bias model's (a, b) removed from the samples
        (:data:`cmoscal.kernels.CROSS_PLANES`; zero when the noise model has no bias model).
    chi2r : ndarray, shape (npix,)
        Reduced chi-square (NaN without degrees of freedom).
    nvalid : ndarray, shape (npix,)
        Valid samples used (after outliers and full well).
    flags : ndarray of uint8, shape (npix,)
        :data:`cmoscal.kernels.FIT_FLAGS`.
    dropped : ndarray of bool, shape (M, npix)
        Samples dropped as outliers or on the full-well plateau.
    """

    params: np.ndarray
    cov: np.ndarray
    bias_cross: np.ndarray
    chi2r: np.ndarray
    nvalid: np.ndarray
    flags: np.ndarray
    dropped: np.ndarray


def fit_dark(signal, noise: Noise, temperature, exptime, tmin: float, form: str = "exponential",
             fit_gamma: bool = True, *, usable=None, max_iterations: int = 50, min_dof: int = 1,
             full_well: float = 0.0, outlier_sigma: float = np.inf, max_outliers: int = 0, bounds=None,
             prior=(np.nan, np.nan, np.nan, 0.0, 0.0, 0.0), pixel_prior=None) -> DarkFit:
    """Fit the dark model to every pixel by noise-weighted, robust Levenberg-Marquardt.

    Parameters
    ----------
    signal : ndarray, shape (M, npix)
        Master dark signal [DN] (bias removed).
    noise : Noise
        The noise model of the samples (and the bias model removed, if any).
    temperature, exptime : ndarray, shape (M,)
        Master temperatures [degC] and exposures [s].
    tmin : float
        Reference temperature of A [degC].
    form : str, default "exponential"
        A name of :data:`cmoscal.forms.FORMS`.
    fit_gamma : bool, default True
        2d model; False fixes gamma = 1 (1d model, A in DN/s).
    usable : ndarray of bool, shape (M, npix), optional
        Samples a fit may use (not saturated); default all with frames. Non-finite samples never count.
    max_iterations : int, default 50
        Most Levenberg-Marquardt iterations per fit.
    min_dof : int, default 1
        A pixel's own fit needs (parameters + min_dof) valid samples, else FALLBACK.
    full_well : float, default 0
        Level [DN] above which a plateau is full well (0: no test; needs ``noise.bias``).
    outlier_sigma, max_outliers : float, int
        Robust fit: samples beyond outlier_sigma are dropped one at a time (at most max_outliers).
    bounds : dict, optional
        ``{"lnA": (lo, hi), "slope": (lo, hi), "gamma": (lo, hi)}``: an own fit outside is not trusted.
    prior : (slope, gamma, floor, var_slope, var_gamma, var_floor)
        Population values for FALLBACK pixels (NaN parameters without them; the floor only for a form with one).
    pixel_prior : (ndarray, ndarray), optional
        Each pixel's prior from an earlier model (:func:`prior_information`): parameters (4, npix) and information
        planes (10, npix). Its pixels are fitted to maximum posterior; their chi-square includes the prior's term and
        has one degree of freedom for each parameter beyond lnA more.

    Returns
    -------
    DarkFit
    """
    temperature = np.asarray(temperature, dtype=np.float64)
    exptime = np.asarray(exptime, dtype=np.float64)
    Z = np.ascontiguousarray(design(temperature, exptime, tmin, form))
    P, F = (3 if fit_gamma else 2), int(dark_form(form).floor)
    offset = np.zeros(len(Z)) if fit_gamma else Z[:, 2].copy()
    bounds = bounds or {}
    lo = np.array([bounds.get(k, (-np.inf, np.inf))[0] for k in ("lnA", "slope", "gamma")], dtype=np.float64)
    hi = np.array([bounds.get(k, (-np.inf, np.inf))[1] for k in ("lnA", "slope", "gamma")], dtype=np.float64)
    lo[0], hi[0] = max(lo[0], _LN_A_LOW), min(hi[0], -_LN_A_LOW)
    M, npix = signal.shape

    a, b, cov = noise.bias if noise.bias is not None else (0.0, 0.0, 0.0)
    out = (np.empty((4, npix)), np.empty((10, npix)), np.empty((8, npix)), np.empty(npix), np.empty(npix, np.int16),
           np.empty(npix, np.uint8), np.empty((M, npix), bool))

    def pixels(x, rows=()):
        return kernel_array(x, (*rows, npix))

    own_prior = [np.zeros((k, 0)) if pixel_prior is None else kernel_array(np.reshape(x, (k, -1)), (k, npix),
                                                                             np.float64)
                 for k, x in zip((4, 10), pixel_prior or (0, 0))]

    fit_pixels(pixels(signal, (M,)), kernel_array(noise.nframes, (M, npix), np.int16),
               np.ones((M, npix), bool) if usable is None else np.ascontiguousarray(usable, dtype=bool),
               pixels(noise.read_var), float(noise.inv_gain), pixels(a), pixels(b), pixels(cov, (3,)),
               pixels(0.0 if noise.extra_var is None else noise.extra_var), temperature,
               chain_groups(temperature, 1.0), chain_groups(exptime, 0.02, relative=True), Z, offset, P, F, min_dof,
               max_iterations, _TOLERANCE, outlier_sigma, max_outliers, full_well if noise.bias is not None else 0.0,
               lo, hi, np.array(prior[:3], dtype=np.float64), np.array(prior[3:], dtype=np.float64),
               *own_prior,
               noise.bias is not None, *out)
    params, cov, cross, chi2, nvalid, flags, dropped = out
    # a form without a floor keeps (lnA, slope, gamma)
    params, cov, cross = params[:3 + F], cov[:(3 + F) * (4 + F) // 2], cross[:2 * (3 + F)]
    own = P + F if pixel_prior is None else np.where(has_prior(pixel_prior), 1, P + F)
    dof = nvalid - np.where(flags & FIT_FLAGS["FALLBACK"], 1 + F, own)
    with np.errstate(divide="ignore", invalid="ignore"):
        chi2r = np.where(dof > 0, chi2 / dof, np.nan)
    return DarkFit(params=params, cov=cov, bias_cross=cross, chi2r=chi2r, nvalid=nvalid, flags=flags, dropped=dropped)


def prior_information(dark, cov, chi2r, fit_gamma: bool):
    """The prior an earlier model of the sensor gives a new fit: its parameters (4, ...) in the stored order and the
    information (inverse covariance, :data:`COVARIANCE_PLANES`) of those beyond lnA that a fit solves for: slope,
    gamma (2d) and the floor (a form with one). lnA has none: the amplitude is what ageing changes.

    The covariance is scaled by max(chi2r, 1), as a poor fit's is; a pixel without a usable prior (no finite,
    positive definite covariance) gets zero information and is fitted from its own data alone.
    """
    floor = len(dark) == 4
    shape = dark.shape[1:]
    keep = [1] + ([2] if fit_gamma else []) + ([3] if floor else [])
    full = covariance_matrix(cov)
    block = np.moveaxis(full[np.ix_(keep, keep)], (0, 1), (-2, -1)).reshape(-1, len(keep), len(keep))
    theta = np.zeros((4, block.shape[0]))
    theta[:len(dark)] = dark.reshape(len(dark), -1)
    information = np.zeros((10, block.shape[0]))
    good = np.isfinite(block).all(axis=(1, 2)) & np.isfinite(theta).all(axis=0)
    good[good] &= np.all(np.linalg.eigvalsh(block[good]) > 0, axis=1)
    inverse = np.linalg.inv(block[good])
    for k, (i, j) in enumerate(COVARIANCE_PLANES):
        if i in keep and j in keep:
            information[k, good] = inverse[:, keep.index(i), keep.index(j)]
    return theta.reshape((4, *shape)), information.reshape((10, *shape))


def has_prior(pixel_prior) -> np.ndarray:
    """Pixels to which :func:`prior_information`'s ``pixel_prior`` gives a prior."""
    return np.any(pixel_prior[1] != 0, axis=0)


def deviance(signal, noise: Noise, temperature, exptime, tmin: float, form: str, fit: DarkFit, usable=None):
    """-2 ln L of each pixel's fit up to a constant: the sum over its samples of r^2 / V + ln V (V the noise model at
    the model's signal); NaN where the pixel's own fit was not trusted (FALLBACK).

    With a variance that grows with the signal, chi-square alone rewards a model that raises the signal (and so the
    variance) of faint samples; the ln V term is what makes deviances of nested and non-nested forms comparable.
    """
    M = len(temperature)
    total = np.zeros(signal.shape[1])
    for g in range(M):
        model = predict(fit.params, temperature[g], exptime[g], tmin, form)
        variance = noise.variance(g, model, temperature[g]).astype(np.float64)
        valid = ~fit.dropped[g] & (noise.nframes[g] > 0) & np.isfinite(signal[g]) & (variance > 0)
        if usable is not None:
            valid &= usable[g]
        with np.errstate(divide="ignore", invalid="ignore"):
            total += np.where(valid, (signal[g] - model) ** 2 / variance + np.log(variance), 0.0)
    return np.where(fit.flags & FIT_FLAGS["FALLBACK"], np.nan, total)


def fit_loglinear(y, weights, Z, offset):
    """Weighted least squares of ln y on the regressors (samples with y <= 0 dropped).

    The log-space estimator simple pipelines use (biased: E[ln y] < ln E[y]); kept as the
    baseline the benchmarks and tests compare with.

    Parameters
    ----------
    y : ndarray, shape (M, npix)
        Dark signal [DN].
    weights : ndarray, shape (M, npix)
        Weights of ln y (0 drops a sample).
    Z : ndarray, shape (M, P)
        Regressors.
    offset : ndarray, shape (M,)
        Fixed term of ln DC (ln t for a 1d model).

    Returns
    -------
    ndarray, shape (npix, P)
        Parameters; NaN where fewer than P positive samples.
    """
    positive = y > 0
    w = np.where(positive, weights, 0.0)
    z = np.where(positive, np.log(np.where(positive, y, 1.0)), 0.0) - offset[:, None]
    H = np.einsum("mp,mi,mj->pij", w, Z, Z)
    g = np.einsum("mp,mi->pi", w * z, Z)
    theta = np.full(g.shape, np.nan)
    enough = np.sum(w > 0, axis=0) >= Z.shape[1]
    if enough.any():
        theta[enough] = np.linalg.solve(H[enough], g[enough][..., None])[..., 0]
    return theta


def compare_forms(chi2: dict, z_min: float = 3.0, delta_min: float = 0.1) -> dict:
    """Which of the non-nested forms with equal parameter counts fits best, with its significance.

    The two forms of lowest mean deviance (or chi-square) are compared by Vuong's test on the per-pixel
    differences d = D_a - D_b (a before b in :data:`cmoscal.forms.FORMS`):
    z = mean(d) / (std(d) / sqrt(n)). A form fits better only if the difference is both
    significant (|z| >= ``z_min``) and material (|mean(d)| >= ``delta_min``, i.e. the forms differ
    by more than ~0.3 sigma summed over a pixel's masters); otherwise the answer is "no
    significant difference" (or "no material difference" when many pixels make a tiny one
    significant), the usual and correct one over a narrow temperature range.

    Parameters
    ----------
    chi2 : dict
        form name -> per-pixel deviance (:func:`deviance`) or chi-square (same pixels).
    """
    values = {name: np.asarray(chi2[name], dtype=np.float64) for name in FORMS if name in chi2}
    common = np.logical_and.reduce([np.isfinite(v) for v in values.values()])
    ranked = sorted(values, key=lambda name: values[name][common].mean() if common.any() else 0.0)
    names = [name for name in values if name in ranked[:2]]  # the two best, in registry order
    d = values[names[0]][common] - values[names[1]][common]
    n = int(d.size)
    sd = float(d.std(ddof=1)) if n > 1 else 0.0
    z = float(d.mean() / (sd / np.sqrt(n))) if sd > 0 else 0.0
    mean = float(d.mean()) if n else 0.0
    better = names[1] if z > 0 else names[0]
    significant = abs(z) >= z_min and abs(mean) >= delta_min
    detail = f"Vuong z = {z:+.1f}, mean deviance difference {mean:+.3g} per pixel, {n} pixels"
    if significant:
        verdict = f"{better} fits better ({detail})"
    elif abs(z) >= z_min:  # many pixels make a tiny difference significant: it still changes no prediction
        verdict = (f"no material difference between the {names[0]} and {names[1]} forms: {better} fits better by "
                   f"less than {delta_min:g} per pixel ({detail})")
    else:
        verdict = f"no significant difference between the {names[0]} and {names[1]} forms ({detail})"
    return dict(better=better if significant else "", z=z, npix=n, delta_chi2=mean, verdict=verdict)


def floor_test(without, with_floor, z_min: float = 3.0, delta_min: float = 0.5) -> dict:
    """Whether a temperature-independent floor improves the fit: a likelihood ratio over pixels.

    Per pixel, d = D(law) - D(law + floor) (deviances, :func:`deviance`). Without a floor in the data,
    C >= 0 sits at its bound for about half the pixels: d is then 0 or chi-square(1), mean 1/2, variance 5/4, and
    z = (sum d - n / 2) / sqrt(5 n / 4). The floor is supported when z >= ``z_min`` and the gain
    per pixel beyond 1/2 is material (>= ``delta_min``): at low signal the mean of d strays from 1/2 by ~0.1
    (the noise is Poisson and quantized, not normal), and a floor worth less than one sigma^2 a pixel does not
    change a prediction.
    """
    a, b = np.asarray(without, dtype=np.float64), np.asarray(with_floor, dtype=np.float64)
    both = np.isfinite(a) & np.isfinite(b)
    d = a[both] - b[both]
    n = int(d.size)
    z = float((d.sum() - 0.5 * n) / np.sqrt(1.25 * n)) if n else 0.0
    gain = float(d.mean() - 0.5) if n else 0.0
    supported = z >= z_min and gain >= delta_min
    detail = (f"likelihood ratio z = {z:+.1f}, deviance drop {gain + 0.5:.3g} per pixel against 0.5 expected, "
              f"{n} pixels")
    change = "improves" if supported else "does not significantly improve"
    verdict = f"a temperature-independent floor {change} the fit ({detail})"
    return dict(supported=supported, z=z, npix=n, verdict=verdict)


def select_form(chi2: dict) -> dict:
    """The form the data support, from each form's per-pixel deviance on the same pixels.

    The laws are compared without a floor (:func:`compare_forms`, Vuong); the floor is tested on
    the better law (:func:`floor_test`, likelihood ratio); with a floor, the laws are compared
    again with theirs. Without significant evidence the first law (the seeds' exponential) and no
    floor are kept.

    Returns
    -------
    dict
        ``form`` (the chosen name), ``law`` and ``floor`` (the two tests' results) and ``verdict`` (both in words).
    """
    laws = [name for name, form in FORMS.items() if not form.floor and name in chi2]
    law = compare_forms({name: chi2[name] for name in laws})
    best = law["better"] or laws[0]
    floor = floor_test(chi2[best], chi2[f"{best}+floor"])
    form = best
    if floor["supported"]:
        law = compare_forms({f"{name}+floor": chi2[f"{name}+floor"] for name in laws if f"{name}+floor" in chi2})
        form = law["better"] or f"{best}+floor"
    return dict(form=form, law=law, floor=floor, verdict=f"{law['verdict']}; {floor['verdict']}")


def predict(params, temperature, exptime, tmin: float, form: str):
    """Dark signal [DN] of every pixel at one ``temperature`` [degC] and ``exptime`` [s].

    ``params`` has shape (3, ...): lnA, slope, gamma, or (4, ...) with the floor C of a form that has one.
    """
    z = design(temperature, exptime, tmin, form)
    thermal = np.exp(params[0] + z[..., 1] * params[1] + z[..., 2] * params[2])
    return thermal if len(params) == 3 else thermal + params[3] * np.exp(z[..., 2] * params[2])


def linear_variance(planes, z):
    """Variance of z . (lnA, slope, gamma[, C]) of every pixel from its covariance ``planes`` (6 or 10, ...)."""
    total = 0.0
    for plane, (i, j) in zip(planes, COVARIANCE_PLANES):
        total = total + (1.0 if i == j else 2.0) * z[i] * z[j] * plane.astype(np.float64)
    return total


def _jacobian(params, temperature, exptime, tmin: float, form: str) -> tuple:
    """Derivatives of :func:`predict` at one (T, t) with respect to (lnA, slope, gamma[, C])."""
    z = design(temperature, exptime, tmin, form)
    thermal = np.exp(params[0] + z[..., 1] * params[1] + z[..., 2] * params[2])
    if len(params) == 3:
        return thermal, thermal * z[..., 1], thermal * z[..., 2]
    floor = np.exp(z[..., 2] * params[2])
    return thermal, thermal * z[..., 1], (thermal + params[3] * floor) * z[..., 2], floor


def predict_variance(params, cov, temperature, exptime, tmin: float, form: str):
    """Variance [DN^2] of :func:`predict` at one (T, t) from the covariance planes ``cov`` (6 or 10, ...)."""
    return linear_variance(cov, _jacobian(params, temperature, exptime, tmin, form))


def predict_bias_covariance(params, cross, temperature, exptime, tmin: float, form: str):
    """Covariance [DN^2] of :func:`predict` at one (T, t) with the bias model a + b T there, from the planes ``cross``
    (6 or 8, ...) of :data:`cmoscal.kernels.CROSS_PLANES` (:attr:`DarkFit.bias_cross`)."""
    jacobian = _jacobian(params, temperature, exptime, tmin, form)
    return sum(jacobian[i] * (1.0 if q == 0 else temperature) * plane.astype(np.float64)
               for plane, (i, q) in zip(cross, CROSS_PLANES))
