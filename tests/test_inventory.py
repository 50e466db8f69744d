import numpy as np
import pytest
from astropy.io import fits

from cmoscal.config import default_params
from cmoscal.inventory import build_inventory, chain_groups


def params_for(raw_dir, **overrides):
    return {**default_params(), "raw_dir": str(raw_dir), "campaign": "t", **overrides}


def frame(path, header=None, value=1000, shape=(8, 8)):
    path.parent.mkdir(parents=True, exist_ok=True)
    fits.PrimaryHDU((np.full(shape, value) + np.arange(shape[1])).astype(np.uint16) * 16,
                    fits.Header(header or {})).writeto(path)


def test_chain_groups_follow_jitter_and_split_set_points():
    temps = [10.1, 9.8, 10.3, 15.0, 14.7, -5.0, 10.0]
    labels = chain_groups(temps, 0.5)
    assert labels.tolist() == [1, 1, 1, 2, 2, 0, 1]
    assert chain_groups([1.0, 1.01, 5.0, 5.05], 0.02, relative=True).tolist() == [0, 0, 1, 1]


def test_bad_files_are_rejected_with_reasons(campaign):
    inventory = campaign["results"]["inventory"]
    reasons = {row["path"]: row["reason"] for row in inventory if row["status"] == "rejected"}
    assert "unreadable FITS" in reasons["dark/bad_truncated.fits"]
    assert "no temperature" in reasons["dark/bad_no_temperature.fits"]
    assert reasons["bias/bad_all_zero.fits"] == "all-zero frame"
    assert "differs from the campaign's 64x64" in reasons["dark/bad_wrong_shape.fits"]
    assert "unreadable FITS" in reasons["bad_not_fits.fits"]
    assert all(reasons.values())
    ok = inventory[inventory["status"] == "ok"]
    assert len(ok) + len(reasons) == len(inventory)
    assert len(set(ok["group"][ok["type"] == "bias"])) == 8
    assert len(set(ok["group"][ok["type"] == "dark"])) == 40


@pytest.mark.filterwarnings("ignore:Keyword name 'TEMPERATURE'")
def test_classification_by_imagetyp_then_folder_then_exposure(tmp_path):
    frame(tmp_path / "a" / "x.fits", {"IMAGETYP": "Dark Frame", "EXPTIME": 0.01, "CCD-TEMP": 1.0})
    frame(tmp_path / "biases" / "y.fit", {"EXPTIME": 5.0, "TEMP": 1.0})
    frame(tmp_path / "misc" / "z.fts", {"EXPOSURE": 0.05, "TEMPERATURE": 1.0})
    frame(tmp_path / "misc" / "w.fits", {"EXPOSURE": 3.0, "DET-TEMP": 1.2})
    frame(tmp_path / "misc" / "light.fits", {"IMAGETYP": "LIGHT", "EXPOSURE": 3.0, "DET-TEMP": 1.2})
    table = build_inventory(params_for(tmp_path, min_frames=1))
    kinds = dict(zip(table["path"], table["type"]))
    assert kinds == {"a/x.fits": "dark", "biases/y.fit": "bias", "misc/z.fts": "bias", "misc/w.fits": "dark",
                     "misc/light.fits": ""}
    assert "neither bias nor dark" in table["reason"][table["path"] == "misc/light.fits"][0]


def test_compressed_files_are_found(tmp_path):
    frame(tmp_path / "a.fits", {"IMAGETYP": "BIAS", "EXPTIME": 0.0, "CCD-TEMP": 1.0})
    hdu = fits.CompImageHDU(fits.getdata(tmp_path / "a.fits"), fits.getheader(tmp_path / "a.fits"))
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(tmp_path / "b.fits.fz")
    table = build_inventory(params_for(tmp_path))
    assert sorted(table["path"]) == ["a.fits", "b.fits.fz"]
    assert list(table["status"]) == ["ok", "ok"]


def test_small_groups_and_scale_problems_are_reported(tmp_path):
    frame(tmp_path / "a.fits", {"IMAGETYP": "BIAS", "EXPTIME": 0.0, "CCD-TEMP": 1.0})
    raw = np.arange(64, dtype=np.uint16).reshape(8, 8) + 1001  # not multiples of 16
    header = fits.Header({"IMAGETYP": "BIAS", "EXPTIME": 0.0, "CCD-TEMP": 1.1})
    fits.PrimaryHDU(raw, header).writeto(tmp_path / "b.fits")
    with pytest.warns(UserWarning, match="not multiples of it"):
        table = build_inventory(params_for(tmp_path, min_frames=3))
    assert all("fewer than min_frames=3" in r for r in table["reason"])


def test_empty_raw_dir_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no FITS files"):
        build_inventory(params_for(tmp_path))
