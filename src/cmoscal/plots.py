"""Figures of the report notebooks. Large images are block-averaged for display."""

from __future__ import annotations

import io

import matplotlib.pyplot as plt
import numpy as np
from astropy.table import Table

from .config import load_params
from .darkfit import predict
from .evaluate import downsample
from .hotpix import DQ_BITS

__all__ = ["as_jpeg", "dark_curves", "dq_map", "evaluation_summary", "group_heatmaps", "histograms", "image_grid",
           "inventory_overview", "loo_figure", "master_levels", "rate_histogram", "start_notebook"]

def start_notebook(params_file: str, root: str) -> dict:
    """Load the campaign parameters and set compact figure defaults; call first in a notebook."""
    plt.rcParams.update({"figure.dpi": 80, "savefig.dpi": 80, "image.origin": "lower", "font.size": 9})
    return load_params(params_file, root=root)


def as_jpeg(fig, quality: int = 85):
    """Show ``fig`` as an embedded JPEG (for mosaics of noisy maps, which PNG cannot compress)."""
    from IPython.display import Image

    buffer = io.BytesIO()
    fig.savefig(buffer, format="jpeg", pil_kwargs={"quality": quality})
    plt.close(fig)
    return Image(data=buffer.getvalue(), format="jpeg")


def _limits(image, percentiles=(1, 99)):
    finite = image[np.isfinite(image)]
    return np.percentile(finite, percentiles) if finite.size else (0, 1)


def image_grid(images: dict, ncols: int = 3, size: float = 3.6, cmap: str = "viridis"):
    """Maps side by side: ``images`` maps a title to ``(array, unit)``; colour scale at the 1-99 % range."""
    n = len(images)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * 0.85 * nrows), squeeze=False,
                             layout="constrained")
    for ax, (title, (image, unit)) in zip(axes.flat, images.items()):
        shown = downsample(image)
        lo, hi = _limits(shown)
        im = ax.imshow(shown, origin="lower", cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
        fig.colorbar(im, ax=ax, shrink=0.85, label=unit)
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig


def histograms(values: dict, ncols: int = 3, bins: int = 100, log: bool = True):
    """Histograms side by side: ``values`` maps a title to ``(array, unit)``; median and 1-99 % marked."""
    n = len(values)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(4 * ncols, 2.8 * nrows), squeeze=False, layout="constrained")
    for ax, (title, (data, unit)) in zip(axes.flat, values.items()):
        v = np.asarray(data, dtype=float).ravel()
        v = v[np.isfinite(v)]
        lo, hi = np.percentile(v, (0.1, 99.9))
        ax.hist(v, bins=bins, range=(lo, hi) if hi > lo else None, color="0.35", log=log)
        ax.axvline(np.median(v), color="C1", label=f"median {np.median(v):.4g}")
        ax.set_xlabel(unit)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig


