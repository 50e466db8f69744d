"""The report index: the one page a reviewer opens first, describing the products on disk.

Its verdict comes from the checks only when the summary stage is current; otherwise it says
the verdict is stale and which stage made it so. Every campaign warning of every stage is
listed. The page is self-contained (no script, no request leaving the machine) and printable.
"""

from __future__ import annotations

import html
from pathlib import Path

from astropy.table import Table

from .fitsio import atomic_path, read_table
from .products import DEPENDS, campaign_warnings, out, stage_states

__all__ = ["current_checks", "write_index"]

_STYLE = """body{font-family:sans-serif;max-width:72em;margin:2em auto;color:#222;line-height:1.35}
table{border-collapse:collapse;margin:.6em 0}td,th{border:1px solid #ccc;padding:.25em .55em;text-align:left;
vertical-align:top}th{background:#f3f3f3}.pass{color:#176f2c}.FAIL,.failed{color:#a4161a;font-weight:bold}
.stale,.na{color:#8a6d00}.verdict{font-size:1.5em;font-weight:bold;padding:.3em .6em;display:inline-block}
.SUCCESS{background:#e3f4e6;color:#176f2c}.FAILED{background:#fde8e8;color:#a4161a}
.STALE{background:#fff4d6;color:#8a6d00}ul.warnings li{margin:.2em 0}
@media print{a{color:#222;text-decoration:none}}"""


def current_checks(params: dict) -> Table | None:
    """The checks, if the summary stage is current (its products describe the data); else None."""
    path = out(params, "checks.ecsv")
    if stage_states(params["output_dir"])["summary"][0] != "current" or not path.exists():
        return None
    return read_table(path)


def _cell(value) -> str:
    return html.escape(str(value))


def _table(header, rows) -> str:
    head = "".join(f"<th>{_cell(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell if cell.startswith("<td") else f"<td>{_cell(cell)}</td>" for cell in row)
                   + "</tr>" for row in rows)
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


def write_index(run_dir: Path, params: dict, results: list[dict], manifest: dict) -> Path:
    """Write ``run_dir/index.html``."""
    checks = current_checks(params)
    verdict, because = _verdict(params, checks)
    states = stage_states(params["output_dir"])
    ran = {r["stage"]: r for r in results}
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
    warning_html = ("<ul class='warnings'>" + "".join(f"<li><b>{_cell(s)}</b>: {_cell(m)}</li>" for s, m in warnings)
                    + "</ul>") if warnings else "<p>None.</p>"
    if checks is None:
        check_html = f"<p class='stale'>No current checks: {_cell(because)}.</p>"
    else:
        check_html = _table(("check", "value", "limit", "result", "definition / reason"), [
            [c["check"], f"{c['value']:.4g}" if c["status"] != "n/a" else "n/a", f"{c['limit']:.4g}",
             f'<td class="{c["status"].replace("/", "")}">{_cell(c["status"])}</td>',
             c["reason"] if c["reason"] else c["definition"]] for c in checks])
    software = ", ".join(f"{k} {v}" for k, v in manifest["software"].items())
    page = f"""<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">
<title>cmoscal report: {_cell(params['campaign'])} {_cell(run_dir.name)}</title><style>{_STYLE}</style></head><body>
<h1>cmoscal calibration report: {_cell(params['campaign'])}</h1>
<p><span class="verdict {verdict}">{verdict}</span> {_cell(because)}.</p>
<p>Run <code>{_cell(run_dir.name)}</code>. Products: <code>{_cell(params['output_dir'])}</code>.
Parameters used: <a href="params.yml">params.yml</a>; inputs: <a href="inventory.ecsv">inventory.ecsv</a>;
environment: <a href="manifest.json">manifest.json</a>.</p>
<h2>Warnings</h2>{warning_html}
<h2>Checks</h2>{check_html}
<h2>Stages</h2>{_table(("stage", "products", "this run", "error"), stage_rows)}
<p>Software: {_cell(software)}.</p>
</body></html>"""
    target = run_dir / "index.html"
    with atomic_path(target) as tmp:
        Path(tmp).write_text(page, encoding="utf-8")
    return target
