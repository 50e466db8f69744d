"""The calibration model file and frame synthesis from it.

``calibration_model.fits`` holds all a user needs to make a bias or dark frame at
any temperature and exposure: the bias and dark parameter maps with their
covariances, the read noise, the DQ bitmask and its definition, and the
calibrated ranges.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits

from .bias import bias_at, bias_variance_at
from .darkfit import predict, predict_variance
from .fitsio import provenance, write_atomic, write_hdus
from .hotpix import dq_table

__all__ = ["CalibrationModel", "MODEL_FILE", "OutOfRangeWarning", "equations", "to_raw16", "write_synthetic"]

MODEL_FILE = "calibration_model.fits"
_META = {"CAMPAIGN": "calibration campaign", "GAIN": "e-/DN, from dark shot noise",
         "SCALEFAC": "raw / SCALEFAC = DN", "SATURATE": "DN", "NBIAS": "bias frames", "NDARK": "dark frames",
         "NBIASM": "master biases", "NDARKM": "master darks", "TREFHOT": "degC, temperature of the hot-pixel ranking"}
_COV_PLANES = ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2))  # lnA, slope, gamma


class OutOfRangeWarning(UserWarning):
    """A synthetic frame was requested outside the calibrated temperature or exposure range."""


def equations(form: str, fit_gamma: bool) -> tuple[str, str]:
    """Human-readable bias and dark model equations."""
    time = "t^gamma" if fit_gamma else "t"
    if form == "exponential":
        dark = f"DC = A * {time} * exp(B * (T - TMIN))"
    else:
        dark = f"DC = A * {time} * exp(-EA/k * (1/T_K - 1/TMIN_K))"
    return "BIAS = A + B * T", dark


@dataclass
class CalibrationModel:
    """Per-pixel bias and dark model of one campaign.

    Attributes
    ----------
    bias_a, bias_b : ndarray
        Bias at 0 degC [DN] and its slope [DN/degC].
    bias_cov : ndarray, shape (3, ny, nx)
        var(a), var(b), cov(a, b).
    read_noise : ndarray
        Read noise of one frame [DN].
    dark : ndarray, shape (3, ny, nx)
        lnA, slope (B [1/degC] or Ea [eV]), gamma.
    dark_cov : ndarray, shape (3, 3, ny, nx)
    chi2r : ndarray
        Reduced chi-square of the dark fit.
    converged : ndarray of bool
        Whether the dark fit converged.
    dq : ndarray (uint16)
        Bitmask, see :data:`cmoscal.hotpix.DQ_BITS`.
    form : str
        'exponential' or 'arrhenius'.
    fit_gamma : bool
        True for the 2d model, False for 1d (gamma = 1).
    tmin : float
        Reference temperature [degC].
    trange, exprange : tuple of float
        Calibrated temperature [degC] and exposure [s] ranges.
    meta : dict
        Further header keywords, see ``_META`` (gain, scale factor, saturation, input counts, ...).
    history : list of str
        HISTORY lines (the inputs).
    """

    bias_a: np.ndarray
    bias_b: np.ndarray
    bias_cov: np.ndarray
    read_noise: np.ndarray
    dark: np.ndarray
    dark_cov: np.ndarray
    chi2r: np.ndarray
    converged: np.ndarray
    dq: np.ndarray
    form: str
    fit_gamma: bool
    tmin: float
    trange: tuple
    exprange: tuple
    meta: dict = field(default_factory=dict)
    history: list = field(default_factory=list)

    # --- synthesis -----------------------------------------------------------------------
    def _check_range(self, temperature=None, exptime=None):
        lo, hi = self.trange
        if temperature is not None and not lo - 0.5 <= temperature <= hi + 0.5:
            warnings.warn(f"temperature {temperature:g} degC is outside the calibrated range "
                          f"{lo:.1f}..{hi:.1f} degC: the model is extrapolated", OutOfRangeWarning, stacklevel=3)
        lo, hi = self.exprange
        if exptime is not None and not lo * 0.98 <= exptime <= hi * 1.02:
            warnings.warn(f"exposure {exptime:g} s is outside the calibrated range {lo:g}..{hi:g} s: "
                          "the model is extrapolated", OutOfRangeWarning, stacklevel=3)

    def bias(self, temperature: float) -> np.ndarray:
        """Synthetic bias [DN] at ``temperature`` [degC]."""
        self._check_range(temperature)
        return bias_at(self.bias_a, self.bias_b, temperature)

    def bias_variance(self, temperature: float) -> np.ndarray:
        """Variance [DN^2] of :meth:`bias` from the parameter uncertainties."""
        return bias_variance_at(self.bias_cov, temperature)

    def dark_signal(self, temperature: float, exptime: float) -> np.ndarray:
        """Synthetic dark signal [DN] (bias excluded) at ``temperature`` [degC], ``exptime`` [s]."""
        self._check_range(temperature, exptime)
        return predict(self.dark, temperature, exptime, self.tmin, self.form).astype(np.float32)

    def dark_variance(self, temperature: float, exptime: float) -> np.ndarray:
        """Variance [DN^2] of :meth:`dark_signal` from the parameter covariance."""
        return predict_variance(self.dark, self.dark_cov, temperature, exptime, self.tmin,
                                self.form).astype(np.float32)

    def dark_frame(self, temperature: float, exptime: float) -> np.ndarray:
        """Synthetic full dark frame, bias + dark signal [DN]."""
        return self.bias(temperature) + self.dark_signal(temperature, exptime)

    # --- file --------------------------------------------------------------------------
    def header(self) -> fits.Header:
        """Primary header: equations, ranges, provenance."""
        bias_eq, dark_eq = equations(self.form, self.fit_gamma)
        header = fits.Header()
        provenance(header, bunit="DN", description="cmoscal per-pixel bias and dark calibration model",
                   BIASEQ=bias_eq, DARKEQ=dark_eq,
                   DARKFORM=(self.form, "exponential or arrhenius"),
                   DARKDIM=("2d" if self.fit_gamma else "1d", "2d fits gamma, 1d fixes gamma=1"),
                   TMIN=(self.tmin, "degC, reference temperature of DARK_A"),
                   TCALMIN=(self.trange[0], "degC, coldest calibrated"),
                   TCALMAX=(self.trange[1], "degC, warmest calibrated"),
                   TEXPMIN=(self.exprange[0], "s, shortest calibrated dark exposure"),
                   TEXPMAX=(self.exprange[1], "s, longest calibrated dark exposure"))
        header.add_comment("BIAS, A (bias) and DC in DN; T, TMIN in degC; T_K = T + 273.15; t in s; "
                           "dark A in DN/s^gamma, B in 1/degC, EA in eV")
        for key, value in self.meta.items():
            header[key] = (value, _META.get(key, ""))
        for line in self.history:
            header.add_history(line)
        return header

    def write(self, path: str | Path) -> Path:
        """Write the multi-extension model file atomically."""
        header = self.header()
        slope = ("DARK_B", "1/degC") if self.form == "exponential" else ("DARK_EA", "eV")
        images = [("BIAS_A", self.bias_a, "DN"), ("BIAS_B", self.bias_b, "DN/degC"),
                  ("BIAS_COV", self.bias_cov, "var(a) DN2; var(b) (DN/degC)2; cov(a,b) DN2/degC"),
                  ("READ_NOISE", self.read_noise, "DN"),
                  ("DARK_A", np.exp(self.dark[0]), "DN/s^gamma" if self.fit_gamma else "DN/s"),
                  (slope[0], self.dark[1], slope[1]), ("DARK_GAMMA", self.dark[2], ""),
                  ("DARK_COV", np.stack([self.dark_cov[i, j] for i, j in _COV_PLANES]),
                   "covariance of (lnA, slope, gamma): planes 00 11 22 01 02 12"),
                  ("DARK_CHI2R", self.chi2r, ""), ("DARK_CONVERGED", self.converged, ""), ("DQ", self.dq, "")]
        hdus = [fits.PrimaryHDU(header=header)]
        for name, data, unit in images:
            dtype = {"DQ": np.uint16, "DARK_CONVERGED": np.uint8}.get(name, np.float32)
            hdu = fits.ImageHDU(np.asarray(data, dtype=dtype), name=name)
            hdu.header["BUNIT"] = unit
            hdus.append(hdu)
        hdus.append(fits.table_to_hdu(dq_table()))
        hdus[-1].name = "DQ_DEF"
        return write_atomic(fits.HDUList(hdus), path)

    @classmethod
    def read(cls, path: str | Path) -> "CalibrationModel":
        """Load a model file written by :meth:`write`."""
        path = Path(path)
        if path.is_dir():
            path = path / MODEL_FILE
        if not path.exists():
            raise FileNotFoundError(f"{path}: no calibration model (run the dark_model stage first)")
        with fits.open(path) as hdul:
            h = hdul[0].header
            form = h["DARKFORM"]
            slope = hdul["DARK_B" if form == "exponential" else "DARK_EA"].data
            planes = hdul["DARK_COV"].data.astype(np.float64)
            cov = np.zeros((3, 3) + planes.shape[1:])
            for plane, (i, j) in zip(planes, _COV_PLANES):
                cov[i, j] = cov[j, i] = plane
            with np.errstate(divide="ignore"):
                lnA = np.log(hdul["DARK_A"].data.astype(np.float64))
            meta = {k: h[k] for k in _META if k in h}
            return cls(bias_a=hdul["BIAS_A"].data, bias_b=hdul["BIAS_B"].data, bias_cov=hdul["BIAS_COV"].data,
                       read_noise=hdul["READ_NOISE"].data,
                       dark=np.stack([lnA, slope.astype(np.float64), hdul["DARK_GAMMA"].data.astype(np.float64)]),
                       dark_cov=cov, chi2r=hdul["DARK_CHI2R"].data,
                       converged=hdul["DARK_CONVERGED"].data.astype(bool), dq=hdul["DQ"].data, form=form,
                       fit_gamma=h["DARKDIM"] == "2d", tmin=h["TMIN"], trange=(h["TCALMIN"], h["TCALMAX"]),
                       exprange=(h["TEXPMIN"], h["TEXPMAX"]), meta=meta,
                       history=[str(line) for line in h.get("HISTORY", [])])


def to_raw16(frame_dn: np.ndarray, scale_factor: float = 16, saturation: float = 4095) -> np.ndarray:
    """Convert a frame in DN to the camera's raw 16-bit convention (quantized, clipped, x scale)."""
    return (np.clip(np.rint(frame_dn), 0, saturation) * scale_factor).astype(np.uint16)


