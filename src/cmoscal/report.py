"""The report runner: execute the stage notebooks with papermill and archive HTML pages.

A run folder ``report_dir/<run-id>/`` keeps, per stage, the executed notebook and its
HTML page (code hidden, figures embedded), plus the parameters used, the inputs
manifest, the software version and ``index.html`` with the pass/fail checks;
``report_dir/latest`` points to the newest run.
"""

from __future__ import annotations

import html
import json
import os
import platform
import re
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import yaml
from astropy.table import Table

from . import __version__
from .fitsio import atomic_path

__all__ = ["NOTEBOOK_DIR", "ReportError", "export_html", "notebook_for", "run_report"]

NOTEBOOK_DIR = Path(__file__).resolve().parents[2] / "notebooks"
_EXTERNAL_SCRIPT = re.compile(r'<script[^>]*src="https?://[^"]*"[^>]*>\s*</script>|'
                              r'<script type="module">[^<]*https?://[^<]*</script>')


class ReportError(RuntimeError):
    """A stage notebook failed; the message names the stage, the cell and the error."""


def notebook_for(stage: str) -> Path:
    """The notebook of ``stage`` (``notebooks/NN_<stage>.ipynb``)."""
    found = sorted(NOTEBOOK_DIR.glob(f"[0-9][0-9]_{stage}.ipynb"))
    if not found:
        raise FileNotFoundError(f"no notebook for stage {stage} in {NOTEBOOK_DIR}")
    return found[0]


