"""What changed since the reference campaign: the planted changes of an aged sensor are found, nothing else."""

import re
import subprocess
import sys

import numpy as np
import pytest
from astropy.io import fits
from conftest import write_params

from cmoscal.compare import CLASSES, compare_models
from cmoscal.config import load_params
from cmoscal.errors import CampaignError
from cmoscal.model import CalibrationModel
from cmoscal.simulate import read_truth, simulate_campaign
from cmoscal.stages import STAGES

AGE = 10.0  # years: 0.5 % of the pixels turn hot, the bias rises by 5 DN, the dark rate by 50 %


@pytest.fixture(scope="module")
def aged(campaign, tmp_path_factory):
    """The session campaign's sensor AGE years later, calibrated and compared with it."""
    root = tmp_path_factory.mktemp("aged")
    simulate_campaign(root, shape=(64, 64), age=AGE, seed=3)
    params = load_params(write_params(root / "p.yml", campaign="aged", raw_dir="raw", output_dir="out", loo_pixels=0,
                                      reference_campaign=str(campaign["root"] / "out")), root=root)
    for name in ("inventory", "bias", "dark_masters", "dark_model", "hot_pixels", "comparison"):
        result = STAGES[name](params)
    return dict(root=root, params=params, result=result, truth=read_truth(root), reference=campaign["root"] / "out")


def test_new_hot_pixels_are_found_and_nothing_else(aged):
    classes, planted = aged["result"].classes, aged["truth"]["new_hot"].astype(bool)
    assert planted.sum() >= 15
    new = classes == CLASSES.index("new")
    assert np.sum(new & planted) / planted.sum() >= 0.99
    assert not np.any(new & ~planted)  # no false new pixel at the noise level
    assert not np.any(classes == CLASSES.index("gone"))
    persistent = classes == CLASSES.index("persistent")
    assert np.all(persistent <= aged["truth"]["hot"])
    changed = aged["result"].changed
    assert set(changed["class"]) <= {"new", "reclassified"} and np.all(changed["rate_z"][changed["class"] == "new"] > 5)


def test_the_planted_bias_shift_is_recovered_within_its_uncertainty(aged):
    changes = {row["quantity"]: row for row in aged["result"].changes}
    a = changes["bias a"]
    assert abs(a["median_change"] - 0.5 * AGE) < 3 * a["median_error"] and a["median_error"] < 0.02
    assert a["moved_fraction"] == 0 and 0.85 < a["z_spread"] < 1.15  # the pixels moved together
    for name in ("bias b", "B", "gamma"):  # unchanged in the truth: no significant shift, nobody moved
        assert abs(changes[name]["shift_sigma"]) < 4, name
        assert changes[name]["moved_fraction"] < 0.002 and 0.85 < changes[name]["z_spread"] < 1.15, name
    rate = next(row for name, row in changes.items() if name.startswith("dark rate"))
    planted = 100 * np.log(1 + 0.05 * AGE)  # the dark rate grows 5 % a year (in % of ln rate)
    assert abs(rate["median_change"] - planted) < 3 * rate["median_error"] and rate["shift_sigma"] > 10
    assert rate["moved_fraction"] == pytest.approx(aged["truth"]["new_hot"].mean(), abs=2 / 4096)


def test_products_and_the_command_line_say_the_same(aged):
    folder = aged["root"] / "out" / "comparison"
    with fits.open(folder / "change_maps.fits") as hdul:
        assert np.array_equal(hdul[0].data, aged["result"].classes)
        assert hdul[0].header["REFMODEL"] == fits.getheader(aged["reference"] / "calibration_model.fits")["MODELID"]
        assert {"D_BIAS_A", "Z_BIAS_A", "D_DARK_RATE", "Z_GAMMA"} <= {h.name for h in hdul}
    result = subprocess.run([sys.executable, "-m", "cmoscal.cli", "compare", aged["reference"], aged["root"] / "out"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    new = int(np.sum(aged["result"].classes == CLASSES.index("new")))
    assert f"warm/hot pixels: {new} new" in result.stdout
    shift, error = map(float, re.search(r"bias a: shifted, \+([\d.]+) \+/- ([\d.]+) DN", result.stdout).groups())
    assert abs(shift - 0.5 * AGE) < 3 * error


def test_models_that_cannot_be_compared_are_refused(campaign, aged, tmp_path):
    reference = CalibrationModel.read(aged["reference"])
    current = CalibrationModel.read(aged["root"] / "out")
    warm = CalibrationModel.read(aged["root"] / "out")
    warm.trange = (40.0, 60.0)
    with pytest.raises(CampaignError, match="ranges do not overlap"):
        compare_models(reference, warm)
    small = CalibrationModel.read(aged["root"] / "out")
    small.dq = small.dq[:32]
    with pytest.raises(CampaignError, match="differ in shape"):
        compare_models(current, small)
    params = dict(aged["params"], reference_campaign=str(aged["root"] / "out"))
    with pytest.raises(CampaignError, match="this campaign's own output_dir"):
        STAGES["comparison"](params)
