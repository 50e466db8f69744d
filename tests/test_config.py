import re
from importlib import resources

import pytest
from conftest import write_params

from cmoscal.config import ParamsError, default_params, load_params


def test_every_default_is_documented_and_valid(tmp_path):
    text = resources.files("cmoscal").joinpath("defaults.yml").read_text()
    for line in text.splitlines():
        if re.match(r"^\s*[a-z_]+:\s*\S", line):
            assert "#" in line, f"undocumented parameter line: {line}"
    params = load_params(write_params(tmp_path / "p.yml", campaign="x", raw_dir="."), root=tmp_path)
    assert set(params) == set(default_params())


def test_output_folders_default_to_campaign_names(tmp_path):
    params = load_params(write_params(tmp_path / "p.yml", campaign="c1", raw_dir="."), root=tmp_path)
    assert params["output_dir"] == str(tmp_path / "products" / "c1")
    assert params["report_dir"] == str(tmp_path / "reports" / "c1")


def test_all_problems_are_reported_at_once(tmp_path):
    path = write_params(tmp_path / "p.yml", campaign="x", raw_dir="missing", scale_factor="sixteen",
                        clip_sigma=-1, combine="mode", colour="red", checks={"loo_noise_max": 0.5})
    with pytest.raises(ParamsError) as err:
        load_params(path, root=tmp_path)
    message = str(err.value)
    for expected in ("colour: unknown parameter", "scale_factor: must be a number", "clip_sigma: must be >= 1",
                     "combine: must be one of mean, median", "checks.loo_noise_max: must be >= 1"):
        assert expected in message
    assert "\n" not in message


def test_missing_raw_dir_is_an_error(tmp_path):
    with pytest.raises(ParamsError, match="raw_dir: .*nowhere is not a directory"):
        load_params(write_params(tmp_path / "p.yml", campaign="x", raw_dir="nowhere"), root=tmp_path)


def test_synthesize_points_are_checked(tmp_path):
    path = write_params(tmp_path / "p.yml", campaign="x", raw_dir=".", synthesize=[{"temperature": 5}])
    with pytest.raises(ParamsError, match="synthesize"):
        load_params(path, root=tmp_path)
