"""Simulated calibration campaigns with known truth, for the demo, the tests and the benchmarks.

The sensor follows ``../shared/docs/detector-physics.md``: 12-bit ADC stored x16, gain
~1.5 e-/DN, per-pixel read noise ~1.2 DN with random-telegraph pixels, column and pixel bias
pattern drifting with temperature, log-normal dark rates, 0.1 % hot pixels (x10..x1000,
lower activation), Poisson dark shot noise, temperature jitter, clipping at 0 and 4095 DN.

Options add what real folders hold (``../shared/docs/real-campaigns.md``): cosmic rays
scaled with exposure, pixels reaching full well, odd containers and units (fpack, gzip, data
in an extension, float32, exposures in ms, kelvin, a duplicate, a light-leak frame), and
folder contents that are not calibration inputs (flats, lights, a second readout
configuration, a burst cube, NaN pixels). An aged sensor (``age``) has more hot pixels and a
shifted bias, as a later campaign of the same instrument would.
"""

from __future__ import annotations

import gzip
import shutil
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
from astropy.io import fits

from .config import default_params
from .dq import DQ
from .fitsio import provenance, write_atomic, write_hdus
from .forms import FORMS, KELVIN, dark_form
from .inventory import frame_temperature

__all__ = ["BITPIXES", "DATE_STYLES", "FLIGHT", "TEMPERATURE_STYLES", "age_truth", "dark_truth", "flight_held_out",
           "held_out_points", "held_out_residuals", "read_truth", "simulate_campaign", "simulate_mission",
           "truth_maps"]

GAIN = 1.5  # e- / DN
GROUND_TEMPERATURES = (-10, -5, 0, 5, 10, 15, 20, 25)  # degC: the set points of a ground campaign by default
SATURATION = 4095
_START = datetime(2026, 1, 1)  # DATE-OBS of the first frame of a sensor's first campaign
_YEAR = 365.25 * 86400  # s


def truth_maps(shape, tref: float, law: str = "exponential", seed: int = 0, full_well_share: float = 0.0,
               hot_share: float = 1e-3) -> dict:
    """Draw the per-pixel truth of a sensor.

    Returns a dict of 2-D arrays: bias_a [DN], bias_b [DN/degC], read_noise [DN],
    rts [DN, 0 for normal pixels], dark_a [DN/s at ``tref`` and t = 1 s],
    dark_b [1/degC] (or dark_ea [eV] for an Arrhenius law), dark_gamma, hot (bool),
    full_well [DN, inf for most pixels], and for a form with a floor dark_floor [DN/s at t = 1 s,
    about the normal pixels' thermal rate at ``tref``, the same for hot pixels: a
    temperature-independent signal such as amplifier glow]; plus scalars gain and tref.
    ``hot_share`` of the pixels are hot (x10..x1000); ``full_well_share`` very hot (x300),
    reaching a full well of 60-90 % of the ADC range.
    """
    rng = np.random.default_rng(seed)
    nx = shape[1]
    hot = rng.random(shape) < hot_share
    hot_factor = 10 ** rng.uniform(1, 3, shape)
    well = rng.random(shape) < full_well_share
    hot |= well
    hot_factor = np.where(well, 300.0, hot_factor)
    truth = {
        "bias_a": 60 + rng.normal(0, 2.0, (1, nx)) + rng.normal(0, 1.5, shape),
        "bias_b": 0.3 + rng.normal(0, 0.03, (1, nx)) + rng.normal(0, 0.05, shape),
        "read_noise": 1.2 * rng.lognormal(0, 0.15, shape),
        "rts": np.where(rng.random(shape) < 0.02, rng.uniform(2, 4, shape), 0.0),
        "dark_a": 0.05 * rng.lognormal(0, 0.3, shape) * np.where(hot, hot_factor, 1),
        "dark_gamma": np.clip(1 + rng.normal(0, 0.02, shape), 0.9, 1.1),
        "hot": hot,
        "full_well": np.where(well, rng.uniform(0.6, 0.9, shape) * SATURATION, np.inf),
        "gain": GAIN,
        "tref": float(tref),
    }
    form = dark_form(law)
    normal, hot_slope, spread = _SLOPES[form.law]
    truth[_slope_key(law)] = np.where(hot, hot_slope, normal) + rng.normal(0, spread, shape)
    if form.floor:
        truth["dark_floor"] = 0.05 * rng.lognormal(0, 0.2, shape)
    return truth


