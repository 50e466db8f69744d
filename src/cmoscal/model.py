"""The calibration model file and frame synthesis from it.

``calibration_model.fits`` holds all a user needs to make a bias or dark frame at any
temperature and exposure: the bias and dark parameter maps with their covariances, the read
noise, the DQ bitmask and its definition, the calibrated ranges and how far beyond them the
model may be used.

Synthesis never returns inf or absurd values: pixels whose own fit was not trusted carry
population parameters (DQ FALLBACK), pixels with no usable model are NaN (DQ DO_NOT_USE).
Requests below absolute zero or further than ``max_extrapolation`` / ``max_exposure_factor``
beyond the calibrated ranges are refused with one line; requests just outside are made with
an :class:`~cmoscal.errors.OutOfRangeWarning`, recorded in the product's header.
"""

from __future__ import annotations

import functools
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from astropy.io import fits

from .bias import bias_at, bias_variance_at
from .compute import concurrently
from .darkfit import temperature_feature
from .dq import DQ, DQ_DTYPE, dq_table
from .errors import CampaignError, OutOfRangeWarning
from .fitsio import Later, has_image, provenance, read_product, set_card, write_hdus
from .forms import KELVIN, dark_form
from .kernels import predict_dark, predict_log_rate
from .products import LEDGER, MODEL_FILE, require_current

__all__ = ["BIAS_EQUATION", "MODEL_FILE", "CalibrationModel", "equations", "shared_model", "to_raw16", "usable_model",
           "write_synthetic"]

_META = {"CAMPAIGN": "calibration campaign", "GAIN": "e-/DN (0: unknown)", "GAINSRC": "source of GAIN",
         "GAINERR": "statistical relative error of GAIN (0: stated)",
         "SCALEFAC": "raw / SCALEFAC = DN", "SATURATE": "DN", "NBIAS": "bias frames", "NDARK": "dark frames",
         "NBIASM": "master biases", "NDARKM": "master darks", "RNDOF": "degrees of freedom of READ_NOISE",
         "RNOWNDOF": "of them from each pixel's own frames", "RNPOPDOF": "of them from the population",
         "RNPOPVAR": "DN2, population scale of the read variance", "RNTELFRC": "telegraph share of READ_NOISE prior",
         "RNSOURCE": "what READ_NOISE comes from",
         "TREFHOT": "degC, reference of hot_rate_min", "FORMREQ": "dark_form requested (auto: chosen by the data)",
         "FORMVZ": "Vuong z of the temperature laws", "FLOORZ": "likelihood-ratio z of the floor",
         "DQCLASS": "DQ has the hot_pixels classification",
         "MODELID": "model id: hash of inputs and parameters", "PRIORID": "MODELID of the prior model (prior_model)",
         "PRIORCMP": "campaign of the prior model", "PRIORFIL": "file of the prior model",
         "REFTYPE": "kind of reference file",
         "PEDIGREE": "origin of the calibration data", "USEAFTER": "use for data taken after this date",
         "AUTHOR": "who made this file", "INSTRUME": "", "TELESCOP": "", "DETECTOR": ""}
_PRIOR = ("POPSLOPE", "POPGAMMA", "POPFLOOR", "POPVSLOP", "POPVGAMM", "POPVFLOR")
_PRIOR_TEXT = ("B or Ea of FALLBACK pixels", "gamma of FALLBACK pixels", "floor C of FALLBACK pixels",
               "population var of POPSLOPE", "population var of POPGAMMA", "population var of POPFLOOR")
_REQUIRED = ("BIAS_A", "BIAS_B", "BIAS_COV", "READ_NOISE", "DARK_A", "DARK_GAMMA", "DARK_COV", "DARK_CHI2R", "DQ")
_RANGE_TOLERANCE = (0.5, 0.02)  # degC and relative: inside this, a request counts as calibrated


BIAS_EQUATION = "BIAS = A + B * T"


