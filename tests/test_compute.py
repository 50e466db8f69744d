"""Tiles: the result does not depend on the tiling or on where the tiles run."""

import os
import platform
import subprocess
import sys
import threading

import numpy as np
import pytest
from conftest import write_params

from cmoscal import kernels
from cmoscal.compute import concurrently, keeping_freed_memory, row_bands, run_tiles
from cmoscal.config import default_params, load_params
from cmoscal.products import differences
from cmoscal.simulate import simulate_campaign
from cmoscal.stages import STAGES


def compute_params(**compute):
    return {**default_params(), "compute": {"scheduler": "threads", "workers": None, **compute}}


def test_bands_cover_every_row_within_the_budget():
    params = {**compute_params(workers=2), "memory_budget": 1e-6}  # 500 bytes per tile
    bands = row_bands(100, 100.0, params)
    assert [b.start for b in bands] == list(range(0, 100, 5)) and bands[-1].stop == 100
    assert row_bands(100, 1.0, compute_params()) == [slice(0, 100)]


def test_concurrent_calls_return_in_order_and_raise_the_first_error():
    assert concurrently([lambda k=k: k * k for k in range(5)], 2) == [0, 1, 4, 9, 16]

    def fail():
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        concurrently([lambda: 1, fail], 2)


def test_each_kernel_is_compiled_once_for_writable_and_read_only_inputs():
    compiled = kernels.compile_kernels()
    assert len(compiled) == 12 and all(len(kernel.signatures) == 1 for kernel in compiled)
    assert {kernel.py_func.__name__ for kernel in compiled} <= set(kernels.__all__)  # what make env compiles
    variance, nframes, out = np.full((2, 3), 4.0, np.float32), np.full((2, 3), 3, np.int16), np.empty(3, np.float32)
    dof = np.empty(3, np.int16)
    kernels.pooled_variance(variance, nframes, out, dof)
    variance.flags.writeable = nframes.flags.writeable = False  # as memory-mapped products are
    kernels.pooled_variance(variance, nframes, out, dof)
    assert np.array_equal(out, [12.0] * 3) and len(kernels.pooled_variance.load().signatures) == 1
    assert np.array_equal(dof, [4] * 3)
    with pytest.raises(TypeError, match="No matching definition"):  # refused, not compiled mid-run
        kernels.pooled_variance(variance.astype(np.float64), nframes, out, dof)


def test_tiles_come_back_in_order_on_threads():
    assert list(run_tiles(pow, [(i, 2) for i in range(20)], compute_params(workers=3))) == [i * i for i in range(20)]


def _waits_for_a_later_tile(index, later_ran):
    if index == 0:
        return later_ran.wait(timeout=10)  # False: no later tile could start while this one ran
    if index == 3:
        later_ran.set()
    return True


def test_a_slow_tile_does_not_hold_up_the_next_ones():
    """Tile 0 finishes only once tile 3 has run: the free worker must go on past tiles 1 and 2 meanwhile."""
    later_ran = threading.Event()
    assert all(run_tiles(_waits_for_a_later_tile, [(i, later_ran) for i in range(6)], compute_params(workers=2)))


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiles")
    simulate_campaign(root, shape=(20, 24), temperatures=(0, 10, 20), exptimes=(5, 20), frames=3, bias_frames=4,
                      seed=21)
    return root


def run(root, name, **overrides):
    params = load_params(write_params(root / f"{name}.yml", campaign="tiles", raw_dir="raw", output_dir=name,
                                      loo_pixels=0, **overrides), root=root)
    for stage in STAGES.values():
        stage(params)
    return root / name


def assert_same_products(a, b):
    """Every product (FITS values and headers, tables, regions) the same, but for the dates and checksums."""
    assert len(list(a.rglob("*.fits"))) > 25 and len(list(a.rglob("*.ecsv"))) > 8
    assert differences(a, b) == []


def test_tiled_products_equal_untiled_on_any_number_of_threads(small):
    whole = run(small, "whole", memory_budget=10.0, compute={"workers": 1})
    tiled = run(small, "tiled", memory_budget=2e-6, compute={"workers": 3})  # bands of a few rows on 3 threads
    assert_same_products(whole, tiled)
    extra = differences(whole, run(small, "diagnostics", master_diagnostics=True))  # only what no stage reads
    assert extra and all(d.endswith(f"only in {small / 'diagnostics'}") and (
        "[NCLIP]" in d or "dark_masters/" in d and "[VARIANCE]" in d) for d in extra)


def test_dask_cluster_gives_the_in_process_result(small):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address=None,
                                  processes=True) as cluster:
        on_cluster = run(small, "cluster", memory_budget=2e-6, compute={"scheduler": cluster.scheduler_address})
    assert_same_products(run(small, "local", memory_budget=2e-6), on_cluster)


@pytest.mark.parametrize("how", ["this process", "a child's environment"])
def test_freed_frames_are_reused_not_zero_filled_again(how):
    """With freed memory kept (keep_freed_memory in the process; keeping_freed_memory for a child, as a report's
    kernel), frame-sized arrays that worker threads free are reused: the kernel faults in (and zero-fills) pages for
    the first frames only, however many follow. In processes of their own, so that the setting does not leak."""
    script = """
import resource, sys
from concurrent.futures import ThreadPoolExecutor
import numpy as np
from cmoscal.compute import keep_freed_memory
if sys.argv[2] == "this process":
    assert keep_freed_memory(), "not glibc"
def frames(_):
    for _ in range(int(sys.argv[1])):
        np.ones((2048, 2048))  # 32 MB, freed at once
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
with ThreadPoolExecutor(2) as pool:
    list(pool.map(frames, range(4)))
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults)
"""
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc: malloc keeps its defaults")
    env = keeping_freed_memory(dict(os.environ)) if how != "this process" else dict(os.environ)

    def faults(frames):  # the fewest of three runs: the threads' timing now and then has the pool grow one frame
        return min(int(subprocess.run([sys.executable, "-c", script, str(frames), how], capture_output=True,
                                      text=True, check=True, env=env).stdout) for _ in range(3))

    assert faults(40) - faults(5) < 100  # 140 more frames: each faulted in anew would be >= 16 faults (2 MB pages)
