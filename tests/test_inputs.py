"""Every file a camera writes, every campaign a flight gives: read right, or refused in one line.

Each test here failed before: float frames, temperatures in degF or as strings, stale DQ used by
calibrate, one bias frame per temperature, headers as cameras write them, a light-leak frame that
is not saturated, messages that named the wrong thing, DATE-OBS in other forms, outliers.fits
without provenance.
"""

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from conftest import write_params
from test_cli import cmoscal
from test_inventory import frame, params_for

from cmoscal.config import ParamsError, load_params
from cmoscal.dq import DQ
from cmoscal.errors import CampaignError, CampaignWarning
from cmoscal.fitsio import atomic_path, provenance
from cmoscal.inventory import build_inventory, frame_exposure, frame_temperature, observation_date
from cmoscal.model import CalibrationModel
from cmoscal.products import LEDGER
from cmoscal.report import NOTEBOOK_DIR
from cmoscal.simulate import read_truth, simulate_campaign
from cmoscal.stages import STAGES

SMALL = dict(shape=(32, 32), temperatures=(-10, 0, 10, 20), exptimes=(2, 10, 40), frames=3, bias_frames=5)
UP_TO_HOT_PIXELS = ("inventory", "bias", "dark_masters", "dark_model", "hot_pixels")


def run(root, stages=UP_TO_HOT_PIXELS, **overrides):
    params = load_params(write_params(root / "p.yml", campaign="c", raw_dir="raw", output_dir="out", loo_pixels=0,
                                      **overrides), root=root)
    return params, {stage: STAGES[stage](params) for stage in stages}


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """The integer twin every other camera style is compared with."""
    root = tmp_path_factory.mktemp("plain")
    simulate_campaign(root, seed=41, **SMALL)
    return root, *run(root)


def assert_same_model(a: CalibrationModel, b: CalibrationModel):
    """Two models of the same frames agree within a small part of their uncertainty."""
    for name, x, y, var in (("bias a", a.bias_a, b.bias_a, a.bias_cov[0]), ("lnA", a.dark[0], b.dark[0], a.dark_cov[0]),
                            ("B", a.dark[1], b.dark[1], a.dark_cov[1]), ("gamma", a.dark[2], b.dark[2], a.dark_cov[2])):
        pulls = np.abs(y - x) / np.sqrt(var)
        assert np.nanmedian(pulls) < 0.1 and np.nanpercentile(pulls, 99) < 1, name
    assert np.array_equal(a.dq & DQ.HOT, b.dq & DQ.HOT)


@pytest.mark.parametrize("style", [dict(bitpix=-32, nan_pixels=0.002), dict(temperature_style="degF"),
                                   dict(temperature_style="string")])
def test_camera_styles_give_the_products_of_their_integer_twin(plain, tmp_path, style):
    simulate_campaign(tmp_path, seed=41, **SMALL, **style)
    _, results = run(tmp_path)  # default parameters: nothing to set for any of these
    twin = plain[2]["hot_pixels"]["model"]
    model = results["hot_pixels"]["model"]
    assert model.meta["SATURATE"] == twin.meta["SATURATE"] == 4095  # float frames of whole numbers: 16-bit range
    assert model.trange == pytest.approx(twin.trange, abs=0.006)  # the string style keeps two decimals
    assert_same_model(twin, model)
    if "nan_pixels" in style:
        frames = fits.getdata(tmp_path / "raw" / "dark" / "dark_+0C_10s_000.fits")
        assert np.isnan(frames).any()  # NaN pixels are invalid samples, not a crash
        assert fits.getheader(tmp_path / "raw" / "dark" / "dark_+0C_10s_000.fits")["BITPIX"] == -32
    else:
        notes = "; ".join(results["inventory"]["note"])
        assert ("read as degF" if style["temperature_style"] == "degF" else "'-10.") in notes


@pytest.mark.parametrize("style", ["string", "degF", "set-point"])
def test_odd_files_combine_with_every_camera_style(tmp_path, style):
    """The odd files re-encode frames of any camera style (this crashed for temperatures written as strings): the
    kelvin frame states the temperature its twin states, in kelvin."""
    simulate_campaign(tmp_path, seed=43, **dict(SMALL, shape=(16, 16)), odd_files=True, temperature_style=style)
    params = params_for(tmp_path, temperature_keys=["CCD-TEMP", "SET-TEMP"])
    first = sorted((tmp_path / "raw" / "bias").glob("bias_*"))  # the first is fpacked, the second in kelvin
    kelvin, twin = (fits.getheader(path) for path in first[1:3])
    assert frame_temperature(kelvin, params)[0] == pytest.approx(frame_temperature(twin, params)[0], abs=1.0)
    assert kelvin["CCD-TEMP"] > 250


