"""Compiled per-pixel loops: decoding raw frames, combining them into masters, fitting the
dark model, and the residual statistics of the evaluation.

Every kernel is serial and releases the GIL (``nogil``): parallelism comes from running tiles
on several threads or dask workers at once (:mod:`cmoscal.compute`). Kernels are compiled once
and cached on disk (``cache=True``); ``make env`` pays the compile (:func:`warm_up`).
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["COVARIANCE_PLANES", "FIT_FLAGS", "combine_stack", "decode_be16", "fit_pixels", "mark_frame",
           "residual_maps", "warm_up"]

#: flags returned per pixel by :func:`fit_pixels`
FIT_FLAGS = {"CONVERGED": 1, "FALLBACK": 2, "FEW_SAMPLES": 4, "NO_SAMPLES": 8, "FULL_WELL": 16, "OUTLIERS": 32}
_CONVERGED, _FALLBACK, _FEW, _NONE, _FULL_WELL, _OUTLIERS = 1, 2, 4, 8, 16, 32
#: covariance planes of :func:`fit_pixels`: (lnA, slope, gamma) index pairs
COVARIANCE_PLANES = ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2))
_MAX_EXPONENT = 80.0
_KNEE = 0.9  # on a full-well plateau, samples at or above this fraction of its level are dropped
_MEDIAN_EFFICIENCY = np.pi / 2  # variance of a median relative to a mean, large N


# --- raw frames ---------------------------------------------------------------------------------
@njit(cache=True, nogil=True)
def decode_be16(raw, out, bscale, bzero, inv_scale, saturation, blank, has_blank):
    """Decode big-endian 16-bit FITS integers into DN.

    Parameters
    ----------
    raw : ndarray of uint16, 1-D
        The file's bytes read as native uint16 (so every value is byte-swapped).
    out : ndarray of float32, 1-D, same size
        ``(int16 * bscale + bzero) * inv_scale``; saturated samples (>= ``saturation`` DN) as +inf,
        BLANK samples as NaN.

    Returns
    -------
    saturated, zero, blank : int
        Counts of saturated, zero-valued and BLANK samples.
    """
    nsat = 0
    nzero = 0
    nblank = 0
    for i in range(raw.size):
        u = ((np.int64(raw[i]) >> 8) | (np.int64(raw[i]) << 8)) & 0xFFFF
        if u >= 32768:
            u -= 65536
        if has_blank and u == blank:
            out[i] = np.nan
            nblank += 1
            continue
        value = u * bscale + bzero
        if value == 0:
            nzero += 1
        dn = value * inv_scale
        if dn >= saturation:
            out[i] = np.inf
            nsat += 1
        else:
            out[i] = dn
    return nsat, nzero, nblank


@njit(cache=True, nogil=True)
def mark_frame(values, saturation):
    """Mark saturated samples of a frame in DN (1-D float32, in place) as +inf.

    Returns the counts of saturated, zero-valued and NaN samples.
    """
    nsat = 0
    nzero = 0
    nnan = 0
    for i in range(values.size):
        v = values[i]
        if np.isnan(v):
            nnan += 1
        elif v >= saturation:
            values[i] = np.inf
            nsat += 1
        elif v == 0:
            nzero += 1
    return nsat, nzero, nnan


# --- masters ------------------------------------------------------------------------------------
@njit(cache=True)
def _sort(values, n):
    """Insertion sort of ``values[:n]`` in place (n is a few to a few tens)."""
    for i in range(1, n):
        v = values[i]
        j = i - 1
        while j >= 0 and values[j] > v:
            values[j + 1] = values[j]
            j -= 1
        values[j + 1] = v


@njit(cache=True)
def _median_sorted(values, n):
    return values[(n - 1) // 2] if n % 2 else 0.5 * (values[n // 2 - 1] + values[n // 2])


@njit(cache=True, nogil=True)
def combine_stack(stack, floor_var, inv_gain, clip_sigma, median, master, variance, nused, nsat, nclip):
    """Combine a stack of frames pixel by pixel.

    Parameters
    ----------
    stack : ndarray, shape (N, R, X), float32
        Frames [DN]; NaN marks an invalid sample, +inf a saturated one (both left out).
    floor_var, inv_gain : float
        The group's noise model, sigma^2 = floor_var + max(level, 0) * inv_gain [DN^2]: the
        clipping scale is never below it. inv_gain < 0: unknown (two samples are then kept).
    clip_sigma : float
        The mean rejects samples further than this many robust sigma (1.4826 MAD, floored by
        the noise model) from the median. With two samples, the higher one is dropped when
        they differ by more than clip_sigma * sqrt(2) sigma (a cosmic ray is always positive).
    median : bool
        Median instead of clipped mean (no clipping).
    master, variance : ndarray, shape (R, X), float32 (out)
        Combined frame and its variance from the scatter of the samples used (NaN below 2).
    nused, nsat, nclip : ndarray, shape (R, X) (out)
        Samples used, saturated samples (uint8, at most 255) and samples clipped.
    """
    N, R, X = stack.shape
    values = np.empty(N)
    work = np.empty(N)
    for r in range(R):
        for x in range(X):
            k = 0
            s = 0
            for i in range(N):
                v = stack[i, r, x]
                if np.isnan(v):
                    continue
                if np.isinf(v):
                    s += 1
                    continue
                values[k] = v
                k += 1
            nsat[r, x] = min(s, 255)
            nclip[r, x] = 0
            if k == 0:
                master[r, x] = np.nan
                variance[r, x] = np.nan
                nused[r, x] = 0
                continue
            _sort(values, k)
            center = _median_sorted(values, k)
            if k == 1:
                master[r, x] = values[0]
                variance[r, x] = np.nan
                nused[r, x] = 1
                continue
            if median or k >= 3:
                if median:
                    lo, hi = 0, k
                else:
                    for i in range(k):
                        work[i] = abs(values[i] - center)
                    _sort(work, k)
                    scale = max(1.4826 * _median_sorted(work, k),
                                np.sqrt(floor_var + max(center, 0.0) * max(inv_gain, 0.0)))
                    lo = 0
                    while center - values[lo] > clip_sigma * scale:
                        lo += 1
                    hi = k
                    while values[hi - 1] - center > clip_sigma * scale:
                        hi -= 1
            else:  # two samples: drop the higher when they differ by far more than the noise model allows
                lo = 0
                hi = 2
                if inv_gain >= 0:
                    sigma = np.sqrt(floor_var + max(values[0], 0.0) * inv_gain)
                    if values[1] - values[0] > clip_sigma * np.sqrt(2.0) * sigma:
                        hi = 1
            m = hi - lo
            mean = 0.0
            for i in range(lo, hi):
                mean += values[i]
            mean /= m
            ss = 0.0
            for i in range(lo, hi):
                ss += (values[i] - mean) ** 2
            master[r, x] = center if median else mean
            if m < 2:
                variance[r, x] = np.nan
            else:
                variance[r, x] = ss / (m - 1) / m * (_MEDIAN_EFFICIENCY if median else 1.0)
            nused[r, x] = m
            nclip[r, x] = k - m


# --- the dark fit -------------------------------------------------------------------------------
@njit(cache=True)
def _model(Z, offset, theta, P, out):
    for i in range(Z.shape[0]):
        e = offset[i]
        for a in range(P):
            e += Z[i, a] * theta[a]
        out[i] = np.exp(min(max(e, -_MAX_EXPONENT), _MAX_EXPONENT))


@njit(cache=True)
def _solve(A, b, P, x, work):
    """Solve the P x P system A x = b (Gaussian elimination, partial pivoting); False if singular."""
    for i in range(P):
        for j in range(P):
            work[i, j] = A[i, j]
        work[i, P] = b[i]
    for c in range(P):
        p = c
        for r in range(c + 1, P):
            if abs(work[r, c]) > abs(work[p, c]):
                p = r
        if not (abs(work[p, c]) > 0.0) or not np.isfinite(work[p, c]):
            return False
        if p != c:
            for j in range(P + 1):
                t = work[c, j]
                work[c, j] = work[p, j]
                work[p, j] = t
        for r in range(c + 1, P):
            f = work[r, c] / work[c, c]
            for j in range(c, P + 1):
                work[r, j] -= f * work[c, j]
    for i in range(P - 1, -1, -1):
        s = work[i, P]
        for j in range(i + 1, P):
            s -= work[i, j] * x[j]
        x[i] = s / work[i, i]
    return True


@njit(cache=True)
def _normal(y, valid, base, shot, Z, P, m, H, g):
    """Weights from the model ``m``; fill the normal matrix H and gradient g; return chi-square."""
    for a in range(P):
        g[a] = 0.0
        for b in range(P):
            H[a, b] = 0.0
    chi2 = 0.0
    for i in range(y.shape[0]):
        if not valid[i]:
            continue
        w = 1.0 / (base[i] + shot[i] * m[i])
        r = y[i] - m[i]
        chi2 += w * r * r
        wm = w * m[i]
        for a in range(P):
            g[a] += wm * r * Z[i, a]
            for b in range(a, P):
                H[a, b] += wm * m[i] * Z[i, a] * Z[i, b]
    for a in range(P):
        for b in range(a):
            H[a, b] = H[b, a]
    return chi2


@njit(cache=True)
def _regularize(H, P, out, lam):
    """out = H + lam diag(H) + 1e-12 of the mean diagonal: no pixel's system is singular."""
    trace = 0.0
    for a in range(P):
        trace += H[a, a]
    for a in range(P):
        for b in range(P):
            out[a, b] = H[a, b]
        out[a, a] += lam * H[a, a] + 1e-12 * trace / P + 1e-300


