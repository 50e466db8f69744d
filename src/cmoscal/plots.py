"""Figures and tables of the report notebooks.

Large images are block-averaged for display; many small maps go into one mosaic per kind
(one image, not hundreds of panels); tables are rounded to meaningful digits, carry their
units and show every row (collapsed when long).
"""

from __future__ import annotations

import html
import io
import sys
import warnings

import matplotlib.pyplot as plt
import numpy as np
from astropy.table import Table

from .config import load_params
from .darkfit import predict
from .dq import FLAGS, has
from .errors import CampaignWarning
from .evaluate import downsample
from .index import format_value
from .inventory import chain_groups

__all__ = ["as_jpeg", "calibrated_frames", "change_histograms", "count_maps", "dark_curves", "dropped_per_master",
           "evaluation_summary", "flag_map", "group_mosaics", "histograms", "image_grid", "inventory_overview",
           "loo_figure", "master_levels", "mosaic", "show_table", "significance_histogram", "start_notebook",
           "typical_pixels"]


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """Campaign warnings as a visible box on the page; others in the usual form."""
    if issubclass(category, CampaignWarning):
        from IPython.display import HTML, display

        display(HTML(f'<div style="border-left:4px solid #c77c02;background:#fff4d6;padding:.4em .8em;'
                     f'margin:.4em 0"><b>Warning:</b> {html.escape(str(message))}</div>'))
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def start_notebook(params_file: str, root: str) -> dict:
    """Load the campaign parameters, set compact figure defaults and show warnings and errors
    readably (no tracebacks for a campaign's problems); call first in a notebook."""
    plt.rcParams.update({"figure.dpi": 80, "savefig.dpi": 80, "image.origin": "lower", "font.size": 9})
    warnings.showwarning = _show_warning
    try:
        from IPython import get_ipython

        shell = get_ipython()
        if shell is not None:
            shell.InteractiveTB.set_mode(mode="Minimal")
            if "inline" in plt.get_backend():  # the figures lay themselves out: no second, "tight" drawing
                from matplotlib_inline.backend_inline import set_matplotlib_formats

                set_matplotlib_formats("png", bbox_inches=None)
    except ImportError:  # outside IPython
        pass
    return load_params(params_file, root=root)


def show_table(table: Table, digits: int = 4, collapse: int = 25, title: str = ""):
    """A table for a person: numbers to ``digits`` significant digits, units in the header,
    every row shown (inside a collapsible block beyond ``collapse`` rows)."""
    from IPython.display import HTML

    units = {name: f" [{table[name].unit}]" if table[name].unit else "" for name in table.colnames}
    head = "".join(f'<th style="text-align:left">{html.escape(name + units[name])}</th>' for name in table.colnames)
    align = {name: "right" if table[name].dtype.kind in "iuf" else "left" for name in table.colnames}
    text = {name: [html.escape(format_value(value, digits)) for value in table[name]] for name in table.colnames}
    rows = "".join("<tr>" + "".join(f'<td style="text-align:{align[name]}">{text[name][i]}'
                                    "</td>" for name in table.colnames) + "</tr>" for i in range(len(table)))
    body = f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"
    label = title or f"{len(table)} rows"
    if len(table) > collapse:
        body = f"<details><summary>{html.escape(label)} (click to show)</summary>{body}</details>"
    elif title:
        body = f"<p><b>{html.escape(title)}</b></p>{body}"
    return HTML(body)


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


def _panels(nrows: int, ncols: int, width: float, height: float, margins=(0.1, 0.1, 0.35, 0.1), gaps=(0.8, 0.45)):
    """A grid of panels of ``width`` x ``height`` inches with fixed margins (left, bottom, top, right)
    and gaps (between columns, between rows) in inches: no layout engine to run at every drawing
    (which costs more than drawing the panels of a large grid)."""
    left, bottom, top, right = margins
    fig_w = left + right + ncols * width + (ncols - 1) * gaps[0]
    fig_h = bottom + top + nrows * height + (nrows - 1) * gaps[1]
    fig, axes = plt.subplots(nrows, ncols, figsize=(fig_w, fig_h), squeeze=False)
    fig.subplots_adjust(left=left / fig_w, right=1 - right / fig_w, bottom=bottom / fig_h, top=1 - top / fig_h,
                        wspace=gaps[0] / width, hspace=gaps[1] / height)
    return fig, axes


