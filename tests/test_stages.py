"""The stages as declared once (cmoscal.products.PIPELINE): order, notebooks, ownership and staleness derive from it."""

import fnmatch

from cmoscal.products import DEPENDS, LEDGER, PIPELINE, STAGE, stage_states, upstream
from cmoscal.report import notebook_for
from cmoscal.stages import STAGES


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
