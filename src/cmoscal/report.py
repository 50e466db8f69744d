"""The report runner: execute the stage notebooks with papermill and archive HTML pages.

All notebooks of a run execute in one Jupyter kernel (started once, IPC transport) through
one client, so the modules are imported once; each page is converted to HTML in the background
while the next notebook runs. A run folder ``report_dir/<run-id>/`` keeps, per stage, the
executed notebook and its HTML page (code hidden, figures embedded), plus the parameters used,
the inputs, ``manifest.json`` (software versions and timings) and ``index.html``;
``report_dir/latest`` points to the newest run. The index's verdict always describes the
products on disk.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from importlib import resources
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from queue import Empty

import yaml

from . import __version__
from .compute import keeping_freed_memory
from .fitsio import atomic_path
from .products import STAGE, campaign_warnings, hold, ledger

# nbformat imports jsonschema, whose format checkers import rfc3987_syntax when installed: it builds ~40
# parsers at import (2-4 s here) for IRI formats no notebook schema uses. Mark it absent, as jsonschema
# allows (python-jsonschema/jsonschema#1428).
sys.modules.setdefault("rfc3987_syntax", None)

__all__ = ["NOTEBOOK_DIR", "ReportError", "export_html", "notebook_for", "run_report", "software_versions"]

NOTEBOOK_DIR = Path(str(resources.files("cmoscal").joinpath("notebooks")))  # shipped inside the package
_EXTERNAL_SCRIPT = re.compile(r'<script[^>]*src="https?://[^"]*"[^>]*>\s*</script>|'
                              r'<script type="module">(?:(?!</script>).)*?https?://.*?</script>', re.S)
# %reset collects the garbage itself; freezing what survives (the modules) keeps each later
# collection to the objects the pages made (a full one costs ~0.1 s a page)
_RESET = "get_ipython().run_line_magic('reset', '-f')\nimport gc\ngc.freeze()"
_PACKAGES = ("numpy", "scipy", "astropy", "numba", "matplotlib", "papermill", "nbconvert", "dask", "distributed")


class ReportError(RuntimeError):
    """A stage notebook failed; the message names the stage, the cell and the error."""


def notebook_for(stage: str) -> Path:
    """The notebook of ``stage`` (:attr:`cmoscal.products.Stage.notebook`, shipped with the package)."""
    path = NOTEBOOK_DIR / STAGE[stage].notebook
    if not path.exists():
        raise FileNotFoundError(f"no notebook for stage {stage} in {NOTEBOOK_DIR}")
    return path


def software_versions() -> dict:
    """Python, cmoscal and the versions of the packages the results depend on."""
    found = {"python": platform.python_version(), "cmoscal": __version__}
    for name in _PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "not installed"
    return found


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


def _connect(client, timeout: float = 120) -> None:
    """Open the client every page uses and wait until the kernel answers on shell and IOPub.

    Once per run: each new client waits for IOPub to fall silent (0.2 s), and a just-opened
    IOPub subscription can miss messages (ZeroMQ's slow joiner).
    """
    client.start_channels(hb=False)
    client.wait_for_ready(timeout=timeout)
    client.allow_stdin = False


def _clear(kernel, client, timeout: float = 120) -> None:
    """Empty the kernel's namespace, so one page's arrays do not stay in memory for the next."""
    request = client.execute(_RESET, silent=True, store_history=False, allow_stdin=False)
    deadline = time.monotonic() + timeout
    reply = {}
    while reply.get("parent_header", {}).get("msg_id") != request:
        if not kernel.is_alive():
            raise RuntimeError("the kernel died before the page started")
        if time.monotonic() > deadline:
            raise TimeoutError(f"the kernel did not clear its namespace within {timeout:.0f} s")
        try:
            reply = client.get_shell_msg(timeout=1)
        except Empty:
            continue
    if reply["content"]["status"] != "ok":
        raise RuntimeError(f"clearing the kernel failed: {reply['content'].get('evalue', '')}")


def _kernel_manager(name: str | None, sockets: str):
    """A manager of the kernel the pages run in: the registered kernel ``name``, or (None) this very Python.

    This Python needs no registered kernel: ``pip install cmoscal`` is enough to write a report.
    """
    from jupyter_client.kernelspec import KernelSpec, KernelSpecManager, NoSuchKernel
    from jupyter_client.manager import KernelManager

    class ThisPython(KernelSpecManager):
        def get_kernel_spec(self, kernel_name):
            return KernelSpec(argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                              display_name=f"Python ({sys.executable})", language="python")

    manager = KernelManager(kernel_name=name or "this-python", transport="ipc", ip=str(Path(sockets) / "kernel"),
                            **({} if name else {"kernel_spec_manager": ThisPython()}))
    try:
        _ = manager.kernel_spec  # looked up now, so that a missing kernel is one line
    except NoSuchKernel:
        raise ReportError(f"kernel: no Jupyter kernel named {name!r} is registered (jupyter kernelspec list); "
                          "null runs the report in this Python") from None
    return manager


@functools.cache
def _engine() -> str:
    """Register papermill's nbclient engine working through the run's one kernel client; its name.

    papermill's own engine opens a client per notebook and waits for its IOPub to fall silent.
    """
    from papermill.clientwrap import PapermillNotebookClient
    from papermill.engines import NBClientEngine, papermill_engines
    from papermill.log import logger

    class SharedClient(NBClientEngine):
        @classmethod
        def execute_managed_notebook(cls, nb_man, kernel_name, log_output=False, km=None, kc=None, **_):
            notebook = PapermillNotebookClient(nb_man, km=km, kernel_name=kernel_name, log=logger,
                                               log_output=log_output)
            notebook.kc = kc
            return notebook.execute()

    papermill_engines.register("cmoscal", SharedClient)
    return "cmoscal"


def _execute(stage: str, run_dir: Path, params_file: Path, root: Path, kernel, client, first: bool) -> dict:
    import papermill
    from papermill.exceptions import PapermillExecutionError

    source = notebook_for(stage)
    target = run_dir / source.name
    start = time.perf_counter()
    result = dict(stage=stage, notebook=source.name, html=target.with_suffix(".html").name, status="passed",
                  error="")
    try:
        if first:
            _connect(client)
        _clear(kernel, client)
        papermill.execute_notebook(source, target, parameters=dict(params_file=str(params_file), root=str(root)),
                                   engine_name=_engine(), km=kernel, kc=client, kernel_name=kernel.kernel_name,
                                   progress_bar=False,
                                   request_save_on_cell_execute=False)  # written once, when the page is done
    except PapermillExecutionError as err:
        result.update(status="failed", error=f"cell {err.exec_count}: {err.ename}: {err.evalue}")
    except Exception as err:  # the kernel died or could not start: the run stops with the reason
        result.update(status="failed", error=f"{type(err).__name__}: {err}")
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


def _link_latest(report_dir: Path, run_id: str) -> None:
    link = report_dir / "latest"
    tmp = report_dir / f".latest.{os.getpid()}"
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(run_id)
    os.replace(tmp, link)


def _run_folder(report_dir: Path) -> Path:
    run_id = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    run_dir, suffix = report_dir / run_id, 1
    while run_dir.exists():
        run_dir, suffix = report_dir / f"{run_id}-{suffix}", suffix + 1
    run_dir.mkdir(parents=True)
    return run_dir


def run_report(params_file: str | Path, params: dict, stages: list[str], root: str | Path = "."):
    """Execute ``stages`` in order and archive the run.

    Parameters
    ----------
    params_file : str or Path
        The campaign file as given (recorded in the manifest).
    params : dict
        Its validated parameters (see :func:`cmoscal.config.load_params`).
    stages : list of str
        Stage names, in pipeline order.
    root : str or Path, default "."
        Directory relative paths refer to.

    Returns
    -------
    run_dir : Path
    checks : astropy.table.Table or None
        The checks, when they describe the current products.

    Raises
    ------
    ReportError
        When a stage fails: its HTML page is written, later stages are not run.
    """
    from .index import current_checks, write_index

    report_dir = Path(params["report_dir"])
    run_dir = _run_folder(report_dir)
    used = run_dir / "params.yml"
    used.write_text(yaml.safe_dump(params, sort_keys=False))
    manifest = dict(campaign=params["campaign"], run_id=run_dir.name, software=software_versions(),
                    platform=platform.platform(), params_file=str(Path(params_file).resolve()), stages=stages,
                    started=datetime.now(UTC).isoformat(timespec="seconds"))
    results, said = [], set()
    with hold(params["output_dir"], f"cmoscal report {params_file}"), tempfile.TemporaryDirectory() as sockets, \
            ThreadPoolExecutor(max_workers=1) as exporter:
        kernel = _kernel_manager(params["kernel"], sockets)
        pages, client = [], None
        try:
            kernel.start_kernel(cwd=str(NOTEBOOK_DIR), env=keeping_freed_memory(dict(os.environ)))
            client = kernel.blocking_client()  # after the start: it copies the connection info
            for i, stage in enumerate(stages, 1):
                print(f"[{i}/{len(stages)}] {stage} ...", end=" ", flush=True)
                result = _execute(stage, run_dir, used, Path(root).resolve(), kernel, client, first=i == 1)
                print(f"{result['status']} in {result['seconds']:.1f} s", flush=True)
                for _, message in campaign_warnings(params["output_dir"], [stage]):
                    if message not in said:
                        said.add(message)
                        print(f"cmoscal: warning: {message}", file=sys.stderr, flush=True)
                if (run_dir / result["notebook"]).exists():
                    pages.append(exporter.submit(export_html, run_dir / result["notebook"]))
                results.append(result)
                if result["status"] == "failed":
                    break
        finally:
            if client is not None:
                client.stop_channels()
            if kernel.has_kernel:
                kernel.shutdown_kernel(now=True)
        for page in pages:
            page.result()
        inventory = Path(params["output_dir"]) / "inventory.ecsv"
        if inventory.exists():
            shutil.copy2(inventory, run_dir / "inventory.ecsv")
        manifest.update(finished=datetime.now(UTC).isoformat(timespec="seconds"), results=results,
                        ledger=ledger(params["output_dir"]))
        (run_dir / "manifest.json").write_text(json.dumps(manifest, indent=2))
        write_index(run_dir, params, results, manifest)
        checks = current_checks(params)
    _link_latest(report_dir, run_dir.name)
    failed = [r for r in results if r["status"] == "failed"]
    if failed:
        r = failed[0]
        raise ReportError(f"stage {r['stage']} failed at {r['error']} (see {run_dir / r['html']})")
    return run_dir, checks
