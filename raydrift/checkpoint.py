"""Pipeline checkpoints: everything a run needs to continue after its driver died.

``<run_dir>/checkpoint/state.pt`` is written by the coordinator after each update and every
``reliability.checkpoint_every_batches`` accepted batches, atomically (a temporary file renamed over
the old one), so a crash while writing leaves the previous checkpoint intact. It holds:

- ``processed``: batch ids below it were accepted; ``version`` and ``weights`` of the live model and
  the CL strategy's state (EWC's Fisher, DER++'s logits);
- ``stream``: the stream reader's committed state (window, replay memory, regime starts);
- ``detector``: the detection engine's state (bytes, read back with the allowlist unpickler of
  :mod:`raydrift.safe_pickle`);
- ``summary``: the run summary so far (JSON text), the row counts of ``metrics.csv`` and
  ``batches.csv`` at that moment, the tracking run id.

It is read with ``torch.load(weights_only=True)``: only tensors and plain values are unpickled.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import torch

from raydrift.errors import UserError

FORMAT = 1
CHECKPOINT_DIR = "checkpoint"
STATE_FILE = "state.pt"


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


def load_checkpoint(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The checkpoint of ``run_dir`` (``weights_only=True``); a one-line :class:`UserError` if there is
    none or it cannot be read."""
    path = checkpoint_path(run_dir)
    if not Path(run_dir).is_dir():
        raise UserError(f"--resume '{run_dir}' is not a run directory: give the directory of an earlier run")
    if not path.is_file():
        raise UserError(
            f"--resume '{run_dir}' has no checkpoint ({CHECKPOINT_DIR}/{STATE_FILE}): the run stopped before "
            "its first checkpoint, or reliability.checkpoints was off; start it again without --resume"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure is a damaged or foreign file
        raise UserError(f"checkpoint '{path}' cannot be read ({type(exc).__name__}: {exc}); it is damaged") from exc
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise UserError(f"checkpoint '{path}' is not a raydrift checkpoint of format {FORMAT}")
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
