"""One small thing of each kind a user adds (README, "Extending cmoscal"): a DQ flag (UNRELIABLE_DARK), a check
(unreliable dark fraction), a product (hot_pixels.reg) and a stage (dark_budget). Each works from its one
declaration and recovers what it should."""

import re
import shutil

import numpy as np
import pytest

from cmoscal.dq import DQ, dq_table, has
from cmoscal.fitsio import read_table
from cmoscal.products import product
from cmoscal.simulate import dark_truth, read_truth
from cmoscal.stages import dark_budget, hot_pixels, summary


def copy_of(campaign, tmp_path, **overrides):
    """The session campaign's products in a folder of their own, with other parameters."""
    shutil.copytree(campaign["root"] / "out", tmp_path / "out")
    params = dict(campaign["params"], output_dir=str(tmp_path / "out"), **overrides)
    return params


def test_unreliable_dark_flags_exactly_the_pixels_known_worse_than_the_limit(campaign, tmp_path):
    def relative_error(model):  # as the model states it, at hot_reference_temperature (the warmest), longest t
        return np.sqrt(model.log_rate(model.trange[1], model.exprange[1])[1])

    limit = float(np.percentile(relative_error(campaign["results"]["hot_pixels"]["model"]), 90))  # flags ~10 %
    params = copy_of(campaign, tmp_path, unreliable_dark_error=limit)
    model = hot_pixels.run(params)["model"]
    relative = relative_error(model)
    expected = (relative > limit) & ~has(model.dq, DQ.DO_NOT_USE)
    flagged = has(model.dq, DQ.UNRELIABLE_DARK)
    assert 0.05 < flagged.mean() < 0.15 and np.array_equal(flagged, expected)
    assert "UNRELIABLE_DARK" in dq_table()["NAME"]
    checks = {c["check"]: c for c in summary.run(params)}
    row = checks["unreliable dark fraction"]
    assert row["value"] == pytest.approx(flagged.mean()) and row["status"] == "FAIL"
    assert checks["products consistent"]["status"] == "FAIL"  # hot_pixels ran after the evaluation
    default = {c["check"]: c for c in campaign["results"]["summary"]}["unreliable dark fraction"]
    assert default["status"] == "pass" and default["value"] < default["limit"]


def test_hot_pixel_regions_mark_every_flagged_pixel_in_ds9_coordinates(campaign):
    params = campaign["params"]
    table = read_table(product(params, "hot_pixels"))
    lines = product(params, "hot_pixel_regions").read_text().splitlines()
    assert lines[0] == "# Region file format: DS9 version 4.1" and lines[2] == "image"
    boxes = [re.fullmatch(r"box\((\d+),(\d+),1,1,0\) # color=(\w+) text=\{(\w+)\}", line).groups()
             for line in lines[3:]]
    assert len(boxes) == len(table) > 0
    for (x, y, color, kind), row in zip(boxes, table):
        assert (int(x) - 1, int(y) - 1, kind) == (row["x"], row["y"], row["class"])
        assert color == {"HOT": "red", "WARM": "orange"}[kind]


def test_dark_budget_recovers_the_true_rate_and_dark_limited_exposure(campaign):
    budget = campaign["results"]["dark_budget"]
    model = campaign["results"]["hot_pixels"]["model"]
    truth = read_truth(campaign["root"])
    assert len(budget) == 11 and budget["temperature"][0] == model.trange[0]
    assert budget["temperature"][-1] == pytest.approx(model.trange[1])
    t_ref = budget.meta["exptime"]
    usable = ~has(model.dq, DQ.DO_NOT_USE)
    read_variance = truth["read_noise"][usable] ** 2 + 1 / 12  # a frame's read noise includes the ADC's 1 DN steps
    for row in budget[::5]:
        signal = dark_truth(truth, row["temperature"], t_ref)[usable]  # 64x64: every usable pixel counts
        assert row["median_rate"] == pytest.approx(np.median(signal) / t_ref, rel=0.03)
        assert row["tail_rate"] > 3 * row["median_rate"]  # the hot-pixel tail
        assert row["median_rate_e"] == pytest.approx(row["median_rate"] * model.meta["GAIN"])
        limit = t_ref * (truth["gain"] * read_variance / signal) ** (1 / truth["dark_gamma"][usable])
        assert row["read_limited_exptime"] == pytest.approx(np.median(limit), rel=0.03)
    assert np.all(np.diff(budget["read_limited_exptime"]) < 0)  # warmer: dark-limited sooner
    assert dark_budget.load(campaign["params"])["median_rate"][0] == budget["median_rate"][0]


def test_dark_budget_refuses_temperatures_the_model_cannot_reach(campaign, tmp_path):
    lo, hi = campaign["results"]["hot_pixels"]["model"].trange
    params = copy_of(campaign, tmp_path, budget_temperatures=[lo, hi + 3.0, hi + 50.0])
    with pytest.warns(UserWarning, match="budget_temperatures: temperature .* more than 5 degC outside"):
        budget = dark_budget.run(params)
    assert np.isfinite(budget["median_rate"][:2]).all() and "extrapolated" in budget["note"][1]
    assert np.isnan(budget["median_rate"][2]) and budget["note"][2].startswith("refused: ")


def test_the_readme_lists_every_dq_flag_with_its_value():
    from pathlib import Path

    from cmoscal.dq import FLAGS

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    for flag in FLAGS:
        assert f"| {flag.value} | {flag.name} |" in readme, flag.name
