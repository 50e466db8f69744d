"""Calibrating science frames: bias(T) and dark(T, t) removed at each frame's own temperature and exposure.

A calibrated frame is an :class:`astropy.nddata.CCDData` with the image [DN, or electrons],
its uncertainty (read noise, the frame's own shot noise through the gain, and the model's
propagated variance), a boolean mask, and the DQ bitmask. The shot noise of the dark comes from
the model, that of the frame's own remaining signal (sky, sources) from the frame smoothed over
3x3 pixels: a variance taken from each pixel's own noisy value would be correlated with the noise
it describes and bias the normalized residuals low (by ~1/(2 sigma_e) for faint signals). The DQ
is the model's DQ ORed with the frame's own saturated and non-finite pixels (FRAME_SATURATED,
FRAME_INVALID) and, when the frame lies outside the calibrated ranges, OUT_OF_RANGE. On disk
(:func:`write_calibrated`) it is the layout ``CCDData.read`` opens (UNCERT with UTYPE, MASK) plus
DQ and DQ_DEF extensions; the header cites the model file and its identifier, the temperature
and exposure used and whether they were inside the calibrated ranges.

A frame that cannot be calibrated (no temperature or exposure, another shape, far outside the
calibrated ranges) is refused with one line; raw frames are never modified.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.nddata import CCDData, StdDevUncertainty
from astropy.time import Time
from scipy.ndimage import uniform_filter

from .bias import bias_at
from .dq import DQ, DQ_DTYPE, dq_table, flag_value
from .errors import CampaignError
from .fitsio import atomic_path, frames_in, provenance, read_rows
from .inventory import COMPRESSED_SUFFIXES, FITS_SUFFIXES, frame_exposure, frame_temperature
from .model import CalibrationModel, shared_model

__all__ = ["calibrate_ccd", "calibrate_file", "mask_value", "refused_row", "relative_name", "write_calibrated"]


def mask_value(names) -> int:
    """The DQ bits (by name) that make a pixel masked."""
    try:
        return flag_value(names)
    except KeyError as err:
        raise CampaignError(f"calibration_mask: {err.args[0]}") from None


def _conditions(header, params: dict, temperature, exptime) -> tuple[float, float]:
    """The frame's temperature [degC] and exposure [s]: given, else from its header (the inventory's rules)."""
    if temperature is None:
        temperature = frame_temperature(header, params)[0]
    if exptime is None:
        exptime = frame_exposure(header, params)[0]
    return float(temperature), float(exptime)


def calibrate_ccd(ccd: CCDData, model: CalibrationModel, params: dict, temperature: float | None = None,
                  exptime: float | None = None, electrons: bool = False, model_name: str = "") -> CCDData:
    """Remove bias(T) and dark(T, t) from a raw science frame.

    Parameters
    ----------
    ccd : astropy.nddata.CCDData
        The raw frame in the camera's units (raw = DN x SCALEFAC of the model), with its header.
    model : CalibrationModel
    params : dict
        temperature_keys, temperature_unit, exposure_keys, exposure_unit (as the inventory reads them) and
        calibration_mask (the DQ bits that make the MASK).
    temperature, exptime : float, optional
        degC and s; default from the header.
    electrons : bool, default False
        Calibrated image and uncertainty in electrons (needs the campaign gain), else DN.
    model_name : str
        What the header cites as the model (its file).

    Returns
    -------
    CCDData
        Image, StdDevUncertainty, mask and header; the DQ bitmask is in ``flags``.

    Raises
    ------
    CampaignError
        The frame cannot be calibrated; the message says why in one line.
    """
    temperature, exptime = _conditions(ccd.header, params, temperature, exptime)
    if ccd.data.shape != model.dq.shape:
        raise CampaignError(f"shape {ccd.data.shape[0]}x{ccd.data.shape[1]} differs from the model's "
                            f"{model.dq.shape[0]}x{model.dq.shape[1]}")
    gain = float(model.meta.get("GAIN") or 0.0)
    if electrons and not gain:
        raise CampaignError("--electrons needs the campaign gain, which is unknown for this model")
    messages = model.check_request(temperature, exptime)  # raises when far outside the ranges
    scale = float(model.meta.get("SCALEFAC", 1.0))
    frame = np.asarray(ccd.data, dtype=np.float64) / scale
    synthetic, synthetic_var = model.frame_prediction(temperature, exptime)
    calibrated = frame - synthetic
    own = uniform_filter(np.nan_to_num(calibrated), size=3, mode="nearest")  # own signal, smoothed (NaN as 0)
    charge = synthetic - bias_at(model.bias_a, model.bias_b, temperature) + np.clip(own, 0, None)
    variance = model.read_noise.astype(np.float64) ** 2 + (charge / gain if gain else 0.0) + synthetic_var
    dq = model.dq.astype(DQ_DTYPE)
    dq[frame >= float(model.meta.get("SATURATE", np.inf))] |= DQ_DTYPE(DQ.FRAME_SATURATED)
    dq[~np.isfinite(frame)] |= DQ_DTYPE(DQ.FRAME_INVALID)
    if messages:
        dq |= DQ_DTYPE(DQ.OUT_OF_RANGE)
    factor = gain if electrons else 1.0
    header = ccd.header.copy()
    for key in ("BZERO", "BSCALE", "BLANK", "SATURATE", "DATAMAX"):
        header.remove(key, ignore_missing=True, remove_all=True)
    if "DATE-OBS" in header and "MJD-OBS" not in header:  # what a WCS reader would otherwise add with a warning
        try:
            header["MJD-OBS"] = (Time(header["DATE-OBS"]).mjd, "from DATE-OBS")
        except ValueError:
            pass
    provenance(header, bunit="electron" if electrons else "DN",
               description="science frame calibrated by cmoscal: bias(T) and dark(T, t) removed",
               CALMODEL=(Path(model_name).name[:68] or "calibration model", "cmoscal model used"),
               MODELID=(model.meta.get("MODELID", ""), "identifier of that model"),
               CALTEMP=(temperature, "degC, temperature the model was evaluated at"),
               CALEXPT=(exptime, "s, exposure the model was evaluated at"),
               CALRANGE=(not messages, "T and t inside the calibrated ranges"),
               CALGAIN=(gain, "e-/DN of the campaign (0: unknown)"))
    header.add_history(f"cmoscal: removed bias(T) + dark(T, t) at T = {temperature:g} degC, t = {exptime:g} s")
    for message in messages:
        header.add_history(f"warning: {message}")
    if not gain:
        header.add_history("warning: gain unknown: the uncertainty has no shot noise of the frame's own signal")
    mask = (dq & mask_value(params["calibration_mask"])) > 0
    result = CCDData(calibrated * factor, unit=u.electron if electrons else u.Unit("DN"),
                     uncertainty=StdDevUncertainty(np.sqrt(variance) * factor), mask=mask, header=header)
    result.flags = dq
    return result


def write_calibrated(ccd: CCDData, path: str | Path) -> Path:
    """Write a calibrated frame atomically: image, UNCERT (UTYPE), MASK, DQ and DQ_DEF (CCDData.read opens it)."""
    hdul = ccd.to_hdu(hdu_mask="MASK", hdu_uncertainty="UNCERT", hdu_flags=None)
    hdul[0].data = hdul[0].data.astype(np.float32)
    hdul["UNCERT"].data = hdul["UNCERT"].data.astype(np.float32)
    dq = fits.ImageHDU(np.asarray(ccd.flags, dtype=DQ_DTYPE), name="DQ")
    dq.header["BUNIT"] = ""
    table = fits.table_to_hdu(dq_table(ccd.flags))
    table.name = "DQ_DEF"
    hdul.extend([dq, table])
    with atomic_path(path) as tmp:
        hdul.writeto(tmp, overwrite=True, checksum=True)
    return Path(path)


def relative_name(path: Path, folder=None) -> Path:
    """Where a raw file's calibrated output goes below the output folder, without FITS suffixes."""
    relative = Path(path).relative_to(folder) if folder else Path(Path(path).name)
    return relative.parent / _stem(relative.name)