@njit(cache=True)
def _lm(y, valid, base, shot, Z, offset, P, theta, max_iter, tol, ln_a_range, ws):
    """Reweighted Levenberg-Marquardt from ``theta`` (updated in place); True when converged.

    Every step takes its weights from the current model. A pixel stops when its step would
    lower chi-square by less than ``tol`` (a step of ~sqrt(tol) sigma), or when the damping
    cannot find a better point.
    """
    m, mt, H, A, g, step, trial, work, K = ws
    lam = 1e-3
    _model(Z, offset, theta, P, m)
    for _ in range(max_iter):
        chi2 = _normal(y, valid, base, shot, Z, P, m, H, g)
        _regularize(H, P, A, lam)
        if not _solve(A, g, P, step, work):
            lam *= 10.0
            if lam > 1e10:
                return True
            continue
        for a in range(P):
            trial[a] = theta[a] + step[a]
        trial[0] = min(max(trial[0], ln_a_range[0]), ln_a_range[1])
        _model(Z, offset, trial, P, mt)
        chi2_trial = 0.0
        for i in range(y.shape[0]):
            if valid[i]:
                chi2_trial += (y[i] - mt[i]) ** 2 / (base[i] + shot[i] * m[i])
        gain = 0.0
        for a in range(P):
            gain += step[a] * g[a]
        if chi2_trial <= chi2:
            for a in range(P):
                theta[a] = trial[a]
            for i in range(y.shape[0]):
                m[i] = mt[i]
            lam *= 0.1
            if gain < tol:
                return True
        else:
            lam *= 10.0
            if lam > 1e10:
                return True
    return False


