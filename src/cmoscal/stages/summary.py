"""Stage 8, summary: named checks of the whole calibration, each pass, FAIL or n/a with its reason,
and the record the report index shows.

Writes ``checks.ecsv``; ``model_numbers.ecsv`` (median and robust spread of every model
parameter over pixels without flags, the gain, the model form and the evidence for it);
``dq_counts.ecsv`` (pixels per DQ bit) and ``files.ecsv`` (every raw frame with its final
status and reason). The verdict describes the products on disk: a check over products that are
stale (an earlier stage ran again after the evaluation) fails, naming them.
"""

from __future__ import annotations

import numpy as np
from astropy.table import Table

from ..dq import DQ, dq_table, has
from ..fitsio import read_table, write_table
from ..forms import dark_form
from ..model import CalibrationModel, shared_model
from ..products import product, required, stage, stage_states, upstream
from . import bias as bias_stage
from . import inventory as inventory_stage

__all__ = ["files_accounted", "load", "load_record", "model_numbers", "run"]

_MAD_TO_SIGMA = 1.482602218505602  # sigma of a normal distribution per median absolute deviation


def files_accounted(params: dict) -> Table:
    """Every raw frame with its final status: the inventory's, then the master stages' verdict on its pixels."""
    inventory = inventory_stage.load(params)
    table = Table(inventory["path", "plane", "type", "temperature", "exposure", "group", "status", "reason"],
                  copy=True)
    names = [p if q < 0 else f"{p}[{q}]" for p, q in zip(table["path"], table["plane"])]
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


def _median_spread(values: np.ndarray) -> tuple[float, float]:
    """Median and MAD-based sigma (1.4826 MAD, as astropy's mad_std) with the median computed once."""
    values = values[np.isfinite(values)]
    if not values.size:
        return np.nan, np.nan
    median = float(np.median(values))
    return median, float(_MAD_TO_SIGMA * np.median(np.abs(values - median)))


def model_numbers(model: CalibrationModel, comparison: Table | None = None) -> Table:
    """Median and robust spread (MAD-based sigma) of each model parameter over pixels without flags.

    ``meta`` carries the model form and dimension and, from the dark-model stage's
    ``comparison`` table, the evidence for the form and for gamma.
    """
    good = model.dq == 0
    slope = model.dark[1][good]
    rows = [("bias a", model.bias_a[good], "DN at 0 degC"), ("bias b", model.bias_b[good], "DN/degC"),
            ("read noise", model.read_noise[good], "DN"),
            ("dark A", np.exp(model.dark[0][good]), f"DN/s{'^gamma' if model.fit_gamma else ''} at Tmin")]
    law = dark_form(model.form)
    rows += [(law.slope, slope, law.unit)] + [(name, derive(slope), unit) for name, derive, unit in law.derived]
    if model.fit_gamma:
        rows.append(("gamma", model.dark[2][good], ""))
    rows.append(("reduced chi-square", model.chi2r[good], ""))
    table = Table(rows=[(name, *_median_spread(v), unit) for name, v, unit in rows],
                  names=("quantity", "median", "spread", "unit"))
    gain = float(model.meta.get("GAIN") or np.nan)
    table.add_row(("gain", gain, np.nan, f"e-/DN ({model.meta.get('GAINSRC', 'unknown source')})"))
    table.meta.update(form=model.form, dimension="2d" if model.fit_gamma else "1d", pixels=int(good.sum()),
                      share=float(good.mean()))
    if comparison is not None:
        table.meta.update(form_verdict=comparison.meta.get("verdict", ""),
                          gamma_verdict=comparison.meta.get("gamma", ""))
    return table


