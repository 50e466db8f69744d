"""Closure test of `cmoscal calibrate`, and the ccdproc way users know, on held-out dark frames.

The reference campaign (256x256, 8 temperatures x 5 exposures x 5 darks, 10 biases per
temperature) is calibrated; then dark frames at temperatures and exposures between the
calibrated ones (which the model never saw) are calibrated as science frames. A dark frame
calibrated perfectly is zero within its uncertainty: residual / uncertainty has mean 0 and
standard deviation 1, for normal and for hot pixels. The same frames are calibrated as a
ccdproc user would: the master bias nearest in temperature subtracted, then the master dark
nearest in temperature (of the longest exposure) scaled by exposure with
ccdproc.subtract_dark(..., scale=True), with the uncertainty ccdproc.create_deviation gives
after the bias (read noise and the frame's shot noise). The table gives, by temperature offset
from the nearest master, the RMS and mean of the calibrated image (a dark frame calibrated
perfectly is 0 DN up to its noise) and the standard deviation and mean of residual / uncertainty;
it goes to bench/calibration.md.

Usage: python bench/calibration.py [--shape 256x256] [--seed 0]
"""

import warnings
from pathlib import Path

import ccdproc
import numpy as np
from astropy import units as u
from astropy.io import fits
from astropy.nddata import CCDData
from common import reference_campaign

from cmoscal.dq import DQ
from cmoscal.fitsio import read_image
from cmoscal.masters import master_index
from cmoscal.model import CalibrationModel
from cmoscal.stages import STAGES
from cmoscal.stages.calibration import calibrate_files

HERE = Path(__file__).resolve().parent
BAD = DQ.FRAME_SATURATED | DQ.FULL_WELL | DQ.DO_NOT_USE


def ccdproc_way(path: Path, bias_index, dark_index, model: CalibrationModel) -> tuple[np.ndarray, np.ndarray]:
    """Calibrate one raw frame as a ccdproc user would; return (image, uncertainty) in DN."""
    header = fits.getheader(path)
    T, t = header["CCD-TEMP"], header["EXPTIME"]
    raw = CCDData(fits.getdata(path).astype(float) / model.meta["SCALEFAC"], unit="adu", header=header)
    bias_path, _ = min(bias_index, key=lambda ph: abs(ph[1]["TEMP"] - T))
    nearest = min(abs(h["TEMP"] - T) for _, h in dark_index)
    candidates = [(p, h) for p, h in dark_index if abs(h["TEMP"] - T) <= nearest + 0.5]
    dark_path, dark_header = max(candidates, key=lambda ph: ph[1]["EXPTIME"])
    frame = ccdproc.subtract_bias(raw, CCDData(read_image(bias_path), unit="adu"))
    frame = ccdproc.create_deviation(frame, gain=model.meta["GAIN"] * u.electron / u.adu, disregard_nan=True,
                                     readnoise=float(np.median(model.read_noise)) * model.meta["GAIN"] * u.electron)
    dark = CCDData(read_image(dark_path), unit="adu")
    frame = ccdproc.subtract_dark(frame, dark, dark_exposure=dark_header["EXPTIME"] * u.s,
                                  data_exposure=t * u.s, scale=True)
    return np.asarray(frame.data), frame.uncertainty.array


def main():
    root, params, args = reference_campaign("calibration", __doc__.splitlines()[0], held_out=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for stage in ("inventory", "bias", "dark_masters", "dark_model", "hot_pixels"):
            STAGES[stage](params)
        files = sorted((root / "held_out").glob("*.fits"))
        table = calibrate_files([(path, None) for path in files], root / "out" / "calibration_model.fits",
                                root / "calibrated", params)
    model = CalibrationModel.read(root / "out")
    hot = fits.getdata(root / "truth.fits", "HOT").astype(bool)
    bias_index = master_index(root / "out" / "bias_grouped_by_temp")
    dark_index = master_index(root / "out" / "dark_masters")
    set_points = np.array(sorted({round(h["TEMP"]) for _, h in dark_index}))
    pooled = {}
    for path, row in zip(files, table):
        calibrated = CCDData.read(row["output"])
        dq = fits.getdata(row["output"], "DQ")
        image, sigma = ccdproc_way(path, bias_index, dark_index, model)
        offset = float(np.min(np.abs(set_points - row["temperature"])))
        usable = (dq & BAD) == 0
        for label, pixels in (("normal", usable & ~hot), ("hot", usable & hot)):
            entry = pooled.setdefault((label, round(offset * 2) / 2), [[] for _ in range(4)])
            for k, values in enumerate((calibrated.data, calibrated.data / calibrated.uncertainty.array, image,
                                        image / sigma)):
                entry[k].append(values[pixels])
    lines = [f"# calibrating held-out dark frames ({args.shape}, seed {args.seed}, {len(files)} frames between the "
             "calibrated temperatures and exposures)", "",
             "A dark frame calibrated perfectly is 0 DN up to its noise, and residual / uncertainty has std 1 and "
             "mean 0.", "",
             "| pixels | temperature offset [degC] | pixels x frames | cmoscal: RMS / mean [DN] | cmoscal: "
             "residual / uncertainty, std / mean | ccdproc: RMS / mean [DN] | ccdproc: residual / uncertainty, "
             "std / mean |", "|---|---|---|---|---|---|---|"]

    def cells(values):
        ours, ours_z, theirs, theirs_z = (np.concatenate(v) for v in values)
        lost = np.mean(~np.isfinite(theirs_z))
        note = f" ({lost:.0%} NaN: master dark saturated)" if lost else ""
        return (f"{ours.size} | {np.sqrt(np.mean(ours ** 2)):.3f} / {np.mean(ours):+.3f} | {np.std(ours_z):.3f} / "
                f"{np.mean(ours_z):+.3f} | {np.sqrt(np.nanmean(theirs ** 2)):.3f} / {np.nanmean(theirs):+.3f}{note} | "
                f"{np.nanstd(theirs_z):.2f} / {np.nanmean(theirs_z):+.2f} |")

    for (label, offset), values in sorted(pooled.items()):
        lines.append(f"| {label} | {offset:.1f} | " + cells(values))
    for label in ("normal", "hot"):
        merged = [[a for (k, _), v in pooled.items() if k == label for a in v[i]] for i in range(4)]
        lines.append(f"| **{label}, all** | | " + cells(merged))
    text = "\n".join(lines) + "\n"
    print(text)
    (HERE / "calibration.md").write_text(text)


if __name__ == "__main__":
    main()
