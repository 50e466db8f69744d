"""Performance on the reference campaign R2k (2048x2048, 8 T x (10 biases + 5 t x 5 darks) = 280 frames).

Measures, in one run: the I/O floor (every raw frame read once), time and peak memory of each
stage (each in its own process) and of the whole report, the throughput of the batched dark
fit, the same fit done by a per-pixel loop of log-space least squares and by per-pixel
scipy curve_fit on a sample of pixels (extrapolated), and peak memory when the number of
frames doubles (on a 1024x1024 campaign). Results go to bench/results.md.

Usage: python bench/performance.py [--shape 2048x2048] [--skip-report]
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from astropy.io import fits

from cmoscal.compute import sample_rows
from cmoscal.config import load_params
from cmoscal.darkfit import design, fit_dark, fit_loglinear
from cmoscal.fitsio import read_image
from cmoscal.inventory import find_fits
from cmoscal.pipeline import STAGES, _fit_inputs
from cmoscal.simulate import simulate_campaign

HERE = Path(__file__).resolve().parent
CACHE = HERE / "cache"


def run(command: list[str], cwd: Path) -> tuple[float, float]:
    """Run a command; return (seconds, peak resident memory of it and its children in GB)."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - start
    if status:
        sys.exit(f"failed: {' '.join(command)}\n{process.stderr.read().decode()[-2000:]}")
    return seconds, usage.ru_maxrss / 1e6  # ru_maxrss is in kB on Linux


def campaign(name: str, shape, frames: int, bias_frames: int) -> Path:
    root = CACHE / name
    if not (root / "truth.fits").exists():
        print(f"simulating {name} (once) ...", flush=True)
        simulate_campaign(root, shape=shape, frames=frames, bias_frames=bias_frames, seed=1)
    (root / "params.yml").write_text(yaml.safe_dump(dict(campaign=name, raw_dir="raw", output_dir="products",
                                                         report_dir="reports")))
    return root


