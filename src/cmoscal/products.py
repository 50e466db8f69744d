"""Where every product lives, which stage wrote it, and whether it still describes the data.

``output_dir`` holds the products of the stages and two files of their own (and, while a stage
that runs again deletes its earlier products, the folder ``.discarded``):

- ``ledger.json``: for every stage, when it last ran, the sequence numbers of the stages it
  read, its status, the campaign warnings it raised and a few facts (bytes read, ...). A
  stage whose inputs were rewritten after it ran is *stale*: :func:`stage_states` says so,
  and the summary and the report index never show a verdict over stale products.
- ``.lock``: held (``flock``) by the run that writes the folder; a second run stops with
  one line naming the holder. Child processes of the holder (the report's notebook kernel)
  inherit it through the ``CMOSCAL_LOCK`` environment variable.

A stage function is wrapped by :func:`stage`: it takes the lock, moves the products the
stage owns out of the way (so none survives from an earlier run with other parameters), records the
campaign warnings raised inside, and updates the ledger.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import shutil
import socket
import sys
import threading
import time
import uuid
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from . import __version__
from .errors import CampaignError, CampaignWarning, LockError

__all__ = ["DEPENDS", "EXECUTION", "LABELS", "LEDGER", "MODEL_FILE", "PIPELINE", "STAGE", "Stage", "campaign_warnings",
           "differences", "hold", "ledger", "note", "out", "product", "require", "require_current", "required",
           "shaping", "stage", "stage_states", "upstream"]

MODEL_FILE = "calibration_model.fits"
LEDGER = "ledger.json"
_LOCK = ".lock"
_DISCARDED = ".discarded"  # a rerun stage's earlier products, until deleted
_ENV = "CMOSCAL_LOCK"


@dataclass(frozen=True)
class Stage:
    """What a stage is: its name, the stages whose products it reads, and the products it owns.

    Attributes
    ----------
    name : str
        Also its module in :mod:`cmoscal.stages` and (numbered by its place) its notebook.
    reads : tuple of str
        Stages whose products it reads: it runs only when they are current, and is stale
        when one of them runs again.
    products : dict
        Product name -> path relative to ``output_dir`` (a folder ends with ``/``, a pattern
        may hold ``*``). One product, one owner: a stage that runs again removes these first.
    params : tuple of str
        The parameters that shape its products' values (besides :data:`EXECUTION` and
        :data:`LABELS`, which every stage may read); the model id hashes those of a product's
        stage and of every stage upstream of it.
    """

    name: str
    reads: tuple
    products: dict
    params: tuple = ()

    @property
    def notebook(self) -> str:
        """File name of the stage's notebook."""
        return f"{[s.name for s in PIPELINE].index(self.name) + 1:02d}_{self.name}.ipynb"

    @property
    def owns(self) -> tuple:
        """Glob patterns (relative to output_dir) of the files the stage owns."""
        return tuple(path + "*" if path.endswith("/") else path for path in self.products.values())


#: parameters that say where the inputs and products are and how a stage runs, never the values the products hold
#: (master_diagnostics adds extensions no stage reads)
EXECUTION = ("raw_dir", "output_dir", "report_dir", "compute", "memory_budget", "progress", "kernel",
             "master_diagnostics")
#: parameters written into headers as labels, never shaping a value
LABELS = ("campaign", "instrument")
_FRAMES = ("combine", "clip_sigma", "frame_outlier_sigma", "max_zero_fraction", "max_saturated_fraction",
           "max_nan_fraction")  # how frames are judged and combined into masters
_FIT = ("dark_form", "dark_model", "fit_bounds", "full_well_level", "max_iterations", "max_outlier_fraction",
        "min_dof", "outlier_sigma")  # how the dark model is fitted

