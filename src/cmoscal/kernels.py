"""Compiled per-pixel loops: decoding raw frames, combining them into masters, fitting the
dark model, and the residual statistics of the evaluation.

Every kernel is serial and releases the GIL (``nogil``): parallelism comes from running tiles
on several threads or dask workers at once (:mod:`cmoscal.compute`). Each kernel has one explicit
signature, its inputs typed read-only so that writable arrays, memory maps and broadcasts all
share it: it is compiled once and cached on disk (``cache=True``; ``make env`` pays the compile,
:func:`compile_kernels`) and loaded at its first call. Arguments of another type or layout raise
a ``TypeError`` instead of compiling a new version in the middle of a run.
"""

from __future__ import annotations

import functools
import threading
from collections import namedtuple

import numpy as np
from llvmlite import ir
from numba import njit
from numba import types as nt
from numba.extending import intrinsic

__all__ = ["COMPARE_SUMS", "COVARIANCE_PLANES", "CROSS_PLANES", "FIT_FLAGS", "block_mean", "combine_stack",
           "compare_frames", "compile_kernels", "decode_be16", "expected_variance", "fit_lines", "fit_pixels",
           "kernel_array", "mark_frame", "pooled_variance", "predict_dark", "predict_log_rate", "sorting_network",
           "subtract_bias"]


def _in(dtype, ndim: int = 1):
    """Type of a C-contiguous input array, read-only: writable arrays convert to it."""
    return nt.Array(dtype, ndim, "C", readonly=True)


def _out(dtype, ndim: int = 1):
    """Type of a C-contiguous output array."""
    return nt.Array(dtype, ndim, "C")


_F4, _F8, _I2, _I8, _U1, _U2, _B = nt.float32, nt.float64, nt.int16, nt.int64, nt.uint8, nt.uint16, nt.boolean
_KERNELS = []  # every kernel, as the decorator makes them


def _kernel(signature, **options):
    """Decorator: a serial, GIL-free, disk-cached numba kernel of one ``signature``, compiled (or
    loaded from the cache) at its first call; ``kernel.load()`` does that and returns the dispatcher."""
    def wrap(fn):
        dispatcher = njit(cache=True, nogil=True, **options)(fn)
        lock, ready = threading.Lock(), []

        def load():
            with lock:
                if not ready:
                    dispatcher.compile(signature)
                    dispatcher.disable_compile()
                    ready.append(True)
            return dispatcher

        @functools.wraps(fn)
        def kernel(*args):
            return (dispatcher if ready else load())(*args)

        kernel.load = load
        _KERNELS.append(kernel)
        return kernel
    return wrap


def compile_kernels() -> list:
    """Compile (or load from the disk cache) every kernel: ``make env`` pays the compile once.
    Returns their dispatchers."""
    return [kernel.load() for kernel in _KERNELS]


def kernel_array(a, shape, dtype=np.float32) -> np.ndarray:
    """``a`` broadcast to ``shape`` as a C-contiguous array of ``dtype`` (no copy when it already is one)."""
    return np.ascontiguousarray(np.broadcast_to(a, shape), dtype=dtype)


#: flags returned per pixel by :func:`fit_pixels`
FIT_FLAGS = {"CONVERGED": 1, "FALLBACK": 2, "FEW_SAMPLES": 4, "NO_SAMPLES": 8, "FULL_WELL": 16, "OUTLIERS": 32}
_CONVERGED, _FALLBACK, _FEW, _NONE, _FULL_WELL, _OUTLIERS = (FIT_FLAGS[k] for k in (
    "CONVERGED", "FALLBACK", "FEW_SAMPLES", "NO_SAMPLES", "FULL_WELL", "OUTLIERS"))
#: covariance planes of :func:`fit_pixels`: (lnA, slope, gamma, C) index pairs; a form without a floor stores the
#: first six
COVARIANCE_PLANES = ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2), (3, 3), (0, 3), (1, 3), (2, 3))
#: planes of the covariance of the dark parameters with the bias model's (a, b) that :func:`fit_pixels` returns:
#: (dark parameter of (lnA, slope, gamma, C), bias parameter of (a, b)) pairs; a form without a floor stores the
#: first six
CROSS_PLANES = ((0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1), (3, 0), (3, 1))
#: what each of the sums :func:`compare_frames` returns per pixel set is
COMPARE_SUMS = ("pixels", "z2", "expected_z2", "significant", "mae", "mae2", "mape", "mape2", "z")
_MAX_EXPONENT = 80.0
_KNEE = 0.9  # on a full-well plateau, samples at or above this fraction of its level are dropped
_MEDIAN_EFFICIENCY = np.pi / 2  # variance of a median relative to a mean, large N


# --- raw frames ---------------------------------------------------------------------------------
@_kernel((_in(_U2), _out(_F4), _F8, _F8, _F8, _F8, _I8, _B))
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


@_kernel((_out(_F4, 3), _in(_F4, 2), _in(_F4, 2), _in(_F8)))
def subtract_bias(stack, a, b, temperatures):
    """stack[i] -= a + b * temperatures[i], in place (saturated +inf and invalid NaN samples stay so)."""
    for i in range(stack.shape[0]):
        T = np.float32(temperatures[i])
        frame = stack[i]
        for r in range(frame.shape[0]):
            for x in range(frame.shape[1]):
                frame[r, x] -= a[r, x] + b[r, x] * T