@pytest.mark.parametrize("bitpix", [32, -64])
def test_other_bitpix_read_the_same_values(plain, tmp_path, bitpix):
    simulate_campaign(tmp_path, seed=41, **SMALL, bitpix=bitpix)
    with pytest.warns(CampaignWarning, match="16-bit data assumed, saturating at 65535 raw"):
        _, results = run(tmp_path, stages=("inventory", "bias"))
    assert results["inventory"].meta["saturation"] == plain[2]["inventory"].meta["saturation"] == 4095
    assert np.array_equal(results["bias"]["a"], plain[2]["bias"]["a"])


def test_no_header_card_is_a_number_fits_cannot_hold():
    header = provenance(fits.Header(), bunit="DN", description="x", SATURATE=(np.inf, "DN"), GOOD=(1.5, ""))
    assert "SATURATE" not in header and header["GOOD"] == 1.5
    assert "SATURATE not stated: inf" in str(header["COMMENT"])


@pytest.mark.parametrize("value, comment, expected, note", [
    (77.0, "[degF] sensor temperature", 25.0, "read as degF"),
    ("-10.0 C", "", -10.0, "read as degC"),
    ("263.15 K", "", -10.0, "read as kelvin"),
    (263.15, "", -10.0, "read as kelvin"),
    ("  5.5 degC ", "", 5.5, "read as degC"),
    (-4.0, "[degC]", -4.0, ""),
])
def test_temperature_units_from_value_comment_or_parameter(value, comment, expected, note):
    header = fits.Header([("CCD-TEMP", value, comment)])
    temperature, said = frame_temperature(header, params_for("."))
    assert temperature == pytest.approx(expected) and (note in said if note else said == "")
    header = fits.Header([("CCD-TEMP", 14.0, "")])
    assert frame_temperature(header, params_for(".", temperature_unit="degF"))[0] == pytest.approx(-10.0)


@pytest.mark.parametrize("cards, message", [
    ([("CCD-TEMP", "-10 X", "")], "CCD-TEMP='-10 X': unit 'X' is not a temperature unit"),
    ([("CCD-TEMP", "cold", "")], "CCD-TEMP='cold' is not a number"),
    ([("CCD-TEMP", 500.0, "[degC]")], "no sensor is calibrated above 150 degC"),
    ([("SET-TEMP", -10.0, "")], "SET-TEMP is the set point, not a measurement: add it to temperature_keys"),
])
def test_temperatures_no_unit_explains_are_refused_with_the_value(cards, message):
    with pytest.raises(CampaignError, match=message.replace("(", r"\(").replace(")", r"\)")):
        frame_temperature(fits.Header(cards), params_for("."))


def test_exposures_negative_strings_and_units():
    params = params_for(".")
    with pytest.raises(CampaignError, match="exposure EXPTIME=-30 is negative"):
        frame_exposure(fits.Header([("EXPTIME", -30)]), params)
    assert frame_exposure(fits.Header([("EXPTIME", "30 ms")]), params)[0] == pytest.approx(0.03)
    with pytest.raises(CampaignError, match="unit 'min' is not a time unit"):
        frame_exposure(fits.Header([("EXPTIME", "2 min")]), params)


def test_headers_as_cameras_write_them(tmp_path):
    frame(tmp_path / "string.fits", {"IMAGETYP": "DARK", "EXPTIME": 10.0, "CCD-TEMP": "-10.0 C"})
    frame(tmp_path / "negative.fits", {"IMAGETYP": "DARK", "EXPTIME": -30.0, "CCD-TEMP": 1.0})
    frame(tmp_path / "setpoint.fits", {"IMAGETYP": "DARK", "EXPTIME": 10.0, "SET-TEMP": -5.0})
    frame(tmp_path / "lower.fits", {"IMAGETYP": "DARK", "EXPTIME": 10.0})
    raw = bytearray((tmp_path / "lower.fits").read_bytes())  # a lowercase keyword, as some drivers write
    at = raw.find(b"EXPTIME ") + 80
    raw[at:at + 80] = b"ccd-temp= -10.0 / [degC]".ljust(80)
    (tmp_path / "lower.fits").write_bytes(raw)
    table = build_inventory(params_for(tmp_path))
    row = {r["path"]: r for r in table}
    assert row["string.fits"]["status"] == "ok" and row["string.fits"]["temperature"] == -10.0
    assert row["lower.fits"]["status"] == "ok" and row["lower.fits"]["temperature"] == -10.0
    assert "header fixed" in row["lower.fits"]["note"]
    assert "EXPTIME=-30.0 is negative" in row["negative.fits"]["reason"]
    assert "SET-TEMP is the set point" in row["setpoint.fits"]["reason"]
    with pytest.warns(CampaignWarning, match=r"1 frame\(s\) take their temperature from a set point \(SET-TEMP\)"):
        table = build_inventory(params_for(tmp_path, temperature_keys=["CCD-TEMP", "SET-TEMP"]))
    assert table["temperature"][table["path"] == "setpoint.fits"][0] == -5.0