#: the stages in pipeline order: every dependency, ownership, stale state, product path and model id derives from these
PIPELINE = (
    Stage("inventory", (), {"inventory": "inventory.ecsv"},
          ("include", "exclude", "scale_factor", "saturation", "frame_type_keys", "temperature_keys",
           "temperature_unit", "exposure_keys", "exposure_unit", "gain_keys", "readout_keys", "bias_max_exptime",
           "temperature_tolerance", "exptime_tolerance", "min_frames", "dark_model", "min_dof")),
    Stage("bias", ("inventory",), {"bias_masters": "bias_grouped_by_temp/", "bias_model": "bias_model/"},
          _FRAMES + ("prior_model",)),
    Stage("dark_masters", ("inventory", "bias"), {"dark_masters": "dark_masters/"}, _FRAMES + ("dark_bias",)),
    Stage("dark_model", ("bias", "dark_masters"),
          {"dark_maps": "dark_model/dark_*", "dark_fit": "dark_model/dark_fit.fits",
           "model_comparison": "dark_model/model_comparison.ecsv", "outliers": "dark_model/outliers.fits",
           "prior_update": "dark_model/prior_update.ecsv", "prior_update_maps": "dark_model/prior_update.fits"},
          _FIT + ("dark_bias", "gain", "max_extrapolation", "max_exposure_factor", "loo_pixels", "seed",
                  "prior_model", "change_sigma")),
    Stage("hot_pixels", ("dark_model",),
          {"model": MODEL_FILE, "dq_map": "dark_model/dq_map.fits", "hot_pixel_mask": "dark_model/hot_pixel_mask.fits",
           "hot_pixels": "dark_model/hot_pixels.ecsv", "hot_pixel_regions": "dark_model/hot_pixels.reg"},
          ("warm_sigma", "hot_sigma", "excess_sigma", "hot_rate_min", "hot_rate_unit", "hot_reference_temperature",
           "noisy_sigma", "poor_fit_chi2r", "unreliable_dark_error")),
    Stage("synthesis", ("hot_pixels",), {"synthetic": "synthetic/"}, ("synthesize", "generate_set")),
    Stage("evaluation", ("bias", "dark_masters", "hot_pixels"), {"evaluation": "evaluation/"},
          _FIT + ("dark_bias", "snr_min", "loo_pixels", "seed", "save_eval_fits")),
    Stage("summary", ("inventory", "hot_pixels", "evaluation"),
          {"checks": "checks.ecsv", "model_numbers": "model_numbers.ecsv", "dq_counts": "dq_counts.ecsv",
           "files": "files.ecsv"}, ("checks",)),
    Stage("calibration", ("hot_pixels",), {"calibrated": "calibrated/"},
          ("science_dir", "calibration_mask", "temperature_keys", "temperature_unit", "exposure_keys",
           "exposure_unit")),
    Stage("comparison", ("hot_pixels",), {"comparison": "comparison/"}, ("reference_campaign", "change_sigma")),
    Stage("dark_budget", ("hot_pixels",), {"dark_budget": "dark_budget.ecsv"}, ("budget_temperatures",)),
    Stage("history", ("inventory", "hot_pixels"), {"history": "history/"}, ("history_campaigns", "jump_sigma")),
)
STAGE = {s.name: s for s in PIPELINE}
#: stage -> the stages whose products it reads
DEPENDS = {s.name: s.reads for s in PIPELINE}
_OWNER = {key: s for s in PIPELINE for key in s.products}

_current: dict | None = None  # the ledger entry of the stage running in this process


def out(params_or_dir, *parts) -> Path:
    """Path below ``output_dir``: ``output_dir / parts``."""
    root = params_or_dir["output_dir"] if isinstance(params_or_dir, dict) else params_or_dir
    return Path(root).joinpath(*parts)


def product(params_or_dir, name: str, *parts) -> Path:
    """Path of the product ``name`` (a key of a :class:`Stage`'s products), or of ``parts`` inside its folder."""
    return out(params_or_dir, _OWNER[name].products[name], *parts)


def required(params_or_dir, name: str, *parts) -> Path:
    """:func:`product`, or a one-line error naming the stage that makes it when it is missing."""
    return require(product(params_or_dir, name, *parts), _OWNER[name].name)


def require(path: Path, stage: str) -> Path:
    """``path``, or a one-line error saying which stage makes it."""
    if not Path(path).exists():
        raise FileNotFoundError(f"{path} is missing: run the {stage} stage first")
    return Path(path)


# --- the lock -----------------------------------------------------------------------------------
def _holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


@contextmanager
def hold(output_dir, what: str = ""):
    """Hold the lock of ``output_dir`` for the block (re-entrant within a run and its kernels).

    Raises
    ------
    LockError
        When another run holds it; the message names that run.
    """
    output_dir = Path(output_dir)
    path = output_dir / _LOCK
    token = os.environ.get(_ENV)
    if token and _holder(path).get("token") == token:
        yield
        return
    output_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        info = _holder(path)
        raise LockError(f"{output_dir} is in use by {info.get('what', 'another run')} (pid {info.get('pid', '?')} on "
                        f"{info.get('host', '?')}, since {info.get('started', '?')}): wait for it or use another "
                        "output_dir") from None
    token = uuid.uuid4().hex
    info = dict(token=token, pid=os.getpid(), host=socket.gethostname(),
                what=what or " ".join(Path(a).name if i == 0 else a for i, a in enumerate(sys.argv)),
                started=datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC"))
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(info).encode(), 0)
    previous = os.environ.get(_ENV)
    os.environ[_ENV] = token
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(_ENV, None)
        else:
            os.environ[_ENV] = previous
        os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