def equations(form: str, fit_gamma: bool) -> tuple[str, str]:
    """Human-readable bias and dark model equations."""
    return BIAS_EQUATION, dark_form(form).equation(fit_gamma)


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
    dark : ndarray, shape (3, ny, nx), or (4, ny, nx) for a form with a floor
        lnA, slope (B [1/degC] or Ea [eV]), gamma[, floor C in the unit of A].
    dark_cov : ndarray, shape (6, ny, nx), or (10, ny, nx) with a floor
        Covariance planes of (lnA, slope, gamma[, C]): :data:`cmoscal.kernels.COVARIANCE_PLANES`.
    dark_bias_cov : ndarray, shape (6, ny, nx), or (8, ny, nx) with a floor
        Covariance of (lnA, slope, gamma[, C]) with the bias model's (a, b): :data:`cmoscal.kernels.CROSS_PLANES`.
        The dark fit removed that bias model from its masters, so a synthetic frame's variance has twice the
        covariance of its two parts (:meth:`frame_prediction`); zero where the masters' bias was not the model.
    chi2r : ndarray
        Reduced chi-square of the dark fit.
    nvalid : ndarray
        Master samples the dark fit used.
    dq : ndarray (uint32)
        Bitmask, see :mod:`cmoscal.dq`.
    form : str
        A name of :data:`cmoscal.forms.FORMS`.
    fit_gamma : bool
        True for the 2d model, False for 1d (gamma = 1).
    tmin : float
        Reference temperature [degC].
    trange, exprange : tuple of float
        Calibrated temperature [degC] and exposure [s] ranges.
    max_extrapolation, max_exposure_factor : float
        How far beyond the ranges a request is still made (degC, factor).
    prior : tuple
        Population slope, gamma, floor (NaN without one) and their variances, given to FALLBACK pixels.
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
    dark_bias_cov: np.ndarray
    chi2r: np.ndarray
    nvalid: np.ndarray
    dq: np.ndarray
    form: str
    fit_gamma: bool
    tmin: float
    trange: tuple
    exprange: tuple
    max_extrapolation: float = 5.0
    max_exposure_factor: float = 2.0
    prior: tuple = (np.nan, np.nan, np.nan, 0.0, 0.0, 0.0)
    meta: dict = field(default_factory=dict)
    history: list = field(default_factory=list)

    @functools.cached_property
    def read_variance(self) -> np.ndarray:
        """Read variance of one frame [DN^2] (float32), computed once."""
        return np.square(self.read_noise, dtype=np.float32)

    # --- synthesis -----------------------------------------------------------------------
    @property
    def dark_dof(self) -> np.ndarray:
        """Degrees of freedom of each pixel's dark fit: valid samples less the parameters the samples determine (all
        of an own fit; lnA alone for a FALLBACK pixel, or for one fitted with a prior model, whose chi-square holds the
        prior's terms too)."""
        floor = len(self.dark) - 3
        own = 1 if self.meta.get("PRIORID") else (3 if self.fit_gamma else 2) + floor
        alone = (self.dq & DQ_DTYPE(DQ.CHANGED)) > 0
        fitted = np.where((self.dq & DQ_DTYPE(DQ.FALLBACK)) > 0, 1 + floor,
                          np.where(alone, (3 if self.fit_gamma else 2) + floor, own))
        return self.nvalid.astype(np.int64) - fitted

    def check_request(self, temperature: float, exptime: float | None = None) -> list[str]:
        """Warnings for a request just outside the calibrated ranges.

        Raises
        ------
        CampaignError
            Below absolute zero, a non-positive exposure, or further outside than the limits.
        """
        messages = []
        lo, hi = self.trange
        margin = self.max_extrapolation
        if not np.isfinite(temperature) or temperature <= -KELVIN:
            raise CampaignError(f"temperature {temperature:g} degC is below absolute zero")
        if not lo - margin <= temperature <= hi + margin:
            raise CampaignError(f"temperature {temperature:g} degC is more than {margin:g} degC outside the "
                                f"calibrated range {lo:.1f}..{hi:.1f} degC (max_extrapolation)")
        if not lo - _RANGE_TOLERANCE[0] <= temperature <= hi + _RANGE_TOLERANCE[0]:
            messages.append(f"temperature {temperature:g} degC is outside the calibrated range {lo:.1f}..{hi:.1f} "
                            "degC: the model is extrapolated")
        if exptime is not None:
            lo, hi = self.exprange
            factor = self.max_exposure_factor
            if not np.isfinite(exptime) or exptime <= 0:
                raise CampaignError(f"exposure {exptime:g} s: must be > 0")
            if not lo / factor <= exptime <= hi * factor:
                raise CampaignError(f"exposure {exptime:g} s is more than a factor {factor:g} outside the calibrated "
                                    f"range {lo:g}..{hi:g} s (max_exposure_factor)")
            if not lo * (1 - _RANGE_TOLERANCE[1]) <= exptime <= hi * (1 + _RANGE_TOLERANCE[1]):
                messages.append(f"exposure {exptime:g} s is outside the calibrated range {lo:g}..{hi:g} s: "
                                "the model is extrapolated")
        return messages

    def _checked(self, temperature, exptime=None) -> None:
        for message in self.check_request(temperature, exptime):
            warnings.warn(message, OutOfRangeWarning, stacklevel=3)

    def bias(self, temperature: float) -> np.ndarray:
        """Synthetic bias [DN] at ``temperature`` [degC]."""
        self._checked(temperature)
        return bias_at(self.bias_a, self.bias_b, temperature)

    def bias_variance(self, temperature: float) -> np.ndarray:
        """Variance [DN^2] of :meth:`bias` from the parameter uncertainties."""
        return bias_variance_at(self.bias_cov, temperature)

    def dark_signal(self, temperature: float, exptime: float) -> np.ndarray:
        """Synthetic dark signal [DN] (bias excluded) at ``temperature`` [degC], ``exptime`` [s]."""
        self._checked(temperature, exptime)
        return self.prediction(temperature, exptime)[0]

    def prediction(self, temperature: float, exptime: float) -> tuple[np.ndarray, np.ndarray]:
        """Dark signal [DN] and its variance [DN^2] at (T, t), unchecked, in one compiled pass."""
        return self._predicted(temperature, exptime, with_bias=False)[:2]

    def frame_prediction(self, temperature: float, exptime: float) -> tuple[np.ndarray, np.ndarray]:
        """Synthetic frame bias(T) + dark signal(T, t) [DN] and its variance [DN^2], unchecked: the variances of the
        two models and twice their covariance."""
        dark, dark_var, covariance, _ = self._predicted(temperature, exptime, with_bias=True)
        frame = bias_at(self.bias_a, self.bias_b, temperature) + dark
        return frame, self.bias_variance(temperature) + dark_var + 2 * covariance

    def fitted_prediction(self, temperature: float, exptime: float) -> tuple[np.ndarray, np.ndarray]:
        """Dark signal [DN] at a calibrated (T, t) and the variance [DN^2] the fit takes out of the residual of the
        master it was fitted to there, unchecked.

        That master shares the bias model's error with the prediction, so its in-sample residual has the variance
        of its noise (the bias model's included) less var(prediction) - 2 cov(prediction, bias model) - 2 v_b, v_b
        the part of var(prediction) the bias model's error makes; without that error, less var(prediction) (the
        leverage h times the noise, for a linear fit).
        """
        dark, dark_var, covariance, through_bias = self._predicted(temperature, exptime, with_bias=True, share=True)
        fitted = np.add(covariance, through_bias, out=through_bias)  # in place: a frame's worth of float32 each
        fitted *= -2
        fitted += dark_var
        return dark, fitted

    def _predicted(self, temperature, exptime, with_bias: bool, share: bool = False) -> tuple:
        """Dark signal, its variance, (``with_bias``) its covariance with the bias model at T and (``share``) the part
        of its variance the bias model's error makes (float32, one compiled pass; else empty arrays)."""
        signal, variance = (np.empty(self.dq.shape, np.float32) for _ in range(2))
        covariance = np.empty(self.dq.shape if with_bias else (0, 0), np.float32)
        through_bias = np.empty(self.dq.shape if share else (0, 0), np.float32)
        cross = self.dark_bias_cov if with_bias else np.empty((0, 0, 0))
        bias_cov = self.bias_cov if share else np.empty((0, 0, 0))
        x = float(temperature_feature(temperature, self.tmin, self.form))
        predict_dark(np.ascontiguousarray(self.dark, dtype=np.float64),
                     np.ascontiguousarray(self.dark_cov, dtype=np.float32),
                     np.ascontiguousarray(cross, dtype=np.float32), np.ascontiguousarray(bias_cov, dtype=np.float32),
                     x, float(np.log(exptime)), float(temperature), signal, variance, covariance, through_bias)
        return signal, variance, covariance, through_bias

    def dark_variance(self, temperature: float, exptime: float) -> np.ndarray:
        """Variance [DN^2] of :meth:`dark_signal` from the parameter covariance."""
        return self.prediction(temperature, exptime)[1]

    def log_rate(self, temperature: float, exptime: float) -> tuple[np.ndarray, np.ndarray]:
        """ln of the dark rate DC / t [DN/s] at (T, t), and its variance from the parameter covariance."""
        ln_rate, variance = (np.empty(self.dq.shape) for _ in range(2))
        x = float(temperature_feature(temperature, self.tmin, self.form))
        predict_log_rate(np.ascontiguousarray(self.dark, dtype=np.float64),
                         np.ascontiguousarray(self.dark_cov, dtype=np.float32), x, float(np.log(exptime)), ln_rate,
                         variance)
        return ln_rate, variance

    def dark_frame(self, temperature: float, exptime: float) -> np.ndarray:
        """Synthetic full dark frame, bias + dark signal [DN]."""
        self._checked(temperature, exptime)
        return self.frame_prediction(temperature, exptime)[0]

    # --- file --------------------------------------------------------------------------
    def header(self) -> fits.Header:
        """Primary header: equations, ranges, provenance."""
        bias_eq, dark_eq = equations(self.form, self.fit_gamma)
        header = fits.Header()
        provenance(header, bunit="DN", description="cmoscal per-pixel bias and dark calibration model",
                   BIASEQ=bias_eq, DARKEQ=dark_eq,
                   DARKFORM=(self.form, "form of the dark model (cmoscal.forms)"),
                   DARKDIM=("2d" if self.fit_gamma else "1d", "2d fits gamma, 1d fixes gamma=1"),
                   TMIN=(self.tmin, "degC, reference temperature of DARK_A"),
                   TCALMIN=(self.trange[0], "degC, coldest calibrated"),
                   TCALMAX=(self.trange[1], "degC, warmest calibrated"),
                   TEXPMIN=(self.exprange[0], "s, shortest calibrated dark exposure"),
                   TEXPMAX=(self.exprange[1], "s, longest calibrated dark exposure"),
                   MAXEXTRP=(self.max_extrapolation, "degC beyond TCALMIN..TCALMAX allowed"),
                   MAXEXPF=(self.max_exposure_factor, "factor beyond TEXPMIN..TEXPMAX allowed"),
                   **{key: (float(value), text) for key, value, text in zip(_PRIOR, self.prior, _PRIOR_TEXT)})
        header.add_comment("BIAS, A (bias) and DC in DN; T, TMIN in degC; T_K = T + 273.15; t in s; "
                           "dark A in DN/s^gamma, B in 1/degC, EA in eV")
        for key, value in self.meta.items():
            set_card(header, key, (value, _META.get(key, "")))
        for line in self.history:
            header.add_history(line)
        return header

    def write(self, path: str | Path, threads: int = 1, dq: Callable[[], np.ndarray] | None = None) -> Path:
        """Write the multi-extension model file atomically (with checksums), its extensions on up to ``threads``
        threads.

        ``dq``, if given, returns the DQ plane to write in place of the model's own (it may block: the other
        extensions are written meanwhile; an error it raises fails the write).
        """
        header = self.header()
        law = dark_form(self.form)
        images = [("BIAS_A", self.bias_a, "DN"), ("BIAS_B", self.bias_b, "DN/degC"),
                  ("BIAS_COV", self.bias_cov, "var(a) DN2; var(b) (DN/degC)2; cov(a,b) DN2/degC"),
                  ("READ_NOISE", self.read_noise, "DN"),
                  ("DARK_A", np.exp(self.dark[0]), "DN/s^gamma" if self.fit_gamma else "DN/s"),
                  (law.extension, self.dark[1], law.unit), ("DARK_GAMMA", self.dark[2], "")]
        if law.floor:
            images.append(("DARK_FLOOR", self.dark[3], "DN/s^gamma" if self.fit_gamma else "DN/s"))
        images += [("DARK_COV", self.dark_cov, "covariance of (lnA, slope, gamma" + (", C): planes 00 11 22 01 02 12 "
                                                                                   "33 03 13 23" if law.floor else
                                                                                   "): planes 00 11 22 01 02 12")),
                  ("DARK_BIAS_COV", self.dark_bias_cov, "cov of (lnA, slope, gamma" + (", C)" if law.floor else ")")
                   + " with bias (a, b): planes lnA.a lnA.b slope.a ..."),
                  ("DARK_CHI2R", self.chi2r, ""), ("DARK_NVALID", self.nvalid, "master samples used"),
                  ("DQ", self.dq if dq is None else Later(self.dq.shape, DQ_DTYPE, dq), "")]
        extensions = [(name, data if isinstance(data, Later) else
                       np.asarray(data, dtype={"DQ": DQ_DTYPE, "DARK_NVALID": np.int16}.get(name, np.float32)), unit)
                      for name, data, unit in images]
        return write_hdus(path, None, header, extensions + [("DQ_DEF", fits.table_to_hdu(dq_table()), "")],
                          checksum=True, threads=threads)

    @classmethod
    def read(cls, path: str | Path, threads: int = 1) -> CalibrationModel:
        """Load a model file written by :meth:`write` (an output_dir or the file itself), its images read on up to
        ``threads`` threads at once.

        Raises
        ------
        FileNotFoundError
            No model there.
        CampaignError
            The file is not a cmoscal calibration model.
        """
        path = Path(path)
        if path.is_dir():
            path = path / MODEL_FILE
        if not path.exists():
            raise FileNotFoundError(f"{path}: no calibration model (run the dark_model stage first)")
        try:
            hdul = fits.open(path)
        except OSError as err:
            raise CampaignError(f"{path} is not a cmoscal calibration model (not readable FITS: {err})") from None
        with hdul:
            h = hdul[0].header
            names = {hdu.name for hdu in hdul}
            missing = [n for n in _REQUIRED if n not in names] + [k for k in ("DARKFORM", "TMIN", "TCALMIN")
                                                                   if k not in h]
            if missing or not str(h.get("CREATOR", "")).startswith("cmoscal"):
                what = ", ".join(missing) or "CREATOR"
                raise CampaignError(f"{path} is not a cmoscal calibration model (missing {what})")
            form = h["DARKFORM"]
            law = dark_form(form)
            wanted = ["BIAS_A", "BIAS_B", "BIAS_COV", "READ_NOISE", "DARK_A", law.extension, "DARK_GAMMA",
                      *(["DARK_FLOOR"] if law.floor else []), "DARK_COV",
                      *(["DARK_BIAS_COV"] if "DARK_BIAS_COV" in names else []), "DARK_CHI2R",
                      *(["DARK_NVALID"] if "DARK_NVALID" in names else []), "DQ"]
            plain = all(has_image(path, name) for name in wanted)  # else (compressed) astropy reads, one at a time

            def native(name):  # in memory, in this machine's byte order (FITS is big-endian)
                if plain:
                    return read_product(path, name)
                data = hdul[name].data
                return data.astype(data.dtype.newbyteorder("="))

            images = dict(zip(wanted, concurrently([functools.partial(native, name) for name in wanted],
                                                   threads if plain else 1)))
            dark = np.empty((3 + law.floor,) + images["DARK_A"].shape)
            with np.errstate(divide="ignore"):
                dark[0] = np.log(images["DARK_A"].astype(np.float64))
            dark[1], dark[2] = images[law.extension], images["DARK_GAMMA"]
            if law.floor:
                dark[3] = images["DARK_FLOOR"]
            return cls(bias_a=images["BIAS_A"], bias_b=images["BIAS_B"], bias_cov=images["BIAS_COV"],
                       read_noise=images["READ_NOISE"], dark=dark, dark_cov=images["DARK_COV"],
                       # a model file written before it was stored: zero, which overstates a frame's variance
                       dark_bias_cov=images.get("DARK_BIAS_COV", np.zeros((2 * len(dark), *dark.shape[1:]))),
                       chi2r=images["DARK_CHI2R"], nvalid=images.get("DARK_NVALID"),
                       dq=images["DQ"], form=form, fit_gamma=h["DARKDIM"] == "2d", tmin=h["TMIN"],
                       trange=(h["TCALMIN"], h["TCALMAX"]), exprange=(h["TEXPMIN"], h["TEXPMAX"]),
                       max_extrapolation=h.get("MAXEXTRP", 5.0), max_exposure_factor=h.get("MAXEXPF", 2.0),
                       prior=tuple(float(h.get(k, np.nan)) for k in _PRIOR),
                       meta={k: h[k] for k in _META if k in h},
                       history=[str(line) for line in h.get("HISTORY", [])])