def write_synthetic(model: CalibrationModel, path: str | Path, temperature: float, exptime: float | None = None,
                    signal_only: bool = False, raw16: bool = False, history=()) -> np.ndarray:
    """Synthesize a frame and write it with a VARIANCE extension; return the frame.

    Parameters
    ----------
    model : CalibrationModel
    path : str or Path
        Output FITS file.
    temperature : float
        degC.
    exptime : float, optional
        Seconds; None makes a bias frame.
    signal_only : bool, default False
        Dark signal alone (no bias).
    raw16 : bool, default False
        Quantize, clip and multiply by the campaign's scale factor (the raw 16-bit convention).
    """
    if exptime is None:
        data, variance, kind = model.bias(temperature), model.bias_variance(temperature), "bias"
    else:
        data, variance = model.dark_signal(temperature, exptime), model.dark_variance(temperature, exptime)
        kind = "dark signal"
        if not signal_only:
            data, variance, kind = data + model.bias(temperature), variance + model.bias_variance(temperature), "dark"
    scale = model.meta.get("SCALEFAC", 16)
    if raw16:
        data = to_raw16(data, scale, model.meta.get("SATURATE", 4095))
    header = model.header()
    header["IMAGETYP"] = f"SYNTHETIC_{kind.upper().replace(' ', '_')}"
    provenance(header, bunit=f"DN x {scale:g} (raw 16-bit)" if raw16 else "DN",
               description=f"synthetic {kind} from the cmoscal calibration model", inputs=history,
               TEMP=(float(temperature), "degC"), EXPTIME=(float(exptime or 0.0), "s"))
    write_hdus(path, data, header, [("VARIANCE", variance.astype(np.float32), "DN2")])
    return data