def refused_row(label: str, reason: str) -> dict:
    """The table row of a frame that was not calibrated."""
    return dict(input=label, output="", status="refused", reason=reason, temperature=np.nan, exptime=np.nan,
                mean=np.nan, std=np.nan, noise=np.nan)


def _stem(name: str) -> str:
    """A file name without its FITS and compression suffixes."""
    for suffix in COMPRESSED_SUFFIXES + FITS_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
    return name


def calibrate_file(path, model_path, output_dir, params: dict, electrons: bool = False, folder=None) -> list[dict]:
    """Calibrate every frame of one raw file (a task: a thread or a dask worker).

    The output is ``output_dir/<name>_cal.fits`` (``_pNNN`` for the planes of a cube), in the same
    sub-folder as the input below ``folder`` when given. Returns one row per frame: input (the path,
    relative to ``folder`` when given, with [plane] for a cube), output ('' when refused), status
    (calibrated, refused), reason, temperature, exposure, mean and standard deviation of the
    calibrated image and the median uncertainty (over unmasked pixels).
    """
    path = Path(path)
    relative = relative_name(path, folder)
    label = path.relative_to(folder).as_posix() if folder else str(path)
    model_path = str(model_path)
    model = shared_model(model_path)
    try:
        header, refs = frames_in(path)
    except Exception as err:  # an unreadable file is refused with its reason, never a crash
        return [refused_row(label, f"unreadable FITS ({type(err).__name__})")]
    if not refs:
        return [refused_row(label, "no image data")]
    rows = []
    for ref in refs:
        cube = ref.plane >= 0
        row = refused_row(f"{label}[{ref.plane}]" if cube else label, "")
        try:
            ccd = CCDData(read_rows(ref), unit="adu", header=header)
            result = calibrate_ccd(ccd, model, params, electrons=electrons, model_name=model_path)
        except CampaignError as err:
            rows.append(dict(row, reason=str(err)))
            continue
        name = relative.name + (f"_p{ref.plane:03d}" if cube else "") + "_cal.fits"
        target = write_calibrated(result, Path(output_dir) / relative.parent / name)
        good = ~result.mask
        rows.append(dict(row, output=str(target), status="calibrated", temperature=result.header["CALTEMP"],
                         exptime=result.header["CALEXPT"], mean=float(np.mean(result.data[good])),
                         std=float(np.std(result.data[good])),
                         noise=float(np.median(result.uncertainty.array[good])),
                         reason="" if result.header["CALRANGE"] else "outside the calibrated ranges (OUT_OF_RANGE)"))
    return rows
