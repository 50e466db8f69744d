"""What changed since an earlier calibration of the same sensor.

Two models (the reference campaign and the current one) are compared pixel by pixel. Each
parameter's change is set against its uncertainty, the two models' variances added (the
campaigns are independent): z = change / sigma is a unit normal where nothing changed. The
dark rate is compared at a common point, the middle of the temperature range both campaigns
calibrated and the geometric mean of their exposures, since A itself is defined at each
campaign's own Tmin. Warm and hot pixels are *new* (flagged now, not before) or *gone* only
when their dark rate changed beyond ``sigma`` more than the whole sensor's did; a pixel that
crossed a classification threshold without such a change is counted apart as *reclassified*
(noise at the threshold, or a shifted population), never as a new defect.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from astropy.stats import mad_std
from astropy.table import Table

from .dq import DQ, has
from .errors import CampaignError
from .forms import dark_form
from .model import CalibrationModel

__all__ = ["CLASSES", "Comparison", "common_point", "compare_models", "describe"]

#: pixel classes of the comparison map, in the order of their codes 0..5
CLASSES = ("unflagged", "persistent", "new", "gone", "reclassified", "not comparable")
_FLAGGED = DQ.HOT | DQ.WARM
_UNUSABLE = DQ.DO_NOT_USE
_NOT_OWN_FIT = _UNUSABLE | DQ.FALLBACK | DQ.FEW_SAMPLES
_MEDIAN_EFFICIENCY = np.sqrt(np.pi / 2)  # standard error of a median / that of a mean, for normal scatter


@dataclass
class Comparison:
    """The change from a reference model to the current one.

    Attributes
    ----------
    changes : Table
        One row per quantity: pixels compared; the common shift (median change), its standard
        error and significance; the median per-pixel uncertainty; and, for each pixel's departure
        from the common shift, z = (change - shift) / sigma, its robust spread (1 when pixels moved
        together, or not at all) and the share with |z| > sigma (pixels that moved on their own).
    pixels : Table
        Warm and hot pixels per class (persistent, new, gone, reclassified, not comparable), and
        how many of them are HOT in either model.
    changed : Table
        Every pixel flagged in either model but not persistent: x, y, class, flags before and
        after, dark rates at the common point and z of the rate change (beyond the common shift).
    maps : dict
        Quantity name -> (change, z) maps (NaN where not compared).
    classes : ndarray (uint8)
        Per-pixel code into :data:`CLASSES`.
    temperature, exptime : float
        The common point of the dark-rate comparison [degC, s].
    sigma : float
        Significance threshold.
    """

    changes: Table
    pixels: Table
    changed: Table
    maps: dict
    classes: np.ndarray
    temperature: float
    exptime: float
    sigma: float


def common_point(reference: CalibrationModel, current: CalibrationModel) -> tuple[float, float]:
    """Middle of the temperature range both models calibrated [degC], geometric mean of the exposures [s].

    Raises
    ------
    CampaignError
        The calibrated temperature ranges do not overlap (the rates would be extrapolated).
    """
    lo, hi = max(reference.trange[0], current.trange[0]), min(reference.trange[1], current.trange[1])
    if lo > hi:
        raise CampaignError(f"the calibrated temperature ranges do not overlap ({reference.trange[0]:.1f}.."
                            f"{reference.trange[1]:.1f} and {current.trange[0]:.1f}..{current.trange[1]:.1f} degC): "
                            "the dark rates cannot be compared without extrapolation")
    exposures = [*reference.exprange, *current.exprange]
    return 0.5 * (lo + hi), float(np.exp(np.mean(np.log(exposures))))


def _change_row(name: str, unit: str, delta: np.ndarray, variance: np.ndarray, usable: np.ndarray, sigma: float):
    """Summary of one quantity's change, and its maps: the change and z of each pixel's departure from
    the common shift, (change - median change) / sigma."""
    ok = usable & np.isfinite(delta) & (variance > 0)
    n = int(ok.sum())
    if n == 0:
        return (name, unit, 0, *[np.nan] * 6), (np.full(delta.shape, np.nan), np.full(delta.shape, np.nan))
    median = float(np.median(delta[ok]))
    error = float(_MEDIAN_EFFICIENCY * mad_std(delta[ok]) / np.sqrt(n))
    z = np.full(delta.shape, np.nan)
    z[ok] = (delta[ok] - median) / np.sqrt(variance[ok])
    row = (name, unit, n, median, error, median / error if error > 0 else np.nan,
           float(np.median(np.sqrt(variance[ok]))), float(mad_std(z[ok])), float(np.mean(np.abs(z[ok]) > sigma)))
    return row, (np.where(ok, delta, np.nan), z)


def compare_models(reference: CalibrationModel, current: CalibrationModel, sigma: float = 5.0) -> Comparison:
    """Compare ``current`` with ``reference`` (same sensor), pixel by pixel.

    Raises
    ------
    CampaignError
        Different sensor shapes, or calibrated temperature ranges that do not overlap.
    """
    if reference.dq.shape != current.dq.shape:
        raise CampaignError(f"the models differ in shape ({'x'.join(map(str, reference.dq.shape))} and "
                            f"{'x'.join(map(str, current.dq.shape))}): not the same sensor and readout")
    T, t = common_point(reference, current)
    both = ((reference.dq | current.dq) & _UNUSABLE) == 0
    own_fit = ((reference.dq | current.dq) & _NOT_OWN_FIT) == 0
    ln0, var0 = reference.log_rate(T, t)
    ln1, var1 = current.log_rate(T, t)
    rows, maps = [], {}
    rate = f"dark rate at {T:.1f} degC, {t:.3g} s"
    quantities = [("bias a", "DN", current.bias_a - reference.bias_a, reference.bias_cov[0] + current.bias_cov[0],
                   both),
                  ("bias b", "DN/degC", current.bias_b - reference.bias_b, reference.bias_cov[1] + current.bias_cov[1],
                   both),
                  (rate, "%", 100 * (ln1 - ln0), 1e4 * (var0 + var1), both)]
    if reference.form == current.form:
        law = dark_form(current.form)
        quantities.append((law.slope, law.unit, current.dark[1] - reference.dark[1],
                           reference.dark_cov[1] + current.dark_cov[1], own_fit))
        if law.floor:
            quantities.append(("dark floor C", "DN/s^gamma" if current.fit_gamma else "DN/s",
                               current.dark[3] - reference.dark[3], reference.dark_cov[6] + current.dark_cov[6],
                               own_fit))
    if reference.fit_gamma and current.fit_gamma:
        quantities.append(("gamma", "", current.dark[2] - reference.dark[2],
                           reference.dark_cov[2] + current.dark_cov[2], own_fit))
    for name, unit, delta, variance, usable in quantities:
        row, maps[name] = _change_row(name, unit, np.asarray(delta, np.float64), np.asarray(variance, np.float64),
                                      usable, sigma)
        rows.append(row)
    changes = Table(rows=rows, names=("quantity", "unit", "pixels", "median_change", "median_error", "shift_sigma",
                                      "pixel_sigma", "z_spread", "moved_fraction"))
    for name in changes.colnames[3:]:
        changes[name].format = ".4g"

    rate_z = maps[rate][1]
    before, after = (reference.dq & _FLAGGED) > 0, (current.dq & _FLAGGED) > 0
    classes = np.zeros(before.shape, np.uint8)
    classes[before & after] = 1
    classes[after & ~before & (rate_z > sigma)] = 2
    classes[before & ~after & (rate_z < -sigma)] = 3
    classes[(before ^ after) & (classes == 0)] = 4
    classes[(before | after) & ~both] = 5
    hot = has(reference.dq | current.dq, DQ.HOT)
    pixels = Table(rows=[(name, int(np.count_nonzero(classes == code)), int(np.count_nonzero((classes == code) & hot)))
                         for code, name in enumerate(CLASSES) if code], names=("class", "warm_or_hot", "hot"))
    y, x = np.nonzero(classes > 1)
    changed = Table({"x": x, "y": y, "class": np.array(CLASSES)[classes[y, x]],
                     "flags_before": reference.dq[y, x], "flags_after": current.dq[y, x],
                     "rate_before": np.exp(ln0[y, x]), "rate_after": np.exp(ln1[y, x]), "rate_z": rate_z[y, x]})
    for name in ("rate_before", "rate_after"):
        changed[name].unit = "DN/s"
    return Comparison(changes=changes, pixels=pixels, changed=changed, maps=maps, classes=classes, temperature=T,
                      exptime=t, sigma=sigma)


def _with_error(value: float, error: float) -> str:
    """``value +/- error`` with the error's two significant digits setting the decimals."""
    if not error > 0:
        return f"{value:+.4g}"
    decimals = max(0, 1 - int(np.floor(np.log10(error))))
    if decimals > 6:
        return f"{value:+.2e} +/- {error:.1e}"
    return f"{value:+.{decimals}f} +/- {error:.{decimals}f}"


def describe(changes: Table, pixels: Table, sigma: float) -> list[str]:
    """The comparison in sentences: warm/hot pixel classes, then each quantity's shift and movers."""
    count = dict(zip(pixels["class"], zip(pixels["warm_or_hot"], pixels["hot"])))
    lost = count["not comparable"][0]
    lines = [f"warm/hot pixels: {count['new'][0]} new ({count['new'][1]} hot), {count['gone'][0]} gone, "
             f"{count['persistent'][0]} persistent, {count['reclassified'][0]} reclassified without a significant "
             "change of rate" + (f", {lost} not comparable" if lost else "")]
    for row in changes:
        if not row["pixels"]:
            lines.append(f"{row['quantity']}: no pixel usable in both models")
            continue
        unit = f" {row['unit']}" if row["unit"] else ""
        verdict = "shifted" if abs(row["shift_sigma"]) > sigma else "no significant shift"
        lines.append(f"{row['quantity']}: {verdict}, {_with_error(row['median_change'], row['median_error'])}{unit} "
                     f"({row['shift_sigma']:+.1f} sigma); {100 * row['moved_fraction']:.3g} % of pixels moved on their "
                     f"own beyond {sigma:g} sigma")
    return lines
