"""In flight (issue 20, parts 1, 2 and 4): each in-flight epoch's few darks within a few degrees update the
previous model through `prior_model`; the update predicts held-out darks, finds the new hot pixels and records
its parent; the same epochs alone are flagged; `cmoscal history` follows the sensor through them."""

import numpy as np
import pytest
from conftest import write_params

from cmoscal.config import load_params
from cmoscal.dq import DQ, has
from cmoscal.fitsio import read_table
from cmoscal.history import history
from cmoscal.model import CalibrationModel
from cmoscal.simulate import FLIGHT, held_out_residuals, read_truth, simulate_mission
from cmoscal.stages import STAGES

AGES = (0.5, 1.0, 2.0)
GROUND = dict(temperatures=(-10, 0, 10, 20, 25), exptimes=(2, 10, 60), frames=3, bias_frames=5)
THROUGH_SUMMARY = list(STAGES)[:8]


@pytest.fixture(scope="module")
def mission(tmp_path_factory):
    """A ground campaign, then in-flight epochs at 0.5, 1 and 2 years (darks at 8 and 10.5 degC, 10 and 60 s, 3
    frames; 5 biases); the bias jumps by 3 DN at 1 year. Each epoch is fitted with the previous model as its prior,
    and alone."""
    root = tmp_path_factory.mktemp("flight")
    truths = simulate_mission(root, ages=AGES, shape=(96, 96), jump_at=1.0, bias_jump=3.0, flight=FLIGHT,
                              hot_share=0.01, seed=21, **GROUND)
    names = list(truths)

    def run(name, out, **extra):
        params = load_params(write_params(root / f"{name}_{out}.yml", campaign=name, raw_dir=f"{name}/raw",
                                          output_dir=f"{name}/{out}", loo_pixels=0, **extra), root=root)
        for stage in THROUGH_SUMMARY:
            STAGES[stage](params)
        return root / name / out

    outputs = {names[0]: run(names[0], "out")}
    alone = {}
    for before, name in zip(names, names[1:]):
        outputs[name] = run(name, "out", prior_model=str(outputs[before]))
        alone[name] = run(name, "alone")
    return root, names, outputs, alone


def test_each_epoch_predicts_held_out_darks_at_its_temperatures_and_5_degC_beyond(mission):
    root, names, outputs, alone = mission
    for name in names[1:]:
        model = CalibrationModel.read(outputs[name] / "calibration_model.fits")
        errors = []
        for group, T, pulls in held_out_residuals(model, root / name):
            for kind, (pull, error) in pulls.items():
                assert pull.size >= 40, (name, group, kind)
                spread = 0.05 if kind == "normal" else 0.15  # ~60 hot pixels: the std itself scatters by ~0.1
                assert abs(np.std(pull) - 1) < spread, (name, group, kind, np.std(pull))
                assert abs(np.mean(pull)) < (0.1 if kind == "normal" else 0.3), (name, group, kind, np.mean(pull))
                if kind == "normal" and T > FLIGHT["temperatures"][-1] + 1:
                    errors.append(np.median(np.abs(error)))
        own = CalibrationModel.read(alone[name] / "calibration_model.fits")
        own_errors = [np.median(np.abs(e)) for _, T, p in held_out_residuals(own, root / name)
                      if T > FLIGHT["temperatures"][-1] + 1 for e in (p["normal"][1],)]
        assert max(errors) < 0.5 * min(own_errors), (errors, own_errors)  # 5 degC beyond: the prior's B helps


def test_without_a_prior_model_the_narrow_epoch_fails_its_extrapolation_check(mission):
    _, names, outputs, alone = mission
    for name in names[1:]:
        checks = {row["check"]: row for row in read_table(alone[name] / "checks.ecsv")}
        row = checks["dark extrapolation error / noise"]
        assert row["status"] == "FAIL" and "from these frames alone over" in row["reason"], row
        checks = {r["check"]: r for r in read_table(outputs[name] / "checks.ecsv")}
        row = checks["dark extrapolation error / noise"]
        assert row["status"] == "pass" and "from the prior model" in row["reason"], row
        failed = [r["check"] for r in checks.values() if r["status"] == "FAIL"]
        assert failed in ([], ["warm + hot fraction"]), failed  # 1 % planted hot pixels, and the new ones
    ground = {r["check"]: r for r in read_table(outputs[names[0]] / "checks.ecsv")}["dark extrapolation error / noise"]
    assert ground["status"] == "pass"


def test_new_hot_pixels_are_found_and_fitted_alone_and_the_model_records_its_parent(mission):
    root, names, outputs, _ = mission
    for before, name in zip(names, names[1:]):
        hot_then, truth = read_truth(root / before)["hot"], read_truth(root / name)
        new = truth["hot"] & ~hot_then
        model = CalibrationModel.read(outputs[name] / "calibration_model.fits")
        changed = has(model.dq, DQ.CHANGED)
        assert new.sum() >= 2 and changed[new].all(), (name, int(new.sum()), int(changed[new].sum()))
        assert not (changed & ~new).any(), (name, np.argwhere(changed & ~new))
        parent = CalibrationModel.read(outputs[before] / "calibration_model.fits")
        assert model.meta["PRIORID"] == parent.meta["MODELID"] and model.tmin == parent.tmin
        update = read_table(outputs[name] / "dark_model" / "prior_update.ecsv")
        rows = {row["parameter"]: row for row in update}
        jump = 3.0 if name == "age_1y" else 0.0
        step = 0.5 * (float(name[4:-1]) - float(before[4:-1] or 0)) + jump
        assert abs(rows["bias a"]["median_change"] - step) < 0.1, (name, rows["bias a"]["median_change"], step)
        assert rows["B"]["sigma_ratio"] > 0.9 and rows["bias b"]["sigma_ratio"] > 0.9  # the frames cannot tell
        assert update.meta["changed_pixels"] == int(changed.sum())
        years = float(name[4:-1]) - float(before[4:-1] or 0)
        ageing = (1 + 0.05 * float(name[4:-1])) / (1 + 0.05 * float(before[4:-1] or 0)) - 1
        assert abs(update.meta["common_change_percent"] - 100 * ageing) < 1.0, (name, years)


def test_history_follows_the_sensor_through_its_in_flight_epochs(mission):
    _, names, outputs, _ = mission
    table, drift = history([outputs[name] for name in names])
    rows = {row["quantity"]: row for row in drift}
    for name, truth in (("bias_a", 0.5), ("dark_rate", 0.05 * table["dark_rate"][0])):
        assert abs(rows[name]["drift_per_year"] - truth) < 3 * rows[name]["error"], (name, rows[name])
    assert rows["bias_a"]["jumps"].startswith("age_1y") and "age_2y" not in rows["bias_a"]["jumps"]
    for name in ("read_noise", "slope", "gamma"):
        assert not rows[name]["jumps"], (name, rows[name]["jumps"])
