"""Calibrating science frames: closure on held-out darks, the CCDData layout, refusals, reference keywords."""

import subprocess
import sys

import numpy as np
import pytest
from astropy import units as u
from astropy.io import fits
from astropy.nddata import CCDData
from conftest import digest, write_params

from cmoscal.calibrate import calibrate_ccd
from cmoscal.config import load_params
from cmoscal.dq import DQ, FLAGS
from cmoscal.model import CalibrationModel
from cmoscal.simulate import simulate_campaign
from cmoscal.stages import STAGES
from cmoscal.stages.dark_model import model_id

BAD = DQ.FRAME_SATURATED | DQ.FULL_WELL | DQ.DO_NOT_USE


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    root = tmp_path_factory.mktemp("calibrate")
    simulate_campaign(root, shape=(96, 96), held_out=True, seed=41)
    raw_digest = digest(root / "held_out")
    params = load_params(write_params(root / "p.yml", campaign="cal", raw_dir="raw", output_dir="out",
                                      science_dir="held_out", loo_pixels=2000), root=root)
    results = {name: stage(params) for name, stage in STAGES.items()}
    return dict(root=root, params=params, results=results, raw_digest=raw_digest)


def test_held_out_darks_calibrate_to_zero_within_their_uncertainty(calibrated):
    root, table = calibrated["root"], calibrated["results"]["calibration"]
    assert list(table["status"]) == ["calibrated"] * len(table) and len(table) == 56
    hot = fits.getdata(root / "truth.fits", "HOT").astype(bool)
    pooled = {"normal": [], "hot": []}
    for path in table["output"]:
        ccd = CCDData.read(path)
        usable = (fits.getdata(path, "DQ") & BAD) == 0
        z = ccd.data / ccd.uncertainty.array
        pooled["normal"].append(z[usable & ~hot])
        pooled["hot"].append(z[usable & hot])
    normal, hot_z = np.concatenate(pooled["normal"]), np.concatenate(pooled["hot"])
    assert 0.95 < np.std(normal) < 1.05 and abs(np.mean(normal)) < 0.1
    assert hot_z.size > 100 and 0.9 < np.std(hot_z) < 1.1 and abs(np.mean(hot_z)) < 0.15
    assert digest(root / "held_out") == calibrated["raw_digest"]  # raw frames never modified


def test_calibrated_frames_open_with_ccddata_and_say_what_they_are(calibrated):
    path = calibrated["results"]["calibration"]["output"][0]
    ccd = CCDData.read(path)
    assert ccd.unit == u.Unit("DN") and type(ccd.uncertainty).__name__ == "StdDevUncertainty"
    assert ccd.mask.dtype == bool and ccd.mask.shape == ccd.data.shape
    header = ccd.header
    model = fits.getheader(calibrated["root"] / "out" / "calibration_model.fits")
    assert header["MODELID"] == model["MODELID"] and header["CALRANGE"] and header["BUNIT"] == "DN"
    assert abs(header["CALTEMP"] - header["CCD-TEMP"]) < 1e-9 and header["CALEXPT"] == header["EXPTIME"]
    with fits.open(path) as hdul:
        assert [h.name for h in hdul] == ["PRIMARY", "MASK", "UNCERT", "DQ", "DQ_DEF"]
        assert list(hdul["DQ_DEF"].data["NAME"]) == [flag.name for flag in FLAGS]
        masked = sum(getattr(DQ, name) for name in ("HOT", "WARM", "DO_NOT_USE", "NOISY", "FRAME_SATURATED",
                                                   "FRAME_INVALID", "FULL_WELL"))
        assert np.array_equal(ccd.mask, (hdul["DQ"].data & masked) > 0)


def test_model_products_carry_reference_keywords_and_a_stable_identifier(calibrated):
    root, params = calibrated["root"], calibrated["params"]
    for name in ("calibration_model.fits", "dark_model/dark_A_map.fits", "dark_model/dq_map.fits",
                 "bias_model/bias_a_map.fits"):
        header = fits.getheader(root / "out" / name)
        for key in ("REFTYPE", "DESCRIP", "PEDIGREE", "USEAFTER", "AUTHOR", "INSTRUME", "TELESCOP", "DETECTOR"):
            assert key in header, (name, key)
    header = fits.getheader(root / "out" / "calibration_model.fits")
    assert header["INSTRUME"] == "cmoscal-sim" and header["PEDIGREE"].startswith("GROUND 2026-01-01")
    inventory = calibrated["results"]["inventory"]
    assert header["MODELID"] == model_id(params, inventory, "hot_pixels")  # the model, with its DQ
    assert model_id(dict(params, outlier_sigma=6.0), inventory, "hot_pixels") != header["MODELID"]
    assert model_id(dict(params, memory_budget=9.0), inventory, "hot_pixels") == header["MODELID"]