# --- the ledger ---------------------------------------------------------------------------------
def ledger(output_dir) -> dict:
    """The ledger of ``output_dir`` ({} when no stage ran)."""
    path = out(output_dir, LEDGER) if isinstance(output_dir, dict) else Path(output_dir) / LEDGER
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}


def _save(output_dir: Path, book: dict) -> None:
    from .fitsio import atomic_path

    with atomic_path(output_dir / LEDGER) as tmp:
        Path(tmp).write_text(json.dumps(book, indent=1))


def stage_states(output_dir) -> dict:
    """``{stage: (state, reason)}``, state one of current, stale, failed, running, not run.

    A stage is current when it finished and every stage it read is current and has not run
    since; otherwise the reason names the first that is not.
    """
    book = ledger(output_dir).get("stages", {})
    states = {}
    for name, depends in DEPENDS.items():
        entry = book.get(name)
        if entry is None:
            states[name] = ("not run", "")
        elif entry["status"] != "done":
            states[name] = (entry["status"], entry.get("error", ""))
        else:
            states[name] = ("current", "")
            for dep in depends:
                before = book.get(dep)
                if before is None:
                    states[name] = ("stale", f"{dep} has not run")
                elif before.get("seq") != entry["upstream"].get(dep):
                    states[name] = ("stale", f"{dep} ran after it")
                elif states[dep][0] != "current":
                    states[name] = ("stale", f"{dep} is {states[dep][0]}")
                if states[name][0] != "current":
                    break
    return states


def shaping(params: dict, name: str) -> dict:
    """The parameters (name -> value) that shape the products of stage ``name``: its own and those of every
    stage upstream of it."""
    return {key: params[key] for spec in PIPELINE if spec.name in upstream(name) for key in spec.params}


def upstream(name: str) -> set:
    """``name`` and every stage whose products it reads, directly or not."""
    found = {name}
    for dep in DEPENDS[name]:
        found |= upstream(dep)
    return found


def require_current(output_dir, name: str, user: str, states: dict | None = None) -> None:
    """Refuse, naming what to rerun, when the products of stage ``name`` in ``output_dir`` are not current
    (``states``: :func:`stage_states` of ``output_dir``, when the caller has it).

    Raises
    ------
    CampaignError
        ``user`` (a stage or a command) would read products that are missing, stale or
        half-written; the message lists the stages to run, in order.
    """
    states = states or stage_states(output_dir)
    state, reason = states[name]
    if state == "current":
        return
    plan = [s for s in DEPENDS if s in upstream(name) and states[s][0] != "current"]
    what = "has not run" if state == "not run" else f"is {state}" + (f" ({reason})" if reason else "")
    todo = f"the {plan[0]} stage" if len(plan) == 1 else f"the stages {', '.join(plan)}"
    raise CampaignError(f"{user} reads the products of {name} in {output_dir}, which {what}: run {todo} first")


def campaign_warnings(output_dir, stages=None) -> list[tuple[str, str]]:
    """``(stage, message)`` of every campaign warning recorded by the stages (in pipeline order)."""
    book = ledger(output_dir).get("stages", {})
    return [(name, message) for name in DEPENDS if name in book and (stages is None or name in stages)
            for message in book[name].get("warnings", [])]


def note(**facts) -> None:
    """Record facts about the running stage in its ledger entry (e.g. bytes read); NumPy scalars become numbers."""
    if _current is not None:
        _current.setdefault("facts", {}).update({k: v.item() if hasattr(v, "item") else v for k, v in facts.items()})


def _clear(output_dir: Path, name: str) -> threading.Thread | None:
    """Move the products of an earlier run of stage ``name`` out of the way, and start deleting them (with whatever
    an interrupted run left) on a thread beside the stage, which waits for it at its end: a rename takes no time,
    while freeing a large file's cached pages takes the kernel about 0.2 s per GB (0.4 s of a run on R2k)."""
    paths = {path for pattern in STAGE[name].owns for path in output_dir.glob(pattern) if path.is_file()}
    discarded = output_dir / _DISCARDED
    if paths:
        folder = discarded / f"{name}-{uuid.uuid4().hex}"
        folder.mkdir(parents=True)
        for number, path in enumerate(paths):
            path.rename(folder / f"{number}{path.suffix}")
    if not discarded.is_dir():
        return None
    deleting = threading.Thread(target=shutil.rmtree, args=(discarded,), kwargs={"ignore_errors": True})
    deleting.start()
    return deleting


