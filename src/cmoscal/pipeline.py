"""The calibration stages, each reading what earlier stages wrote to ``output_dir``.

``STAGES`` maps each stage name to its function; any stage can be rerun alone once
its inputs exist. The notebooks and ``cmoscal run`` call these functions.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.table import Table

from .bias import bias_at, bias_variance_at, fit_bias
from .darkfit import fit_dark, predict
from .evaluate import downsample, leave_one_out_bias, leave_one_out_dark, residual_stats
from .fitsio import provenance, read_image, write_hdus, write_table
from .hotpix import DQ_BITS, classify_pixels, dq_table
from .inventory import build_inventory, frame_label
from .masters import combine, load_masters, master_path, write_master
from .model import MODEL_FILE, CalibrationModel, OutOfRangeWarning, equations, write_synthetic
from .noise import inverse_gain, master_variance, read_variance

__all__ = ["STAGES", "load_bias_model", "load_inventory", "run_bias", "run_dark_masters", "run_dark_model",
           "run_evaluation", "run_hot_pixels", "run_inventory", "run_summary", "run_synthesis"]

_BAD = sum(v for name, (v, _) in DQ_BITS.items())  # any flag makes a pixel non-normal


def _out(params: dict, *parts) -> Path:
    return Path(params["output_dir"]).joinpath(*parts)


def _require(path: Path, stage: str) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run the {stage} stage first")
    return path


# --- inventory ---------------------------------------------------------------------------------
def run_inventory(params: dict) -> Table:
    """Scan raw_dir, classify, reject and group; write ``inventory.ecsv``."""
    table = build_inventory(params)
    write_table(table, _out(params, "inventory.ecsv"))
    return table


def load_inventory(params: dict) -> Table:
    """Read the inventory written by :func:`run_inventory`."""
    return Table.read(_require(_out(params, "inventory.ecsv"), "inventory"), format="ascii.ecsv")


def _groups(inventory: Table, kind: str):
    ok = inventory[(inventory["status"] == "ok") & (inventory["type"] == kind)]
    for group in sorted(set(ok["group"])):
        rows = ok[ok["group"] == group]
        yield rows, float(np.mean(rows["temperature"])), float(np.mean(rows["exposure"]))


def _read_stack(inventory: Table, rows, params):
    raw = Path(inventory.meta["raw_dir"])
    stack = np.stack([read_image(raw / p, params["scale_factor"]) for p in rows["path"]])
    return stack, stack >= params["saturation"]


def _clear(folder: Path) -> None:
    """Remove the products of an earlier run of a stage, so none is stale."""
    for path in folder.glob("*.fits"):
        path.unlink()


# --- bias ------------------------------------------------------------------------------------
def run_bias(params: dict) -> dict:
    """Master biases per temperature group, the read noise and the bias model.

    Writes ``bias_grouped_by_temp/master_bias_XX.XC.fits`` and ``bias_model/`` maps:
    bias_a_map, bias_b_map, their sigma maps, bias_rms_map, read_noise_map,
    bias_covariance. Returns the fitted arrays and the masters.
    """
    inventory = load_inventory(params)
    folder = _out(params, "bias_grouped_by_temp")
    _clear(folder)
    for rows, T, _ in _groups(inventory, "bias"):
        stack, saturated = _read_stack(inventory, rows, params)
        write_master(master_path(params["output_dir"], "bias", T),
                     *combine(stack, saturated, params["combine"], params["clip_sigma"]),
                     kind="bias", temperatures=rows["temperature"], exptime=np.mean(rows["exposure"]),
                     inputs=list(rows["path"]), params=params)
    masters = load_masters(folder)
    if len(masters) < 2:
        raise ValueError(f"bias model needs master biases at >= 2 temperatures, found {len(masters)}")
    rv = read_variance(masters.variance, masters.nframes)
    weights = np.where(masters.valid, masters.nframes, 0)
    a, b, cov, rms = fit_bias(masters.temperature, masters.data, weights, rv)
    T = masters.temperature
    keywords = dict(BIASEQ=(equations("exponential", True)[0], "a in DN, b in DN/degC, T in degC"),
                    TCALMIN=(float(T.min()), "degC"), TCALMAX=(float(T.max()), "degC"),
                    NBIASM=(len(masters), "master biases"), NBIAS=(int(np.max(masters.nframes.sum(0))), "frames"),
                    NBIASMED=(float(np.median(masters.nframes)), "median frames per master"))
    inputs = [p.name for p in masters.paths]
    maps = {"bias_a_map": (a, "DN", "bias at 0 degC (a of a + b*T)"),
            "bias_b_map": (b, "DN/degC", "bias temperature slope (b of a + b*T)"),
            "bias_a_sigma_map": (np.sqrt(cov[0]), "DN", "1-sigma uncertainty of bias a"),
            "bias_b_sigma_map": (np.sqrt(cov[1]), "DN/degC", "1-sigma uncertainty of bias b"),
            "bias_rms_map": (rms, "DN", "RMS residual of the bias fit over the masters"),
            "read_noise_map": (np.sqrt(rv), "DN", "read noise of one frame, pooled over bias groups"),
            "bias_covariance": (cov, "var(a) DN2; var(b); cov(a,b)", "bias parameter covariance planes")}
    for name, (data, unit, text) in maps.items():
        header = provenance(fits.Header(), bunit=unit, description=text, inputs=inputs,
                            CAMPAIGN=params["campaign"], **keywords)
        write_hdus(_out(params, "bias_model", f"{name}.fits"), data, header)
    return dict(masters=masters, a=a, b=b, cov=cov, rms=rms, read_noise=np.sqrt(rv))


def load_bias_model(params: dict) -> dict:
    """Read the bias model maps: a, b, cov, read_noise, and the header of bias_a_map."""
    folder = _out(params, "bias_model")
    get = lambda name: fits.getdata(_require(folder / f"{name}.fits", "bias"))  # noqa: E731
    return dict(a=get("bias_a_map"), b=get("bias_b_map"), cov=get("bias_covariance"),
                read_noise=get("read_noise_map"), header=fits.getheader(folder / "bias_a_map.fits"))


# --- dark masters -----------------------------------------------------------------------------
def run_dark_masters(params: dict) -> list[Path]:
    """Bias-subtracted master darks per (T, t): ``dark_masters/darks_TxxC_texpYYs.fits``.

    The bias removed from each frame is the bias model at that frame's own temperature
    (``dark_bias: model``) or the master bias nearest in temperature (``nearest``).
    """
    inventory = load_inventory(params)
    bias = load_bias_model(params)
    nearest = load_masters(_out(params, "bias_grouped_by_temp")) if params["dark_bias"] == "nearest" else None
    folder = _out(params, "dark_masters")
    _clear(folder)
    written = []
    for rows, T, t in _groups(inventory, "dark"):
        stack, saturated = _read_stack(inventory, rows, params)
        temps = np.asarray(rows["temperature"], dtype=np.float32)
        if nearest is None:
            stack -= bias_at(bias["a"], bias["b"], temps[:, None, None])
            subtracted = "model: a + b*T at each frame's own temperature"
        else:
            index = np.abs(nearest.temperature[None, :] - temps[:, None]).argmin(axis=1)
            stack -= nearest.data[index]
            subtracted = "nearest: master bias " + ", ".join(sorted({nearest.paths[i].name for i in index}))
        path = master_path(params["output_dir"], "dark", T, t)
        write_master(path, *combine(stack, saturated, params["combine"], params["clip_sigma"]), kind="dark",
                     temperatures=rows["temperature"], exptime=t, inputs=list(rows["path"]), params=params,
                     subtracted=subtracted)
        written.append(path)
    if not written:
        raise ValueError("no usable dark frames in the inventory")
    return written


# --- dark model -------------------------------------------------------------------------------
def _noise_terms(params: dict, darks, bias: dict, inv_gain: float):
    """Signal-independent variance and shot-noise scale of every master dark sample."""
    rv = bias["read_noise"].astype(np.float64) ** 2
    if params["dark_bias"] == "model":
        bias_var = np.stack([bias_variance_at(bias["cov"], T) for T in darks.temperature])
    else:
        bias_var = rv / bias["header"]["NBIASMED"]
    n = np.maximum(darks.nframes, 1)
    return rv / n + bias_var, inv_gain / n


def dark_dimension(params: dict, exptimes) -> bool:
    """True for the 2d model (gamma fitted), False for 1d."""
    if params["dark_model"] == "auto":
        return len(np.unique(np.round(exptimes, 6))) >= 2
    if params["dark_model"] == "2d" and len(np.unique(np.round(exptimes, 6))) < 2:
        raise ValueError("dark_model: 2d needs darks at >= 2 exposure times; use 1d or auto")
    return params["dark_model"] == "2d"


def _sample(params: dict, npix: int) -> np.ndarray:
    n = params["loo_pixels"]
    if n == 0 or n >= npix:
        return np.arange(npix)
    return np.sort(np.random.default_rng(params["seed"]).choice(npix, n, replace=False))


def _fit_inputs(params: dict):
    darks = load_masters(_require(_out(params, "dark_masters"), "dark_masters"))
    bias = load_bias_model(params)
    shape = darks.data.shape[1:]
    flat = lambda x: x.reshape(len(darks), -1)  # noqa: E731
    rv = bias["read_noise"] ** 2
    usable = darks.valid & (darks.data < np.nanpercentile(darks.data, 99, axis=(1, 2))[:, None, None])
    inv_gain = inverse_gain(darks.data, darks.variance, darks.nframes, rv, usable)
    base_var, shot = _noise_terms(params, darks, bias, inv_gain)
    bias_cov = bias["cov"].reshape(3, -1) if params["dark_bias"] == "model" else None
    return dict(darks=darks, bias=bias, shape=shape, inv_gain=inv_gain, signal=flat(darks.data), bias_cov=bias_cov,
                valid=flat(darks.valid), base_var=flat(base_var), shot=flat(np.broadcast_to(shot, darks.data.shape)),
                tmin=float(darks.temperature.min()), fit_gamma=dark_dimension(params, darks.exptime))


def _fit(params, inputs, form, pixels=slice(None), propagate_bias=False):
    bias_cov = inputs["bias_cov"][:, pixels] if propagate_bias and inputs["bias_cov"] is not None else None
    return fit_dark(inputs["signal"][:, pixels], inputs["valid"][:, pixels], inputs["base_var"][:, pixels],
                    inputs["shot"][:, pixels], inputs["darks"].temperature, inputs["darks"].exptime,
                    inputs["tmin"], form, inputs["fit_gamma"], params["max_iterations"], params["min_dof"],
                    bias_cov=bias_cov)


def compare_models(params: dict, inputs: dict) -> Table:
    """Fit every model (exponential / Arrhenius, 2d / 1d) on a pixel sample; compare reduced chi-square.

    ``meta['better']`` names the best-fitting form ('exponential' or 'arrhenius') of the
    dimension in use; 1d models appear only as a comparison.
    """
    pixels = _sample(params, inputs["signal"].shape[1])
    dims = (True, False) if inputs["fit_gamma"] else (False,)
    rows = []
    for form in ("exponential", "arrhenius"):
        for fit_gamma in dims:
            fit = _fit(params, dict(inputs, fit_gamma=fit_gamma), form, pixels)
            rows.append((form, "2d" if fit_gamma else "1d", fit.chi2r))
    chi2 = np.array([r[2] for r in rows])
    both = np.all(np.isfinite(chi2), axis=0)
    best = np.argmin(chi2[:, both], axis=0)
    table = Table(rows=[(form, dim, float(np.median(c[both])), float(np.mean(c[both])), float(np.mean(best == i)),
                         int(both.sum())) for i, (form, dim, c) in enumerate(rows)],
                  names=("form", "dimension", "chi2r_median", "chi2r_mean", "share_best", "npix"))
    in_use = table[table["dimension"] == ("2d" if inputs["fit_gamma"] else "1d")]
    table.meta.update(better=str(in_use["form"][np.argmin(in_use["chi2r_mean"])]), used=params["dark_form"])
    return table


def run_dark_model(params: dict) -> dict:
    """Fit the dark model to every pixel, classify pixels and write the calibration model.

    Writes ``dark_model/`` maps (dark_A_map, dark_B_map or dark_Ea_map, dark_gamma_map,
    their sigma maps, dark_chi2r_map, dq_map, hot_pixel_mask), ``dark_model/model_comparison.ecsv``
    and ``calibration_model.fits``.
    """
    inputs = _fit_inputs(params)
    fit = _fit(params, inputs, params["dark_form"], propagate_bias=True)
    comparison = compare_models(params, inputs)
    write_table(comparison, _out(params, "dark_model", "model_comparison.ecsv"))
    if comparison.meta["better"] != params["dark_form"]:
        warnings.warn(f"the {comparison.meta['better']} form fits this campaign better than dark_form="
                      f"{params['dark_form']} (see model_comparison.ecsv)", stacklevel=2)
    darks, bias, shape = inputs["darks"], inputs["bias"], inputs["shape"]
    bias_masters = load_masters(_out(params, "bias_grouped_by_temp"))
    saturated = (darks.nsaturated.sum(0) + bias_masters.nsaturated.sum(0)) > 0
    model = CalibrationModel(
        bias_a=bias["a"], bias_b=bias["b"], bias_cov=bias["cov"], read_noise=bias["read_noise"],
        dark=fit.params.reshape((3,) + shape), dark_cov=fit.cov.reshape((3, 3) + shape),
        chi2r=fit.chi2r.reshape(shape), converged=fit.converged.reshape(shape),
        dq=np.where(saturated, DQ_BITS["SATURATED"][0], 0).astype(np.uint16), form=params["dark_form"],
        fit_gamma=inputs["fit_gamma"], tmin=inputs["tmin"],
        trange=(float(min(darks.temperature.min(), bias_masters.temperature.min())),
                float(max(darks.temperature.max(), bias_masters.temperature.max()))),
        exprange=(float(darks.exptime.min()), float(darks.exptime.max())),
        meta=dict(CAMPAIGN=params["campaign"], GAIN=1 / inputs["inv_gain"] if inputs["inv_gain"] > 0 else 0.0,
                  SCALEFAC=params["scale_factor"], SATURATE=params["saturation"], NBIASM=len(bias_masters),
                  NDARKM=len(darks), NBIAS=int(bias_masters.nframes.max(axis=(1, 2)).sum()),
                  NDARK=int(darks.nframes.max(axis=(1, 2)).sum())))
    model.history = [f"input: {p.name}" for p in bias_masters.paths + darks.paths]
    classified = run_hot_pixels(params, model)
    return dict(fit=fit, comparison=comparison, inv_gain=inputs["inv_gain"], **classified)


# --- hot pixels -------------------------------------------------------------------------------
def reference_temperature(params: dict, model: CalibrationModel) -> float:
    """Temperature at which dark rates are ranked: the parameter or the middle of the range."""
    if params["hot_reference_temperature"] is not None:
        return float(params["hot_reference_temperature"])
    return float(np.mean(model.trange))


def run_hot_pixels(params: dict, model: CalibrationModel | None = None) -> dict:
    """Classify pixels (DQ bitmask), write dq_map, hot_pixel_mask, the maps and the model file.

    With ``model`` None, the existing ``calibration_model.fits`` is reclassified with the
    current thresholds.
    """
    if model is None:
        model = CalibrationModel.read(_require(_out(params, MODEL_FILE), "dark_model"))
    tref = reference_temperature(params, model)
    rate = predict(model.dark, tref, 1.0, model.tmin, model.form)
    few = ~np.isfinite(model.dark[0])
    dq, thresholds = classify_pixels(rate, model.read_noise, (model.dq & DQ_BITS["SATURATED"][0]) > 0, few,
                                     model.chi2r, model.converged, params)
    model.dq = dq
    model.meta["TREFHOT"] = tref
    _write_model(params, model)
    return dict(model=model, rate=rate, thresholds=thresholds, reference_temperature=tref,
                dq_table=dq_table(dq))


def _write_model(params: dict, model: CalibrationModel) -> None:
    header = model.header()
    sigma = np.sqrt(np.stack([model.dark_cov[i, i] for i in range(3)]))
    A = np.exp(model.dark[0])
    a_unit = "DN/s^gamma" if model.fit_gamma else "DN/s"
    slope_name, slope_unit = ("B", "1/degC") if model.form == "exponential" else ("Ea", "eV")
    maps = {"dark_A_map": (A, a_unit, "dark A: signal at TMIN and t = 1 s"),
            f"dark_{slope_name}_map": (model.dark[1], slope_unit, f"dark temperature coefficient {slope_name}"),
            "dark_gamma_map": (model.dark[2], "", "dark exposure exponent gamma" +
                               ("" if model.fit_gamma else " (fixed at 1: 1d model)")),
            "dark_A_sigma_map": (A * sigma[0], a_unit, "1-sigma uncertainty of dark A"),
            f"dark_{slope_name}_sigma_map": (sigma[1], slope_unit, f"1-sigma uncertainty of dark {slope_name}"),
            "dark_gamma_sigma_map": (sigma[2], "", "1-sigma uncertainty of dark gamma"),
            "dark_chi2r_map": (model.chi2r, "", "reduced chi-square of the dark fit"),
            "hot_pixel_mask": ((model.dq & DQ_BITS["HOT"][0]) > 0, "", "hot pixels (1 = hot)")}
    for name, (data, unit, text) in maps.items():
        h = header.copy()
        h["BUNIT"], h["DESCRIP"] = unit, text
        data = data.astype(np.uint8) if data.dtype == bool else data.astype(np.float32)
        write_hdus(_out(params, "dark_model", f"{name}.fits"), data, h)
    h = header.copy()
    h["BUNIT"], h["DESCRIP"] = "", "DQ bitmask; bits named in the DQ_DEF extension"
    write_hdus(_out(params, "dark_model", "dq_map.fits"), model.dq, h,
               [("DQ_DEF", fits.table_to_hdu(dq_table(model.dq)), "")])
    model.write(_out(params, MODEL_FILE))


# --- synthesis --------------------------------------------------------------------------------
def _points(params: dict) -> list[tuple[str, float, float | None]]:
    """(kind, temperature, exptime) of the frames to synthesize."""
    if params["synthesize"]:
        points = [(float(p["temperature"]), float(p["exptime"])) for p in params["synthesize"]]
        return [("bias", T, None) for T, _ in points] + [("dark", T, t) for T, t in points]
    header = lambda folder: [fits.getheader(p) for p in sorted(_out(params, folder).glob("*.fits"))]  # noqa: E731
    return ([("bias", h["TEMP"], None) for h in header("bias_grouped_by_temp")] +
            [("dark", h["TEMP"], h["EXPTIME"]) for h in header("dark_masters")])


def run_synthesis(params: dict) -> Table:
    """Write synthetic bias and full dark frames (DN) to ``synthetic/``.

    Frames: a bias and a dark at every point of ``synthesize`` or, when it is empty, a bias
    per master bias and a dark per master dark (same temperature and exposure). Returns a
    table of the frames written with their mean, standard deviation and any range warning.
    """
    model = CalibrationModel.read(_require(_out(params, MODEL_FILE), "dark_model"))
    folder = _out(params, "synthetic")
    _clear(folder)
    rows = []
    for kind, T, t in _points(params):
        name = f"synthetic_{frame_label(kind, T, t)}.fits"
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", OutOfRangeWarning)
            data = write_synthetic(model, folder / name, T, t, history=[MODEL_FILE])
        rows.append((name, kind, T, t or 0.0, float(np.nanmean(data)), float(np.nanstd(data)),
                     "; ".join(str(w.message) for w in caught)))
    return Table(rows=rows, names=("file", "kind", "temperature", "exptime", "mean", "std", "warning"))


# --- evaluation -------------------------------------------------------------------------------
def run_evaluation(params: dict) -> dict:
    """Synthetic vs real masters for every group, and leave-one-group-out validation.

    Writes ``evaluation/summary.ecsv`` (one row per group), ``evaluation/loo.ecsv`` and the
    ``mae_maps.fits`` / ``mape_maps.fits`` cubes (one plane per group, GROUPS table). Returns
    the tables, the model and downsampled (real, synthetic, MAE, MAPE) previews per group.
    """
    model = CalibrationModel.read(_require(_out(params, MODEL_FILE), "dark_model"))
    bias_m = load_masters(_out(params, "bias_grouped_by_temp"))
    inputs = _fit_inputs(params)
    darks = inputs["darks"]
    rv = model.read_noise.astype(np.float64) ** 2
    good = model.dq == 0
    hot = (model.dq & DQ_BITS["HOT"][0]) > 0
    base = inputs["base_var"].reshape(darks.data.shape)
    shot = inputs["shot"].reshape(darks.data.shape)

    def groups():
        """(kind, T, t, synthetic, master, master variance, prediction variance, valid) per group."""
        for i, T in enumerate(bias_m.temperature):
            yield ("bias", T, None, model.bias(T), bias_m.data[i], rv / bias_m.nframes[i], model.bias_variance(T),
                   bias_m.valid[i])
        for i, (T, t) in enumerate(zip(darks.temperature, darks.exptime)):
            synth = model.dark_signal(T, t)
            yield ("dark", T, t, synth, darks.data[i], base[i] + shot[i] * synth, model.dark_variance(T, t),
                   darks.valid[i])

    rows, mae_maps, mape_maps, previews = [], [], [], {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OutOfRangeWarning)
        for kind, T, t, synth, master, var, var_pred, valid in groups():
            mae, mape, stats = residual_stats(synth, master, var, good & valid, params["snr_min"])
            _, _, hot_stats = residual_stats(synth, master, var, hot & valid, params["snr_min"])
            leverage = np.clip(var_pred / var, 0, 1)[good & valid]  # in-sample residual variance is var (1 - h)
            rows.append(dict(group=frame_label(kind, T, t), kind=kind, temperature=T, exptime=t or 0.0, **stats,
                             resid_noise_hot=hot_stats["resid_noise"],
                             resid_noise_expected=float(np.sqrt(np.mean(1 - leverage)))))
            mae_maps.append(mae)
            mape_maps.append(mape)
            previews[rows[-1]["group"]] = tuple(downsample(x) for x in (master, synth, mae, mape))
    summary = Table(rows=rows)
    loo = _leave_one_out(params, inputs, bias_m, rv, good, hot)
    write_table(summary, _out(params, "evaluation", "summary.ecsv"))
    write_table(loo, _out(params, "evaluation", "loo.ecsv"))
    groups_hdu = fits.table_to_hdu(summary["group", "kind", "temperature", "exptime"])
    for name, cube, unit in (("mae_maps", mae_maps, "DN"), ("mape_maps", mape_maps, "%")):
        header = provenance(model.header(), bunit=unit,
                            description=f"{name[:4].upper()} of the synthetic frame per group (GROUPS)")
        write_hdus(_out(params, "evaluation", f"{name}.fits"), np.stack(cube), header,
                   [("GROUPS", fits.table_to_hdu(Table(groups_hdu.data)), "")])
    return dict(summary=summary, loo=loo, model=model, previews=previews)


def _leave_one_out(params, inputs, bias_m, rv, good, hot) -> Table:
    pixels = _sample(params, inputs["signal"].shape[1])
    darks = inputs["darks"]
    z, err = leave_one_out_dark(inputs["signal"][:, pixels], inputs["valid"][:, pixels],
                                inputs["base_var"][:, pixels], inputs["shot"][:, pixels], darks.temperature,
                                darks.exptime, inputs["tmin"], params["dark_form"], inputs["fit_gamma"],
                                params["max_iterations"], params["min_dof"])
    flat = lambda x: x.reshape(len(x), -1)[:, pixels]  # noqa: E731
    zb, errb = leave_one_out_bias(bias_m.temperature, flat(bias_m.data),
                                  flat(np.where(bias_m.valid, bias_m.nframes, 0)), rv.reshape(-1)[pixels])
    g, h = good.reshape(-1)[pixels], hot.reshape(-1)[pixels]
    rows = []
    for kind, zz, ee, T, t in (("bias", zb, errb, bias_m.temperature, np.zeros(len(bias_m))),
                               ("dark", z, err, darks.temperature, darks.exptime)):
        for i in range(len(T)):
            rms = lambda sel: float(np.sqrt(np.nanmean(zz[i][sel] ** 2))) if np.isfinite(zz[i][sel]).any() else np.nan  # noqa: E731,E501
            rows.append(dict(group=frame_label(kind, T[i], t[i]), kind=kind,
                             temperature=float(T[i]), exptime=float(t[i]), loo_noise=rms(g), loo_noise_hot=rms(h),
                             mae=float(np.nanmean(ee[i][g])), npix=int(g.sum())))
    table = Table(rows=rows)
    table.meta["pixels"] = int(len(pixels))
    return table


# --- summary ----------------------------------------------------------------------------------
def run_summary(params: dict) -> Table:
    """Named pass/fail checks of the whole calibration; written to ``checks.ecsv``."""
    inventory = load_inventory(params)
    summary = Table.read(_require(_out(params, "evaluation", "summary.ecsv"), "evaluation"))
    loo = Table.read(_out(params, "evaluation", "loo.ecsv"))
    model = CalibrationModel.read(_out(params, MODEL_FILE))
    limits = params["checks"]
    flagged = np.mean((model.dq & (DQ_BITS["HOT"][0] | DQ_BITS["WARM"][0])) > 0)
    rows = []
    for kind in ("bias", "dark"):
        sel = summary["kind"] == kind
        value = float(np.nanmedian(summary["resid_noise"][sel] / summary["resid_noise_expected"][sel]))
        rows.append((f"{kind} residual / noise", "median over groups of residual RMS / expected noise, "
                     "relative to the in-sample expectation sqrt(1 - leverage)",
                     value, limits["residual_noise_max"], value <= limits["residual_noise_max"]))
        value = float(np.nanmedian(loo["loo_noise"][loo["kind"] == kind]))
        rows.append((f"{kind} leave-one-out / noise", "median over held-out groups of residual RMS / noise",
                     value, limits["loo_noise_max"], value <= limits["loo_noise_max"]))
    rows.append(("warm + hot fraction", "share of pixels flagged WARM or HOT", float(flagged),
                 limits["hot_fraction_max"], flagged <= limits["hot_fraction_max"]))
    rejected = float(np.mean(inventory["status"] == "rejected"))
    rows.append(("rejected files", "share of raw files rejected by the inventory", rejected,
                 limits["rejected_fraction_max"], rejected <= limits["rejected_fraction_max"]))
    checks = Table(rows=rows, names=("check", "definition", "value", "limit", "passed"))
    checks.meta["success"] = bool(np.all(checks["passed"]))
    write_table(checks, _out(params, "checks.ecsv"))
    return checks


STAGES = {
    "inventory": run_inventory,
    "bias": run_bias,
    "dark_masters": run_dark_masters,
    "dark_model": run_dark_model,
    "hot_pixels": run_hot_pixels,
    "synthesis": run_synthesis,
    "evaluation": run_evaluation,
    "summary": run_summary,
}
