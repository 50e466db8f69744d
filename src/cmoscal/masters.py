"""Master frames: combine the frames of one group, with the master's variance.

A master file holds the combined frame [DN] and three extensions: VARIANCE (of the
master, DN^2, from the scatter of the frames used), NFRAMES (frames used per pixel)
and NSATUR (input frames at or above saturation per pixel). Saturated samples are
left out of the combine.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table

from .fitsio import provenance, read_image, read_section, write_hdus
from .inventory import celsius

__all__ = ["MasterSet", "combine", "load_masters", "master_path", "master_paths", "pixel_series", "summarize_masters",
           "typical_scatter", "write_master"]

_MEDIAN_EFFICIENCY = np.pi / 2  # variance of a median relative to a mean, large N


def typical_scatter(stack: np.ndarray, saturated: np.ndarray) -> float:
    """Median over pixels of the per-pixel frame-to-frame standard deviation [DN]."""
    data = np.where(saturated, np.nan, stack.astype(np.float32))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(np.nanmedian(np.nanstd(data, axis=0, ddof=1)))


def _median0(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """NaN-ignoring median along axis 0 and the count of finite samples.

    Sorting the short frame axis (NaN last) and picking the middle is several times faster
    than ``np.nanmedian`` for stacks of a few to a few tens of frames.
    """
    ordered = np.sort(data, axis=0)
    n = np.sum(np.isfinite(data), axis=0)
    lo = np.take_along_axis(ordered, np.maximum(n - 1, 0)[None] // 2, axis=0)[0]
    hi = np.take_along_axis(ordered, (n // 2)[None], axis=0)[0] if len(data) else lo
    with np.errstate(invalid="ignore"):
        return np.where(n > 0, (lo + hi) / 2, np.nan), n


def combine(stack: np.ndarray, saturated: np.ndarray, method: str = "mean", clip_sigma: float = 4.0,
            floor: float | None = None):
    """Combine a stack of frames pixel by pixel.

    Parameters
    ----------
    stack : ndarray, shape (N, ny, nx)
        Frames in DN.
    saturated : ndarray of bool, shape (N, ny, nx)
        Samples at or above saturation; they are left out.
    method : {"mean", "median"}, default "mean"
        ``mean`` clips samples further than ``clip_sigma`` robust standard deviations
        (1.4826 MAD) from the median; the per-pixel scale is never below the group's typical
        scatter, so quantized data with identical samples do not clip real values.
    clip_sigma : float, default 4.0
        Clipping threshold of the mean.
    floor : float, optional
        Smallest clipping scale [DN]; default :func:`typical_scatter` of ``stack``. Pass one
        value for all tiles of a frame so the result does not depend on the tiling.

    Returns
    -------
    master, variance : ndarray (float32)
        Combined frame and its variance (DN^2; NaN where fewer than 2 samples remain).
    nframes, nsaturated : ndarray (int16)
        Samples used and saturated samples per pixel.
    """
    data = np.where(saturated, np.nan, stack.astype(np.float32))
    nsat = saturated.sum(axis=0, dtype=np.int16)
    center, n = _median0(data)
    if method == "mean":
        scale = 1.4826 * _median0(np.abs(data - center))[0]
        scale = np.fmax(scale, typical_scatter(stack, saturated) if floor is None else floor)
        with np.errstate(invalid="ignore"):
            data[np.abs(data - center) > clip_sigma * scale] = np.nan
        n = np.sum(np.isfinite(data), axis=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # pixels with < 2 samples: NaN, handled below
        sample_var = np.nanvar(data, axis=0, ddof=1)
        master = np.nanmean(data, axis=0) if method == "mean" else center
    with np.errstate(divide="ignore", invalid="ignore"):
        variance = (1 if method == "mean" else _MEDIAN_EFFICIENCY) * sample_var / n
    variance[n < 2] = np.nan
    return master.astype(np.float32), variance.astype(np.float32), n.astype(np.int16), nsat


def master_path(output_dir: str | Path, kind: str, temperature: float, exptime: float = 0.0) -> Path:
    """Path of a master file, with the original pipelines' names."""
    if kind == "bias":
        return Path(output_dir) / "bias_grouped_by_temp" / f"master_bias_{celsius(temperature)}.fits"
    return Path(output_dir) / "dark_masters" / f"darks_T{celsius(temperature)}_texp{exptime:g}s.fits"