@_kernel((_out(_F4), _F8))
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
@functools.lru_cache(maxsize=64)
def sorting_network(n: int) -> np.ndarray:
    """Comparators (i, j), i < j, of Batcher's odd-even merge sort for ``n`` inputs, shape (C, 2)."""
    pairs = []
    p = 1
    while p < n:
        k = p
        while k >= 1:
            j = k % p
            while j <= n - 1 - k:
                for i in range(min(k, n - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        pairs.append((i + j, i + j + k))
                j += 2 * k
            k //= 2
        p *= 2
    return np.array(pairs, dtype=np.int64).reshape(-1, 2)


@njit(cache=True, nogil=True)
def _compare(lo, hi):
    """One comparator over a whole row: ``lo`` gets the smaller, ``hi`` the larger value of each pixel."""
    for x in range(lo.size):
        u = lo[x]
        v = hi[x]
        lo[x] = min(u, v)
        hi[x] = max(u, v)


@njit(cache=True, nogil=True)
def _sort_rows(rows, pairs):
    """Sort ``rows`` (N, X) along axis 0 with a sorting network: branch-free, vectorized over pixels."""
    for c in range(pairs.shape[0]):
        _compare(rows[pairs[c, 0]], rows[pairs[c, 1]])


@njit(cache=True)
def _middle(rows, k, out):
    """Median of the first k[x] sorted values of each pixel x (NaN where k is 0)."""
    for x in range(out.size):
        n = k[x]
        out[x] = np.nan if n == 0 else 0.5 * (rows[(n - 1) // 2, x] + rows[n // 2, x])


@njit(cache=True, nogil=True)
def _mean_within(rows, k, lo, hi, mean, count):
    """Mean (NaN where none) and number of the first k[x] values of each pixel x of ``rows`` (N, X) within
    [lo[x], hi[x]], into ``mean`` and ``count``."""
    mean[:] = 0
    count[:] = 0
    for i in range(rows.shape[0]):
        src = rows[i]
        for x in range(src.size):
            keep = (i < k[x]) & (src[x] >= lo[x]) & (src[x] <= hi[x])
            mean[x] += src[x] if keep else np.float32(0.0)
            count[x] += np.int32(keep)
    for x in range(mean.size):
        mean[x] = mean[x] / count[x] if count[x] > 0 else np.nan


@_kernel((_in(_F4, 3), _in(_I8, 2), _F8, _F8, _F8, _B, _out(_F4, 2), _out(_F4, 2), _out(_I2, 2), _out(_U1, 2),
          _out(_I2, 2)))
def combine_stack(stack, pairs, floor_var, inv_gain, clip_sigma, median, master, variance, nused, nsat, nclip):
    """Combine a stack of frames pixel by pixel.

    Parameters
    ----------
    stack : ndarray, shape (N, R, X), float32
        Frames [DN]; NaN marks an invalid sample, +inf a saturated one (both left out).
    pairs : ndarray, shape (C, 2)
        :func:`sorting_network` of N.
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
        Combined frame and its variance (NaN below 2 samples used): the scatter of the samples within twice the
        clipping distance over the samples used. The scatter of the clipped samples alone reads low (a 5-frame
        group clips ~0.1-0.6 % of good samples around its noisy median: 1-3 % of the excess variance at a few DN,
        which biased the gain high); cosmic rays lie beyond twice.
    nused, nsat, nclip : ndarray, shape (R, X) (out)
        Samples used, saturated samples (uint8, at most 255) and samples clipped.

    Every loop runs along a row of pixels (a sorting network instead of per-pixel sorts), so
    the work vectorizes and streams through memory.
    """
    N, R, X = stack.shape
    rows = np.empty((N, X), np.float32)
    dev = np.empty((N, X), np.float32)
    k = np.empty(X, np.int32)
    sat = np.empty(X, np.int32)
    center = np.empty(X, np.float32)
    mad = np.empty(X, np.float32)
    lo = np.empty(X, np.float32)
    hi = np.empty(X, np.float32)
    wide_lo = np.empty(X, np.float32)  # the scatter's bounds: twice the clipping distance
    wide_hi = np.empty(X, np.float32)
    total = np.empty(X, np.float32)
    count = np.empty(X, np.int32)
    wide_count = np.empty(X, np.int32)
    for r in range(R):
        k[:] = 0
        sat[:] = 0
        for i in range(N):
            src = stack[i, r]
            dst = rows[i]
            for x in range(X):
                v = src[x]
                bad = not (v < np.inf)  # NaN or +inf
                sat[x] += np.int32(v == np.inf)
                k[x] += np.int32(not bad)
                dst[x] = np.float32(np.inf) if bad else v
        _sort_rows(rows, pairs)
        _middle(rows, k, center)
        for i in range(N):
            src = rows[i]
            dst = dev[i]
            for x in range(X):
                dst[x] = abs(src[x] - center[x]) if i < k[x] else np.float32(np.inf)
        _sort_rows(dev, pairs)
        _middle(dev, k, mad)
        for x in range(X):
            n = k[x]
            lo[x] = wide_lo[x] = -np.inf
            hi[x] = wide_hi[x] = np.inf
            if median or n < 2:
                continue
            if n >= 3:
                scale = max(1.4826 * mad[x], np.sqrt(floor_var + max(center[x], 0.0) * max(inv_gain, 0.0)))
                lo[x] = center[x] - clip_sigma * scale
                hi[x] = center[x] + clip_sigma * scale
                wide_lo[x] = center[x] - 2.0 * clip_sigma * scale
                wide_hi[x] = center[x] + 2.0 * clip_sigma * scale
            elif inv_gain >= 0:  # two samples
                sigma = np.sqrt(floor_var + max(rows[0, x], 0.0) * inv_gain)
                if rows[1, x] - rows[0, x] > clip_sigma * np.sqrt(2.0) * sigma:
                    hi[x] = rows[0, x]
                if rows[1, x] - rows[0, x] > 2.0 * clip_sigma * np.sqrt(2.0) * sigma:
                    wide_hi[x] = rows[0, x]
        _mean_within(rows, k, lo, hi, total, count)
        for x in range(X):
            master[r, x] = center[x] if median else total[x]
        _mean_within(rows, k, wide_lo, wide_hi, total, wide_count)  # the variance's: within the wide bounds
        mad[:] = 0
        for i in range(N):
            src = rows[i]
            for x in range(X):
                keep = (i < k[x]) & (src[x] >= wide_lo[x]) & (src[x] <= wide_hi[x])
                d = src[x] - total[x]
                mad[x] += d * d if keep else np.float32(0.0)
        for x in range(X):
            m = count[x]
            variance[r, x] = np.nan if m < 2 else (mad[x] / (wide_count[x] - 1) / m
                                                    * (_MEDIAN_EFFICIENCY if median else 1.0))
            nused[r, x] = m
            nsat[r, x] = min(sat[x], 255)
            nclip[r, x] = k[x] - m


# --- an exp that vectorizes ---------------------------------------------------------------------
# numba's exp calls libm once per value (the PyPI build of its LLVM has no vector math library):
# 5 ns a value, about 15 % of the dark fit. This one is inline arithmetic, so a loop over samples runs
# it on whole vector registers (about 1 ns a value); it is within 1 ulp of libm for |x| <= 700.
_INV_LN2, _LN2_HI, _LN2_LO = 1.4426950408889634, 6.93147180369123816490e-01, 1.90821492927058770002e-10


@intrinsic
def _as_float(typingctx, bits):
    """The float64 whose IEEE 754 bits are the int64 ``bits``."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())
    return nt.float64(nt.int64), codegen


@njit(cache=True)
def _exp(x):
    """e**x for |x| <= 700: x = k ln2 + r with |r| <= ln2 / 2, e**r by its Taylor series to r**13
    (truncation below 1e-17 relative), times 2**k built from its exponent bits."""
    k = np.floor(x * _INV_LN2 + 0.5)
    r = (x - k * _LN2_HI) - k * _LN2_LO
    p = 1.0 + r * (1.0 + r * (1 / 2 + r * (1 / 6 + r * (1 / 24 + r * (1 / 120 + r * (1 / 720 + r * (
        1 / 5040 + r * (1 / 40320 + r * (1 / 362880 + r * (1 / 3628800 + r * (1 / 39916800 + r * (
            1 / 479001600 + r / 6227020800))))))))))))
    return p * _as_float((np.int64(k) + 1023) << 52)


# --- the dark fit -------------------------------------------------------------------------------
# The parameters of a pixel, in the order of the solve ("compact"): lnA, slope, gamma (the first P of
# them; P = 2 fixes gamma), then the floor C at index P: fitted when F = 1, held at its value when F = 2
# (the population floor of a FALLBACK pixel), absent when F = 0. _fitted(P, F) counts what is solved for. The model is
# DC = exp(offset + Z theta) + C * exp(floor_offset + gamma ln t): for a form without a floor the
# Jacobian is DC * Z, for one with a floor it is (e, e x, DC ln t, t^gamma) with e the thermal term.
_Work = namedtuple("_Work", "model trial_model H A g step trial work K weights floor trial_floor few prior_mean "
                             "prior_info prior_p cross")
_Work.__doc__ = """Scratch arrays of one pixel's fit: the model and a trial model (M,), the normal matrix, its
regularized copy and the gradient (4, 4), (4, 4), (4,), a step and a trial point (4,), inversion room (4, 4), the
bias-error gain (4, 2), the weights of the last normal-equation pass (M,), the floor term t^gamma of the model and
of the trial (M,), (M,), and which samples come from masters of 1-2 frames (M,), the only ones that can hold a
cosmic ray (temporal clipping cleans the others); a prior of the pixel's parameters beyond lnA (an earlier model of
the same sensor): its mean (4,) and information matrix (4, 4) in the compact order of a fit of ``prior_p[0]`` thermal
parameters (prior_p[0] = 0: no prior); the covariance of the parameters with the bias model's (a, b) (4, 2)."""
_Rescue = namedtuple("_Rescue", "valid dropped theta cov offset Z1 floor_offset")
_Rescue.__doc__ = """The fits against the population law (rescue and fallback): samples, dropped ones, parameters,
covariance (M,), (M,), (4,), (4, 4); the offsets under the population slope and gamma, the lnA-only regressors and
the offsets of the floor term under the population gamma."""
# The per-sample loops below keep their sums in scalars (Z always has 3 columns; those beyond P
# are not used): sums held in the small H and g arrays went through memory on every sample. The
# functions of every Levenberg-Marquardt step are inlined (inline="always"): a call passes each array
# with a reference count taken and dropped, which cost the fit ~25 % (and the compile 50 s more, once).
@njit(cache=True, error_model="numpy", inline="always")
def _model(Z, offset, floor_offset, theta, P, F, out, floor):
    t0, t1, t2 = theta[0], theta[1] if P > 1 else 0.0, theta[2] if P > 2 else 0.0
    for i in range(Z.shape[0]):
        out[i] = min(max(offset[i] + Z[i, 0] * t0 + Z[i, 1] * t1 + Z[i, 2] * t2, -_MAX_EXPONENT), _MAX_EXPONENT)
    for i in range(Z.shape[0]):  # a loop of its own, over contiguous values: it vectorizes
        out[i] = _exp(out[i])
    if F:
        _add_floor(Z, floor_offset, t2, theta[P], out, floor)


@njit(cache=True, error_model="numpy")
def _add_floor(Z, floor_offset, gamma, c, out, floor):
    """Add the floor C t^gamma (``floor``: t^gamma, from the floor's offsets) to the model ``out``."""
    for i in range(Z.shape[0]):
        floor[i] = _exp(min(max(floor_offset[i] + Z[i, 2] * gamma, -_MAX_EXPONENT), _MAX_EXPONENT))
        out[i] += c * floor[i]


@njit(cache=True, error_model="numpy", inline="always")
def _fitted(P, F):
    """Parameters solved for: the P thermal ones, and the floor when it is fitted (F = 1)."""
    return P + (F == 1)


# plane of COVARIANCE_PLANES holding element (i, j) of a stored-order (lnA, slope, gamma, C) matrix
_PLANE = np.array([[0, 3, 4, 7], [3, 1, 5, 8], [4, 5, 2, 9], [7, 8, 9, 6]])


@njit(cache=True, error_model="numpy")
def _load_prior(p, P, F, prior_theta, prior_info, ws):
    """Pixel ``p``'s prior (stored order, information as :data:`COVARIANCE_PLANES`) into ``ws`` in the compact order
    of a fit of P thermal parameters and floor mode F; none if it is not finite or carries no information."""
    NP = _fitted(P, F)
    ws.prior_p[0] = 0
    total, finite = 0.0, True
    for a in range(1, NP):
        sa = a if a < P else 3
        ws.prior_mean[a] = prior_theta[sa, p]
        finite = finite and np.isfinite(ws.prior_mean[a])
        for b in range(1, NP):
            sb = b if b < P else 3
            ws.prior_info[a, b] = prior_info[_PLANE[sa, sb], p]
            total += abs(ws.prior_info[a, b])
    if finite and total > 0 and np.isfinite(total):
        ws.prior_p[0] = P


@njit(cache=True, error_model="numpy")
def _prior_chi2(ws, theta, NP):
    """(theta - prior)^T I (theta - prior) over the solved parameters beyond lnA.

    The prior's functions are called, not inlined, and only for a pixel that has a prior (its callers check
    ``ws.prior_p[0] == P`` once): inlined, they slow every fit without one by ~15 %."""
    total = 0.0
    for a in range(1, NP):
        for b in range(1, NP):
            total += (theta[a] - ws.prior_mean[a]) * ws.prior_info[a, b] * (theta[b] - ws.prior_mean[b])
    return total


@njit(cache=True, error_model="numpy")
def _add_prior(ws, theta, NP):
    """Add the prior's information to the normal matrix ``ws.H`` and its pull to the gradient ``ws.g``; return its
    chi-square."""
    for a in range(1, NP):
        for b in range(1, NP):
            ws.H[a, b] += ws.prior_info[a, b]
            ws.g[a] += ws.prior_info[a, b] * (ws.prior_mean[b] - theta[b])
    return _prior_chi2(ws, theta, NP)


@njit(cache=True, error_model="numpy", inline="always")
def _jacobian(Z, m, floor, theta, P, F, i):
    """Row ``i`` of the model's Jacobian as (scale, j0, j1, j2, j3), the row being scale * j (compact order)."""
    if F == 0:
        return m[i], Z[i, 0], Z[i, 1], Z[i, 2], 0.0
    e = m[i] - theta[P] * floor[i]
    if P == 3:
        return 1.0, e * Z[i, 0], e * Z[i, 1], m[i] * Z[i, 2], floor[i]
    if P == 2:
        return 1.0, e * Z[i, 0], e * Z[i, 1], floor[i], 0.0
    return 1.0, e * Z[i, 0], floor[i], 0.0, 0.0


@njit(cache=True, error_model="numpy")
def _add3(s, wh, wg, z0, z1, z2):
    """:func:`_add` of three parameters: s = (h00, h01, h02, h11, h12, h22, g0, g1, g2)."""
    return (s[0] + wh * z0 * z0, s[1] + wh * z0 * z1, s[2] + wh * z0 * z2, s[3] + wh * z1 * z1,
            s[4] + wh * z1 * z2, s[5] + wh * z2 * z2, s[6] + wg * z0, s[7] + wg * z1, s[8] + wg * z2)


@njit(cache=True, error_model="numpy")
def _add(s, wh, wg, z0, z1, z2, z3):
    """The normal sums s = (h00, h01, h02, h11, h12, h22, g0, g1, g2, h03, h13, h23, h33, g3) with one sample's
    terms added: wh z z^T to the matrix and wg z to the gradient."""
    return (s[0] + wh * z0 * z0, s[1] + wh * z0 * z1, s[2] + wh * z0 * z2, s[3] + wh * z1 * z1,
            s[4] + wh * z1 * z2, s[5] + wh * z2 * z2, s[6] + wg * z0, s[7] + wg * z1, s[8] + wg * z2,
            s[9] + wh * z0 * z3, s[10] + wh * z1 * z3, s[11] + wh * z2 * z3, s[12] + wh * z3 * z3, s[13] + wg * z3)


@njit(cache=True, error_model="numpy")
def _store3(H, g, P, s):
    """Write the sums of :func:`_add3` into the symmetric P x P matrix H and the gradient g (P <= 3)."""
    h00, h01, h02, h11, h12, h22, g0, g1, g2 = s
    H[0, 0], g[0] = h00, g0
    if P > 1:
        H[0, 1] = H[1, 0] = h01
        H[1, 1], g[1] = h11, g1
    if P > 2:
        H[0, 2] = H[2, 0] = h02
        H[1, 2] = H[2, 1] = h12
        H[2, 2], g[2] = h22, g2


@njit(cache=True, error_model="numpy")
def _store(H, g, P, s):
    """Write the normal sums of :func:`_add` into the symmetric P x P matrix H and the gradient g (P <= 4)."""
    _store3(H, g, P, s[:9])
    if P > 3:
        h03, h13, h23, h33, g3 = s[9:]
        H[0, 3] = H[3, 0] = h03
        H[1, 3] = H[3, 1] = h13
        H[2, 3] = H[3, 2] = h23
        H[3, 3], g[3] = h33, g3


@njit(cache=True, error_model="numpy")
def _inverse(A, P, out):
    """Inverse of the symmetric P x P matrix A (P <= 4; cofactors up to 3, else Gauss-Jordan); False if singular."""
    if P == 1:
        if not (A[0, 0] != 0.0 and np.isfinite(A[0, 0])):
            return False
        out[0, 0] = 1.0 / A[0, 0]
        return True
    if P == 2:
        det = A[0, 0] * A[1, 1] - A[0, 1] * A[1, 0]
        if not (det != 0.0 and np.isfinite(det)):
            return False
        out[0, 0], out[1, 1] = A[1, 1] / det, A[0, 0] / det
        out[0, 1] = out[1, 0] = -A[0, 1] / det
        return True
    if P == 4:
        return _inverse4(A, out)
    c00 = A[1, 1] * A[2, 2] - A[1, 2] * A[2, 1]
    c01 = A[1, 2] * A[2, 0] - A[1, 0] * A[2, 2]
    c02 = A[1, 0] * A[2, 1] - A[1, 1] * A[2, 0]
    det = A[0, 0] * c00 + A[0, 1] * c01 + A[0, 2] * c02
    if not (det != 0.0 and np.isfinite(det)):
        return False
    out[0, 0] = c00 / det
    out[0, 1] = out[1, 0] = c01 / det
    out[0, 2] = out[2, 0] = c02 / det
    out[1, 1] = (A[0, 0] * A[2, 2] - A[0, 2] * A[2, 0]) / det
    out[1, 2] = out[2, 1] = (A[0, 2] * A[1, 0] - A[0, 0] * A[1, 2]) / det
    out[2, 2] = (A[0, 0] * A[1, 1] - A[0, 1] * A[1, 0]) / det
    return True


@njit(cache=True, error_model="numpy")
def _inverse4(A, out):
    """Inverse of the symmetric positive definite 4 x 4 matrix A by Gauss-Jordan in place (no pivoting needed);
    False if it is singular."""
    for a in range(4):
        for b in range(4):
            out[a, b] = A[a, b]
    for k in range(4):
        pivot = out[k, k]
        if not (pivot != 0.0 and np.isfinite(pivot)):
            return False
        out[k, k] = 1.0
        for b in range(4):
            out[k, b] /= pivot
        for a in range(4):
            if a != k:
                f = out[a, k]
                out[a, k] = 0.0
                for b in range(4):
                    out[a, b] -= f * out[k, b]
    return True


@njit(cache=True, error_model="numpy")
def _solve(A, b, P, x, work):
    """Solve the symmetric P x P system A x = b (P <= 4); False if singular. ``work`` is (4, 4)."""
    if not _inverse(A, P, work):
        return False
    for a in range(P):
        x[a] = 0.0
        for c in range(P):
            x[a] += work[a, c] * b[c]
    return True


@njit(cache=True, error_model="numpy", inline="always")
def _normal(y, valid, base, shot, Z, P, F, theta, m, floor, H, g, weights):
    """Weights from the model ``m`` (kept in ``weights``); fill the normal matrix H and gradient g;
    return chi-square."""
    for i in range(y.shape[0]):  # a loop of its own: the divisions vectorize
        weights[i] = 1.0 / (base[i] + shot[i] * m[i])
    chi2 = 0.0
    if F == 0:  # the Jacobian is m z: the sums of three parameters
        sums3 = (0.0,) * 9
        for i in range(y.shape[0]):
            if not valid[i]:
                continue
            w = weights[i]
            r = y[i] - m[i]
            chi2 += w * r * r
            wm = w * m[i]
            sums3 = _add3(sums3, wm * m[i], wm * r, Z[i, 0], Z[i, 1], Z[i, 2])
        _store3(H, g, P, sums3)
        return chi2
    sums = (0.0,) * 14
    for i in range(y.shape[0]):
        if not valid[i]:
            continue
        w = weights[i]
        r = y[i] - m[i]
        chi2 += w * r * r
        scale, j0, j1, j2, j3 = _jacobian(Z, m, floor, theta, P, F, i)
        wm = w * scale
        sums = _add(sums, wm * scale, wm * r, j0, j1, j2, j3)
    _store(H, g, _fitted(P, F), sums)
    return chi2


@njit(cache=True, error_model="numpy")
def _regularize(H, P, out, lam):
    """out = H + lam diag(H) + 1e-12 of the mean diagonal: no pixel's system is singular."""
    trace = 0.0
    for a in range(P):
        trace += H[a, a]
    for a in range(P):
        for b in range(P):
            out[a, b] = H[a, b]
        out[a, a] += lam * H[a, a] + 1e-12 * trace / P + 1e-300


@njit(cache=True, error_model="numpy", inline="always")
def _lm(y, valid, base, shot, Z, offset, floor_offset, P, F, theta, max_iter, tol, ln_a_range, ws):
    """:func:`_steps`; a fit with a floor that starts at C = 0 starts from the optimum without one, so that the
    floor can only lower chi-square (from the log-linear start it can settle in a worse minimum)."""
    if F == 1 and theta[P] == 0.0:
        _steps(y, valid, base, shot, Z, offset, floor_offset, P, 0, theta, max_iter, tol, ln_a_range, ws)
        theta[P] = 0.0
    return _steps(y, valid, base, shot, Z, offset, floor_offset, P, F, theta, max_iter, tol, ln_a_range, ws)


@njit(cache=True, error_model="numpy", inline="always")
def _steps(y, valid, base, shot, Z, offset, floor_offset, P, F, theta, max_iter, tol, ln_a_range, ws):
    """Reweighted Levenberg-Marquardt from ``theta`` (updated in place; a floor stays >= 0).

    Every step takes its weights from the current model. A pixel stops when its next step would
    lower chi-square by less than ``tol`` (a step of ~sqrt(tol) sigma), or when the damping cannot
    find a better point. Returns (converged, chi-square): the chi-square is that of the current
    ``theta``, whose model, weights and normal matrix are then in ``ws`` (NaN when they are not,
    after ``max_iter`` steps).
    """
    m, mt, H, A, g, step, trial, work, weights = (ws.model, ws.trial_model, ws.H, ws.A, ws.g, ws.step, ws.trial,
                                                  ws.work, ws.weights)
    NP = _fitted(P, F)
    prior = ws.prior_p[0] == P  # the pixel has a prior for this fit
    lam = 1e-3
    _model(Z, offset, floor_offset, theta, P, F, m, ws.floor)
    for _ in range(max_iter):
        chi2 = _normal(y, valid, base, shot, Z, P, F, theta, m, ws.floor, H, g, weights)
        if prior:
            chi2 += _add_prior(ws, theta, NP)
        _regularize(H, NP, A, lam)
        solved = _solve(A, g, NP, step, work)
        if solved and F == 1 and theta[P] <= 0.0 and step[P] < 0.0:  # the floor held at its bound: step the others
            solved = _solve(A, g, P, step, work)
            step[P] = 0.0
        if not solved:
            lam *= 10.0
            if lam > 1e10:
                return True, chi2
            continue
        gain = 0.0
        for a in range(NP):
            gain += step[a] * g[a]
        if gain < tol:
            return True, chi2
        for a in range(NP):
            trial[a] = theta[a] + step[a]
        trial[0] = min(max(trial[0], ln_a_range[0]), ln_a_range[1])
        if F == 1:
            trial[P] = max(trial[P], 0.0)
        elif F == 2:
            trial[P] = theta[P]
        _model(Z, offset, floor_offset, trial, P, F, mt, ws.trial_floor)
        chi2_trial = _prior_chi2(ws, trial, NP) if prior else 0.0
        for i in range(y.shape[0]):
            if valid[i]:
                chi2_trial += (y[i] - mt[i]) ** 2 * weights[i]
        if chi2_trial <= chi2:
            for a in range(NP):
                theta[a] = trial[a]
            for i in range(y.shape[0]):
                m[i] = mt[i]
            if F:
                for i in range(y.shape[0]):
                    ws.floor[i] = ws.trial_floor[i]
            lam *= 0.1
        else:
            lam *= 10.0
            if lam > 1e10:
                return True, chi2
    return False, np.nan


@njit(cache=True, error_model="numpy", inline="always")
def _start(y, valid, base, shot, Z, offset, P, F, theta, ws):
    """Weighted log-linear start (weights y^2 / var) of the thermal parameters, no floor; flat at the mean level if
    too few positive samples. With a prior for P: its slope, gamma and floor, and the amplitude of the mean level."""
    H, A, g, work = ws.H, ws.A, ws.g, ws.work
    if ws.prior_p[0] == P:
        _prior_start(y, valid, Z, offset, P, F, theta, ws)
        return
    if F == 1:
        theta[P] = 0.0
    sums = (0.0,) * 9
    npos = 0
    for i in range(y.shape[0]):
        if not valid[i] or y[i] <= 0:
            continue
        npos += 1
        w = y[i] * y[i] / (base[i] + shot[i] * y[i])
        sums = _add3(sums, w, w * (np.log(y[i]) - offset[i]), Z[i, 0], Z[i, 1], Z[i, 2])
    _store3(H, g, P, sums)
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


@njit(cache=True, error_model="numpy")
def _prior_start(y, valid, Z, offset, P, F, theta, ws):
    """Slope, gamma and floor from the prior; lnA from the mean signal above the floor under them."""
    for a in range(1, _fitted(P, F)):
        theta[a] = ws.prior_mean[a]
    gamma = theta[2] if P == 3 else 0.0
    c = theta[P] if F else 0.0
    above = thermal = 0.0
    for i in range(y.shape[0]):
        if valid[i]:
            e = offset[i] + Z[i, 1] * theta[1] + Z[i, 2] * gamma
            above += y[i] - c * np.exp(offset[i] + Z[i, 2] * gamma)
            thermal += np.exp(min(e, _MAX_EXPONENT))
    theta[0] = np.log(max(above, 1e-6 * thermal, 1e-300) / max(thermal, 1e-300))


@njit(cache=True, error_model="numpy", inline="always")
def _covariance(y, valid, base, shot, Z, P, F, theta, cov, ws, chi2):
    """Chi-square and parameter covariance (inverse normal matrix) at the current model ``ws.model``;
    False if the covariance is not positive. ``chi2`` NaN: the normal matrix in ``ws`` is not
    current and is rebuilt first."""
    m, H, A, g, weights = ws.model, ws.H, ws.A, ws.g, ws.weights
    NP = _fitted(P, F)
    if not chi2 == chi2:
        chi2 = _normal(y, valid, base, shot, Z, P, F, theta, m, ws.floor, H, g, weights)
        if ws.prior_p[0] == P:
            chi2 += _add_prior(ws, theta, NP)
    _regularize(H, NP, A, 0.0)
    ok = _inverse(A, NP, cov)
    for a in range(NP):
        ok = ok and np.isfinite(cov[a, a]) and cov[a, a] > 0
    return chi2, ok


@njit(cache=True, error_model="numpy")
def _isolated(i, valid, y, m, weights, tgroup, level):
    """Sample ``i`` lies above the model ``m`` (fitted without it) and its residual relative to the model departs by
    more than ``level`` sigma from the mean relative residual of the other exposures at its temperature. A form that
    cannot follow a pixel's temperature curve misses every exposure at a temperature by the same fraction; a cosmic
    ray adds charge to one master."""
    if not (y[i] > m[i] > 0):
        return False
    total = mean = 0.0
    for j in range(y.shape[0]):
        if j != i and valid[j] and tgroup[j] == tgroup[i] and m[j] > 0:
            w = m[j] * m[j] * weights[j]  # 1 / variance of the relative residual
            total += w
            mean += w * (y[j] - m[j]) / m[j]
    if total == 0.0:
        return True
    return (y[i] - m[i]) / m[i] - mean / total > level * np.sqrt(1.0 / (m[i] * m[i] * weights[i]) + 1.0 / total)


@njit(cache=True, error_model="numpy")
def _beyond(y, valid, Z, P, F, theta, cov, m, floor, weights, positive, limit):
    """Whether a studentized residual r^2 w / (1 - h) of the current fit exceeds ``limit``
    (h: the sample's leverage; ``weights`` w = 1/variance from the last normal-equation pass)."""
    c00 = c01 = c02 = c11 = c12 = c22 = 0.0  # the covariance, zero beyond P (and all zero if not positive)
    if positive and F == 0:
        c00 = cov[0, 0]
        if P > 1:
            c01, c11 = cov[0, 1], cov[1, 1]
        if P > 2:
            c02, c12, c22 = cov[0, 2], cov[1, 2], cov[2, 2]
    for i in range(y.shape[0]):
        if not valid[i]:
            continue
        if F == 0:
            z0, z1, z2 = Z[i, 0], Z[i, 1], Z[i, 2]
            h = (z0 * (c00 * z0 + 2 * (c01 * z1 + c02 * z2)) + z1 * (c11 * z1 + 2 * c12 * z2) + c22 * z2 * z2) \
                * m[i] * m[i] * weights[i]
        else:
            scale, j0, j1, j2, j3 = _jacobian(Z, m, floor, theta, P, F, i)
            j = (j0, j1, j2, j3)
            q = 0.0
            if positive:
                for a in range(_fitted(P, F)):
                    for b in range(_fitted(P, F)):
                        q += j[a] * j[b] * cov[a, b]
            h = q * scale * scale * weights[i]
        r = y[i] - m[i]
        if r * r * weights[i] > limit * max(1.0 - h, 1e-6):
            return True
    return False


@njit(cache=True, error_model="numpy")
def _robust(y, valid, base, shot, Z, offset, floor_offset, P, F, theta, max_iter, tol, ln_a_range, outlier_sigma,
            max_outliers, min_valid, tgroup, egroup, outliers, cov, ws, trial, best):
    """Fit; while a sample is further than ``outlier_sigma`` from the model, drop the cosmic-ray candidate whose
    removal lowers chi-square most, if that lowers chi-square by at least ``outlier_sigma``^2 (the squared deleted
    residual: the sample is an outlier of the fit made without it), and refit. Each candidate is refitted from
    scratch, so a gross outlier that dragged the fit is found wherever it is; a candidate comes from a master of 1-2
    frames and, against the fit without it, lies above the model on its own (:func:`_isolated`): cosmic rays add
    charge to one master, while a smooth departure is a question of the form, not samples to drop.

    Returns (converged, chi-square, covariance positive, number of samples dropped); ``cov`` holds
    the covariance and ``ws.model`` the model at ``theta``; dropped samples are set in ``outliers``.
    """
    m = ws.model
    NP = _fitted(P, F)
    if F == 2:  # the held floor of every refit
        trial[P] = best[P] = theta[P]
    converged, chi2 = _lm(y, valid, base, shot, Z, offset, floor_offset, P, F, theta, max_iter, tol, ln_a_range, ws)
    chi2, positive = _covariance(y, valid, base, shot, Z, P, F, theta, cov, ws, chi2)
    dropped = 0
    n = 0
    for i in range(y.shape[0]):
        n += valid[i]
    while dropped < max_outliers and n - 1 >= min_valid:
        if not _beyond(y, valid, Z, P, F, theta, cov, m, ws.floor, ws.weights, positive, outlier_sigma * outlier_sigma):
            break
        candidate, lowest = -1, np.inf
        for i in range(y.shape[0]):
            if not (valid[i] and ws.few[i]):
                continue
            valid[i] = False
            _start(y, valid, base, shot, Z, offset, P, F, trial, ws)
            c = _lm(y, valid, base, shot, Z, offset, floor_offset, P, F, trial, max_iter, tol, ln_a_range, ws)[1]
            if not c == c:
                c = 0.0
                for k in range(y.shape[0]):
                    if valid[k]:
                        c += (y[k] - ws.model[k]) ** 2 / (base[k] + shot[k] * ws.model[k])
            valid[i] = True
            if c < lowest and _isolated(i, valid, y, ws.model, ws.weights, tgroup, 0.5 * outlier_sigma):
                candidate, lowest = i, c
                for a in range(NP):
                    best[a] = trial[a]
        if chi2 - lowest < outlier_sigma * outlier_sigma:  # no sample's removal explains the tension
            _model(Z, offset, floor_offset, theta, P, F, m, ws.floor)
            break
        valid[candidate] = False
        outliers[candidate] = True
        dropped += 1
        n -= 1
        for a in range(NP):
            theta[a] = best[a]
        converged, chi2 = _lm(y, valid, base, shot, Z, offset, floor_offset, P, F, theta, max_iter, tol, ln_a_range,
                              ws)
        chi2, positive = _covariance(y, valid, base, shot, Z, P, F, theta, cov, ws, chi2)
    return converged, chi2, positive, dropped


@njit(cache=True, error_model="numpy")
def _acceptable(chi2, dof, sigma):
    """A fit's chi-square is acceptable: within ``sigma`` standard deviations of its degrees of freedom."""
    return dof <= 0 or chi2 <= dof + sigma * np.sqrt(2.0 * dof)


@njit(cache=True, error_model="numpy")
def _population_offsets(Z, offset, P, prior, out, floor_out):
    """ln DC of each sample minus lnA under the population slope and gamma; ln of the floor term under it."""
    for i in range(Z.shape[0]):
        out[i] = offset[i] + Z[i, 1] * prior[0] + (Z[i, 2] * prior[1] if P == 3 else 0.0)
        floor_out[i] = offset[i] + (Z[i, 2] * prior[1] if P == 3 else 0.0)


@njit(cache=True, error_model="numpy", inline="always")
def _common_error(y, valid, base, shot, Z, P, F, theta, m, floor, D, cab, cov, weights, JWD, K, cross):
    """Count the bias model removed from every sample as the one error common to them; return the chi-square.

    That model's error e ~ N(0, cab) shifts all samples of the pixel alike, sample i by -D_i e (D_i = (1, T_i)), so
    the samples' covariance is Sigma = W^-1 + D cab D^T, W the weights of the fit (each sample's own noise). The
    parameters move by -K e with K = cov J^T W D (``cov``: the inverse normal matrix on entry), so their covariance is
    cov + K cab K^T and their covariance with (a, b) is -K cab (``cross``; ``weights``, ``JWD``: room for W and
    J^T W D). The chi-square is r^T Sigma^-1 r (Woodbury).
    """
    NP = _fitted(P, F)
    # the sums in scalars (as in _normal): J^T W D (x), G = D^T W D, u = D^T W r and r^T W r
    x00 = x01 = x10 = x11 = x20 = x21 = x30 = x31 = 0.0
    g00 = g01 = g11 = u0 = u1 = own = 0.0
    for i in range(y.shape[0]):  # a loop of its own: the divisions vectorize
        weights[i] = 1.0 / (base[i] + shot[i] * m[i])
    for i in range(y.shape[0]):
        if not valid[i]:
            continue
        scale, j0, j1, j2, j3 = _jacobian(Z, m, floor, theta, P, F, i)
        w, r = weights[i], y[i] - m[i]
        wd0, wd1 = w * D[i, 0], w * D[i, 1]
        sd0, sd1 = scale * wd0, scale * wd1
        x00, x01, x10, x11 = x00 + j0 * sd0, x01 + j0 * sd1, x10 + j1 * sd0, x11 + j1 * sd1
        x20, x21, x30, x31 = x20 + j2 * sd0, x21 + j2 * sd1, x30 + j3 * sd0, x31 + j3 * sd1
        g00, g01, g11 = g00 + wd0 * D[i, 0], g01 + wd0 * D[i, 1], g11 + wd1 * D[i, 1]
        u0, u1, own = u0 + wd0 * r, u1 + wd1 * r, own + w * r * r
    JWD[0, 0], JWD[0, 1], JWD[1, 0], JWD[1, 1], JWD[2, 0], JWD[2, 1], JWD[3, 0], JWD[3, 1] = (
        x00, x01, x10, x11, x20, x21, x30, x31)
    for a in range(NP):
        for q in range(2):
            K[a, q] = 0.0
            for b in range(NP):
                K[a, q] += cov[a, b] * JWD[b, q]
    for a in range(NP):
        for q in range(2):
            cross[a, q] = -(K[a, 0] * cab[0, q] + K[a, 1] * cab[1, q])
        for b in range(NP):
            cov[a, b] -= K[b, 0] * cross[a, 0] + K[b, 1] * cross[a, 1]
    # r^T Sigma^-1 r = own - u^T (I + cab G)^-1 cab u
    c00, c01, c11 = cab[0, 0], cab[0, 1], cab[1, 1]
    n00, n01 = 1.0 + c00 * g00 + c01 * g01, c00 * g01 + c01 * g11
    n10, n11 = c01 * g00 + c11 * g01, 1.0 + c01 * g01 + c11 * g11
    v0, v1 = c00 * u0 + c01 * u1, c01 * u0 + c11 * u1
    det = n00 * n11 - n01 * n10
    return own - (u0 * (n11 * v0 - n01 * v1) + u1 * (n00 * v1 - n10 * v0)) / det


@njit(cache=True, error_model="numpy", inline="always")  # compiled into fit_pixels
def _pixel_samples(p, y, nframes, usable, read_var, inv_gain, bias_a, bias_b, extra_var, temperature,
                   yp, vp, bp, sp, level, outl, few):
    """Pixel ``p``'s samples (``yp``), which are valid (``vp``), their noise model (variance ``bp + sp * signal``)
    and total levels (bias added back); none dropped yet. Returns how many are valid."""
    n = 0
    extra = extra_var[p]
    for i in range(y.shape[0]):
        T = temperature[i]
        frames = max(nframes[i, p], 1)
        yp[i] = y[i, p]
        vp[i] = usable[i, p] and nframes[i, p] > 0 and np.isfinite(yp[i])
        bp[i] = read_var[p] / frames + extra
        sp[i] = inv_gain / frames
        level[i] = yp[i] + bias_a[p] + bias_b[p] * T
        outl[i] = False
        few[i] = nframes[i, p] <= 2
        n += vp[i]
    return n


@njit(cache=True, error_model="numpy", inline="always")
def _full_well(yp, vp, bp, sp, level, tgroup, egroup, full_well, n, outl):
    """Drop a full-well plateau: two samples within 3 sigma of the highest level (>= ``full_well``), sharing a
    temperature or an exposure group, make one; the samples at or above ``_KNEE`` of that level (the plateau and its
    knee) are dropped. Returns the valid samples left and the flag."""
    if n == 0 or full_well <= 0:
        return n, 0
    M = yp.shape[0]
    top = -np.inf
    for i in range(M):
        if vp[i] and level[i] > top:
            top = level[i]
    if top < full_well:
        return n, 0
    plateau = False
    for i in range(M):
        if not vp[i] or top - level[i] > 3 * np.sqrt(bp[i] + sp[i] * max(yp[i], 0.0)):
            continue
        for j in range(i + 1, M):
            if (vp[j] and top - level[j] <= 3 * np.sqrt(bp[j] + sp[j] * max(yp[j], 0.0))
                    and (tgroup[i] == tgroup[j] or egroup[i] == egroup[j])):
                plateau = True
    if not plateau:
        return n, 0
    for i in range(M):
        if vp[i] and level[i] >= _KNEE * top:
            vp[i] = False
            outl[i] = True
            n -= 1
    return n, _FULL_WELL




@njit(cache=True, error_model="numpy")
def _rescue(yp, vp, v0, bp, sp, Z, offset, P, F, prior, opts, outl, theta, cov, ws, trial, best, r):
    """Coincident outliers can mask each other (the fit bends to them); against the population law they stand out.
    Drop those and refit the pixel's own model from all its samples (``v0``). An acceptable refit replaces the fit
    (``vp``, ``outl``, ``theta``, ``cov``); otherwise the model of ``theta`` is restored in ``ws``. Returns
    (acceptable, converged, chi-square, positive, samples dropped)."""
    max_iter, tol, ln_a_range, outlier_sigma, max_outliers, min_dof, tgroup, egroup = opts
    M = yp.shape[0]
    for i in range(M):
        r.valid[i] = v0[i]
        r.dropped[i] = False
    _population_offsets(Z, offset, P, prior, r.offset, r.floor_offset)
    _start(yp, r.valid, bp, sp, r.Z1, r.offset, 1, F, r.theta, ws)
    _robust(yp, r.valid, bp, sp, r.Z1, r.offset, r.floor_offset, 1, F, r.theta, max_iter, tol, ln_a_range,
            outlier_sigma, max_outliers, 1 + F + min_dof, tgroup, egroup, r.dropped, r.cov, ws, trial, best)
    _start(yp, r.valid, bp, sp, Z, offset, P, F, r.theta, ws)
    nq = 0
    for i in range(M):
        nq += r.valid[i]
    converged, chi2, positive, dropped = False, np.nan, False, 0
    if nq >= P + F + min_dof:
        converged, chi2, positive, dropped = _robust(yp, r.valid, bp, sp, Z, offset, offset, P, F, r.theta, max_iter,
                                                     tol, ln_a_range, outlier_sigma, max_outliers, P + F + min_dof,
                                                     tgroup, egroup, r.dropped, r.cov, ws, trial, best)
    k = 0
    for i in range(M):
        k += r.dropped[i]
    if not (positive and k <= max_outliers and _acceptable(chi2, nq - dropped - P - F, outlier_sigma)):
        _model(Z, offset, offset, theta, P, F, ws.model, ws.floor)
        return False, converged, chi2, positive, k
    for i in range(M):
        vp[i], outl[i] = r.valid[i], r.dropped[i]
    for a in range(4):
        theta[a] = r.theta[a]
        for b in range(4):
            cov[a, b] = r.cov[a, b]
    return True, converged, chi2, positive, k


@njit(cache=True, error_model="numpy", inline="always")
def _bias_error(p, yp, vp, bp, sp, Z, P, F, theta, bias_cov, D, cab, cov, ws):
    """:func:`_common_error` of the bias model removed from pixel ``p`` (``cab`` receives that model's (2, 2)
    covariance); returns the chi-square (with the prior's term, if any)."""
    cab[0, 0], cab[1, 1] = bias_cov[0, p], bias_cov[1, p]
    cab[0, 1] = cab[1, 0] = bias_cov[2, p]
    prior = _prior_chi2(ws, theta, _fitted(P, F)) if ws.prior_p[0] == P else 0.0
    return prior + _common_error(yp, vp, bp, sp, Z, P, F, theta, ws.model, ws.floor, D, cab, cov, ws.weights,
                                 ws.work, ws.K, ws.cross)


@njit(cache=True, error_model="numpy")
def _expand(theta, cov, cross, P, F):
    """From the compact order of a fit of P thermal parameters (and the floor at index P, with F) to the stored one,
    (lnA, slope, gamma, C): parameters not fitted get no covariance (nor one with the bias model), gamma 1 and C 0."""
    if F and P < 3:
        theta[3] = theta[P]
        cov[3, 3] = cov[P, P]
        for a in range(P):
            cov[a, 3] = cov[3, a] = cov[a, P]
        for q in range(2):
            cross[3, q] = cross[P, q]
    if not F:
        theta[3] = 0.0
    for a in range(P, 4 if not F else 3):
        theta[a] = 1.0 if a == 2 else 0.0
        cross[a, 0] = cross[a, 1] = 0.0
        for b in range(4):
            cov[a, b] = cov[b, a] = 0.0


@njit(cache=True, error_model="numpy")
def _fallback(p, yp, vp, v0, bp, sp, Z, offset, P, F, prior, prior_var, opts, propagate, bias_cov, D, cab, outl,
              theta, cov, ws, trial, best, r):
    """Population slope, gamma (and floor) with the pixel's own amplitude, fitted from its samples (the outliers of
    the untrusted fit forgotten, full-well samples kept out); the population spread of slope, gamma and floor enters
    the covariance through d lnA / d slope = -(weighted mean of x), likewise for gamma and the floor. Returns
    (converged and covariance positive, chi-square, samples dropped); ``theta`` and ``cov`` in the stored order."""
    max_iter, tol, ln_a_range, outlier_sigma, max_outliers, min_dof, tgroup, egroup = opts
    M = yp.shape[0]
    for i in range(M):
        if v0[i]:
            outl[i] = False
        vp[i] = v0[i]
    _population_offsets(Z, offset, P, prior, r.offset, r.floor_offset)
    held = 2 if F else 0  # the floor held at the population's
    theta[1] = prior[2] if F else 0.0
    _start(yp, vp, bp, sp, r.Z1, r.offset, 1, held, theta, ws)
    converged, chi2, positive, dropped = _robust(yp, vp, bp, sp, r.Z1, r.offset, r.floor_offset, 1, held, theta,
                                                 max_iter, tol, ln_a_range, outlier_sigma, max_outliers,
                                                 1 + min_dof, tgroup, egroup, outl, cov, ws, trial, best)
    if propagate:
        chi2 = _bias_error(p, yp, vp, bp, sp, r.Z1, 1, held, theta, bias_cov, D, cab, cov, ws)
    var_a = cov[0, 0]
    m = ws.model
    sw = sx = st = sc = 0.0
    for i in range(M):
        if vp[i]:
            e = m[i] - theta[1] * ws.floor[i] if F else m[i]
            var = bp[i] + sp[i] * m[i]
            w = e * e / var
            sw += w
            sx += w * Z[i, 1]
            st += (e * m[i] / var) * Z[i, 2]
            if F:
                sc += e * ws.floor[i] / var
    dx = -sx / sw if sw > 0 else 0.0
    dt = -st / sw if (sw > 0 and P == 3) else 0.0
    dc = -sc / sw if sw > 0 else 0.0
    var_s, var_g, var_c = prior_var[0], (prior_var[1] if P == 3 else 0.0), (prior_var[2] if F else 0.0)
    _expand(theta, cov, ws.cross, 1, F)
    theta[1], theta[2] = prior[0], (prior[1] if P == 3 else 1.0)
    cov[0, 0] = var_a + dx * dx * var_s + dt * dt * var_g + dc * dc * var_c
    cov[1, 1], cov[2, 2] = var_s, var_g
    cov[0, 1] = cov[1, 0] = dx * var_s
    cov[0, 2] = cov[2, 0] = dt * var_g
    if F:
        cov[3, 3] = var_c
        cov[0, 3] = cov[3, 0] = dc * var_c
    return converged and positive, chi2, dropped


@njit(cache=True, error_model="numpy", inline="always")
def _store_pixel(p, vp, outl, theta, cov, cross, chi2, flags, theta_out, cov_out, cross_out, chi2_out, nvalid_out,
                 flags_out, outliers_out):
    """Write pixel ``p``'s parameters, covariance planes (also with the bias model's), chi-square, valid samples,
    flags and dropped samples."""
    nv = 0
    for i in range(vp.shape[0]):
        nv += vp[i]
        outliers_out[i, p] = outl[i]
    for a in range(4):
        theta_out[a, p] = theta[a]
    for k in range(10):
        cov_out[k, p] = cov[COVARIANCE_PLANES[k][0], COVARIANCE_PLANES[k][1]]
    for k in range(8):
        cross_out[k, p] = cross[CROSS_PLANES[k][0], CROSS_PLANES[k][1]]
    chi2_out[p] = chi2
    nvalid_out[p] = nv
    flags_out[p] = flags


@_kernel((_in(_F4, 2), _in(_I2, 2), _in(_B, 2),  # y, nframes, usable
          _in(_F4), _F8, _in(_F4), _in(_F4), _in(_F4, 2), _in(_F4),  # read_var ... extra_var
          _in(_F8), _in(_I8), _in(_I8), _in(_F8, 2), _in(_F8),  # temperature, tgroup, egroup, Z, offset
          _I8, _I8, _I8, _I8, _F8, _F8, _I8, _F8,  # P ... full_well
          _in(_F8), _in(_F8), _in(_F8), _in(_F8), _in(_F8, 2), _in(_F8, 2), _B,  # lo ... pixel_info, propagate
          _out(_F8, 2), _out(_F8, 2), _out(_F8, 2), _out(_F8), _out(_I2), _out(_U1), _out(_B, 2)),  # theta_out ...
         error_model="numpy")
def fit_pixels(y, nframes, usable, read_var, inv_gain, bias_a, bias_b, bias_cov, extra_var, temperature, tgroup,
               egroup, Z, offset, P, F, min_dof, max_iter, tol, outlier_sigma, max_outliers, full_well, lo, hi, prior,
               prior_var, pixel_prior, pixel_info, propagate, theta_out, cov_out, cross_out, chi2_out, nvalid_out,
               flags_out, outliers_out):
    """Fit ``DC = exp(offset + Z theta) + C t^gamma`` to every pixel by noise-weighted, reweighted Levenberg-Marquardt.

    Parameters
    ----------
    y : ndarray, shape (M, npix), float32
        Master dark signal [DN] (bias removed).
    nframes : ndarray, shape (M, npix), int16
        Frames per master sample; with ``usable`` (M, npix) bool (not saturated) it decides
        which samples are valid (also finite).
    read_var : ndarray, shape (npix,), float32
        Read variance of one frame [DN^2]. The noise of a sample of n frames and signal S, its own and the
        fit's weight, is (read_var + S * inv_gain) / n + ``extra_var`` (npix); the error of the bias model
        removed, common to all samples (``bias_cov`` (3, npix): var a, var b, cov ab), counts once (``propagate``).
    inv_gain : float
        1 / gain [DN/e-]; the weights use the model signal.
    bias_a, bias_b : ndarray, shape (npix,), float32
        The bias model removed, to rebuild each sample's total level for the full-well test.
    temperature, tgroup, egroup : ndarray, shape (M,)
        Master temperatures [degC]; temperature and exposure group of each master (numbered in
        increasing value: neighbours for the outlier test).
    Z : ndarray, shape (M, 3)
        Regressors [1, x(T), ln t]; the first P are fitted.
    offset : ndarray, shape (M,)
        Fixed part of ln DC (ln t for a 1d model).
    P, F, min_dof, max_iter : int
        Thermal parameters fitted (3: 2d, 2: 1d); F = 1 fits a temperature-independent floor C >= 0 as well
        (DC = t^gamma (C + A exp(slope x))); a pixel's own fit needs P + F + min_dof valid samples.
    tol : float
        Chi-square gain below which a fit has converged.
    outlier_sigma, max_outliers : float, int
        Robust fit: the worst isolated sample beyond outlier_sigma above the model is dropped and the pixel refitted,
        at most max_outliers times.
    full_well : float
        Level [DN] above which a plateau (two samples within 3 sigma of the pixel's highest
        level, sharing a temperature or an exposure group) counts as full well: the samples at
        or above 90 % of that level (the plateau and its knee) are dropped. <= 0 skips the test.
    lo, hi : ndarray, shape (3,)
        Bounds of (lnA, slope, gamma) for a pixel's own fit to be trusted.
    prior, prior_var : ndarray, shape (3,)
        Population (slope, gamma, floor C) and their variances used where a pixel's own fit is not
        trusted: then only lnA is fitted (flag FALLBACK), and the population spread enters its
        covariance.
    pixel_prior, pixel_info : ndarray, shape (4, npix), (10, npix)
        Each pixel's prior from an earlier model of the sensor: (lnA, slope, gamma, C) and the information matrix
        (inverse covariance) of the fitted parameters beyond lnA as :data:`COVARIANCE_PLANES` (zero: no prior; no
        columns: no pixel has one). A
        pixel with a prior is fitted to maximum posterior: its chi-square has the prior's term, its covariance the
        prior's information, and it needs (and its chi-square counts) one sample for each parameter beyond lnA less.
    propagate : bool
        The bias model's error is common to all masters of a pixel: the covariance and chi-square count it as such
        (:func:`_common_error`), and the covariance with that model's (a, b) is returned (else zero).
    theta_out, cov_out, cross_out, chi2_out, nvalid_out, flags_out, outliers_out : ndarray (out)
        (4, npix) lnA, slope, gamma, C (NaN without samples; C = 0 without a floor); (10, npix) covariance
        planes :data:`COVARIANCE_PLANES`; (8, npix) covariance with the bias model's (a, b), :data:`CROSS_PLANES`;
        chi-square; valid samples used; :data:`FIT_FLAGS`; (M, npix) samples dropped as outliers or full well.
    """
    M, npix = y.shape
    NP = P + F
    yp, bp, sp, level = np.empty(M), np.empty(M), np.empty(M), np.empty(M)
    vp, v0, outl = np.empty(M, dtype=np.bool_), np.empty(M, dtype=np.bool_), np.empty(M, dtype=np.bool_)
    ws = _Work(np.empty(M), np.empty(M), np.empty((4, 4)), np.empty((4, 4)), np.empty(4), np.empty(4), np.empty(4),
               np.empty((4, 4)), np.empty((4, 2)), np.empty(M), np.zeros(M), np.zeros(M), np.empty(M, dtype=np.bool_),
               np.zeros(4), np.zeros((4, 4)), np.zeros(1, dtype=np.int64), np.zeros((4, 2)))
    r = _Rescue(np.empty(M, dtype=np.bool_), np.empty(M, dtype=np.bool_), np.zeros(4), np.zeros((4, 4)),
                np.empty(M), np.zeros((M, 3)), np.empty(M))
    r.Z1[:, 0] = 1.0  # lnA alone (P = 1)
    theta, trial, best, cov, cab = np.zeros(4), np.empty(4), np.empty(4), np.zeros((4, 4)), np.empty((2, 2))
    nan_theta, nan_cov, nan_cross = np.full(4, np.nan), np.full((4, 4), np.nan), np.full((4, 2), np.nan)
    ln_a_range = np.array([lo[0], hi[0]])
    opts = (max_iter, tol, ln_a_range, outlier_sigma, max_outliers, min_dof, tgroup, egroup)  # rescue and fallback
    D = np.empty((M, 2))
    for i in range(M):
        D[i, 0], D[i, 1] = 1.0, temperature[i]
    for p in range(npix):
        n = _pixel_samples(p, y, nframes, usable, read_var, inv_gain, bias_a, bias_b, extra_var,
                           temperature, yp, vp, bp, sp, level, outl, ws.few)
        n, flags = _full_well(yp, vp, bp, sp, level, tgroup, egroup, full_well, n, outl)
        if n == 0:
            _store_pixel(p, vp, outl, nan_theta, nan_cov, nan_cross, np.nan, flags | _NONE | _FEW, theta_out, cov_out,
                         cross_out, chi2_out, nvalid_out, flags_out, outliers_out)
            continue
        ws.cross[:] = 0.0
        for i in range(M):
            v0[i] = vp[i]
        trusted, chi2, dropped = False, np.nan, 0
        if pixel_info.shape[1]:  # else no pixel has a prior
            _load_prior(p, P, F, pixel_prior, pixel_info, ws)
        known = NP - 1 if ws.prior_p[0] == P else 0  # parameters the prior determines
        if n >= NP - known + min_dof:
            _start(yp, vp, bp, sp, Z, offset, P, F, theta, ws)
            converged, chi2, positive, dropped = _robust(yp, vp, bp, sp, Z, offset, offset, P, F, theta, max_iter,
                                                         tol, ln_a_range, outlier_sigma, max_outliers,
                                                         NP - known + min_dof, tgroup, egroup, outl, cov, ws, trial,
                                                         best)
            if not _acceptable(chi2, n - dropped - NP + known, outlier_sigma) and np.isfinite(prior[0]):
                ok, conv2, c2, pos2, k = _rescue(yp, vp, v0, bp, sp, Z, offset, P, F, prior, opts, outl, theta, cov,
                                                 ws, trial, best, r)
                if ok:
                    converged, chi2, positive, dropped = conv2, c2, pos2, k
            trusted = converged and positive
            for a in range(P):
                trusted = trusted and lo[a] <= theta[a] <= hi[a]
            if trusted:
                flags |= _CONVERGED
                if propagate:
                    chi2 = _bias_error(p, yp, vp, bp, sp, Z, P, F, theta, bias_cov, D, cab, cov, ws)
                _expand(theta, cov, ws.cross, P, F)
        else:
            flags |= _FEW
        if not trusted:
            flags |= _FALLBACK
            converged, chi2, dropped = _fallback(p, yp, vp, v0, bp, sp, Z, offset, P, F, prior, prior_var, opts,
                                                 propagate, bias_cov, D, cab, outl, theta, cov, ws, trial, best, r)
            flags |= _CONVERGED if converged else 0
        _store_pixel(p, vp, outl, theta, cov, ws.cross, chi2, flags | (_OUTLIERS if dropped > 0 else 0), theta_out,
                     cov_out, cross_out, chi2_out, nvalid_out, flags_out, outliers_out)


@_kernel((_in(_F8), _in(_F4, 2), _in(_F4, 2), _in(_F4), _in(_F8), _in(_F8), _I8,
          _out(_F4), _out(_F4), _out(_F4, 2), _out(_F4), _out(_B)), error_model="numpy")
def fit_lines(temperature, y, weights, rv, prior_slope, prior_var, mode, a, b, cov, rms, fallback):
    """Weighted straight line y = a + b T of every pixel, in one pass (see :func:`cmoscal.bias.fit_bias`).

    ``y`` and ``weights`` are (M, npix) float32 (a sample counts where its weight > 0 and it is finite),
    ``rv`` (npix,) the variance of unit weight, ``prior_slope`` and ``prior_var`` (npix,) a slope and its
    variance: with ``mode`` 1 the slope a pixel gets when its usable samples span fewer than two temperatures
    (the population's), with ``mode`` 2 a Gaussian prior of every pixel's slope (an earlier model's; the level
    is free), 0 none. Writes a, b, the covariance planes (3, npix: var a, var b, cov ab), the residual RMS
    and the fallback flag.
    """
    M = y.shape[0]
    for p in range(a.size):
        s0 = s1 = s2 = sy = sty = 0.0
        for k in range(M):
            w = float(weights[k, p])
            v = float(y[k, p])
            if w > 0 and np.isfinite(v):
                T = temperature[k]
                s0 += w
                s1 += w * T
                s2 += w * T * T
                sy += w * v
                sty += w * T * v
        known = rv[p] / prior_var[p] if mode == 2 and prior_var[p] > 0 else 0.0  # the prior's weight on the slope
        if known > 0 and np.isfinite(known + prior_slope[p]):
            s2 += known
            sty += known * prior_slope[p]
        det = s0 * s2 - s1 * s1
        spread = det > 1e-9 * s0 * s0
        slope = (s0 * sty - s1 * sy) / det if spread else np.nan
        level = (sy - slope * s1) / s0
        c0, c1, c2 = rv[p] * s2 / det, rv[p] * s0 / det, -rv[p] * s1 / det
        fallback[p] = not spread and s0 > 0
        if fallback[p] and mode == 1:
            mean_T = s1 / s0
            slope, level = prior_slope[p], sy / s0 - prior_slope[p] * mean_T
            c0, c1, c2 = rv[p] / s0 + mean_T * mean_T * prior_var[p], prior_var[p], -mean_T * prior_var[p]
        ss, n = 0.0, 0
        for k in range(M):
            w = float(weights[k, p])
            v = float(y[k, p])
            if w > 0 and np.isfinite(v):
                ss += (v - level - slope * temperature[k]) ** 2
                n += 1
        a[p], b[p], rms[p] = level, slope, np.sqrt(ss / n)
        cov[0, p], cov[1, p], cov[2, p] = c0, c1, c2


@_kernel((_in(_F4, 2), _in(_I2, 2), _out(_F4), _out(_I2)))
def pooled_variance(variance, nframes, out, dof_out):
    """Per-frame variance of each pixel pooled over masters, weighted by degrees of freedom.

    ``variance`` (M, npix) is each master's variance (of its mean), ``nframes`` (M, npix) its
    frames; a master counts with n - 1 degrees of freedom when n > 1 and its variance is finite.
    Writes ``out`` (npix,): sum((n - 1) n var) / sum(n - 1), NaN without any, and ``dof_out`` that sum.
    """
    for p in range(out.size):
        num = 0.0
        dof = 0.0
        for k in range(variance.shape[0]):
            n = float(nframes[k, p])
            if n > 1 and np.isfinite(variance[k, p]):
                num += (n - 1) * (variance[k, p] * n)
                dof += n - 1
        out[p] = num / dof if dof > 0 else np.nan
        dof_out[p] = int(dof)


# --- prediction and evaluation --------------------------------------------------------------------
@njit(cache=True, nogil=True)
def _linear(dark, cov, x, ln_t, r, c):
    """lnA + slope x + gamma ln t of pixel (r, c) (``dark`` (3, ny, nx)) and its variance z^T C z from
    the covariance planes ``cov`` (6, ny, nx) of :data:`COVARIANCE_PLANES`, z = (1, x, ln t)."""
    z = (1.0, x, ln_t)
    q = 0.0
    for k in range(6):
        i, j = COVARIANCE_PLANES[k]
        q += (1.0 if i == j else 2.0) * z[i] * z[j] * cov[k, r, c]
    return dark[0, r, c] + x * dark[1, r, c] + ln_t * dark[2, r, c], q


@njit(cache=True, nogil=True)
def _with_floor(dark, cov, x, ln_t, r, c):
    """Dark signal t^gamma (C + exp(lnA + slope x)) of pixel (r, c) (``dark`` (4, ny, nx)), its variance J C J^T
    from the covariance planes ``cov`` (10, ny, nx), and J = (e, e x, DC ln t, t^gamma) with e the thermal term."""
    e = np.exp(min(dark[0, r, c] + x * dark[1, r, c] + ln_t * dark[2, r, c], _MAX_EXPONENT))
    floor = np.exp(min(ln_t * dark[2, r, c], _MAX_EXPONENT))
    signal = e + dark[3, r, c] * floor
    jac = (e, e * x, signal * ln_t, floor)
    q = 0.0
    for k in range(10):
        i, j = COVARIANCE_PLANES[k]
        q += (1.0 if i == j else 2.0) * jac[i] * jac[j] * cov[k, r, c]
    return signal, q, jac


@njit(cache=True, nogil=True)
def _bias_response(jac, cross, r, c):
    """u = jac ``cross``: a prediction's covariance with the bias model's (a, b), from the planes of pixel (r, c) in
    the order of :data:`CROSS_PLANES` ((i, b) in plane 2 i + b)."""
    u0 = u1 = 0.0
    for i in range(cross.shape[0] // 2):
        u0 += jac[i] * cross[2 * i, r, c]
        u1 += jac[i] * cross[2 * i + 1, r, c]
    return u0, u1


@njit(cache=True, nogil=True)
def _through_bias(u0, u1, bias_cov, r, c):
    """u C+ u^T: the variance the bias model's error (covariance C, planes var a, var b, cov ab of ``bias_cov``) adds
    to a prediction through the fit, from its covariance u with (a, b) (:func:`_bias_response`; u = -jac K C for the
    parameters' response K to that error, so u C+ u^T = jac K C K^T jac^T; C+ the pseudo-inverse: a bias parameter
    without error moves nothing). Selects, not branches: a loop of it vectorizes."""
    va, vb, ab = float(bias_cov[0, r, c]), float(bias_cov[1, r, c]), float(bias_cov[2, r, c])
    det, trace = va * vb - ab * ab, va + vb
    full = det > 1e-12 * trace * trace  # else rank one (or zero): C+ = C / trace^2
    num = (u0 * u0 * vb - 2.0 * u0 * u1 * ab + u1 * u1 * va) if full else (
        u0 * u0 * va + 2.0 * u0 * u1 * ab + u1 * u1 * vb)
    den = det if full else trace * trace
    return num / den if den > 0 else 0.0


@_kernel((_in(_F8, 3), _in(_F4, 3), _in(_F4, 3), _in(_F4, 3), _F8, _F8, _F8, _out(_F4, 2), _out(_F4, 2), _out(_F4, 2),
          _out(_F4, 2)))
def predict_dark(dark, cov, cross, bias_cov, x, ln_t, temperature, signal, variance, bias_covariance, through_bias):
    """Dark signal t^gamma (C + exp(lnA + slope x)) of every pixel, its variance and its covariance with the bias model
    at ``temperature``, in one pass.

    ``dark`` (3, ny, nx) holds lnA, slope, gamma (C = 0), or (4, ny, nx) also C; ``cov`` (6 or 10, ny, nx)
    the covariance planes :data:`COVARIANCE_PLANES` and ``cross`` (6 or 8, ny, nx) those with the bias model's (a, b),
    :data:`CROSS_PLANES` (float32, as the model file stores them; no planes: the covariance is not wanted);
    ``x`` the temperature regressor and ``ln_t`` the log exposure of the request. Writes ``signal`` and ``variance``
    (ny, nx) float32, NaN where the model is, with ``cross`` ``bias_covariance`` (ny, nx), and with ``bias_cov`` (the
    bias model's covariance planes var a, var b, cov ab; no planes: not wanted) ``through_bias`` (ny, nx), the part
    of the variance the bias model's error makes (:func:`_through_bias`).
    """
    floor = dark.shape[0] == 4
    with_bias = cross.shape[0] > 0
    with_share = with_bias and bias_cov.shape[0] > 0
    u0_row, u1_row = np.empty(signal.shape[1]), np.empty(signal.shape[1])  # the share in a loop of its own
    for r in range(signal.shape[0]):
        for c in range(signal.shape[1]):
            if floor:
                s, q, jac = _with_floor(dark, cov, x, ln_t, r, c)
                variance[r, c] = q
            else:
                e, q = _linear(dark, cov, x, ln_t, r, c)
                s = np.exp(min(e, _MAX_EXPONENT))
                variance[r, c] = s * s * q
                jac = (s, s * x, s * ln_t, 0.0)
            signal[r, c] = s
            if with_bias:
                u0_row[c], u1_row[c] = _bias_response(jac, cross, r, c)
                bias_covariance[r, c] = u0_row[c] + temperature * u1_row[c]
        if with_share:
            for c in range(signal.shape[1]):
                through_bias[r, c] = _through_bias(u0_row[c], u1_row[c], bias_cov, r, c)


@_kernel((_in(_F8, 3), _in(_F4, 3), _F8, _F8, _out(_F8, 2), _out(_F8, 2)))
def predict_log_rate(dark, cov, x, ln_t, ln_rate, variance):
    """ln of the dark rate DC / t of every pixel and its variance (lnA + slope x + (gamma - 1) ln t without a
    floor).

    Arguments as :func:`predict_dark`; writes ``ln_rate`` and ``variance`` (ny, nx) float64.
    """
    floor = dark.shape[0] == 4
    for r in range(ln_rate.shape[0]):
        for c in range(ln_rate.shape[1]):
            if floor:
                s, q, _ = _with_floor(dark, cov, x, ln_t, r, c)
                ln_rate[r, c] = np.log(s) - ln_t
                variance[r, c] = q / (s * s)
            else:
                e, q = _linear(dark, cov, x, ln_t, r, c)
                ln_rate[r, c] = e - ln_t
                variance[r, c] = q


@_kernel((_in(_F4, 2), _I8, _out(_F4, 2)))
def block_mean(image, factor, out):
    """NaN-aware mean of ``factor`` x ``factor`` blocks of ``image`` into ``out`` (NaN where a block has none)."""
    for r in range(out.shape[0]):
        for c in range(out.shape[1]):
            total = 0.0
            n = 0
            for rr in range(r * factor, (r + 1) * factor):
                for cc in range(c * factor, (c + 1) * factor):
                    v = image[rr, cc]
                    if v == v:
                        total += v
                        n += 1
            out[r, c] = total / n if n else np.nan


@njit(cache=True, nogil=True)
def _sample_variance(n, read_var, signal, inv_gain, cov, r, c, t2, tt2, use_bias):
    """Expected variance [DN^2] of pixel (r, c) of a master of ``n`` frames, in float32 arithmetic:
    (read_var + max(signal, 0) inv_gain) / max(n, 1) (a NaN signal gives NaN), plus, ``use_bias``,
    var(a + b T) of the bias model removed from its covariance planes ``cov`` (t2 = T^2, tt2 = 2 T)."""
    shot = signal if not signal < 0 else np.float32(0.0)
    variance = (read_var + shot * inv_gain) / np.float32(max(n, 1))
    if use_bias:
        variance = variance + cov[0, r, c] + t2 * cov[1, r, c] + tt2 * cov[2, r, c]
    return variance


@njit(cache=True, nogil=True)
def _add_finite(total, count, k, j, value):
    """Add ``value`` to total[k, j] and count it, unless it is NaN."""
    if value == value:
        total[k, j] += value
        count[k, j] += 1


@_kernel((_in(_I2, 2), _in(_F4, 2), _in(_F4, 2), _F8, _in(_F4, 3), _F8, _B, _out(_F4, 2)))
def expected_variance(nframes, read_var, signal, inv_gain, bias_cov, temperature, use_bias, out):
    """Expected variance [DN^2] of master samples (the model of :class:`cmoscal.noise.Noise`), into ``out``.

    ``nframes``, ``read_var`` (of one frame), ``signal`` and ``out`` are (ny, nx); ``bias_cov``
    (3, ny, nx) holds var a, var b, cov ab of the bias model a + b T removed from the samples
    (read only where ``use_bias``).
    """
    t2, tt2 = np.float32(temperature * temperature), np.float32(2 * temperature)
    gain = np.float32(inv_gain)
    for r in range(out.shape[0]):
        for c in range(out.shape[1]):
            out[r, c] = _sample_variance(nframes[r, c], read_var[r, c], signal[r, c], gain, bias_cov, r, c, t2, tt2,
                                         use_bias)


@_kernel((_in(_F4, 2), _in(_F4, 2), _in(_F4, 2), _in(_I2, 2), _in(_F4, 2), _F8, _in(_F4, 3), _F8, _B,
          _in(_B, 2), _in(_B, 2), _F8, _I8, _I8, _out(_F4, 2), _out(_F4, 2), _out(_F4, 3), _out(_F4, 2)))
def compare_frames(master, prediction, fitted_var, nframes, read_var, inv_gain, bias_cov, temperature, use_bias,
                   good, hot, snr_min, factor, step, mae, mape, previews, sample):
    """Compare a synthetic frame with a master in one pass: residual maps, their sums and previews.

    Parameters
    ----------
    master, prediction, fitted_var : ndarray, shape (ny, nx), float32
        Master [DN], synthetic frame [DN] and the variance [DN^2] the model's fit takes out of the master's residual
        (:meth:`cmoscal.model.CalibrationModel.fitted_prediction`; the prediction's variance for a fit to the master's
        own noise).
    nframes, read_var, inv_gain, bias_cov, temperature, use_bias
        The master's noise model, as :func:`expected_variance`.
    good, hot : ndarray of bool, shape (ny, nx)
        The two pixel sets summed (normal pixels; hot pixels).
    snr_min : float
        MAPE only where |master| > snr_min * sigma.
    factor : int
        Block size f of the previews.
    step : int
        Every ``step``-th pixel of ``good`` (in row-major order) goes into ``sample``.
    mae, mape : ndarray of float32, shape (ny, nx) (out)
        |prediction - master| [DN] and 100 |prediction - master| / |master| [%] (NaN where not
        significant).
    previews : ndarray of float32, shape (5, ny // f, nx // f) (out)
        NaN-aware f x f block means (as :func:`block_mean`) of master, prediction, mae, mape and
        z = (prediction - master) / sigma over ``good`` (NaN elsewhere).
    sample : ndarray of float32, shape (2, >= ceil(pixels of good / step)) (out)
        mae and mape of the sampled pixels of ``good`` (for medians).

    Returns
    -------
    ndarray, shape (2, 9)
        Per set (good, hot) the sums named by :data:`COMPARE_SUMS`: pixels, sum of z^2, sum of
        (1 - fitted_var / var) clipped to [0, 1] (the in-sample expectation of z^2), pixels with a MAPE,
        sums of MAE and MAE^2, sums of MAPE and MAPE^2, sum of z.
    """
    ny, nx = master.shape
    by, bx = previews.shape[1], previews.shape[2]
    block_sum = np.zeros((5, bx))  # the previews' current row of blocks
    block_n = np.zeros((5, bx), np.int64)
    sums = np.zeros((2, len(COMPARE_SUMS)))
    t2, tt2 = np.float32(temperature * temperature), np.float32(2 * temperature)
    gain = np.float32(inv_gain)
    taken, skip = 0, 0  # pixels sampled; good pixels to pass before the next
    for row in range(ny):
        for col in range(nx):
            m, p = master[row, col], prediction[row, col]
            variance = _sample_variance(nframes[row, col], read_var[row, col], p, gain, bias_cov, row, col, t2, tt2,
                                        use_bias)
            r = p - m
            a = abs(r)
            s = np.sqrt(variance)
            significant = abs(m) > snr_min * s
            usable = np.isfinite(r) and s > 0
            mae[row, col] = a
            mape[row, col] = 100.0 * a / abs(m) if significant else np.nan
            if good[row, col]:
                if skip == 0:
                    sample[0, taken], sample[1, taken] = mae[row, col], mape[row, col]
                    taken += 1
                    skip = step
                skip -= 1
            for k in range(2):
                if usable and (good[row, col] if k == 0 else hot[row, col]):
                    sums[k, 0] += 1.0
                    sums[k, 1] += (r / s) ** 2
                    sums[k, 2] += 1.0 - min(max(fitted_var[row, col] / variance, 0.0), 1.0)
                    sums[k, 3] += significant
                    sums[k, 4] += a
                    sums[k, 5] += a * a
                    if significant:
                        sums[k, 6] += mape[row, col]
                        sums[k, 7] += mape[row, col] * mape[row, col]
                    sums[k, 8] += r / s
            bc = col // factor
            if bc < bx:
                _add_finite(block_sum, block_n, 0, bc, m)
                _add_finite(block_sum, block_n, 1, bc, p)
                _add_finite(block_sum, block_n, 2, bc, a)
                _add_finite(block_sum, block_n, 3, bc, mape[row, col])
                if usable and good[row, col]:
                    _add_finite(block_sum, block_n, 4, bc, r / s)
        br = row // factor
        if (row + 1) % factor == 0 and br < by:
            for k in range(5):
                for bc in range(bx):
                    n = block_n[k, bc]
                    previews[k, br, bc] = block_sum[k, bc] / n if n else np.nan
                    block_sum[k, bc] = 0.0
                    block_n[k, bc] = 0
    return sums
