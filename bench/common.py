"""The simulated reference campaign of the accuracy and calibration benchmarks, made once and cached.

8 temperatures x 5 exposures x 5 darks, 10 biases per temperature, hot pixels, saturation and
temperature jitter, in ``bench/cache/<name>_<shape>_<seed>``; ``--shape`` and ``--seed`` on the
command line choose it.
"""

import argparse
from pathlib import Path

import yaml

from cmoscal.config import load_params
from cmoscal.simulate import simulate_campaign

CACHE = Path(__file__).resolve().parent / "cache"


def reference_campaign(name: str, description: str, **simulate) -> tuple[Path, dict, argparse.Namespace]:
    """Parse --shape/--seed, simulate the campaign if it is not cached; return its folder, parameters and the args."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--shape", default="256x256", help="ROWSxCOLUMNS (default 256x256)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the sensor (default 0)")
    args = parser.parse_args()
    root = CACHE / f"{name}_{args.shape}_{args.seed}"
    if not (root / "truth.fits").exists():
        simulate_campaign(root, shape=tuple(int(v) for v in args.shape.split("x")), seed=args.seed, **simulate)
    (root / "params.yml").write_text(yaml.safe_dump(dict(campaign=name, raw_dir="raw", output_dir="out",
                                                         report_dir="reports", progress=False)))
    return root, load_params(root / "params.yml", root=root), args
