"""Stage 11, dark budget: how much dark signal each temperature costs, for planning observations.

For each temperature of ``budget_temperatures`` (default: 11 across the calibrated range), the
median and 99.9th-percentile dark rate over usable pixels (every k-th on sensors of more than
2^20 pixels) (DN/s, and e-/s when the gain is
known) at the geometric-mean calibrated exposure, and the exposure beyond which a typical
pixel's dark shot noise exceeds its read noise: there a longer exposure is dark-limited. A
temperature further outside the calibrated range than the model allows is refused (its row says
why). Writes ``dark_budget.ecsv``.
"""

from __future__ import annotations

import functools
import warnings

import numpy as np
from astropy.table import Table

from ..compute import concurrently, workers
from ..dq import DQ, has
from ..errors import CampaignError, CampaignWarning
from ..fitsio import read_table, write_table
from ..model import CalibrationModel, shared_model
from ..products import product, required, stage

__all__ = ["budget_row", "load", "run", "temperatures"]

_POINTS = 11  # default temperatures across the calibrated range
_TAIL = 99.9  # percentile of the tail rate
_SAMPLE_BITS = 20  # the statistics use at most about 2^20 usable pixels, evenly spread


def temperatures(params: dict, model: CalibrationModel) -> list[float]:
    """``budget_temperatures``, or :data:`_POINTS` evenly across the calibrated range."""
    return [float(T) for T in params["budget_temperatures"]] or list(np.linspace(*model.trange, _POINTS))


def budget_row(model: CalibrationModel, temperature: float, pixels: np.ndarray) -> tuple:
    """Median and tail dark rate [DN/s, e-/s] at ``temperature`` and the read-noise-limited exposure [s].

    The exposure solves DC(t) / gain = read noise^2 [DN^2] per pixel (dark shot noise equal to
    read noise), with DC(t) = DC(t_ref) (t / t_ref)^gamma; the row gives its median over
    ``pixels`` (flat indices; NaN when the gain is unknown).
    """
    t_ref = float(np.sqrt(model.exprange[0] * model.exprange[1]))
    signal = model.prediction(temperature, t_ref)[0].ravel()[pixels].astype(np.float64)
    rate = signal / t_ref
    gain = float(model.meta.get("GAIN") or np.nan)
    gamma = model.dark[2].ravel()[pixels] if model.fit_gamma else 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        limit = t_ref * (gain * np.square(model.read_noise.ravel()[pixels], dtype=np.float64) / signal) ** (1 / gamma)
    limit = np.where(signal > 0, limit, np.inf)
    median, tail = np.percentile(rate, [50, _TAIL])
    return (temperature, median, median * gain, tail, tail * gain, float(np.median(limit)))


def _row(model: CalibrationModel, temperature: float, pixels: np.ndarray) -> tuple:
    """:func:`budget_row` with a note on extrapolation, or a refusal (and its warning) beyond the limits."""
    try:
        notes = model.check_request(temperature)
    except CampaignError as err:
        warnings.warn(f"budget_temperatures: {err}", CampaignWarning, stacklevel=2)
        return (temperature, *[np.nan] * 5, f"refused: {err}")
    return (*budget_row(model, temperature, pixels), "; ".join(notes))


@stage("dark_budget")
def run(params: dict) -> Table:
    """Write and return ``dark_budget.ecsv``: one row per temperature."""
    model = shared_model(required(params, "model"), workers(params))
    pixels = np.flatnonzero(~has(model.dq, DQ.DO_NOT_USE))
    pixels = pixels[::max(1, len(pixels) >> _SAMPLE_BITS)]  # every k-th usable pixel: at most ~2^20
    rows = concurrently([functools.partial(_row, model, T, pixels) for T in temperatures(params, model)],
                        workers(params))  # the temperatures on threads of their own
    table = Table(rows=rows, names=("temperature", "median_rate", "median_rate_e", "tail_rate", "tail_rate_e",
                                    "read_limited_exptime", "note"),
                  dtype=(float, float, float, float, float, float, str),
                  units=("deg_C", "DN/s", "electron/s", "DN/s", "electron/s", "s", None))
    table.meta.update(exptime=float(np.sqrt(model.exprange[0] * model.exprange[1])), tail_percentile=_TAIL,
                      gain=float(model.meta.get("GAIN") or np.nan), form=model.form)
    write_table(table, product(params, "dark_budget"))
    return table


def load(params: dict) -> Table:
    """The table written by :func:`run`."""
    return read_table(required(params, "dark_budget"))
