"""Parameter sets: defaults, campaign overrides and validation.

Every tunable lives in ``defaults.yml`` (shipped with the package and linked as
``params/defaults.yml``), one comment per key. A campaign file overrides any of
them; :func:`load_params` merges, validates and resolves paths, reporting every
problem at once.
"""

from __future__ import annotations

import numbers
from importlib import resources
from pathlib import Path

import yaml

from .forms import FORMS

__all__ = ["ParamsError", "default_params", "load_params", "validate_params"]


class ParamsError(ValueError):
    """A parameter set that cannot be used; the message lists every problem."""


def default_params() -> dict:
    """Return the documented defaults as a dict."""
    text = resources.files("cmoscal").joinpath("defaults.yml").read_text()
    return yaml.safe_load(text)


def _number(lo=None, hi=None, integer=False, open_lo=False):
    def check(value):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return "must be a number"
        if integer and int(value) != value:
            return "must be a whole number"
        if lo is not None and (value <= lo if open_lo else value < lo):
            return f"must be {'>' if open_lo else '>='} {lo}"
        if hi is not None and value > hi:
            return f"must be <= {hi}"
        return None
    return check


def _choice(*options):
    def check(value):
        return None if value in options else f"must be one of {', '.join(options)}"
    return check


def _text(optional=False):
    def check(value):
        if value is None and optional:
            return None
        return None if isinstance(value, str) and value.strip() else "must be a non-empty text"
    return check


def _keywords(value):
    if not isinstance(value, list) or not value or not all(isinstance(k, str) for k in value):
        return "must be a non-empty list of FITS keywords"
    return None


def _folders(value):
    if not isinstance(value, list) or not all(isinstance(k, str) and k.strip() for k in value):
        return "must be a list of folders (may be empty)"
    missing = [k for k in value if not Path(k).exists()]
    return f"{', '.join(missing)} do(es) not exist" if missing else None


def _patterns(value):
    if not isinstance(value, list) or not all(isinstance(k, str) and k.strip() for k in value):
        return "must be a list of glob patterns (may be empty)"
    return None


def _auto_or(check):
    return lambda value: None if value == "auto" else (check(value) and f"{check(value)} or auto")


def _flag_or_auto(value):
    return None if value in ("auto", True, False) else "must be auto, true or false"


def _interval(value):
    if (not isinstance(value, list) or len(value) != 2 or _number()(value[0]) or _number()(value[1])
            or value[0] >= value[1]):
        return "must be [low, high] with low < high"
    return None


def _temperatures(value):
    if not isinstance(value, list) or any(_number(-273.15, open_lo=True)(T) for T in value):
        return "must be a list of temperatures in degC (above -273.15; may be empty)"
    return None


def _iso_date(value):
    from .inventory import observation_date

    try:
        observation_date(value if isinstance(value, str) else "?")
    except ValueError:
        return "must be an ISO date (YYYY-MM-DD[Thh:mm:ss])"
    return None


def _optional(check):
    return lambda value: None if value is None else check(value)


def _points(value):
    if not isinstance(value, list):
        return "must be a list of {temperature, exptime}"
    for point in value:
        if not isinstance(point, dict) or set(point) != {"temperature", "exptime"}:
            return "each entry must have exactly the keys temperature and exptime"
        if _number(-273.15, open_lo=True)(point["temperature"]) or _number(0, open_lo=True)(point["exptime"]):
            return "temperature must be a number above -273.15 and exptime a number > 0"
    return None


