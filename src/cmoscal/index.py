"""The report index: the one page a reviewer opens first, the calibration record of the products on disk.

It holds, on one printable page: the verdict; the campaign (files used, skipped and rejected with
the main reasons, the calibrated ranges); the model in numbers (medians and spreads, gain, the
model form and the evidence for it); pixels per DQ class; every campaign warning of every stage;
the checks; what changed since the reference campaign; links to the stage pages and products;
the software versions. Its verdict and record come from the summary stage only when that stage
is current; otherwise the page says the verdict is stale and which stage made it so. The page
is self-contained (no script, no request leaving the machine).
"""

from __future__ import annotations

import html
import os
from collections import Counter
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table

from .compare import describe
from .fitsio import atomic_path, read_table
from .products import DEPENDS, campaign_warnings, product, stage_states
from .stages import summary as summary_stage

__all__ = ["current_checks", "format_value", "write_index"]

_STYLE = """body{font-family:sans-serif;max-width:72em;margin:2em auto;padding:0 1em;color:#222;line-height:1.35}
h2{margin-top:1.4em;border-bottom:1px solid #ddd}table{border-collapse:collapse;margin:.6em 0}
td,th{border:1px solid #ccc;padding:.25em .55em;text-align:left;vertical-align:top}th{background:#f3f3f3}
td.num{text-align:right;font-variant-numeric:tabular-nums}.pass{color:#176f2c}.FAIL,.failed{color:#a4161a;font-weight:bold}
.stale,.na,.notrun{color:#8a6d00}.verdict{font-size:1.5em;font-weight:bold;padding:.3em .6em;display:inline-block}
.SUCCESS{background:#e3f4e6;color:#176f2c}.FAILED{background:#fde8e8;color:#a4161a}
.STALE{background:#fff4d6;color:#8a6d00}ul li{margin:.2em 0}.muted{color:#666}
@media print{body{max-width:none;margin:0;font-size:10pt}a{color:#222;text-decoration:none}
table,ul{page-break-inside:avoid}h2{page-break-after:avoid}}"""

#: products linked from the index, when present (relative to output_dir)
_PRODUCTS = (("calibration_model.fits", "the model: every map, covariance, DQ and ranges in one file"),
             ("bias_model", "bias a, b, their uncertainties, read noise"),
             ("dark_model", "dark A, B or Ea, gamma, uncertainties, chi-square; DQ map and hot-pixel mask"),
             ("checks.ecsv", "the checks"), ("model_numbers.ecsv", "the model in numbers"),
             ("dq_counts.ecsv", "pixels per DQ class"), ("files.ecsv", "every raw frame and its status"),
             ("evaluation", "synthetic against real masters"), ("synthetic", "synthetic frames"),
             ("calibrated", "calibrated science frames"), ("comparison", "changes since the reference campaign"),
             ("dark_budget.ecsv", "dark rate and dark-limited exposure per temperature"),
             ("history", "the sensor over its campaigns: drifts per year, jumps"))


def format_value(value, digits: int = 4) -> str:
    """A number as a person reads it: ``digits`` significant digits, n/a for NaN, yes/no for booleans."""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (float, np.floating)):
        if not np.isfinite(value):
            return "n/a" if np.isnan(value) else str(value)
        if value == 0:
            return "0"
        if abs(value) >= 10 ** digits or abs(value) < 10 ** -4:
            return f"{value:.{digits - 1}e}"
        return f"{value:.{digits}g}"
    return str(value)


def current_checks(params: dict) -> Table | None:
    """The checks, if the summary stage is current (its products describe the data); else None."""
    path = product(params, "checks")
    if stage_states(params["output_dir"])["summary"][0] != "current" or not path.exists():
        return None
    return read_table(path)


def _cell(value) -> str:
    return html.escape(str(value))


