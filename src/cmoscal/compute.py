"""Tiles and where they run: row bands sized by a memory budget, executed in-process on
threads or as tasks on a dask.distributed cluster.

Results do not depend on the tiling: every per-pixel computation sees only its own pixel,
and campaign-wide statistics are computed beforehand from fixed row samples.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np

__all__ = ["concurrently", "keep_freed_memory", "keeping_freed_memory", "progress_enabled", "row_bands", "run_tiles",
           "sample_rows", "scratch", "tile_budget", "workers"]

_local = threading.local()


def scratch(name: str, shape: tuple, dtype) -> np.ndarray:
    """A reusable working array of this thread (fresh large allocations cost the kernel page zeroing).

    The contents are undefined; a later call with the same ``name`` in the same thread may return
    the same memory, so use it before asking again.
    """
    size = int(np.prod(shape)) * np.dtype(dtype).itemsize
    pool = _local.__dict__.setdefault("pool", {})
    buffer = pool.get(name)
    if buffer is None or buffer.size < size:
        buffer = pool[name] = np.empty(size, np.uint8)
    return buffer[:size].view(dtype).reshape(shape)


#: glibc's malloc settings that keep freed memory for reuse, in one pool for all threads: (tunable, mallopt code of
#: malloc.h, value): no mapping of its own for a large array, no trimming, one arena
_KEEP_FREED = (("mmap_max", -4, 0), ("trim_threshold", -1, 2**31 - 1), ("arena_max", -8, 1))


def keep_freed_memory() -> bool:
    """From now on, have this process's malloc keep freed memory for the next allocation, in one pool for all threads;
    call it before the work starts its threads. Returns whether it applied (glibc; elsewhere nothing changes).

    By default a frame-sized array is a fresh mapping each time, and each thread's arrays come from
    a pool of its own: the kernel zero-fills every new page on first touch, on R2k a tenth of a
    run's CPU time. Kept and shared, the memory is reused from tile to tile and stage to stage (the
    pool's lock is taken once per array, not per pixel); the peak stays that of the stages.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, TypeError, AttributeError):  # not glibc (Windows loads no process-wide library)
        return False
    return all([mallopt(code, value) for _, code, value in _KEEP_FREED])


def keeping_freed_memory(env: dict) -> dict:
    """``env`` for a child process (a report's kernel) whose malloc keeps freed memory as :func:`keep_freed_memory`
    does: glibc reads ``GLIBC_TUNABLES`` at the child's start, before any of its threads has a pool of its own
    (a kernel's threads exist before its first page runs). Other C libraries ignore it."""
    tunables = ":".join(f"glibc.malloc.{name}={value}" for name, _, value in _KEEP_FREED)
    given = env.get("GLIBC_TUNABLES")
    return {**env, "GLIBC_TUNABLES": f"{given}:{tunables}" if given else tunables}


SAMPLE_ROWS = 64  # rows read for campaign-wide statistics (gain, clipping scale)


def workers(params: dict) -> int:
    """Tiles in flight at once: the configured workers, else this machine's cores."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return params["compute"]["workers"] or cores or 1


def tile_budget(params: dict) -> float:
    """Bytes one tile may hold: ``memory_budget`` shared by the tiles in flight."""
    return params["memory_budget"] * 1e9 / workers(params)


def progress_enabled(params: dict) -> bool:
    """Progress bars: ``progress`` true/false, or auto (on a terminal, never in CI)."""
    if params.get("progress", "auto") == "auto":
        return sys.stderr.isatty() and not os.environ.get("CI")
    return bool(params["progress"])


def row_bands(ny: int, bytes_per_row: float, params: dict) -> list[slice]:
    """Split ``ny`` rows into bands so the tiles in flight fit ``memory_budget`` (GB), their number a multiple of
    the workers where the rows allow (so that no worker is left with the last band alone).

    Parameters
    ----------
    ny : int
        Rows of the sensor.
    bytes_per_row : float
        Working memory one row of a tile needs.
    params : dict
        Campaign parameters (memory_budget, compute.workers).
    """
    rows = int(max(1, min(ny, tile_budget(params) // max(bytes_per_row, 1))))
    bands = -(-ny // rows)
    if bands > 1:  # rounded up to a multiple of the workers
        bands = min(ny, -(-bands // workers(params)) * workers(params))
        rows = -(-ny // bands)
    return [slice(y, min(y + rows, ny)) for y in range(0, ny, rows)]


def sample_rows(ny: int) -> np.ndarray:
    """Evenly spaced rows (at most SAMPLE_ROWS) for campaign-wide statistics."""
    return np.unique(np.linspace(0, ny - 1, min(ny, SAMPLE_ROWS)).astype(int))


def concurrently(calls: list, threads: int) -> list:
    """Run the argument-less ``calls`` (e.g. product writes, array statistics: work that mostly releases the
    GIL) on up to ``threads`` threads at once; return their results in order (the first error is raised)."""
    if threads <= 1 or len(calls) <= 1:
        return [call() for call in calls]
    with ThreadPoolExecutor(max_workers=min(threads, len(calls))) as pool:
        return [future.result() for future in [pool.submit(call) for call in calls]]


def _windowed(submit, func, tasks: list, running: int):
    """Submit at most twice the ``running`` tasks (those that run at once) ahead and yield their results in order.

    Twice: a worker whose tile finished before an earlier, slower one starts the next at once,
    instead of waiting for the slow tile's result to be taken.
    """
    window = 2 * running
    pending = deque(submit(func, *task) for task in tasks[:window])
    for task in tasks[window:]:
        result = pending.popleft().result()
        pending.append(submit(func, *task))
        yield result
    while pending:
        yield pending.popleft().result()


def run_tiles(func, tasks: list, params: dict, label: str = ""):
    """Yield ``func(*task)`` for every task, in order, with a bounded number in flight.

    ``compute.scheduler: threads`` runs them on a thread pool in this process (the compiled
    kernels and NumPy release the GIL); any other value is the address of a dask.distributed
    scheduler, whose workers must see the same file paths. ``func`` must be importable (a
    module-level function). With a ``label`` and progress enabled, a bar counts the tiles.
    """
    bar = None
    if label and progress_enabled(params):
        from tqdm import tqdm

        bar = tqdm(total=len(tasks), desc=label, unit="tile", leave=False, file=sys.stderr)
    try:
        for result in _run(func, tasks, params):
            if bar is not None:
                bar.update()
            yield result
    finally:
        if bar is not None:
            bar.close()


def _run(func, tasks: list, params: dict):
    scheduler = params["compute"]["scheduler"]
    if scheduler == "threads":
        with ThreadPoolExecutor(max_workers=workers(params)) as pool:
            yield from _windowed(pool.submit, func, tasks, workers(params))
        return
    from distributed import Client

    with Client(scheduler, timeout="30s") as client:
        running = max(workers(params), sum(client.nthreads().values()))
        yield from _windowed(lambda f, *a: client.submit(f, *a, pure=False), func, tasks, running)
