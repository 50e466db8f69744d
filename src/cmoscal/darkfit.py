"""Dark-signal models fitted to every pixel at once.

Every form is ``DC = exp(lnA + slope * x(T) + gamma * ln t)``:

- exponential: x = T - Tmin [degC], slope = B [1/degC];
- arrhenius:   x = -(1/T_K - 1/Tmin_K) / k_B [1/eV], slope = Ea [eV];
- 2d fits gamma; 1d fixes gamma = 1 (signal per second).

The estimator is noise-weighted nonlinear least squares: Levenberg-Marquardt steps
solved for all pixels together as batched 3x3 systems, started from the log-linear
solution and reweighted from the model (the variance of a master depends on its
mean signal, so weights from the data themselves would bias the fit low).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["BOLTZMANN_EV", "DarkFit", "design", "fit_dark", "fit_loglinear", "predict", "predict_variance",
           "temperature_feature"]

BOLTZMANN_EV = 8.617333262e-5  # eV / K
KELVIN = 273.15
PARAMETERS = ("lnA", "slope", "gamma")
_CHUNK = 32768  # pixels solved together; bounds the working memory to a few tens of MB
_MAX_EXPONENT = 80.0
_LN_A_RANGE = (-60.0, 60.0)  # keeps A representable in float32 products
_TOLERANCE = 1e-3  # chi-square gain below which a pixel has converged (a step of ~0.03 sigma)


def temperature_feature(temperature, tmin: float, form: str):
    """The temperature regressor x(T) of ``form`` ('exponential' or 'arrhenius')."""
    temperature = np.asarray(temperature, dtype=np.float64)
    if form == "exponential":
        return temperature - tmin
    if form == "arrhenius":
        return -(1 / (temperature + KELVIN) - 1 / (tmin + KELVIN)) / BOLTZMANN_EV
    raise ValueError(f"dark_form: unknown form {form!r} (exponential or arrhenius)")


def design(temperature, exptime, tmin: float, form: str) -> np.ndarray:
    """Regressors ``[1, x(T), ln t]`` of each sample, shape (..., 3)."""
    x = temperature_feature(temperature, tmin, form)
    t = np.broadcast_to(np.log(np.asarray(exptime, dtype=np.float64)), np.shape(x))
    return np.stack([np.ones_like(x), x, t], axis=-1)


@dataclass
class DarkFit:
    """Result of :func:`fit_dark` for ``npix`` pixels.

    Attributes
    ----------
    params : ndarray, shape (3, npix)
        lnA (A in DN / s^gamma at Tmin), slope (B [1/degC] or Ea [eV]), gamma; NaN where not fitted.
    cov : ndarray, shape (3, 3, npix)
        Parameter covariance from the final normal matrix (zero for a fixed gamma).
    chi2r : ndarray, shape (npix,)
        Reduced chi-square.
    nvalid : ndarray, shape (npix,)
        Valid samples used.
    converged : ndarray of bool, shape (npix,)
        False also where the parameters are not determined (covariance not positive).
    """

    params: np.ndarray
    cov: np.ndarray
    chi2r: np.ndarray
    nvalid: np.ndarray
    converged: np.ndarray


def _regularized(matrix):
    """Add 1e-12 of each matrix's mean diagonal to its diagonal: no pixel's system is singular,
    so every pixel is solved on its own, whatever else is in the batch."""
    size = matrix.shape[-1]
    scale = np.trace(matrix, axis1=-2, axis2=-1) / size
    return matrix + (1e-12 * scale + 1e-300)[..., None, None] * np.eye(size)


def _solve(matrix, rhs):
    return np.linalg.solve(_regularized(matrix), rhs[..., None])[..., 0]


def _normal_matrix(weights, Z):
    """sum_m weights[m, p] Z[m, i] Z[m, j] -> (npix, P, P), reducing only the upper triangle."""
    P = Z.shape[1]
    i, j = np.triu_indices(P)
    upper = _reduce(weights, Z[:, i] * Z[:, j])
    H = np.empty((upper.shape[0], P, P))
    H[:, i, j] = upper
    H[:, j, i] = upper
    return H


def _sum0(values):
    """Sum over samples (axis 0), accumulated in sample order for every pixel.

    NumPy's reductions pick their summation order by memory layout (pairwise when a single
    pixel is left), and a pixel's result must not depend on which other pixels share its tile.
    """
    total = values[0].copy()
    for row in values[1:]:
        total += row
    return total


def _reduce(weights, Z):
    """sum_m weights[m, p] * Z[m, k] -> (npix, K), in sample order (see :func:`_sum0`)."""
    total = np.empty((Z.shape[1], weights.shape[1]))
    term = np.empty(weights.shape[1])
    for k in range(Z.shape[1]):
        np.multiply(weights[0], Z[0, k], out=total[k])
        for m in range(1, len(Z)):
            total[k] += np.multiply(weights[m], Z[m, k], out=term)
    return total.T


def _exponent(Z, theta, offset):
    """ln of the model, (M, npix), clipped to keep exp finite."""
    linear = offset[:, None] + Z[:, 0, None] * theta[:, 0]
    for i in range(1, Z.shape[1]):
        linear = linear + Z[:, i, None] * theta[:, i]
    return np.clip(linear, -_MAX_EXPONENT, _MAX_EXPONENT)


def _model(Z, theta, offset):
    """Model dark signal (M, npix) at parameters ``theta`` (npix, P)."""
    return np.exp(_exponent(Z, theta, offset))


def _normal(Z, w, y, m):
    """Chi-square, normal matrix (npix, P, P) and gradient (npix, P) at model ``m``."""
    r = y - m
    wm = w * m
    return _sum0(w * r * r), _normal_matrix(wm * m, Z), _reduce(wm * r, Z)


def fit_loglinear(y, weights, Z, offset):
    """Weighted least squares of ln y on the regressors (samples with y <= 0 dropped).

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
    H = _normal_matrix(w, Z)
    g = _reduce(w * z, Z)
    enough = np.sum(w > 0, axis=0) >= Z.shape[1]
    theta = np.full(g.shape, np.nan)
    if enough.any():
        theta[enough] = _solve(H[enough], g[enough])
    return theta