def test_non_finite_pixels_are_flagged_and_leave_their_neighbours_intact(calibrated):
    root, params = calibrated["root"], calibrated["params"]
    frame = sorted((root / "held_out").glob("*.fits"))[0]
    with fits.open(frame) as hdul:
        raw = CCDData(hdul[0].data.astype(np.float32), unit="adu", header=hdul[0].header)
    raw.data[40, 40] = np.nan
    result = calibrate_ccd(raw, CalibrationModel.read(root / "out"), params)
    assert result.mask[40, 40] and result.flags[40, 40] & DQ.FRAME_INVALID
    assert np.all(np.isfinite(result.uncertainty.array[39:42, 39:42]))
    assert np.isfinite(result.data[39:42, 39:42]).sum() == 8


def test_electrons_and_out_of_range_frames(calibrated, tmp_path):
    root = calibrated["root"]
    frame = sorted((root / "held_out").glob("*.fits"))[0]
    warm = tmp_path / "warm.fits"
    with fits.open(frame) as hdul:
        hdul[0].header["CCD-TEMP"] = 27.0  # 2 degC beyond the warmest calibrated: warned, flagged, made
        hdul.writeto(warm)
    result = subprocess.run([sys.executable, "-m", "cmoscal.cli", "calibrate", "--model", root / "out", warm, frame,
                             "--output", tmp_path / "out", "--electrons"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    out = CCDData.read(tmp_path / "out" / "warm_cal.fits")
    gain = fits.getheader(root / "out" / "calibration_model.fits")["GAIN"]
    dn = CCDData.read(calibrated["results"]["calibration"]["output"][0])
    same = CCDData.read(tmp_path / "out" / frame.name.replace(".fits", "_cal.fits"))
    assert out.unit == u.electron and not out.header["CALRANGE"]
    assert np.all(fits.getdata(tmp_path / "out" / "warm_cal.fits", "DQ") & DQ.OUT_OF_RANGE)
    np.testing.assert_allclose(same.data, dn.data * gain, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("change, reason", [
    (lambda h, d: h.remove("CCD-TEMP"), "no temperature (none of"),
    (lambda h, d: h.update({"CCD-TEMP": 60.0}), "more than 5 degC outside the calibrated range"),
    ("shape", "differs from the model's 96x96"),
])
def test_frames_that_cannot_be_calibrated_are_refused_in_one_line(calibrated, tmp_path, change, reason):
    frame = sorted((calibrated["root"] / "held_out").glob("*.fits"))[0]
    bad = tmp_path / "in" / "bad.fits"
    bad.parent.mkdir()
    with fits.open(frame) as hdul:
        header, data = hdul[0].header.copy(), hdul[0].data
        if change == "shape":
            data = data[:, :48]
        else:
            change(header, data)
        fits.PrimaryHDU(data, header).writeto(bad)
    result = subprocess.run([sys.executable, "-m", "cmoscal.cli", "calibrate", "--model",
                             calibrated["root"] / "out", tmp_path / "in", "--output", tmp_path / "out"],
                            capture_output=True, text=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if "bad.fits" in line]
    assert len(lines) == 1 and reason in lines[0]
    assert not list((tmp_path / "out").glob("*.fits"))


def test_sub_folders_are_mirrored_and_clashing_outputs_refused(calibrated, tmp_path):
    frame = sorted((calibrated["root"] / "held_out").glob("*.fits"))[0]
    for sub in ("x", "y"):
        (tmp_path / "in" / sub).mkdir(parents=True)
        (tmp_path / "in" / sub / "f.fits").write_bytes(frame.read_bytes())
    command = [sys.executable, "-m", "cmoscal.cli", "calibrate", "--model", calibrated["root"] / "out"]
    folder = subprocess.run(command + [tmp_path / "in", "--output", tmp_path / "a"], capture_output=True, text=True)
    assert folder.returncode == 0, folder.stderr
    assert sorted(p.relative_to(tmp_path / "a").as_posix() for p in (tmp_path / "a").rglob("*.fits")) == [
        "x/f_cal.fits", "y/f_cal.fits"]
    loose = subprocess.run(command + [tmp_path / "in" / "x" / "f.fits", tmp_path / "in" / "y" / "f.fits",
                                      "--output", tmp_path / "b"], capture_output=True, text=True)
    assert loose.returncode == 1
    assert loose.stderr.count("another input also writes f_cal.fits") == 2 and not (tmp_path / "b").exists()
