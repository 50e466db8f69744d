"""Master frames: judge the frames of a group, combine them, and read masters back.

A master file holds the combined frame [DN] and up to four extensions: VARIANCE (of the master,
DN^2, from the scatter of the frames used; NaN for one frame, whose error comes from the noise
model), NFRAMES (frames used per pixel), NSATUR (saturated input samples per pixel, at most
255) and NCLIP (samples clipped per pixel, e.g. cosmic rays); the counts are stored as bytes
unless a group has more than 255 frames. Saturated, NaN and clipped samples are left out of
the combine. What no later stage reads (NCLIP, and VARIANCE of master darks) is written only
with ``master_diagnostics``.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections import namedtuple
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.stats import mad_std
from astropy.table import Table

from .compute import concurrently, sample_rows, scratch, tile_budget
from .fitsio import has_image, provenance, read_image, read_product, read_stack, write_hdus
from .inventory import celsius
from .kernels import combine_stack, sorting_network, subtract_bias
from .products import product

__all__ = ["GAIN_SUMS", "FrameRules", "MasterSet", "MasterTask", "combine", "frame_levels", "frame_problem",
           "gain_error", "gain_sums", "group_noise", "inverse_gain", "level_departure", "load_masters", "make_master",
           "master_index", "master_path", "pixel_series", "summarize_masters", "write_master"]

_EXTENSIONS = ("VARIANCE", "NFRAMES", "NSATUR", "NCLIP")


_CHI2_MEDIAN = (0.4549, 0.6931, 0.7887, 0.8392)  # median / mean of chi-square with 1..4 degrees of freedom


def _chi2_median_ratio(dof: int) -> float:
    """median / mean of a chi-square variable with ``dof`` degrees of freedom (Wilson-Hilferty beyond 4)."""
    return _CHI2_MEDIAN[dof - 1] if dof <= len(_CHI2_MEDIAN) else (1 - 2 / (9 * dof)) ** 3


@dataclass(frozen=True)
class FrameRules:
    """How the frames of a group are judged and combined: the parameters of the same names.

    Attributes
    ----------
    combine : str
        mean (sigma-clipped) or median.
    clip_sigma : float
        Temporal clipping of the mean.
    max_zero_fraction, max_saturated_fraction, max_nan_fraction : float
        Shares of a frame's pixels beyond which the frame is rejected.
    frame_outlier_sigma : float
        A frame whose level departs by more than this many times the pixels' scatter is rejected.
    master_diagnostics : bool
        Also write the extensions no later stage reads (NCLIP; VARIANCE of master darks).
    tile_bytes : float
        Bytes one group may hold in memory at once.
    """

    combine: str
    clip_sigma: float
    max_zero_fraction: float
    max_saturated_fraction: float
    max_nan_fraction: float
    frame_outlier_sigma: float
    master_diagnostics: bool
    tile_bytes: float

    @classmethod
    def from_params(cls, params: dict) -> FrameRules:
        """The rules of a campaign's parameters."""
        names = [name for name in cls.__dataclass_fields__ if name != "tile_bytes"]
        return cls(**{name: params[name] for name in names}, tile_bytes=tile_budget(params))


def frame_problem(counts, npix: int, rules: FrameRules) -> str:
    """Why a frame cannot be used, judged on all its pixels ('' when it can).

    ``counts`` are its saturated, zero-valued and NaN samples (:func:`cmoscal.fitsio.read_stack`),
    judged against the ``rules``' max_saturated_fraction, max_zero_fraction and max_nan_fraction.
    A few saturated or NaN pixels only drop those samples.
    """
    nsat, nzero, nnan = counts
    if nzero == npix:
        return "all-zero frame"
    if nzero > rules.max_zero_fraction * npix:
        return f"mostly-zero frame ({nzero / npix:.0%} of pixels are 0)"
    if nsat > rules.max_saturated_fraction * npix:
        return f"{nsat / npix:.0%} of pixels saturated (light leak or shutter fault?)"
    if nnan > rules.max_nan_fraction * npix:
        return f"{nnan / npix:.0%} of pixels are NaN"
    return ""


_LEVEL_PIXELS = 1 << 14  # pixels per frame that judge its level: its median to 1e-2 of the pixels' scatter