def _common_error(Z, wm, cov, D, common_cov):
    """Add to ``cov`` the effect of an error common to all samples of a pixel.

    The samples carry an unknown shift D @ e, e ~ N(0, common_cov) (the bias model
    subtracted from every master); the fitted parameters move by K e with
    K = H^-1 J^T W D (``wm`` = weight * model), so their covariance grows by K common_cov K^T.
    """
    P, Q = Z.shape[1], D.shape[1]
    JWD = _reduce(wm, (Z[:, :, None] * D[:, None, :]).reshape(len(Z), -1)).reshape(-1, P, Q)
    K = cov @ JWD
    return cov + K @ common_cov @ np.swapaxes(K, 1, 2)


def _start(y, valid, base_var, shot_scale, Z, offset):
    """Weighted log-linear start; a pixel with too few positive samples starts flat at its mean level."""
    P = Z.shape[1]
    var0 = np.where(valid, base_var + shot_scale * np.clip(y, 0, None), np.inf)
    theta = fit_loglinear(y, np.where(valid, np.clip(y, 0, None) ** 2 / var0, 0), Z, offset)
    start = np.zeros_like(theta)
    mean = _sum0(np.where(valid, y, 0.0)) / np.maximum(valid.sum(axis=0), 1)
    start[:, 0] = np.log(np.maximum(mean, 1e-6)) - np.mean(offset) - (np.mean(Z[:, 2]) if P == 3 else 0)
    if P == 3:
        start[:, 2] = 1.0
    return np.where(np.isfinite(theta), theta, start)


def _fit_chunk(y, valid, base_var, shot_scale, Z, offset, max_iterations, common=None):
    """Reweighted Levenberg-Marquardt: every step takes the weights from the current model.

    A pixel stops when its step would lower chi-square by less than ``_TOLERANCE`` (the step
    is then ~0.03 sigma), or when the damping cannot find a better point. ``common`` is
    (D, common_cov) of :func:`_common_error`, propagated into the returned covariance.
    Pixels whose covariance is not positive come back as not converged.
    """
    P = Z.shape[1]
    theta = _start(y, valid, base_var, shot_scale, Z, offset)
    converged = np.zeros(y.shape[1], dtype=bool)
    lam = np.full(y.shape[1], 1e-3)
    active = np.arange(y.shape[1])
    m = _model(Z, theta, offset)
    for _ in range(max_iterations):
        if not active.size:
            break
        ya, ma, ta = y[:, active], m[:, active], theta[active]
        w = np.where(valid[:, active], 1 / (base_var[:, active] + shot_scale[:, active] * ma), 0.0)
        chi2, H, g = _normal(Z, w, ya, ma)
        step = _solve(H + lam[active, None, None] * H * np.eye(P), g)
        trial = ta + step
        trial[:, 0] = np.clip(trial[:, 0], *_LN_A_RANGE)
        m_trial = _model(Z, trial, offset)
        better = _sum0(w * (ya - m_trial) ** 2) <= chi2
        theta[active[better]] = trial[better]
        m[:, active[better]] = m_trial[:, better]
        lam[active] = np.where(better, lam[active] * 0.1, lam[active] * 10)
        gain = np.einsum("pi,pi->p", step, g)  # predicted chi-square decrease of the step
        done = (better & (gain < _TOLERANCE)) | (lam[active] > 1e10)
        converged[active[done]] = True
        active = active[~done]
    w = np.where(valid, 1 / (base_var + shot_scale * m), 0.0)
    chi2, H, _ = _normal(Z, w, y, m)
    cov = np.linalg.inv(_regularized(H))
    variances = np.diagonal(cov, axis1=1, axis2=2)
    converged &= np.all(np.isfinite(variances) & (variances > 0), axis=1)  # else the parameters are not determined
    if common is not None:
        cov = _common_error(Z, w * m, cov, *common)
    return theta, cov, chi2, converged