def usable_model(path: str | Path, user: str) -> CalibrationModel:
    """The model at ``path`` (an output_dir or its file) for ``user`` to apply, if it may be used.

    Where a ledger is beside the file, the hot_pixels stage must be current (it wrote the DQ
    after the fit); a file alone must say that its DQ holds the classification (DQCLASS).

    Raises
    ------
    CampaignError
        A stale model, or one whose DQ lacks the hot-pixel classification; the message says
        which stages to run.
    """
    path = Path(path)
    path = path / MODEL_FILE if path.is_dir() else path
    if (path.parent / LEDGER).exists():
        require_current(path.parent, "hot_pixels", user)
    model = CalibrationModel.read(path)
    if model.meta.get("DQCLASS") is False:
        raise CampaignError(f"{path}: its DQ lacks the warm and hot pixels (the dark_model stage wrote it and the "
                            "hot_pixels stage has not run since): run the hot_pixels stage first")
    return model


_SHARED: dict = {}  # (path, mtime) -> the model of shared_model
_SHARED_LOCK = threading.Lock()


def shared_model(path: str | Path, threads: int = 1) -> CalibrationModel:
    """The model at ``path`` (an output_dir or the file), read once per process while the file is unchanged (on up
    to ``threads`` threads).

    For the tasks of a stage (threads, or calls on a dask worker) that only read it: treat it as
    read-only. One model is kept at a time.
    """
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
    key = (str(path), path.stat().st_mtime_ns)
    with _SHARED_LOCK:  # the tasks asking at once wait for one read
        if key not in _SHARED:
            _SHARED.clear()
            _SHARED[key] = CalibrationModel.read(path, threads)
        return _SHARED[key]