#: the simulated sensor's slope of each form: normal pixels, hot pixels (a lower activation), pixel spread
_SLOPES = {"exponential": (0.10, 0.07, 0.005), "arrhenius": (0.65, 0.45, 0.02)}


def _slope_key(law: str) -> str:
    return f"dark_{FORMS[law].slope.lower()}"


def age_truth(truth: dict, years: float, seed: int = 0, bias_jump: float = 0.0) -> dict:
    """The same sensor ``years`` later: 0.05 % of the pixels turn hot per year, the bias shifts by 0.5 DN and the
    dark rate by 5 % per year; ``bias_jump`` [DN] more bias from an event just before this campaign.

    New hot pixels are x30..x300 (clearly above the noise); ``new_hot`` marks them.
    """
    rng = np.random.default_rng(seed + 1000)
    aged = dict(truth)
    candidates = ~truth["hot"] & (rng.random(truth["hot"].shape) < 5e-4 * years)
    aged["new_hot"] = candidates
    aged["hot"] = truth["hot"] | candidates
    aged["dark_a"] = np.where(candidates, truth["dark_a"] * 10 ** rng.uniform(1.5, 2.5, candidates.shape),
                              truth["dark_a"])
    aged["dark_a"] = aged["dark_a"] * (1 + 0.05 * years)
    aged["bias_a"] = truth["bias_a"] + 0.5 * years + bias_jump
    return aged


def dark_truth(truth: dict, temperature, exptime) -> np.ndarray:
    """True mean dark signal [DN] at ``temperature`` [degC] and ``exptime`` [s] (before full well)."""
    law = next(name for name in FORMS if _slope_key(name) in truth)
    activation = truth[_slope_key(law)] * FORMS[law].feature(temperature, truth["tref"])
    floor = truth.get("dark_floor", 0.0)
    return exptime ** truth["dark_gamma"] * (floor + truth["dark_a"] * np.exp(activation))


def _cosmic_rays(shape, exptime: float, rate: float, rng) -> np.ndarray:
    """Cosmic-ray charge [DN]: ``rate`` hits per megapixel per second, tracks of 1-10 pixels, 30-3000 DN."""
    image = np.zeros(shape)
    hits = rng.poisson(rate * exptime * shape[0] * shape[1] / 1e6)
    for _ in range(hits):
        y, x = rng.integers(0, shape[0]), rng.integers(0, shape[1])
        length = rng.integers(1, 11)
        dy, dx = rng.choice([-1, 0, 1], 2)
        energy = 10 ** rng.uniform(np.log10(30), np.log10(3000))
        for k in range(length):
            yy, xx = y + k * dy, x + k * dx
            if 0 <= yy < shape[0] and 0 <= xx < shape[1]:
                image[yy, xx] += energy / length
    return image


def _frame(truth: dict, temperature: float, exptime: float, rng, cosmics: float = 0.0, hits=None) -> np.ndarray:
    shape = truth["bias_a"].shape
    bias = truth["bias_a"] + truth["bias_b"] * temperature
    signal = bias.copy()
    if exptime > 0:
        dark = rng.poisson(dark_truth(truth, temperature, exptime) * truth["gain"]) / truth["gain"]
        signal = np.minimum(signal + dark, np.maximum(truth["full_well"], bias))
    signal = signal + rng.normal(0, 1, shape) * truth["read_noise"]
    signal = signal + truth["rts"] * (rng.random(shape) < 0.5)
    if cosmics:
        rays = _cosmic_rays(shape, max(exptime, 0.1), cosmics, rng)
        signal += rays
        if hits is not None:
            hits += rays > 0
    return (np.clip(np.rint(signal), 0, SATURATION) * 16).astype(np.uint16)