def test_the_rejection_summary_names_set_temp_and_is_printed_by_run_and_evaluate(tmp_path):
    simulate_campaign(tmp_path, seed=42, **dict(SMALL, shape=(16, 16)), temperature_style="set-point")
    write_params(tmp_path / "p.yml", campaign="c", raw_dir="raw", output_dir="out")
    result = cmoscal("run", "p.yml", cwd=tmp_path)
    assert result.returncode == 1
    warning = [line for line in result.stderr.splitlines() if "calibration files rejected" in line][0]
    assert "SET-TEMP is the set point" in warning and "SET-TEMP=" in warning.split("keywords in their headers")[1]
    for i in range(80):  # a campaign that calibrates with most of its files rejected
        frame(tmp_path / "raw2" / "junk" / f"j{i}.fits", {"IMAGETYP": "DARK", "EXPTIME": 1.0, "SET-TEMP": 0.0})
    simulate_campaign(tmp_path / "good", seed=42, **dict(SMALL, shape=(16, 16)))
    shutil.copytree(tmp_path / "good" / "raw", tmp_path / "raw2" / "good")
    write_params(tmp_path / "q.yml", campaign="c", raw_dir="raw2", output_dir="out2", loo_pixels=0)
    for command in ("run", "evaluate"):
        result = cmoscal(command, "q.yml", cwd=tmp_path)
        assert result.returncode in (0, 3), result.stderr
        assert "calibration files rejected" in result.stderr and "SET-TEMP=0.0" in result.stderr, command


