"""Stage 7, evaluation: synthetic against real masters for every group, and leave-one-group-out.

Groups are evaluated as tiles (one master in memory each). Writes ``evaluation/summary.ecsv``
(one row per group) and ``evaluation/loo.ecsv``; with ``save_eval_fits`` also the
``mae_maps.fits`` / ``mape_maps.fits`` cubes (one plane per group, GROUPS table). Samples the
dark fit dropped (outliers, full well) are left out, as the fit left them out.
"""

from __future__ import annotations

import warnings

import numpy as np
from astropy.io import fits
from astropy.table import Table

from ..bias import bias_at
from ..compute import run_tiles, workers
from ..dq import DQ, has
from ..errors import OutOfRangeWarning
from ..evaluate import compare, held_out_dark, leave_one_out_bias
from ..fitsio import cube_writer, provenance, write_table
from ..inventory import frame_label
from ..masters import load_masters, master_index
from ..model import CalibrationModel, shared_model
from ..noise import Noise
from ..products import product, required, stage
from . import dark_model as dark_model_stage
from . import inventory as inventory_stage

__all__ = ["dropped_samples", "run"]

PREVIEW = 128  # longest side of the per-group previews kept for the page


def dropped_samples(params: dict) -> Table:
    """The master samples the dark fit dropped (``dark_model/outliers.fits``; units as the file states them, DN
    being no unit the FITS standard knows)."""
    return Table(fits.getdata(required(params, "outliers"), "SAMPLES"))


def _group(params: dict, kind: str, index_entry, label: str, inv_gain: float, dropped) -> tuple:
    """Compare one group's master with the model (a task: a thread or a dask worker)."""
    path = str(product(params, "model"))
    model = shared_model(path)
    masters = load_masters([index_entry], extensions=("NFRAMES", "NSATUR"))
    master, valid = masters.data[0], masters.valid[0]
    T, t = float(masters.temperature[0]), float(masters.exptime[0])
    good = ~has(model.dq, DQ.DEFECT) & valid
    if dropped is not None:
        good[dropped] = False
    if kind == "bias":
        synth, fitted_var = bias_at(model.bias_a, model.bias_b, T), model.bias_variance(T)
        noise = Noise(masters.nframes, model.read_variance, 0.0)
    else:
        synth, fitted_var = model.fitted_prediction(T, t)
        bias = (model.bias_a, model.bias_b, model.bias_cov) if params["dark_bias"] == "model" else None
        noise = Noise(masters.nframes, model.read_variance, inv_gain, bias)
    hot = has(model.dq, DQ.HOT) & valid
    mae, mape, stats, previews = compare(synth, master, fitted_var, noise, T, good, hot, params["snr_min"], PREVIEW)
    row = dict(group=label, kind=kind, temperature=T, exptime=t if kind == "dark" else 0.0, **stats)
    return row, previews, (mae, mape) if params["save_eval_fits"] else None


@stage("evaluation")
def run(params: dict) -> dict:
    """Evaluate every group and the leave-one-group-out; return the tables, the model and the previews.

    ``previews[group]`` holds block-averaged maps of the master, the synthetic frame, MAE, MAPE
    and the residual in units of its noise (block means scaled so that pure noise has sigma 1).
    """
    model = shared_model(required(params, "model"), workers(params))
    inv_gain = 1 / model.meta["GAIN"] if model.meta.get("GAIN") else 0.0
    entries = [("bias", e) for e in master_index(product(params, "bias_masters"))]
    entries += [("dark", e) for e in master_index(product(params, "dark_masters"))]
    labels = [frame_label(k, h["TEMP"], h["EXPTIME"]) for k, (_, h) in entries]
    samples = dropped_samples(params)
    tasks = []
    for (kind, entry), label in zip(entries, labels):
        sel = samples["MASTER"] == label
        tasks.append((params, kind, entry, label, inv_gain,
                      (np.asarray(samples["Y"][sel]), np.asarray(samples["X"][sel])) if sel.any() else None))
    rows, previews, cubes = [], {}, []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OutOfRangeWarning)
        for row, preview, cube in run_tiles(_group, tasks, params, "evaluation"):
            rows.append(row)
            previews[row["group"]] = preview
            if cube is not None:
                cubes.append(cube)
    summary = Table(rows=rows)
    for name in ("mae_mean", "mae_median", "mae_std"):
        summary[name].unit = "DN"
    if cubes:
        _write_cubes(params, model, summary, cubes)
    loo = _leave_one_out(params, model, inv_gain)
    write_table(summary, product(params, "evaluation", "summary.ecsv"))
    write_table(loo, product(params, "evaluation", "loo.ecsv"))
    return dict(summary=summary, loo=loo, model=model, previews=previews)