def _header(imagetyp: str, temperature: float, exptime: float, index: int, **extra) -> fits.Header:
    header = fits.Header()
    header["IMAGETYP"] = imagetyp
    header["EXPTIME"] = (round(exptime, 6), "[s] exposure time")
    header["CCD-TEMP"] = (round(temperature, 3), "[degC] sensor temperature")
    header["DATE-OBS"] = (_START + timedelta(seconds=index)).strftime("%Y-%m-%dT%H:%M:%S")
    header["INSTRUME"] = "cmoscal-sim"
    header["XBINNING"] = 1
    header["YBINNING"] = 1
    header["EGAIN"] = (GAIN / 16, "e-/ADU")
    for key, value in extra.items():
        header[key] = value
    return header


def _write(path: Path, data, header) -> None:
    write_atomic(fits.HDUList([fits.PrimaryHDU(data, header)]), path)


#: how a camera may write its sensor temperature: CCD-TEMP as a plain degC number (the default), a string
#: with its unit, a number in degF or kelvin named by the comment, or only the set point SET-TEMP
TEMPERATURE_STYLES = ("degC", "string", "degF", "kelvin", "set-point")
#: how a camera may write DATE-OBS: ISO (the default), ISO with a space and UTC, the old FITS DD/MM/YY
DATE_STYLES = ("iso", "space-utc", "dd/mm/yy")
BITPIXES = (16, 32, -32, -64)


def _camera(data: np.ndarray, header: fits.Header, temperature_style: str, date_style: str, bitpix: int,
            nan_share: float, rng) -> tuple[np.ndarray, fits.Header]:
    """A frame (raw uint16) and its header as a camera of the given style writes them."""
    header = header.copy()
    T = header["CCD-TEMP"]
    if temperature_style == "string":
        header["CCD-TEMP"] = (f"{T:.2f} C", "sensor temperature")
    elif temperature_style == "degF":
        header["CCD-TEMP"] = (round(T * 9 / 5 + 32, 3), "[degF] sensor temperature")
    elif temperature_style == "kelvin":
        header["CCD-TEMP"] = (round(T + KELVIN, 3), "[K] sensor temperature")
    elif temperature_style == "set-point":
        del header["CCD-TEMP"]
        header["SET-TEMP"] = (round(T), "[degC] set point of the cooler")
    date = header["DATE-OBS"]
    if date_style == "space-utc":
        header["DATE-OBS"] = date.replace("T", " ") + " UTC"
    elif date_style == "dd/mm/yy":
        header["DATE-OBS"] = f"{date[8:10]}/{date[5:7]}/{date[2:4]}"
    if bitpix == 16:
        return data, header
    stored = data.astype({32: np.int32, -32: np.float32, -64: np.float64}[bitpix])
    if bitpix < 0 and nan_share:
        stored[rng.random(stored.shape) < nan_share] = np.nan
    return stored, header