def test_stale_dq_is_never_used(tmp_path):
    simulate_campaign(tmp_path, seed=44, **dict(SMALL, shape=(64, 64)))  # 4 hot pixels
    params, results = run(tmp_path)
    flagged = DQ.HOT | DQ.WARM
    assert (results["hot_pixels"]["model"].dq & flagged).any()
    STAGES["dark_model"](params)  # a new fit, without the hot-pixel classification: the model is stale
    science = tmp_path / "raw" / "dark" / "dark_+0C_10s_000.fits"
    result = cmoscal("calibrate", science, "--model", "out", "--output", "cal", cwd=tmp_path)
    assert result.returncode == 1 and not (tmp_path / "cal").exists()
    assert "which is stale (dark_model ran after it): run the hot_pixels stage first" in result.stderr
    alone = tmp_path / "copied.fits"  # the dark fit without its ledger says so itself
    shutil.copy(tmp_path / "out" / "dark_model" / "dark_fit.fits", alone)
    for args in (("synth-dark", "--exptime", "10"), ("synth-bias",)):
        result = cmoscal(*args, "--model", alone, "--temperature", "0", "--output", "s.fits", cwd=tmp_path)
        assert result.returncode == 1 and "its DQ lacks the warm and hot pixels" in result.stderr
    with pytest.raises(CampaignError, match="evaluation reads the products of hot_pixels .* stale"):
        STAGES["evaluation"](params)
    STAGES["hot_pixels"](params)
    result = cmoscal("calibrate", science, "--model", "out", "--output", "cal", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (fits.getdata(tmp_path / "cal" / "dark_+0C_10s_000_cal.fits", "DQ") & flagged).any()


def test_an_interrupted_stage_is_named_as_the_one_to_rerun(tmp_path):
    simulate_campaign(tmp_path, seed=44, **dict(SMALL, shape=(16, 16)))
    run(tmp_path, stages=list(STAGES)[:7])
    ledger = tmp_path / "out" / LEDGER
    book = json.loads(ledger.read_text())
    book["stages"]["dark_model"]["status"] = "running"  # killed half-way: the ledger says so
    ledger.write_text(json.dumps(book))
    result = cmoscal("evaluate", "p.yml", cwd=tmp_path)
    assert result.returncode == 1
    assert "which is stale (dark_model is running): run the stages dark_model, hot_pixels first" in result.stderr


def test_one_bias_frame_per_temperature_calibrates_with_the_read_noise_from_the_fit(tmp_path):
    layout = dict(SMALL, temperatures=(-10, -5, 0, 5, 10, 15, 20, 25), bias_frames=1, frames=1)
    simulate_campaign(tmp_path, seed=45, **layout)
    _, results = run(tmp_path, stages=list(STAGES)[:8])
    model = results["hot_pixels"]["model"]
    truth = read_truth(tmp_path)
    assert model.meta["RNOWNDOF"] == 6 and model.meta["RNSOURCE"] == "bias-fit residuals"
    # moderated read variance from 6 dof: unbiased for the per-pixel variance (read noise, telegraph, 1/12)
    rv_true = truth["read_noise"] ** 2 + truth["rts"] ** 2 / 4 + 1 / 12
    normal = truth["rts"] == 0
    ratio = np.mean(model.read_noise[normal] ** 2) / np.mean(rv_true[normal])
    assert abs(ratio - 1) < 3 * np.sqrt(2 / 6 / normal.sum()) + 0.02
    assert np.isfinite(model.read_noise).all()
    checks = {c["check"]: c for c in results["summary"]}
    assert checks["bias residual / noise"]["status"] == "n/a"
    assert "measured from these residuals" in checks["bias residual / noise"]["reason"]
    assert checks["dark residual / noise"]["status"] == "pass"


def test_a_few_bias_frames_in_whole_dn_give_honest_noise_checks_and_flags(tmp_path):
    """One bias frame per temperature and a burst cube beside the -10 degC one: 3 degrees of freedom per pixel of
    whole-DN values (read noise ~1.2 DN), often all equal. Unmoderated, the read noise was 0 for 2 % of the pixels,
    the bias residual check read 0.80 (a FAIL) and 2 % of the pixels were POOR_FIT."""
    layout = dict(shape=(64, 64), temperatures=(-10, -5, 0, 5, 10, 15, 20, 25), exptimes=(1, 5, 10, 30, 60),
                  frames=1, bias_frames=1)
    simulate_campaign(tmp_path, seed=7, real_folder=True, cosmics=3, law="exponential+floor", bitpix=32, **layout)
    _, results = run(tmp_path, stages=list(STAGES)[:8])
    model, truth = results["hot_pixels"]["model"], read_truth(tmp_path)
    assert model.meta["RNOWNDOF"] == 3 and model.meta["RNPOPDOF"] > 10
    rv_true = truth["read_noise"] ** 2 + 1 / 12
    normal = truth["rts"] == 0  # telegraph pixels are moderated towards the population: their noise reads low
    assert model.read_noise.min() > 0.5
    assert abs(np.mean(model.read_noise[normal] ** 2) / np.mean(rv_true[normal]) - 1) < 0.05
    checks = {c["check"]: c for c in results["summary"]}
    for name in ("bias residual / noise", "bias leave-one-out / noise", "dark residual / noise"):
        assert checks[name]["status"] == "pass" and abs(checks[name]["value"] - 1) < 0.1, (name, checks[name])
    assert np.mean((model.dq & DQ.POOR_FIT) > 0) < 0.003
    # bunched whole-DN estimates make no pixel noisy by chance (the robust spread alone flagged 7, 1 a telegraph
    # pixel); the one left has a burst frame 9 DN off: beyond chance at 5 sigma for its 3 degrees of freedom
    assert np.count_nonzero(model.dq & DQ.NOISY) <= 1


@pytest.mark.parametrize("frames", [3, 1])
def test_a_light_leak_frame_is_rejected_with_its_departure(tmp_path, frames):
    layout = dict(SMALL, temperatures=(-10, -5, 0, 5, 10), frames=frames, bias_frames=max(frames, 2))
    simulate_campaign(tmp_path, seed=46, **layout, light_leak=True)
    _, results = run(tmp_path, stages=("inventory", "bias", "dark_masters"))
    table = results["dark_masters"]
    rejected = table[table["status"] == "rejected"]
    assert list(rejected["frame"]) == ["dark/dark_+0C_10s_light_leak.fits"]
    reason = rejected["reason"][0]
    assert re.search(r"departs by \+(299\d|300\d)\.\d DN", reason) and "light leak" in reason
    if frames == 1:
        assert "neighbouring groups" in rejected["reason"][0]
    assert all(results["bias"]["frames"]["status"] == "used")


def test_dates_are_read_when_unambiguous(tmp_path):
    assert observation_date("2026-01-01 00:00:00 UTC") == "2026-01-01T00:00:00"
    assert observation_date("2026-03-04T05:06:07.25Z") == "2026-03-04T05:06:07"
    assert observation_date("2026-03-04") == "2026-03-04T00:00:00"
    for text in ("01/01/26", "2026-13-01", "yesterday"):
        with pytest.raises(ValueError, match="not an ISO date"):
            observation_date(text)
    simulate_campaign(tmp_path, seed=47, **dict(SMALL, shape=(16, 16)), date_style="dd/mm/yy")
    with pytest.warns(CampaignWarning, match="DATE-OBS '01/01/26' is not an ISO date"):
        run(tmp_path, stages=("inventory", "bias"), instrument={"useafter": "2026-01-01"})
    assert fits.getheader(tmp_path / "out" / "bias_model" / "bias_a_map.fits")["USEAFTER"] == "2026-01-01"
    with pytest.raises(ParamsError, match="instrument.useafter: must be an ISO date"):
        run(tmp_path, stages=(), instrument={"useafter": "01/01/26"})


def test_write_errors_name_the_file_not_a_temporary_one(tmp_path, monkeypatch):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    result = cmoscal("simulate", blocker / "c", "--shape", "8x8", "--temps", "0,10", "--exptimes", "1",
                     "--frames", "1", "--bias-frames", "1")
    assert result.returncode == 1 and "a_file" in result.stderr and "Traceback" not in result.stderr

    def full(*_):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("os.replace", full)
    with pytest.raises(OSError, match=f"cannot write {tmp_path / 'x.fits'}: No space left on device"):
        with atomic_path(tmp_path / "x.fits") as tmp:
            open(tmp, "w").write("x")
    assert [p.name for p in tmp_path.iterdir()] == ["a_file"]  # nothing left behind


def test_outliers_say_what_they_are(plain):
    header = fits.getheader(plain[0] / "out" / "dark_model" / "outliers.fits")
    fit = fits.getheader(plain[0] / "out" / "dark_model" / "dark_fit.fits")  # the product of the same stage
    assert header["BUNIT"] == "DN" and header["MODELID"] == fit["MODELID"] and header["TMIN"] == fit["TMIN"]
    table = fits.getheader(plain[0] / "out" / "dark_model" / "outliers.fits", "SAMPLES")
    assert [table[f"TUNIT{k}"] for k in (2, 3, 4, 5)] == ["pix", "pix", "DN", "DN"]


def test_the_notebooks_ship_inside_the_package():
    import cmoscal

    assert NOTEBOOK_DIR.parent.resolve() == Path(cmoscal.__file__).parent.resolve()
    assert len(list(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))) == len(STAGES)