#: margins and gaps [inches] of panels with tick labels, axis labels and a title
_LABELLED = dict(margins=(0.75, 0.55, 0.3, 0.2), gaps=(0.85, 0.6))


def image_grid(images: dict, ncols: int = 3, size: float = 3.6, cmap: str = "viridis"):
    """Maps side by side: ``images`` maps a title to ``(array, unit)``; colour scale at the 1-99 % range."""
    n = len(images)
    nrows = int(np.ceil(n / ncols))
    fig, axes = _panels(nrows, ncols, size - 0.8, size * 0.85 - 0.45, margins=(0.1, 0.1, 0.35, 0.8))
    for ax, (title, (image, unit)) in zip(axes.flat, images.items()):
        shown = downsample(image)
        lo, hi = _limits(shown)
        im = ax.imshow(shown, origin="lower", cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest")
        fig.colorbar(im, ax=ax, fraction=0.06, pad=0.03, label=unit)
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig


def _bars(ax, values, bins, range=None, log=True, label=None):
    """A histogram drawn as one filled outline (not one patch per bar, which is slow to draw)."""
    counts, edges = np.histogram(values, bins=bins, range=range)
    ax.stairs(counts, edges, fill=True, color="0.35", label=label)
    if log:
        ax.set_yscale("log", nonpositive="clip")


_HISTOGRAM_VALUES = 1 << 20  # values drawn per histogram (a regular sample of larger maps)


def histograms(values: dict, ncols: int = 3, bins: int = 100, log: bool = True):
    """Histograms side by side: ``values`` maps a title to ``(array, unit)``; median marked (large maps
    are sampled regularly down to about a million values)."""
    n = len(values)
    nrows = int(np.ceil(n / ncols))
    fig, axes = _panels(nrows, ncols, 3.3, 2.1, margins=(0.55, 0.5, 0.3, 0.15), gaps=(0.7, 0.7))
    for ax, (title, (data, unit)) in zip(axes.flat, values.items()):
        v = np.asarray(data).ravel()
        v = v[:: max(1, v.size // _HISTOGRAM_VALUES)].astype(float)  # a fixed 1-in-k sample: the same picture
        v = v[np.isfinite(v)]
        if not v.size:
            ax.set_title(f"{title}: no finite values", fontsize=10)
            continue
        lo, median, hi = np.percentile(v, (0.1, 50, 99.9))
        _bars(ax, v, bins, (lo, hi) if hi > lo else None, log)
        ax.axvline(median, color="C1", label=f"median {median:.4g}")
        ax.set_xlabel(unit)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=8)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    return fig


def inventory_overview(inventory: Table):
    """Frames per temperature and exposure: used (dots), rejected (red crosses)."""
    fig, axes = _panels(1, 2, 4.6, 2.75, **_LABELLED)
    ok = inventory["status"] == "ok"
    for ax, kind in zip(axes.flat, ("bias", "dark")):
        sel = ok & (inventory["type"] == kind)
        ax.scatter(inventory["temperature"][sel], inventory["exposure"][sel], s=14, alpha=0.6, label="used")
        bad = (inventory["status"] == "rejected") & (inventory["type"] == kind) & np.isfinite(inventory["temperature"])
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
    fig, axes = _panels(1, len(pixels), 3.3, 2.55, **_LABELLED)
    grid = np.linspace(*model.trange, 50)
    for i, (ax, (label, (y, x))) in enumerate(zip(axes.flat, pixels.items())):
        for k, t in enumerate(np.unique(exptime)):
            sel = np.isclose(exptime, t) & (values[:, i] > 0)
            ax.plot(temperature[sel], values[sel, i], "o", color=f"C{k % 10}", ms=4, label=f"{t:g} s")
            ax.plot(grid, predict(model.dark[:, y, x], grid, t, model.tmin, model.form), "-", color=f"C{k % 10}",
                    lw=1)
        ax.set_yscale("log")
        ax.set_xlabel("temperature [degC]")
        ax.set_ylabel("dark signal [DN]")
        ax.set_title(f"{label} (x={x}, y={y})", fontsize=10)
    axes.flat[0].legend(fontsize=7, title="exposure")
    return fig


def typical_pixels(values: np.ndarray, usable: np.ndarray, percentiles=(10, 50, 90)) -> dict:
    """Pixels at the given percentiles of ``values`` among the ``usable`` finite ones, and the highest:
    ``{label: (y, x)}`` (a partial sort, not a full one: a sensor has millions of pixels)."""
    flat = np.where(usable, values, np.nan).ravel()
    finite = np.flatnonzero(np.isfinite(flat))
    if not finite.size:
        return {}
    ranks = [int(q / 100 * (finite.size - 1)) for q in percentiles] + [finite.size - 1]
    order = np.argpartition(flat[finite], ranks)
    labels = [f"normal, {q}th pct" for q in percentiles] + ["highest"]
    return {label: tuple(int(v) for v in np.unravel_index(finite[order[r]], values.shape))
            for label, r in zip(labels, ranks)}


def master_levels(summary: Table):
    """Median master dark signal vs temperature, one line per exposure (from :func:`summarize_masters`)."""
    fig, axes = _panels(1, 1, 6.05, 2.75, **_LABELLED)
    ax = axes[0, 0]
    for k, t in enumerate(np.unique(summary["exptime"])):
        sel = np.isclose(summary["exptime"], t)
        order = np.argsort(summary["temperature"][sel])
        ax.plot(np.asarray(summary["temperature"][sel])[order], np.asarray(summary["median"][sel])[order], "o-",
                color=f"C{k % 10}", ms=4, label=f"{t:g} s")
    ax.set_yscale("symlog", linthresh=0.1)
    ax.set_xlabel("temperature [degC]")
    ax.set_ylabel("median dark signal [DN]")
    ax.legend(fontsize=8, title="exposure")
    return fig


def dropped_per_master(table: Table):
    """Samples the robust fit dropped per master against exposure (cosmic rays grow with it)."""
    fig, axes = _panels(1, 1, 5.4, 2.2, margins=(0.75, 0.55, 0.5, 0.85))  # a title above the offset text
    ax = axes[0, 0]
    sc = ax.scatter(table["exptime"], table["fraction"], c=table["temperature"], cmap="coolwarm", s=24)
    fig.colorbar(sc, ax=ax, label="temperature [degC]")
    ax.set_xscale("log")
    ax.set_xlabel("exposure [s]")
    ax.set_ylabel("share of pixels dropped")
    ax.set_title("master samples dropped as outliers or on a full-well plateau", fontsize=10)
    return fig


def significance_histogram(significance: tuple, populations: list, thresholds: dict):
    """How far each pixel's log dark rate lies above the population, at both ends of the range."""
    fig, axes = _panels(1, 2, 4.6, 2.55, **_LABELLED)
    for ax, z, population in zip(axes.flat, significance, populations):
        v = z[np.isfinite(z)]  # every pixel: the tail is what matters here
        _bars(ax, np.clip(v, -10, 60), 140)
        for name, color in (("warm_sigma", "C1"), ("hot_sigma", "C3")):
            ax.axvline(thresholds[name], color=color, label=f"{name.split('_')[0]} > {thresholds[name]:g} sigma")
        ax.set_xlabel("(ln rate - median) / intrinsic spread   (clipped to -10..60)")
        ax.set_ylabel("pixels")
        ax.set_title(f"at {population['temperature']:.1f} degC: median rate {np.exp(population['median']):.3g} "
                     f"DN/s, spread x{np.exp(population['intrinsic']):.2f}", fontsize=9)
        ax.legend(fontsize=8)
    return fig


def flag_map(dq: np.ndarray, block: int | None = None):
    """Flagged pixels per block, one panel per DQ class present (counts, so a lone pixel shows on a large sensor)."""
    return count_maps({flag.name: has(dq, flag.value) for flag in FLAGS if has(dq, flag.value).any()}, block,
                      empty="no flagged pixels")


def count_maps(masks: dict, block: int | None = None, empty: str = "no pixels"):
    """Marked pixels per block, one panel per ``name -> boolean map`` (empty blocks blank; titles give totals)."""
    shape = next(iter(masks.values())).shape if masks else (1, 1)
    block = block or max(1, int(np.ceil(max(shape) / 128)))
    ny, nx = (s // block * block for s in shape)
    fig, axes = _panels(1, max(len(masks), 1), 2.45, 2.75, margins=(0.1, 0.1, 0.35, 0.8), gaps=(0.8, 0.0))
    for ax, (name, mask) in zip(axes.flat, masks.items()):
        counts = mask[:ny, :nx].reshape(ny // block, block, nx // block, block).sum(axis=(1, 3))
        im = ax.imshow(np.where(counts > 0, counts, np.nan), cmap="magma_r", interpolation="nearest", vmin=0)
        ax.set_facecolor("#eef2f7")
        fig.colorbar(im, ax=ax, fraction=0.06, pad=0.03, label=f"pixels per {block}x{block} block")
        ax.set_title(f"{name}: {int(np.count_nonzero(mask))}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    if not masks:
        axes.flat[0].set_title(empty)
    return fig


def change_histograms(comparison):
    """Each quantity's per-pixel departure from the common shift, in sigma, against a unit normal."""
    rows = list(comparison.changes)
    fig, axes = _panels(1, len(rows), 2.55, 2.0, margins=(0.65, 0.55, 0.45, 0.15), gaps=(0.75, 0.0))
    edges = np.linspace(-10, 10, 101)
    centres = 0.5 * (edges[1:] + edges[:-1])
    for ax, row in zip(axes.flat, rows):
        z = comparison.maps[row["quantity"]][1]
        z = z[np.isfinite(z)]
        _bars(ax, np.clip(z, -10, 10), edges)
        ax.plot(centres, z.size * np.diff(edges) * np.exp(-0.5 * centres**2) / np.sqrt(2 * np.pi), "C3", lw=1)
        for sign in (-1, 1):
            ax.axvline(sign * comparison.sigma, color="C1", lw=0.8, ls="--")
        ax.set_ylim(0.5, None)
        ax.set_xlabel("(change - shift) / sigma")
        unit = f" {row['unit']}" if row["unit"] else ""
        ax.set_title(f"{row['quantity']}\nshift {row['median_change']:+.3g}{unit} ({row['shift_sigma']:+.1f} sigma)",
                     fontsize=9)
    return fig


_KINDS = (("real masters", "DN", None, "viridis"), ("synthetic frames", "DN", None, "viridis"),
          ("MAE", "DN", None, "magma"), ("MAPE", "%", (0, 20), "magma"),
          ("residual / noise", "sigma", (-3, 3), "RdBu_r"))


def group_mosaics(summary: Table, previews: dict) -> list:
    """One mosaic per kind of evaluation map (:data:`_KINDS`): set points as columns, bias and exposures as rows."""
    set_point = chain_groups(summary["temperature"], 1.5)
    labels = {g: f"{np.mean(summary['temperature'][set_point == g]):.1f} C" for g in np.unique(set_point)}
    columns = [labels[g] for g in sorted(labels)]
    exposures = np.unique(summary["exptime"][summary["kind"] == "dark"])
    rows = ["bias"] + [f"{t:g} s" for t in exposures]
    keys = [("bias" if r["kind"] == "bias" else f"{r['exptime']:g} s", labels[g]) for r, g in zip(summary, set_point)]
    return [mosaic({key: previews[r["group"]][k] for key, r in zip(keys, summary)}, columns, rows, title, unit,
                   common, cmap) for k, (title, unit, common, cmap) in enumerate(_KINDS)]


def mosaic(tiles: dict, columns: list, rows: list, title: str, unit: str, common=None, cmap: str = "viridis"):
    """One image of many small maps: ``tiles[(row, column)]`` placed on a grid.

    Each tile is stretched to its own 1-99 % range unless ``common`` (vmin, vmax) is given;
    blank where a tile is missing.
    """
    shapes = [t.shape for t in tiles.values()]
    th, tw = max(s[0] for s in shapes), max(s[1] for s in shapes)
    canvas = np.full((len(rows) * (th + 2), len(columns) * (tw + 2)), np.nan)
    for (r, c), tile in tiles.items():
        i, j = rows.index(r), columns.index(c)
        shown = np.asarray(tile, dtype=float)
        if common is None:
            lo, hi = _limits(shown)
            shown = (shown - lo) / (hi - lo) if hi > lo else shown * 0
        canvas[i * (th + 2): i * (th + 2) + tile.shape[0], j * (tw + 2): j * (tw + 2) + tile.shape[1]] = shown
    width = min(1.4 * len(columns), 13.4)
    fig, axes = _panels(1, 1, width, width * canvas.shape[0] / canvas.shape[1], margins=(0.6, 0.35, 0.3, 1.0))
    ax = axes[0, 0]
    lo, hi = common if common is not None else (0, 1)
    im = ax.imshow(canvas, cmap=cmap, vmin=lo, vmax=hi, interpolation="nearest", origin="upper")
    ax.set_xticks([j * (tw + 2) + tw / 2 for j in range(len(columns))], [str(c) for c in columns], fontsize=8)
    ax.set_yticks([i * (th + 2) + th / 2 for i in range(len(rows))], [str(r) for r in rows], fontsize=8)
    ax.set_title(title, fontsize=10)
    label = unit if common is not None else "each tile: its 1-99 % range"
    fig.colorbar(im, ax=ax, fraction=0.04, pad=0.02, shrink=0.9, label=label)
    return fig


def evaluation_summary(summary: Table):
    """Mean +/- std of MAE and MAPE vs temperature, one line per exposure; residual / noise per group."""
    fig, axes = _panels(1, 3, 4.0, 2.95, **_LABELLED)
    axes = axes[0]
    kinds = [("bias", 0.0)] + [("dark", t) for t in np.unique(summary["exptime"][summary["kind"] == "dark"])]
    for k, (kind, t) in enumerate(kinds):
        sel = (summary["kind"] == kind) & np.isclose(summary["exptime"], t)
        order = np.argsort(summary["temperature"][sel])
        label = "bias" if kind == "bias" else f"dark {t:g} s"
        T = np.asarray(summary["temperature"][sel])[order]
        for ax, col in zip(axes, ("mae", "mape")):
            mean, std = (np.asarray(summary[f"{col}_{x}"][sel])[order] for x in ("mean", "std"))
            ax.errorbar(T, mean, std, fmt="o-", color=f"C{k % 10}", capsize=3, ms=4, label=label)
        axes[2].plot(T, np.asarray(summary["resid_noise"][sel])[order], "o-", color=f"C{k % 10}", ms=4, label=label)
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
    fig, axes = _panels(1, 1, 7.05, 2.75, **_LABELLED)
    ax = axes[0, 0]
    kinds = [("bias", 0.0)] + [("dark", t) for t in np.unique(loo["exptime"][loo["kind"] == "dark"])]
    for k, (kind, t) in enumerate(kinds):
        sel = (loo["kind"] == kind) & np.isclose(loo["exptime"], t)
        order = np.argsort(loo["temperature"][sel])
        T = np.asarray(loo["temperature"][sel])[order]
        ax.plot(T, np.asarray(loo["loo_noise"][sel])[order], "o-", color=f"C{k % 10}", ms=4,
                label="bias" if kind == "bias" else f"dark {t:g} s")
        ax.plot(T, np.asarray(loo["loo_noise_hot"][sel])[order], "x", color=f"C{k % 10}", ms=6)
    ax.axhline(1, color="k", lw=0.8, ls="--")
    ax.set_xlabel("held-out temperature [degC]")
    ax.set_ylabel("held-out residual / noise")
    ax.set_title("leave-one-group-out (o normal pixels, x hot pixels; missing: n/a)", fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    return fig


def calibrated_frames(table: Table, z: np.ndarray):
    """Calibrated science frames: scatter / median uncertainty per frame against temperature (colour:
    exposure; 1 = calibrated to the noise), and the pooled value / uncertainty against a unit normal."""
    fig, axes = _panels(1, 2, 4.8, 2.75, margins=_LABELLED["margins"], gaps=(1.5, 0.0))  # room for a colour bar
    axes = axes[0]
    done = table[table["status"] == "calibrated"]
    points = axes[0].scatter(done["temperature"], done["std"] / done["noise"], c=np.log10(done["exptime"]),
                             cmap="viridis", s=18)
    fig.colorbar(points, ax=axes[0], label="log10 exposure [s]")
    axes[0].axhline(1, color="k", lw=0.8, ls="--")
    axes[0].set_xlabel("frame temperature [degC]")
    axes[0].set_ylabel("std / median uncertainty")
    axes[0].set_title("per frame (unmasked pixels; sources raise it above 1)", fontsize=10)
    z = z[np.isfinite(z)]
    if z.size:
        edges = np.linspace(-6, 6, 121)
        _bars(axes[1], np.clip(z, -6, 6), edges, label=f"mean {np.mean(z):+.3f}, std {np.std(z):.3f}")
        centres = 0.5 * (edges[1:] + edges[:-1])
        axes[1].plot(centres, z.size * np.diff(edges) * np.exp(-0.5 * centres**2) / np.sqrt(2 * np.pi), "C3",
                     label="unit normal")
        axes[1].set_ylim(0.5, None)
        axes[1].legend(fontsize=8)
    axes[1].set_xlabel("calibrated value / uncertainty (clipped to -6..6)")
    axes[1].set_ylabel("pixels")
    axes[1].set_title(f"all frames pooled ({z.size} unmasked pixels)", fontsize=10)
    return fig


def dark_budget(budget: Table):
    """Median and tail dark rate vs temperature; the exposure beyond which a typical pixel is dark-limited."""
    fig, axes = _panels(1, 2, 4.6, 2.95, **_LABELLED)
    T = np.asarray(budget["temperature"])
    rate, limit = axes[0]
    rate.semilogy(T, budget["median_rate"], "o-", ms=4, label="median pixel")
    rate.semilogy(T, budget["tail_rate"], "s--", ms=4, label=f"{budget.meta['tail_percentile']:g}th percentile")
    rate.set_ylabel("dark rate [DN/s]")
    rate.set_title(f"dark rate at {budget.meta['exptime']:.3g} s", fontsize=10)
    rate.legend(fontsize=7)
    limit.semilogy(T, budget["read_limited_exptime"], "o-", ms=4)
    limit.set_ylabel("exposure [s]")
    limit.set_title("dark shot noise = read noise (median pixel)" if np.isfinite(budget.meta["gain"])
                    else "unknown gain: no dark-limited exposure", fontsize=10)
    for ax in (rate, limit):
        ax.set_xlabel("temperature [degC]")
    return fig


def history(table: Table, drift: Table):
    """Each followed quantity against time with its error, the drift per year and any jump in the title; warm and
    hot pixels per campaign (all, new since the previous, gone)."""
    rows = {row["quantity"]: row for row in drift}
    names = [name for name in rows if np.isfinite(np.asarray(table[name], dtype=float)).all()]
    ncols = 3
    fig, axes = _panels(-(-(len(names) + 1) // ncols), ncols, 3.6, 2.6, **_LABELLED)
    years = np.asarray(table["years"], dtype=float)
    for ax, name in zip(axes.flat, names):
        unit = str(table[name].unit or "")
        ax.errorbar(years, table[name], table[f"{name}_error"], fmt="o-", ms=4, capsize=3)
        row = rows[name]
        text = f"{name}: {format_value(row['drift_per_year'], 3)} +- {format_value(row['error'], 2)} {unit}/year"
        ax.set_title(text + (f"\njump: {row['jumps']}" if row["jumps"] else ""), fontsize=8)
        ax.set_ylabel(unit)
    counts = axes.flat[len(names)]
    for offset, (key, color) in enumerate((("flagged", "C0"), ("new", "C3"), ("gone", "C2"))):
        counts.bar(np.arange(len(table)) + 0.27 * (offset - 1), table[key], 0.27, color=color, label=key)
    counts.set_xticks(np.arange(len(table)), [f"{y:.2g} y" for y in years], fontsize=7)
    counts.set_title("warm and hot pixels", fontsize=8)
    counts.legend(fontsize=7)
    for ax in list(axes.flat)[:len(names)]:
        ax.set_xlabel("years since the first campaign")
    for ax in list(axes.flat)[len(names) + 1:]:
        ax.set_visible(False)
    return fig