def inventory_overview(inventory: Table):
    """Frames per temperature (biases) and per (temperature, exposure) (darks); rejected files in red."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), layout="constrained")
    ok = inventory["status"] == "ok"
    for ax, kind in zip(axes, ("bias", "dark")):
        sel = ok & (inventory["type"] == kind)
        ax.scatter(inventory["temperature"][sel], inventory["exposure"][sel], s=14, alpha=0.6, label="used")
        bad = ~ok & (inventory["type"] == kind) & np.isfinite(inventory["temperature"])
        ax.scatter(inventory["temperature"][bad], inventory["exposure"][bad], s=40, marker="x", color="C3",
                   label="rejected")
        ax.set_xlabel("temperature [degC]")
        ax.set_ylabel("exposure [s]")
        if kind == "dark" and sel.any():
            ax.set_yscale("log")
        ax.set_title(f"{kind} frames: {int(sel.sum())} used")
        ax.legend(fontsize=8)
    return fig


def dark_curves(series, model, pixels: dict):
    """Dark signal vs temperature of sample pixels: master values (points) and model (lines).

    ``series`` is (temperature, exposure, values) from :func:`cmoscal.masters.pixel_series` for the
    ``pixels`` (a dict label -> (y, x)); one panel per pixel, one colour per exposure. Log scale:
    masters at or below zero (noise around a tiny signal) are not drawn.
    """
    temperature, exptime, values = series
    fig, axes = plt.subplots(1, len(pixels), figsize=(4.2 * len(pixels), 3.4), squeeze=False, layout="constrained")
    grid = np.linspace(*model.trange, 50)
    for i, (ax, (label, (y, x))) in enumerate(zip(axes.flat, pixels.items())):
        for k, t in enumerate(np.unique(exptime)):
            sel = np.isclose(exptime, t) & (values[:, i] > 0)
            ax.plot(temperature[sel], values[sel, i], "o", color=f"C{k}", ms=4, label=f"{t:g} s")
            ax.plot(grid, predict(model.dark[:, y, x], grid, t, model.tmin, model.form), "-", color=f"C{k}", lw=1)
        ax.set_yscale("log")
        ax.set_xlabel("temperature [degC]")
        ax.set_ylabel("dark signal [DN]")
        ax.set_title(f"{label} (x={x}, y={y})", fontsize=10)
    axes.flat[0].legend(fontsize=7, title="exposure")
    return fig


def master_levels(summary: Table):
    """Median master dark signal vs temperature, one line per exposure (from :func:`summarize_masters`)."""
    fig, ax = plt.subplots(figsize=(7, 3.6), layout="constrained")
    for k, t in enumerate(np.unique(summary["exptime"])):
        sel = np.isclose(summary["exptime"], t)
        ax.plot(summary["temperature"][sel], summary["median"][sel], "o-", color=f"C{k}", ms=4, label=f"{t:g} s")
    ax.set_yscale("symlog", linthresh=0.1)
    ax.set_xlabel("temperature [degC]")
    ax.set_ylabel("median dark signal [DN]")
    ax.legend(fontsize=8, title="exposure")
    return fig


def rate_histogram(rate: np.ndarray, thresholds: dict, reference_temperature: float):
    """Histogram of dark rates at the reference temperature with the warm and hot thresholds."""
    fig, ax = plt.subplots(figsize=(7, 3.4), layout="constrained")
    v = rate[np.isfinite(rate) & (rate > 0)]
    ax.hist(v, bins=np.geomspace(v.min(), v.max(), 120), color="0.35", log=True)
    ax.set_xscale("log")
    for name, color in (("warm_rate", "C1"), ("hot_rate", "C3")):
        ax.axvline(thresholds[name], color=color, label=f"{name.split('_')[0]} > {thresholds[name]:.3g} DN/s")
    ax.set_xlabel(f"dark rate at {reference_temperature:.1f} degC [DN/s]")
    ax.set_ylabel("pixels")
    ax.legend()
    return fig


def dq_map(dq: np.ndarray):
    """Where the flagged pixels are, one colour per DQ class (the highest-priority bit wins)."""
    classes = np.zeros(dq.shape, dtype=np.int8)
    names = list(DQ_BITS)
    for i, name in reversed(list(enumerate(names, 1))):
        classes[(dq & DQ_BITS[name][0]) > 0] = i
    fig, ax = plt.subplots(figsize=(6.5, 5.5), layout="constrained")
    ys, xs = np.nonzero(classes)
    for i, name in enumerate(names, 1):
        sel = classes[ys, xs] == i
        ax.scatter(xs[sel], ys[sel], s=6, color=f"C{i - 1}", label=f"{name} ({int(sel.sum())})")
    ax.set_xlim(0, dq.shape[1])
    ax.set_ylim(0, dq.shape[0])
    ax.set_aspect("equal")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1, 1))
    ax.set_title("flagged pixels")
    return fig


HEATMAP_PIXELS = 128  # per-group maps are many: keep each small


def group_heatmaps(rows: list[tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]], unit: str = "DN"):
    """Real, synthetic, MAE and MAPE maps, one row per group: ``(label, real, synthetic, mae, mape)``."""
    fig, axes = plt.subplots(len(rows), 4, figsize=(10, 2.2 * len(rows)), squeeze=False, layout="constrained")
    for row, (label, *images) in zip(axes, rows):
        real, synth, mae, mape = (downsample(image, HEATMAP_PIXELS) for image in images)
        lo, hi = _limits(real)
        for ax, image, title, vmin, vmax, u, cmap in (
                (row[0], real, f"{label}: real", lo, hi, unit, "viridis"),
                (row[1], synth, "synthetic", lo, hi, unit, "viridis"),
                (row[2], mae, "MAE", 0, _limits(mae)[1], unit, "magma"),
                (row[3], mape, "MAPE", 0, _limits(mape)[1] if np.isfinite(mape).any() else 1, "%", "magma")):
            im = ax.imshow(image, origin="lower", vmin=vmin, vmax=vmax, interpolation="nearest", cmap=cmap)
            fig.colorbar(im, ax=ax, shrink=0.8, label=u)
            ax.set_title(title, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    return fig


def evaluation_summary(summary: Table):
    """Mean +/- std of MAE and MAPE vs temperature, one line per exposure; residual / noise per group."""
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8), layout="constrained")
    kinds = [("bias", 0.0)] + [("dark", t) for t in np.unique(summary["exptime"][summary["kind"] == "dark"])]
    for k, (kind, t) in enumerate(kinds):
        sel = (summary["kind"] == kind) & np.isclose(summary["exptime"], t)
        label = "bias" if kind == "bias" else f"dark {t:g} s"
        T = summary["temperature"][sel]
        for ax, col in zip(axes, ("mae", "mape")):
            ax.errorbar(T, summary[f"{col}_mean"][sel], summary[f"{col}_std"][sel], fmt="o-", color=f"C{k}",
                        capsize=3, ms=4, label=label)
        axes[2].plot(T, summary["resid_noise"][sel], "o-", color=f"C{k}", ms=4, label=label)
    axes[2].axhline(1, color="k", lw=0.8, ls="--")
    axes[2].plot(summary["temperature"], summary["resid_noise_expected"], "k_", ms=10,
                 label="expected in-sample, sqrt(1 - leverage)")
    for ax, title, unit in zip(axes, ("MAE (mean +/- std)", "MAPE over significant pixels", "residual / noise"),
                               ("DN", "%", "")):
        ax.set_xlabel("temperature [degC]")
        ax.set_ylabel(unit)
        ax.set_title(title, fontsize=10)
    axes[2].legend(fontsize=7, ncol=2)
    return fig


def loo_figure(loo: Table):
    """Leave-one-group-out: held-out residual RMS / expected noise per group (1 = noise-limited)."""
    fig, ax = plt.subplots(figsize=(8, 3.6), layout="constrained")
    kinds = [("bias", 0.0)] + [("dark", t) for t in np.unique(loo["exptime"][loo["kind"] == "dark"])]
    for k, (kind, t) in enumerate(kinds):
        sel = (loo["kind"] == kind) & np.isclose(loo["exptime"], t)
        ax.plot(loo["temperature"][sel], loo["loo_noise"][sel], "o-", color=f"C{k}", ms=4,
                label="bias" if kind == "bias" else f"dark {t:g} s")
        ax.plot(loo["temperature"][sel], loo["loo_noise_hot"][sel], "x", color=f"C{k}", ms=6)
    ax.axhline(1, color="k", lw=0.8, ls="--")
    ax.set_xlabel("held-out temperature [degC]")
    ax.set_ylabel("held-out residual / noise")
    ax.set_title("leave-one-group-out (o normal pixels, x hot pixels)", fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    return fig
