"""Performance on the reference campaign R2k (2048x2048, 8 T x (10 biases + 5 t x 5 darks) = 280 frames).

Measures, in one run: the read floor (every raw frame read once; from disk where the page cache
can be dropped) and the write floor (as many bytes written and synced), the time and peak memory
of each stage (each in its own process, after a sync so earlier writes do not throttle it), the
whole ``cmoscal run`` and ``cmoscal report`` (twice each, alternating; the faster counts) with
their ratio to the floors, the bytes read per raw byte, the throughput of the compiled dark fit
against a per-pixel loop of log-space lstsq and per-pixel scipy curve_fit (on a sample of pixels,
extrapolated; each the fastest of three timings), and peak memory when the
number of frames doubles (1024x1024). Results go to bench/results.md.

Usage: python bench/performance.py [--shape 2048x2048] [--skip-report] [--skip-memory]
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import yaml

from cmoscal.config import load_params
from cmoscal.darkfit import design, fit_dark, fit_loglinear
from cmoscal.fitsio import frames_in, read_stack
from cmoscal.inventory import find_fits
from cmoscal.masters import master_index
from cmoscal.products import ledger
from cmoscal.stages import STAGES
from cmoscal.stages.dark_model import fit_inputs, fit_options, gain
from cmoscal.stages.inventory import load as load_inventory

HERE = Path(__file__).resolve().parent
CACHE = HERE / "cache"
CMOSCAL = [sys.executable, "-m", "cmoscal.cli"]  # this Python, installed or not (PYTHONPATH=src)
SCALING = "## Scaling with the cores"  # the section of results.md that bench/scaling.py writes


def warm(root: Path) -> None:
    """Read a campaign's raw frames and products into the page cache. This virtual machine pages out
    page cache left idle for ~30 s (DAMON), so a run started later would partly time the disk."""
    buffer = bytearray(8 << 20)
    for path in sorted(p for folder in ("raw", "products") for p in (root / folder).rglob("*") if p.is_file()):
        with open(path, "rb", buffering=0) as f:
            while f.readinto(buffer):
                pass


def run(command: list[str], cwd: Path, cold: bool = False) -> tuple[float, float]:
    """Warm (or, ``cold``, empty) the page cache, sync, then run a command; return (seconds, its peak resident
    memory in GB).

    The memory is measured by GNU time: a child forked from this process would count this
    process's pages in its own maximum until it execs.
    """
    if not (cold and drop_page_cache()):
        warm(cwd)
    os.sync()
    start = time.perf_counter()
    result = subprocess.run(["/usr/bin/time", "-f", "%M", *command], cwd=cwd, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    seconds = time.perf_counter() - start
    if result.returncode:
        sys.exit(f"failed: {' '.join(command)}\n{result.stderr[-2000:]}")
    return seconds, int(result.stderr.strip().splitlines()[-1]) / 1e6  # kB


def campaign(name: str, shape, frames: int, bias_frames: int) -> Path:
    root = CACHE / name
    if not (root / "truth.fits").exists():  # in a process of its own, so this one stays small
        print(f"simulating {name} (once) ...", flush=True)
        subprocess.run([*CMOSCAL, "simulate", str(root), "--shape", f"{shape[0]}x{shape[1]}", "--frames", str(frames),
                        "--bias-frames", str(bias_frames), "--seed", "1"], check=True, stdout=subprocess.DEVNULL)
    (root / "params.yml").write_text(yaml.safe_dump(dict(campaign=name, raw_dir="raw", output_dir="products",
                                                         report_dir="reports", progress=False)))
    return root


def drop_page_cache() -> bool:
    """Empty the page cache (root only) so reads come from disk; False if not permitted."""
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("1\n")
        return True
    except OSError:
        return False


def read_floor(root: Path) -> tuple[float, float]:
    """Seconds to read and decode every raw frame once, and the raw size in GB."""
    refs = [ref for path, _ in find_fits(root / "raw") for ref in frames_in(path)[1]]
    start = time.perf_counter()
    for ref in refs:
        read_stack([ref], slice(None), 16, 4095)
    return time.perf_counter() - start, sum(r.nbytes for r in refs) / 1e9


def write_floor(nbytes: float, folder: Path) -> float:
    """Seconds to write ``nbytes`` in 64 MB blocks and sync them."""
    block = np.random.default_rng(0).integers(0, 255, 64 << 20, dtype=np.uint8)
    with tempfile.NamedTemporaryFile(dir=folder) as f:
        start = time.perf_counter()
        for _ in range(int(np.ceil(nbytes / block.nbytes))):
            f.write(block.data)
        f.flush()
        os.fsync(f.fileno())
        return time.perf_counter() - start


def written_bytes(root: Path, folder: str = "products") -> float:
    """GB of products in ``root / folder``."""
    return sum(p.stat().st_size for p in (root / folder).rglob("*") if p.is_file()) / 1e9


def fastest(measure, repeats: int = 3) -> float:
    """The shortest of ``repeats`` timings of ``measure()`` (timeit's rule: the slower ones measure
    whatever else this virtual machine was doing)."""
    return min(measure() for _ in range(repeats))


def timed(work) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def fit_speeds(root: Path, rows: int = 128, loop_pixels: int = 2000, curve_fit_pixels: int = 200) -> dict:
    """Compiled fit (one thread) vs per-pixel loops, on the same band of real master darks (each the
    fastest of three timings)."""
    from scipy.optimize import curve_fit

    params = load_params(root / "params.yml", root=root)
    index = master_index(root / "products" / "dark_masters")
    inputs = fit_inputs(params, index, slice(0, rows), gain(params, index, load_inventory(params))[0])
    darks, noise = inputs["darks"], inputs["noise"]
    T, t, y, usable = darks.temperature, darks.exptime, inputs["signal"], inputs["usable"]
    tmin = float(T.min())
    options = fit_options(params, 4095.0, len(T), "exponential")
    npix = y.shape[1]
    fit_dark(y[:, :64], noise.columns(np.arange(64)), T, t, tmin, usable=usable[:, :64], **options)  # compiled
    compiled = fastest(lambda: timed(lambda: fit_dark(y, noise, T, t, tmin, usable=usable, **options))) / npix
    tiles = [(np.ascontiguousarray(y[:, p]), noise.columns(p), np.ascontiguousarray(usable[:, p]))
             for p in np.array_split(np.arange(npix), 2)]  # each with its own inputs, as the stage reads them
    with ThreadPoolExecutor(2) as pool:  # as the stage runs it: tiles on both cores
        threaded = fastest(lambda: timed(lambda: list(pool.map(
            lambda tile: fit_dark(tile[0], tile[1], T, t, tmin, usable=tile[2], **options), tiles)))) / npix

    Z = design(T, t, tmin, "exponential")
    batched_log = fastest(lambda: timed(lambda: fit_loglinear(y, usable.astype(float), Z, np.zeros(len(Z))))) / npix

    def lstsq_loop():
        for p in range(loop_pixels):
            ok = usable[:, p] & (y[:, p] > 0)
            np.linalg.lstsq(Z[ok], np.log(y[ok, p]), rcond=None)

    loop = fastest(lambda: timed(lstsq_loop)) / loop_pixels

    def model(X, lnA, B, gamma):
        return np.exp(lnA + B * X[0] + gamma * X[1])

    def curve_fit_loop():
        for p in range(curve_fit_pixels):
            ok = usable[:, p]
            sigma = np.sqrt((noise.read_var[p] + np.clip(y[ok, p], 0, None) * noise.inv_gain) / noise.nframes[ok, p])
            try:
                curve_fit(model, Z[ok, 1:].T, y[ok, p], p0=(0.0, 0.1, 1.0), sigma=sigma, maxfev=2000)
            except RuntimeError:
                pass

    curve = fastest(lambda: timed(curve_fit_loop)) / curve_fit_pixels
    return dict(compiled=compiled, threaded=threaded, batched_log=batched_log, loop=loop, curve_fit=curve, npix=npix)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="2048x2048")
    parser.add_argument("--skip-report", action="store_true", help="do not time the whole report")
    parser.add_argument("--skip-memory", action="store_true", help="do not run the frames-doubling test")
    args = parser.parse_args()
    shape = tuple(int(v) for v in args.shape.split("x"))
    lines = [f"# cmoscal benchmark ({args.shape}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')})", ""]

    def say(text=""):
        print(text, flush=True)
        lines.append(text)

    root = campaign(f"r{shape[0]}", shape, frames=5, bias_frames=10)
    reads = {}
    if drop_page_cache():
        reads["from disk"], size = read_floor(root)
    reads["page cache"], size = read_floor(root)
    for name, seconds in reads.items():
        say(f"read floor ({name}): {size:.2f} GB of raw frames read and decoded once in {seconds:.1f} s "
            f"({size / seconds:.2f} GB/s)")
    subprocess.run([*CMOSCAL, "run", "params.yml"], cwd=root, check=True, capture_output=True)  # products to size
    out_size = written_bytes(root)
    write = write_floor(out_size * 1e9, root)
    say(f"write floor: the {out_size:.2f} GB of products written and synced in {write:.1f} s")
    floor = reads["page cache"] + write
    say(f"read + write floor (page cache warm; each run below starts with the raw frames and products read "
        f"into it): {floor:.1f} s")
    say("")
    say("| stage | time [s] | peak memory [GB] |")
    say("|---|---|---|")
    total = 0.0
    for name in STAGES:
        sec, mem = run([*CMOSCAL, "run", "params.yml", "--stages", name], root)
        total += sec
        say(f"| {name} | {sec:.1f} | {mem:.2f} |")
    facts = {name: entry.get("facts", {}) for name, entry in ledger(root / "products")["stages"].items()}
    commands = {"run": "**cmoscal run** (all stages, one process)"}
    if not args.skip_report:
        commands["report"] = "**cmoscal report** (every notebook, HTML)"
    timings = {name: [] for name in commands}
    for _ in range(2):  # twice, alternating: the faster of each says what the software costs
        for name in commands:
            timings[name].append(run([*CMOSCAL, name, "params.yml"], root))
    results = dict(floor=floor)
    for name, label in commands.items():
        (sec, _), (other, _) = sorted(timings[name])
        results[name] = sec
        say(f"| {label} | **{sec:.1f}** (other run {other:.1f}) | {max(m for _, m in timings[name]):.2f} |")
    say("")
    say(f"cmoscal run = {results['run'] / floor:.1f}x the read + write floor (target <= 30 s)")
    if "report" in results:
        say(f"cmoscal report = {results['report'] / floor:.1f}x the floor; report overhead over run "
            f"{results['report'] - results['run']:.1f} s (targets <= 45 s, <= 10 s)")
        if "from disk" in reads:  # as a user meets it: nothing of the campaign in memory
            cold, _ = run([*CMOSCAL, "report", "params.yml"], root, cold=True)
            cold_floor = reads["from disk"] + write
            say(f"cmoscal report from a cold page cache: **{cold:.1f} s** = {cold / cold_floor:.1f}x the read (from "
                f"disk) + write floor of {cold_floor:.1f} s (target <= 3x)")
    read = sum(facts.get(s, {}).get("bytes_read", 0) for s in ("bias", "dark_masters"))
    raw = sum(facts.get(s, {}).get("raw_bytes", 0) for s in ("bias", "dark_masters"))
    say(f"raw bytes read by the masters: {read / 1e9:.2f} GB for {raw / 1e9:.2f} GB of frames "
        f"({read / raw:.3f} per raw byte); the inventory reads headers and 8 rows of 8 frames")
    speed = fit_speeds(root)
    say("")
    say(f"compiled dark fit (robust fit included, {speed['npix']} pixels of real masters): "
        f"{speed['compiled'] * 1e6:.2f} us/pixel on one thread, {speed['threaded'] * 1e6:.2f} us/pixel on the "
        f"{os.cpu_count()} cores as the stage runs it")
    for name, key, target in (("per-pixel loop of log-space lstsq", "loop", 10),
                              ("per-pixel scipy curve_fit", "curve_fit", 100)):
        full = speed[key] * shape[0] * shape[1]
        say(f"{name}: {speed[key] * 1e6:.1f} us/pixel ({full / 60:.1f} min for the frame): the compiled fit is "
            f"{speed[key] / speed['compiled']:.0f}x faster per thread, {speed[key] / speed['threaded']:.0f}x as "
            f"run (target >= {target}x)")
    say(f"like for like, batched log-space lstsq in NumPy: {1 / speed['batched_log']:,.0f} pixels/s, "
        f"{speed['loop'] / speed['batched_log']:.0f}x its per-pixel loop")
    if not args.skip_memory:
        say("")
        say("peak memory when the frames double (1024x1024, each stage in its own process):")
        for frames, bias_frames in ((5, 10), (10, 20)):
            small = campaign(f"r1024_{frames}", (1024, 1024), frames, bias_frames)
            peaks = {s: run([*CMOSCAL, "run", "params.yml", "--stages", s], small)[1] for s in STAGES}
            n = 8 * (bias_frames + 5 * frames)
            say(f"- {n} frames: peak {max(peaks.values()):.2f} GB ("
                + ", ".join(f"{k} {v:.2f}" for k, v in peaks.items()) + ")")
    results = HERE / "results.md"
    old = results.read_text() if results.exists() else ""
    kept = old[old.find(SCALING):] if SCALING in old else ""  # bench/scaling.py's section stays
    results.write_text("\n".join(lines) + "\n" + (f"\n{kept}" if kept else ""))
    print(f"written to {HERE / 'results.md'}")


if __name__ == "__main__":
    main()
