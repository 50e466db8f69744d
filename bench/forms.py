"""Real CMOS dark signal: each form on campaigns of each law, and on published dark-current curves.

1. For each form of ``cmoscal.forms.FORMS``, a simulated campaign of that law (256x256, 8 temperatures
   -10..25 degC, 5 exposures, 1.6 % hot pixels: >= 1000) calibrated three ways: default parameters
   (``dark_form: auto``), the true form forced (an estimator that knows the law) and the seeds'
   exponential forced. Held-out error: the model's dark signal against the truth at four (T, t) points
   between the calibrated ones, for normal and hot pixels: RMS [DN], its ratio to the true form's, the
   median signed relative error and the RMS pull; the form chosen; the misfit checks; the share of
   pixels with samples dropped; the share of pixels >= 10x the median rate at the cold end flagged warm or
   hot, and the normal pixels flagged.
2. The low-signal campaign of issue 19 (0 and 10 degC, 1-30 s, 3 frames): the share of normal pixels
   flagged warm or hot.
3. Each law with and without a floor fitted to the published dark current of a GSENSE400 sCMOS (Andor
   Marana) and a QHY CMOS (github:AperpieGG/Paper_I ``Results/DC_vs_T_*.json``, fetched into
   ``/work/.mirror``; not redistributed): RMS and largest relative residual.

Writes ``bench/forms.md``. Run: ``python bench/forms.py`` (about 5 minutes on 2 cores).
"""

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from scipy.optimize import curve_fit

from cmoscal.config import load_params
from cmoscal.dq import DQ, has
from cmoscal.forms import FORMS
from cmoscal.simulate import dark_truth, simulate_campaign
from cmoscal.stages import STAGES

HERE = Path(__file__).resolve().parent
POINTS = ((-7.5, 2.0), (2.5, 20.0), (12.5, 45.0), (22.5, 3.0))
PAPER = Path("/work/.mirror/AperpieGG+Paper_I/repo")
CURVES = {"GSENSE400 (Marana), -20..+15 degC": ("Results/DC_vs_T_FFR_Marana.json", -20.0),
          "QHY CMOS, -20..+17 degC": ("Results/DC_vs_T_QHY.json", -np.inf)}


def calibrate(root: Path, name: str, stages=tuple(STAGES)[:8], **overrides) -> dict:
    path = root / f"{name}.yml"
    path.write_text(yaml.safe_dump(dict(campaign=name, raw_dir="raw", output_dir=name, progress=False, **overrides)))
    params = load_params(path, root=root)
    return {stage: STAGES[stage](params) for stage in stages}


def accuracy(model, truth, pixels) -> tuple[float, float, float]:
    """RMS error [DN], median signed relative error and RMS pull at the held-out points."""
    errors, relative, pulls = [], [], []
    for T, t in POINTS:
        signal, variance = model.prediction(T, t)
        true = dark_truth(truth, T, t)
        errors.append((signal - true)[pixels])
        relative.append(((signal - true) / true)[pixels])
        pulls.append(((signal - true) / np.sqrt(variance))[pixels])
    errors, relative, pulls = (np.concatenate(v) for v in (errors, relative, pulls))
    return float(np.sqrt(np.mean(errors ** 2))), float(np.median(relative)), float(np.sqrt(np.mean(pulls ** 2)))


def law_rows(law: str, workdir: Path) -> list[str]:
    root = workdir / law.replace("+", "_")
    truth = simulate_campaign(root, shape=(256, 256), law=law, hot_share=0.016, seed=31)
    rows, oracle = [], {}
    for label, form in (("true form", law), ("auto (default)", "auto"), ("exponential forced", "exponential")):
        start = time.perf_counter()
        results = calibrate(root, label.split()[0].replace("(", ""), dark_form=form)
        seconds = time.perf_counter() - start
        model = results["hot_pixels"]["model"]
        checks = {c["check"]: c for c in results["summary"]}
        misfit = ", ".join(f"{name.split(' / ')[0].removeprefix('dark ')} {checks[name]['value']:.3g} "
                           f"{checks[name]['status']}" for name in ("dark chi-square / expectation",
                                                                    "dark residual trend"))
        usable = ~has(model.dq, DQ.DO_NOT_USE)
        cells = []
        for kind, pixels in (("normal", ~truth["hot"] & usable), ("hot", truth["hot"] & usable)):
            rms, bias, pull = accuracy(model, truth, pixels)
            oracle.setdefault(kind, rms)
            cells.append(f"{rms:.4g} ({rms / oracle[kind]:.2f}x), {100 * bias:+.2f} %, {pull:.2f}")
        dropped = float(np.mean(has(model.dq, DQ.OUTLIER)))
        cold = dark_truth(truth, model.trange[0], 10.0)
        bright = cold >= 10 * np.median(cold[~truth["hot"]])  # >= 10x the median rate where it is coldest
        flagged = has(model.dq, DQ.HOT | DQ.WARM)
        found = f"{100 * flagged[bright].mean():.1f} % of {int(bright.sum())}; {int(flagged[~truth['hot']].sum())}"
        rows.append(f"| {law} | {label} | {model.form} | {' | '.join(cells)} | {misfit} | {100 * dropped:.2f} % "
                    f"| {found} | {seconds:.0f} s |")
        print(rows[-1], flush=True)
    print(f"  {law}: {int(truth['hot'].sum())} hot pixels", flush=True)
    return rows


