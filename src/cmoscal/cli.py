"""The ``cmoscal`` command: simulate, run, report, evaluate, calibrate, compare, synth-bias, synth-dark.

Exit status: 0 success; 1 an error (bad input, a failed stage, the output folder in use),
printed as one line ``cmoscal: error: ...`` without a traceback; 2 a usage error; 3 the run
finished but a check failed (the message names the checks).
"""

from __future__ import annotations

import argparse
import gc
import re
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from . import __version__

__all__ = ["EXIT_CHECKS", "main"]

EXIT_ERROR, EXIT_CHECKS = 1, 3


class UserError(Exception):
    """A problem the user can fix; printed as one line."""


class ChecksFailed(Exception):
    """The run finished but a check failed (exit status 3)."""


def _finite(text: str) -> float:
    """A finite number (argparse type): nan and inf are refused by name."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not np.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


#: a list of numbers that starts with a negative one ("-5,0,5"), which argparse takes for an option
_NEGATIVE_LIST = re.compile(r"-[\d.]+,.*")


def _attach_negative_lists(argv: list[str]) -> list[str]:
    """``--temps -5,0,5`` as ``--temps=-5,0,5``: argparse reads a value that starts with '-' as an option unless it
    is one number."""
    out = []
    for token in argv:
        if out and out[-1].startswith("--") and "=" not in out[-1] and _NEGATIVE_LIST.fullmatch(token):
            out[-1] = f"{out[-1]}={token}"
        else:
            out.append(token)
    return out


def _floats(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None
    if not values or not np.all(np.isfinite(values)):
        raise argparse.ArgumentTypeError(f"expected finite numbers separated by commas, got {text!r}")
    return values


def _shape(text: str) -> tuple[int, int]:
    try:
        ny, nx = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected ROWSxCOLUMNS such as 256x256, got {text!r}") from None
    if ny < 4 or nx < 4:
        raise argparse.ArgumentTypeError("shape must be at least 4x4")
    return ny, nx


def _stages(values) -> list[str]:
    from .stages import STAGES

    names = [n for v in values or [] for n in v.replace(",", " ").split()]
    unknown = [n for n in names if n not in STAGES]
    if unknown:
        raise UserError(f"--stages: unknown stage(s) {', '.join(unknown)}; known: {', '.join(STAGES)}")
    return [n for n in STAGES if n in names] if names else list(STAGES)


def _simulate(args) -> None:
    from .simulate import FLIGHT, simulate_campaign, simulate_mission

    layout = dict(temperatures=args.temps, exptimes=args.exptimes, frames=args.frames, bias_frames=args.bias_frames,
                  law=args.law, cosmics=args.cosmics, full_well=args.full_well, bitpix=args.bitpix,
                  nan_pixels=args.nan_pixels, temperature_style=args.temperature_style, date_style=args.date_style,
                  hot_share=args.hot_share)
    n = len(args.temps) * (args.bias_frames + len(args.exptimes) * args.frames)
    if args.mission:
        names = simulate_mission(args.outdir, ages=args.mission, shape=args.shape, jump_at=args.jump_at,
                                 bias_jump=args.bias_jump, flight=FLIGHT if args.flight else None, seed=args.seed,
                                 **layout)
        epochs = " (the later ones in-flight epochs, with held-out darks)" if args.flight else ""
        print(f"wrote {len(names)} campaigns of {args.shape[0]}x{args.shape[1]} pixels, one sensor ageing{epochs}: "
              f"{', '.join(str(Path(args.outdir) / name) for name in names)}")
        return
    simulate_campaign(args.outdir, shape=args.shape, bad_files=args.bad_files, odd_files=args.odd_files,
                      real_folder=args.real_folder, age=args.age, held_out=args.held_out, light_leak=args.light_leak,
                      tref=args.tref, seed=args.seed, **layout)
    print(f"wrote {n} frames of {args.shape[0]}x{args.shape[1]} to {Path(args.outdir) / 'raw'} "
          f"and the truth to {Path(args.outdir) / 'truth.fits'}")


def _load(args):
    from .config import load_params

    return load_params(args.params, root=args.root)


def _verdict(checks) -> None:
    """Print the verdict; raise :class:`ChecksFailed` naming the failed checks."""
    failed = [c for c in checks if c["status"] == "FAIL"]
    if failed:
        raise ChecksFailed("checks FAILED: " + "; ".join(
            f"{c['check']} ({c['reason']})" if c["reason"] else f"{c['check']} ({c['value']:.3g} > {c['limit']:.3g})"
            for c in failed))
    print("verdict: SUCCESS")


def _stale_note(params) -> None:
    from .products import stage_states

    stale = [f"{name} ({reason})" for name, (state, reason) in stage_states(params["output_dir"]).items()
             if state == "stale"]
    if stale:
        print(f"note: stale products, rerun these stages: {', '.join(stale)}")


def _run(args) -> None:
    gc.disable()  # the imports create long-lived objects by the hundred thousand (numba's types, astropy's units):
    from .compute import keep_freed_memory
    from .products import hold
    from .stages import STAGES

    gc.freeze()  # kept out of every later collection, and out of the one at exit (0.3-0.4 s of a run on R2k)
    gc.enable()
    keep_freed_memory()
    params = _load(args)
    stages = _stages(args.stages)
    checks = None
    with hold(params["output_dir"], f"cmoscal run {args.params}"):
        for i, name in enumerate(stages, 1):
            print(f"[{i}/{len(stages)}] {name} ...", flush=True)
            start = time.perf_counter()
            result = STAGES[name](params)
            if name == "summary":
                checks = result
            del result  # each stage's arrays are freed before the next starts: only the checks are kept
            print(f"[{i}/{len(stages)}] {name} done in {time.perf_counter() - start:.1f} s", flush=True)
    print(f"products in {params['output_dir']}")
    _stale_note(params)
    if checks is not None:
        _verdict(checks)


def _report(args) -> None:
    from .report import run_report

    params = _load(args)
    run_dir, checks = run_report(args.params, params, _stages(args.stages), root=args.root)
    print(f"report: {run_dir / 'index.html'}")
    _stale_note(params)
    if checks is not None:
        _verdict(checks)


def _evaluate(args) -> None:
    from .products import campaign_warnings, hold
    from .stages import evaluation, summary

    params = _load(args)
    for _, message in campaign_warnings(params["output_dir"], ["inventory"]):
        print(f"cmoscal: warning: {message}", file=sys.stderr)
    with hold(params["output_dir"], f"cmoscal evaluate {args.params}"):
        table = evaluation.run(params)["summary"]
        checks = summary.run(params)
    table["group", "resid_noise", "resid_noise_expected", "mae_mean", "mape_median", "mape_share"].pprint(
        max_lines=-1, max_width=-1)
    checks["check", "value", "limit", "status", "reason"].pprint(max_lines=-1, max_width=-1)
    _verdict(checks)


def _calibrate(args) -> None:
    from .config import default_params
    from .inventory import find_fits
    from .model import MODEL_FILE, usable_model
    from .stages.calibration import calibrate_files

    params = _load(args) if args.params else default_params()
    model = Path(args.model)
    model = model / MODEL_FILE if model.is_dir() else model
    output = Path(args.output).resolve()
    files = []
    for item in map(Path, args.inputs):
        if item.is_dir():
            if output == item.resolve() or item.resolve() in output.parents:
                raise UserError(f"--output {args.output} is inside the input folder {item}: choose another folder")
            files += [(path, item) for path, skip in find_fits(item) if not skip]
        elif item.exists():
            files.append((item, None))
        else:
            raise UserError(f"{item}: no such file or folder")
    usable_model(model, "cmoscal calibrate")  # a one-line error when it is not a usable model
    table = calibrate_files(files, model, output, params, args.electrons)
    table["input", "status", "temperature", "exptime", "mean", "std", "noise"].pprint(max_lines=-1, max_width=-1)
    refused = table[table["status"] == "refused"]
    for row in refused:
        print(f"cmoscal: error: {row['input']}: {row['reason']}", file=sys.stderr)
    print(f"{len(table) - len(refused)} frame(s) calibrated into {output}")
    if len(refused):
        raise UserError(f"{len(refused)} of {len(table)} frame(s) refused (reasons above)")


def _compare(args) -> None:
    from .compare import compare_models, describe
    from .model import usable_model

    reference, current = (usable_model(path, "cmoscal compare") for path in (args.reference, args.current))
    result = compare_models(reference, current, args.sigma)
    print(f"{args.current} against {args.reference}; dark rates compared at {result.temperature:.1f} degC, "
          f"{result.exptime:.3g} s")
    result.changes.pprint(max_lines=-1, max_width=-1)
    result.pixels.pprint(max_lines=-1, max_width=-1)
    for line in describe(result.changes, result.pixels, args.sigma):
        print(line)


def _history(args) -> None:
    from .fitsio import write_table
    from .history import history

    out = Path(args.output)
    if out.suffix != ".ecsv":
        raise UserError(f"--output {out}: the history is an ECSV table; give a name ending in .ecsv")
    table, drift = history(args.campaigns, args.jump_sigma)
    write_table(table, out)
    write_table(drift, out.with_name(f"{out.stem}_drifts.ecsv"))
    columns = ["campaign", "date", "years", "flagged", "new", "gone", "persistent", "bias_a", "read_noise", "dark_rate"]
    table[columns].pprint(max_lines=-1, max_width=-1)
    drift.pprint(max_lines=-1, max_width=-1)
    meta = drift.meta
    print(f"new warm/hot pixels: {meta['new_flagged_per_year']:.4g} +- {meta['new_flagged_per_year_error']:.2g} a "
          f"year; dark rate at {table.meta['temperature']:.1f} degC, {table.meta['exptime']:.3g} s; {out} and "
          f"{out.with_name(out.stem + '_drifts.ecsv')} written")


def _synth(args) -> None:
    from .inventory import frame_label
    from .model import usable_model, write_synthetic

    model = usable_model(args.model, f"cmoscal {args.command}")
    output = Path(args.output)
    exptime = getattr(args, "exptime", None)
    if output.is_dir() or not output.suffix:
        kind = "bias" if exptime is None else "dark"
        output = output / f"synthetic_{frame_label(kind, args.temperature, exptime)}.fits"
    data = write_synthetic(model, output, args.temperature, exptime, getattr(args, "signal_only", False),
                           args.raw16, history=[str(Path(args.model).resolve())])
    unit = "raw 16-bit" if args.raw16 else "DN"
    print(f"wrote {output}: mean {np.nanmean(data):.3f} {unit}, std {np.nanstd(data):.3f} {unit}")


def _parser() -> argparse.ArgumentParser:
    from .forms import FORMS
    from .simulate import BITPIXES, DATE_STYLES, TEMPERATURE_STYLES

    parser = argparse.ArgumentParser(prog="cmoscal", description="Per-pixel bias and dark calibration of CMOS "
                                     "cameras: models, synthetic frames, evaluation, reports.",
                                     epilog="exit status: 0 success, 1 error, 2 usage, 3 a check failed")
    parser.add_argument("--version", action="version", version=f"cmoscal {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("simulate", help="write a simulated campaign with its truth maps")
    p.add_argument("outdir", help="campaign folder: frames go to OUTDIR/raw, truth to OUTDIR/truth.fits")
    p.add_argument("--shape", type=_shape, default=(128, 128), help="ROWSxCOLUMNS (default 128x128)")
    p.add_argument("--temps", type=_floats, default=[-10, -5, 0, 5, 10, 15, 20, 25],
                   help="set-point temperatures in degC (default -10,-5,...,25)")
    p.add_argument("--exptimes", type=_floats, default=[1, 5, 10, 30, 60],
                   help="dark exposure times in s (default 1,5,10,30,60)")
    p.add_argument("--frames", type=int, default=5, help="dark frames per (T, t) (default 5)")
    p.add_argument("--bias-frames", type=int, default=10, help="bias frames per T (default 10)")
    p.add_argument("--law", choices=tuple(FORMS), default="exponential",
                   help="dark-current form of the truth (default exponential; +floor: a temperature-independent "
                   "floor)")
    p.add_argument("--hot-share", type=_finite, default=1e-3, help="share of hot pixels (default 0.001)")
    p.add_argument("--tref", type=_finite, default=None, help="degC where the truth's dark A is drawn (default the "
                   "coldest --temps): give the first campaign's to simulate the same sensor at other temperatures")
    p.add_argument("--mission", type=_floats, default=None, help="ages in years (e.g. 0.5,1,2): one campaign of "
                   "the same sensor at age 0 and at each, in OUTDIR/age_<A>y (new hot pixels, bias and dark drifts)")
    p.add_argument("--jump-at", type=_finite, default=None, help="with --mission: age from which the bias is "
                   "--bias-jump DN higher (an event)")
    p.add_argument("--bias-jump", type=_finite, default=3.0, help="DN of the bias jump (default 3)")
    p.add_argument("--flight", action="store_true", help="with --mission: the later campaigns are in-flight epochs "
                   "(darks at 8 and 10.5 degC, 10 and 60 s, 3 frames; 5 biases; held-out darks at those and 15.5 "
                   "degC in held_out/)")
    p.add_argument("--bad-files", action="store_true", help="also write five unusable files")
    p.add_argument("--odd-files", action="store_true", help="fpack, gzip, extension, float32, ms, kelvin, "
                   "a duplicate and a light-leak frame")
    p.add_argument("--real-folder", action="store_true", help="flats, lights, a second readout configuration, "
                   "a burst cube and NaN pixels in the folder")
    p.add_argument("--cosmics", type=_finite, default=0.0, help="cosmic-ray hits per megapixel per second")
    p.add_argument("--full-well", type=_finite, default=0.0, help="share of pixels reaching full well")
    p.add_argument("--age", type=_finite, default=0.0, help="years of ageing: new hot pixels, shifted bias")
    p.add_argument("--held-out", action="store_true", help="also dark frames between the calibrated (T, t), "
                   "in OUTDIR/held_out, to calibrate as science frames")
    p.add_argument("--bitpix", type=int, choices=BITPIXES, default=16,
                   help="how the frames store their values: 16 (uint16, default), 32, -32 or -64")
    p.add_argument("--nan-pixels", type=_finite, default=0.0, help="share of NaN pixels in floating-point frames")
    p.add_argument("--temperature-style", choices=TEMPERATURE_STYLES, default="degC",
                   help="how CCD-TEMP is written: a degC number (default), a string with its unit ('-10.00 C'), "
                   "degF or kelvin named by its comment, or only the set point SET-TEMP")
    p.add_argument("--date-style", choices=DATE_STYLES, default="iso",
                   help="how DATE-OBS is written: ISO (default), ISO with a space and UTC, or DD/MM/YY")
    p.add_argument("--light-leak", action="store_true", help="one more dark with a 3000 DN light leak (not saturated)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the sensor (default 0)")
    p.set_defaults(func=_simulate)

    for name, func, text in (("run", _run, "run pipeline stages from a parameter file"),
                             ("report", _report, "run the notebook suite and archive HTML reports"),
                             ("evaluate", _evaluate, "evaluate the model against the masters; print checks")):
        p = sub.add_parser(name, help=text)
        p.add_argument("params", help="campaign parameter file (YAML)")
        p.add_argument("--root", default=".", help="directory relative paths refer to (default: current)")
        if name != "evaluate":
            p.add_argument("--stages", nargs="+", metavar="STAGE", help="stages to run (default: all, in order)")
        p.set_defaults(func=func)

    p = sub.add_parser("calibrate", help="calibrate science frames with a model (bias and dark at their own T, t)")
    p.add_argument("inputs", nargs="+", metavar="FRAME_OR_DIR", help="raw FITS frames or folders of them")
    p.add_argument("--model", required=True, help="output_dir of a campaign, or its calibration_model.fits")
    p.add_argument("--output", required=True, help="folder for the calibrated frames (<name>_cal.fits)")
    p.add_argument("--electrons", action="store_true", help="calibrated image and uncertainty in electrons")
    p.add_argument("--params", help="campaign parameter file: header keywords, units, mask bits, compute")
    p.add_argument("--root", default=".", help="directory relative paths refer to (default: current)")
    p.set_defaults(func=_calibrate)

    p = sub.add_parser("compare", help="what changed between two campaigns of the same sensor")
    p.add_argument("reference", help="output_dir (or calibration_model.fits) of the earlier campaign")
    p.add_argument("current", help="output_dir (or calibration_model.fits) of the later campaign")
    p.add_argument("--sigma", type=_finite, default=5.0, help="significance threshold (default 5)")
    p.set_defaults(func=_compare)

    p = sub.add_parser("history", help="a sensor over its campaigns: drifts per year, jumps, hot-pixel growth")
    p.add_argument("campaigns", nargs="+", help="output_dir (or calibration_model.fits) of each campaign")
    p.add_argument("--output", default="history.ecsv", help="table of the campaigns (default history.ecsv; the "
                   "drifts go beside it, in <name>_drifts.ecsv)")
    p.add_argument("--jump-sigma", type=_finite, default=5.0, help="a step beyond this many sigma of the drift "
                   "is a jump (default 5)")
    p.set_defaults(func=_history)

    for name, text in (("synth-bias", "synthetic bias frame at a temperature"),
                       ("synth-dark", "synthetic dark frame at a temperature and exposure")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--model", required=True, help="output_dir of a campaign, or its calibration_model.fits")
        p.add_argument("--temperature", type=_finite, required=True, help="degC")
        if name == "synth-dark":
            p.add_argument("--exptime", type=_finite, required=True, help="s")
            p.add_argument("--signal-only", action="store_true", help="dark signal alone, without the bias")
        p.add_argument("--output", required=True, help="FITS file, or a directory for the default name")
        p.add_argument("--raw16", action="store_true", help="quantized raw 16-bit convention instead of DN")
        p.set_defaults(func=_synth)
    return parser


def main(argv=None) -> int:
    """Entry point of the ``cmoscal`` command; returns the exit status."""
    args = _parser().parse_args(_attach_negative_lists(sys.argv[1:] if argv is None else [str(a) for a in argv]))
    from .config import ParamsError
    from .errors import CampaignError, CampaignWarning, LockError
    from .report import ReportError

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, CampaignWarning):
            print(f"cmoscal: warning: {message}", file=sys.stderr)

    warnings.showwarning = show
    warnings.filterwarnings("always", category=CampaignWarning)  # each is raised once where it arises
    try:
        args.func(args)
    except ChecksFailed as err:
        print(f"cmoscal: {err}", file=sys.stderr)
        return EXIT_CHECKS
    except (UserError, ParamsError, ReportError, CampaignError, LockError, FileNotFoundError, ValueError,
            OSError) as err:
        print(f"cmoscal: error: {err}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("cmoscal: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
