"""Inventory: find raw FITS frames, classify them, and group the calibration frames.

Every frame found (every plane of a cube) gets one row with a ``status`` and a ``reason``:

- ``ok``: a bias or dark frame of the campaign's readout configuration, in a group;
- ``skipped``: not an input of this model, which is normal (flats, lights, spectra, another
  readout configuration, excluded by a pattern); skipped files do not count as rejected;
- ``rejected``: a calibration frame that cannot be used (unreadable, no temperature, ...).

Only headers (and a few rows to recognise the raw scale) are read here: content checks that
need every pixel (saturated, NaN, duplicate frames) are made where each frame is read once,
in the master stages. Right after grouping, :func:`coverage` says what the campaign can and
cannot support.
"""

from __future__ import annotations

import fnmatch
import os
import re
import warnings
from collections import Counter
from datetime import datetime
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table

from .errors import CampaignError, CampaignWarning
from .fitsio import FrameRef, frames_in, read_rows
from .forms import KELVIN

__all__ = ["COMPRESSED_SUFFIXES", "FITS_SUFFIXES", "build_inventory", "celsius", "chain_groups", "coverage",
           "find_fits", "frame_exposure", "frame_label", "frame_names", "frame_refs", "frame_temperature",
           "group_summary", "natural_key"]

FITS_SUFFIXES = (".fits", ".fit", ".fts")
COMPRESSED_SUFFIXES = (".fz", ".gz")
_SCALE_ROWS, _SCALE_FRAMES = 8, 8  # rows of frames read to recognise the raw scale
_IDENTITY = ("INSTRUME", "TELESCOP", "DETECTOR")


def celsius(temperature: float) -> str:
    """Temperature as used in names: one decimal and a C, never "-0.0C"."""
    return f"{round(float(temperature), 1) + 0.0:.1f}C"


def frame_label(kind: str, temperature: float, exptime: float | None = None) -> str:
    """Name of a group or frame: ``bias_10.0C`` or ``dark_10.0C_30s``."""
    return f"{kind}_{celsius(temperature)}" + (f"_{exptime:g}s" if kind == "dark" else "")


def natural_key(label: str):
    """Sort key of group labels: by kind, then exposure, then temperature as numbers."""
    match = re.match(r"(\w+?)_(-?[\d.]+)C(?:_([\d.e+-]+)s)?", label)
    if not match:
        return (label, 0.0, 0.0)
    kind, temperature, exptime = match.groups()
    return (kind, float(exptime or 0), float(temperature))


