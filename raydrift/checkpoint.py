"""Pipeline checkpoints: everything a run needs to continue after its driver died.

``<run_dir>/checkpoint/state.pt`` is written by the coordinator after each update and every
``reliability.checkpoint_every_batches`` accepted batches, atomically (a temporary file renamed over
the old one), so a crash while writing leaves the previous checkpoint intact. Format 2 holds:

- ``processed``: batch ids below it were accepted; ``version`` and ``weights`` of the live model and
  the CL strategy's state (EWC's Fisher, DER++'s logits);
- ``stream``: the stream reader's committed state (window, replay memory, regime starts);
- ``detector``: the detection engine's state as *plain* values (:mod:`raydrift.plain_state`:
  numbers, str, lists, dicts, tensors; River's detectors through
  :mod:`raydrift.detection.river_state`);
- ``summary``: the run summary so far (JSON text), the row counts of ``metrics.csv`` and
  ``batches.csv`` at that moment (``books``, ``metrics_rows``, ``batches_rows``), the tracking state.

It is read with ``torch.load(weights_only=True)``, which builds tensors and plain containers only and
calls nothing the file names; then every field is checked (types, and with an engine the whole
detector state) before anything uses it. Format 1 (raydrift before plain state: the detector state
was pickled bytes) is refused: such a run cannot be resumed, start a new one.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from raydrift.errors import UserError
from raydrift.plain_state import StateError, check_plain
from raydrift.weights import torch_load_plain

if TYPE_CHECKING:
    from raydrift.detection.engine import DetectionEngine

FORMAT = 2
CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "state.pt"
_FRESH = "start a new run without --resume"
_NUMBER = (int, float)
#: the fields of a format-2 checkpoint and their types (``bool`` is not an ``int`` here)
FIELDS: dict[str, tuple[type, ...]] = {
    "format": (int,),
    "processed": (int,),
    "version": (int,),
    "weights": (dict,),
    "strategy_state": (dict, type(None)),
    "stream": (dict,),
    "detector": (dict,),
    "summary": (str,),
    "books": (dict,),
    "metrics_rows": (int,),
    "batches_rows": (int,),
    "tracker": (dict, type(None)),
}
_BOOKS: dict[str, tuple[type, ...]] = {"samples": (int,), "monitor_seconds": _NUMBER, "last_value": _NUMBER}


def checkpoint_path(run_dir: str | os.PathLike[str]) -> Path:
    return Path(run_dir) / CHECKPOINT_DIR / STATE_FILE


def save_checkpoint(run_dir: str | os.PathLike[str], state: dict[str, Any]) -> Path:
    """Write ``state`` (tensors and plain values) to ``<run_dir>/checkpoint/state.pt`` atomically."""
    path = checkpoint_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    try:
        torch.save({"format": FORMAT, **state}, tmp)
        os.replace(tmp, path)
    except BaseException:  # a stop or a full disk mid-write: the previous checkpoint stands
        tmp.unlink(missing_ok=True)
        raise
    return path


def _check_fields(state: dict[str, Any], name: str) -> None:
    """Every field of :data:`FIELDS` is there, of its type, and nothing else is."""
    missing, extra = sorted(set(FIELDS) - set(state)), sorted(k for k in state if k not in FIELDS)
    if missing or extra:
        what = f"misses {missing}" if missing else f"has unexpected fields {[str(k)[:40] for k in extra]}"
        raise UserError(f"{name} {what}: it was not written by this raydrift, or was altered; {_FRESH}")
    for key, types in FIELDS.items():
        if type(state[key]) not in types:
            raise UserError(f"{name}: field '{key}' is a {type(state[key]).__name__}; it was altered; {_FRESH}")
    for key in ("processed", "version", "metrics_rows", "batches_rows"):
        if state[key] < 0:
            raise UserError(f"{name}: field '{key}' is negative; it was altered; {_FRESH}")
    weights = state["weights"]
    if not all(type(k) is str and type(v) in (torch.Tensor, torch.nn.Parameter) for k, v in weights.items()):
        raise UserError(f"{name}: field 'weights' is not a state_dict of named tensors; {_FRESH}")
    books = state["books"]
    if set(books) != set(_BOOKS) or not all(type(books[k]) in t for k, t in _BOOKS.items()):
        raise UserError(f"{name}: field 'books' is not {sorted(_BOOKS)} numbers; {_FRESH}")


def load_checkpoint(run_dir: str | os.PathLike[str], engine: DetectionEngine | None = None) -> dict[str, Any]:
    """The checkpoint of ``run_dir``, read weights-only and checked field by field.

    Parameters
    ----------
    run_dir
        The run directory (``raydrift run --resume``).
    engine : DetectionEngine, optional
        A fresh engine built for the resumed run's config: the checkpoint's detector state is loaded
        into it (every field checked), so a state it would refuse fails here, before Ray starts.

    Raises
    ------
    UserError
        One line: no run directory or checkpoint, a file that holds anything but tensors and plain
        values, a format other than 2, a missing or mistyped field, or a detector state the engine
        refuses.
    """
    path = checkpoint_path(run_dir)
    name = f"checkpoint '{path}'"
    if not Path(run_dir).is_dir():
        raise UserError(f"--resume '{run_dir}' is not a run directory: give the directory of an earlier run")
    if not path.is_file():
        raise UserError(
            f"--resume '{run_dir}' has no checkpoint ({CHECKPOINT_DIR}/{STATE_FILE}): the run stopped before "
            "its first checkpoint, or reliability.checkpoints was off; start it again without --resume"
        )
    state = torch_load_plain(path, "checkpoint", _FRESH)
    if not isinstance(state, dict) or type(state.get("format")) is not int:
        raise UserError(f"{name} is not a raydrift checkpoint; {_FRESH}")
    if state["format"] != FORMAT:
        old = " (an older raydrift's, whose detector state was pickled)" if state["format"] == 1 else ""
        raise UserError(f"{name} is of format {state['format']}{old}; this raydrift reads format {FORMAT} only: {_FRESH}")
    _check_fields(state, name)
    try:
        check_plain(state["detector"], "detector")
        if engine is not None:
            engine.load_state_dict(state["detector"])
    except StateError as exc:
        raise UserError(f"{name} has a detector state raydrift does not accept ({exc}); {_FRESH}") from None
    except (ValueError, TypeError, KeyError) as exc:
        raise UserError(f"{name} has a detector state that does not fit this run ({type(exc).__name__}: {str(exc)[:200]}); {_FRESH}") from None
    return state


def truncate_csv(path: str | os.PathLike[str], rows: int) -> None:
    """Keep the header and the first ``rows`` rows of a CSV file (rows written after a checkpoint are
    written again by the resumed run). A missing file is left missing."""
    p = Path(path)
    if not p.is_file():
        return
    with open(p, newline="", encoding="utf-8") as f:
        lines = list(csv.reader(f))
    keep = lines[: 1 + rows] if lines else []
    tmp = p.with_suffix(".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(keep)
    os.replace(tmp, p)