def drop_page_cache() -> bool:
    """Empty the page cache (root only) so reads come from disk; False if not permitted."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
        return True
    except OSError:
        return False


def io_floor(root: Path) -> tuple[float, float]:
    files = find_fits(root / "raw")
    start = time.perf_counter()
    for path in files:
        read_image(path, 16)
    return time.perf_counter() - start, sum(p.stat().st_size for p in files) / 1e9


def stages(root: Path) -> dict:
    cmoscal = str(Path(sys.executable).parent / "cmoscal")
    return {name: run([cmoscal, "run", "params.yml", "--stages", name], root) for name in STAGES}


def fit_speeds(root: Path, rows: int = 128, loop_pixels: int = 2000, curve_fit_pixels: int = 200) -> dict:
    """Batched fit vs per-pixel loops, on the same band of real master darks."""
    from scipy.optimize import curve_fit

    params = load_params(root / "params.yml", root=root)
    ny = fits.getheader(next((root / "products" / "dark_masters").glob("*.fits")))["NAXIS2"]
    inv_gain = _fit_inputs(params, sample_rows(ny))["inv_gain"]
    inputs = _fit_inputs(params, slice(0, rows), inv_gain)
    T, t = inputs["darks"].temperature, inputs["darks"].exptime
    y, valid, base, shot = inputs["signal"], inputs["valid"], inputs["base_var"], inputs["shot"]
    npix = y.shape[1]
    start = time.perf_counter()
    fit_dark(y, valid, base, shot, T, t, inputs["tmin"], bias_cov=inputs["bias_cov"])
    batched = (time.perf_counter() - start) / npix

    Z = design(T, t, inputs["tmin"], "exponential")
    start = time.perf_counter()
    fit_loglinear(y, valid.astype(float), Z, np.zeros(len(Z)))
    batched_log = (time.perf_counter() - start) / npix

    start = time.perf_counter()
    for p in range(loop_pixels):
        ok = valid[:, p] & (y[:, p] > 0)
        np.linalg.lstsq(Z[ok], np.log(y[ok, p]), rcond=None)
    loop = (time.perf_counter() - start) / loop_pixels

    def model(X, lnA, B, gamma):
        return np.exp(lnA + B * X[0] + gamma * X[1])

    start = time.perf_counter()
    for p in range(curve_fit_pixels):
        ok = valid[:, p]
        sigma = np.sqrt(base[ok, p] + shot[ok, p] * np.clip(y[ok, p], 0, None))
        try:
            curve_fit(model, Z[ok, 1:].T, y[ok, p], p0=(0.0, 0.1, 1.0), sigma=sigma, maxfev=2000)
        except RuntimeError:
            pass
    curve = (time.perf_counter() - start) / curve_fit_pixels
    return dict(batched=batched, batched_log=batched_log, loop=loop, curve_fit=curve, npix=npix)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="2048x2048")
    parser.add_argument("--skip-report", action="store_true", help="do not time the whole report")
    args = parser.parse_args()
    shape = tuple(int(v) for v in args.shape.split("x"))
    lines = [f"# cmoscal benchmark ({args.shape}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')})", ""]

    def say(text=""):
        print(text, flush=True)
        lines.append(text)

    root = campaign(f"r{shape[0]}", shape, frames=5, bias_frames=10)
    floors = {}
    if drop_page_cache():
        floors["from disk"], size = io_floor(root)
        say(f"I/O floor, from disk: read {size:.2f} GB of raw frames once in {floors['from disk']:.1f} s "
            f"({size / floors['from disk']:.2f} GB/s)")
    floors["page cache warm"], size = io_floor(root)
    say(f"I/O floor, page cache warm: {floors['page cache warm']:.1f} s ({size / floors['page cache warm']:.2f} "
        "GB/s); the runs below start warm")
    say("")
    say("| stage | time [s] | peak memory [GB] |")
    say("|---|---|---|")
    total = 0.0
    for name, (sec, mem) in stages(root).items():
        total += sec
        say(f"| {name} | {sec:.1f} | {mem:.2f} |")
    say(f"| all stages (cmoscal run) | {total:.1f} | |")
    if not args.skip_report:
        sec, mem = run([str(Path(sys.executable).parent / "cmoscal"), "report", "params.yml"], root)
        say(f"| whole report (cmoscal report, 8 notebooks) | {sec:.1f} | {mem:.2f} |")
        say("")
        for name, floor in floors.items():
            say(f"whole report / I/O floor ({name}) = {sec / floor:.1f} (target <= 3)")
    speed = fit_speeds(root)
    say("")
    say(f"batched 2d dark fit: {1 / speed['batched']:,.0f} pixels/s on one thread "
        f"({speed['batched'] * 1e6:.2f} us/pixel, {speed['npix']} pixels)")
    for name, key, target in (("per-pixel loop of log-space lstsq", "loop", 50),
                              ("per-pixel scipy curve_fit", "curve_fit", 500)):
        ratio = speed[key] / speed["batched"]
        full = speed[key] * shape[0] * shape[1]
        say(f"{name}: {speed[key] * 1e6:.1f} us/pixel ({full / 60:.1f} min for the frame): batched is "
            f"{ratio:.0f}x faster (target >= {target}x)")
    say(f"like for like, the same log-space estimator batched: {1 / speed['batched_log']:,.0f} pixels/s, "
        f"{speed['loop'] / speed['batched_log']:.0f}x faster than its per-pixel loop")
    say("")
    say("peak memory when the frames double (1024x1024, masters + dark model stages):")
    for frames, bias_frames in ((5, 10), (10, 20)):
        small = campaign(f"r1024_{frames}", (1024, 1024), frames, bias_frames)
        run([str(Path(sys.executable).parent / "cmoscal"), "run", "params.yml", "--stages", "inventory"], small)
        peaks = [run([str(Path(sys.executable).parent / "cmoscal"), "run", "params.yml", "--stages", s], small)[1]
                 for s in ("bias", "dark_masters", "dark_model")]
        n = 8 * (bias_frames + 5 * frames)
        say(f"- {n} frames: peak {max(peaks):.2f} GB (bias {peaks[0]:.2f}, dark_masters {peaks[1]:.2f}, "
            f"dark_model {peaks[2]:.2f})")
    (HERE / "results.md").write_text("\n".join(lines) + "\n")
    print(f"written to {HERE / 'results.md'}")


if __name__ == "__main__":
    main()
