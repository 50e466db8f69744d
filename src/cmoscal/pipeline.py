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
from .compute import row_bands, run_tiles, sample_rows
from .darkfit import fit_dark, predict
from .evaluate import downsample, leave_one_out_bias, leave_one_out_dark, residual_stats
from .fitsio import cube_writer, provenance, read_image, read_section, write_hdus, write_table
from .hotpix import DQ_BITS, classify_pixels, dq_table
from .inventory import build_inventory, frame_label
from .masters import (
    combine,
    load_masters,
    master_path,
    master_paths,
    summarize_masters,
    typical_scatter,
    write_master,
)
from .model import (
    MODEL_FILE,
    CalibrationModel,
    OutOfRangeWarning,
    equations,
    write_synthetic,
)
from .noise import inverse_gain, read_variance

__all__ = ["STAGES", "load_bias_model", "load_inventory", "run_bias", "run_dark_masters", "run_dark_model",
           "run_evaluation", "run_hot_pixels", "run_inventory", "run_summary", "run_synthesis"]

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


def _bias_rows(source, temperatures, rows) -> np.ndarray:
    """Bias [DN] to remove from each frame, for ``rows``.

    ``source`` is ("model", a_map, b_map): the bias model at each frame's temperature, or
    ("nearest", master_files, master_temperatures): the master bias nearest in temperature.
    """
    kind, *args = source
    temperatures = np.asarray(temperatures, dtype=np.float32)
    if kind == "model":
        a, b = (read_image(path, rows=rows) for path in args)
        return bias_at(a, b, temperatures[:, None, None])
    paths, master_temperatures = args
    index = np.abs(np.asarray(master_temperatures)[None, :] - temperatures[:, None]).argmin(axis=1)
    masters = {i: read_image(paths[i], rows=rows) for i in set(index)}
    return np.stack([masters[i] for i in index])


def _group_rows(raw_dir: Path, files, temperatures, rows, params: dict, bias_source=None):
    """Frames of one group restricted to ``rows`` [DN], bias removed, and their saturation flags."""
    stack = np.stack([read_image(raw_dir / f, params["scale_factor"], rows) for f in files])
    saturated = stack >= params["saturation"]
    if bias_source is not None:
        stack -= _bias_rows(bias_source, temperatures, rows)
    return stack, saturated


def _combine_tile(raw_dir, files, temperatures, rows, params, bias_source, floor):
    """One tile of one master (a task: runs in a thread or on a dask worker)."""
    stack, saturated = _group_rows(raw_dir, files, temperatures, rows, params, bias_source)
    return combine(stack, saturated, params["combine"], params["clip_sigma"], floor)


def _make_masters(params: dict, inventory: Table, kind: str, bias_source=None, subtracted: str = "") -> list[Path]:
    """Combine every group of ``kind`` tile by tile and write its master; return the files.

    The clipping scale of each group comes from fixed sample rows, so the masters do not
    depend on the tiling.
    """
    folder = _out(params, "bias_grouped_by_temp" if kind == "bias" else "dark_masters")
    _clear(folder)
    raw_dir = Path(inventory.meta["raw_dir"])
    ny, nx = (int(v) for v in inventory.meta["shape"].split("x"))
    groups = list(_groups(inventory, kind))
    if not groups:
        return []
    frames = max(len(rows) for rows, _, _ in groups)
    bands = row_bands(ny, frames * nx * 4 * 10, params)
    tasks = []
    for rows, _, _ in groups:
        files, temps = list(rows["path"]), list(rows["temperature"])
        floor = typical_scatter(*_group_rows(raw_dir, files, temps, sample_rows(ny), params, bias_source))
        tasks += [(raw_dir, files, temps, band, params, bias_source, floor) for band in bands]
    results = run_tiles(_combine_tile, tasks, params)
    written = []
    for rows, T, t in groups:
        parts = [next(results) for _ in bands]
        path = master_path(params["output_dir"], kind, T, t)
        write_master(path, *(np.concatenate(p) for p in zip(*parts)), kind=kind, temperatures=rows["temperature"],
                     exptime=t, inputs=list(rows["path"]), params=params, subtracted=subtracted)
        written.append(path)
    return written


def _clear(folder: Path) -> None:
    """Remove the products of an earlier run of a stage, so none is stale."""
    for path in folder.glob("*.fits"):
        path.unlink()


