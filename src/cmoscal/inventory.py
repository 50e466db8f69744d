"""Inventory: find raw FITS frames, classify them, reject bad ones and group the rest.

Every file found gets one row with ``status`` ``ok`` or ``rejected`` and a reason;
nothing is silently dropped and no bad file stops the run.
"""

from __future__ import annotations

import warnings
from collections import Counter
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table

from .fitsio import image_hdu, open_raw, scaled_rows

__all__ = ["FITS_SUFFIXES", "build_inventory", "celsius", "chain_groups", "find_fits", "frame_label",
           "group_summary", "inspect_file"]

FITS_SUFFIXES = (".fits", ".fit", ".fts")
_COMPRESSED = (".fz", ".gz")
_SAMPLE_ROWS = 64  # rows read per file for the content checks


def celsius(temperature: float) -> str:
    """Temperature as used in names: one decimal and a C, never "-0.0C"."""
    return f"{round(float(temperature), 1) + 0.0:.1f}C"


def frame_label(kind: str, temperature: float, exptime: float | None = None) -> str:
    """Name of a group or frame: ``bias_10.0C`` or ``dark_10.0C_30s``."""
    return f"{kind}_{celsius(temperature)}" + (f"_{exptime:g}s" if kind == "dark" else "")


def find_fits(raw_dir: str | Path) -> list[Path]:
    """Return every FITS file below ``raw_dir`` (also .fz / .gz compressed), sorted."""
    found = []
    for path in Path(raw_dir).rglob("*"):
        name = path.name.lower()
        for suffix in _COMPRESSED:
            name = name.removesuffix(suffix)
        if path.is_file() and name.endswith(FITS_SUFFIXES) and not path.name.startswith("."):
            found.append(path)
    return sorted(found)


def _header_value(header: fits.Header, keys) -> float | None:
    for key in keys:
        if key in header:
            try:
                value = float(header[key])
            except (TypeError, ValueError):
                continue
            if np.isfinite(value):
                return value
    return None


def _classify(path: Path, raw_dir: Path, header: fits.Header, exposure: float, params: dict):
    """Return (type, reason): type bias/dark, or None with the reason."""
    imagetyp = str(header.get("IMAGETYP", "")).strip().lower()
    if imagetyp:
        if "bias" in imagetyp or "zero" in imagetyp:
            return "bias", ""
        if "dark" in imagetyp:
            return "dark", ""
        return None, f"IMAGETYP={header['IMAGETYP']!r} is neither bias nor dark"
    for folder in reversed(path.relative_to(raw_dir).parts[:-1]):
        for kind in ("bias", "dark"):
            if folder.lower().startswith(kind):
                return kind, ""
    return ("bias" if exposure <= params["bias_max_exptime"] else "dark"), ""