def test_a_noise_model_far_above_the_scatter_fails_the_residual_checks(tmp_path):
    """A wrong gain (here 1e-4 e-/DN, as a light leak in a two-frame group once measured) makes every residual
    look tiny: the checks must see it, not pass it."""
    simulate_campaign(tmp_path, seed=48, **dict(SMALL, shape=(16, 16)))
    _, results = run(tmp_path, stages=list(STAGES)[:8], gain=1e-4)
    checks = {c["check"]: c for c in results["summary"]}
    row = checks["dark residual / noise"]
    assert row["status"] == "FAIL" and row["value"] < 0.2 and "expected noise is far larger" in row["reason"]
    assert results["summary"].meta["verdict"] == "FAILED"


def test_a_copy_of_a_rejected_frame_is_rejected_too(tmp_path):
    """--odd-files copies a dark: here it copies the light leak, in a group of one good frame. The neighbours reject
    the leak; its copy is a duplicate of it, not a frame to use in its place."""
    layout = dict(SMALL, temperatures=(-10, -5, 0, 5, 10, 15, 20, 25), frames=1, bias_frames=2)
    simulate_campaign(tmp_path, seed=49, **layout, odd_files=True, light_leak=True)
    _, results = run(tmp_path, stages=("inventory", "bias", "dark_masters"))
    frames = results["dark_masters"]
    status = dict(zip(frames["frame"], zip(frames["status"], frames["reason"])))
    leak, copy = "dark/dark_+10C_10s_light_leak.fits", "dark/duplicate_dark_+10C_10s_light_leak.fits"
    assert status[leak][0] == "rejected" and "neighbouring groups" in status[leak][1]
    assert status[copy] == ("rejected", f"duplicate of {leak}")
    master = fits.getheader(next((tmp_path / "out" / "dark_masters").glob("darks_T10.*C_texp10s.fits")))
    assert master["NCOMBINE"] == 1 and master["GAINS0"] == 0
