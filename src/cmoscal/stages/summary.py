"""Stage 8, summary: named checks of the whole calibration, each pass, FAIL or n/a with its reason,
and the record the report index shows.

Writes ``checks.ecsv``; ``model_numbers.ecsv`` (median and robust spread of every model
parameter over pixels without flags, the gain, the model form and the evidence for it);
``dq_counts.ecsv`` (pixels per DQ bit) and ``files.ecsv`` (every raw frame with its final
status and reason). The verdict describes the products on disk: a check over products that are
stale (an earlier stage ran again after the evaluation) fails, naming them.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from astropy.table import Table
from scipy.special import gammaincinv

from ..compute import concurrently, workers
from ..darkfit import predict
from ..dq import DQ, dq_table, has
from ..errors import CampaignWarning
from ..fitsio import read_table, write_table
from ..forms import dark_form
from ..inventory import frame_names
from ..model import CalibrationModel, shared_model
from ..products import product, required, stage, stage_states, upstream
from . import bias as bias_stage
from . import dark_model
from . import inventory as inventory_stage

__all__ = ["CHECKS", "Check", "Evidence", "files_accounted", "load", "load_record", "model_numbers", "run"]

_MAD_TO_SIGMA = 1.482602218505602  # sigma of a normal distribution per median absolute deviation
_NAMED = 3  # rejected files the warning names; files.ecsv holds every one


def files_accounted(params: dict) -> Table:
    """Every raw frame with its final status: the inventory's, then the master stages' verdict on its pixels."""
    inventory = inventory_stage.load(params)
    table = Table(inventory["path", "plane", "type", "temperature", "exposure", "group", "status", "reason"],
                  copy=True)
    names = frame_names(table)
    verdict = {}
    for kind in ("bias", "dark"):
        try:
            frames = bias_stage.frames_table(params, kind)
        except FileNotFoundError:
            continue
        verdict.update((f, r) for f, s, r in zip(frames["frame"], frames["status"], frames["reason"])
                       if s == "rejected")
    # whole columns are replaced: the inventory's string columns are only as wide as its own longest entry
    table["status"] = ["rejected" if n in verdict else str(s) for n, s in zip(names, table["status"])]
    table["reason"] = [verdict.get(n, str(r)) for n, r in zip(names, table["reason"])]
    return table


def _warn_rejected(files: Table) -> None:
    """Raise a :class:`CampaignWarning` naming the rejected calibration files of :func:`files_accounted` and why
    (the first few; ``files.ecsv`` has every one), if there are any."""
    rejected = files[files["status"] == "rejected"]
    if not len(rejected):
        return
    names = frame_names(rejected)
    named = "; ".join(f"{n}: {r}" for n, r in zip(names[:_NAMED], rejected["reason"][:_NAMED]))
    more = f"; and {len(names) - _NAMED} more" if len(names) > _NAMED else ""
    warnings.warn(f"{len(names)} of {np.count_nonzero(files['status'] != 'skipped')} calibration files rejected "
                  f"(files.ecsv gives every reason): {named}{more}", CampaignWarning, stacklevel=2)


def _median_spread(values: np.ndarray) -> tuple[float, float]:
    """Median and MAD-based sigma (1.4826 MAD, as astropy's mad_std) with the median computed once."""
    values = values[np.isfinite(values)]
    if not values.size:
        return np.nan, np.nan
    median = float(np.median(values))
    return median, float(_MAD_TO_SIGMA * np.median(np.abs(values - median)))


def model_numbers(model: CalibrationModel, comparison: Table | None = None, threads: int = 1) -> Table:
    """Median and robust spread (MAD-based sigma) of each model parameter over pixels without flags.

    ``meta`` carries the model form and dimension and, from the dark-model stage's
    ``comparison`` table, the evidence for the form and for gamma. The quantities are summarized
    on up to ``threads`` threads at once.
    """
    good = model.dq == 0

    def over_good(image, derive=lambda v: v):  # the quantity's values, computed on the thread that summarizes them
        return lambda: derive(image[good])

    rows = [("bias a", over_good(model.bias_a), "DN at 0 degC"), ("bias b", over_good(model.bias_b), "DN/degC"),
            ("read noise", over_good(model.read_noise), "DN"),
            ("dark A", over_good(model.dark[0], np.exp), f"DN/s{'^gamma' if model.fit_gamma else ''} at Tmin")]
    law = dark_form(model.form)
    rows += [(law.slope, over_good(model.dark[1]), law.unit)] + [
        (name, over_good(model.dark[1], derive), unit) for name, derive, unit in law.derived]
    if model.fit_gamma:
        rows.append(("gamma", over_good(model.dark[2]), ""))
    if law.floor:
        rows.append(("dark floor C", over_good(model.dark[3]), f"DN/s{'^gamma' if model.fit_gamma else ''}"))
    rows.append(("reduced chi-square", over_good(model.chi2r), ""))
    spreads = concurrently([lambda values=values: _median_spread(values()) for _, values, _ in rows], threads)
    table = Table(rows=[(name, *spread, unit) for (name, _, unit), spread in zip(rows, spreads)],
                  names=("quantity", "median", "spread", "unit"))
    gain = float(model.meta.get("GAIN") or np.nan)
    table.add_row(("gain", gain, np.nan, f"e-/DN ({dark_model.gain_source_text(model.meta)})"))
    table.meta.update(form=model.form, dimension="2d" if model.fit_gamma else "1d", pixels=int(good.sum()),
                      share=float(good.mean()))
    if comparison is not None:
        table.meta.update(form_verdict=comparison.meta.get("verdict", ""),
                          gamma_verdict=comparison.meta.get("gamma", ""))
    return table


class Evidence(NamedTuple):
    """What the checks read: the evaluation's tables, the model, every raw file's status, the stage states."""

    summary: Table
    loo: Table
    model: CalibrationModel
    files: Table
    states: dict


@dataclass(frozen=True)
class Check:
    """One named check of the calibration.

    Attributes
    ----------
    name, definition : str
        As in ``checks.ecsv`` and on the summary page.
    limit : str or float
        Key of the ``checks`` parameter holding the limit, or the limit itself.
    measure : callable
        ``measure(evidence) -> (value, note)``; a value that is not finite makes the check n/a
        with ``note`` as the reason, otherwise ``note`` explains the value.
    two_sided : bool
        Also FAIL a ratio below 1 / limit (the noise model overstates the scatter).
    """

    name: str
    definition: str
    limit: str | float
    measure: Callable
    two_sided: bool = False

    def row(self, evidence: Evidence, limits: dict) -> tuple:
        """The check's row of ``checks.ecsv``: name, definition, value, limit, status, reason."""
        value, note = self.measure(evidence)
        limit = float(limits[self.limit] if isinstance(self.limit, str) else self.limit)
        row = (self.name, self.definition, float(value), limit)
        if not np.isfinite(value):
            return (*row, "n/a", note or "not defined for this campaign")
        if self.two_sided and value < 1 / limit:
            return (*row, "FAIL", f"{value:.3g} < 1/{limit:g}: the expected noise is far larger than the scatter "
                                  "(gain or read noise wrong?), so this check could not see a misfit")
        return (*row, "pass" if value <= limit else "FAIL", note)


def _residual_noise(kind: str) -> Callable:
    def measure(evidence: Evidence):
        summary = evidence.summary
        sel = summary["kind"] == kind
        expected = np.asarray(summary["resid_noise_expected"][sel])
        ratio = np.asarray(summary["resid_noise"][sel]) / np.where(expected > 0.05, expected, np.nan)
        circular = ("the read noise is measured from these residuals (one frame per bias group): they cannot test "
                    "it") if kind == "bias" and evidence.model.meta.get("RNSOURCE") == bias_stage.RESIDUALS else ""
        reason = circular or ("" if np.isfinite(ratio).any() else
                 f"the {kind} model fits its {int(sel.sum())} masters exactly: no degrees of freedom")
        return (np.nan if reason else np.nanmedian(ratio)), reason
    return measure


def _loo_noise(kind: str) -> Callable:
    def measure(evidence: Evidence):
        values = np.asarray(evidence.loo["loo_noise"][evidence.loo["kind"] == kind])
        reason = "" if np.isfinite(values).any() else (
            "needs master biases at >= 3 temperatures" if kind == "bias" else
            "no group can be left out with two temperatures (and exposures) remaining")
        return (np.nan if reason else np.nanmedian(values)), reason
    return measure


def _chi2_ratio(evidence: Evidence):
    """Median over normal pixels of the dark fit's reduced chi-square over the median of chi-square(dof) / dof."""
    model = evidence.model
    dof = model.dark_dof
    normal = ~has(model.dq, DQ.DEFECT) & (dof > 0) & np.isfinite(model.chi2r)
    if not normal.any():
        return np.nan, "no normal pixel has degrees of freedom left in its dark fit"
    dof = dof[normal].astype(np.int64)
    k = np.arange(1, dof.max() + 1)
    expected = 2 * gammaincinv(k / 2, 0.5) / k  # the median of chi-square(k) / k, each dof once
    ratio = model.chi2r[normal] / expected[dof - 1]
    return float(np.median(ratio)), ""


def _residual_trend(evidence: Evidence):
    """Largest |mean (synthetic - master) / noise| over normal pixels among the dark groups, and where it is."""
    summary = evidence.summary[evidence.summary["kind"] == "dark"]
    values = np.abs(np.asarray(summary["resid_mean"], dtype=np.float64))
    if not np.isfinite(values).any():
        return np.nan, "no dark group has normal pixels to compare"
    worst = int(np.nanargmax(values))
    row = summary[worst]
    return float(values[worst]), (f"worst: {row['group']}, the model {'above' if row['resid_mean'] > 0 else 'below'} "
                                  f"the master by {abs(row['resid_mean']):.2f} sigma on average")


def _extrapolation_error(evidence: Evidence):
    """Median over normal pixels of the error the slope's uncertainty alone adds to a dark frame max_extrapolation
    beyond the warmest calibrated temperature (longest exposure), over that frame's own noise: a narrow temperature
    range without a prior model leaves the slope unknown; a faint dark known to a few percent does not matter."""
    model = evidence.model
    law = dark_form(model.form)
    warmest, t = model.trange[1], model.exprange[1]
    T = warmest + model.max_extrapolation
    lever = abs(float(law.feature(T, model.tmin) - law.feature(warmest, model.tmin)))
    normal = ~has(model.dq, DQ.DEFECT) & np.isfinite(model.dark_cov[1]) & (model.dark_cov[1] >= 0)
    if not normal.any():
        return np.nan, "no normal pixel"
    signal = predict(model.dark[:, normal], T, t, model.tmin, model.form)
    inv_gain = 1 / model.meta["GAIN"] if model.meta.get("GAIN", 0) > 0 else 0.0
    noise = np.sqrt(model.read_variance[normal] + np.maximum(signal, 0) * inv_gain)
    value = float(np.median(signal * np.sqrt(model.dark_cov[1][normal]) * lever / noise))
    prior = model.meta.get("PRIORCMP")
    where = (f"{law.slope} from the prior model ({prior}) and these frames" if prior else
             f"{law.slope} from these frames alone over {model.trange[0]:.1f}..{warmest:.1f} degC")
    return value, f"{where}; a {t:.3g} s dark at {T:.1f} degC"


def _flagged_share(value: int) -> Callable:
    return lambda evidence: (float(np.mean(has(evidence.model.dq, value))), "")


def _rejected_share(evidence: Evidence):
    files = evidence.files
    considered = files["status"] != "skipped"
    if not considered.any():
        return np.nan, "no calibration file was considered"
    return float(np.mean(files["status"][considered] == "rejected")), ""


def _stale_products(evidence: Evidence):
    stale = [f"{name} ({reason})" for name, (state, reason) in evidence.states.items()
             if name in upstream("summary") - {"summary"} and state != "current"]
    return float(len(stale)), "stale: " + ", ".join(stale) if stale else ""


_RESIDUAL = ("median over groups of residual RMS / expected noise, relative to the in-sample expectation "
             "sqrt(1 - leverage)")
_LOO = "median over held-out groups of residual RMS / noise"
#: every check, in the order of ``checks.ecsv``; a new check is one more entry (and its limit in ``checks:``)
CHECKS = (
    Check("bias residual / noise", _RESIDUAL, "residual_noise_max", _residual_noise("bias"), two_sided=True),
    Check("bias leave-one-out / noise", _LOO, "loo_noise_max", _loo_noise("bias"), two_sided=True),
    Check("dark residual / noise", _RESIDUAL, "residual_noise_max", _residual_noise("dark"), two_sided=True),
    Check("dark leave-one-out / noise", _LOO, "loo_noise_max", _loo_noise("dark"), two_sided=True),
    Check("dark chi-square / expectation", "median over normal pixels of the dark fit's reduced chi-square, "
          "relative to its median for the pixel's degrees of freedom: a form that cannot follow the pixels' curves "
          "reads high", "chi2_ratio_max", _chi2_ratio, two_sided=True),
    Check("dark residual trend", "largest |mean (synthetic - master) / noise| over normal pixels among the dark "
          "groups: a form that misses the temperature or exposure dependence leaves a systematic departure",
          "residual_trend_max", _residual_trend),
    Check("dark extrapolation error / noise", "median over normal pixels of the error the slope's uncertainty alone "
          "adds to a dark of the longest exposure max_extrapolation beyond the warmest calibrated temperature, over "
          "that frame's noise: darks over a few degrees (in flight) need prior_model", "extrapolation_error_max",
          _extrapolation_error),
    Check("warm + hot fraction", "share of pixels flagged WARM or HOT", "hot_fraction_max",
          _flagged_share(DQ.HOT | DQ.WARM)),
    Check("unreliable dark fraction", "share of pixels flagged UNRELIABLE_DARK (dark rate known to no better than "
          "unreliable_dark_error)", "unreliable_fraction_max", _flagged_share(DQ.UNRELIABLE_DARK)),
    Check("rejected files", "share of calibration files rejected (skipped files do not count)",
          "rejected_fraction_max", _rejected_share),
    Check("products consistent", "every product the checks describe is current (no stage ran again after the "
          "evaluation)", 0.0, _stale_products),
)


@stage("summary", reads_stale=True)
def run(params: dict) -> Table:
    """Compute the checks and write ``checks.ecsv``; ``meta['verdict']`` is SUCCESS or FAILED."""
    threads = workers(params)
    model = shared_model(required(params, "model"), threads)
    files = files_accounted(params)
    evidence = Evidence(read_table(required(params, "evaluation", "summary.ecsv")),
                        read_table(product(params, "evaluation", "loo.ecsv")), model, files,
                        stage_states(params["output_dir"]))
    write_table(files, product(params, "files"))
    _warn_rejected(files)
    write_table(dq_table(model.dq), product(params, "dq_counts"))
    write_table(model_numbers(model, read_table(product(params, "model_comparison")), threads),
                product(params, "model_numbers"))
    checks = Table(rows=concurrently([functools.partial(check.row, evidence, params["checks"]) for check in CHECKS],
                                     threads), names=("check", "definition", "value", "limit", "status", "reason"))
    failed = [c["check"] for c in checks if c["status"] == "FAIL"]
    checks.meta.update(verdict="FAILED" if failed else "SUCCESS", failed=failed)
    write_table(checks, product(params, "checks"))
    return checks


def load(params: dict) -> Table:
    """The checks written by :func:`run`."""
    return read_table(required(params, "checks"))


def load_record(params: dict) -> dict:
    """The record written by :func:`run`: model numbers, DQ counts and files."""
    return {name: read_table(required(params, name))
            for name in ("model_numbers", "dq_counts", "files")}
