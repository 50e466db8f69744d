"""Stage 1, inventory: find, classify and group the raw frames; say what the campaign supports.

Writes ``inventory.ecsv`` (one row per frame, with status and reason; the campaign's scale,
saturation, warnings and coverage in its metadata).
"""

from __future__ import annotations

import numpy as np
from astropy.table import Table

from ..errors import CampaignError
from ..fitsio import read_table, write_table
from ..inventory import build_inventory
from ..products import note, product, required, stage

__all__ = ["load", "raise_problems", "run"]


@stage("inventory")
def run(params: dict, strict: bool = True) -> Table:
    """Scan raw_dir and write ``inventory.ecsv``.

    With ``strict`` (the default), a campaign that cannot be calibrated (see
    :func:`cmoscal.inventory.coverage`) raises :class:`CampaignError` once the table is
    written; the notebook shows the table first and then calls :func:`raise_problems`.
    """
    table = build_inventory(params)
    write_table(table, product(params, "inventory"))
    note(**{status: int(np.sum(table["status"] == status)) for status in ("ok", "skipped", "rejected")})
    if strict:
        raise_problems(table)
    return table


def raise_problems(table: Table) -> None:
    """Raise :class:`CampaignError` (one line) when the campaign cannot give a bias and a dark model."""
    if table.meta.get("problems"):
        raise CampaignError("the campaign cannot be calibrated: " + "; ".join(table.meta["problems"]))


def load(params: dict) -> Table:
    """The inventory written by :func:`run`."""
    return read_table(required(params, "inventory"))