@njit(cache=True)
def _start(y, valid, base, shot, Z, offset, P, theta, ws):
    """Weighted log-linear start (weights y^2 / var); flat at the mean level if too few positive samples."""
    m, mt, H, A, g, step, trial, work, K = ws
    for a in range(P):
        g[a] = 0.0
        for b in range(P):
            H[a, b] = 0.0
    npos = 0
    for i in range(y.shape[0]):
        if not valid[i] or y[i] <= 0:
            continue
        npos += 1
        w = y[i] * y[i] / (base[i] + shot[i] * y[i])
        z = np.log(y[i]) - offset[i]
        for a in range(P):
            g[a] += w * z * Z[i, a]
            for b in range(P):
                H[a, b] += w * Z[i, a] * Z[i, b]
    if npos >= P:
        _regularize(H, P, A, 0.0)
        if _solve(A, g, P, theta, work):
            return
    total = 0.0
    n = 0
    mean_offset = 0.0
    mean_t = 0.0
    for i in range(y.shape[0]):
        if valid[i]:
            total += y[i]
            n += 1
            mean_offset += offset[i]
            if P == 3:
                mean_t += Z[i, 2]
    theta[0] = np.log(max(total / max(n, 1), 1e-6)) - (mean_offset + mean_t) / max(n, 1)
    for a in range(1, P):
        theta[a] = 0.0
    if P == 3:
        theta[2] = 1.0


