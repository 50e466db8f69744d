"""Simulated calibration campaigns with known truth, for the demo and the tests.

The sensor follows ``../shared/docs/detector-physics.md``: 12-bit ADC stored x16,
gain ~1.5 e-/DN, per-pixel read noise ~1.2 DN with random-telegraph pixels,
column and pixel bias pattern drifting with temperature, log-normal dark rates,
0.1 % hot pixels (x10..x1000, lower activation), Poisson dark shot noise,
temperature jitter, clipping at 0 and 4095 DN.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from astropy.io import fits

from .fitsio import provenance, write_atomic, write_hdus

__all__ = ["BOLTZMANN_EV", "dark_truth", "simulate_campaign", "truth_maps"]

BOLTZMANN_EV = 8.617333262e-5  # eV / K
KELVIN = 273.15
GAIN = 1.5  # e- / DN
SATURATION = 4095


def truth_maps(shape, tref: float, law: str = "exponential", seed: int = 0) -> dict:
    """Draw the per-pixel truth of a sensor.

    Returns a dict of 2-D arrays: bias_a [DN], bias_b [DN/degC], read_noise [DN],
    rts [DN, 0 for normal pixels], dark_a [DN/s at ``tref`` and t = 1 s],
    dark_b [1/degC] (or dark_ea [eV] for ``law='arrhenius'``), dark_gamma, hot (bool);
    plus scalars gain and tref.
    """
    rng = np.random.default_rng(seed)
    ny, nx = shape
    hot = rng.random(shape) < 1e-3
    truth = {
        "bias_a": 60 + rng.normal(0, 2.0, (1, nx)) + rng.normal(0, 1.5, shape),
        "bias_b": 0.3 + rng.normal(0, 0.03, (1, nx)) + rng.normal(0, 0.05, shape),
        "read_noise": 1.2 * rng.lognormal(0, 0.15, shape),
        "rts": np.where(rng.random(shape) < 0.02, rng.uniform(2, 4, shape), 0.0),
        "dark_a": 0.05 * rng.lognormal(0, 0.3, shape) * np.where(hot, 10 ** rng.uniform(1, 3, shape), 1),
        "dark_gamma": np.clip(1 + rng.normal(0, 0.02, shape), 0.9, 1.1),
        "hot": hot,
        "gain": GAIN,
        "tref": float(tref),
    }
    if law == "exponential":
        truth["dark_b"] = np.where(hot, 0.07, 0.10) + rng.normal(0, 0.005, shape)
    elif law == "arrhenius":
        truth["dark_ea"] = np.where(hot, 0.45, 0.65) + rng.normal(0, 0.02, shape)
    else:
        raise ValueError(f"law: unknown dark-current law {law!r} (exponential or arrhenius)")
    return truth


def dark_truth(truth: dict, temperature, exptime) -> np.ndarray:
    """True mean dark signal [DN] at ``temperature`` [degC] and ``exptime`` [s]."""
    if "dark_b" in truth:
        activation = truth["dark_b"] * (temperature - truth["tref"])
    else:
        inverse = 1 / (temperature + KELVIN) - 1 / (truth["tref"] + KELVIN)
        activation = -truth["dark_ea"] / BOLTZMANN_EV * inverse
    return truth["dark_a"] * exptime ** truth["dark_gamma"] * np.exp(activation)


def _frame(truth: dict, temperature: float, exptime: float, rng) -> np.ndarray:
    shape = truth["bias_a"].shape
    signal = truth["bias_a"] + truth["bias_b"] * temperature
    if exptime > 0:
        dark = dark_truth(truth, temperature, exptime)
        signal = signal + rng.poisson(dark * truth["gain"]) / truth["gain"]
    signal = signal + rng.normal(0, 1, shape) * truth["read_noise"]
    signal = signal + truth["rts"] * (rng.random(shape) < 0.5)
    return (np.clip(np.rint(signal), 0, SATURATION) * 16).astype(np.uint16)


def _write_frame(path: Path, data, imagetyp: str, temperature: float, exptime: float, index: int) -> None:
    header = fits.Header()
    header["IMAGETYP"] = imagetyp
    header["EXPTIME"] = (round(exptime, 6), "s")
    header["CCD-TEMP"] = (round(temperature, 3), "degC")
    header["DATE-OBS"] = f"2026-01-01T00:{index // 60 % 60:02d}:{index % 60:02d}"
    header["INSTRUME"] = "cmoscal-sim"
    write_atomic(fits.HDUList([fits.PrimaryHDU(data, header)]), path)


def _write_bad_files(raw: Path, shape, rng) -> None:
    good = (rng.integers(50, 70, shape) * 16).astype(np.uint16)
    _write_frame(raw / "dark" / "bad_truncated.fits", good, "DARK", 5.0, 10.0, 0)
    path = raw / "dark" / "bad_truncated.fits"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    header = fits.Header({"IMAGETYP": "DARK", "EXPTIME": 10.0})
    write_atomic(fits.HDUList([fits.PrimaryHDU(good, header)]), raw / "dark" / "bad_no_temperature.fits")
    _write_frame(raw / "bias" / "bad_all_zero.fits", np.zeros(shape, np.uint16), "BIAS", 0.0, 0.0, 0)
    _write_frame(raw / "dark" / "bad_wrong_shape.fits", good[:, : shape[1] // 2], "DARK", 0.0, 10.0, 0)
    (raw / "bad_not_fits.fits").write_text("this is not a FITS file\n")


def simulate_campaign(outdir, shape=(128, 128), temperatures=(-10, -5, 0, 5, 10, 15, 20, 25),
                      exptimes=(1, 5, 10, 30, 60), frames=5, bias_frames=10, jitter=0.15,
                      law="exponential", bad_files=False, seed=0) -> dict:
    """Write a simulated campaign: ``outdir/raw/{bias,dark}/*.fits`` and ``outdir/truth.fits``.

    Parameters
    ----------
    outdir : str or Path
        Campaign folder (created).
    shape : tuple of int, default (128, 128)
        Sensor size (rows, columns).
    temperatures : sequence of float, default -10..25 degC in steps of 5
        Set points; each frame's temperature jitters around it by ``jitter`` degC (1 sigma).
    exptimes : sequence of float, default (1, 5, 10, 30, 60)
        Dark exposure times [s].
    frames, bias_frames : int, default 5 and 10
        Dark frames per (T, t) and bias frames per T.
    law : {"exponential", "arrhenius"}, default "exponential"
        Dark-current temperature law of the truth.
    bad_files : bool, default False
        Also write five unusable files (truncated, no temperature, all zero, wrong shape, not FITS).
    seed : int, default 0
        Random seed.

    Returns
    -------
    dict
        The truth maps (see :func:`truth_maps`).
    """
    outdir = Path(outdir)
    raw = outdir / "raw"
    rng = np.random.default_rng(seed + 1)
    truth = truth_maps(tuple(shape), min(temperatures), law, seed)
    index = 0
    for setpoint in temperatures:
        for i in range(bias_frames):
            T = setpoint + rng.normal(0, jitter)
            _write_frame(raw / "bias" / f"bias_{setpoint:+.0f}C_{i:03d}.fits", _frame(truth, T, 0.0, rng),
                         "BIAS", T, 0.0, index)
            index += 1
        for t in exptimes:
            for i in range(frames):
                T = setpoint + rng.normal(0, jitter)
                _write_frame(raw / "dark" / f"dark_{setpoint:+.0f}C_{t:g}s_{i:03d}.fits",
                             _frame(truth, T, t, rng), "DARK", T, t, index)
                index += 1
    if bad_files:
        _write_bad_files(raw, tuple(shape), rng)
    maps = {k: v for k, v in truth.items() if isinstance(v, np.ndarray)}
    header = provenance(fits.Header(), bunit="", description="truth of a simulated cmoscal campaign",
                        GAIN=(truth["gain"], "e-/DN"), TREF=(truth["tref"], "degC, reference of DARK_A"),
                        LAW=law, SEED=seed)
    write_hdus(outdir / "truth.fits", np.zeros((1, 1), np.float32), header,
               [(name.upper(), np.asarray(value, np.float32 if value.dtype != bool else np.uint8), "")
                for name, value in maps.items()])
    return truth