def _record(entry: dict, caught) -> None:
    """Record the campaign warnings caught in a stage and show them (once each); show the others as they are."""
    for item in caught:
        if issubclass(item.category, CampaignWarning):
            message = str(item.message)
            if message not in entry["warnings"]:
                entry["warnings"].append(message)
                warnings.warn_explicit(message, item.category, item.filename, item.lineno)
        elif not issubclass(item.category, ResourceWarning):  # astropy's unclosed failed files
            warnings.showwarning(item.message, item.category, item.filename, item.lineno)


def stage(name: str, reads_stale: bool = False):
    """Decorate the ``run(params)`` of stage ``name``: lock, clean start, warnings, ledger.

    The products the stage reads must be current (:func:`require_current`), unless
    ``reads_stale`` (the summary, whose checks say which products are stale). Campaign
    warnings are recorded and shown whether the stage finishes or fails.
    """
    def decorate(func):
        @functools.wraps(func)
        def run(params: dict, *args, **kwargs):
            global _current
            output_dir = Path(params["output_dir"])
            with hold(output_dir, f"stage {name}"):
                states = stage_states(output_dir)
                for dep in DEPENDS[name]:
                    if not (reads_stale and states[dep][0] == "stale"):
                        require_current(output_dir, dep, name, states)
                book = ledger(output_dir)
                stages = book.setdefault("stages", {})
                book["seq"] = book.get("seq", 0) + 1
                entry = dict(seq=book["seq"], status="running", cmoscal=__version__,
                             started=datetime.now(UTC).isoformat(timespec="seconds"),
                             upstream={dep: stages[dep]["seq"] for dep in DEPENDS[name]}, warnings=[])
                stages[name] = entry
                _save(output_dir, book)
                deleting = _clear(output_dir, name)
                start = time.perf_counter()
                _current = entry
                try:
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always")
                        try:
                            result = func(params, *args, **kwargs)
                        finally:
                            _current = None
                            if deleting is not None:  # the stage ends with its earlier products gone
                                deleting.join()
                            entry["seconds"] = round(time.perf_counter() - start, 2)
                    entry["status"] = "done"
                except BaseException as err:
                    entry.update(status="failed", error=f"{type(err).__name__}: {err}")
                    raise
                finally:
                    _record(entry, caught)
                    _save(output_dir, book)
                return result
        run.stage_name = name
        return run
    return decorate


_VOLATILE = ("DATE", "CHECKSUM", "DATASUM")  # header cards that differ between two runs of the same work


def differences(output_a, output_b) -> list[str]:
    """What differs between the products of two output folders (e.g. two runs with other ``compute`` settings):
    one line per file or HDU whose values or header differ, beyond the date and checksums of the writing and
    the ledger (which records when and how fast the stages ran). Empty when the products are the same."""
    from astropy.io import fits

    a, b = Path(output_a), Path(output_b)

    def files(root):
        return {p.relative_to(root) for p in root.rglob("*")
                if p.is_file() and p.name not in (LEDGER, _LOCK) and _DISCARDED not in p.relative_to(root).parts}

    found = [f"{name}: only in {root}" for root, other in ((a, b), (b, a)) for name in sorted(files(root) -
                                                                                              files(other))]
    for name in sorted(files(a) & files(b)):
        if name.suffix != ".fits":
            if (a / name).read_bytes() != (b / name).read_bytes():
                found.append(f"{name}: contents differ")
            continue
        with fits.open(a / name) as one, fits.open(b / name) as two:
            hdus = [{hdu.name: hdu for hdu in hdul} for hdul in (one, two)]
            found += [f"{name}[{ext}]: only in {root}" for root, mine, other in ((a, *hdus), (b, *hdus[::-1]))
                      for ext in mine if ext not in other]
            for ext in (ext for ext in hdus[0] if ext in hdus[1]):
                x, y = hdus[0][ext], hdus[1][ext]
                cards = [{c.keyword: c.value for c in h.header.cards if c.keyword not in _VOLATILE} for h in (x, y)]
                if cards[0] != cards[1]:
                    found.append(f"{name}[{ext}]: headers differ")
                elif x.data is not None and (y.data is None or x.data.tobytes() != y.data.tobytes()):
                    found.append(f"{name}[{ext}]: values differ")
    return found