@njit(cache=True)
def _covariance(y, valid, base, shot, Z, P, cov, ws):
    """Chi-square and parameter covariance (inverse normal matrix) at the current model ``ws[0]``;
    False if the covariance is not positive."""
    m, mt, H, A, g, step, trial, work, K = ws
    chi2 = _normal(y, valid, base, shot, Z, P, m, H, g)
    _regularize(H, P, A, 0.0)
    ok = True
    for c in range(P):
        for a in range(P):
            g[a] = 1.0 if a == c else 0.0
        if not _solve(A, g, P, step, work):
            ok = False
            break
        for a in range(P):
            cov[a, c] = step[a]
    for a in range(P):
        ok = ok and np.isfinite(cov[a, a]) and cov[a, a] > 0
    return chi2, ok


@njit(cache=True)
def _worst(y, valid, base, shot, Z, P, cov, m, positive):
    """Largest studentized residual |r| / (sigma sqrt(1 - h)) of the current fit (h: the sample's leverage)."""
    worst = 0.0
    for i in range(y.shape[0]):
        if not valid[i]:
            continue
        var = base[i] + shot[i] * m[i]
        h = 0.0
        if positive:
            for a in range(P):
                for b in range(P):
                    h += Z[i, a] * cov[a, b] * Z[i, b]
            h *= m[i] * m[i] / var
        worst = max(worst, abs(y[i] - m[i]) / np.sqrt(var * max(1.0 - h, 1e-6)))
    return worst


@njit(cache=True)
def _robust(y, valid, base, shot, Z, offset, P, theta, max_iter, tol, ln_a_range, outlier_sigma, max_outliers,
            min_valid, outliers, cov, ws, trial, best):
    """Fit; while a sample is further than ``outlier_sigma`` from the model, drop the one whose removal
    lowers chi-square most (each candidate refitted from scratch, so a gross outlier that dragged the
    fit is found wherever it is), if that lowers chi-square by at least ``outlier_sigma``^2 (the
    squared deleted residual: the sample is an outlier of the fit made without it), and refit.

    Returns (converged, chi-square, covariance positive, number of samples dropped); ``cov`` holds
    the covariance and ``ws[0]`` the model at ``theta``; dropped samples are set in ``outliers``.
    """
    m = ws[0]
    converged = _lm(y, valid, base, shot, Z, offset, P, theta, max_iter, tol, ln_a_range, ws)
    chi2, positive = _covariance(y, valid, base, shot, Z, P, cov, ws)
    dropped = 0
    n = 0
    for i in range(y.shape[0]):
        n += valid[i]
    while dropped < max_outliers and n - 1 >= min_valid:
        if _worst(y, valid, base, shot, Z, P, cov, m, positive) <= outlier_sigma:
            break
        candidate, lowest = -1, np.inf
        for i in range(y.shape[0]):
            if not valid[i]:
                continue
            valid[i] = False
            _start(y, valid, base, shot, Z, offset, P, trial, ws)
            _lm(y, valid, base, shot, Z, offset, P, trial, max_iter, tol, ln_a_range, ws)
            c = 0.0
            for k in range(y.shape[0]):
                if valid[k]:
                    c += (y[k] - m[k]) ** 2 / (base[k] + shot[k] * m[k])
            valid[i] = True
            if c < lowest:
                candidate, lowest = i, c
                for a in range(P):
                    best[a] = trial[a]
        if chi2 - lowest < outlier_sigma * outlier_sigma:  # no sample's removal explains the tension
            _model(Z, offset, theta, P, m)
            break
        valid[candidate] = False
        outliers[candidate] = True
        dropped += 1
        n -= 1
        for a in range(P):
            theta[a] = best[a]
        converged = _lm(y, valid, base, shot, Z, offset, P, theta, max_iter, tol, ln_a_range, ws)
        chi2, positive = _covariance(y, valid, base, shot, Z, P, cov, ws)
    return converged, chi2, positive, dropped


