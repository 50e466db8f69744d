"""Scaling with the cores on the reference campaign R2k: the serial part of a run.

Runs ``cmoscal run`` at 1, 2, 4, ... workers (``compute.workers``) up to the cores present, each
after the page cache is warmed and synced, and measures each stage's time (the ledger), the whole
run and its peak memory, while sampling the process's CPU use every 50 ms; each count ``--repeats``
times, the fastest run counting (timeit's rule: the slower ones measure whatever else the machine
was doing). From these:

- the **Amdahl split** of each stage and of the run: the least-squares fit of T(n) = S + P / n over
  the worker counts (S serial seconds, P parallel seconds; the start-up, between the stages, is
  serial), and the run's projected time on 16 (and the present) cores, S + P / n;
- the **sampled serial time**: at the most workers, the seconds during which the process kept
  less than 1.5 cores busy (one thread working, the others waiting for it);
- how much of a core each added worker really gets: a compute-only kernel (no memory traffic, no
  interpreter) run on n threads at once against one thread; where it is below n (cores that share a
  physical core or a power budget, as a virtual machine's may) the Amdahl fit counts the shortfall as
  serial time, and the sampled serial time is the measure to trust;
- the read + write floor of the same machine (raw frames read and decoded once; the products'
  bytes written and synced), and the projected run against it;
- that every run's products are the same as the 1-worker run's (:func:`cmoscal.products.differences`).

Writes the section "Scaling with the cores" of bench/results.md (and, with ``--output``, a copy).

Usage: python bench/scaling.py [--shape 2048x2048] [--workers 1,2,4] [--repeats 2] [--output FILE]
"""

import argparse
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numba
import numpy as np
import yaml
from performance import CMOSCAL, HERE, SCALING, campaign, read_floor, warm, write_floor, written_bytes

from cmoscal.products import differences, ledger
from cmoscal.stages import STAGES

TICK = os.sysconf("SC_CLK_TCK")
_STAGE_LINE = re.compile(r"\[\d+/\d+\] (\w+) (\.\.\.|done)")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def timed_run(root: Path, params: Path) -> dict:
    """Run ``cmoscal run params`` in ``root``; its wall time, peak memory, stage times and CPU samples."""
    warm(root)
    os.sync()
    samples, marks, done = [], [], threading.Event()
    with tempfile.TemporaryFile("w+") as errors:  # a file, not a pipe: warnings cannot fill it and stall the run
        start = time.perf_counter()
        process = subprocess.Popen([*CMOSCAL, "run", str(params)], cwd=root, stdout=subprocess.PIPE,
                                   stderr=errors, text=True)

        def sample():  # reads /proc only: reaping the process is the main thread's (os.wait4 below)
            while not done.is_set():
                try:
                    samples.append((time.perf_counter() - start, cpu_seconds(process.pid)))
                except (FileNotFoundError, ProcessLookupError, IndexError):
                    break
                time.sleep(0.05)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        for line in process.stdout:  # the stage each moment belongs to
            match = _STAGE_LINE.search(line)
            if match:
                marks.append((time.perf_counter() - start, match[1], match[2]))
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        done.set()
        sampler.join()
        if os.waitstatus_to_exitcode(status):
            errors.seek(0)
            raise SystemExit(f"cmoscal run {params} failed:\n{errors.read()[-2000:]}")
    book = ledger(root / yaml.safe_load(params.read_text())["output_dir"])["stages"]
    return dict(wall=wall, memory=usage.ru_maxrss / 1e6, stages={s: book[s]["seconds"] for s in STAGES if s in book},
                samples=np.array(samples), marks=marks)


def serial_seconds(run: dict, busy: float = 1.5) -> dict:
    """Seconds during which fewer than ``busy`` cores were used, per stage ('start-up and rest' outside them)."""
    t, cpu = run["samples"].T
    rate = np.diff(cpu) / np.diff(t)
    middle = (t[1:] + t[:-1]) / 2
    found = {}
    for (begin, name, what), (end, _, _) in zip(run["marks"], run["marks"][1:] + [(run["wall"], "", "")]):
        if what != "...":
            continue
        inside = (middle >= begin) & (middle < end)
        found[name] = float(np.sum(np.diff(t)[inside & (rate < busy)]))
    total = float(np.sum(np.diff(t)[rate < busy]))
    found["start-up and rest"] = total - sum(found.values())
    return found


def amdahl(counts, seconds) -> tuple[float, float]:
    """Serial and parallel seconds (S, P >= 0) of T(n) = S + P / n fitted to times at worker counts."""
    design = np.column_stack([np.ones(len(counts)), 1 / np.asarray(counts, float)])
    (serial, parallel), *_ = np.linalg.lstsq(design, np.asarray(seconds, float), rcond=None)
    if serial < 0:
        return 0.0, float(np.mean(np.asarray(seconds) * counts))
    if parallel < 0:
        return float(np.mean(seconds)), 0.0
    return float(serial), float(parallel)


@numba.njit(nogil=True)
def _compute_only(steps: int) -> float:
    total = 0.0
    for i in range(steps):
        total += np.exp(-i * 1e-9) * 1.0000001
    return total


def core_speedup(n: int, trials: int = 5, steps: int = 50_000_000) -> float:
    """How many times as fast ``n`` threads run ``n`` copies of a compute-only kernel as one thread runs one copy
    (median of ``trials``): the cores the machine gives ``n`` workers, ideally ``n``."""
    _compute_only(1)

    def once():
        start = time.perf_counter()
        _compute_only(steps)
        return time.perf_counter() - start

    found = []
    for _ in range(trials):
        alone = once()
        start = time.perf_counter()
        with ThreadPoolExecutor(n) as pool:
            list(pool.map(lambda _: once(), range(n)))
        found.append(n * alone / (time.perf_counter() - start))
    return float(np.median(found))