def fit_dark(signal, valid, base_var, shot_scale, temperature, exptime, tmin: float, form: str = "exponential",
             fit_gamma: bool = True, max_iterations: int = 50, min_dof: int = 1, bias_cov=None) -> DarkFit:
    """Fit the dark model to every pixel by noise-weighted Levenberg-Marquardt.

    Parameters
    ----------
    signal : ndarray, shape (M, npix)
        Master dark signal [DN] (bias removed).
    valid : ndarray of bool, shape (M, npix)
        Samples to use (finite, not saturated).
    base_var : ndarray, shape (M, npix)
        Signal-independent variance of each master [DN^2] (read noise / n + bias model).
    shot_scale : ndarray, shape (M, npix)
        Shot-noise variance per DN of signal (1 / (g n)); the weights use the model signal.
    temperature, exptime : ndarray, shape (M,)
        Master temperatures [degC] and exposures [s].
    tmin : float
        Reference temperature of A [degC].
    form : {"exponential", "arrhenius"}, default "exponential"
    fit_gamma : bool, default True
        2d model; False fixes gamma = 1 (1d model, A in DN/s).
    max_iterations : int, default 50
        Most Levenberg-Marquardt iterations (each reweights from the current model).
    min_dof : int, default 1
        Pixels with fewer than (parameters + min_dof) valid samples are not fitted (NaN).
    bias_cov : ndarray, shape (3, npix), optional
        var(a), var(b), cov(a, b) of a bias model a + b*T removed from every master. Its
        error is common to all masters of a pixel (so it is not in ``base_var``); it is
        propagated into the parameter covariance.

    Returns
    -------
    DarkFit
    """
    Z3 = design(temperature, exptime, tmin, form)
    Z = Z3 if fit_gamma else Z3[:, :2]
    offset = np.zeros(len(Z)) if fit_gamma else Z3[:, 2]
    P = Z.shape[1]
    npix = signal.shape[1]
    nvalid = valid.sum(axis=0)
    enough = nvalid >= P + min_dof
    params = np.full((3, npix), np.nan)
    cov = np.zeros((3, 3, npix))
    chi2r = np.full(npix, np.nan)
    converged = np.zeros(npix, dtype=bool)
    index = np.flatnonzero(enough)
    for lo in range(0, index.size, _CHUNK):
        sel = index[lo:lo + _CHUNK]
        y, ok, var0, shot = (signal[:, sel].astype(np.float64), valid[:, sel], base_var[:, sel].astype(np.float64),
                             shot_scale[:, sel].astype(np.float64))
        common = None
        if bias_cov is not None:
            va, vb, cab = (bias_cov[k, sel].astype(np.float64) for k in range(3))
            D = np.stack([np.ones(len(Z)), np.asarray(temperature, dtype=np.float64)], -1)
            common = (D, np.stack([np.stack([va, cab], -1), np.stack([cab, vb], -1)], -2))
        theta, c, chi2, conv = _fit_chunk(y, ok, var0, shot, Z, offset, max_iterations, common)
        params[:P, sel] = theta.T
        cov[:P, :P, sel] = np.moveaxis(c, 0, -1)
        with np.errstate(divide="ignore", invalid="ignore"):
            chi2r[sel] = np.where(nvalid[sel] > P, chi2 / (nvalid[sel] - P), np.nan)
        converged[sel] = conv
    if not fit_gamma:
        params[2, enough] = 1.0
    return DarkFit(params=params, cov=cov, chi2r=chi2r, nvalid=nvalid, converged=converged)


def predict(params, temperature, exptime, tmin: float, form: str):
    """Dark signal [DN] of every pixel at one ``temperature`` [degC] and ``exptime`` [s].

    ``params`` has shape (3, ...): lnA, slope, gamma.
    """
    z = design(temperature, exptime, tmin, form)
    return np.exp(params[0] + z[..., 1] * params[1] + z[..., 2] * params[2])


def predict_variance(params, cov, temperature, exptime, tmin: float, form: str):
    """Variance [DN^2] of :func:`predict` at one (T, t) from the parameter covariance ``cov`` (3, 3, ...)."""
    z = design(temperature, exptime, tmin, form)
    quad = np.einsum("i,ij...,j->...", z, cov, z)
    with np.errstate(over="ignore", invalid="ignore"):  # undetermined pixels (flagged POOR_FIT) give inf/NaN
        return predict(params, temperature, exptime, tmin, form) ** 2 * quad