def _write_bad_files(raw: Path, shape, rng) -> None:
    """Five unusable files: truncated, no temperature, all zero, wrong shape, not FITS."""
    good = (rng.integers(50, 70, shape) * 16).astype(np.uint16)
    path = raw / "dark" / "bad_truncated.fits"
    _write(path, good, _header("DARK", 5.0, 10.0, 0))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    _write(raw / "dark" / "bad_no_temperature.fits", good, fits.Header({"IMAGETYP": "DARK", "EXPTIME": 10.0}))
    _write(raw / "bias" / "bad_all_zero.fits", np.zeros(shape, np.uint16), _header("BIAS", 0.0, 0.0, 0))
    _write(raw / "dark" / "bad_wrong_shape.fits", good[:, : shape[1] // 2], _header("DARK", 0.0, 10.0, 0))
    (raw / "bad_not_fits.fits").write_text("this is not a FITS file\n")


def _reencode(path: Path, how: str) -> Path:
    """Rewrite a plain frame in another container or convention (same pixel values); return the new path."""
    with fits.open(path) as hdul:
        data, header = hdul[0].data.copy(), hdul[0].header.copy()
    path.unlink()
    stem = path.with_suffix("")
    if how == "fpack":
        target = stem.with_name(stem.name + ".fits.fz")
        fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data, header, compression_type="RICE_1")]).writeto(target)
    elif how == "gzip":
        target = stem.with_name(stem.name + ".fits.gz")
        buffer = stem.with_name(stem.name + ".tmp.fits")
        fits.PrimaryHDU(data, header).writeto(buffer)
        with open(buffer, "rb") as src, gzip.open(target, "wb") as dst:
            shutil.copyfileobj(src, dst)
        buffer.unlink()
    elif how == "extension":
        target = path
        primary = fits.PrimaryHDU(header=fits.Header([c for c in header.cards if c.keyword not in
                                                      ("BITPIX", "NAXIS", "NAXIS1", "NAXIS2", "BZERO", "BSCALE")]))
        fits.HDUList([primary, fits.ImageHDU(data)]).writeto(target)
    elif how == "float32":
        target = path
        fits.PrimaryHDU(data.astype(np.float32), header).writeto(target)
    elif how == "milliseconds":
        target = path
        header["EXPTIME"] = (header["EXPTIME"] * 1000, "[ms] exposure time")
        fits.PrimaryHDU(data, header).writeto(target)
    elif how == "kelvin":  # the frame's temperature as the inventory reads it, whatever the camera's style
        target = path
        params = dict(default_params(), temperature_keys=["CCD-TEMP", "SET-TEMP"])
        header["CCD-TEMP"] = (round(frame_temperature(header, params)[0] + KELVIN, 3), "sensor temperature")
        fits.PrimaryHDU(data, header).writeto(target)
    else:
        raise ValueError(how)
    return target


def _odd_files(raw: Path, truth: dict, rng, temperatures, exptimes) -> None:
    """Issue-7 inputs: the same frames in other containers and units, plus a duplicate and a light leak."""
    darks = sorted((raw / "dark").glob("dark_*.fits"))
    biases = sorted((raw / "bias").glob("bias_*.fits"))
    for path, how in ((biases[0], "fpack"), (darks[0], "gzip"), (darks[1], "extension"), (darks[2], "float32"),
                      (darks[3], "milliseconds"), (biases[1], "kelvin"), (darks[-1], "fpack")):
        _reencode(path, how)
    shutil.copy(darks[4], darks[4].with_name("duplicate_" + darks[4].name))
    T, t = temperatures[0], exptimes[0]
    leak = np.full(truth["bias_a"].shape, SATURATION * 16, np.uint16)
    leak[:4] = 1000
    _write(raw / "dark" / "dark_light_leak.fits", leak, _header("DARK", T, t, 9999))


def _real_folder(raw: Path, truth: dict, rng, temperatures, exptimes) -> None:
    """Issue-8 folder contents: flats, lights, a second readout configuration, a burst cube, NaN pixels."""
    shape = truth["bias_a"].shape
    T0, t0 = temperatures[0], exptimes[0]
    flat = (np.clip(truth["bias_a"] + 2000 + rng.normal(0, 30, shape), 0, SATURATION) * 16).astype(np.uint16)
    for i in range(3):
        _write(raw / "flats" / f"flat_{i:03d}.fits", flat, _header("Flat Field", T0, 5.0, 9000 + i))
    _write(raw / "light_M42.fits", flat, _header("Light Frame", T0, 30.0, 9100))
    binned = (np.clip(truth["bias_a"][::2, ::2] * 4, 0, SATURATION) * 16).astype(np.uint16)
    for i in range(3):
        _write(raw / "dark" / f"binned_dark_{i:03d}.fits", binned,
               _header("DARK", T0, t0, 9200 + i, XBINNING=2, YBINNING=2))
    cube = np.stack([_frame(truth, T0 + rng.normal(0, 0.1), 0.0, rng) for _ in range(3)])
    fits.PrimaryHDU(cube, _header("BIAS", T0, 0.0, 9300)).writeto(raw / "bias" / "bias_burst_cube.fits")
    path = sorted((raw / "dark").glob("dark_*.fits"))[5]
    with fits.open(path) as hdul:
        data, header = hdul[0].data.astype(np.float32), hdul[0].header.copy()
    data[rng.random(shape) < 0.01] = np.nan
    path.unlink()
    fits.PrimaryHDU(data, header).writeto(path)