def inspect_file(path: Path, raw_dir: Path, params: dict) -> dict:
    """Read one file's header and a sample of its rows; return its inventory row.

    The row has ``status`` ``rejected`` and a ``reason`` when the file cannot be used.
    """
    row = dict(path=str(path.relative_to(raw_dir)), type="", temperature=np.nan, exposure=np.nan,
               shape="", group="", status="rejected", reason="", offscale=np.nan, packed16=False)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", fits.verify.VerifyWarning)
            warnings.filterwarnings("error", message=".*truncated.*")
            with open_raw(path) as hdul:
                hdu = image_hdu(hdul)
                if hdu is None:
                    row["reason"] = "no 2-D image data"
                    return row
                header = hdul[0].header.copy()
                header.update(hdu.header)
                shape = tuple(int(n) for n in hdu.shape)
                step = max(1, shape[0] // _SAMPLE_ROWS)
                sample = scaled_rows(hdu, slice(None, None, step)).astype(np.float64)
    except Exception as err:  # any failure to read is a reason to reject, never a crash
        row["reason"] = f"unreadable FITS ({type(err).__name__}: {str(err).splitlines()[0][:120]})"
        return row
    row["shape"] = f"{shape[0]}x{shape[1]}"
    temperature = _header_value(header, params["temperature_keys"])
    exposure = _header_value(header, params["exposure_keys"])
    if temperature is None:
        row["reason"] = f"no temperature (none of {', '.join(params['temperature_keys'])})"
        return row
    if exposure is None or exposure < 0:
        row["reason"] = f"no exposure (none of {', '.join(params['exposure_keys'])})"
        return row
    row.update(temperature=temperature, exposure=exposure)
    kind, reason = _classify(path, raw_dir, header, exposure, params)
    if kind is None:
        row["reason"] = reason
        return row
    row["type"] = kind
    if kind == "dark" and exposure <= 0:
        row["reason"] = "dark frame with zero exposure"
        return row
    if not np.all(np.isfinite(sample)):
        row["reason"] = "non-finite pixel values"
        return row
    zeros = np.mean(sample == 0)
    if zeros == 1:
        row["reason"] = "all-zero frame"
        return row
    if zeros > params["max_zero_fraction"]:
        row["reason"] = f"mostly-zero frame ({zeros:.0%} of sampled pixels are 0)"
        return row
    row["offscale"] = float(np.mean(np.mod(sample, params["scale_factor"]) != 0))
    row["packed16"] = bool(sample.max() > 4095 and np.all(np.mod(sample, 16) == 0))
    row["status"] = "ok"
    return row


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


def _scale_warnings(table: Table, params: dict) -> list[str]:
    read = np.isfinite(table["offscale"])
    if not read.any():
        return []
    offscale = np.median(table["offscale"][read])
    scale = params["scale_factor"]
    if scale > 1 and offscale > 0.01:
        return [f"scale_factor={scale:g} but {offscale:.0%} of sampled raw values are not multiples of it: "
                "is the camera storing native values (scale_factor: 1)?"]
    if scale == 1 and np.mean(table["packed16"][read]) > 0.5:
        return ["scale_factor=1 but the raw values exceed 4095 and are all multiples of 16: "
                "is this a 12-bit ADC stored x16 (scale_factor: 16)?"]
    return []


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
                table["group_exptime"][members] = t
                if len(members) < params["min_frames"]:
                    table["status"][members] = "rejected"
                    table["reason"][members] = (f"group {name} has {len(members)} frame(s), "
                                                f"fewer than min_frames={params['min_frames']}")


def build_inventory(params: dict) -> Table:
    """Scan ``params['raw_dir']`` and return the inventory table.

    Columns: path (relative to raw_dir), type, temperature [degC], exposure [s],
    shape, group, group_temperature, group_exptime, status, reason. Files whose
    shape differs from the campaign's (the most common one) are rejected.
    ``table.meta`` holds raw_dir, the campaign shape and any warnings.
    """
    raw_dir = Path(params["raw_dir"])
    rows = [inspect_file(path, raw_dir, params) for path in find_fits(raw_dir)]
    if not rows:
        raise FileNotFoundError(f"raw_dir {raw_dir}: no FITS files found")
    table = Table(rows=rows, names=list(rows[0]))
    for name in ("path", "type", "shape", "group", "status", "reason"):
        table[name] = table[name].astype(object)
    ok = table["status"] == "ok"
    shapes = Counter(table["shape"][ok])
    shape = shapes.most_common(1)[0][0] if shapes else ""
    wrong = ok & (table["shape"] != shape)
    table["reason"][wrong] = [f"shape {s} differs from the campaign's {shape}" for s in table["shape"][wrong]]
    table["status"][wrong] = "rejected"
    table["group_temperature"] = np.full(len(table), np.nan)
    table["group_exptime"] = np.full(len(table), np.nan)
    _assign_groups(table, params)
    for name in ("path", "type", "shape", "group", "status", "reason"):
        table[name] = table[name].astype(str)
    table.meta.update(raw_dir=str(raw_dir), shape=shape, warnings=_scale_warnings(table, params))
    table.remove_columns(["offscale", "packed16"])
    for message in table.meta["warnings"]:
        warnings.warn(message, stacklevel=2)
    return table


def group_summary(inventory: Table) -> Table:
    """One row per group of usable frames: type, frames, temperature mean/std/min/max, exposure."""
    ok = inventory[inventory["status"] == "ok"]
    rows = []
    for group in sorted(set(ok["group"]), key=lambda g: (g.split("_")[0], g)):
        sel = ok[ok["group"] == group]
        T = np.asarray(sel["temperature"])
        rows.append((group, sel["type"][0], len(sel), T.mean(), T.std(), T.min(), T.max(),
                     float(np.mean(sel["exposure"]))))
    return Table(rows=rows, names=("group", "type", "frames", "T_mean", "T_std", "T_min", "T_max", "exposure"))