@njit(cache=True)
def _acceptable(chi2, dof, sigma):
    """A fit's chi-square is acceptable: within ``sigma`` standard deviations of its degrees of freedom."""
    return dof <= 0 or chi2 <= dof + sigma * np.sqrt(2.0 * dof)


@njit(cache=True)
def _population_offsets(Z, offset, P, prior, out):
    """ln DC of each sample minus lnA under the population slope and gamma."""
    for i in range(Z.shape[0]):
        out[i] = offset[i] + Z[i, 1] * prior[0] + (Z[i, 2] * prior[1] if P == 3 else 0.0)


@njit(cache=True)
def _common_error(valid, base, shot, Z, P, m, D, cab, cov, JWD, K):
    """Add to ``cov`` the effect of an error common to all samples (the subtracted bias model).

    The samples carry an unknown shift D e, e ~ N(0, cab); the parameters move by K e with
    K = cov J^T W D, so their covariance grows by K cab K^T.
    """
    for a in range(P):
        JWD[a, 0] = 0.0
        JWD[a, 1] = 0.0
    for i in range(Z.shape[0]):
        if valid[i]:
            wm = m[i] / (base[i] + shot[i] * m[i])
            for a in range(P):
                JWD[a, 0] += wm * Z[i, a] * D[i, 0]
                JWD[a, 1] += wm * Z[i, a] * D[i, 1]
    for a in range(P):
        for q in range(2):
            K[a, q] = 0.0
            for b in range(P):
                K[a, q] += cov[a, b] * JWD[b, q]
    for a in range(P):
        for b in range(P):
            for q in range(2):
                for r in range(2):
                    cov[a, b] += K[a, q] * cab[q, r] * K[b, r]


