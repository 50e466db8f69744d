"""The inventory: every container read alike, every frame classified with a reason, coverage stated."""

import gzip
import os
import shutil

import numpy as np
import pytest
from astropy.io import fits

from cmoscal.config import default_params
from cmoscal.errors import CampaignWarning
from cmoscal.fitsio import frames_in, read_stack
from cmoscal.inventory import build_inventory, chain_groups, coverage


def params_for(raw_dir, **overrides):
    return {**default_params(), "raw_dir": str(raw_dir), "campaign": "t", **overrides}


def frame(path, header=None, value=1000, shape=(8, 8), data=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    if data is None:
        data = (np.full(shape, value) + np.arange(shape[1])).astype(np.uint16) * 16
    cards = fits.Header()
    for key, value in (header or {}).items():
        cards[key] = value
    fits.PrimaryHDU(data, cards).writeto(path)


def test_every_container_gives_the_same_values(tmp_path):
    rng = np.random.default_rng(0)
    data = (rng.integers(40, 4096, (3, 24, 16)) * 16).astype(np.uint16)
    data[0, 0, 0] = 65520
    header = fits.Header({"IMAGETYP": "DARK"})
    fits.PrimaryHDU(data[0], header).writeto(tmp_path / "plain.fits")
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data[0], header, compression_type="RICE_1")]).writeto(
        tmp_path / "rice.fits.fz")
    with open(tmp_path / "plain.fits", "rb") as src, gzip.open(tmp_path / "zipped.fits.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    fits.HDUList([fits.PrimaryHDU(header=header), fits.ImageHDU(data[0])]).writeto(tmp_path / "extension.fits")
    fits.PrimaryHDU(data[0].astype(np.float32), header).writeto(tmp_path / "float.fits")
    fits.PrimaryHDU(data, header).writeto(tmp_path / "cube.fits")
    reference = None
    for name in ("plain.fits", "rice.fits.fz", "zipped.fits.gz", "extension.fits", "float.fits", "cube.fits"):
        _, refs = frames_in(tmp_path / name)
        for rows in (slice(None), slice(5, 11)):
            stack, counts, _ = read_stack(refs[:1], rows, 16, 4095)
            if reference is None:
                reference = stack
            np.testing.assert_array_equal(stack[0], reference[0][rows], err_msg=name)
            assert counts[0, 0] == (rows.start is None), name  # the one saturated pixel is in row 0
    _, refs = frames_in(tmp_path / "cube.fits")
    assert len(refs) == 3
    np.testing.assert_array_equal(read_stack(refs, slice(None), 16, 4095)[0][2], data[2] / 16)


def test_chain_groups_follow_jitter_and_split_set_points():
    temps = [10.1, 9.8, 10.3, 15.0, 14.7, -5.0, 10.0]
    assert chain_groups(temps, 0.5).tolist() == [1, 1, 1, 2, 2, 0, 1]
    assert chain_groups([1.0, 1.01, 5.0, 5.05], 0.02, relative=True).tolist() == [0, 0, 1, 1]


@pytest.mark.filterwarnings("ignore:Keyword name 'TEMPERATURE'")
def test_classification_by_frame_type_then_folder_then_exposure(tmp_path):
    frame(tmp_path / "a" / "x.fits", {"IMAGETYP": "Dark Frame", "EXPTIME": 0.01, "CCD-TEMP": 1.0})
    frame(tmp_path / "biases" / "y.fit", {"EXPTIME": 5.0, "TEMP": 1.0})
    frame(tmp_path / "misc" / "z.fts", {"EXPOSURE": 0.05, "TEMPERATURE": 1.0})
    frame(tmp_path / "misc" / "w.fits", {"EXPOSURE": 3.0, "DET-TEMP": 1.2})
    frame(tmp_path / "misc" / "o.fits", {"OBSTYPE": "ZERO", "EXPOSURE": 0.0, "DET-TEMP": 1.2})
    frame(tmp_path / "misc" / "light.fits", {"IMAGETYP": "LIGHT", "EXPOSURE": 3.0, "DET-TEMP": 1.2})
    frame(tmp_path / "flats" / "f.fits", {"EXPOSURE": 3.0, "DET-TEMP": 1.2})
    table = build_inventory(params_for(tmp_path))
    kinds = dict(zip(table["path"], table["type"]))
    assert kinds == {"a/x.fits": "dark", "biases/y.fit": "bias", "misc/z.fts": "bias", "misc/w.fits": "dark",
                     "misc/o.fits": "bias", "misc/light.fits": "light", "flats/f.fits": "flat"}
    status = dict(zip(table["path"], table["status"]))
    assert status["misc/light.fits"] == "skipped" and status["flats/f.fits"] == "skipped"
    assert "light frame: not a bias or dark" in table["reason"][table["path"] == "misc/light.fits"][0]


def test_units_kelvin_and_impossible_temperatures(tmp_path):
    frame(tmp_path / "ms.fits", {"IMAGETYP": "DARK", "EXPTIME": (30000.0, "[ms] exposure"), "CCD-TEMP": 1.0})
    frame(tmp_path / "us.fits", {"IMAGETYP": "DARK", "EXPTIME": (3e7, "exposure in us"), "CCD-TEMP": 1.0})
    frame(tmp_path / "k.fits", {"IMAGETYP": "BIAS", "EXPTIME": 0.0, "CCD-TEMP": 274.15})
    frame(tmp_path / "cold.fits", {"IMAGETYP": "BIAS", "EXPTIME": 0.0, "CCD-TEMP": -300.0})
    table = build_inventory(params_for(tmp_path))
    row = {r["path"]: r for r in table}
    assert row["ms.fits"]["exposure"] == 30.0 and "exposure in ms" in row["ms.fits"]["note"]
    assert row["us.fits"]["exposure"] == 30.0
    assert abs(row["k.fits"]["temperature"] - 1.0) < 1e-9 and "kelvin" in row["k.fits"]["note"]
    assert row["cold.fits"]["status"] == "rejected" and "below absolute zero" in row["cold.fits"]["reason"]
    frame(tmp_path / "plain_ms.fits", {"IMAGETYP": "DARK", "EXPTIME": 45000.0, "CCD-TEMP": 1.0})
    with pytest.warns(CampaignWarning, match="set exposure_unit"):
        build_inventory(params_for(tmp_path))
    table = build_inventory(params_for(tmp_path, exposure_unit="ms"))
    assert table["exposure"][table["path"] == "plain_ms.fits"][0] == 45.0


def test_readout_configurations_are_not_mixed(tmp_path):
    for i in range(3):
        frame(tmp_path / f"a{i}.fits", {"IMAGETYP": "BIAS", "EXPTIME": 0.0, "CCD-TEMP": 1.0, "XBINNING": 1,
                                        "GAIN": 100})
    frame(tmp_path / "b.fits", {"IMAGETYP": "BIAS", "EXPTIME": 0.0, "CCD-TEMP": 1.0, "XBINNING": 1, "GAIN": 200})
    frame(tmp_path / "c.fits", {"IMAGETYP": "BIAS", "EXPTIME": 0.0, "CCD-TEMP": 1.0, "XBINNING": 2, "GAIN": 100},
          shape=(4, 4))
    frame(tmp_path / "d.fits", {"IMAGETYP": "BIAS", "EXPTIME": 0.0, "CCD-TEMP": 1.0, "XBINNING": 1, "GAIN": 100},
          shape=(8, 4))
    table = build_inventory(params_for(tmp_path))
    status = dict(zip(table["path"], table["status"]))
    assert [status[f"a{i}.fits"] for i in range(3)] == ["ok"] * 3
    assert status["b.fits"] == status["c.fits"] == "skipped"
    assert "GAIN=200 differs from the campaign's XBINNING=1, GAIN=100" in table["reason"][table["path"] == "b.fits"][0]
    assert status["d.fits"] == "rejected" and "shape 8x4 differs" in table["reason"][table["path"] == "d.fits"][0]


def test_include_exclude_symlinks_and_cubes(tmp_path):
    raw = tmp_path / "raw"
    frame(raw / "keep" / "a.fits", {"IMAGETYP": "BIAS", "EXPTIME": 0.0, "CCD-TEMP": 1.0})
    frame(raw / "keep" / "old_b.fits", {"IMAGETYP": "BIAS", "EXPTIME": 0.0, "CCD-TEMP": 1.0})
    frame(tmp_path / "elsewhere" / "c.fits", {"IMAGETYP": "BIAS", "EXPTIME": 0.0, "CCD-TEMP": 1.0})
    os.symlink(tmp_path / "elsewhere", raw / "linked")
    os.symlink(raw, raw / "keep" / "loop")  # a cycle must not hang the scan
    cube = np.stack([np.full((8, 8), v, np.uint16) * 16 for v in (100, 101, 102, 103)])
    frame(raw / "burst.fits", {"IMAGETYP": "BIAS", "EXPTIME": 0.0, "CCD-TEMP": 1.0}, data=cube)
    table = build_inventory(params_for(raw, exclude=["*/old_*"]))
    rows = {(r["path"], r["plane"]): r["status"] for r in table}
    assert rows[("linked/c.fits", -1)] == "ok" and rows[("keep/a.fits", -1)] == "ok"
    assert rows[("keep/old_b.fits", -1)] == "skipped"
    assert [rows[("burst.fits", p)] for p in range(4)] == ["ok"] * 4
    assert "excluded by '*/old_*'" in table["reason"][table["path"] == "keep/old_b.fits"][0]
    only = build_inventory(params_for(raw, include=["burst*"]))
    assert set(only["path"][only["status"] == "ok"]) == {"burst.fits"}


def test_scale_and_saturation_are_recognised_from_the_data(tmp_path):
    frame(tmp_path / "x16.fits", {"IMAGETYP": "BIAS", "EXPTIME": 0.0, "CCD-TEMP": 1.0})
    table = build_inventory(params_for(tmp_path))
    assert table.meta["scale_factor"] == 16 and table.meta["saturation"] == 4095
    native = tmp_path / "native"
    frame(native / "n.fits", {"IMAGETYP": "BIAS", "EXPTIME": 0.0, "CCD-TEMP": 1.0, "SATURATE": 56000},
          data=np.arange(64, dtype=np.uint16).reshape(8, 8) + 1001)
    table = build_inventory(params_for(native))
    assert table.meta["scale_factor"] == 1 and table.meta["saturation"] == 56000
    with pytest.warns(CampaignWarning, match="multiples of 1 only"):
        build_inventory(params_for(native, scale_factor=16))


def test_coverage_says_what_is_missing_for_what(tmp_path):
    for i in range(2):
        frame(tmp_path / f"b{i}.fits", {"IMAGETYP": "BIAS", "EXPTIME": 0.0, "CCD-TEMP": -4.9})
        frame(tmp_path / f"d{i}.fits", {"IMAGETYP": "DARK", "EXPTIME": 10.0, "CCD-TEMP": -4.9})
    table = build_inventory(params_for(tmp_path))
    problems = table.meta["problems"]
    assert "biases cover 1 temperature (-4.9 degC): the bias model needs >= 2" in problems
    assert "darks cover 1 temperature (-4.9 degC): the dark model needs >= 2, leave-one-out >= 3" in problems
    frame(tmp_path / "b9.fits", {"IMAGETYP": "BIAS", "EXPTIME": 0.0, "CCD-TEMP": 5.0})
    frame(tmp_path / "d9.fits", {"IMAGETYP": "DARK", "EXPTIME": 10.0, "CCD-TEMP": 5.0})
    frame(tmp_path / "d8.fits", {"IMAGETYP": "DARK", "EXPTIME": 10.0, "CCD-TEMP": 15.0})
    table = build_inventory(params_for(tmp_path))
    problems, notes = coverage(table, params_for(tmp_path))
    assert problems == [] and any("bias leave-one-out needs >= 3" in n for n in notes)


def test_most_files_rejected_names_the_reasons_and_the_keywords_found(tmp_path):
    for i in range(4):
        frame(tmp_path / f"d{i}.fits", {"IMAGETYP": "DARK", "EXPTIME": 10.0, "SENSTEMP": -4.9})
    with pytest.warns(CampaignWarning) as caught:
        table = build_inventory(params_for(tmp_path))
    message = " ".join(str(w.message) for w in caught)
    assert "4 of 4 calibration files rejected: no temperature" in message and "SENSTEMP=-4.9" in message
    assert all(table["status"] == "rejected")


def test_bad_files_are_rejected_with_reasons(campaign):
    inventory = campaign["results"]["inventory"]
    reasons = {row["path"]: row["reason"] for row in inventory if row["status"] == "rejected"}
    assert "unreadable FITS" in reasons["dark/bad_truncated.fits"]
    assert "no temperature" in reasons["dark/bad_no_temperature.fits"]
    assert "differs from the campaign's 64x64" in reasons["dark/bad_wrong_shape.fits"]
    assert "unreadable FITS" in reasons["bad_not_fits.fits"]
    frames = campaign["results"]["bias"]["frames"]
    assert frames["reason"][frames["frame"] == "bias/bad_all_zero.fits"][0] == "all-zero frame"
    ok = inventory[inventory["status"] == "ok"]
    assert len(set(ok["group"][ok["type"] == "bias"])) == 8
    assert len(set(ok["group"][ok["type"] == "dark"])) == 40


def test_empty_raw_dir_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no FITS files"):
        build_inventory(params_for(tmp_path))