def write_master(path, master, variance, nframes, nsat, *, kind, temperatures, exptime, inputs, params,
                 subtracted: str = "") -> Path:
    """Write one master with its provenance."""
    header = fits.Header()
    header["IMAGETYP"] = f"MASTER_{kind.upper()}"
    provenance(header, bunit="DN", description=f"master {kind} ({params['combine']} of {len(inputs)} frames)",
               inputs=inputs,
               TEMP=(float(np.mean(temperatures)), "degC, mean over input frames"),
               TEMPMIN=(float(np.min(temperatures)), "degC"), TEMPMAX=(float(np.max(temperatures)), "degC"),
               EXPTIME=(float(exptime), "s"), NCOMBINE=(len(inputs), "input frames"),
               COMBINE=(params["combine"], "combine method"), CLIPSIG=(params["clip_sigma"], "clip sigma"),
               SCALEFAC=(params["scale_factor"], "raw / SCALEFAC = DN"),
               SATURATE=(params["saturation"], "DN"))
    if subtracted:
        header["BIASSUB"] = (subtracted.split(":")[0], "bias removed from each frame")
        header.add_history(f"bias removed: {subtracted}")
    return write_hdus(path, master, header, [("VARIANCE", variance, "DN2"), ("NFRAMES", nframes, ""),
                                             ("NSATUR", nsat, "")])


@dataclass
class MasterSet:
    """The masters of one kind stacked along axis 0.

    Attributes
    ----------
    data, variance : ndarray, shape (M, ny, nx)
        Masters [DN] and their variance [DN^2].
    nframes, nsaturated : ndarray, shape (M, ny, nx)
        Frames used and saturated inputs per pixel.
    temperature, exptime : ndarray, shape (M,)
        Mean temperature [degC] and exposure [s] of each master.
    paths : list of Path
    """

    data: np.ndarray
    variance: np.ndarray
    nframes: np.ndarray
    nsaturated: np.ndarray
    temperature: np.ndarray
    exptime: np.ndarray
    paths: list

    def __len__(self):
        return len(self.paths)

    @property
    def valid(self) -> np.ndarray:
        """Samples a model may use: finite, not saturated, from at least one frame."""
        return np.isfinite(self.data) & (self.nsaturated == 0) & (self.nframes > 0)


def _indexed(folder: str | Path) -> list[tuple[Path, fits.Header]]:
    """(file, header) of every master in ``folder``, sorted by exposure then temperature."""
    paths = sorted(Path(folder).glob("*.fits"))
    if not paths:
        raise FileNotFoundError(f"{folder}: no master frames (run the earlier stages first)")
    return sorted(((p, fits.getheader(p)) for p in paths), key=lambda ph: (ph[1]["EXPTIME"], ph[1]["TEMP"]))


def master_paths(folder: str | Path) -> list[Path]:
    """Master files in ``folder``, sorted by exposure then temperature."""
    return [path for path, _ in _indexed(folder)]


def load_masters(source, rows=slice(None)) -> MasterSet:
    """Read masters (a folder, or a list of files) restricted to ``rows``.

    Only the requested rows are read (memory-mapped); ``rows`` is a slice or an index array.
    """
    if isinstance(source, (str, Path)):
        indexed = _indexed(source)
    else:
        indexed = [(path, fits.getheader(path)) for path in source]
    paths = [path for path, _ in indexed]

    def stack(ext):
        return np.stack([read_section(p, ext, rows) for p in paths])

    return MasterSet(data=np.stack([read_image(p, rows=rows) for p in paths]), variance=stack("VARIANCE"),
                     nframes=stack("NFRAMES"), nsaturated=stack("NSATUR"),
                     temperature=np.array([h["TEMP"] for _, h in indexed]),
                     exptime=np.array([h["EXPTIME"] for _, h in indexed]), paths=paths)


def summarize_masters(folder: str | Path) -> Table:
    """One row per master, reading one file at a time: temperature, exposure, frames, median, saturated pixels."""
    rows = []
    for path, header in _indexed(folder):
        saturated = np.count_nonzero(read_section(path, "NSATUR", slice(None)))
        rows.append((path.name, header["TEMP"], header["EXPTIME"], header["NCOMBINE"],
                     float(np.nanmedian(read_image(path))), int(saturated)))
    return Table(rows=rows, names=("master", "temperature", "exptime", "frames", "median", "saturated_pixels"))


def pixel_series(folder: str | Path, pixels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Master values of a few pixels ``[(y, x), ...]``, reading only their rows.

    Returns temperature (M,), exposure (M,) and values (M, len(pixels)).
    """
    y, x = np.asarray(pixels).T
    rows, index = np.unique(y, return_inverse=True)
    masters = load_masters(folder, rows)
    return masters.temperature, masters.exptime, masters.data[:, index, x]