def held_out_points(temperatures, exptimes) -> list[tuple[float, float]]:
    """(T, t) between the calibrated ones: temperatures a quarter and half way between set points, with
    mid (geometric) exposures."""
    Ts = [a + f * (b - a) for a, b in zip(temperatures[:-1], temperatures[1:]) for f in (0.25, 0.5)]
    ts = [float(np.sqrt(a * b)) for a, b in zip(exptimes[:-1], exptimes[1:])] or list(exptimes)
    return [(T, t) for T in Ts for t in ts]


def simulate_campaign(outdir, shape=(128, 128), temperatures=GROUND_TEMPERATURES,
                      exptimes=(1, 5, 10, 30, 60), frames=5, bias_frames=10, jitter=0.15, law="exponential",
                      bad_files=False, odd_files=False, real_folder=False, cosmics=0.0, full_well=0.0,
                      age=0.0, held_out=False, bitpix=16, nan_pixels=0.0, temperature_style="degC",
                      date_style="iso", light_leak=False, hot_share=1e-3, bias_jump=0.0, held_out_frames=1,
                      tref=None, seed=0) -> dict:
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
    law : str, default "exponential"
        Dark-current form of the truth, a name of :data:`cmoscal.forms.FORMS` (``exponential+floor``:
        a temperature-independent floor, as measured sCMOS curves have).
    bad_files : bool, default False
        Also write five unusable files (truncated, no temperature, all zero, wrong shape, not FITS).
    odd_files : bool, default False
        Write some frames as fpack, gzip, extension HDU, float32, exposure in ms, temperature in
        kelvin (the same pixel values), plus a duplicate file and a light-leak frame.
    real_folder : bool, default False
        Add flats, a light frame, darks of a second readout configuration (2x2 binning), a
        burst cube of biases and a float dark with NaN pixels.
    cosmics : float, default 0
        Cosmic-ray hits per megapixel per second of exposure (0.1 s for biases).
    full_well : float, default 0
        Share of pixels that are very hot and reach a full well below the ADC range.
    age : float, default 0
        Years of ageing (:func:`age_truth`): more hot pixels, shifted bias and dark rate; the frames'
        DATE-OBS are that much later.
    held_out : bool or sequence of (float, float), default False
        Also write dark frames at each of :func:`held_out_points` (True) or at the given (T, t) into
        ``outdir/held_out`` (not in the campaign: for calibrating as science frames, or predicting).
    held_out_frames : int, default 1
        Frames at each held-out point.
    tref : float, optional
        Reference temperature of the truth's dark_a [degC]; default the coldest of ``temperatures``. The
        campaigns of one sensor share it.
    bitpix : {16, 32, -32, -64}, default 16
        How the campaign frames store their (x16) values: uint16, int32, float32 or float64.
    nan_pixels : float, default 0
        Share of NaN pixels in each floating-point campaign frame.
    temperature_style : str, default "degC"
        How the frames state their temperature, one of :data:`TEMPERATURE_STYLES`.
    date_style : str, default "iso"
        How the frames write DATE-OBS, one of :data:`DATE_STYLES`.
    light_leak : bool, default False
        Also write, into the middle dark group, a frame with a light leak of 3000 DN (not saturated).
    hot_share : float, default 0.001
        Share of hot pixels (x10..x1000 the median rate at the cold end, a lower activation).
    bias_jump : float, default 0
        DN of bias added by an event just before this campaign (with ``age``).
    seed : int, default 0
        Random seed (the sensor's truth depends on it, not on ``age``).

    Returns
    -------
    dict
        The truth maps (see :func:`truth_maps`).
    """
    outdir = Path(outdir)
    raw = outdir / "raw"
    rng = np.random.default_rng(seed + 1 + int(age * 100))
    truth = truth_maps(tuple(shape), min(temperatures) if tref is None else tref, law, seed, full_well, hot_share)
    if age or bias_jump:
        truth = age_truth(truth, age, seed, bias_jump)
    hits = np.zeros(shape, np.int32)
    style = np.random.default_rng(seed + 7)  # the camera's quirks do not change the frames' noise

    def write(path, data, header):
        _write(path, *_camera(data, header, temperature_style, date_style, bitpix, nan_pixels, style))

    index = int(round(age * _YEAR))  # seconds since the sensor's first frame: DATE-OBS
    for setpoint in temperatures:
        for i in range(bias_frames):
            T = setpoint + rng.normal(0, jitter)
            write(raw / "bias" / f"bias_{setpoint:+.0f}C_{i:03d}.fits", _frame(truth, T, 0.0, rng, cosmics, hits),
                  _header("BIAS", T, 0.0, index))
            index += 1
        for t in exptimes:
            for i in range(frames):
                T = setpoint + rng.normal(0, jitter)
                write(raw / "dark" / f"dark_{setpoint:+.0f}C_{t:g}s_{i:03d}.fits",
                      _frame(truth, T, t, rng, cosmics, hits), _header("DARK", T, t, index))
                index += 1
    if light_leak:
        T, t = sorted(temperatures)[len(temperatures) // 2], sorted(exptimes)[len(exptimes) // 2]
        leaked = _frame(truth, T, t, np.random.default_rng(seed + 8)).astype(np.int64) + 3000 * 16
        write(raw / "dark" / f"dark_{T:+.0f}C_{t:g}s_light_leak.fits", np.minimum(leaked, 4095 * 16).astype(np.uint16),
              _header("DARK", T, t, index + 1))
    points = held_out_points(sorted(temperatures), sorted(exptimes)) if held_out is True else held_out or []
    for T0, t in points:
        for i in range(held_out_frames):
            T = T0 + rng.normal(0, jitter)
            name = f"dark_{T0:+.2f}C_{t:.3g}s" + (f"_{i:03d}" if held_out_frames > 1 else "")
            _write(outdir / "held_out" / f"{name}.fits", _frame(truth, T, t, rng, cosmics),
                   _header("DARK", T, t, index))
            index += 1
    if bad_files:
        _write_bad_files(raw, tuple(shape), rng)
    if odd_files:
        _odd_files(raw, truth, rng, temperatures, exptimes)
    if real_folder:
        _real_folder(raw, truth, rng, temperatures, exptimes)
    truth["cosmic_hits"] = hits
    maps = {k: v for k, v in truth.items() if isinstance(v, np.ndarray)}
    header = provenance(fits.Header(), bunit="", description="truth of a simulated cmoscal campaign",
                        GAIN=(truth["gain"], "e-/DN"), TREF=(truth["tref"], "degC, reference of DARK_A"),
                        LAW=law, SEED=seed, AGE=(age, "years"), BIASJUMP=(bias_jump, "DN, event before this campaign"),
                        BITPIX0=(bitpix, "BITPIX of the frames"),
                        TSTYLE=(temperature_style, "how the frames state T"))
    write_hdus(outdir / "truth.fits", np.zeros((1, 1), np.float32), header,
               [(name.upper(), np.asarray(value, np.float32 if value.dtype != bool else np.uint8), "")
                for name, value in maps.items()])
    return truth


#: an in-flight calibration slot: darks at two temperatures 2.5 degC apart, two exposures, 3 frames; 5 biases
FLIGHT = dict(temperatures=(8.0, 10.5), exptimes=(10.0, 60.0), frames=3, bias_frames=5)


def flight_held_out(temperatures, exptimes) -> list[tuple[float, float]]:
    """Where an in-flight epoch is checked: its own temperatures and 5 degC beyond the warmest, at its exposures."""
    return [(T, t) for T in (*temperatures, max(temperatures) + 5.0) for t in exptimes]


def simulate_mission(outdir, ages=(0.5, 1.0, 2.0), shape=(128, 128), jump_at=None, bias_jump=3.0, flight=None,
                     seed=0, **campaign) -> dict:
    """Campaigns of one sensor over its mission: ``outdir/age_0y`` (the first) and one ``outdir/age_<A>y`` per age.

    Each is :func:`simulate_campaign` with ``campaign`` (its layout) and that age: new hot pixels, bias and dark
    drifts, later dates. From ``jump_at`` [years] on, the bias is ``bias_jump`` DN higher (an event). With
    ``flight`` (a layout such as :data:`FLIGHT`), the campaigns after the first are in-flight epochs of that
    layout, each with 8 held-out darks at every point of :func:`flight_held_out` in ``held_out/``. Returns the
    truth of each campaign by folder name.
    """
    outdir = Path(outdir)
    truths = {}
    for age in (0.0, *ages):
        name = f"age_{age:g}y"
        jump = bias_jump if jump_at is not None and age >= jump_at else 0.0
        layout = dict(campaign)
        if flight and age > 0:
            layout.update(flight, held_out=flight_held_out(flight["temperatures"], flight["exptimes"]),
                          held_out_frames=8)
        truths[name] = simulate_campaign(outdir / name, shape=shape, age=age, bias_jump=jump,
                                         tref=min(campaign.get("temperatures", GROUND_TEMPERATURES)), seed=seed,
                                         **layout)
    return truths


def read_truth(outdir) -> dict:
    """The truth maps of a simulated campaign (lower-case names, ``hot`` boolean) with its gain and tref."""
    with fits.open(Path(outdir) / "truth.fits") as hdul:
        truth = {hdu.name.lower(): hdu.data.astype(np.float64) for hdu in hdul[1:]}
        truth.update(gain=hdul[0].header["GAIN"], tref=hdul[0].header["TREF"])
    truth["hot"] = truth["hot"].astype(bool)
    return truth


def held_out_residuals(model, outdir):
    """A model against the held-out darks of a simulated campaign (``outdir/held_out``, raw x16 frames).

    Yields, for each held-out (T, t) group: its name, mean T and, for normal and hot pixels (usable, unsaturated
    in every frame), the residuals of the group's mean over the stated uncertainty (model bias and dark variance
    plus the frames' read and shot noise) and the model's relative error against the true dark.
    """
    outdir = Path(outdir)
    truth = read_truth(outdir)
    groups = {}
    for path in sorted((outdir / "held_out").glob("*.fits")):
        groups.setdefault(path.name.rsplit("_", 1)[0], []).append(path)
    for name, paths in groups.items():
        frames = np.array([fits.getdata(p).astype(np.float64) / 16 for p in paths])
        headers = [fits.getheader(p) for p in paths]
        T, t = float(np.mean([h["CCD-TEMP"] for h in headers])), headers[0]["EXPTIME"]
        synthetic, synthetic_var = model.frame_prediction(T, t)
        dark = synthetic - model.bias(T)
        frame_var = (model.read_variance + np.maximum(dark, 0) / model.meta["GAIN"]) / len(paths)
        pull = (frames.mean(0) - synthetic) / np.sqrt(synthetic_var + frame_var)
        error = dark / dark_truth(truth, T, t) - 1
        usable = (model.dq & DQ.DO_NOT_USE) == 0
        usable &= frames.max(0) < model.meta["SATURATE"]
        yield name, T, {kind: (pull[usable & sel], error[usable & sel])
                        for kind, sel in (("normal", ~truth["hot"]), ("hot", truth["hot"]))}