_CHECKS = {
    "campaign": _text(),
    "raw_dir": _text(),
    "output_dir": _text(optional=True),
    "report_dir": _text(optional=True),
    "include": _patterns,
    "exclude": _patterns,
    "scale_factor": _auto_or(_number(0, open_lo=True)),
    "saturation": _auto_or(_number(0, open_lo=True)),
    "frame_type_keys": _keywords,
    "temperature_keys": _keywords,
    "exposure_keys": _keywords,
    "temperature_unit": _choice("auto", "degC", "K", "degF"),
    "exposure_unit": _choice("s", "ms", "us"),
    "gain_keys": _patterns,
    "readout_keys": _patterns,
    "bias_max_exptime": _number(0),
    "max_zero_fraction": _number(0, 1),
    "max_saturated_fraction": _number(0, 1),
    "max_nan_fraction": _number(0, 1),
    "frame_outlier_sigma": _number(0, open_lo=True),
    "temperature_tolerance": _number(0, open_lo=True),
    "exptime_tolerance": _number(0, 1),
    "min_frames": _number(1, integer=True),
    "combine": _choice("mean", "median"),
    "clip_sigma": _number(1),
    "gain": _optional(_number(0, open_lo=True)),
    "dark_bias": _choice("model", "nearest"),
    "dark_model": _choice("auto", "2d", "1d"),
    "dark_form": _choice("auto", *FORMS),
    "max_iterations": _number(1, integer=True),
    "min_dof": _number(0, integer=True),
    "outlier_sigma": _number(2),
    "max_outlier_fraction": _number(0, 0.5),
    "full_well_level": _number(0, 1),
    **{f"fit_bounds.{law.slope}": _interval for law in FORMS.values()},
    "fit_bounds.gamma": _interval,
    "warm_sigma": _number(0, open_lo=True),
    "unreliable_dark_error": _number(0, open_lo=True),
    "excess_sigma": _number(0),
    "hot_sigma": _number(0, open_lo=True),
    "hot_rate_min": _optional(_number(0, open_lo=True)),
    "hot_rate_unit": _choice("DN/s", "e-/s"),
    "hot_reference_temperature": _optional(_number(-273.15, open_lo=True)),
    "noisy_sigma": _number(0, open_lo=True),
    "poor_fit_chi2r": _number(1, open_lo=True),
    "synthesize": _points,
    "generate_set": lambda v: None if isinstance(v, bool) else "must be true or false",
    "save_eval_fits": lambda v: None if isinstance(v, bool) else "must be true or false",
    "master_diagnostics": lambda v: None if isinstance(v, bool) else "must be true or false",
    "max_extrapolation": _number(0),
    "science_dir": _text(optional=True),
    "calibration_mask": _patterns,
    "reference_campaign": _text(optional=True),
    "prior_model": _text(optional=True),
    "change_sigma": _number(0, open_lo=True),
    "instrument.instrume": _text(optional=True),
    "instrument.telescop": _text(optional=True),
    "instrument.detector": _text(optional=True),
    "instrument.author": _text(optional=True),
    "instrument.pedigree": _choice("GROUND", "INFLIGHT", "SIMULATION"),
    "instrument.useafter": _optional(_iso_date),
    "max_exposure_factor": _number(1),
    "snr_min": _number(0),
    "budget_temperatures": _temperatures,
    "history_campaigns": _folders,
    "jump_sigma": _number(0, open_lo=True),
    "loo_pixels": _number(0, integer=True),
    "seed": _number(0, integer=True),
    "checks.residual_noise_max": _number(1),
    "checks.loo_noise_max": _number(1),
    "checks.chi2_ratio_max": _number(1),
    "checks.residual_trend_max": _number(0, open_lo=True),
    "checks.extrapolation_error_max": _number(0, open_lo=True),
    "checks.hot_fraction_max": _number(0, 1),
    "checks.rejected_fraction_max": _number(0, 1),
    "checks.unreliable_fraction_max": _number(0, 1),
    "kernel": _text(optional=True),
    "memory_budget": _number(0, open_lo=True),
    "progress": _flag_or_auto,
    "compute.scheduler": _text(),
    "compute.workers": _optional(_number(1, integer=True)),
}


def _flatten(params: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and f"{name}." in {k[: len(name) + 1] for k in _CHECKS}:
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def validate_params(params: dict) -> list[str]:
    """Return every problem of a merged parameter set (empty when it is usable)."""
    flat = _flatten(params)
    problems = [f"{key}: unknown parameter" for key in flat if key not in _CHECKS]
    for key, check in _CHECKS.items():
        if key not in flat:
            problems.append(f"{key}: missing")
            continue
        reason = check(flat[key])
        if reason:
            problems.append(f"{key}: {reason} (got {flat[key]!r})")
    for key in ("raw_dir", "science_dir"):
        folder = flat.get(key)
        if isinstance(folder, str) and folder.strip() and not Path(folder).is_dir():
            problems.append(f"{key}: {folder} is not a directory")
    for key in ("reference_campaign", "prior_model"):
        earlier = flat.get(key)
        if isinstance(earlier, str) and earlier.strip() and not Path(earlier).exists():
            problems.append(f"{key}: {earlier} does not exist")
    from .dq import flag_value

    try:
        flag_value(flat.get("calibration_mask") or [])
    except (KeyError, TypeError) as err:
        problems.append(f"calibration_mask: {err.args[0]}")
    if not problems and params["warm_sigma"] >= params["hot_sigma"]:
        problems.append("warm_sigma: must be smaller than hot_sigma")
    return problems


def _merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merged[key] = _merge(base[key], value)
        else:
            merged[key] = value
    return merged


def load_params(path: str | Path, root: str | Path = ".", overrides: dict | None = None) -> dict:
    """Load a campaign parameter file over the defaults and validate it.

    Parameters
    ----------
    path : str or Path
        Campaign YAML file.
    root : str or Path, default "."
        Directory that relative paths (raw_dir, output_dir, report_dir) refer to.
    overrides : dict, optional
        Values applied last (used by tests and the command line).

    Returns
    -------
    dict
        The merged parameters with absolute ``raw_dir``, ``output_dir`` and ``report_dir``.

    Raises
    ------
    ParamsError
        Listing every problem: unreadable file, unknown keys, wrong types, impossible values.
    """
    path = Path(path)
    try:
        campaign = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ParamsError(f"{path}: cannot read parameters ({err})") from err
    if not isinstance(campaign, dict):
        raise ParamsError(f"{path}: must be a mapping of parameter: value")
    params = _merge(_merge(default_params(), campaign), overrides or {})
    root = Path(root).resolve()
    for key, default in (("output_dir", "products"), ("report_dir", "reports")):
        if params.get(key) is None and isinstance(params.get("campaign"), str):
            params[key] = f"{default}/{params['campaign']}"
    for key in ("raw_dir", "output_dir", "report_dir", "science_dir", "reference_campaign", "prior_model"):
        if isinstance(params.get(key), str):
            params[key] = str((root / params[key]).resolve())
    if isinstance(params.get("history_campaigns"), list):
        params["history_campaigns"] = [str((root / p).resolve()) if isinstance(p, str) else p
                                       for p in params["history_campaigns"]]
    problems = validate_params(params)
    if problems:
        raise ParamsError(f"{path}: {len(problems)} problem(s): " + "; ".join(problems))
    return params
