"""Campaigns as real folders hold them: odd containers and files, one frame per group, cosmic rays,
full well, too little coverage. Each defect of the issues has a test here that failed before."""

import re

import numpy as np
import pytest
from astropy.io import fits
from conftest import write_params

from cmoscal.config import load_params
from cmoscal.dq import DQ
from cmoscal.errors import CampaignError
from cmoscal.model import CalibrationModel
from cmoscal.products import campaign_warnings, stage_states
from cmoscal.simulate import dark_truth, read_truth, simulate_campaign
from cmoscal.stages import STAGES, dark_model, hot_pixels, summary
from cmoscal.stages import inventory as inventory_stage
from cmoscal.stages.summary import files_accounted

SMALL = dict(shape=(48, 48), temperatures=(-10, 0, 10, 20), exptimes=(2, 10, 40), frames=3, bias_frames=6)


def calibrate(root, name="out", stages=STAGES, **overrides):
    params = load_params(write_params(root / f"{name}.yml", campaign=name, raw_dir="raw", output_dir=name,
                                      loo_pixels=0, **overrides), root=root)
    return params, {stage: STAGES[stage](params) for stage in stages}


@pytest.fixture(scope="module")
def twins(tmp_path_factory):
    """The same sensor and frames twice: plainly, and as a real folder holds them."""
    clean, odd = tmp_path_factory.mktemp("clean"), tmp_path_factory.mktemp("odd")
    simulate_campaign(clean, seed=31, **SMALL)
    simulate_campaign(odd, seed=31, bad_files=True, odd_files=True, real_folder=True, **SMALL)
    return dict(clean=(clean, *calibrate(clean)), odd=(odd, *calibrate(odd)))


def test_odd_inputs_give_the_products_of_the_clean_campaign(twins):
    (_, _, clean), (_, params, odd) = twins["clean"], twins["odd"]
    a, b = clean["hot_pixels"]["model"], odd["hot_pixels"]["model"]
    # the same frames, plus a burst cube of 3 biases and 1 % NaN pixels in one dark: equal within the noise
    for name, x, y, var in (("bias a", a.bias_a, b.bias_a, a.bias_cov[0]), ("bias b", a.bias_b, b.bias_b,
                                                                               a.bias_cov[1]),
                            ("lnA", a.dark[0], b.dark[0], a.dark_cov[0]), ("B", a.dark[1], b.dark[1], a.dark_cov[1]),
                            ("gamma", a.dark[2], b.dark[2], a.dark_cov[2])):
        pulls = np.abs(y - x) / np.sqrt(var)
        assert np.median(pulls) < 0.4 and pulls.max() < 3, name
    assert abs(b.meta["GAIN"] / a.meta["GAIN"] - 1) < 0.01
    assert np.mean((b.dq & DQ.SATURATED) > 0) < 0.01  # the light leak is a rejected frame, not a flag
    files = files_accounted(params)
    considered = files["status"] != "skipped"
    for check in odd["summary"]:
        if check["check"] == "rejected files":  # 5 broken files, a duplicate, a light leak: the verdict says so
            assert check["value"] == pytest.approx(np.mean(files["status"][considered] == "rejected"))
            assert check["status"] == ("FAIL" if check["value"] > check["limit"] else "pass")
        else:
            assert check["status"] == "pass", (check["check"], check["value"], check["reason"])


def test_frames_rejected_only_by_the_master_stages_are_counted(tmp_path):
    """The inventory rejects nothing here (its status column holds only "ok" and "skipped"), so
    the light leak and the duplicate are rejected by the master stages alone."""
    simulate_campaign(tmp_path, seed=5, odd_files=True, **dict(SMALL, shape=(16, 16)))
    params, _ = calibrate(tmp_path, stages=("inventory", "bias", "dark_masters"))
    files = files_accounted(params)
    rejected = {p.split("/")[-1]: r for p, s, r in zip(files["path"], files["status"], files["reason"])
                if s == "rejected"}
    assert "saturated" in rejected.pop("dark_light_leak.fits")
    assert [r.startswith("duplicate of dark/") for r in rejected.values()] == [True]


def test_every_odd_file_is_accounted_for_with_its_reason(twins):
    _, params, _ = twins["odd"]
    files = files_accounted(params)
    status = {(p, q): (s, r) for p, q, s, r in zip(files["path"], files["plane"], files["status"], files["reason"])}
    by_name = {p.split("/")[-1]: v for (p, q), v in status.items() if q < 0}
    assert by_name["dark_light_leak.fits"][0] == "rejected" and "saturated" in by_name["dark_light_leak.fits"][1]
    duplicate = [v for k, v in by_name.items() if k.startswith("duplicate_")]
    assert duplicate[0][0] == "rejected" and duplicate[0][1].startswith("duplicate of dark/")
    for name in ("flat_000.fits", "light_M42.fits", "binned_dark_000.fits"):
        assert by_name[name][0] == "skipped" and by_name[name][1], name
    assert all(status[("bias/bias_burst_cube.fits", q)][0] == "ok" for q in range(3))
    for suffix in (".fits.fz", ".fits.gz"):
        assert all(v[0] == "ok" for k, v in by_name.items() if k.endswith(suffix))
    assert all(r for s, r in zip(files["status"], files["reason"]) if s != "ok")
    table = inventory_stage.load(params)
    assert any("kelvin" in n for n in table["note"]) and any("exposure in ms" in n for n in table["note"])


