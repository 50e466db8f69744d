"""Accuracy of the dark model at held-out (T, t) against the simulation's truth.

The issue's reference campaign (8 temperatures x 5 exposures x 5 darks, 10 biases per
temperature, hot pixels, saturation, temperature jitter) is simulated once into
bench/cache/accuracy and calibrated with the default parameters. At (T, t) points between
the calibrated groups the predicted dark signal is compared with the truth, for the
noise-weighted fit (the product) and for log-space least squares of the same masters
(what a simple pipeline does). "pull" is error / predicted 1-sigma uncertainty: an RMS
pull of 1 means the fit is as close to the truth as its (Cramer-Rao) uncertainty says.

Usage: python bench/accuracy.py [--shape 256x256] [--seed 0]
"""

import time

import numpy as np
from astropy.io import fits
from common import reference_campaign

from cmoscal.darkfit import design, fit_loglinear, predict
from cmoscal.dq import DQ
from cmoscal.masters import load_masters
from cmoscal.model import CalibrationModel
from cmoscal.simulate import dark_truth
from cmoscal.stages import STAGES

HELD_OUT = ((-7.5, 2.0), (2.5, 20.0), (12.5, 45.0), (17.5, 15.0), (22.5, 3.0))


def main():
    root, params, args = reference_campaign("accuracy", __doc__.splitlines()[0])
    shape = tuple(int(v) for v in args.shape.split("x"))
    start = time.perf_counter()
    for stage in ("inventory", "bias", "dark_masters", "dark_model", "hot_pixels"):  # hot_pixels writes the model
        STAGES[stage](params)
    print(f"calibrated {shape[0]}x{shape[1]} in {time.perf_counter() - start:.1f} s")

    with fits.open(root / "truth.fits") as hdul:
        truth = {h.name.lower(): h.data.astype(np.float64) for h in hdul[1:]}
        truth.update(tref=hdul[0].header["TREF"])
    hot = truth["hot"].astype(bool)
    model = CalibrationModel.read(root / "out")
    darks = load_masters(root / "out" / "dark_masters")
    usable = (model.dq & DQ.FEW_SAMPLES) == 0
    z = design(darks.temperature, darks.exptime, model.tmin, model.form)
    log_params = fit_loglinear(darks.data.reshape(len(darks), -1),
                               darks.valid.reshape(len(darks), -1).astype(float), z,
                               np.zeros(len(darks))).T.reshape(model.dark.shape)

    print(f"{'T [C]':>6} {'t [s]':>6} {'pixels':>7} {'truth':>9} | {'weighted fit: bias':>18} {'RMS':>8} "
          f"{'RMS pull':>8} | {'log-space: bias':>15} {'RMS':>8} | {'RMS ratio':>9}")
    for T, t in HELD_OUT:
        true = dark_truth(truth, T, t)
        err = model.dark_signal(T, t) - true
        pull = err / np.sqrt(model.dark_variance(T, t))
        err_log = predict(log_params, T, t, model.tmin, model.form) - true
        for label, sel in (("normal", usable & ~hot), ("hot", usable & hot)):
            rms, rms_log = np.sqrt(np.mean(err[sel] ** 2)), np.sqrt(np.nanmean(err_log[sel] ** 2))
            print(f"{T:6.1f} {t:6.1f} {label:>7} {np.median(true[sel]):9.3f} | {np.mean(err[sel]):18.4f} "
                  f"{rms:8.4f} {np.sqrt(np.mean(pull[sel] ** 2)):8.3f} | {np.nanmean(err_log[sel]):15.4f} "
                  f"{rms_log:8.4f} | {rms_log / rms:9.2f}")
    print(f"normal pixels: {np.sum(usable & ~hot)}, hot pixels: {np.sum(usable & hot)} (truth); "
          "DN; bias = mean error; RMS ratio = log-space RMS / weighted RMS")


if __name__ == "__main__":
    main()