def _level_pixels(sample: np.ndarray) -> np.ndarray:
    """(N, <= _LEVEL_PIXELS) evenly spaced pixels of a (N, rows, X) sample, those finite in every frame."""
    flat = sample.reshape(len(sample), -1)
    flat = flat[:, :: max(1, flat.shape[1] // _LEVEL_PIXELS)]
    return flat[:, np.isfinite(flat).all(axis=0)]


def frame_levels(sample: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Level (median) and spatial robust sigma [DN] of each frame of a (N, rows, X) sample (bias removed)."""
    pixels = _level_pixels(sample)
    if not pixels.size:
        return np.full(len(sample), np.nan), np.full(len(sample), np.nan)
    return np.median(pixels, axis=1), mad_std(pixels, axis=1)


def level_departure(level: float, expected: float, sigma: float, kind: str, rules: FrameRules,
                    source: str = "of its group") -> str:
    """Why a frame's level is not the ``expected`` one ('' when it is): ``frame_outlier_sigma`` x ``sigma`` beyond
    it and, for darks, more than a factor of two from it (what no temperature error explains); ``source`` says
    where the expected level comes from."""
    departure = level - expected
    limit = rules.frame_outlier_sigma * sigma
    if not np.isfinite(departure) or abs(departure) <= limit:
        return ""
    if kind == "dark" and expected > 0 and level > 0 and 0.5 <= level / expected <= 2:
        return ""
    return (f"level {level:.1f} DN departs by {departure:+.1f} DN ({abs(departure) / max(sigma, 1e-9):.0f} sigma) "
            f"from the {expected:.1f} DN {source} (light leak or shutter fault?)")


def _level_outliers(sample: np.ndarray, kind: str, rules: FrameRules) -> list[str]:
    """Reasons (or '') for the frames of a group of >= 3 whose level departs from the others' (sample rows, bias
    removed): the median departure of each from the per-pixel median, against the pixels' scatter: the robust
    sigma of the difference of two frames, / sqrt 2, of the quietest pair of a ring (each frame in two pairs;
    a robust sigma on 16,384 pixels varies by ~1 %, so the smallest of a few is barely low)."""
    n = len(sample)
    finite = _level_pixels(sample)
    if n < 3 or not finite.size:
        return [""] * n
    departure = np.median(finite - np.median(finite, axis=0), axis=1)
    sigma = float(np.min(mad_std(finite - np.roll(finite, 1, axis=0), axis=1))) / np.sqrt(2)
    reference = float(np.median(finite))
    return [level_departure(reference + d, reference, sigma, kind, rules) for d in departure]


def _fingerprint(frame: np.ndarray, whole: bool = False) -> bytes:
    """Hash of a frame's values (of every 16th row unless ``whole``), to find duplicates."""
    data = frame if whole else frame[:: max(1, len(frame) // 16)]
    return hashlib.blake2b(np.ascontiguousarray(data).tobytes(), digest_size=16).digest()


def group_noise(stack: np.ndarray, read_var: float | None = None) -> tuple[float, float]:
    """The group's own noise model sigma^2 = floor_var + level * inv_gain, for clipping.

    Robust (medians over pixels, so cosmic rays do not matter). For biases (``read_var``
    None) the typical per-pixel variance and no shot noise. For darks the floor is the typical
    read variance from the bias stage, and 1/gain the slope through the origin of the median
    excess variance against the median level over quantile bins; -1 when the group's levels do
    not measure it (then two-frame groups are not clipped: see :func:`combine`).
    ``stack`` holds the usable frames (of fixed sample rows, so the result does not depend on
    the tiling).
    """
    n = len(stack)
    if n < 2:
        return (read_var or 0.0), -1.0
    sample = stack.reshape(n, -1).astype(np.float64)
    total = sample.sum(axis=0)  # finite where every frame is
    finite = np.isfinite(total)
    if not finite.any():
        return (read_var or 0.0), -1.0
    sample, level = sample[:, finite], total[finite] / n
    var = np.sum((sample - level) ** 2, axis=0) / (n - 1) / _chi2_median_ratio(n - 1)
    if read_var is None:
        return float(np.median(var)), 0.0
    index = np.digitize(level, np.percentile(level, np.linspace(5, 90, 18))[1:-1]).astype(np.uint8)
    order = np.argsort(index, kind="stable")  # the pixels of each quantile bin, bin after bin
    ends = np.cumsum(np.bincount(index, minlength=17))
    bins = np.array([(np.median(level[members]), np.median(var[members]))
                     for members in np.split(order, ends[:-1]) if len(members) >= 20])
    if len(bins) < 3:
        return read_var, -1.0
    x, y = bins[:, 0], bins[:, 1] - read_var
    slope = float(np.sum(x * y) / np.sum(x * x)) if np.sum(x * x) > 0 else 0.0
    scatter = np.sqrt(np.sum((y - slope * x) ** 2) / (len(x) - 1) / np.sum(x * x)) if np.sum(x * x) > 0 else np.inf
    return read_var, (slope if slope > 3 * scatter else -1.0)


def combine(stack: np.ndarray, method: str = "mean", clip_sigma: float = 4.0, noise=(0.0, 0.0)):
    """Combine a stack of frames pixel by pixel (see :func:`cmoscal.kernels.combine_stack`).

    Parameters
    ----------
    stack : ndarray, shape (N, ny, nx), float32
        Frames [DN]; NaN marks invalid samples, +inf saturated ones.
    method : {"mean", "median"}, default "mean"
        Clipped mean (removes cosmic rays, never clipping closer than the noise model) or median.
    clip_sigma : float, default 4.0
    noise : (floor_var, inv_gain), default (0, 0)
        The group's noise model (:func:`group_noise`); inv_gain < 0 means unknown, and then
        two-frame groups are not clipped (a hit is left to the dark model's robust fit).

    Returns
    -------
    master, variance : ndarray (float32)
    nframes : ndarray (int16)
    nsaturated : ndarray (uint8)
    nclipped : ndarray (int16)
    """
    stack = np.ascontiguousarray(stack, dtype=np.float32)
    shape = stack.shape[1:]
    out = (np.empty(shape, np.float32), np.empty(shape, np.float32), np.empty(shape, np.int16),
           np.empty(shape, np.uint8), np.empty(shape, np.int16))
    combine_stack(stack, sorting_network(len(stack)), float(noise[0]), float(noise[1]), float(clip_sigma),
                  method == "median", *out)
    return out


#: the photon-transfer sums of a dark master (header cards GAINS0...): those of the fit, sum s^2, s^3, s^4, s e,
#: s^2 e, then those of its error (:func:`gain_error`), sum s^5...s^8, s^3 e...s^6 e, s^2 e^2...s^4 e^2
GAIN_SUMS = 16


def gain_sums(signal, variance, nframes, read_var) -> np.ndarray:
    """The :data:`GAIN_SUMS` sums of the photon-transfer fit excess = signal / gain + c * signal^2 over one group's
    pixels.

    The per-frame variance of a master (variance * frames) exceeds the read variance by
    signal / gain, plus a term growing as signal^2 (the frames' dark differs with their
    temperature jitter; pixel response differences): the quadratic term keeps it out of the
    gain. Pixels of one-frame masters, with non-finite values or above the 99th percentile (hot
    pixels) are left out. Summed over groups, the sums give 1/gain (:func:`inverse_gain`) and its error
    (:func:`gain_error`).
    """
    excess = variance.astype(np.float64) * nframes - read_var
    ok = (nframes > 1) & np.isfinite(excess) & np.isfinite(signal) & (signal > 0)
    if not ok.any():
        return np.zeros(GAIN_SUMS)
    s, e = signal[ok].astype(np.float64), excess[ok]
    keep = s <= np.percentile(s, 99)
    s, e = s[keep], e[keep]
    return np.array([np.sum(s ** 2), np.sum(s ** 3), np.sum(s ** 4), np.sum(s * e), np.sum(s * s * e),
                     *(np.sum(s ** k) for k in range(5, 9)), *(np.sum(s ** k * e) for k in range(3, 7)),
                     *(np.sum(s ** k * e * e) for k in range(2, 5))])


def _photon_transfer(sums) -> tuple[float, float]:
    """(1/gain, c) of the fit excess = s / gain + c s^2 from the first five :func:`gain_sums`; c = 0 when one
    signal level leaves no room for the quadratic term."""
    s2, s3, s4, se, s2e = sums[:5]
    det = s2 * s4 - s3 * s3
    if s2 <= 0 or det <= 1e-9 * s2 * s4:
        return (se / s2 if s2 > 0 else 0.0), 0.0
    return (s4 * se - s3 * s2e) / det, (s2 * s2e - s3 * se) / det


def inverse_gain(sums) -> float:
    """1/gain [DN/e-] from the summed :func:`gain_sums` (0 when the darks do not measure it)."""
    return float(max(_photon_transfer(sums)[0], 0.0))


def gain_error(sums) -> float:
    """Statistical relative error of the gain of :func:`inverse_gain` from the same summed :func:`gain_sums`: the
    sandwich covariance of the fit, (X^T X)^-1 X^T diag(r^2) X (X^T X)^-1 with X = (s, s^2) and r the residuals,
    which the pixels' own scatter sets (pixels are independent; a split of the pixels into 8 column sets agrees).
    It leaves out the estimator's bias (low-signal pixels, the read variance it subtracts). NaN where not measured
    (or sums of an older cmoscal, without the error's)."""
    if len(sums) < GAIN_SUMS or inverse_gain(sums) <= 0:
        return np.nan
    s2, s3, s4 = sums[:3]
    power = dict(zip(range(2, 9), (s2, s3, s4, *sums[5:9])))  # sum s^k
    with_e = dict(zip(range(1, 7), (sums[3], sums[4], *sums[9:13])))  # sum s^k e
    with_e2 = dict(zip(range(2, 5), sums[13:16]))  # sum s^k e^2
    b1, b2 = _photon_transfer(sums)

    def r2(m):  # sum s^m r^2, r = e - b1 s - b2 s^2
        return (with_e2[m] - 2 * b1 * with_e[m + 1] - 2 * b2 * with_e[m + 2] + b1 * b1 * power[m + 2]
                + 2 * b1 * b2 * power[m + 3] + b2 * b2 * power[m + 4])

    if b2 == 0.0:  # the fit through the origin alone
        variance = r2(2) / s2 ** 2
    else:
        bread = np.linalg.inv(np.array([[s2, s3], [s3, s4]]))
        meat = np.array([[r2(2), r2(3)], [r2(3), r2(4)]])
        variance = (bread @ meat @ bread)[0, 0]
    return float(np.sqrt(max(variance, 0.0)) / b1)


@functools.lru_cache(maxsize=4)
def _product(path: str, mtime: int) -> np.ndarray:
    """A whole product image, read once per process (the bias maps every dark group uses)."""
    return read_image(path)


def _cached(path) -> np.ndarray:
    return _product(str(path), os.stat(path).st_mtime_ns)


def _remove_bias(stack, source, temperatures, rows) -> None:
    """Remove from each frame of ``stack`` (``rows`` of the sensor) its bias, in place.

    ``source`` is ("model", a_map, b_map): the bias model at each frame's temperature, or
    ("nearest", master_files, master_temperatures): the master bias nearest in temperature.
    """
    kind, *args = source
    if kind == "model":
        a, b = (_cached(path)[rows] for path in args)
        subtract_bias(stack, np.ascontiguousarray(a), np.ascontiguousarray(b),
                      np.asarray(temperatures, dtype=np.float64))
        return
    paths, master_temperatures = args
    index = np.abs(np.asarray(master_temperatures)[None, :] - np.asarray(temperatures)[:, None]).argmin(axis=1)
    for frame, i in zip(stack, index):
        frame -= _cached(paths[i])[rows]


#: the arguments of :func:`make_master` for one group, by name (a task: ``make_master(*task)``)
MasterTask = namedtuple("MasterTask", "refs names temperatures exptime kind path rules scale saturation bias_source "
                                      "read_noise_map")


def make_master(refs, names, temperatures, exptime, kind, path, rules, scale, saturation, bias_source=None,
                read_noise_map=None, excluded=None) -> dict:
    """Read, judge, combine and write the master of one group (a task: a thread or a dask worker).

    Every frame is read once when the group fits the tile budget; a larger group is judged
    frame by frame and then combined band by band (each frame read twice).

    Parameters
    ----------
    refs, names, temperatures : sequences, one per frame
        Where the pixels are, the frames' names (for the record) and temperatures [degC].
    exptime : float
        Exposure of the group [s].
    kind : {"bias", "dark"}
    path : Path
        The master file to write.
    rules : FrameRules
        How the frames are judged and combined.
    scale, saturation : float
        raw / scale = DN; saturation [DN].
    bias_source : tuple, optional
        Bias to remove from each frame (darks), see :func:`_remove_bias`.
    read_noise_map : Path, optional
        Read noise [DN], for the gain sums of dark groups.
    excluded : dict, optional
        Frame index -> reason: frames already judged unusable (by their neighbouring groups).

    A frame is rejected when unusable on its own (:func:`frame_problem`), a duplicate, or, in a
    group of >= 3, when its level departs from the others' (:func:`level_departure`).

    Returns
    -------
    dict
        path, frames (name, status, reason, saturated and NaN fractions per frame), nbytes read,
        noise (the group's clipping noise model), gain sums (over the fixed sample rows), clipped samples,
        levels (level and spatial sigma [DN] of each frame used, on the sample rows, bias removed).
    """
    excluded = excluded or {}
    ny, nx = refs[0].shape
    npix = ny * nx
    typical_read_var = None
    rows = sample_rows(ny)
    if read_noise_map is not None:
        read_var = _cached(read_noise_map)[rows].astype(np.float64) ** 2  # on the fixed sample rows
        typical_read_var = float(np.nanmedian(read_var))
    one_pass = len(refs) * npix * 4 * 2 <= rules.tile_bytes
    if one_pass:
        stack, counts, nbytes = read_stack(refs, slice(None), scale, saturation,
                                           scratch("stack", (len(refs), ny, nx), np.float32))
        reasons = [excluded.get(i) or frame_problem(c, npix, rules) for i, c in enumerate(counts)]
        prints = {}
        for i, reason in enumerate(reasons):  # a copy of a frame is a duplicate, be that frame used or excluded
            key = _fingerprint(stack[i])
            twin = next((j for j in prints.get(key, []) if np.array_equal(stack[i], stack[j], equal_nan=True)), None)
            if not reason and twin is not None:
                reasons[i] = f"duplicate of {names[twin]}"
            prints.setdefault(key, []).append(i)
    else:
        counts, reasons, prints, nbytes = [], [], {}, 0
        for i, ref in enumerate(refs):
            frame, c, n = read_stack([ref], slice(None), scale, saturation)
            nbytes += n
            counts.append(c[0])
            reason = excluded.get(i) or frame_problem(c[0], npix, rules)
            key = _fingerprint(frame[0], whole=True)
            if not reason and key in prints:
                reason = f"duplicate of {names[prints[key]]}"
            prints.setdefault(key, i)
            reasons.append(reason)
        counts = np.array(counts)
    good = [i for i, r in enumerate(reasons) if not r]
    if good and one_pass:
        stack = stack[good] if len(good) < len(refs) else stack
        if bias_source is not None:
            _remove_bias(stack, bias_source, [temperatures[i] for i in good], slice(None))
        sample = stack[:, rows]
    elif good:
        sample = np.concatenate([read_stack([refs[i] for i in good], slice(y, y + 1), scale, saturation)[0]
                                 for y in rows], axis=1)
        if bias_source is not None:
            _remove_bias(sample, bias_source, [temperatures[i] for i in good], rows)
    if good:
        departs = _level_outliers(sample, kind, rules)
        for i, reason in zip(good, departs):
            reasons[i] = reason
        keep = [k for k, reason in enumerate(departs) if not reason]
        good = [good[k] for k in keep]
        sample = sample[keep]
        if one_pass and len(keep) < len(departs):
            stack = stack[keep]
    frames = [(names[i], "rejected" if r else "used", r, counts[i][0] / npix, counts[i][2] / npix)
              for i, r in enumerate(reasons)]
    if not good:
        return dict(path=None, frames=frames, nbytes=nbytes, noise=(0.0, 0.0), gain=np.zeros(GAIN_SUMS), clipped=0,
                    levels=[])
    use_refs = [refs[i] for i in good]
    use_T = [temperatures[i] for i in good]
    noise = group_noise(sample, typical_read_var)
    if one_pass:
        parts = [combine(stack, rules.combine, rules.clip_sigma, noise)]
    else:
        band_rows = max(1, int(rules.tile_bytes // (len(good) * nx * 4 * 3)))
        parts = []
        for start in range(0, ny, band_rows):
            band_slice = slice(start, min(start + band_rows, ny))
            band, _, n = read_stack(use_refs, band_slice, scale, saturation)
            nbytes += n
            if bias_source is not None:
                _remove_bias(band, bias_source, use_T, band_slice)
            parts.append(combine(band, rules.combine, rules.clip_sigma, noise))
    combined = parts[0] if len(parts) == 1 else [np.concatenate(p) for p in zip(*parts)]
    gain = np.zeros(GAIN_SUMS)
    if read_noise_map is not None:  # a campaign-wide number: the fixed sample rows measure it
        gain = gain_sums(combined[0][rows], combined[1][rows], combined[2][rows], read_var)
    inputs = [names[i] for i in good]
    rejected = [f"{names[i]}: {r}" for i, r in enumerate(reasons) if r]
    subtracted = ""
    if bias_source is not None:
        subtracted = ("model: a + b*T at each frame's own temperature" if bias_source[0] == "model" else
                      "nearest: the master bias nearest in temperature")
    write_master(path, combined, kind=kind, temperatures=use_T, exptime=exptime, inputs=inputs, rules=rules,
                 scale=scale, saturation=saturation, noise=noise, rejected=rejected, subtracted=subtracted, gain=gain)
    levels = [(names[i], *values) for i, *values in zip(good, *frame_levels(sample))]
    return dict(path=path, frames=frames, nbytes=nbytes, noise=noise, gain=gain, clipped=int(combined[4].sum()),
                levels=levels)


def master_path(output_dir: str | Path, kind: str, temperature: float, exptime: float = 0.0) -> Path:
    """Path of a master file, with the original pipelines' names."""
    if kind == "bias":
        return product(output_dir, "bias_masters", f"master_bias_{celsius(temperature)}.fits")
    return product(output_dir, "dark_masters", f"darks_T{celsius(temperature)}_texp{exptime:g}s.fits")


def write_master(path, combined, *, kind: str, temperatures, exptime: float, inputs, rules: FrameRules, scale: float,
                 saturation: float, noise, rejected=(), subtracted: str = "", gain=np.zeros(GAIN_SUMS)) -> Path:
    """Write one master (the output of :func:`combine`) with its provenance."""
    master, variance, nframes, nsat, nclip = combined
    header = fits.Header()
    header["IMAGETYP"] = f"MASTER_{kind.upper()}"
    provenance(header, bunit="DN", description=f"master {kind} ({rules.combine} of {len(inputs)} frames)",
               inputs=inputs,
               TEMP=(float(np.mean(temperatures)), "degC, mean over input frames"),
               TEMPMIN=(float(np.min(temperatures)), "degC"), TEMPMAX=(float(np.max(temperatures)), "degC"),
               EXPTIME=(float(exptime), "s"), NCOMBINE=(len(inputs), "input frames used"),
               NREJECT=(len(rejected), "input frames rejected"),
               COMBINE=(rules.combine, "combine method"), CLIPSIG=(rules.clip_sigma, "clip sigma"),
               SCALEFAC=(scale, "raw / SCALEFAC = DN"), SATURATE=(saturation, "DN"),
               NOISEVAR=(noise[0], "DN2, clipping noise floor"),
               NOISEIG=(noise[1], "DN/e-, clipping noise 1/gain"),
               **{f"GAINS{k}": (float(v), "photon transfer sums, see gain_sums") for k, v in enumerate(gain)},
               MEDIAN=(float(np.nanmedian(master[:: max(1, master.shape[0] // 64)])), "DN, median of 64 rows"),
               NSATPIX=(int(np.count_nonzero(nsat)), "pixels with a saturated input sample"),
               NCLIPPIX=(int(np.count_nonzero(nclip)), "pixels with a clipped input sample"))
    for line in rejected:
        header.add_history(f"rejected: {line}")
    if subtracted:
        header["BIASSUB"] = (subtracted.split(":")[0], "bias removed from each frame")
        header.add_history(f"bias removed: {subtracted}")
    if len(inputs) <= 255:  # counts of at most 255 frames: a byte each
        nframes, nclip = nframes.astype(np.uint8), nclip.astype(np.uint8)
    read_later = ("NFRAMES", "NSATUR") + (("VARIANCE",) if kind == "bias" else ())  # the read noise's source
    return write_hdus(path, master, header, [(name, data, unit) for name, data, unit in
                                             zip(_EXTENSIONS, (variance, nframes, nsat, nclip), ("DN2", "", "", ""))
                                             if rules.master_diagnostics or name in read_later])


@dataclass
class MasterSet:
    """The masters of one kind stacked along axis 0.

    Attributes
    ----------
    data, variance : ndarray, shape (M, ny, nx)
        Masters [DN] and their variance [DN^2] (NaN for one-frame masters).
    nframes, nsaturated, nclipped : ndarray, shape (M, ny, nx)
        Frames used, saturated inputs and clipped samples per pixel.
    temperature, exptime : ndarray, shape (M,)
        Mean temperature [degC] and exposure [s] of each master.
    paths : list of Path
    """

    data: np.ndarray
    variance: np.ndarray
    nframes: np.ndarray
    nsaturated: np.ndarray
    nclipped: np.ndarray
    temperature: np.ndarray
    exptime: np.ndarray
    paths: list

    def __len__(self):
        return len(self.paths)

    @property
    def valid(self) -> np.ndarray:
        """Samples a model may use: finite, not saturated, from at least one frame."""
        return np.isfinite(self.data) & (self.nsaturated == 0) & (self.nframes > 0)


def master_index(folder: str | Path) -> list[tuple[Path, fits.Header]]:
    """(file, header) of every master in ``folder``, sorted by exposure then temperature."""
    paths = sorted(Path(folder).glob("*.fits"))
    if not paths:
        raise FileNotFoundError(f"{folder}: no master frames (run the earlier stages first)")
    return sorted(((p, fits.getheader(p)) for p in paths), key=lambda ph: (ph[1]["EXPTIME"], ph[1]["TEMP"]))


def load_masters(source, rows=slice(None), extensions=_EXTENSIONS, threads: int = 1) -> MasterSet:
    """Read masters (a folder, or the list of :func:`master_index`) restricted to ``rows``, on up to ``threads``
    threads.

    Only the requested rows of the requested extensions are read; the others, and those the files
    lack (written without ``master_diagnostics``), come back as None. ``rows`` is a slice or an
    index array.
    """
    index = master_index(source) if isinstance(source, (str, Path)) else source
    paths = [path for path, _ in index]

    def stack(ext, dtype=None):
        if ext and (ext not in extensions or not has_image(paths[0], ext)):  # ext 0: the masters themselves
            return None
        stacked = np.stack(concurrently([functools.partial(read_product, p, ext, rows) for p in paths], threads))
        return stacked if dtype is None else stacked.astype(dtype, copy=False)

    return MasterSet(data=stack(0, np.float32), variance=stack("VARIANCE"),
                     nframes=stack("NFRAMES", np.int16), nsaturated=stack("NSATUR"),
                     nclipped=stack("NCLIP", np.int16),
                     temperature=np.array([h["TEMP"] for _, h in index]),
                     exptime=np.array([h["EXPTIME"] for _, h in index]), paths=paths)


def summarize_masters(folder: str | Path) -> Table:
    """One row per master (from the headers): temperature, exposure, frames used and rejected, median,
    saturated and clipped pixels."""
    rows = []
    for path, header in master_index(folder):
        rows.append((path.name, header["TEMP"], header["EXPTIME"], header["NCOMBINE"], header["NREJECT"],
                     header["MEDIAN"], header["NSATPIX"], header["NCLIPPIX"]))
    return Table(rows=rows, names=("master", "temperature", "exptime", "frames", "rejected", "median",
                                   "saturated_pixels", "clipped_pixels"),
                 units=(None, "deg_C", "s", None, None, "DN", None, None))


def pixel_series(folder: str | Path, pixels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Master values of a few pixels ``[(y, x), ...]``, reading only their rows.

    Returns temperature (M,), exposure (M,) and values (M, len(pixels)).
    """
    y, x = np.asarray(pixels).T
    rows, index = np.unique(y, return_inverse=True)
    masters = load_masters(folder, rows, extensions=())
    return masters.temperature, masters.exptime, masters.data[:, index, x]
