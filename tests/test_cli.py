"""The cmoscal command, run as a user would: one-line errors, documented exit statuses."""

import os
import subprocess
import sys

import numpy as np
import pytest
from astropy import units as u
from astropy.io import fits
from astropy.nddata import CCDData
from conftest import write_params

from cmoscal.cli import EXIT_CHECKS, main


def cmoscal(*args, cwd=None):
    env = {k: v for k, v in os.environ.items() if k != "CMOSCAL_LOCK"}  # as from another shell
    return subprocess.run([sys.executable, "-m", "cmoscal.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env)


def test_help_lists_every_command_and_the_exit_statuses():
    out = cmoscal("--help").stdout
    for command in ("simulate", "run", "report", "synth-bias", "synth-dark", "evaluate"):
        assert command in out
    assert "3 a check failed" in out


def test_synth_bias_into_a_directory_prints_mean_and_std(campaign, tmp_path, capsys):
    assert main(["synth-bias", "--model", str(campaign["root"] / "out"), "--temperature", "12.0",
                 "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    path = tmp_path / "synthetic_bias_12.0C.fits"
    data = fits.getdata(path)
    assert f"mean {data.mean():.3f} DN, std {data.std():.3f} DN" in out
    assert fits.getheader(path)["TEMP"] == 12.0 and fits.getheader(path)["BUNIT"] == "DN"
    assert not fits.getheader(path)["EXTRAPOL"]
    ccd = CCDData.read(path)  # with its uncertainty, as the tools users know open it
    assert ccd.unit == u.Unit("DN") and ccd.uncertainty.array.shape == data.shape
    assert np.all(ccd.uncertainty.array > 0)


def test_synth_dark_variants(campaign, tmp_path):
    model = str(campaign["root"] / "out")
    args = ["synth-dark", "--model", model, "--temperature", "5", "--exptime", "30"]
    assert main(args + ["--output", str(tmp_path / "full.fits")]) == 0
    assert main(args + ["--output", str(tmp_path / "signal.fits"), "--signal-only"]) == 0
    assert main(args + ["--output", str(tmp_path / "raw.fits"), "--raw16"]) == 0
    full, signal = fits.getdata(tmp_path / "full.fits"), fits.getdata(tmp_path / "signal.fits")
    raw = fits.getdata(tmp_path / "raw.fits")
    assert full.dtype.name == "float32" and 55 < np.median(full - signal) < 65  # the simulated bias level
    assert raw.dtype == np.uint16 and np.all(raw % 16 == 0)
    assert CCDData.read(tmp_path / "raw.fits").unit == u.adu
    assert np.allclose(raw / 16, np.clip(np.rint(full), 0, 4095))


def test_just_outside_the_range_warns_once_and_records_it(campaign, tmp_path, capsys):
    path = tmp_path / "near.fits"
    assert main(["synth-dark", "--model", str(campaign["root"] / "out"), "--temperature", "28", "--exptime",
                 "100", "--output", str(path)]) == 0
    err = capsys.readouterr().err
    assert err.count("temperature 28 degC is outside the calibrated range") == 1
    assert err.count("exposure 100 s is outside the calibrated range") == 1
    header = fits.getheader(path)
    assert header["EXTRAPOL"] and any("temperature 28 degC" in str(h) for h in header["HISTORY"])
    assert np.all(np.isfinite(fits.getdata(path)))


@pytest.mark.parametrize("args, message", [
    (["run", "nowhere.yml"], "nowhere.yml: cannot read parameters"),
    (["synth-bias", "--model", "nowhere", "--temperature", "1", "--output", "x.fits"], "no calibration model"),
    (["synth-dark", "--model", "MODEL", "--temperature", "1", "--exptime", "-1", "--output", "x.fits"],
     "exposure -1 s: must be > 0"),
    (["synth-dark", "--model", "MODEL", "--temperature", "-300", "--exptime", "10", "--output", "x.fits"],
     "below absolute zero"),
    (["synth-dark", "--model", "MODEL", "--temperature", "45", "--exptime", "10", "--output", "x.fits"],
     "more than 5 degC outside the calibrated range"),
    (["synth-bias", "--model", "OTHER", "--temperature", "1", "--output", "x.fits"],
     "is not a cmoscal calibration model"),
])
def test_user_errors_are_one_line_without_traceback(campaign, tmp_path, args, message):
    other = campaign["root"] / "out" / "dark_model" / "dark_A_map.fits"
    args = [str(campaign["root"] / "out") if a == "MODEL" else str(other) if a == "OTHER" else a for a in args]
    result = cmoscal(*args, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().count("\n") == 0 and message in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "x.fits").exists()


def test_invalid_parameters_and_stages_are_refused(tmp_path):
    write_params(tmp_path / "bad.yml", campaign="x", raw_dir="absent", combine="mode")
    result = cmoscal("run", "bad.yml", cwd=tmp_path)
    assert result.returncode == 1 and "2 problem(s)" in result.stderr and "combine" in result.stderr
    (tmp_path / "raw").mkdir()
    write_params(tmp_path / "ok.yml", campaign="x", raw_dir="raw")
    result = cmoscal("run", "ok.yml", "--stages", "fitting", cwd=tmp_path)
    assert result.returncode == 1 and "unknown stage(s) fitting" in result.stderr


def test_simulate_then_run_selected_stages(tmp_path):
    result = cmoscal("simulate", tmp_path / "c", "--shape", "16x16", "--temps", "-5,5,15", "--exptimes", "2,20",
                     "--frames", "3", "--bias-frames", "3")  # a list starting with a negative number, as typed
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "c" / "raw").rglob("*.fits"))) == 3 * (3 + 2 * 3)
    assert (tmp_path / "c" / "raw" / "bias" / "bias_-5C_000.fits").exists()
    write_params(tmp_path / "c.yml", campaign="c", raw_dir="c/raw", output_dir="out")
    result = cmoscal("run", "c.yml", "--stages", "inventory", "bias", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "[2/2] bias done" in result.stdout
    assert (tmp_path / "out" / "bias_model" / "bias_a_map.fits").exists()
    assert not (tmp_path / "out" / "dark_masters").exists()
    result = cmoscal("run", "c.yml", "--stages", "dark_model", cwd=tmp_path)
    assert result.returncode == 1 and "run the dark_masters stage first" in result.stderr


def test_evaluate_prints_the_checks_and_exits_3_when_one_fails(campaign, capsys):
    root = campaign["root"]
    assert main(["evaluate", str(root / "params.yml"), "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "dark leave-one-out / noise" in out and out.strip().endswith("verdict: SUCCESS")
    strict = write_params(root / "strict.yml", campaign="sim", raw_dir="raw", output_dir="out", loo_pixels=0,
                          checks={"hot_fraction_max": 0.0})
    assert main(["evaluate", str(strict), "--root", str(root)]) == EXIT_CHECKS
    assert "checks FAILED: warm + hot fraction" in capsys.readouterr().err
    assert main(["evaluate", str(root / "params.yml"), "--root", str(root)]) == 0  # leave the fixture as it was


def test_a_second_run_on_the_same_output_is_refused(campaign, tmp_path):
    from cmoscal.products import hold

    root = campaign["root"]
    with hold(root / "out", "the test's own run"):
        result = cmoscal("run", root / "params.yml", "--root", root, "--stages", "summary")
    assert result.returncode == 1
    assert "is in use by the test's own run (pid" in result.stderr and result.stderr.count("\n") == 1