@njit(cache=True, nogil=True)
def fit_pixels(y, valid, base, shot, level, tgroup, egroup, Z, offset, P, min_dof, max_iter, tol, outlier_sigma,
               max_outliers, full_well, lo, hi, prior, prior_var, D, bias_cov, theta_out, cov_out, chi2_out,
               nvalid_out, flags_out, outliers_out):
    """Fit ``DC = exp(offset + Z theta)`` to every pixel by noise-weighted, reweighted Levenberg-Marquardt.

    Parameters
    ----------
    y, valid, base, shot : ndarray, shape (M, npix)
        Master dark signal [DN], usable samples, signal-independent variance [DN^2] and shot-noise
        variance per DN of signal; the weights use the model signal.
    level : ndarray, shape (M, npix) or (0, 0)
        Total level of each sample (signal + bias) [DN] for the full-well test; empty to skip it.
    tgroup, egroup : ndarray of int, shape (M,)
        Temperature and exposure group of each master (for the full-well plateau).
    Z : ndarray, shape (M, 3)
        Regressors [1, x(T), ln t]; the first P are fitted.
    offset : ndarray, shape (M,)
        Fixed part of ln DC (ln t for a 1d model).
    P, min_dof, max_iter : int
        Parameters fitted (3: 2d, 2: 1d); a pixel's own fit needs P + min_dof valid samples.
    tol : float
        Chi-square gain below which a fit has converged.
    outlier_sigma, max_outliers : float, int
        Robust fit: the worst sample beyond outlier_sigma is dropped and the pixel refitted,
        at most max_outliers times.
    full_well : float
        Level [DN] above which a plateau (two samples within 3 sigma of the pixel's highest
        level, sharing a temperature or an exposure group) counts as full well: the samples at
        or above 90 % of that level (the plateau and its knee) are dropped. <= 0 skips the test.
    lo, hi : ndarray, shape (3,)
        Bounds of (lnA, slope, gamma) for a pixel's own fit to be trusted.
    prior, prior_var : ndarray, shape (3,)
        Population (slope, gamma) and their variances used where a pixel's own fit is not
        trusted: then only lnA is fitted (flag FALLBACK), and the population spread enters
        its covariance.
    D : ndarray, shape (M, 2)
        ``[1, T]`` of each master; with ``bias_cov`` (3, npix: var a, var b, cov ab) the error
        of the subtracted bias model is propagated into the covariance (empty: not done).
    theta_out, cov_out, chi2_out, nvalid_out, flags_out, outliers_out : ndarray (out)
        (3, npix) lnA, slope, gamma (NaN without samples); (6, npix) covariance planes
        :data:`COVARIANCE_PLANES`; chi-square; valid samples used; :data:`FIT_FLAGS`;
        (M, npix) samples dropped as outliers or full well.
    """
    M, npix = y.shape
    yp = np.empty(M)
    vp = np.empty(M, dtype=np.bool_)
    v0 = np.empty(M, dtype=np.bool_)
    bp = np.empty(M)
    sp = np.empty(M)
    outl = np.empty(M, dtype=np.bool_)
    off1 = np.empty(M)
    Z1 = np.ones((M, 1))
    ws = (np.empty(M), np.empty(M), np.empty((3, 3)), np.empty((3, 3)), np.empty(3), np.empty(3), np.empty(3),
          np.empty((3, 4)), np.empty((3, 2)))
    theta = np.empty(3)
    alt = np.empty(3)
    cov_alt = np.zeros((3, 3))
    vq = np.empty(M, dtype=np.bool_)
    outq = np.empty(M, dtype=np.bool_)
    trial = np.empty(3)
    best = np.empty(3)
    cov = np.zeros((3, 3))
    cab = np.empty((2, 2))
    ln_a_range = np.array([lo[0], hi[0]])
    propagate = bias_cov.shape[0] == 3
    for p in range(npix):
        n = 0
        for i in range(M):
            yp[i] = y[i, p]
            vp[i] = valid[i, p] and np.isfinite(yp[i])
            bp[i] = base[i, p]
            sp[i] = shot[i, p]
            outl[i] = False
            n += vp[i]
        flags = 0
        if n > 0 and full_well > 0 and level.shape[0] == M:
            top = -np.inf
            for i in range(M):
                if vp[i] and level[i, p] > top:
                    top = level[i, p]
            if top >= full_well:
                plateau = False
                for i in range(M):
                    if not vp[i] or top - level[i, p] > 3 * np.sqrt(bp[i] + sp[i] * max(yp[i], 0.0)):
                        continue
                    for j in range(i + 1, M):
                        if (vp[j] and top - level[j, p] <= 3 * np.sqrt(bp[j] + sp[j] * max(yp[j], 0.0))
                                and (tgroup[i] == tgroup[j] or egroup[i] == egroup[j])):
                            plateau = True
                if plateau:  # the plateau and its knee: within 10 % below the top level
                    for i in range(M):
                        if vp[i] and level[i, p] >= _KNEE * top:
                            vp[i] = False
                            outl[i] = True
                            n -= 1
                    flags |= _FULL_WELL
        if n == 0:
            for a in range(3):
                theta_out[a, p] = np.nan
            for k in range(6):
                cov_out[k, p] = np.nan
            chi2_out[p] = np.nan
            nvalid_out[p] = 0
            flags_out[p] = flags | _NONE | _FEW
            for i in range(M):
                outliers_out[i, p] = outl[i]
            continue
        for i in range(M):
            v0[i] = vp[i]
        trusted = False
        dropped = 0
        chi2 = np.nan
        if n >= P + min_dof:
            _start(yp, vp, bp, sp, Z, offset, P, theta, ws)
            converged, chi2, positive, dropped = _robust(yp, vp, bp, sp, Z, offset, P, theta, max_iter, tol,
                                                         ln_a_range, outlier_sigma, max_outliers, P + min_dof, outl,
                                                         cov, ws, trial, best)
            if not _acceptable(chi2, n - dropped - P, outlier_sigma) and np.isfinite(prior[0]):
                # Coincident outliers can mask each other (the fit bends to them); against the population
                # law they stand out. Drop those, refit the pixel's own model, keep it if it is acceptable.
                for i in range(M):
                    vq[i] = v0[i]
                    outq[i] = False
                _population_offsets(Z, offset, P, prior, off1)
                _start(yp, vq, bp, sp, Z1, off1, 1, alt, ws)
                _robust(yp, vq, bp, sp, Z1, off1, 1, alt, max_iter, tol, ln_a_range, outlier_sigma, max_outliers,
                        1 + min_dof, outq, cov_alt, ws, trial, best)
                _start(yp, vq, bp, sp, Z, offset, P, alt, ws)
                nq = 0
                for i in range(M):
                    nq += vq[i]
                c2, pos2, d2 = np.nan, False, 0
                if nq >= P + min_dof:
                    conv2, c2, pos2, d2 = _robust(yp, vq, bp, sp, Z, offset, P, alt, max_iter, tol, ln_a_range,
                                                  outlier_sigma, max_outliers, P + min_dof, outq, cov_alt, ws, trial,
                                                  best)
                k = 0
                for i in range(M):
                    k += outq[i]
                if pos2 and k <= max_outliers and _acceptable(c2, nq - d2 - P, outlier_sigma):
                    for i in range(M):
                        vp[i], outl[i] = vq[i], outq[i]
                    for a in range(3):
                        theta[a] = alt[a]
                        for b in range(3):
                            cov[a, b] = cov_alt[a, b]
                    converged, chi2, positive, dropped = conv2, c2, pos2, k
                else:
                    _model(Z, offset, theta, P, ws[0])
            trusted = converged and positive
            for a in range(P):
                trusted = trusted and lo[a] <= theta[a] <= hi[a]
            if trusted:
                flags |= _CONVERGED
                if propagate:
                    cab[0, 0], cab[1, 1] = bias_cov[0, p], bias_cov[1, p]
                    cab[0, 1] = cab[1, 0] = bias_cov[2, p]
                    _common_error(vp, bp, sp, Z, P, ws[0], D, cab, cov, ws[7], ws[8])
                if P == 2:
                    theta[2] = 1.0
                    for a in range(3):
                        cov[a, 2] = cov[2, a] = 0.0
        else:
            flags |= _FEW
        if not trusted:  # population slope and gamma, the pixel's own amplitude
            flags |= _FALLBACK
            for i in range(M):
                if v0[i]:  # forget the outliers of the untrusted fit, keep the full-well samples out
                    outl[i] = False
                vp[i] = v0[i]
            _population_offsets(Z, offset, P, prior, off1)
            _start(yp, vp, bp, sp, Z1, off1, 1, theta, ws)
            converged, chi2, positive, dropped = _robust(yp, vp, bp, sp, Z1, off1, 1, theta, max_iter, tol,
                                                         ln_a_range, outlier_sigma, max_outliers, 1 + min_dof, outl,
                                                         cov, ws, trial, best)
            if converged and positive:
                flags |= _CONVERGED
            var_a = cov[0, 0]
            if propagate:
                cab[0, 0], cab[1, 1] = bias_cov[0, p], bias_cov[1, p]
                cab[0, 1] = cab[1, 0] = bias_cov[2, p]
                _common_error(vp, bp, sp, Z1, 1, ws[0], D, cab, cov, ws[7], ws[8])
                var_a = cov[0, 0]
            # d lnA / d slope = -(weighted mean of x), likewise for gamma: the population spread
            # of slope and gamma moves lnA with them
            m = ws[0]
            sw = 0.0
            sx = 0.0
            st = 0.0
            for i in range(M):
                if vp[i]:
                    w = m[i] * m[i] / (bp[i] + sp[i] * m[i])
                    sw += w
                    sx += w * Z[i, 1]
                    st += w * Z[i, 2]
            dx = -sx / sw if sw > 0 else 0.0
            dt = -st / sw if (sw > 0 and P == 3) else 0.0
            var_s, var_g = prior_var[0], (prior_var[1] if P == 3 else 0.0)
            theta[1], theta[2] = prior[0], (prior[1] if P == 3 else 1.0)
            cov[0, 0] = var_a + dx * dx * var_s + dt * dt * var_g
            cov[1, 1], cov[2, 2] = var_s, var_g
            cov[0, 1] = cov[1, 0] = dx * var_s
            cov[0, 2] = cov[2, 0] = dt * var_g
            cov[1, 2] = cov[2, 1] = 0.0
        nv = 0
        for i in range(M):
            nv += vp[i]
            outliers_out[i, p] = outl[i]
        if dropped > 0:
            flags |= _OUTLIERS
        for a in range(3):
            theta_out[a, p] = theta[a]
        for k in range(6):
            cov_out[k, p] = cov[COVARIANCE_PLANES[k][0], COVARIANCE_PLANES[k][1]]
        chi2_out[p] = chi2
        nvalid_out[p] = nv
        flags_out[p] = flags