def _table(header, rows) -> str:
    """An HTML table; a cell given as ``<td...`` is used as is, numbers are right-aligned."""
    def cell(value):
        if isinstance(value, str) and value.startswith("<td"):
            return value
        if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_)):
            return f'<td class="num">{_cell(format_value(value))}</td>'
        return f"<td>{_cell(value)}</td>"
    head = "".join(f"<th>{_cell(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(value) for value in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _verdict(params: dict, checks) -> tuple[str, str]:
    if checks is not None:
        verdict = checks.meta.get("verdict", "FAILED")
        failed = checks.meta.get("failed", [])
        return verdict, ("every check passes or is n/a" if verdict == "SUCCESS" else
                         "failed: " + ", ".join(failed))
    state, reason = stage_states(params["output_dir"])["summary"]
    texts = {"not run": "the summary stage has not run for these products",
             "stale": f"the checks predate the products ({reason}): rerun the later stages"}
    return "STALE", texts.get(state, f"summary {state}")


def _campaign(params: dict, files: Table | None) -> str:
    """Files per type and status with the main reasons, and the calibrated ranges from the model header."""
    parts = []
    if files is not None:
        rows = []
        for kind in sorted(set(files["type"])):
            sel = files["type"] == kind
            rows.append([kind or "(unknown)"] + [int(np.sum(sel & (files["status"] == s)))
                                                 for s in ("ok", "skipped", "rejected")])
        parts.append(_table(("frames", "used", "skipped", "rejected"), rows))
        for status, top in (("rejected", 5), ("skipped", 3)):
            reasons = Counter(files["reason"][files["status"] == status]).most_common(top)
            if reasons:
                parts.append(f"<p>Main reasons {status}:</p><ul>" + "".join(
                    f"<li>{count} x {_cell(reason)}</li>" for reason, count in reasons) + "</ul>")
    model = product(params, "model")
    if model.exists():
        h = fits.getheader(model)
        parts.append(_table(("calibrated", "range", "inputs"), [
            ["temperature", f"{h['TCALMIN']:.2f} .. {h['TCALMAX']:.2f} degC (Tmin {h['TMIN']:.2f})",
             f"{h.get('NBIAS', '?')} bias frames in {h.get('NBIASM', '?')} masters"],
            ["dark exposure", f"{h['TEXPMIN']:.4g} .. {h['TEXPMAX']:.4g} s",
             f"{h.get('NDARK', '?')} dark frames in {h.get('NDARKM', '?')} masters"]]))
        parts.append(f"<p class='muted'>Instrument {_cell(h.get('INSTRUME', '?'))}, detector "
                     f"{_cell(h.get('DETECTOR', '?'))}; pedigree {_cell(h.get('PEDIGREE', '?'))}; use after "
                     f"{_cell(h.get('USEAFTER', '?'))}; model id <code>{_cell(h.get('MODELID', '?'))}</code>.</p>")
        if h.get("PRIORID"):
            parts.append(f"<p>Updated from the prior model of campaign {_cell(h.get('PRIORCMP', '?'))} (model id "
                         f"<code>{_cell(h['PRIORID'])}</code>): these frames set the bias level and dark amplitude, "
                         "the prior the temperature and exposure behaviour where they cannot; the temperature range "
                         "includes the prior's. What moved: <code>dark_model/prior_update.ecsv</code> and the dark "
                         "model page.</p>")
    science = product(params, "calibrated", "frames.ecsv")
    if stage_states(params["output_dir"])["calibration"][0] == "current" and science.exists():
        frames = read_table(science)
        done = frames["status"] == "calibrated"
        parts.append(f"<p>Science frames calibrated with this model: {int(done.sum())}, refused: "
                     f"{int((~done).sum())} (<code>calibrated/frames.ecsv</code>).</p>")
    return "".join(parts) or "<p class='stale'>No inventory or model yet.</p>"


def _numbers(record: dict | None) -> str:
    if record is None:
        return "<p class='stale'>Not current: the summary stage has not run on these products.</p>"
    numbers, dq = record["model_numbers"], record["dq_counts"]
    meta = numbers.meta
    lines = [f"{meta['form']} {meta['dimension']} model; {meta['pixels']} pixels without flags "
             f"({100 * meta['share']:.2f} %)."] + [meta[k] for k in ("form_verdict", "gamma_verdict") if meta.get(k)]
    text = "".join(f"<p>{_cell(line[0].upper() + line[1:])}</p>" for line in lines)
    table = _table(("quantity", "median", "spread", "unit"),
                   [[r["quantity"], float(r["median"]), float(r["spread"]), r["unit"]] for r in numbers])
    flagged = dq[dq["NPIX"] > 0]
    dq_html = _table(("DQ class", "pixels", "share [%]", "meaning"),
                     [[r["NAME"], int(r["NPIX"]), 100 * float(r["FRACTION"]), r["DESCRIPTION"]] for r in flagged]
                     ) if len(flagged) else "<p>No pixel carries a flag.</p>"
    return (f"{text}{table}<p class='muted'>Medians and robust spreads (MAD as sigma) over pixels without flags.</p>"
            f"<h3>Pixels per DQ class</h3>{dq_html}")


def _comparison(params: dict, pages: dict) -> str:
    state = stage_states(params["output_dir"])["comparison"][0]
    folder = product(params, "comparison")
    if state != "current" or not (folder / "changes.ecsv").exists():
        return ""
    changes, pixels = read_table(folder / "changes.ecsv"), read_table(folder / "pixels.ecsv")
    meta = changes.meta
    link = f' (<a href="{pages["comparison"]}">page</a>)' if "comparison" in pages else ""
    lines = describe(changes, pixels, meta["sigma"])
    return (f"<h2>Since the reference campaign</h2><p>Against {_cell(meta.get('reference_campaign') or '?')} "
            f"(<code>{_cell(meta['reference'])}</code>, model id "
            f"<code>{_cell(meta.get('reference_model', '?'))}</code>); dark rates compared at "
            f"{meta['temperature']:.1f} degC, {meta['exptime']:.3g} s{link}.</p>"
            "<ul>" + "".join(f"<li>{_cell(line)}</li>" for line in lines) + "</ul>")


def _products(params: dict, run_dir: Path) -> str:
    root = Path(params["output_dir"])
    relative = os.path.relpath(root, run_dir)
    rows = [f'<li><a href="{_cell(relative)}/{name}">{name}</a>: {_cell(text)}</li>'
            for name, text in _PRODUCTS if (root / name).exists()]
    return f"<p>In <code>{_cell(root)}</code>:</p><ul>{''.join(rows)}</ul>"


def write_index(run_dir: Path, params: dict, results: list[dict], manifest: dict) -> Path:
    """Write ``run_dir/index.html``."""
    checks = current_checks(params)
    verdict, because = _verdict(params, checks)
    states = stage_states(params["output_dir"])
    record = None
    if checks is not None:
        record = summary_stage.load_record(params)
    ran = {r["stage"]: r for r in results}
    pages = {name: r["html"] for name, r in ran.items()}
    stage_rows = []
    for name in DEPENDS:
        state, reason = states[name]
        if name not in ran and state == "not run":
            continue
        r = ran.get(name)
        page = f'<td><a href="{r["html"]}">{name}</a></td>' if r else f"<td>{name}</td>"
        run_text = f"{r['status']} in {r['seconds']:.1f} s" if r else "not in this run"
        stage_rows.append([page, f'<td class="{state.replace(" ", "")}">{_cell(state)}'
                                 f'{" (" + _cell(reason) + ")" if reason else ""}</td>', run_text,
                           r["error"] if r else ""])
    warnings = campaign_warnings(params["output_dir"])
    warning_html = ("<ul>" + "".join(f"<li><b>{_cell(s)}</b>: {_cell(m)}</li>" for s, m in warnings)
                    + "</ul>") if warnings else "<p>None.</p>"
    if checks is None:
        check_html = f"<p class='stale'>No current checks: {_cell(because)}.</p>"
    else:
        check_html = _table(("check", "value", "limit", "result", "definition / reason"), [
            [c["check"], float(c["value"]) if c["status"] != "n/a" else "n/a", float(c["limit"]),
             f'<td class="{c["status"].replace("/", "")}">{_cell(c["status"])}</td>',
             c["reason"] if c["reason"] else c["definition"]] for c in checks])
    software = ", ".join(f"{k} {v}" for k, v in manifest["software"].items())
    page = f"""<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">
<title>cmoscal report: {_cell(params['campaign'])} {_cell(run_dir.name)}</title><style>{_STYLE}</style></head><body>
<h1>cmoscal calibration report: {_cell(params['campaign'])}</h1>
<p><span class="verdict {verdict}">{verdict}</span> {_cell(because)}.</p>
<p class="muted">Run <code>{_cell(run_dir.name)}</code>, started {_cell(manifest.get('started', '?'))}.
Parameters used: <a href="params.yml">params.yml</a>; inputs: <a href="inventory.ecsv">inventory.ecsv</a>;
environment and timings: <a href="manifest.json">manifest.json</a>.</p>
<h2>Campaign</h2>{_campaign(params, record["files"] if record else None)}
<h2>The model in numbers</h2>{_numbers(record)}
<h2>Warnings</h2>{warning_html}
<h2>Checks</h2>{check_html}
{_comparison(params, pages)}
<h2>Stage pages</h2>{_table(("stage", "products", "this run", "error"), stage_rows)}
<h2>Products</h2>{_products(params, run_dir)}
<p class="muted">Software: {_cell(software)}.</p>
</body></html>"""
    target = run_dir / "index.html"
    with atomic_path(target) as tmp:
        Path(tmp).write_text(page, encoding="utf-8")
    return target