def default_counts() -> list[int]:
    cores = len(os.sched_getaffinity(0))
    return sorted({1, cores, *(2 ** k for k in range(1, cores.bit_length()) if 2 ** k <= cores)})


def update_section(path: Path, lines: list[str]) -> None:
    """Replace (or append) this script's section of the results file."""
    text = path.read_text() if path.exists() else ""
    head, _, rest = text.partition(SCALING)
    tail = rest[rest.find("\n## "):] if "\n## " in rest else ""
    path.write_text(head.rstrip() + ("\n\n" if head.strip() else "") + "\n".join(lines) + "\n" + tail)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="2048x2048")
    parser.add_argument("--workers", help="worker counts, e.g. 1,2,4 (default: 1, powers of two and the cores)")
    parser.add_argument("--repeats", type=int, default=2, help="runs at each count; the fastest counts (default 2)")
    parser.add_argument("--output", type=Path, help="also write the section to this file")
    args = parser.parse_args()
    shape = tuple(int(v) for v in args.shape.split("x"))
    counts = [int(v) for v in args.workers.split(",")] if args.workers else default_counts()
    root = campaign(f"r{shape[0]}", shape, frames=5, bias_frames=10)
    runs = {}
    for n in counts:
        params = root / f"workers_{n}.yml"
        params.write_text(yaml.safe_dump(dict(campaign=f"r{shape[0]}", raw_dir="raw", output_dir=f"products_{n}",
                                              report_dir="reports", progress=False, compute=dict(workers=n))))
        print(f"cmoscal run at {n} workers ...", flush=True)
        for _ in range(args.repeats):
            shutil.rmtree(root / f"products_{n}", ignore_errors=True)  # each run writes a new folder
            found = timed_run(root, params)
            print(f"  {found['wall']:.1f} s", flush=True)
            runs[n] = min(runs.get(n, found), found, key=lambda r: r["wall"])
    first = counts[0]
    differ = {n: differences(root / f"products_{first}", root / f"products_{n}") for n in counts[1:]}
    size = written_bytes(root, f"products_{first}")
    for n in counts:
        if n != first:
            shutil.rmtree(root / f"products_{n}")
    read, raw = read_floor(root)
    write = write_floor(size * 1e9, root)
    floor = read + write

    stages = [s for s in STAGES if s in runs[first]["stages"]]
    times = {n: dict(runs[n]["stages"], **{"start-up and rest": runs[n]["wall"] - sum(runs[n]["stages"].values())})
             for n in counts}
    columns = stages + ["start-up and rest"]
    split = {c: amdahl(counts, [times[n][c] for n in counts]) for c in columns}
    split["start-up and rest"] = (float(np.mean([times[n]["start-up and rest"] for n in counts])), 0.0)
    serial, parallel = (sum(v[k] for v in split.values()) for k in (0, 1))
    most = max(counts)
    sampled = serial_seconds(runs[most])
    cores = len(os.sched_getaffinity(0))
    lines = [SCALING, "", f"`python bench/scaling.py` ({args.shape}, {cores} cores, {time.strftime('%Y-%m-%d')}): "
             f"`cmoscal run` at each worker count, page cache warm, the fastest of {args.repeats} runs.", "",
             f"read + write floor: {raw:.2f} GB of raw frames read and decoded in {read:.1f} s + {size:.2f} GB of "
             f"products written and synced in {write:.1f} s = **{floor:.1f} s**", "",
             "| workers | wall [s] | " + " | ".join(columns) + " | peak memory [GB] |",
             "|---" * (len(columns) + 3) + "|"]
    for n in counts:
        lines.append(f"| {n} | **{runs[n]['wall']:.1f}** | " + " | ".join(f"{times[n][c]:.1f}" for c in columns)
                     + f" | {runs[n]['memory']:.2f} |")
    lines += ["| serial S [s] (Amdahl fit) | **{:.1f}** | ".format(serial)
              + " | ".join(f"{split[c][0]:.1f}" for c in columns) + " | |",
              "| parallel P [s] (Amdahl fit) | {:.1f} | ".format(parallel)
              + " | ".join(f"{split[c][1]:.1f}" for c in columns) + " | |",
              f"| serial, sampled at {most} workers [s] (< 1.5 cores busy) | **{sum(sampled.values()):.1f}** | "
              + " | ".join(f"{sampled.get(c, 0.0):.1f}" for c in columns) + " | |", ""]
    for n in sorted({16, cores}):
        projected = serial + parallel / n
        lines.append(f"projected `cmoscal run` on {n} cores: S + P / {n} = {projected:.1f} s = "
                     f"{projected / floor:.1f}x this machine's read + write floor")
    same = all(not d for d in differ.values())
    given = ", ".join(f"{n} workers {core_speedup(n):.2f}x" for n in counts if n > 1)
    lines += ["", f"the cores this machine gives (a compute-only kernel on n threads against one thread, median of 5): "
              f"{given}; where below n, the Amdahl fit counts the shortfall as serial time"]
    lines += ["", "products at every worker count the same as at {} worker: {}".format(
        first, "**yes**" if same else "**NO**: " + "; ".join(f"{n}: {d[:3]}" for n, d in differ.items() if d))]
    update_section(HERE / "results.md", lines)
    if args.output:
        args.output.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