# --- evaluation ---------------------------------------------------------------------------------
@njit(cache=True, nogil=True)
def residual_maps(master, prediction, variance, prediction_var, use, snr_min, mae, mape):
    """Residual maps of one group and its sums, in one pass.

    Parameters
    ----------
    master, prediction, variance, prediction_var : ndarray, 1-D
        Master [DN], synthetic frame [DN], expected variance of the master and of the
        prediction [DN^2].
    use : ndarray of bool, 1-D
        Pixels the sums cover.
    snr_min : float
        MAPE only where |master| > snr_min * sigma.
    mae, mape : ndarray of float32, 1-D (out)
        |prediction - master| [DN] and 100 |prediction - master| / |master| [%] (NaN where not significant).

    Returns
    -------
    n, sum_z2, sum_leverage, n_significant : float
        Pixels used, sum of (residual / sigma)^2, sum of (1 - var_pred / var) clipped to [0, 1],
        pixels with a MAPE.
    """
    n = 0.0
    sz2 = 0.0
    slev = 0.0
    nsig = 0.0
    for i in range(master.size):
        r = prediction[i] - master[i]
        a = abs(r)
        mae[i] = a
        s = np.sqrt(variance[i])
        significant = abs(master[i]) > snr_min * s
        mape[i] = 100.0 * a / abs(master[i]) if significant else np.nan
        if use[i] and np.isfinite(r) and s > 0:
            n += 1.0
            sz2 += (r / s) ** 2
            slev += 1.0 - min(max(prediction_var[i] / variance[i], 0.0), 1.0)
            nsig += significant
    return n, sz2, slev, nsig