def export_html(notebook: Path) -> Path:
    """Convert an executed notebook to a self-contained HTML page without code."""
    import nbformat
    from nbconvert import HTMLExporter

    exporter = HTMLExporter(template_name="lab", exclude_input=True, exclude_input_prompt=True,
                            exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(nbformat.read(notebook, as_version=4))
    target = notebook.with_suffix(".html")
    with atomic_path(target) as tmp:
        Path(tmp).write_text(_EXTERNAL_SCRIPT.sub("", body), encoding="utf-8")
    return target


def _execute(stage: str, run_dir: Path, params_file: Path, root: Path, kernel: str) -> dict:
    import papermill
    from papermill.exceptions import PapermillExecutionError

    source = notebook_for(stage)
    target = run_dir / source.name
    start = time.perf_counter()
    result = dict(stage=stage, notebook=source.name, html=target.with_suffix(".html").name, status="passed",
                  error="")
    try:
        papermill.execute_notebook(source, target, parameters=dict(params_file=str(params_file), root=str(root)),
                                   kernel_name=kernel, cwd=str(NOTEBOOK_DIR), progress_bar=False)
    except PapermillExecutionError as err:
        result.update(status="failed", error=f"cell {err.exec_count}: {err.ename}: {err.evalue}")
    result["seconds"] = round(time.perf_counter() - start, 1)
    if target.exists():
        export_html(target)
    return result


def _checks(params: dict):
    path = Path(params["output_dir"]) / "checks.ecsv"
    return Table.read(path) if path.exists() else None


def _index(run_dir: Path, params: dict, results: list[dict], run_id: str) -> Path:
    checks = _checks(params)
    rows = "".join(
        f'<tr class="{r["status"]}"><td><a href="{r["html"]}">{r["stage"]}</a></td><td>{r["status"]}</td>'
        f'<td>{r["seconds"]:.1f} s</td><td>{html.escape(r["error"])}</td></tr>' for r in results)
    if checks is None:
        check_html = "<p>No checks yet: the summary stage has not run for these products.</p>"
        verdict = ""
    else:
        header = "<tr><th>check</th><th>value</th><th>limit</th><th>result</th><th>definition</th></tr>"
        check_html = "<table>" + header + "".join(
            f'<tr class="{"passed" if c["passed"] else "failed"}"><td>{c["check"]}</td><td>{c["value"]:.4g}</td>'
            f'<td>{c["limit"]:.4g}</td><td>{"pass" if c["passed"] else "FAIL"}</td><td>{c["definition"]}</td></tr>'
            for c in checks) + "</table>"
        verdict = "SUCCESS" if all(checks["passed"]) else "FAILED"
    failed = any(r["status"] == "failed" for r in results)
    page = f"""<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">
<title>cmoscal report: {html.escape(params['campaign'])} {run_id}</title>
<style>body{{font-family:sans-serif;max-width:70em;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:left}}
tr.passed td:nth-child(2),tr.passed td:nth-child(4){{color:#176f2c}}tr.failed{{background:#fde8e8}}
.verdict{{font-size:1.4em;font-weight:bold}}</style></head><body>
<h1>cmoscal calibration report: {html.escape(params['campaign'])}</h1>
<p>Run <code>{run_id}</code> with cmoscal {__version__}. Products: <code>{html.escape(params['output_dir'])}</code>.
Parameters used: <a href="params.yml">params.yml</a>; inputs: <a href="inventory.ecsv">inventory.ecsv</a>;
environment: <a href="manifest.json">manifest.json</a>.</p>
<h2>Stages</h2>{"<p class='verdict'>A stage FAILED: this run is incomplete.</p>" if failed else ""}
<table><tr><th>stage</th><th>status</th><th>time</th><th>error</th></tr>{rows}</table>
<h2>Checks <span class="verdict">{verdict}</span></h2>{check_html}
</body></html>"""
    target = run_dir / "index.html"
    with atomic_path(target) as tmp:
        Path(tmp).write_text(page, encoding="utf-8")
    return target


def _link_latest(report_dir: Path, run_id: str) -> None:
    link = report_dir / "latest"
    tmp = report_dir / f".latest.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(run_id)
    os.replace(tmp, link)


def run_report(params_file: str | Path, params: dict, stages: list[str], root: str | Path = ".") -> Path:
    """Execute ``stages`` in order and archive the run; return the run folder.

    Parameters
    ----------
    params_file : str or Path
        The campaign file as given (copied into the manifest).
    params : dict
        Its validated parameters (see :func:`cmoscal.config.load_params`).
    stages : list of str
        Stage names, in pipeline order.
    root : str or Path, default "."
        Directory relative paths refer to.

    Raises
    ------
    ReportError
        When a stage fails: its HTML page is written, later stages are not run.
    """
    report_dir = Path(params["report_dir"])
    run_id = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    run_dir = report_dir / run_id
    suffix = 1
    while run_dir.exists():
        run_dir = report_dir / f"{run_id}-{suffix}"
        suffix += 1
    run_id = run_dir.name
    run_dir.mkdir(parents=True)
    used = run_dir / "params.yml"
    used.write_text(yaml.safe_dump(params, sort_keys=False))
    manifest = dict(campaign=params["campaign"], run_id=run_id, cmoscal=__version__, python=platform.python_version(),
                    platform=platform.platform(), params_file=str(Path(params_file).resolve()), stages=stages,
                    started=datetime.now(timezone.utc).isoformat(timespec="seconds"))
    results = []
    for i, stage in enumerate(stages, 1):
        print(f"[{i}/{len(stages)}] {stage} ...", end=" ", flush=True)
        result = _execute(stage, run_dir, used, Path(root).resolve(), params["kernel"])
        print(f"{result['status']} in {result['seconds']:.1f} s", flush=True)
        results.append(result)
        if result["status"] == "failed":
            break
    inventory = Path(params["output_dir"]) / "inventory.ecsv"
    if inventory.exists():
        shutil.copy2(inventory, run_dir / "inventory.ecsv")
    manifest.update(finished=datetime.now(timezone.utc).isoformat(timespec="seconds"), results=results)
    (run_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
    _index(run_dir, params, results, run_id)
    _link_latest(report_dir, run_id)
    failed = [r for r in results if r["status"] == "failed"]
    if failed:
        r = failed[0]
        raise ReportError(f"stage {r['stage']} failed at {r['error']} (see {run_dir / r['html']})")
    return run_dir
