"""Camera styles against their clean twin: the same sensor written as other cameras write it.

Each variant is simulated with the clean campaign's seed and calibrated with default parameters
(nothing set for its style): float32 frames with NaN pixels, temperatures in degF (named only by
the keyword comment), as strings with a unit, in kelvin, and a flight-like campaign of one bias and
one dark frame per group (whose read noise comes from the bias-fit residuals). For every model
parameter the table gives the median and 99th percentile over pixels of |variant - clean| / sigma,
sigma combining both models' uncertainties: 0 for the same frames read alike, 0.67 and 2.58 (those
of |N(0, 1)|) for a twin of independent frames; and the mean read variance against the truth. It
goes to bench/inputs.md.

Usage: python bench/inputs.py [--shape 128x128]
"""

import argparse
import tempfile
from pathlib import Path

import numpy as np
import yaml

from cmoscal.config import load_params
from cmoscal.simulate import simulate_campaign
from cmoscal.stages import STAGES

LAYOUT = dict(temperatures=(-10, -5, 0, 5, 10, 15, 20, 25), exptimes=(1, 5, 10, 30, 60), frames=5, bias_frames=10)
VARIANTS = {"clean": {}, "float32 + 0.1 % NaN": dict(bitpix=-32, nan_pixels=0.001),
            "degF (comment)": dict(temperature_style="degF"), "string '-10.00 C'": dict(temperature_style="string"),
            "kelvin (comment)": dict(temperature_style="kelvin"),
            "one frame per group": dict(frames=1, bias_frames=1)}
STAGE_NAMES = ("inventory", "bias", "dark_masters", "dark_model", "hot_pixels", "synthesis", "evaluation", "summary")


def calibrate(root: Path, shape, **variant):
    """Simulate and calibrate one variant; return its model, truth and checks."""
    truth = simulate_campaign(root, shape=shape, seed=5, **{**LAYOUT, **variant})
    (root / "p.yml").write_text(yaml.safe_dump(dict(campaign="twin", raw_dir="raw", output_dir="out", progress=False)))
    params = load_params(root / "p.yml", root=root)
    results = {name: STAGES[name](params) for name in STAGE_NAMES}
    return results["hot_pixels"]["model"], truth, results["summary"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="128x128", help="ROWSxCOLUMNS (default 128x128)")
    shape = tuple(int(v) for v in parser.parse_args().shape.split("x"))
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        clean = None
        for name, variant in VARIANTS.items():
            model, truth, checks = calibrate(Path(folder) / name.split()[0], shape, **variant)
            clean = clean or model
            usable = (clean.dq == 0) & (model.dq == 0)
            pairs = ((model.bias_a, clean.bias_a, model.bias_cov[0] + clean.bias_cov[0]),
                     (model.bias_b, clean.bias_b, model.bias_cov[1] + clean.bias_cov[1]),
                     *((model.dark[k], clean.dark[k], model.dark_cov[k] + clean.dark_cov[k]) for k in range(3)))
            pulls = [np.abs(x - y)[usable] / np.sqrt(var[usable]) for x, y, var in pairs]
            rv_true = truth["read_noise"] ** 2 + truth["rts"] ** 2 / 4 + 1 / 12  # read, telegraph and quantization
            rv_ratio = np.mean(model.read_noise.astype(float) ** 2) / np.mean(rv_true)
            rows.append(f"| {name} | " + " | ".join(f"{np.median(p):.3f} / {np.percentile(p, 99):.3f}" for p in pulls)
                        + f" | {rv_ratio:.3f} ({model.meta['RNSOURCE']}, {model.meta['RNOWNDOF']} + "
                          f"{model.meta['RNPOPDOF']:.0f} dof) "
                          f"| {checks.meta['verdict']} |")
            print(rows[-1], flush=True)
    text = ("# Camera styles against their clean twin (`python bench/inputs.py`)\n\n"
            f"{shape[0]}x{shape[1]} pixels, 8 temperatures x 5 exposures (5 darks, 10 biases) unless stated; "
            "|variant - clean| / sigma, median / 99th percentile over pixels without flags in either.\n\n"
            "| variant | bias a | bias b | ln A | B | gamma | read variance / truth (mean) | verdict |\n"
            "|---|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n")
    (Path(__file__).resolve().parent / "inputs.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
