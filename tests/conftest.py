"""Shared simulated campaigns: made once per test session."""

import hashlib

import pytest
import yaml

from cmoscal.config import load_params
from cmoscal.simulate import simulate_campaign
from cmoscal.stages import STAGES


def write_params(path, **values):
    """Write a campaign parameter file and return its path."""
    path.write_text(yaml.safe_dump(values))
    return path


def digest(folder):
    """Content hash of every file below ``folder`` (to prove raw inputs are never modified)."""
    h = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            h.update(path.name.encode())
            h.update(path.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="session")
def campaign(tmp_path_factory):
    """The issue's campaign layout (8 T x 5 t x 5 darks, 10 biases per T) on 64x64 pixels, processed."""
    root = tmp_path_factory.mktemp("campaign")
    truth = simulate_campaign(root, shape=(64, 64), bad_files=True, seed=3)
    raw_digest = digest(root / "raw")
    params = load_params(write_params(root / "params.yml", campaign="sim", raw_dir="raw", output_dir="out",
                                      report_dir="reports", loo_pixels=0), root=root)
    results = {name: stage(params) for name, stage in STAGES.items()}
    return dict(root=root, truth=truth, params=params, results=results, raw_digest=raw_digest)