def test_the_summary_warns_naming_the_rejected_files(twins):
    """Rejected by the inventory or by a master stage, the files are named at the terminal and in the report."""
    for name, (_, params, _) in twins.items():
        files = files_accounted(params)
        rejected = files[files["status"] == "rejected"]
        said = [m for _, m in campaign_warnings(params["output_dir"], ["summary"]) if "files rejected" in m]
        if name == "clean":
            assert not len(rejected) and not said
            continue
        considered = np.count_nonzero(files["status"] != "skipped")
        assert len(rejected) > 3 and len(said) == 1
        assert said[0].startswith(f"{len(rejected)} of {considered} calibration files rejected")
        assert f"{rejected['path'][0]}: {rejected['reason'][0]}" in said[0]
        assert said[0].endswith(f"; and {len(rejected) - 3} more")


def test_a_partial_rerun_marks_later_products_stale_and_the_verdict_says_so(tmp_path):
    simulate_campaign(tmp_path, seed=32, **SMALL)
    params, results = calibrate(tmp_path)
    assert results["summary"].meta["verdict"] == "SUCCESS"
    strict = dict(params, warm_sigma=0.5, hot_sigma=1.0, excess_sigma=0.0)  # thresholds that flag much of the sensor
    hot_pixels.run(strict)
    states = stage_states(params["output_dir"])
    assert states["evaluation"] == ("stale", "hot_pixels ran after it")
    assert states["summary"][0] == "stale"
    checks = summary.run(strict)  # the old evaluation no longer describes the products: FAIL, named
    row = checks[checks["check"] == "products consistent"][0]
    assert row["status"] == "FAIL" and "evaluation (hot_pixels ran after it)" in row["reason"]
    hot = checks[checks["check"] == "warm + hot fraction"][0]
    assert hot["status"] == "FAIL" and hot["value"] > 0.1  # and the new DQ map is what it counts
    assert checks.meta["verdict"] == "FAILED"


def test_a_stage_removes_the_products_it_no_longer_writes(tmp_path):
    simulate_campaign(tmp_path, seed=33, **SMALL)
    params, _ = calibrate(tmp_path, stages=("inventory", "bias", "dark_masters", "dark_model"))
    folder = tmp_path / "out" / "dark_model"
    assert (folder / "dark_B_map.fits").exists()
    dark_model.run(dict(params, dark_form="arrhenius"))
    assert (folder / "dark_Ea_map.fits").exists() and not (folder / "dark_B_map.fits").exists()
    left = tmp_path / "out" / ".discarded" / "bias-interrupted"  # what a run killed while deleting leaves
    left.mkdir(parents=True)
    (left / "0.fits").write_bytes(b"old")
    dark_model.run(params)
    assert (folder / "dark_B_map.fits").exists() and not (folder / "dark_Ea_map.fits").exists()
    assert not (tmp_path / "out" / ".discarded").exists()  # the earlier products and the leftovers: deleted


def test_one_frame_per_group_with_cosmic_rays_is_as_good_as_without(tmp_path):
    """Issue 8: default parameters, one dark frame per (T, t), cosmic rays scaled with exposure."""
    layout = dict(shape=(96, 96), frames=1, bias_frames=6, seed=34)
    errors, models = {}, {}
    for name, cosmics in (("clean", 0.0), ("cosmic", 40.0)):
        root = tmp_path / name
        simulate_campaign(root, cosmics=cosmics, **layout)
        _params, results = calibrate(root)
        truth = read_truth(root)
        model = models[name] = results["hot_pixels"]["model"]
        normal = ~truth["hot"]
        errors[name] = np.array([np.sqrt(np.mean((model.dark_signal(T, t) - dark_truth(truth, T, t))[normal] ** 2))
                                 for T, t in ((-7.5, 2.0), (2.5, 20.0), (12.5, 45.0), (22.5, 3.0))])
        flagged = (model.dq & (DQ.HOT | DQ.WARM)) > 0
        assert np.all(flagged[truth["hot"]]), name  # every planted x10..x1000 pixel is masked
        assert np.mean(flagged[normal]) < 0.0005, name
        assert not np.any(flagged & (truth["cosmic_hits"] > 0) & normal), name  # no cosmic ray among hot pixels
        trusted = (model.dq & DQ.FALLBACK) == 0
        assert np.all((model.dark[1][trusted] > -0.1) & (model.dark[1][trusted] < 0.5)), name
        assert np.all(np.isfinite(model.dark_signal(30.0, 120.0))), name
    assert np.all(errors["cosmic"] < 1.2 * errors["clean"]), errors
    hits = fits.getdata(tmp_path / "cosmic" / "out" / "dark_model" / "outliers.fits", "SAMPLES")
    assert len(hits) > 100  # what was removed is recorded
    assert np.count_nonzero(models["cosmic"].dq & DQ.OUTLIER) > 100