def low_signal(workdir: Path) -> str:
    root = workdir / "low_signal"
    truth = simulate_campaign(root, shape=(256, 256), temperatures=(0, 10), exptimes=(1, 10, 30), frames=3,
                              bias_frames=3, seed=0)
    model = calibrate(root, "low", stages=tuple(STAGES)[:5])["hot_pixels"]["model"]
    flagged = has(model.dq, DQ.HOT | DQ.WARM)
    normal = ~truth["hot"]
    return (f"{int(flagged[normal].sum())} of {int(normal.sum())} normal pixels flagged warm or hot "
            f"({100 * flagged[normal].mean():.3f} %); {int(flagged[truth['hot']].sum())} of "
            f"{int(truth['hot'].sum())} hot pixels flagged")


def curve(path: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(temperature [degC], rate) of a published curve from the fetched repository, None if it is not here."""
    try:
        text = subprocess.run(["git", "-C", str(PAPER), "show", f"HEAD:{path}"], capture_output=True, text=True,
                              check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    data = json.loads(text)
    T, rate = np.asarray(data["temperature"], float), np.asarray(data["slopes"], float)
    order = np.argsort(T)
    return T[order], rate[order]


def fit_curve(form, T, rate) -> np.ndarray:
    """Relative residuals of ``form`` fitted to (T, rate) with equal relative weights."""
    tmin = float(T.min())

    def model(T, lnA, slope, floor=0.0):
        return floor + np.exp(lnA + slope * form.feature(T, tmin))

    start = [np.log(rate[0]), 0.1 if form.law == "exponential" else 0.6] + ([0.5 * rate[0]] if form.floor else [])
    bounds = ([-np.inf, -np.inf] + ([0.0] if form.floor else []), [np.inf] * len(start))
    theta, _ = curve_fit(model, T, rate, p0=start, sigma=rate, bounds=bounds, maxfev=20000)
    return model(T, *theta) / rate - 1


def curve_rows() -> list[str]:
    rows = []
    for name, (path, lowest) in CURVES.items():
        data = curve(path)
        if data is None:
            rows.append(f"| {name} | not here: fetch github:AperpieGG/Paper_I | | | |")
            continue
        T, rate = data
        keep = T >= lowest
        cells = []
        for form in FORMS.values():
            r = fit_curve(form, T[keep], rate[keep])
            cells.append(f"{100 * np.sqrt(np.mean(r ** 2)):.1f} % / {100 * np.max(np.abs(r)):.1f} %")
        rows.append(f"| {name} | {' | '.join(cells)} |")
    return rows


def main() -> None:
    lines = ["# Real CMOS dark signal: forms, checks and flags", "",
             f"`python bench/forms.py`, {time.strftime('%Y-%m-%d')}, cmoscal "
             f"{__import__('cmoscal').__version__}, {sys.platform}.", "",
             "## Campaigns of each law (256x256, -10..25 degC, 1-60 s, 5 frames, 1.6 % hot pixels)", "",
             "Held-out dark error at (T, t) = " + ", ".join(f"({T:g} degC, {t:g} s)" for T, t in POINTS) +
             ": RMS [DN] (its ratio to the true form forced), median signed relative error, RMS pull.", "",
             "| law | dark_form | fitted | normal pixels | hot pixels | misfit checks | samples dropped | "
             "warm/hot recall (>= 10x median); false | run |",
             "|---|---|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for law in FORMS:
            lines += law_rows(law, Path(tmp))
        lines += ["", "## Low signal (0 and 10 degC, 1-30 s, 3 frames, 256x256)", "", low_signal(Path(tmp))]
    lines += ["", "## Published dark-current curves", "",
              "Each form fitted to the rate with equal relative weights: RMS / largest relative residual.", "",
              "| curve | " + " | ".join(FORMS) + " |", "|---" * (len(FORMS) + 1) + "|"] + curve_rows()
    (HERE / "forms.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
