"""Data quality: every DQ flag declared once, in a 32-bit word.

A flag has a name, a bit, its meaning (the DQ_DEF text) and the stage that sets it; the DQ_DEF
table of every product is generated from :data:`FLAGS`, code names flags (``DQ.HOT``), and a new
flag is one more line here. As in JWST's ``dqflags``, the word is 32 bits wide: room to grow.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
from astropy.table import Table

__all__ = ["DQ", "DQ_DTYPE", "FLAGS", "Flag", "dq_table", "flag_value", "from_fit_flags", "has", "set_by"]

DQ_DTYPE = np.uint32


@dataclass(frozen=True)
class Flag:
    """One DQ bit.

    Attributes
    ----------
    name : str
        As in DQ_DEF and ``calibration_mask``.
    bit : int
        0..31; the value is ``1 << bit``.
    meaning : str
        The DQ_DEF description.
    set_by : str
        The stage (or the calibration of a science frame) that sets it.
    fit_flag : str
        The flag of the dark-fit kernel it translates (:data:`cmoscal.kernels.FIT_FLAGS`), if any.
    verdict : bool
        A verdict on the model rather than a defect of the pixel: such pixels stay among the
        normal pixels the evaluation judges, so its checks see the misfit.
    """

    name: str
    bit: int
    meaning: str
    set_by: str
    fit_flag: str = ""
    verdict: bool = False

    @property
    def value(self) -> int:
        return 1 << self.bit


FLAGS = (
    Flag("HOT", 0, "dark rate above median x spread^hot_sigma at either end of the range, or above hot_rate_min, "
                   "by excess_sigma of its own uncertainty", "hot_pixels"),
    Flag("WARM", 1, "the same above median x spread^warm_sigma (and not hot)", "hot_pixels"),
    Flag("NOISY", 2, "read noise (the pixel's own, before moderation) above median + noisy_sigma * 1.4826 * MAD "
                     "and beyond chance at noisy_sigma (e.g. telegraph noise)", "hot_pixels"),
    Flag("SATURATED", 3, "saturated in at least one input frame: those samples are left out", "dark_model"),
    Flag("FEW_SAMPLES", 4, "too few valid master samples for the pixel's own dark fit", "dark_model", "FEW_SAMPLES"),
    Flag("POOR_FIT", 5, "reduced chi-square of the dark fit above poor_fit_chi2r and beyond chance at excess_sigma",
         "hot_pixels", verdict=True),
    Flag("FALLBACK", 6, "own fit not trusted (undetermined or out of bounds): population B/Ea, gamma, floor (or "
                        "bias slope) with the pixel's own amplitude", "dark_model", "FALLBACK"),
    Flag("OUTLIER", 7, "master samples dropped as outliers (e.g. cosmic rays in one-frame masters)", "dark_model",
         "OUTLIERS", verdict=True),
    Flag("FULL_WELL", 8, "samples on the pixel's full-well plateau dropped", "dark_model", "FULL_WELL"),
    Flag("DO_NOT_USE", 9, "no usable model (no valid sample): synthetic values are NaN", "dark_model", "NO_SAMPLES"),
    Flag("FRAME_SATURATED", 10, "calibrated frames only: saturated in the science frame itself", "calibration"),
    Flag("OUT_OF_RANGE", 11, "calibrated frames only: the frame's T or t is outside the calibrated range",
         "calibration"),
    Flag("FRAME_INVALID", 12, "calibrated frames only: the science frame's own value is not a finite number",
         "calibration"),
    Flag("UNRELIABLE_DARK", 13, "1-sigma error of ln(dark rate) above unreliable_dark_error at "
                                "hot_reference_temperature and the longest exposure: the dark is poorly known",
         "hot_pixels",
         verdict=True),
    Flag("CHANGED", 14, "dark rate changed beyond its prior model (prior_model) by more than change_sigma (beyond the "
                        "sensor's common drift): fitted from this campaign's frames alone", "dark_model"),
)

#: flag values by name: ``DQ.HOT``, ``DQ.WARM | DQ.HOT``, ...; ``DQ.DEFECT`` every flag that is not a verdict
#: on the model (a pixel with none of them is normal)
DQ = SimpleNamespace(**{flag.name: flag.value for flag in FLAGS},
                     DEFECT=sum(flag.value for flag in FLAGS if not flag.verdict))
_BY_NAME = {flag.name: flag for flag in FLAGS}


def flag_value(names) -> int:
    """The DQ word of the flags ``names`` (0 for none); a KeyError names an unknown one."""
    value = 0
    for name in names:
        if name not in _BY_NAME:
            raise KeyError(f"unknown DQ flag {name!r}; known: {', '.join(_BY_NAME)}")
        value |= _BY_NAME[name].value
    return value


def set_by(stage: str) -> int:
    """The DQ word of every flag that ``stage`` sets (a stage that runs again clears them first)."""
    return flag_value(flag.name for flag in FLAGS if flag.set_by == stage)


def from_fit_flags(flags: np.ndarray, fit_flags: dict) -> np.ndarray:
    """The DQ word of the dark-fit kernel's ``flags`` (``fit_flags``: :data:`cmoscal.kernels.FIT_FLAGS`)."""
    dq = np.zeros(np.shape(flags), DQ_DTYPE)
    for flag in FLAGS:
        if flag.fit_flag:
            dq[(flags & fit_flags[flag.fit_flag]) > 0] |= DQ_DTYPE(flag.value)
    return dq


def has(dq: np.ndarray, value: int) -> np.ndarray:
    """Pixels with any of the flags in ``value`` set."""
    return (dq & DQ_DTYPE(value)) > 0


def dq_table(dq: np.ndarray | None = None) -> Table:
    """The DQ_DEF table: bit, value, name, description (and pixel counts when ``dq`` is given)."""
    table = Table(rows=[(flag.bit, flag.value, flag.name, flag.meaning) for flag in FLAGS],
                  names=("BIT", "VALUE", "NAME", "DESCRIPTION"))
    if dq is not None:
        word = np.asarray(dq, DQ_DTYPE).ravel()
        halves = [np.bincount(word & 0xFFFF, minlength=1 << 16), np.bincount(word >> 16, minlength=1 << 16)]
        values = np.arange(1 << 16)
        table["NPIX"] = [int(halves[bit // 16][(values >> (bit % 16)) & 1 > 0].sum()) for bit in table["BIT"]]
        table["FRACTION"] = table["NPIX"] / word.size
    return table