def to_raw16(frame_dn: np.ndarray, scale_factor: float = 16, saturation: float = 4095) -> np.ndarray:
    """Convert a frame in DN to the camera's raw 16-bit convention (quantized, clipped, x scale)."""
    return (np.clip(np.rint(np.nan_to_num(frame_dn, nan=0.0)), 0, saturation) * scale_factor).astype(np.uint16)


def write_synthetic(model: CalibrationModel, path: str | Path, temperature: float, exptime: float | None = None,
                    signal_only: bool = False, raw16: bool = False, history=()) -> np.ndarray:
    """Synthesize a frame and write it with its uncertainty (UNCERT, a standard deviation with UTYPE, as
    ``CCDData.read`` expects); return the frame.

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

    Raises
    ------
    CampaignError
        An impossible request or one too far outside the calibrated ranges (nothing is written).
    """
    messages = model.check_request(temperature, exptime)
    for message in messages:
        warnings.warn(message, OutOfRangeWarning, stacklevel=2)
    if exptime is None:
        data, variance = bias_at(model.bias_a, model.bias_b, temperature), model.bias_variance(temperature)
        kind = "bias"
    elif signal_only:
        (data, variance), kind = model.prediction(temperature, exptime), "dark signal"
    else:
        (data, variance), kind = model.frame_prediction(temperature, exptime), "dark"
    scale = model.meta.get("SCALEFAC", 16)
    sigma = np.sqrt(np.asarray(variance, dtype=np.float64))
    if raw16:
        data, sigma = to_raw16(data, scale, model.meta.get("SATURATE", 4095)), sigma * scale
    header = model.header()
    header["IMAGETYP"] = f"SYNTHETIC_{kind.upper().replace(' ', '_')}"
    if raw16:
        header.add_comment(f"raw 16-bit convention: adu = DN x {scale:g}, quantized and clipped")
    provenance(header, bunit="adu" if raw16 else "DN",
               description=f"synthetic {kind} from the cmoscal calibration model", inputs=history,
               TEMP=(float(temperature), "degC"), EXPTIME=(float(exptime or 0.0), "s"),
               EXTRAPOL=(bool(messages), "requested outside the calibrated ranges"))
    for message in messages:
        header.add_history(f"warning: {message}")
    uncertainty = fits.ImageHDU(sigma.astype(np.float32), name="UNCERT")
    uncertainty.header["BUNIT"], uncertainty.header["UTYPE"] = header["BUNIT"], "StdDevUncertainty"
    write_hdus(path, data, header, [("UNCERT", uncertainty, "")])
    return data
