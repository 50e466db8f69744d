"""The stages as declared once (cmoscal.products.PIPELINE): order, notebooks, ownership and staleness derive from it."""

import fnmatch

from astropy.io import fits
from conftest import write_params

from cmoscal.config import load_params
from cmoscal.products import DEPENDS, EXECUTION, LABELS, LEDGER, PIPELINE, STAGE, stage_states, upstream
from cmoscal.report import notebook_for
from cmoscal.simulate import simulate_campaign
from cmoscal.stages import STAGES
from cmoscal.stages.dark_model import model_id


def test_every_declared_stage_runs_under_its_name_and_has_its_notebook():
    assert list(STAGES) == [spec.name for spec in PIPELINE]
    for name, run in STAGES.items():
        assert run.stage_name == name
        assert notebook_for(name).name == STAGE[name].notebook
        assert all(PIPELINE.index(STAGE[dep]) < PIPELINE.index(STAGE[name]) for dep in DEPENDS[name])


def test_every_product_on_disk_has_exactly_one_owner(campaign):
    root = campaign["root"] / "out"
    files = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p.name not in (LEDGER, ".lock")]
    assert len(files) > 60
    for path in files:
        owners = [spec.name for spec in PIPELINE if any(fnmatch.fnmatch(path, pattern) for pattern in spec.owns)]
        assert len(owners) == 1, (path, owners)
    assert all(state == "current" for state, _ in stage_states(root).values())


def test_upstream_is_what_a_stage_reads_directly_or_not():
    assert upstream("hot_pixels") == {"inventory", "bias", "dark_masters", "dark_model", "hot_pixels"}
    assert upstream("inventory") == {"inventory"}


class Recording(dict):
    """Parameters that remember which keys were read."""

    def __init__(self, *args):
        super().__init__(*args)
        self.seen = set()

    def __getitem__(self, key):
        self.seen.add(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self.seen.add(key)
        return super().get(key, default)


def test_each_stage_reads_only_the_parameters_declared_for_it_and_upstream(tmp_path):
    simulate_campaign(tmp_path, shape=(16, 16), temperatures=(-10, 0, 10, 20), exptimes=(2, 20), frames=3,
                      bias_frames=3, held_out=True, seed=8)
    params = load_params(write_params(tmp_path / "p.yml", campaign="r", raw_dir="raw", output_dir="out",
                                      science_dir="held_out", synthesize=[{"temperature": 5.0, "exptime": 10.0}],
                                      hot_rate_min=1.0, hot_rate_unit="e-/s"), root=tmp_path)
    for name, run in STAGES.items():
        recording = Recording(params)
        run(recording)
        allowed = {key for spec in PIPELINE if spec.name in upstream(name) for key in spec.params}
        assert recording.seen - allowed - set(EXECUTION) - set(LABELS) == set(), name


def test_the_model_id_hashes_exactly_what_shapes_the_product(campaign):
    params, inventory = campaign["params"], campaign["results"]["inventory"]
    ids = {stage: model_id(params, inventory, stage) for stage in ("dark_model", "hot_pixels")}
    for key, value, moved in (("warm_sigma", 4.0, {"hot_pixels"}), ("outlier_sigma", 6.0, {"dark_model", "hot_pixels"}),
                              ("change_sigma", 3.0, {"dark_model", "hot_pixels"}), ("jump_sigma", 3.0, set()),
                              ("reference_campaign", "/elsewhere", set()),
                              ("output_dir", "/elsewhere", set())):
        changed = {stage for stage in ids if model_id(dict(params, **{key: value}), inventory, stage) != ids[stage]}
        assert changed == moved, key
    model = fits.getheader(campaign["root"] / "out" / "calibration_model.fits")["MODELID"]
    maps = fits.getheader(campaign["root"] / "out" / "dark_model" / "dark_B_map.fits")["MODELID"]
    assert (model, maps) == (ids["hot_pixels"], ids["dark_model"])
