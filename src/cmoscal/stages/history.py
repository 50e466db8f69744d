"""Stage 12, history (optional): this campaign among the earlier campaigns of the same sensor.

Skipped when ``history_campaigns`` is empty. Puts this campaign and the earlier ones (their
``output_dir``) in time order and writes ``history/history.ecsv`` (one row per campaign) and
``history/drifts.ecsv`` (drift per year of each quantity, its jumps, the hot-pixel growth); see
:mod:`cmoscal.history`. The same is ``cmoscal history`` on the command line.
"""

from __future__ import annotations

from pathlib import Path

from astropy.table import Table

from ..errors import CampaignError
from ..fitsio import read_table, write_table
from ..history import history
from ..products import out, product, required, stage

__all__ = ["load", "run"]


@stage("history")
def run(params: dict) -> tuple[Table, Table] | None:
    """Write and return the history tables; None when ``history_campaigns`` is empty."""
    earlier = [Path(path) for path in params["history_campaigns"]]
    if not earlier:
        return None
    if out(params).resolve() in {path.resolve() for path in earlier}:
        raise CampaignError("history_campaigns: it lists this campaign's own output_dir; list the earlier ones")
    table, drift = history([*earlier, out(params)], params["jump_sigma"])
    folder = product(params, "history")
    write_table(table, folder / "history.ecsv")
    write_table(drift, folder / "drifts.ecsv")
    return table, drift


def load(params: dict) -> tuple[Table, Table]:
    """The tables written by :func:`run`."""
    folder = required(params, "history", "history.ecsv").parent
    return read_table(folder / "history.ecsv"), read_table(folder / "drifts.ecsv")