def test_full_well_pixels_are_flagged_and_keep_a_sensible_model(tmp_path):
    simulate_campaign(tmp_path, shape=(64, 64), full_well=0.004, seed=35)
    _, results = calibrate(tmp_path, stages=("inventory", "bias", "dark_masters", "dark_model"))
    truth, model = read_truth(tmp_path), results["dark_model"]["model"]
    well = np.isfinite(truth["full_well"])
    assert well.sum() >= 5 and np.all(model.dq[well] & DQ.FULL_WELL)
    assert np.all(np.abs(model.dark[1][well] - truth["dark_b"][well]) < 0.02)  # B from the unsaturated samples
    assert np.count_nonzero(model.dq & DQ.FULL_WELL) <= well.sum() + 2


def test_bias_noise_ratios_are_unbiased_with_two_bias_frames_per_group(tmp_path):
    """The read noise from 7 degrees of freedom of its own and the population's: dividing a bias residual by it would
    read sqrt(dof / (dof - 2)) high."""
    simulate_campaign(tmp_path, **dict(SMALL, temperatures=(-10, -5, 0, 5, 10, 15, 20), bias_frames=2), seed=8)
    _params, results = calibrate(tmp_path)
    meta = results["hot_pixels"]["model"].meta
    assert meta["RNOWNDOF"] == 7 and meta["RNPOPDOF"] > 4 and meta["RNDOF"] == pytest.approx(7 + meta["RNPOPDOF"])
    checks = {c["check"]: c["value"] for c in results["summary"]}
    for name in ("bias residual / noise", "bias leave-one-out / noise"):
        assert 0.95 < checks[name] < 1.05, (name, checks[name])


def test_two_temperatures_give_n_a_checks_and_no_absurd_numbers(tmp_path):
    simulate_campaign(tmp_path, shape=(48, 48), temperatures=(-10, -5), exptimes=(10, 30, 60, 150, 300), frames=1,
                      bias_frames=6, seed=36)
    _params, results = calibrate(tmp_path)
    checks = {c["check"]: c for c in results["summary"]}
    for name in ("bias residual / noise", "bias leave-one-out / noise"):
        assert checks[name]["status"] == "n/a" and checks[name]["reason"]
    model = results["hot_pixels"]["model"]
    A = np.exp(model.dark[0])
    assert np.all(np.isfinite(A)) and A.max() < 10 * model.meta["SATURATE"]
    for T in (model.trange[0] - 4.9, model.trange[1] + 4.9):  # just inside max_extrapolation: finite, never 1e27
        frame = model.dark_frame(T, 300.0)
        assert np.all(np.isfinite(frame)) and np.nanmax(frame) < 1e5


@pytest.mark.parametrize("layout, message", [
    (dict(temperatures=(-5,)), r"darks cover 1 temperature \(-[45]\.\d degC\): the dark model needs >= 2, "
                               r"leave-one-out >= 3"),
    (dict(bias_frames=0), "no usable bias frames"),
    (dict(bias_frames=1, temperatures=(-10, 10)), "every bias group has 1 frame and there are 2: the read noise needs "
                                                  "a bias group of >= 2 frames or biases at >= 3 temperatures"),
])
def test_a_campaign_that_cannot_be_calibrated_stops_after_the_inventory(tmp_path, layout, message):
    simulate_campaign(tmp_path, **{**SMALL, **layout, "seed": 37})
    with pytest.raises(CampaignError, match="cannot be calibrated") as err:
        calibrate(tmp_path, stages=("inventory",))
    assert re.search(message, str(err.value)) and "\n" not in str(err.value)
    assert (tmp_path / "out" / "inventory.ecsv").exists()  # the table of reasons is still written


def test_undetermined_pixels_get_population_values_never_inf(tmp_path):
    simulate_campaign(tmp_path, shape=(48, 48), temperatures=(0, 10), exptimes=(1, 2), frames=1, bias_frames=4,
                      seed=38)  # almost no dark signal: most pixels cannot determine B and gamma
    _params, _results = calibrate(tmp_path, stages=("inventory", "bias", "dark_masters", "dark_model", "hot_pixels"))
    model = CalibrationModel.read(tmp_path / "out")
    fallback = (model.dq & DQ.FALLBACK) > 0
    assert fallback.any()
    assert np.allclose(model.dark[1][fallback], model.prior[0]) and np.all(np.isfinite(model.dark[0][fallback]))
    frame = model.dark_frame(14.0, 4.0)
    assert np.all(np.isfinite(frame)) and np.all(np.isfinite(model.dark_variance(14.0, 4.0)))
