"""A sensor over its mission (issue 20, parts 3 and 4): `cmoscal simulate` writes campaigns of one ageing sensor,
`cmoscal history` recovers the planted drifts, the hot-pixel growth and the epoch of a jump."""

import numpy as np
import pytest
from conftest import write_params
from test_cli import cmoscal

from cmoscal.config import load_params
from cmoscal.errors import CampaignError
from cmoscal.fitsio import read_table
from cmoscal.history import history
from cmoscal.simulate import read_truth, simulate_mission
from cmoscal.stages import STAGES
from cmoscal.stages import history as history_stage

AGES = (0.5, 1.0, 2.0)
LAYOUT = dict(temperatures=(-10, 0, 10, 20), exptimes=(2, 10, 40), frames=3, bias_frames=5)


@pytest.fixture(scope="module")
def mission(tmp_path_factory):
    """Four campaigns of one sensor: first, then 0.5, 1 and 2 years later; the bias jumps by 3 DN at 1 year."""
    root = tmp_path_factory.mktemp("mission")
    truths = simulate_mission(root, ages=AGES, shape=(80, 80), jump_at=1.0, bias_jump=3.0, hot_share=0.002,
                              seed=12, **LAYOUT)
    outputs = []
    for name in truths:
        params = load_params(write_params(root / f"{name}.yml", campaign=name, raw_dir=f"{name}/raw",
                                          output_dir=f"{name}/out", loo_pixels=0), root=root)
        for stage in list(STAGES)[:5]:
            STAGES[stage](params)
        outputs.append(root / name / "out")
    return root, truths, outputs


def within(value, error, truth, sigma=3.0):
    return abs(value - truth) <= sigma * error


def test_history_recovers_the_planted_drifts_growth_and_jump(mission):
    root, truths, outputs = mission
    table, drift = history(outputs[::-1])  # given in any order: placed by the frames' dates
    assert list(table["campaign"]) == list(truths) and np.allclose(table["years"], (0, *AGES), atol=0.01)
    hot = [read_truth(root / name)["hot"] for name in truths]
    assert list(table["new"][1:]) == [int((b & ~a).sum()) for a, b in zip(hot, hot[1:])]  # every new hot pixel
    assert list(table["gone"]) == [0] * len(truths) and list(table["flagged"]) == [int(h.sum()) for h in hot]
    rows = {row["quantity"]: row for row in drift}
    assert within(rows["bias_a"]["drift_per_year"], rows["bias_a"]["error"], 0.5)
    assert rows["bias_a"]["jumps"].startswith("age_1y (2027-01-01): +") and "age_2y" not in rows["bias_a"]["jumps"]
    assert abs(float(rows["bias_a"]["jumps"].rsplit("+", 1)[1]) - 3.0) < 0.2
    rate = rows["dark_rate"]
    assert within(rate["drift_per_year"], rate["error"], 0.05 * table["dark_rate"][0])  # +5 % a year
    for name in ("read_noise", "slope", "gamma"):
        assert within(rows[name]["drift_per_year"], rows[name]["error"], 0.0) and not rows[name]["jumps"], name
    planted = int((hot[-1] & ~hot[0]).sum())
    assert drift.meta["new_flagged_per_year"] == pytest.approx(planted / 2.0, abs=0.01)


def test_history_command_writes_its_tables_and_refuses_what_it_cannot_place(mission, tmp_path):
    *_, outputs = mission
    result = cmoscal("history", *map(str, outputs), "--output", str(tmp_path / "history.ecsv"))
    assert result.returncode == 0, result.stderr
    assert "new warm/hot pixels" in result.stdout and "age_1y (2027-01-01)" in result.stdout
    assert len(read_table(tmp_path / "history.ecsv")) == 4
    assert "bias_a" in list(read_table(tmp_path / "history_drifts.ecsv")["quantity"])
    with pytest.raises(CampaignError, match="at least two campaigns"):
        history(outputs[:1])


def test_the_history_stage_follows_this_campaign_among_the_earlier_ones(mission):
    root, truths, _ = mission
    name = list(truths)[-1]
    params = load_params(write_params(root / "last.yml", campaign=name, raw_dir=f"{name}/raw", output_dir=f"{name}/out",
                                      history_campaigns=[f"{n}/out" for n in list(truths)[:-1]]), root=root)
    _, drift = STAGES["history"](params)
    stored, drifts = history_stage.load(params)
    assert list(stored["campaign"]) == list(truths) and list(drifts["jumps"]) == list(drift["jumps"])
    again = dict(params, history_campaigns=[*params["history_campaigns"], params["output_dir"]])
    with pytest.raises(CampaignError, match="this campaign's own output_dir"):
        STAGES["history"](again)