def find_fits(raw_dir: str | Path, include=(), exclude=()) -> list[tuple[Path, str]]:
    """Every FITS file below ``raw_dir`` (symlinked folders followed), sorted, with a skip reason.

    The reason is empty for a file to inspect, else says which pattern or rule skips it
    (``include``/``exclude`` are glob patterns on the path relative to ``raw_dir``).
    """
    raw_dir = Path(raw_dir)
    found, seen = [], set()
    for folder, dirs, files in os.walk(raw_dir, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # a symlink loop
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort()
        for name in files:
            bare = name.lower()
            for suffix in COMPRESSED_SUFFIXES:
                bare = bare.removesuffix(suffix)
            if not bare.endswith(FITS_SUFFIXES):
                continue
            path = Path(folder) / name
            relative = path.relative_to(raw_dir).as_posix()
            reason = ""
            if name.startswith("."):
                reason = "hidden file"
            elif include and not any(fnmatch.fnmatch(relative, p) for p in include):
                reason = "not matched by include"
            else:
                hit = [p for p in exclude if fnmatch.fnmatch(relative, p)]
                reason = f"excluded by {hit[0]!r}" if hit else ""
            found.append((path, reason))
    return sorted(found)


def _number(header: fits.Header, keys):
    """(value, keyword) of the first keyword in ``keys`` with a finite numeric value."""
    for key in keys:
        if key in header:
            try:
                value = float(header[key])
            except (TypeError, ValueError):
                continue
            if np.isfinite(value):
                return value, key
    return None, ""


_VALUE = re.compile(r"\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*(.*?)\s*")
#: unit -> (its names, lower case; factor, offset to degC or s)
TEMPERATURE_UNITS = {"degF": (("f", "degf", "deg f", "°f", "fahrenheit"), 5 / 9, -32 * 5 / 9),
                     "K": (("k", "kelvin", "°k"), 1.0, -KELVIN),
                     "degC": (("c", "degc", "deg c", "deg. c", "°c", "celsius", "centigrade", "deg", "degrees"),
                              1.0, 0.0)}
EXPOSURE_UNITS = {"us": (("us", "usec", "µs", "microsec", "microsecond", "microseconds"), 1e-6, 0.0),
                  "ms": (("ms", "msec", "millisec", "millisecond", "milliseconds"), 1e-3, 0.0),
                  "s": (("s", "sec", "secs", "second", "seconds"), 1.0, 0.0)}
_WARMEST = 150.0  # degC: no sensor is calibrated above this; such a reading is a unit error
_SET_POINT = re.compile(r"SET.*TEMP|TEMP.*SET|SETPOINT")


def _named_unit(text: str, units: dict, whole: bool) -> str | None:
    """The unit ``text`` names: all of it (a value's suffix), or a word of it (a keyword comment)."""
    text = text.strip().lower()
    for unit, (names, _, _) in units.items():
        if whole and text.strip("[]() ") in names:
            return unit
        if not whole and any(re.search(rf"(?<![\w°]){re.escape(n)}(?![\w.])", text) for n in names):
            return unit
    return None


def _reading(header: fits.Header, key: str, units: dict, default: str, what: str) -> tuple[float, str, str]:
    """A header value converted by ``units``, the unit it was read in and where that came from.

    The unit comes from the value (``'-10.0 C'``), else the keyword comment (``[degF]``), else
    ``default``. Raises ValueError (the value quoted) when it is not a finite number or names
    a unit that is not one of ``units``.
    """
    value = header[key]
    suffix = ""
    if isinstance(value, str):
        match = _VALUE.fullmatch(value)
        if not match:
            raise ValueError(f"{key}={value!r} is not a number")
        number, suffix = float(match[1]), match[2]
    elif isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
        number = float(value)
    else:
        raise ValueError(f"{key} has no numeric value ({value!r})")
    if not np.isfinite(number):
        raise ValueError(f"{key}={value!r} is not a finite number")
    unit, source = (_named_unit(suffix, units, True), "value") if suffix else (None, "")
    if suffix and unit is None:
        raise ValueError(f"{key}={value!r}: unit {suffix!r} is not a {what} unit ({', '.join(units)})")
    if unit is None:
        unit, source = _named_unit(header.comments[key], units, False), "comment"
    if unit is None:
        unit, source = default, "parameter"
    _, factor, offset = units[unit]
    return number * factor + offset, unit, source


def frame_temperature(header: fits.Header, params: dict) -> tuple[float, str]:
    """Sensor temperature [degC] of a frame and a note of how it was read ('' for a plain degC number).

    The first of ``temperature_keys`` with a usable value is taken, in the unit its value or
    comment names, else ``temperature_unit`` (auto: degC, kelvin above 150). A set point
    (SET-TEMP) is used only when listed in ``temperature_keys``, and the note says so.

    Raises
    ------
    CampaignError
        No usable value: the values tried are quoted, and a set point in the header is named.
    """
    keys, unit = params["temperature_keys"], params["temperature_unit"]
    problems = []
    for key in (k for k in keys if k in header):
        try:
            value, read_as, source = _reading(header, key, TEMPERATURE_UNITS, "degC" if unit == "auto" else unit,
                                              "temperature")
        except ValueError as err:
            problems.append(str(err))
            continue
        if unit == "auto" and source == "parameter" and value > _WARMEST:
            value, read_as, source = value - KELVIN, "K", f"value above {_WARMEST:g}"
        if value <= -KELVIN:
            problems.append(f"temperature {key}={header[key]!r} is {value:g} degC, below absolute zero")
        elif value > _WARMEST:
            problems.append(f"temperature {key}={header[key]!r} is {value:g} degC: no sensor is calibrated above "
                            f"{_WARMEST:g} degC (set temperature_unit?)")
        elif _SET_POINT.search(key):
            return value, f"{key} is the set point, not a measured temperature"
        else:
            plain = read_as == "degC" and not isinstance(header[key], str)
            name = {"K": "kelvin", "degF": "degF", "degC": "degC"}[read_as]
            return value, "" if plain else f"temperature read as {name}: {key}={header[key]!r} (unit from its {source})"
    if problems:
        raise CampaignError("; ".join(problems))
    set_points = [k for k in header if _SET_POINT.search(k) and k not in keys]
    hint = (f"; {', '.join(set_points)} is the set point, not a measurement: add it to temperature_keys to use it"
            if set_points else "")
    raise CampaignError(f"no temperature (none of {', '.join(keys)}){hint}")


def frame_exposure(header: fits.Header, params: dict) -> tuple[float, str]:
    """Exposure [s] of a frame and a note of the unit it was read in ('' for plain seconds).

    Raises
    ------
    CampaignError
        No keyword of ``exposure_keys``, or a value that is not a non-negative number (quoted).
    """
    keys = params["exposure_keys"]
    problems = []
    for key in (k for k in keys if k in header):
        try:
            value, unit, source = _reading(header, key, EXPOSURE_UNITS, params["exposure_unit"], "time")
        except ValueError as err:
            problems.append(str(err))
            continue
        if value < 0:
            problems.append(f"exposure {key}={header[key]!r} is negative")
            continue
        plain = unit == "s" and not isinstance(header[key], str)
        return value, "" if plain else f"exposure in {unit}: {key}={header[key]!r} (unit from its {source})"
    raise CampaignError("; ".join(problems) or f"no exposure (none of {', '.join(keys)})")


_ISO_DATE = re.compile(r"(\d{4})-(\d\d)-(\d\d)(?:[T ](\d\d):(\d\d)(?::(\d\d)(?:\.\d*)?)?)?\s*(?:Z|UTC|UT)?")


def observation_date(text: str) -> str:
    """DATE-OBS as ISO 8601 (``YYYY-MM-DDThh:mm:ss``); '' when absent.

    ISO dates with a space or T, fractional seconds and a Z/UTC suffix are read; the old
    ``DD/MM/YY`` form and anything else is ambiguous or unknown.

    Raises
    ------
    ValueError
        The text is not an unambiguous date (the message quotes it).
    """
    text = str(text).strip()
    if not text:
        return ""
    match = _ISO_DATE.fullmatch(text)
    if match:
        parts = [int(v or 0) for v in match.groups()]
        try:
            return datetime(*parts).strftime("%Y-%m-%dT%H:%M:%S")
        except ValueError:
            pass
    raise ValueError(f"DATE-OBS {text!r} is not an ISO date (YYYY-MM-DD[Thh:mm:ss]); forms such as DD/MM/YY are "
                     "ambiguous in day, month and century")


def _frame_type(header: fits.Header, relative: Path, exposure: float, params: dict) -> str:
    """bias, dark, or the name of another frame type (flat, light, ...)."""
    for key in params["frame_type_keys"]:
        text = str(header.get(key, "")).strip().lower()
        if text:
            if "bias" in text or "zero" in text:
                return "bias"
            if "dark" in text:
                return "dark"
            return text.split()[0]
    for folder in reversed(relative.parts[:-1]):
        folder = folder.lower()
        for kind, prefixes in (("bias", ("bias", "zero")), ("dark", ("dark",)), ("flat", ("flat",)),
                               ("light", ("light", "science", "object"))):
            if folder.startswith(prefixes):
                return kind
    return "bias" if exposure <= params["bias_max_exptime"] else "dark"


def _readout(header: fits.Header, keys) -> str:
    return ", ".join(f"{k}={header[k]}" for k in keys if k in header and not isinstance(header[k], fits.card.Undefined))


def _row(relative: Path, status: str = "rejected", reason: str = "") -> dict:
    """An inventory row with nothing known yet."""
    return dict(path=relative.as_posix(), hdu=0, plane=-1, type="", temperature=np.nan, exposure=np.nan,
                readout="", shape="", status=status, reason=reason, note="", offset=-1, bitpix=0, bscale=1.0,
                bzero=0.0, blank=-1, has_blank=False, saturate=np.nan, egain=np.nan)


def _read_header(path: Path):
    """Header and frames of a file, and the header cards astropy had to fix (one note); raises when unreadable."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.filterwarnings("error", message=".*truncated.*")
        warnings.simplefilter("ignore", ResourceWarning)  # astropy leaves a file open when it fails
        header, refs = frames_in(path)
        repr(header)  # astropy fixes (and says so) non-standard cards as they are read
    messages = [str(w.message) for w in caught if issubclass(w.category, fits.verify.VerifyWarning)]
    unfixable = [m for m in messages if "unfixable" in m.lower()]
    if unfixable:
        raise ValueError(unfixable[0].splitlines()[0])
    fixed = [m.split(".")[0] for m in messages if "fixed" in m.lower()]
    return header, refs, ("header fixed: " + "; ".join(fixed)) if fixed else ""


def _inspect(path: Path, raw_dir: Path, params: dict, clues: dict) -> list[dict]:
    """Inventory rows of one file (one per frame)."""
    relative = path.relative_to(raw_dir)
    row = _row(relative)
    try:
        header, refs, fixed = _read_header(path)
    except Exception as err:  # any failure to read is a reason to reject, never a crash
        return [dict(row, reason=f"unreadable FITS ({type(err).__name__}: {str(err).splitlines()[0][:120]})")]
    if not refs:
        return [dict(row, status="skipped", reason="no image data")]
    clue = clues[row["path"]] = {k: header[k] for k in header if re.search("TEMP|EXP", k)}
    clue["identity"] = tuple(str(header.get(k, "")).strip() for k in _IDENTITY)
    try:
        clue["date"] = observation_date(header.get("DATE-OBS", ""))
    except ValueError as err:
        clue["date"], clue["bad_date"] = "", str(err)
    ref = refs[0]
    row.update(hdu=ref.hdu, shape=f"{ref.shape[0]}x{ref.shape[1]}", offset=ref.offset, bitpix=ref.bitpix,
               bscale=ref.bscale, bzero=ref.bzero, blank=-1 if ref.blank is None else ref.blank,
               has_blank=ref.blank is not None, readout=_readout(header, params["readout_keys"]))
    level, _ = _number(header, ["SATURATE", "DATAMAX"])
    egain, _ = _number(header, params["gain_keys"])
    row.update(saturate=np.nan if level is None else level, egain=np.nan if egain is None else egain)
    values, notes, problems = {}, [fixed], []
    for what, read in (("temperature", frame_temperature), ("exposure", frame_exposure)):
        try:
            values[what], note = read(header, params)
            notes.append(note)
        except CampaignError as err:
            problems.append(str(err))
    row.update(values)
    exposure = values.get("exposure")
    kind = _frame_type(header, relative, np.inf if exposure is None else exposure, params)
    row.update(type=kind, note="; ".join(n for n in notes if n))
    if kind not in ("bias", "dark"):
        row.update(status="skipped", reason=f"{kind} frame: not a bias or dark")
    elif problems:
        row["reason"] = "; ".join(problems)
    elif kind == "dark" and exposure <= 0:
        row["reason"] = "dark frame with zero exposure"
    else:
        row["status"] = "ok"
    return [dict(row, plane=r.plane, offset=r.offset) for r in refs]


def frame_names(table: Table) -> list[str]:
    """The frames of inventory rows by name: the path, with ``[plane]`` for a plane of a cube."""
    return [p if q < 0 else f"{p}[{q}]" for p, q in zip(table["path"], table["plane"])]


def frame_refs(inventory: Table, rows) -> list[FrameRef]:
    """The :class:`~cmoscal.fitsio.FrameRef` of inventory rows (a boolean mask or index)."""
    selected = inventory[rows]
    if not len(selected):
        return []
    raw_dir = Path(inventory.meta["raw_dir"])
    ny, nx = (int(v) for v in inventory.meta["shape"].split("x"))
    return [FrameRef(str(raw_dir / r["path"]), int(r["hdu"]), int(r["plane"]), int(r["offset"]), int(r["bitpix"]),
                     float(r["bscale"]), float(r["bzero"]), int(r["blank"]) if r["has_blank"] else None, (ny, nx))
            for r in selected]


def chain_groups(values, tolerance: float, relative: bool = False) -> np.ndarray:
    """Label values that chain within ``tolerance`` of their sorted neighbour.

    Parameters
    ----------
    values : array_like
        Temperatures or exposure times.
    tolerance : float
        Largest step inside a group (absolute, or a fraction if ``relative``).
    relative : bool, default False
        Compare ratios instead of differences (values must be > 0).

    Returns
    -------
    numpy.ndarray of int
        Group index of each value, groups numbered in increasing value.
    """
    values = np.asarray(values, dtype=float)
    key = np.log(values) if relative else values
    step = np.log1p(tolerance) if relative else tolerance
    order = np.argsort(key, kind="stable")
    breaks = np.concatenate([[0], np.diff(key[order]) > step]).cumsum()
    labels = np.empty(len(values), dtype=int)
    labels[order] = breaks
    return labels


def _power_of_two(values: np.ndarray) -> int:
    """The largest power of two (<= 64) that every value is a multiple of (1 for non-integers)."""
    values = values[np.isfinite(values)]
    if not values.size or np.any(values != np.round(values)):
        return 1
    for k in range(6, 0, -1):
        if np.all(np.mod(values, 2 ** k) == 0):
            return 2 ** k
    return 1


def _raw_sample(table: Table, refs: dict) -> np.ndarray:
    """Raw values of a few rows of a few usable frames (to recognise the raw scale and range)."""
    ok = np.flatnonzero(table["status"] == "ok")
    pick = ok[np.linspace(0, len(ok) - 1, min(len(ok), _SCALE_FRAMES)).astype(int)] if len(ok) else []
    samples = [np.array([])]
    for i in pick:
        ref = refs[i]
        step = max(1, ref.shape[0] // _SCALE_ROWS)
        samples += [read_rows(ref, slice(y, y + 1)).ravel() for y in range(0, ref.shape[0], step)]
    return np.concatenate(samples)


def _raw_scale(values: np.ndarray, params: dict) -> tuple[float, list[str]]:
    """The scale factor (raw / scale = DN) and warnings, from a sample of raw values."""
    found = _power_of_two(values)
    if params["scale_factor"] == "auto":
        return float(found), []
    scale = float(params["scale_factor"])
    if scale > 1 and found % scale:
        return scale, [f"scale_factor={scale:g} but the raw values are multiples of {found} only: is the camera "
                       f"storing native values (scale_factor: {found})?"]
    if scale < found and values.size and values.max() > 4095 * scale:
        return scale, [f"scale_factor={scale:g} but every raw value is a multiple of {found}: is this an ADC "
                       f"stored x{found} (scale_factor: {found})?"]
    return scale, []


_UINT16_MAX = 65535


def _saturation(table: Table, refs: dict, values: np.ndarray, scale: float, params: dict) -> tuple[float, list[str]]:
    """Saturation [DN]: the parameter, else SATURATE/DATAMAX in the headers, else the ADC range of the data.

    A container wider than 16 bits (float, 32-bit integers) whose sampled values are all whole
    numbers within 0..65535 holds 16-bit data (a capture program's copy) and saturates there,
    with a warning that says so.
    """
    if params["saturation"] != "auto":
        return float(params["saturation"]), []
    ok = table["status"] == "ok"
    if not ok.any():
        return np.inf, []
    stated = [v for v in table["saturate"][ok] if np.isfinite(v)]
    if stated:
        return float(Counter(stated).most_common(1)[0][0]) / scale, []
    tops = Counter(refs[i].adc_max for i in np.flatnonzero(ok))
    top = tops.most_common(1)[0][0] if tops else np.inf
    finite = values[np.isfinite(values)]
    messages = []
    if top > _UINT16_MAX and finite.size and np.all(finite == np.round(finite)) and \
            0 <= finite.min() and finite.max() <= _UINT16_MAX:
        top = _UINT16_MAX
        messages.append(f"saturation: the frames store whole numbers within 0..{_UINT16_MAX} in a wider type and no "
                        f"header states a level (SATURATE, DATAMAX): 16-bit data assumed, saturating at "
                        f"{_UINT16_MAX} raw; set saturation if the sensor clips elsewhere")
    if not np.isfinite(top):
        return np.inf, ["saturation: the frames are floating point and no header states a saturation level "
                        "(SATURATE, DATAMAX): no sample is excluded as saturated; set saturation if the sensor "
                        "clips"]
    return float(np.floor((top - (scale - 1)) / scale)), messages


def _exposure_warnings(table: Table) -> list[str]:
    ok = table["status"] == "ok"
    messages = []
    dark = ok & (table["type"] == "dark")
    if dark.any() and np.max(table["exposure"][dark]) > 2e4:
        messages.append(f"dark exposures up to {np.max(table['exposure'][dark]):g} s: if the camera writes "
                        "milliseconds or microseconds, set exposure_unit")
    bias = ok & (table["type"] == "bias")
    if bias.any() and np.max(table["exposure"][bias]) > 1:
        messages.append(f"bias frames with exposures up to {np.max(table['exposure'][bias]):g} s: if the camera "
                        "writes milliseconds or microseconds, set exposure_unit")
    return messages


def _assign_groups(table: Table, params: dict) -> None:
    """Fill the group columns of the ok rows; reject groups with too few frames."""
    for kind in ("bias", "dark"):
        rows = np.flatnonzero((table["status"] == "ok") & (table["type"] == kind))
        if not len(rows):
            continue
        if kind == "dark":
            t_label = chain_groups(table["exposure"][rows], params["exptime_tolerance"], relative=True)
        else:
            t_label = np.zeros(len(rows), dtype=int)
        for t_group in np.unique(t_label):
            sub = rows[t_label == t_group]
            T_label = chain_groups(table["temperature"][sub], params["temperature_tolerance"])
            for T_group in np.unique(T_label):
                members = sub[T_label == T_group]
                T = float(np.mean(table["temperature"][members]))
                t = float(np.mean(table["exposure"][members]))
                name = frame_label(kind, T, t)
                table["group"][members] = name
                table["group_temperature"][members] = T
                table["group_exptime"][members] = t if kind == "dark" else 0.0
                if len(members) < params["min_frames"]:
                    table["status"][members] = "rejected"
                    table["reason"][members] = (f"group {name} has {len(members)} frame(s), "
                                                f"fewer than min_frames={params['min_frames']}")


def _loo_defined(temperatures, exptimes, two_d: bool, needed: int) -> int:
    """How many dark groups can be left out while the rest still determine the model."""
    count = 0
    for g in range(len(temperatures)):
        keep = np.arange(len(temperatures)) != g
        if (len(np.unique(temperatures[keep])) >= 2 and (not two_d or len(np.unique(exptimes[keep])) >= 2)
                and keep.sum() >= needed):
            count += 1
    return count


def coverage(table: Table, params: dict) -> tuple[list[str], list[str]]:
    """What the usable frames can support: (problems that stop the calibration, notes).

    Each line names what is missing for what, e.g. "darks cover 1 temperature (-4.9 degC):
    the dark model needs >= 2".
    """
    ok = table[table["status"] == "ok"]
    problems, notes = [], []
    groups = {}
    for kind in ("bias", "dark"):
        sel = ok[ok["type"] == kind]
        names = sorted(set(sel["group"]), key=natural_key)
        groups[kind] = [(float(sel["group_temperature"][sel["group"] == g][0]),
                         float(sel["group_exptime"][sel["group"] == g][0]), int(np.sum(sel["group"] == g)))
                        for g in names]
    bias, dark = groups["bias"], groups["dark"]
    tolerance = params["temperature_tolerance"]

    def set_points(values):
        values = np.asarray(values, dtype=float)
        labels = chain_groups(values, tolerance)
        return [float(np.mean(values[labels == k])) for k in np.unique(labels)]

    bias_T = set_points([T for T, _, _ in bias])
    if not bias:
        problems.append("no usable bias frames: the bias model needs biases at >= 2 temperatures")
    elif len(bias_T) < 2:
        problems.append(f"biases cover 1 temperature ({bias_T[0]:.1f} degC): the bias model needs >= 2")
    elif len(bias_T) < 3:
        notes.append(f"biases cover {len(bias_T)} temperatures: the bias leave-one-out needs >= 3 (shown as n/a)")
    if bias and max(n for _, _, n in bias) < 2:
        if len(bias) < 3:
            problems.append(f"every bias group has 1 frame and there are {len(bias)}: the read noise needs a bias "
                            "group of >= 2 frames or biases at >= 3 temperatures")
        else:
            notes.append(f"every bias group has 1 frame: the read noise comes from the bias-fit residuals "
                         f"({len(bias) - 2} degrees of freedom per pixel)")
    dark_T = set_points([T for T, _, _ in dark])
    exposures = sorted({round(t, 6) for _, t, _ in dark})
    two_d = params["dark_model"] == "2d" or (params["dark_model"] == "auto" and len(exposures) >= 2)
    needed = (3 if two_d else 2) + params["min_dof"]
    if not dark:
        problems.append("no usable dark frames: the dark model needs darks at >= 2 temperatures")
    elif len(dark_T) < 2:
        problems.append(f"darks cover 1 temperature ({dark_T[0]:.1f} degC): the dark model needs >= 2, "
                        "leave-one-out >= 3")
    elif len(dark) < needed:
        problems.append(f"{len(dark)} dark groups: the {'2d' if two_d else '1d'} dark model needs >= {needed} "
                        f"(parameters + min_dof)")
    else:
        point = chain_groups(np.array([T for T, _, _ in dark]), tolerance)
        loo = _loo_defined(point, np.array([t for _, t, _ in dark]), two_d, needed)
        if loo < len(dark):
            notes.append(f"the dark leave-one-out is defined for {loo} of {len(dark)} groups (leaving out the "
                         "others would leave too few temperatures or exposures): those are n/a")
    if params["dark_model"] == "2d" and len(exposures) < 2:
        problems.append(f"dark_model: 2d needs darks at >= 2 exposure times, found {len(exposures)}; use 1d or auto")
    if dark and max(n for _, _, n in dark) < 2 and params["gain"] is None:
        notes.append("every dark group has 1 frame: the gain is not measured (EGAIN from the headers, or set gain)")
    return problems, notes


_NOT_CARDS = ("identity", "date", "bad_date")  # what a file's clues hold besides its temperature/exposure cards


def _header_warnings(table: Table, clues: dict) -> list[str]:
    """Frames whose temperature is a set point, and dates of frames used that are not read."""
    ok = table["status"] == "ok"
    messages = []
    set_point = ok & np.array(["is the set point" in n for n in table["note"]], dtype=bool)
    if set_point.any():
        messages.append(f"{int(set_point.sum())} frame(s) take their temperature from a set point "
                        f"({table['note'][set_point][0].split(' is the')[0]}), not a measured one: the sensor may "
                        "differ from it, and the models with it")
    bad = [clues[p]["bad_date"] for p in sorted(set(table["path"][ok])) if "bad_date" in clues.get(p, {})]
    if bad:
        messages.append(f"{len(bad)} file(s) used have a DATE-OBS that is not read: {bad[0]}. USEAFTER and "
                        "PEDIGREE leave them out (set instrument.useafter)")
    return messages


def _rejection_summary(table: Table, clues: dict) -> list[str]:
    """When most calibration files are rejected: the top reasons and the keywords their headers do have."""
    considered = table["status"] != "skipped"
    rejected = table[table["status"] == "rejected"]
    if not considered.any() or len(rejected) <= 0.5 * np.sum(considered):
        return []
    top = Counter(rejected["reason"]).most_common(3)
    text = "; ".join(f"{reason} ({n})" for reason, n in top)
    keys = Counter()
    examples = {}
    for path in rejected["path"]:
        for key, value in clues.get(path, {}).items():
            if key not in _NOT_CARDS:
                keys[key] += 1
                examples.setdefault(key, value)
    found = ", ".join(f"{k}={examples[k]!r}" for k, _ in keys.most_common(6))
    return [f"{len(rejected)} of {int(np.sum(considered))} calibration files rejected: {text}. "
            f"Temperature/exposure-like keywords in their headers: {found or 'none'}"]


def build_inventory(params: dict) -> Table:
    """Scan ``params['raw_dir']`` and return the inventory table.

    Columns: path (relative to raw_dir), hdu, plane (-1 unless a cube), type, temperature
    [degC], exposure [s], readout, shape, group, group_temperature, group_exptime, status,
    reason, note, egain (e- per raw unit from the header, NaN if none), and where the pixels
    are (offset, bitpix, bscale, bzero, blank).
    ``table.meta`` holds raw_dir, the campaign's shape and readout configuration, the
    resolved scale_factor and saturation [DN], warnings, problems and notes (see
    :func:`coverage`), the frames' instrument identity (INSTRUME, TELESCOP, DETECTOR) and the
    first and last DATE-OBS of the frames used. Campaign warnings are also raised as :class:`CampaignWarning`.
    """
    raw_dir = Path(params["raw_dir"])
    files = find_fits(raw_dir, params["include"], params["exclude"])
    if not files:
        raise FileNotFoundError(f"raw_dir {raw_dir}: no FITS files found")
    clues, rows = {}, []
    for path, skip in files:
        if skip:
            rows.append(_row(path.relative_to(raw_dir), "skipped", skip))
        else:
            rows.extend(_inspect(path, raw_dir, params, clues))
    table = Table(rows=rows, names=list(rows[0]))
    for name in ("path", "type", "readout", "shape", "status", "reason", "note"):
        table[name] = table[name].astype(object)
    calibration = (table["status"] == "ok")
    configs = Counter(zip(table["readout"][calibration], table["shape"][calibration]))
    (readout, shape), _ = configs.most_common(1)[0] if configs else (("", ""), 0)
    other = calibration & (table["readout"] != readout)
    table["reason"][other] = [f"readout configuration {r or 'unstated'} differs from the campaign's "
                              f"{readout or 'unstated'}" for r in table["readout"][other]]
    table["status"][other] = "skipped"
    wrong = calibration & ~other & (table["shape"] != shape)
    table["reason"][wrong] = [f"shape {s} differs from the campaign's {shape}" for s in table["shape"][wrong]]
    table["status"][wrong] = "rejected"
    table["group"] = np.full(len(table), "", dtype=object)
    table["group_temperature"] = np.full(len(table), np.nan)
    table["group_exptime"] = np.full(len(table), np.nan)
    table.meta.update(raw_dir=str(raw_dir), shape=shape, readout=readout)
    refs = dict(zip(np.flatnonzero(table["status"] == "ok"), frame_refs(table, table["status"] == "ok")))
    values = _raw_sample(table, refs)
    scale, messages = _raw_scale(values, params)
    saturation, more = _saturation(table, refs, values, scale, params)
    _assign_groups(table, params)
    for name in ("path", "type", "readout", "shape", "group", "status", "reason", "note"):
        table[name] = table[name].astype(str)
    problems, notes = coverage(table, params)
    messages += more + _exposure_warnings(table) + _header_warnings(table, clues) + _rejection_summary(table, clues)
    used = [clues[p] for p in set(table["path"][table["status"] == "ok"]) if p in clues]
    identity = Counter(c["identity"] for c in used).most_common(1)
    dates = sorted(c["date"] for c in used if c["date"])
    table.meta.update(scale_factor=scale, saturation=saturation, warnings=messages, problems=problems, notes=notes,
                      identity=dict(zip(_IDENTITY, identity[0][0] if identity else ("", "", ""))),
                      dates=[dates[0], dates[-1]] if dates else [])
    table.remove_column("saturate")
    for message in messages:
        warnings.warn(message, CampaignWarning, stacklevel=2)
    return table


def group_summary(inventory: Table) -> Table:
    """One row per group of usable frames: type, frames, temperature mean/std/min/max, exposure."""
    ok = inventory[inventory["status"] == "ok"]
    rows = []
    for group in sorted(set(ok["group"]), key=natural_key):
        sel = ok[ok["group"] == group]
        T = np.asarray(sel["temperature"])
        rows.append((group, sel["type"][0], len(sel), T.mean(), T.std(), T.min(), T.max(),
                     float(np.mean(sel["exposure"]))))
    return Table(rows=rows, names=("group", "type", "frames", "T_mean", "T_std", "T_min", "T_max", "exposure"),
                 units=(None, None, None, "deg_C", "deg_C", "deg_C", "deg_C", "s"))
