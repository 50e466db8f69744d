"""The history of a sensor over its campaigns: one row per campaign, drifts per year, jumps.

Each campaign is an ``output_dir`` (or its ``calibration_model.fits``) of the same sensor and
readout. Per campaign, in time order from the frames' dates (the inventory's, else USEAFTER):
warm and hot pixels (new, gone and persistent since the previous campaign; 0 for the first), and the median over
normal pixels (no DQ defect, not warm or hot in any campaign) of bias a, read noise, the dark
rate at one common (T, t), the temperature slope and gamma when the form is the same, and the
floor; each median with its standard error (1.2533 sigma / sqrt(n)). Then, per quantity, a
weighted straight line against time: the drift per year with its uncertainty (scaled by the
square root of the reduced chi-square when above 1), where a step between two consecutive
campaigns that departs from that drift by more than ``jump_sigma`` is a **jump**: named, and
fitted as a step of its own. Hot-pixel growth is the new warm and hot pixels per year.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
from astropy.table import Table

from .dq import DQ, has
from .errors import CampaignError
from .fitsio import read_table
from .forms import dark_form
from .model import CalibrationModel, usable_model
from .products import LEDGER, product

__all__ = ["QUANTITIES", "campaign_rows", "drifts", "history"]

_MEDIAN_ERROR = 1.2533  # standard error of a median over that of a mean, normal data
#: the quantities followed: name -> unit (the slope's unit is its form's)
QUANTITIES = {"bias_a": "DN", "read_noise": "DN", "dark_rate": "DN/s", "slope": "", "gamma": "", "floor": "DN/s"}


def _load(path: Path) -> tuple[CalibrationModel, str]:
    """The usable model of a campaign and the date of its frames (ISO, the midpoint of the first and last)."""
    model = usable_model(path, "cmoscal history")
    folder = path if path.is_dir() else path.parent
    dates = []
    if (folder / LEDGER).exists():
        dates = read_table(product(folder, "inventory")).meta.get("dates", [])
    dates = dates or [str(model.meta.get("USEAFTER", ""))]
    try:
        stamps = [datetime.fromisoformat(d) for d in dates]
    except ValueError:
        raise CampaignError(f"{path}: no date for its frames (DATE-OBS or USEAFTER): it cannot be placed in time")
    return model, (stamps[0] + (stamps[-1] - stamps[0]) / 2).isoformat(timespec="seconds")


def _median(values: np.ndarray) -> tuple[float, float]:
    values = values[np.isfinite(values)]
    if not values.size:
        return np.nan, np.nan
    median = float(np.median(values))
    sigma = 1.4826 * float(np.median(np.abs(values - median)))
    return median, _MEDIAN_ERROR * sigma / np.sqrt(values.size)


def _rms(values: np.ndarray) -> tuple[float, float]:
    """Root mean square and its standard error. For the read noise: the median of per-pixel estimates is biased
    low by an amount that depends on their degrees of freedom (a campaign of fewer biases would read as a jump);
    the mean of the read variance is not."""
    values = values[np.isfinite(values)].astype(np.float64)
    if not values.size:
        return np.nan, np.nan
    rms = float(np.sqrt(np.mean(values ** 2)))
    return rms, float(np.std(values ** 2) / np.sqrt(values.size) / (2 * rms))


def campaign_rows(paths) -> Table:
    """One row per campaign, in time order: date, years since the first, warm/hot counts and changes, and the
    median (the read noise: RMS) and standard error of each of :data:`QUANTITIES` over the pixels normal in every
    campaign."""
    loaded = sorted((_load(Path(p)) + (str(p),) for p in paths), key=lambda item: item[1])
    models = [m for m, _, _ in loaded]
    shapes = {m.dq.shape for m in models}
    if len(shapes) > 1:
        raise CampaignError(f"the campaigns differ in shape ({', '.join('x'.join(map(str, s)) for s in shapes)}): "
                            "not the same sensor and readout")
    flagged = [has(m.dq, DQ.HOT | DQ.WARM) for m in models]
    normal = ~np.logical_or.reduce([has(m.dq, DQ.DEFECT) for m in models])
    temperature = float(np.median([np.mean(m.trange) for m in models]))
    exptime = float(np.sqrt(models[0].exprange[0] * models[0].exprange[1]))
    first = datetime.fromisoformat(loaded[0][1])
    rows = []
    for k, (model, date, path) in enumerate(loaded):
        previous = flagged[k - 1] if k else np.zeros_like(flagged[k])
        maps = {"bias_a": model.bias_a, "read_noise": model.read_noise,
                "dark_rate": np.exp(model.log_rate(temperature, exptime)[0]),
                "slope": model.dark[1] if model.form == models[0].form else None,
                "gamma": model.dark[2] if model.fit_gamma else None,
                "floor": model.dark[3] if dark_form(model.form).floor else None}
        row = dict(campaign=str(model.meta.get("CAMPAIGN", "")), path=path, date=date,
                   years=(datetime.fromisoformat(date) - first).total_seconds() / (365.25 * 86400),
                   form=model.form, flagged=int(flagged[k].sum()), new=int((flagged[k] & ~previous).sum()) if k else 0,
                   gone=int((previous & ~flagged[k]).sum()), persistent=int((previous & flagged[k]).sum()) if k else 0)
        for name, values in maps.items():
            statistic = _rms if name == "read_noise" else _median
            row[name], row[f"{name}_error"] = statistic(values[normal]) if values is not None else (np.nan, np.nan)
        rows.append(row)
    table = Table(rows=rows)
    for name, unit in QUANTITIES.items():
        unit = dark_form(models[0].form).unit if name == "slope" else unit
        table[name].unit = table[f"{name}_error"].unit = unit or None
    table.meta.update(temperature=temperature, exptime=exptime, normal_pixels=int(normal.sum()),
                      slope=dark_form(models[0].form).slope)
    return table


def _line(t, y, error, steps=()) -> tuple[np.ndarray, np.ndarray, float]:
    """Weighted least squares of y on [1, t, a step at each index of ``steps``]: parameters, their covariance
    (scaled by the reduced chi-square when above 1) and the reduced chi-square."""
    X = np.column_stack([np.ones_like(t), t] + [(np.arange(len(t)) >= k).astype(float) for k in steps])
    w = 1 / error ** 2
    cov = np.linalg.inv(X.T @ (X * w[:, None]))
    theta = cov @ (X.T @ (w * y))
    dof = len(t) - X.shape[1]
    chi2r = float(np.sum(w * (y - X @ theta) ** 2) / dof) if dof > 0 else np.nan
    return theta, cov * max(chi2r, 1.0) if np.isfinite(chi2r) else cov, chi2r


def drifts(table: Table, jump_sigma: float = 5.0) -> Table:
    """Per quantity: the drift per year and its uncertainty, and the campaigns where it jumped.

    A step from campaign k-1 to k is a jump when it departs from the drift of the other steps by
    more than ``jump_sigma`` times its own uncertainty (the two campaigns' errors); jumps are
    found one at a time, largest first, each then fitted as a step of its own.
    """
    t = np.asarray(table["years"], dtype=float)
    rows = []
    for name in QUANTITIES:
        y, error = np.asarray(table[name], dtype=float), np.asarray(table[f"{name}_error"], dtype=float)
        if len(t) < 2 or not np.all(np.isfinite(y) & (error > 0)):
            rows.append((name, np.nan, np.nan, "", "n/a: not measured in every campaign" if len(t) >= 2 else
                         "n/a: one campaign"))
            continue
        steps = []
        while len(t) - 2 - len(steps) > 0:
            theta, _, _ = _line(t, y, error, steps)
            departure = (np.diff(y) - theta[1] * np.diff(t)) / np.hypot(error[1:], error[:-1])
            departure[[k - 1 for k in steps]] = 0.0
            k = int(np.argmax(np.abs(departure)))
            if abs(departure[k]) <= jump_sigma:
                break
            steps.append(k + 1)
        theta, cov, chi2r = _line(t, y, error, steps)
        jumps = "; ".join(f"{table['campaign'][k]} ({table['date'][k][:10]}): {theta[2 + i]:+.4g}"
                          for i, k in enumerate(steps))
        rows.append((name, float(theta[1]), float(np.sqrt(cov[1, 1])), jumps,
                     f"reduced chi-square {chi2r:.3g}" if np.isfinite(chi2r) else "as many parameters as campaigns"))
    result = Table(rows=rows, names=("quantity", "drift_per_year", "error", "jumps", "note"),
                   dtype=(str, float, float, str, str))
    years = t[-1] - t[0]
    new = int(np.sum(table["new"][1:]))
    result.meta.update(new_flagged_per_year=new / years if years > 0 else np.nan,
                       new_flagged_per_year_error=np.sqrt(new) / years if years > 0 else np.nan)
    return result


def history(paths, jump_sigma: float = 5.0) -> tuple[Table, Table]:
    """:func:`campaign_rows` and :func:`drifts` of the campaigns at ``paths``."""
    if len(paths) < 2:
        raise CampaignError("cmoscal history needs at least two campaigns of the same sensor")
    table = campaign_rows(paths)
    return table, drifts(table, jump_sigma)