def warm_up() -> None:
    """Compile (or load from the cache) every kernel with the argument types cmoscal uses."""
    raw = np.zeros(4, np.uint16)
    frame = np.zeros(4, np.float32)
    decode_be16(raw, frame, 1.0, 32768.0, 1 / 16, 4095.0, 0, False)
    mark_frame(frame, 4095.0)
    stack = np.ones((3, 2, 2), np.float32)
    out = [np.empty((2, 2), t) for t in (np.float32, np.float32, np.int16, np.uint8, np.int16)]
    for median in (False, True):
        combine_stack(stack, 1.0, 0.5, 4.0, median, *out)
    M, npix = 6, 2
    T = np.repeat([0.0, 10.0], 3)
    Z = np.stack([np.ones(M), T, np.log(np.tile([1.0, 5, 20], 2))], axis=1)
    y = np.exp(Z @ np.array([0.0, 0.1, 1.0]))[:, None].repeat(npix, 1).astype(np.float32)
    ones = np.ones((M, npix), np.float32)
    for level, bias_cov in ((ones, np.ones((3, npix), np.float32)), (np.zeros((0, 0), np.float32),
                                                                     np.zeros((0, 0), np.float32))):
        fit_pixels(y, np.ones((M, npix), bool), ones, ones, level, np.repeat([0, 1], 3), np.tile([0, 1, 2], 2), Z,
                   np.zeros(M), 3, 1, 50, 1e-3, 5.0, 1, 100.0, np.array([-60.0, -0.1, 0.0]),
                   np.array([60.0, 0.5, 3.0]), np.array([0.1, 1.0]), np.array([0.01, 0.01]),
                   np.stack([np.ones(M), T], 1), bias_cov, np.empty((3, npix)), np.empty((6, npix)),
                   np.empty(npix), np.empty(npix, np.int16), np.empty(npix, np.uint8), np.empty((M, npix), bool))
    a = np.ones(4, np.float32)
    residual_maps(a, a, a, a, np.ones(4, bool), 10.0, np.empty(4, np.float32), np.empty(4, np.float32))


if __name__ == "__main__":
    warm_up()