# --- bias ------------------------------------------------------------------------------------
def _bias_tile(folder: Path, rows: slice) -> tuple:
    """Read variance and bias line of one band of rows (a task: runs in a thread or on a dask worker)."""
    masters = load_masters(folder, rows)
    rv = read_variance(masters.variance, masters.nframes)
    return (*fit_bias(masters.temperature, masters.data, np.where(masters.valid, masters.nframes, 0), rv), rv)


def run_bias(params: dict) -> dict:
    """Master biases per temperature group, the read noise and the bias model, tile by tile.

    Writes ``bias_grouped_by_temp/master_bias_XX.XC.fits`` and ``bias_model/`` maps:
    bias_a_map, bias_b_map, their sigma maps, bias_rms_map, read_noise_map,
    bias_covariance. Returns the maps and a summary table of the masters.
    """
    folder = _out(params, "bias_grouped_by_temp")
    _make_masters(params, load_inventory(params), "bias")
    paths = master_paths(folder)
    headers = [fits.getheader(p) for p in paths]
    if len(headers) < 2:
        raise ValueError(f"bias model needs master biases at >= 2 temperatures, found {len(headers)}")
    ny, nx = headers[0]["NAXIS2"], headers[0]["NAXIS1"]
    bands = row_bands(ny, len(headers) * nx * 64, params)
    parts = zip(*run_tiles(_bias_tile, [(folder, band) for band in bands], params))
    a, b, cov, rms, rv = (np.concatenate(p, axis=p[0].ndim - 2) for p in parts)
    T = [h["TEMP"] for h in headers]
    frames = [h["NCOMBINE"] for h in headers]
    keywords = dict(BIASEQ=(equations("exponential", True)[0], "a in DN, b in DN/degC, T in degC"),
                    TCALMIN=(float(min(T)), "degC"), TCALMAX=(float(max(T)), "degC"),
                    NBIASM=(len(headers), "master biases"), NBIAS=(int(sum(frames)), "frames"),
                    NBIASMED=(float(np.median(frames)), "median frames per master"))
    inputs = [p.name for p in paths]
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
    return dict(masters=summarize_masters(folder), a=a, b=b, cov=cov, rms=rms, read_noise=np.sqrt(rv))


def load_bias_model(params: dict, rows=slice(None)) -> dict:
    """Read ``rows`` of the bias model maps: a, b, cov, read_noise, and the header of bias_a_map."""
    folder = _out(params, "bias_model")
    get = lambda name: read_image(_require(folder / f"{name}.fits", "bias"), rows=rows)  # noqa: E731
    cov = read_section(folder / "bias_covariance.fits", 0, (slice(None), rows))
    return dict(a=get("bias_a_map"), b=get("bias_b_map"), cov=cov, read_noise=get("read_noise_map"),
                header=fits.getheader(folder / "bias_a_map.fits"))


# --- dark masters -----------------------------------------------------------------------------
def run_dark_masters(params: dict) -> list[Path]:
    """Bias-subtracted master darks per (T, t): ``dark_masters/darks_TxxC_texpYYs.fits``.

    The bias removed from each frame is the bias model at that frame's own temperature
    (``dark_bias: model``) or the master bias nearest in temperature (``nearest``).
    """
    if params["dark_bias"] == "model":
        folder = _require(_out(params, "bias_model"), "bias")
        source = ("model", folder / "bias_a_map.fits", folder / "bias_b_map.fits")
        subtracted = "model: a + b*T at each frame's own temperature"
    else:
        paths = master_paths(_out(params, "bias_grouped_by_temp"))
        source = ("nearest", paths, [fits.getheader(p)["TEMP"] for p in paths])
        subtracted = "nearest: the master bias nearest in temperature"
    written = _make_masters(params, load_inventory(params), "dark", source, subtracted)
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


def _fit_inputs(params: dict, rows=slice(None), inv_gain: float | None = None) -> dict:
    """Master darks of ``rows`` flattened to (M, npix), with their noise terms.

    ``inv_gain`` (1/g) defaults to the estimate from these rows.
    """
    darks = load_masters(_require(_out(params, "dark_masters"), "dark_masters"), rows)
    bias = load_bias_model(params, rows)
    flat = lambda x: x.reshape(len(darks), -1)  # noqa: E731
    if inv_gain is None:
        high = np.nanpercentile(darks.data, 99, axis=(1, 2))[:, None, None]  # keep hot pixels out
        inv_gain = inverse_gain(darks.data, darks.variance, darks.nframes, bias["read_noise"] ** 2,
                                darks.valid & (darks.data < high))
    base_var, shot = _noise_terms(params, darks, bias, inv_gain)
    bias_cov = bias["cov"].reshape(3, -1) if params["dark_bias"] == "model" else None
    return dict(darks=darks, bias=bias, shape=darks.data.shape[1:], inv_gain=inv_gain, signal=flat(darks.data),
                bias_cov=bias_cov, valid=flat(darks.valid), base_var=flat(base_var),
                shot=flat(np.broadcast_to(shot, darks.data.shape)), tmin=float(darks.temperature.min()),
                fit_gamma=dark_dimension(params, darks.exptime))


