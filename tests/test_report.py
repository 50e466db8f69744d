"""The notebook suite through papermill on a tiny campaign, as `make report` runs it."""

import json
import os
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from browser import CHROMIUM, Browser
from conftest import write_params
from jupyter_client.manager import KernelManager

from cmoscal.compare import describe
from cmoscal.config import load_params
from cmoscal.index import format_value
from cmoscal.report import ReportError, _clear, _connect, run_report
from cmoscal.simulate import read_truth, simulate_campaign
from cmoscal.stages import STAGES


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny campaign through the whole notebook suite, compared with an earlier campaign of the same sensor."""
    root = tmp_path_factory.mktemp("tiny")
    layout = dict(shape=(32, 32), temperatures=(-5, 5, 15, 25), exptimes=(2, 10, 40), frames=3, bias_frames=4, seed=11)
    simulate_campaign(root / "before", **layout)
    before = load_params(write_params(root / "before.yml", campaign="before", raw_dir="before/raw", loo_pixels=0),
                         root=root)
    for stage in ("inventory", "bias", "dark_masters", "dark_model", "hot_pixels"):
        STAGES[stage](before)
    simulate_campaign(root / "data", bad_files=True, held_out=True, age=10, **layout)
    path = write_params(root / "tiny.yml", campaign="tiny", raw_dir="data/raw", science_dir="data/held_out",
                        reference_campaign="products/before", loo_pixels=0,
                        checks={"rejected_fraction_max": 0.1})  # 5 bad files among 52 good ones
    params = load_params(path, root=root)
    run_dir, checks = run_report(path, params, list(STAGES), root=root)
    return dict(root=root, path=path, params=params, run_dir=run_dir, checks=checks)


def test_every_stage_runs_and_is_archived(tiny):
    run_dir, report_dir = tiny["run_dir"], tiny["root"] / "reports" / "tiny"
    assert (report_dir / "latest").resolve() == run_dir.resolve()
    pages = sorted(p.name for p in run_dir.glob("*.html"))
    assert pages == sorted([f"{i:02d}_{s}.html" for i, s in enumerate(STAGES, 1)] + ["index.html"])
    for page in run_dir.glob("0*.html"):
        text = page.read_text()
        assert "data:image/png;base64" in text and "Traceback" not in text
        assert "plots.start_notebook" not in text  # code is hidden
        assert page.stat().st_size < 20e6
    for name in ("params.yml", "inventory.ecsv", "manifest.json"):
        assert (run_dir / name).exists()
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert [r["status"] for r in manifest["results"]] == ["passed"] * len(STAGES)
    index = (run_dir / "index.html").read_text()
    assert 'class="verdict SUCCESS"' in index and "leave-one-out" in index and "rejected files" in index
    assert tiny["checks"].meta["verdict"] == "SUCCESS"
    for package in ("numpy", "astropy", "scipy", "numba"):
        assert package in manifest["software"]
    for stage in STAGES:
        assert f'href="{run_dir.name}' not in index and f"_{stage}.html" in index
    frames = Table.read(tiny["root"] / "products" / "tiny" / "calibrated" / "frames.ecsv")
    assert len(frames) > 10 and set(frames["status"]) == {"calibrated"}
    assert (run_dir / "09_calibration.html").read_text().count("<img ") == 2  # both figures drawn


def test_report_products_recover_truth(tiny):
    out = tiny["root"] / "products" / "tiny"
    truth = read_truth(tiny["root"] / "data")
    b = fits.getdata(out / "bias_model" / "bias_b_map.fits")
    sigma = fits.getdata(out / "bias_model" / "bias_b_sigma_map.fits")
    assert abs(np.median((b - truth["bias_b"]) / sigma)) < 0.2
    B = fits.getdata(out / "dark_model" / "dark_B_map.fits")
    assert abs(np.median(B[~truth["hot"]]) - 0.10) < 0.01


def test_the_record_renders_offline_in_a_browser(tiny, tmp_path):
    if CHROMIUM is None:
        if os.environ.get("CMOSCAL_REQUIRE_BROWSER"):
            pytest.fail("chromium is not installed (apt-get install chromium)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    run_dir, out = tiny["run_dir"], tiny["root"] / "products" / "tiny"
    with Browser(tmp_path / "profile") as browser:
        index = browser.open(run_dir / "index.html")
        page = browser.open(run_dir / "10_comparison.html")
    for shown in (index, page):
        assert shown["requests"] and all(url.startswith(("file://", "data:")) for url in shown["requests"])
        assert not shown["broken"]
    for link in index["links"]:  # every link of the record points at a file or folder on disk
        assert Path(unquote(urlparse(link).path)).exists(), link
    numbers = Table.read(out / "model_numbers.ecsv")
    text = index["text"]
    assert "SUCCESS" in text and "Since the reference campaign" in text
    for quantity in ("bias b", "read noise", "gamma", "gain"):
        row = numbers[numbers["quantity"] == quantity][0]
        assert f"{quantity}\t{format_value(float(row['median']))}" in text, quantity
    changes, pixels = (Table.read(out / "comparison" / f"{name}.ecsv") for name in ("changes", "pixels"))
    summary = describe(changes, pixels, changes.meta["sigma"])
    assert summary[0] in text and summary[0] in page["text"] and summary[1] in text
    assert page["images"] >= 3 and "What changed since the reference campaign" in page["text"]


def test_chosen_stages_rerun_on_existing_products(tiny):
    run_dir, checks = run_report(tiny["path"], tiny["params"], ["dark_model", "hot_pixels"], root=tiny["root"])
    assert run_dir != tiny["run_dir"]
    assert sorted(p.name for p in run_dir.glob("0*.html")) == ["04_dark_model.html", "05_hot_pixels.html"]
    assert (tiny["root"] / "reports" / "tiny" / "latest").resolve() == run_dir.resolve()
    index = (run_dir / "index.html").read_text()
    assert checks is None and 'class="verdict STALE"' in index  # the old checks describe older products
    assert "hot_pixels ran after it" in index and '<td class="pass">' not in index
    run_dir, checks = run_report(tiny["path"], tiny["params"], ["evaluation", "summary"], root=tiny["root"])
    assert checks is not None and 'class="verdict SUCCESS"' in (run_dir / "index.html").read_text()


def test_a_failing_stage_stops_the_run_and_is_reported(tmp_path):
    (tmp_path / "raw").mkdir()
    path = write_params(tmp_path / "empty.yml", campaign="empty", raw_dir="raw")
    params = load_params(path, root=tmp_path)
    with pytest.raises(ReportError, match=r"stage inventory failed at cell \d+: FileNotFoundError: .*no FITS files"):
        run_report(path, params, ["inventory", "bias"], root=tmp_path)
    run_dir = (tmp_path / "reports" / "empty" / "latest").resolve()
    assert (run_dir / "01_inventory.html").exists() and not (run_dir / "02_bias.html").exists()
    index = (run_dir / "index.html").read_text()
    assert '<td class="failed">failed' in index and 'class="verdict STALE"' in index


def test_each_page_starts_in_an_empty_namespace_and_a_dead_kernel_is_named(tmp_path):
    kernel = KernelManager(kernel_name="cmoscal", transport="ipc", ip=str(tmp_path / "kernel"))
    kernel.start_kernel()
    client = kernel.blocking_client()
    try:
        _connect(client, timeout=60)  # straight after the start, as for the first page
        client.execute_interactive("frame = 1", timeout=60)
        _clear(kernel, client, timeout=60)
        reply = client.execute_interactive("", user_expressions={"left": "'frame' in dir()"}, timeout=60)
        assert reply["content"]["user_expressions"]["left"]["data"]["text/plain"] == "False"
    finally:
        kernel.shutdown_kernel(now=True)
    with pytest.raises(RuntimeError, match="the kernel died"):
        _clear(kernel, client, timeout=5)
    client.stop_channels()