def _check(name, definition, value, limit, reason="", two_sided=False):
    """A check row; ``two_sided`` also fails a ratio below 1 / limit (the noise model overstates the scatter)."""
    if reason or not np.isfinite(value):
        return (name, definition, float(value), float(limit), "n/a", reason or "not defined for this campaign")
    if two_sided and value < 1 / limit:
        return (name, definition, float(value), float(limit), "FAIL",
                f"{value:.3g} < 1/{limit:g}: the expected noise is far larger than the scatter (gain or read noise "
                "wrong?), so this check could not see a misfit")
    return (name, definition, float(value), float(limit), "pass" if value <= limit else "FAIL", "")


@stage("summary", reads_stale=True)
def run(params: dict) -> Table:
    """Compute the checks and write ``checks.ecsv``; ``meta['verdict']`` is SUCCESS or FAILED."""
    summary = read_table(required(params, "evaluation", "summary.ecsv"))
    loo = read_table(product(params, "evaluation", "loo.ecsv"))
    model = shared_model(required(params, "model"))
    dq = model.dq
    limits = params["checks"]
    rows = []
    dof = model.meta["RNDOF"]
    from_residuals = model.meta.get("RNSOURCE") == bias_stage.RESIDUALS
    for kind in ("bias", "dark"):
        unknown_noise = (f"the read noise has {dof} degrees of freedom: a bias residual over it has no finite "
                         "expectation below 3") if kind == "bias" and dof <= 2 else ""
        sel = summary["kind"] == kind
        expected = np.asarray(summary["resid_noise_expected"][sel])
        ratio = np.asarray(summary["resid_noise"][sel]) / np.where(expected > 0.05, expected, np.nan)
        circular = ("the read noise is measured from these residuals (one frame per bias group): they cannot test "
                    "it") if kind == "bias" and from_residuals else ""
        reason = unknown_noise or circular or ("" if np.isfinite(ratio).any() else
                                   f"the {kind} model fits its {int(sel.sum())} masters exactly: no degrees of freedom")
        rows.append(_check(f"{kind} residual / noise", "median over groups of residual RMS / expected noise, "
                           "relative to the in-sample expectation sqrt(1 - leverage)",
                           np.nanmedian(ratio) if not reason else np.nan, limits["residual_noise_max"], reason,
                           two_sided=True))
        values = np.asarray(loo["loo_noise"][loo["kind"] == kind])
        reason = unknown_noise or ("" if np.isfinite(values).any() else (
            "needs master biases at >= 3 temperatures" if kind == "bias" else
            "no group can be left out with two temperatures (and exposures) remaining"))
        rows.append(_check(f"{kind} leave-one-out / noise", "median over held-out groups of residual RMS / noise",
                           np.nanmedian(values) if not reason else np.nan, limits["loo_noise_max"], reason,
                           two_sided=True))
    flagged = float(np.mean(has(dq, DQ.HOT | DQ.WARM)))
    rows.append(_check("warm + hot fraction", "share of pixels flagged WARM or HOT", flagged,
                       limits["hot_fraction_max"]))
    files = files_accounted(params)
    write_table(files, product(params, "files"))
    write_table(dq_table(dq), product(params, "dq_counts"))
    write_table(model_numbers(model, read_table(product(params, "model_comparison"))),
                product(params, "model_numbers"))
    considered = files["status"] != "skipped"
    rejected = float(np.mean(files["status"][considered] == "rejected")) if considered.any() else np.nan
    rows.append(_check("rejected files", "share of calibration files rejected (skipped files do not count)",
                       rejected, limits["rejected_fraction_max"]))
    states = stage_states(params["output_dir"])
    stale = [f"{name} ({reason})" for name, (state, reason) in states.items()
             if name in upstream("summary") - {"summary"} and state != "current"]
    rows.append(("products consistent", "every product the checks describe is current (no stage ran again "
                 "after the evaluation)", float(len(stale)), 0.0, "FAIL" if stale else "pass",
                 "stale: " + ", ".join(stale) if stale else ""))
    checks = Table(rows=rows, names=("check", "definition", "value", "limit", "status", "reason"))
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