def _frame_shape(folder: Path) -> tuple[int, int]:
    header = fits.getheader(master_paths(folder)[0])
    return header["NAXIS2"], header["NAXIS1"]


def _sample_inputs(params: dict, inv_gain: float) -> dict:
    """:func:`_fit_inputs` on ``loo_pixels`` random pixels of a few random rows (all if 0).

    Adds ``rows`` (the rows read) and ``pixels`` (flat indices within them).
    """
    ny, nx = _frame_shape(_out(params, "dark_masters"))
    n = params["loo_pixels"]
    rng = np.random.default_rng(params["seed"])
    if n == 0 or n >= ny * nx:
        rows, pixels = slice(None), np.arange(ny * nx)
    else:
        rows = np.sort(rng.choice(ny, min(ny, 4 * -(-n // nx)), replace=False))
        pixels = np.sort(rng.choice(len(rows) * nx, n, replace=False))
    inputs = _fit_inputs(params, rows, inv_gain)
    for key in ("signal", "valid", "base_var", "shot"):
        inputs[key] = inputs[key][:, pixels]
    if inputs["bias_cov"] is not None:
        inputs["bias_cov"] = inputs["bias_cov"][:, pixels]
    return dict(inputs, rows=rows, pixels=pixels)


def _fit(params, inputs, form, fit_gamma=None, propagate_bias=False):
    return fit_dark(inputs["signal"], inputs["valid"], inputs["base_var"], inputs["shot"],
                    inputs["darks"].temperature, inputs["darks"].exptime, inputs["tmin"], form,
                    inputs["fit_gamma"] if fit_gamma is None else fit_gamma, params["max_iterations"],
                    params["min_dof"], bias_cov=inputs["bias_cov"] if propagate_bias else None)


def compare_models(params: dict, inputs: dict) -> Table:
    """Fit every model (exponential / Arrhenius, 2d / 1d) to the pixels of ``inputs``; compare chi-square.

    ``meta['better']`` names the best-fitting form ('exponential' or 'arrhenius') of the
    dimension in use; 1d models appear only as a comparison.
    """
    dims = (True, False) if inputs["fit_gamma"] else (False,)
    rows = [(form, "2d" if g else "1d", _fit(params, inputs, form, g).chi2r)
            for form in ("exponential", "arrhenius") for g in dims]
    chi2 = np.array([r[2] for r in rows])
    both = np.all(np.isfinite(chi2), axis=0)
    best = np.argmin(chi2[:, both], axis=0)
    table = Table(rows=[(form, dim, float(np.median(c[both])), float(np.mean(c[both])), float(np.mean(best == i)),
                         int(both.sum())) for i, (form, dim, c) in enumerate(rows)],
                  names=("form", "dimension", "chi2r_median", "chi2r_mean", "share_best", "npix"))
    in_use = table[table["dimension"] == ("2d" if inputs["fit_gamma"] else "1d")]
    table.meta.update(better=str(in_use["form"][np.argmin(in_use["chi2r_mean"])]), used=params["dark_form"])
    return table


def _fit_tile(params: dict, rows: slice, inv_gain: float) -> tuple:
    """Fit one band of rows (a task: runs in a thread or on a dask worker)."""
    inputs = _fit_inputs(params, rows, inv_gain)
    fit = _fit(params, inputs, params["dark_form"], propagate_bias=True)
    shape = inputs["shape"]
    bias_sat = load_masters(_out(params, "bias_grouped_by_temp"), rows).nsaturated.sum(0)
    saturated = (inputs["darks"].nsaturated.sum(0) + bias_sat) > 0
    return (fit.params.reshape((3,) + shape), fit.cov.reshape((3, 3) + shape), fit.chi2r.reshape(shape),
            fit.converged.reshape(shape), saturated)


def run_dark_model(params: dict) -> dict:
    """Fit the dark model to every pixel, tile by tile; classify pixels; write the calibration model.

    The gain comes from fixed sample rows, so the result does not depend on the tiling.
    Writes ``dark_model/`` maps (dark_A_map, dark_B_map or dark_Ea_map, dark_gamma_map,
    their sigma maps, dark_chi2r_map, dq_map, hot_pixel_mask), ``dark_model/model_comparison.ecsv``
    and ``calibration_model.fits``.
    """
    dark_folder = _require(_out(params, "dark_masters"), "dark_masters")
    ny, nx = _frame_shape(dark_folder)
    inv_gain = _fit_inputs(params, sample_rows(ny))["inv_gain"]
    dark_files, bias_files = master_paths(dark_folder), master_paths(_out(params, "bias_grouped_by_temp"))
    darks = [fits.getheader(p) for p in dark_files]
    biases = [fits.getheader(p) for p in bias_files]
    bands = row_bands(ny, len(darks) * nx * 8 * 24, params)
    parts = zip(*run_tiles(_fit_tile, [(params, band, inv_gain) for band in bands], params))
    dark, cov, chi2r, converged, saturated = (np.concatenate(p, axis=p[0].ndim - 2) for p in parts)
    bias = load_bias_model(params)
    comparison = compare_models(params, _sample_inputs(params, inv_gain))
    write_table(comparison, _out(params, "dark_model", "model_comparison.ecsv"))
    if comparison.meta["better"] != params["dark_form"]:
        warnings.warn(f"the {comparison.meta['better']} form fits this campaign better than dark_form="
                      f"{params['dark_form']} (see model_comparison.ecsv)", stacklevel=2)
    temps = [h["TEMP"] for h in darks + biases]
    exptimes = [h["EXPTIME"] for h in darks]
    model = CalibrationModel(
        bias_a=bias["a"], bias_b=bias["b"], bias_cov=bias["cov"], read_noise=bias["read_noise"], dark=dark,
        dark_cov=cov, chi2r=chi2r, converged=converged,
        dq=np.where(saturated, DQ_BITS["SATURATED"][0], 0).astype(np.uint16), form=params["dark_form"],
        fit_gamma=dark_dimension(params, np.array(exptimes)), tmin=float(min(h["TEMP"] for h in darks)),
        trange=(float(min(temps)), float(max(temps))), exprange=(float(min(exptimes)), float(max(exptimes))),
        meta=dict(CAMPAIGN=params["campaign"], GAIN=1 / inv_gain if inv_gain > 0 else 0.0,
                  SCALEFAC=params["scale_factor"], SATURATE=params["saturation"], NBIASM=len(biases),
                  NDARKM=len(darks), NBIAS=sum(h["NCOMBINE"] for h in biases),
                  NDARK=sum(h["NCOMBINE"] for h in darks)))
    model.history = [f"input: {p.name}" for p in bias_files + dark_files]
    classified = run_hot_pixels(params, model)
    return dict(comparison=comparison, inv_gain=inv_gain, **classified)


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
    variances = np.stack([model.dark_cov[i, i] for i in range(3)])
    sigma = np.sqrt(np.where(variances >= 0, variances, np.nan))  # negative: undetermined, flagged POOR_FIT
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
    header = lambda folder: [fits.getheader(p) for p in master_paths(_out(params, folder))]  # noqa: E731
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

    Groups are evaluated one at a time (one master in memory). Writes
    ``evaluation/summary.ecsv`` (one row per group), ``evaluation/loo.ecsv`` and the
    ``mae_maps.fits`` / ``mape_maps.fits`` cubes (one plane per group, GROUPS table). Returns
    the tables, the model and downsampled (real, synthetic, MAE, MAPE) previews per group.
    """
    model = CalibrationModel.read(_require(_out(params, MODEL_FILE), "dark_model"))
    bias = load_bias_model(params)
    inv_gain = 1 / model.meta["GAIN"] if model.meta.get("GAIN") else 0.0
    rv = model.read_noise.astype(np.float64) ** 2
    good = model.dq == 0
    hot = (model.dq & DQ_BITS["HOT"][0]) > 0
    files = [("bias", p) for p in master_paths(_out(params, "bias_grouped_by_temp"))]
    files += [("dark", p) for p in master_paths(_out(params, "dark_masters"))]
    headers = [fits.getheader(p) for _, p in files]
    groups = Table({"group": [frame_label(k, h["TEMP"], h["EXPTIME"]) for (k, _), h in zip(files, headers)],
                    "kind": [k for k, _ in files], "temperature": [h["TEMP"] for h in headers],
                    "exptime": [h["EXPTIME"] if k == "dark" else 0.0 for (k, _), h in zip(files, headers)]})

    def comparisons():
        """(synthetic, master, master variance, prediction variance, valid) per group, one at a time."""
        for (kind, path), T, t in zip(files, groups["temperature"], groups["exptime"]):
            m = load_masters([path])
            if kind == "bias":
                yield model.bias(T), m.data[0], rv / m.nframes[0], model.bias_variance(T), m.valid[0]
            else:
                synth = model.dark_signal(T, t)
                base, shot = _noise_terms(params, m, bias, inv_gain)
                yield synth, m.data[0], base[0] + shot[0] * synth, model.dark_variance(T, t), m.valid[0]

    rows, previews = [], {}
    shape = (len(files),) + model.dq.shape
    header = model.header()
    extensions = [fits.table_to_hdu(groups)]
    extensions[0].name = "GROUPS"
    with (cube_writer(_out(params, "evaluation", "mae_maps.fits"), provenance(
            header.copy(), bunit="DN", description="MAE of the synthetic frame per group (GROUPS)"), shape,
            extensions) as write_mae,
          cube_writer(_out(params, "evaluation", "mape_maps.fits"), provenance(
            header.copy(), bunit="%", description="MAPE of the synthetic frame per group (GROUPS)"), shape,
            extensions) as write_mape,
          warnings.catch_warnings()):
        warnings.simplefilter("ignore", OutOfRangeWarning)
        for group, (synth, master, var, var_pred, valid) in zip(groups, comparisons()):
            mae, mape, stats = residual_stats(synth, master, var, good & valid, params["snr_min"])
            _, _, hot_stats = residual_stats(synth, master, var, hot & valid, params["snr_min"])
            leverage = np.clip(var_pred / var, 0, 1)[good & valid]  # in-sample residual variance is var (1 - h)
            rows.append(dict(group=group["group"], kind=group["kind"], temperature=group["temperature"],
                             exptime=group["exptime"], **stats, resid_noise_hot=hot_stats["resid_noise"],
                             resid_noise_expected=float(np.sqrt(np.mean(1 - leverage)))))
            write_mae(mae)
            write_mape(mape)
            previews[group["group"]] = tuple(downsample(x) for x in (master, synth, mae, mape))
    summary = Table(rows=rows)
    loo = _leave_one_out(params, model, inv_gain)
    write_table(summary, _out(params, "evaluation", "summary.ecsv"))
    write_table(loo, _out(params, "evaluation", "loo.ecsv"))
    return dict(summary=summary, loo=loo, model=model, previews=previews)


def _leave_one_out(params: dict, model: CalibrationModel, inv_gain: float) -> Table:
    """Leave-one-group-out on the pixel sample of :func:`_sample_inputs`."""
    inputs = _sample_inputs(params, inv_gain)
    rows, pixels, darks = inputs["rows"], inputs["pixels"], inputs["darks"]
    z, err = leave_one_out_dark(inputs["signal"], inputs["valid"], inputs["base_var"], inputs["shot"],
                                darks.temperature, darks.exptime, inputs["tmin"], params["dark_form"],
                                inputs["fit_gamma"], params["max_iterations"], params["min_dof"])
    bias_m = load_masters(_out(params, "bias_grouped_by_temp"), rows)
    flat = lambda x: x.reshape(len(x), -1)[:, pixels]  # noqa: E731
    sample = lambda image: image[rows].reshape(-1)[pixels]  # noqa: E731
    zb, errb = leave_one_out_bias(bias_m.temperature, flat(bias_m.data),
                                  flat(np.where(bias_m.valid, bias_m.nframes, 0)),
                                  sample(model.read_noise.astype(np.float64)) ** 2)
    g, h = sample(model.dq) == 0, (sample(model.dq) & DQ_BITS["HOT"][0]) > 0
    table_rows = []
    for kind, zz, ee, T, t in (("bias", zb, errb, bias_m.temperature, np.zeros(len(bias_m))),
                               ("dark", z, err, darks.temperature, darks.exptime)):
        for i in range(len(T)):
            def rms(sel, zi=zz[i]):
                return float(np.sqrt(np.nanmean(zi[sel] ** 2))) if np.isfinite(zi[sel]).any() else np.nan
            table_rows.append(dict(group=frame_label(kind, T[i], t[i]), kind=kind, temperature=float(T[i]),
                                   exptime=float(t[i]), loo_noise=rms(g), loo_noise_hot=rms(h),
                                   mae=float(np.nanmean(ee[i][g])), npix=int(g.sum())))
    table = Table(rows=table_rows)
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