def _write_cubes(params, model, summary, cubes) -> None:
    groups = summary["group", "kind", "temperature", "exptime"]
    shape = (len(cubes),) + model.dq.shape
    extension = fits.table_to_hdu(groups)
    extension.name = "GROUPS"
    for k, (name, unit) in enumerate((("mae_maps.fits", "DN"), ("mape_maps.fits", "%"))):
        header = provenance(model.header(), bunit=unit, description=f"{name.split('_')[0].upper()} of the "
                            "synthetic frame per group (GROUPS)")
        with cube_writer(product(params, "evaluation", name), header, shape, [extension]) as write:
            for cube in cubes:
                write(cube[k])


def _leave_one_out(params: dict, model: CalibrationModel, inv_gain: float) -> Table:
    """Leave-one-group-out on the pixel sample of :func:`cmoscal.stages.dark_model.sample_inputs`."""
    index = master_index(product(params, "dark_masters"))
    inputs = dark_model_stage.sample_inputs(params, index, inv_gain)
    rows, pixels, darks = inputs["rows"], inputs["pixels"], inputs["darks"]
    ny, nx = model.dq.shape
    row_index = np.arange(ny)[rows]
    sample_y, sample_x = row_index[pixels // nx], pixels % nx
    usable = inputs["usable"].copy()
    dropped = dropped_samples(params)
    position = {(int(y), int(x)): k for k, (y, x) in enumerate(zip(sample_y, sample_x))}
    names = [frame_label("dark", T, t) for T, t in zip(darks.temperature, darks.exptime)]
    for master, y, x in zip(dropped["MASTER"], dropped["Y"], dropped["X"]):
        k = position.get((int(y), int(x)))
        if k is not None:
            usable[names.index(master), k] = False
    options = dark_model_stage.fit_options(params, float(model.meta.get("SATURATE", np.inf)), len(darks) - 1,
                                           model.form, prior=model.prior)
    common = (inputs["signal"], usable, inputs["noise"], darks.temperature, darks.exptime, model.tmin, model.form,
              model.fit_gamma, options)
    z, err = (np.stack(k) for k in zip(*run_tiles(held_out_dark, [(g, *common) for g in range(len(darks))], params,
                                                  "leave-one-out")))
    bias_m = load_masters(master_index(product(params, "bias_masters")), rows, extensions=("NFRAMES", "NSATUR"))

    def flat(stack):
        return stack.reshape(len(stack), -1)[:, pixels]

    def sample(image):
        return image[rows].reshape(-1)[pixels]

    zb, errb = leave_one_out_bias(bias_m.temperature, flat(bias_m.data),
                                  flat(np.where(bias_m.valid, bias_m.nframes, 0)),
                                  sample(model.read_noise.astype(np.float64)) ** 2)
    dq = sample(model.dq)
    g, h = ~has(dq, DQ.DEFECT), has(dq, DQ.HOT)
    table_rows = []
    for kind, zz, ee, T, t in (("bias", zb, errb, bias_m.temperature, np.zeros(len(bias_m))),
                               ("dark", z, err, darks.temperature, darks.exptime)):
        for i in range(len(T)):
            def rms(sel, zi=zz[i]):
                return float(np.sqrt(np.nanmean(zi[sel] ** 2))) if np.isfinite(zi[sel]).any() else np.nan
            errors = ee[i][g]
            table_rows.append(dict(group=frame_label(kind, T[i], t[i]), kind=kind, temperature=float(T[i]),
                                   exptime=float(t[i]), loo_noise=rms(g), loo_noise_hot=rms(h),
                                   mae=float(np.nanmean(errors)) if np.isfinite(errors).any() else np.nan,
                                   npix=int(np.isfinite(zz[i][g]).sum())))
    table = Table(rows=table_rows)
    table.meta["pixels"] = len(pixels)
    inventory = inventory_stage.load(params)
    table.meta["notes"] = [n for n in inventory.meta.get("notes", []) if "leave-one-out" in n]
    return table
