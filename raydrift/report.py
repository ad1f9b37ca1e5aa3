"""Run outputs: ``summary.json``, ``metrics.csv``, plots and the text summary of a run.

A run writes everything into its run directory ``runs/<name>-<timestamp>/``::

    config.yaml        the resolved configuration (written by the CLI)
    summary.json       the summary dict below (write_summary / load_summary)
    metrics.csv        one row per aggregation interval (MetricsWriter / read_metrics)
    updates.csv        export_csv: one row per update
    drift_events.csv   export_csv: one row per drift alarm
    accuracy_matrix.csv  export_csv: test accuracy, one row per model version, one column per regime
    cl_metrics.csv     export_csv: final average accuracy, forgetting, backward transfer
    profile.csv        export_csv: time per stage, when the summary has a "profile" section
    weights.pt         the final weights (raydrift.weights.save_weights)
    plots/*.png        make_plots: monitored_metric.png, accuracy_matrix.png, update_timing.png

``raydrift report RUN_DIR`` calls :func:`report`: it regenerates the plots and the CSV exports from
the files alone and prints :func:`format_summary`. Every reader here tolerates partial files (an interrupted or failed run
writes whatever it has): missing keys and ``null`` values are shown as ``-`` or skipped.

summary.json schema
-------------------
The coordinator builds this dict; ``(opt)`` marks keys that readers here use when present::

    {
     "run": {"name": str, "run_dir": str, "status": "completed" | "interrupted" | "failed",
             "started": ISO str, "finished": ISO str, "wall_seconds": float, "ray_address": str,
             "dashboard_url": str | null, "harness": str, "seed": int, "error": str | null},
     "stream": {"batches": int, "samples": int, "regimes_seen": [int],
                "regime_names": {regime_id: str},
                "regime_starts": [{"regime": int, "batch_id": int}]},
     "monitoring": {"num_monitors": int, "samples_per_second": float, "batches_per_second": float,
                    "eval_seconds_total": float, "monitor_versions": {"monitor-0": int, ...}},
     "detection": {"detector": str, "granularity": str, "metric": str, "higher_is_better": bool},
     "drift_events": [{"batch_id": int, "sample_index": int | null, "detector": str, "value": float,
                       "reference": float | null, "regime": int, "version": int}],
     "updates": [{"version": int, "drift_batch_id": int, "live_batch_id": int (opt), "strategy": str,
                  "waiting_seconds": float, "training_seconds": float, "broadcasting_seconds": float,
                  "total_seconds": float, "window_samples": int, "memory_samples": int,
                  "train_loss": float, "regime": int, "accuracy_before": float, "accuracy_after": float,
                  "test_accuracy_before": {regime_id: float}, "test_accuracy_after": {regime_id: float}}],
     "accuracy_matrix": {"regimes": [int],
                         "rows": [{"label": "initial" | "update-1" | ..., "version": int, "batch_id": int,
                                   "accuracy": [float | null, one per regime]}]},
     "cl_metrics": {"final_average_accuracy": float, "forgetting": float | null,
                    "backward_transfer": float | null},
     "tracking": {"backend": str, "run_id": str | null, "ui_hint": str | null} (opt)
    }

``live_batch_id`` is the first batch evaluated with the new weights; plots fall back to the
accuracy-matrix row of that version, then to ``drift_batch_id``. JSON turns the integer keys of
``regime_names`` / ``test_accuracy_*`` into strings; :func:`load_summary` turns them back into ints.
Non-finite floats (NaN, inf) are written as ``null``.

metrics.csv
-----------
One row per interval of ``drift_detection.interval`` batches: ``interval, first_batch, last_batch,
n_samples, value, regime, version`` (``value`` is the monitored metric aggregated as the detector saw
it, ``regime`` the regime of the last batch, ``version`` the weights version that evaluated it), then
one column per harness metric (e.g. ``accuracy, loss``: the interval means).

CSV exports (export_csv)
------------------------
Tables of summary.json for spreadsheets and pandas; empty cells are missing / ``null`` values.
Regime columns are named after the regimes (``stream.regime_names``, else ``regime-<id>``).

``updates.csv``
    One row per update: every scalar field of ``summary["updates"][i]``, starting with
    :data:`UPDATES_COLUMNS` and continuing with the other fields in the coordinator's order (e.g.
    ``collecting_seconds, train_steps, recovery_batches``). The per-regime dicts become one column
    per regime: ``test_accuracy_before.<regime>``, ``test_accuracy_after.<regime>``.
``drift_events.csv``
    One row per drift alarm: :data:`DRIFT_EVENTS_COLUMNS` (``batch_id, sample_index, detector,
    value, reference, regime, version``), then any other scalar field of the event.
``accuracy_matrix.csv``
    ``label, version, batch_id``, then one column per regime: the test accuracy of each model
    version (``initial``, ``update-1``, ...) on each regime's test set.
``cl_metrics.csv``
    One row: ``final_average_accuracy, forgetting, backward_transfer``.
``profile.csv``
    Only if the summary has a ``profile`` mapping of stage -> value: ``stage, value`` for a number,
    or ``stage`` followed by the scalar fields (e.g. ``seconds, count``) for a mapping.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from raydrift.errors import UserError

_log = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"
METRICS_FILE = "metrics.csv"
CONFIG_FILE = "config.yaml"
WEIGHTS_FILE = "weights.pt"
PLOTS_DIR = "plots"
UPDATES_FILE = "updates.csv"
DRIFT_EVENTS_FILE = "drift_events.csv"
ACCURACY_MATRIX_FILE = "accuracy_matrix.csv"
CL_METRICS_FILE = "cl_metrics.csv"
PROFILE_FILE = "profile.csv"
#: The CSV files written by :func:`export_csv` (``profile.csv`` only when the summary has a profile).
EXPORT_FILES: tuple[str, ...] = (
    UPDATES_FILE,
    DRIFT_EVENTS_FILE,
    ACCURACY_MATRIX_FILE,
    CL_METRICS_FILE,
    PROFILE_FILE,
)

#: The columns every metrics.csv row starts with; harness metric columns follow.
METRICS_COLUMNS: tuple[str, ...] = (
    "interval",
    "first_batch",
    "last_batch",
    "n_samples",
    "value",
    "regime",
    "version",
)
#: The columns updates.csv starts with (the summary's update fields, in the coordinator's order);
#: any other scalar field of an update follows.
UPDATES_COLUMNS: tuple[str, ...] = (
    "version",
    "drift_batch_id",
    "live_batch_id",
    "strategy",
    "waiting_seconds",
    "training_seconds",
    "broadcasting_seconds",
    "total_seconds",
    "window_samples",
    "memory_samples",
    "train_loss",
    "regime",
    "accuracy_before",
    "accuracy_after",
)
DRIFT_EVENTS_COLUMNS: tuple[str, ...] = (
    "batch_id",
    "sample_index",
    "detector",
    "value",
    "reference",
    "regime",
    "version",
)
CL_METRICS_COLUMNS: tuple[str, ...] = ("final_average_accuracy", "forgetting", "backward_transfer")

__all__ = [
    "EXPORT_FILES",
    "METRICS_COLUMNS",
    "MetricsWriter",
    "export_csv",
    "format_summary",
    "load_summary",
    "make_plots",
    "read_metrics",
    "report",
    "write_summary",
]


# ---------------------------------------------------------------------------------------------------
# summary.json


def _jsonable(obj: Any) -> Any:
    """``obj`` with numpy/torch scalars, tuples, Paths and non-finite floats made JSON-safe."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, str):
        return obj
    if isinstance(obj, int):
        return obj
    if isinstance(obj, float):
        # strict JSON has no NaN/inf; null is what the schema uses for "no value"
        return obj if math.isfinite(obj) else None
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    # numpy / torch scalars and arrays, without importing either
    tolist = getattr(obj, "tolist", None)
    if callable(tolist):
        return _jsonable(tolist())
    item = getattr(obj, "item", None)
    if callable(item):
        return _jsonable(item())
    return str(obj)


def _int_keys(d: dict[str, Any]) -> dict[Any, Any]:
    """JSON object hook: a dict whose keys are all integers in text form gets int keys back."""
    if d and all(_is_int_text(k) for k in d):
        return {int(k): v for k, v in d.items()}
    return d


def _is_int_text(s: str) -> bool:
    t = s[1:] if s[:1] == "-" else s
    return t.isdigit() and t.isascii()


def _atomic_write_text(path: Path, text: str) -> None:
    # temp file in the same directory: os.replace is atomic only within one filesystem
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def summary_to_json(summary: Mapping[str, Any]) -> str:
    """The summary as JSON text (NaN and numpy values made JSON-safe), as ``summary.json`` holds it."""
    return json.dumps(_jsonable(summary), indent=2, allow_nan=False) + "\n"


def summary_from_json(text: str) -> Any:
    """Parse :func:`summary_to_json` text, restoring integer dict keys (regime ids)."""
    return json.loads(text, object_hook=_int_keys)


def write_summary(run_dir: str | os.PathLike[str], summary: Mapping[str, Any]) -> Path:
    """Write ``summary`` to ``<run_dir>/summary.json`` atomically; returns the path.

    A reader (``raydrift report`` on a live run, or a crash mid-write) sees the old file or the new
    one, never half of one.
    """
    path = Path(run_dir) / SUMMARY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write_text(path, summary_to_json(summary))
    return path


def load_summary(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The summary dict of a run, with integer dict keys (regime ids) restored.

    Raises
    ------
    UserError
        If ``run_dir`` is not a directory, has no ``summary.json`` or the file is not valid JSON.
    """
    d = Path(run_dir)
    if not d.is_dir():
        raise UserError(
            f"run directory '{d}' not found: give a directory under runs/ (runs/<name>-<timestamp>)"
        )
    path = d / SUMMARY_FILE
    if not path.is_file():
        raise UserError(
            f"'{d}' has no {SUMMARY_FILE}: not a raydrift run directory, or the run never started"
        )
    try:
        data = summary_from_json(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(
            f"'{path}' cannot be read ({type(exc).__name__}: {exc}); the run may have crashed"
        ) from exc
    if not isinstance(data, dict):
        raise UserError(f"'{path}' holds a {type(data).__name__}, not a summary mapping")
    return data


# ---------------------------------------------------------------------------------------------------
# metrics.csv


class MetricsWriter:
    """Appends interval records to ``<run_dir>/metrics.csv``, one flushed line per :meth:`write`.

    Each row is flushed (and so survives Ctrl-C or a crash of the driver). The header is ``columns``
    when given, then any key of the first row not in it. A later row with a key the header lacks
    extends the header: the file is rewritten once with the new column (earlier rows get an empty
    cell), which is cheap since there is one row per interval. Missing keys are written as empty cells.

    Parameters
    ----------
    run_dir
        The run directory (created if needed).
    columns
        Columns known up front, in order (e.g. :data:`METRICS_COLUMNS` + the harness metric names).
    append
        Continue an existing ``metrics.csv`` (resume), keeping its header; otherwise start a new file.

    Examples
    --------
    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> with MetricsWriter(d, columns=["interval", "value"]) as w:
    ...     w.write({"interval": 0, "value": 0.9})
    >>> read_metrics(d)
    [{'interval': 0, 'value': 0.9}]
    """

    def __init__(
        self,
        run_dir: str | os.PathLike[str],
        columns: Sequence[str] | None = None,
        append: bool = False,
        filename: str = METRICS_FILE,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / filename
        self.columns: list[str] = list(dict.fromkeys(columns)) if columns else []
        self.rows_written = 0
        self._file: IO[str] | None = None
        self._header_written = False
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if append and self.path.is_file() and self.path.stat().st_size > 0:
            self._resume()
        else:
            self._file = open(self.path, "w", newline="", encoding="utf-8")  # noqa: SIM115 - kept open

    def _resume(self) -> None:
        with open(self.path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, [])
            n = sum(1 for _ in reader)
        self.columns = list(dict.fromkeys([*header, *self.columns]))
        self.rows_written = n
        self._header_written = bool(header)
        if header and header != self.columns:
            self._rewrite()
        self._file = open(self.path, "a", newline="", encoding="utf-8")  # noqa: SIM115

    # --- writing ------------------------------------------------------------------------------
    def write(self, row: Mapping[str, Any]) -> None:
        """Append one row and flush it to disk."""
        if self._file is None:
            raise ValueError("MetricsWriter is closed")
        new = [k for k in row if k not in self.columns]
        if new:
            self.columns.extend(new)
            if self._header_written:
                self._rewrite()
        if not self._header_written:
            csv.writer(self._file).writerow(self.columns)
            self._header_written = True
        writer = csv.DictWriter(self._file, fieldnames=self.columns, restval="")
        writer.writerow({k: _cell(v) for k, v in row.items()})
        self._file.flush()
        self.rows_written += 1

    def _rewrite(self) -> None:
        """Rewrite the file with the current (wider) header; atomically, then reopen for appending."""
        if self._file is not None:
            self._file.close()
        with open(self.path, newline="", encoding="utf-8") as f:
            old = list(csv.DictReader(f))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=self.columns, restval="", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(old)
        _atomic_write_text(self.path, buf.getvalue())
        self._file = open(self.path, "a", newline="", encoding="utf-8")  # noqa: SIM115

    def flush(self) -> None:
        """Flush what was written (rows are flushed as written; this also covers the header)."""
        if self._file is not None:
            if not self._header_written and self.columns:
                csv.writer(self._file).writerow(self.columns)
                self._header_written = True
            self._file.flush()

    def close(self) -> None:
        """Close the file (idempotent). A writer closed before any row leaves the header, if known."""
        if self._file is None:
            return
        if not self._header_written and self.columns:
            csv.writer(self._file).writerow(self.columns)
            self._header_written = True
        self._file.close()
        self._file = None

    @property
    def closed(self) -> bool:
        return self._file is None

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- state (resume / pickling) ------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"columns": list(self.columns), "rows_written": self.rows_written}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the header and count of a writer continuing the same file (see ``append``)."""
        self.columns = list(dict.fromkeys([*self.columns, *state.get("columns", [])]))
        self.rows_written = int(state.get("rows_written", self.rows_written))

    def __getstate__(self) -> dict[str, Any]:
        # a file handle does not pickle: the copy reopens the same file for appending
        return {"run_dir": str(self.run_dir), "state": self.state_dict(), "open": self._file is not None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.run_dir = Path(state["run_dir"])
        self.path = self.run_dir / METRICS_FILE
        self.columns = list(state["state"]["columns"])
        self.rows_written = int(state["state"]["rows_written"])
        self._file = None
        self._header_written = self.path.is_file() and self.path.stat().st_size > 0
        if state["open"]:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            if self._header_written:
                self._resume()
            else:
                self._file = open(self.path, "w", newline="", encoding="utf-8")  # noqa: SIM115


def _cell(v: Any) -> Any:
    if v is None:
        return ""
    if isinstance(v, float) and not math.isfinite(v):
        return "" if math.isnan(v) else str(v)
    item = getattr(v, "item", None)  # numpy / torch scalars
    if callable(item) and not isinstance(v, int | float | str):
        try:
            return item()
        except (ValueError, RuntimeError):
            return str(v)
    return v


def _parse_cell(text: str | None) -> Any:
    if text is None or text == "":
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def read_metrics(run_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The rows of ``<run_dir>/metrics.csv`` with numbers parsed (empty cells -> ``None``).

    A missing file gives ``[]``; a last line cut short by a crash is kept with ``None`` for the
    missing cells.
    """
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return [
            {k: _parse_cell(v) for k, v in row.items() if k is not None}
            for row in csv.DictReader(f)
            if any(v not in (None, "") for v in row.values())
        ]


# ---------------------------------------------------------------------------------------------------
# CSV exports


def _regime_labels(summary: Mapping[str, Any], regimes: Sequence[Any]) -> list[str]:
    """Column names for ``regimes``: their names, made unique with the id where two share one."""
    names = [_regime_name(summary, g) for g in regimes]
    return [n if names.count(n) == 1 else f"{n} ({g})" for n, g in zip(names, regimes, strict=True)]


def _is_scalar(v: Any) -> bool:
    return (
        v is None
        or isinstance(v, str | int | float | bool)
        or (callable(getattr(v, "item", None)) and getattr(v, "ndim", 0) == 0)
    )


def _flat_row(
    d: Mapping[str, Any], summary: Mapping[str, Any], regime_dicts: Sequence[str] = ()
) -> dict[str, Any]:
    """The scalar fields of ``d``; a dict of scalars becomes ``field.<key>`` columns (lists are skipped).

    For the fields named in ``regime_dicts`` the keys are regime ids, written as regime names.
    """
    out: dict[str, Any] = {}
    for key, value in d.items():
        if _is_scalar(value):
            out[str(key)] = value
        elif isinstance(value, Mapping):
            keys = list(value)
            labels = _regime_labels(summary, keys) if key in regime_dicts else [str(k) for k in keys]
            for k, label in zip(keys, labels, strict=True):
                if _is_scalar(value[k]):
                    out[f"{key}.{label}"] = value[k]
    return out


def _write_csv(path: Path, columns: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> Path:
    """Write ``rows`` under the header ``columns`` plus any further key, in order of appearance."""
    rows = list(rows)
    header = list(dict.fromkeys([*columns, *(k for r in rows for k in r)]))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=header, restval="", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: _cell(v) for k, v in r.items()})
    _atomic_write_text(path, buf.getvalue())
    return path


def export_csv(run_dir: str | os.PathLike[str], summary: Mapping[str, Any]) -> list[Path]:
    """Write the summary's per-update, per-drift, accuracy-matrix and profile tables as CSV files.

    ``updates.csv``, ``drift_events.csv``, ``accuracy_matrix.csv`` and ``cl_metrics.csv`` are always
    written (a header alone when the run has none); ``profile.csv`` only when the summary has a
    ``profile`` section. Columns are described in the module docstring. ``metrics.csv`` (one row
    per interval) is written during the run by :class:`MetricsWriter` and is not touched. Each file
    is replaced atomically. Returns the files written.
    """
    d = Path(run_dir)
    d.mkdir(parents=True, exist_ok=True)
    written = []

    updates = [u for u in summary.get("updates") or [] if isinstance(u, Mapping)]
    written.append(
        _write_csv(
            d / UPDATES_FILE,
            UPDATES_COLUMNS,
            (_flat_row(u, summary, ("test_accuracy_before", "test_accuracy_after")) for u in updates),
        )
    )

    events = [e for e in summary.get("drift_events") or [] if isinstance(e, Mapping)]
    written.append(
        _write_csv(d / DRIFT_EVENTS_FILE, DRIFT_EVENTS_COLUMNS, (_flat_row(e, summary) for e in events))
    )

    am = summary.get("accuracy_matrix") or {}
    regimes = list(am.get("regimes") or [])
    labels = _regime_labels(summary, regimes)
    rows = []
    for r in am.get("rows") or []:
        if not isinstance(r, Mapping):
            continue
        acc = list(r.get("accuracy") or [])
        acc += [None] * (len(regimes) - len(acc))
        rows.append(
            {"label": r.get("label"), "version": r.get("version"), "batch_id": r.get("batch_id"),
             **dict(zip(labels, acc[: len(regimes)], strict=True))}
        )  # fmt: skip
    written.append(_write_csv(d / ACCURACY_MATRIX_FILE, ["label", "version", "batch_id", *labels], rows))

    cl = summary.get("cl_metrics")
    cl_rows = [_flat_row(cl, summary)] if isinstance(cl, Mapping) and cl else []
    written.append(_write_csv(d / CL_METRICS_FILE, CL_METRICS_COLUMNS, cl_rows))

    profile = summary.get("profile")
    if isinstance(profile, Mapping):
        prows = [
            {"stage": stage, **(_flat_row(v, summary) if isinstance(v, Mapping) else {"value": v})}
            for stage, v in profile.items()
            if isinstance(v, Mapping) or _is_scalar(v)
        ]
        written.append(_write_csv(d / PROFILE_FILE, ["stage"], prows))
    return written


# ---------------------------------------------------------------------------------------------------
# plots


def _num(x: Any) -> float | None:
    """``x`` as a finite float, else None (missing, null, text)."""
    if isinstance(x, bool) or x is None:
        return None
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _regime_name(summary: Mapping[str, Any], regime: Any) -> str:
    names = (summary.get("stream") or {}).get("regime_names") or {}
    name = names.get(regime)
    if name is None and regime is not None:
        name = names.get(str(regime))
    if name is None:
        try:
            name = names.get(int(regime))
        except (TypeError, ValueError):
            name = None
    return str(name) if name is not None else f"regime-{regime}"


def _live_batches(summary: Mapping[str, Any]) -> list[tuple[int, float]]:
    """``(version, batch)`` of each update: the first batch evaluated with the new weights."""
    rows = (summary.get("accuracy_matrix") or {}).get("rows") or []
    row_batch = {r.get("version"): _num(r.get("batch_id")) for r in rows if isinstance(r, Mapping)}
    out = []
    for u in summary.get("updates") or []:
        if not isinstance(u, Mapping):
            continue
        b = _num(u.get("live_batch_id"))
        if b is None:
            b = row_batch.get(u.get("version"))
        if b is None:
            b = _num(u.get("drift_batch_id"))
        if b is not None:
            out.append((int(u.get("version") or 0), b))
    return out


def _figure(width: float, height: float) -> Any:
    # A Figure with an explicit Agg canvas: no pyplot, so no global backend switch, no GUI, and no
    # figure registry that leaks memory across calls; safe in a headless driver and in threads.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _shade_regimes(ax: Any, summary: Mapping[str, Any], x_end: float) -> None:
    """Regime spans on ``ax``, alternately shaded, named at the top."""
    stream = summary.get("stream") or {}
    starts = sorted(
        (
            (_num(s.get("batch_id")), s.get("regime"))
            for s in stream.get("regime_starts") or []
            if isinstance(s, Mapping) and _num(s.get("batch_id")) is not None
        ),
        key=lambda t: t[0] or 0.0,
    )
    for i, (start, regime) in enumerate(starts):
        assert start is not None
        end = starts[i + 1][0] if i + 1 < len(starts) else x_end
        assert end is not None
        ax.axvspan(start, end, color="0.85" if i % 2 else "0.94", zorder=0, lw=0)
        if i > 0:
            ax.axvline(start, color="0.45", lw=0.8, zorder=1)
        ax.text(
            (start + end) / 2 if end > start else start,
            1.01,
            _regime_name(summary, regime),
            transform=ax.get_xaxis_transform(),
            ha="center",
            va="bottom",
            fontsize=8,
            color="0.25",
            clip_on=False,
        )


def _plot_monitored_metric(
    path: Path, summary: Mapping[str, Any], metrics: Sequence[Mapping[str, Any]]
) -> bool:
    points: list[tuple[float, float]] = []
    for r in metrics:
        y = _num(r.get("value"))
        ends = [b for b in (_num(r.get("first_batch")), _num(r.get("last_batch"))) if b is not None]
        if y is None or not ends:
            continue
        # an interval's value is drawn at its centre batch
        points.append((sum(ends) / len(ends), y))
    if not points:
        return False
    points.sort()
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    detection = summary.get("detection") or {}
    metric = detection.get("metric") or "monitored metric"
    stream = summary.get("stream") or {}
    x_end = max(
        _num(stream.get("batches")) or 0.0, max(_num(r.get("last_batch")) or 0.0 for r in metrics) + 1
    )

    fig = _figure(11, 4.5)
    ax = fig.add_subplot()
    _shade_regimes(ax, summary, x_end)
    ax.plot(xs, ys, color="tab:blue", lw=1.4, marker=".", ms=4, label=f"{metric} per interval", zorder=3)

    import numpy as np

    drift_x = [b for e in summary.get("drift_events") or [] if (b := _num(e.get("batch_id"))) is not None]
    if drift_x:
        # markers sit on the curve: an event's own value may be a per-sample value (0/1), not an interval mean
        ax.scatter(
            drift_x, np.interp(drift_x, xs, ys), color="red", marker="v", s=60, zorder=5, label="drift alarm"
        )
    for status, color, marker in (("failed", "black", "X"), ("rejected", "tab:orange", "P")):
        bad = [
            b
            for u in summary.get("rejected_updates") or []
            if isinstance(u, Mapping) and u.get("status") == status
            and (b := _num(u.get("window_last_batch_id"))) is not None
        ]
        if bad:
            ax.scatter(
                bad, np.interp(bad, xs, ys), color=color, marker=marker, s=70, zorder=6,
                label=f"update {status} (old weights kept)",
            )
    for i, (version, b) in enumerate(_live_batches(summary)):
        ax.axvline(
            b, color="tab:green", ls="--", lw=1.3, zorder=4, label="new weights live" if i == 0 else None
        )
        ax.text(b, 0.02, f" v{version}", transform=ax.get_xaxis_transform(), color="tab:green", fontsize=8)
    ax.set_xlim(min(0.0, xs[0]), x_end)
    ax.set_xlabel("batch id")
    ax.set_ylabel(metric)
    direction = detection.get("higher_is_better")
    note = "" if direction is None else (" (higher is better)" if direction else " (lower is better)")
    ax.set_title(f"Monitored {metric}{note}", pad=16)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.savefig(path, dpi=110)
    return True


def _matrix(summary: Mapping[str, Any]) -> tuple[list[str], list[str], list[list[float | None]]] | None:
    am = summary.get("accuracy_matrix") or {}
    regimes = list(am.get("regimes") or [])
    rows = [r for r in am.get("rows") or [] if isinstance(r, Mapping)]
    if not regimes or not rows:
        return None
    labels = [str(r.get("label") or f"v{r.get('version')}") for r in rows]
    values = []
    for r in rows:
        acc = list(r.get("accuracy") or [])
        acc += [None] * (len(regimes) - len(acc))
        values.append([_num(a) for a in acc[: len(regimes)]])
    return labels, [_regime_name(summary, g) for g in regimes], values


def _plot_accuracy_matrix(path: Path, summary: Mapping[str, Any]) -> bool:
    m = _matrix(summary)
    if m is None:
        return False
    labels, cols, values = m
    import numpy as np

    arr = np.array([[np.nan if v is None else v for v in row] for row in values], dtype=float)
    finite = arr[np.isfinite(arr)]
    if finite.size == 0:
        return False
    vmin, vmax = (
        (0.0, 1.0) if finite.min() >= 0 and finite.max() <= 1 else (float(finite.min()), float(finite.max()))
    )
    fig = _figure(max(4.5, 1.3 * len(cols) + 2.5), max(2.5, 0.45 * len(labels) + 1.6))
    ax = fig.add_subplot()
    from matplotlib import colormaps

    cmap = colormaps["viridis"].with_extremes(bad="0.85")  # missing cells (regime not tested yet) in grey
    img = ax.imshow(np.ma.masked_invalid(arr), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    for i in range(arr.shape[0]):
        for j in range(arr.shape[1]):
            v = arr[i, j]
            text = "-" if not np.isfinite(v) else f"{v:.3f}"
            dark = np.isfinite(v) and (v - vmin) / ((vmax - vmin) or 1.0) < 0.6
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if dark else "black")
    ax.set_xticks(
        range(len(cols)), cols, rotation=30 if len(cols) > 4 else 0, ha="right" if len(cols) > 4 else "center"
    )
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("test set (regime)")
    ax.set_ylabel("model")
    ax.set_title("Test accuracy per regime")
    fig.colorbar(img, ax=ax, shrink=0.9)
    fig.savefig(path, dpi=110)
    return True


_PHASES = (("waiting_seconds", "waiting", "0.6"), ("training_seconds", "training", "tab:blue"),
           ("broadcasting_seconds", "broadcasting", "tab:orange"))  # fmt: skip


def _plot_update_timing(path: Path, summary: Mapping[str, Any]) -> bool:
    updates = [u for u in summary.get("updates") or [] if isinstance(u, Mapping)]
    if not updates or all(all(_num(u.get(k)) is None for k, _, _ in _PHASES) for u in updates):
        return False
    labels = [f"v{u.get('version', i + 1)}\n@{u.get('drift_batch_id', '?')}" for i, u in enumerate(updates)]
    fig = _figure(max(4.5, 0.7 * len(updates) + 2.5), 4)
    ax = fig.add_subplot()
    bottom = [0.0] * len(updates)
    for key, name, color in _PHASES:
        h = [_num(u.get(key)) or 0.0 for u in updates]
        ax.bar(range(len(updates)), h, bottom=bottom, color=color, label=name, width=0.6)
        bottom = [b + x for b, x in zip(bottom, h, strict=True)]
    ax.set_xticks(range(len(updates)), labels, fontsize=8)
    ax.set_xlabel("update (version @ drift batch)")
    ax.set_ylabel("seconds")
    ax.set_title("Update timing: drift alarm to new weights live")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    return True


def make_plots(
    run_dir: str | os.PathLike[str],
    summary: Mapping[str, Any] | None = None,
    metrics: Sequence[Mapping[str, Any]] | None = None,
) -> list[Path]:
    """Write the run's plots to ``<run_dir>/plots/``; returns the files written.

    ``monitored_metric.png`` (metric per interval, regime spans, drift alarms, updates),
    ``accuracy_matrix.png`` (test accuracy of each model version on each regime) and
    ``update_timing.png`` (waiting / training / broadcasting seconds per update). A plot without
    data (no metrics rows, no updates, ...) is skipped. ``summary`` / ``metrics`` default to the
    files in ``run_dir`` (missing files count as empty).
    """
    d = Path(run_dir)
    if summary is None:
        try:
            summary = load_summary(d)
        except UserError:
            summary = {}
    if metrics is None:
        metrics = read_metrics(d)
    out_dir = d / PLOTS_DIR
    jobs = (
        ("monitored_metric.png", lambda p: _plot_monitored_metric(p, summary, metrics)),
        ("accuracy_matrix.png", lambda p: _plot_accuracy_matrix(p, summary)),
        ("update_timing.png", lambda p: _plot_update_timing(p, summary)),
    )
    written = []
    for name, plot in jobs:
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / name
        try:
            if plot(path):
                written.append(path)
        except Exception as exc:  # noqa: BLE001 - a plot must never take the run's results down with it
            _log.warning("plot %s skipped: %s: %s", name, type(exc).__name__, exc)
    return written


# ---------------------------------------------------------------------------------------------------
# text summary


def _f(x: Any, spec: str = ".3f", suffix: str = "") -> str:
    v = _num(x)
    return "-" if v is None else f"{v:{spec}}{suffix}"


def _i(x: Any) -> str:
    v = _num(x)
    return "-" if v is None else f"{int(v):,}"


def _lookup(d: Any, key: Any) -> Any:
    if not isinstance(d, Mapping):
        return None
    if key in d:
        return d[key]
    return d.get(str(key))


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], indent: str = "  ") -> list[str]:
    rows = [list(r) for r in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    fmt = indent + "  ".join(f"{{:{'<' if i == 0 else '>'}{w}}}" for i, w in enumerate(widths))
    return [fmt.format(*header), *(fmt.format(*r) for r in rows)]


def _short(name: str, width: int = 14) -> str:
    return name if len(name) <= width else name[: width - 1] + "~"


def format_summary(summary: Mapping[str, Any]) -> str:
    """The text summary of a run (printed at the end of ``raydrift run`` and by ``raydrift report``).

    Missing sections (an interrupted run) are left out or shown as ``-``.
    """
    lines: list[str] = []
    for section in (_header_lines, _stream_lines, _event_lines, _update_lines, _not_promoted_lines,
                    _adaptation_lines, _matrix_lines, _file_lines):
        lines += section(summary)
    return "\n".join(lines)


def _mappings(summary: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    return [e for e in summary.get(key) or [] if isinstance(e, Mapping)]


def _metric(summary: Mapping[str, Any]) -> str:
    return str((summary.get("detection") or {}).get("metric") or "metric")


def _header_lines(summary: Mapping[str, Any]) -> list[str]:
    run = summary.get("run") or {}
    status = str(run.get("status") or "unknown")
    failed = [u for u in _mappings(summary, "rejected_updates") if u.get("status") == "failed"]
    note = f" ({len(failed)} update(s) FAILED)" if failed else ""
    stopped = f" by {run['signal']}" if run.get("signal") and status == "interrupted" else ""
    title = f"raydrift run '{run.get('name', '?')}': {status.upper()}{stopped}{note}"
    lines = [title, "=" * len(title)]
    if run.get("error"):
        # the first line of the error only: a full traceback belongs in the log, not the summary
        first = str(run["error"]).strip().splitlines()[0] if str(run["error"]).strip() else "?"
        lines.append(f"error: {first[:200]}")
    lines.append(
        f"harness {run.get('harness', '-')}  seed {run.get('seed', '-')}  "
        f"wall time {_f(run.get('wall_seconds'), '.1f', ' s')}  "
        f"({run.get('started') or '-'} -> {run.get('finished') or '-'})"
    )
    if run.get("ray_address") or run.get("dashboard_url"):
        lines.append(f"ray {run.get('ray_address') or '-'}  dashboard {run.get('dashboard_url') or '-'}")
    return lines


def _stream_lines(summary: Mapping[str, Any]) -> list[str]:
    stream = summary.get("stream") or {}
    mon = summary.get("monitoring") or {}
    det = summary.get("detection") or {}
    regimes = stream.get("regimes_seen") or []
    lines = [
        "",
        f"stream      {_i(stream.get('batches'))} batches, {_i(stream.get('samples'))} samples, "
        f"regimes seen: {', '.join(_regime_name(summary, g) for g in regimes) or '-'}",
    ]
    if mon:
        lines.append(
            f"monitoring  {_i(mon.get('num_monitors'))} monitor(s), "
            f"{_f(mon.get('samples_per_second'), ',.0f')} samples/s, "
            f"{_f(mon.get('batches_per_second'), ',.1f')} batches/s, "
            f"eval {_f(mon.get('eval_seconds_total'), '.1f', ' s')}"
        )
    if det:
        hib = det.get("higher_is_better")
        arrow = "" if hib is None else (", higher is better" if hib else ", lower is better")
        lines.append(
            f"detection   {det.get('detector', '-')} on {_metric(summary)} "
            f"({det.get('granularity', '-')} granularity{arrow})"
        )
    return lines


def _event_lines(summary: Mapping[str, Any]) -> list[str]:
    events = _mappings(summary, "drift_events")
    lines = ["", f"drift events: {len(events)}"]
    if events:
        lines += _table(
            ["batch", "regime", "detector", "value", "reference", "weights"],
            (
                [
                    _i(e.get("batch_id")),
                    _regime_name(summary, e.get("regime")) if e.get("regime") is not None else "-",
                    str(e.get("detector") or "-"),
                    _f(e.get("value"), ".4g"),
                    _f(e.get("reference"), ".4g"),
                    f"v{e['version']}" if e.get("version") is not None else "-",
                ]
                for e in events
            ),
        )
    return lines


def _update_lines(summary: Mapping[str, Any]) -> list[str]:
    updates = _mappings(summary, "updates")
    lines = ["", f"updates: {len(updates)}"]
    if not updates:
        return lines
    metric = _metric(summary)
    rows = []
    for u in updates:
        regime = u.get("regime")
        k = u.get("followup") or 0
        rows.append(
            [
                f"v{u.get('version', '?')}",
                _i(u.get("drift_batch_id")),
                str(u.get("strategy") or "-"),
                _f(u.get("waiting_seconds"), ".2f"),
                _f(u.get("train_queue_seconds"), ".2f"),
                _f(u.get("training_seconds"), ".2f"),
                _f(u.get("train_handoff_seconds"), ".2f"),
                _f(u.get("broadcasting_seconds"), ".2f"),
                f"{_f(u.get('accuracy_before'))} -> {_f(u.get('accuracy_after'))}",
                f"#{k}" if k else "-",
                f"{_f(_lookup(u.get('test_accuracy_before'), regime))} -> "
                f"{_f(_lookup(u.get('test_accuracy_after'), regime))}",
                _short(_regime_name(summary, regime)) if regime is not None else "-",
            ]
        )
    lines += _table(
        ["version", "batch", "strategy", "wait", "queue", "train", "hand-off", "bcast", f"stream {_short(metric)}",
         "follow-up", "test acc", "regime"],
        rows,
    )
    lines += [
        f"  stream {_short(metric)}: the monitored {metric} at the alarm -> on the first interval with the new weights",
        "  follow-up: #k, the drift's k-th extra update (still degraded); test acc: that regime's held-out test set",
        "  seconds: wait, the update's data from the stream reader; train, the update, of which queue (the job",
        "  waiting for a standing worker) and hand-off (its result back to the driver) are parts ('-' in-process);",
        "  bcast, the new weights to every monitor",
    ]
    return lines


def _adaptation_lines(summary: Mapping[str, Any]) -> list[str]:
    ads = _mappings(summary, "adaptations")
    if not ads:
        return []
    metric = _metric(summary)
    recovered = [a for a in ads if a.get("recovered")]
    lines = ["", f"adaptation: {len(recovered)} of {len(ads)} drift(s) recovered "
             f"(monitored {metric} back at its pre-drift level)"]
    rows = []
    for a in ads:
        rec = a.get("recovered")
        rows.append([
            _i(a.get("drift_batch_id")),
            _short(_regime_name(summary, a.get("regime"))) if a.get("regime") is not None else "-",
            _i(a.get("updates")),
            _f(a.get("pre_drift_value")),
            _f(a.get("value_at_alarm")),
            _f((a.get("checks") or [None])[-1]),
            "yes" if rec else "no",
            "-" if not rec else f"{_i(a.get('recovery_batches'))} / {_i(a.get('recovery_samples'))}",
            "-" if not rec else _f(a.get("recovery_seconds"), ".1f"),
            f"{_f(a.get('test_accuracy_before'))} -> {_f(a.get('test_accuracy_after'))}",
        ])
    return lines + _table(
        ["drift", "regime", "updates", "before", "alarm", "last check", "recovered", "batches / samples",
         "seconds", "test acc"],
        rows,
    )


def _not_promoted_lines(summary: Mapping[str, Any]) -> list[str]:
    not_promoted = _mappings(summary, "rejected_updates")
    if not not_promoted:
        return []
    failed = [u for u in not_promoted if u.get("status") == "failed"]
    lines = ["", f"updates not promoted: {len(not_promoted)} ({len(failed)} failed, "
             f"{len(not_promoted) - len(failed)} rejected by the gate)"]
    return lines + _table(
        ["batch", "status", "kept", "reason"],
        (
            [
                _i(u.get("drift_batch_id")),
                str(u.get("status") or "-"),
                f"v{u['version_kept']}" if u.get("version_kept") is not None else "-",
                str(u.get("reason") or "-")[:120],
            ]
            for u in not_promoted
        ),
    )


def _matrix_lines(summary: Mapping[str, Any]) -> list[str]:
    lines: list[str] = []
    m = _matrix(summary)
    if m is not None:
        labels, cols, values = m
        lines += ["", "test accuracy per regime (rows: model versions)"]
        lines += _table(
            ["model", *(_short(c) for c in cols)],
            ([lab, *(_f(v) for v in row)] for lab, row in zip(labels, values, strict=True)),
        )
    metric = _metric(summary)
    mm = (summary.get("metric_matrices") or {}).get(metric)
    if metric != "accuracy" and isinstance(mm, Mapping) and mm.get("rows"):
        am = summary.get("accuracy_matrix") or {}
        cols = [_regime_name(summary, r) for r in am.get("regimes") or []]
        hib = mm.get("higher_is_better", True)
        lines += ["", f"test {metric} per regime ({'higher' if hib else 'lower'} is better; rows: model versions)"]
        lines += _table(
            ["model", *(_short(c) for c in cols)],
            ([str(r.get("label")), *(_f(v) for v in r.get("accuracy") or [])] for r in mm["rows"]),
        )
        mcl = mm.get("cl_metrics") or {}
        if mcl:
            lines.append(
                f"final average {metric} {_f(mcl.get('final_average_accuracy'))}   forgetting {_f(mcl.get('forgetting'))}"
                f"   backward transfer {_f(mcl.get('backward_transfer'), '+.3f')}   (forgetting > 0: worse)"
            )
    cl = summary.get("cl_metrics") or {}
    if cl:
        lines += [
            "",
            f"final average accuracy {_f(cl.get('final_average_accuracy'))}   "
            f"forgetting {_f(cl.get('forgetting'))}   backward transfer {_f(cl.get('backward_transfer'), '+.3f')}",
        ]
    return lines


def _file_lines(summary: Mapping[str, Any]) -> list[str]:
    run = summary.get("run") or {}
    tracking = summary.get("tracking") or {}
    run_dir = run.get("run_dir")
    lines = ["", f"run dir  {run_dir or '-'}"]
    if run_dir:
        d = Path(run_dir)
        present = [
            n for n in (SUMMARY_FILE, METRICS_FILE, *EXPORT_FILES, CONFIG_FILE, WEIGHTS_FILE) if (d / n).exists()
        ]
        plots = sorted(p.name for p in (d / PLOTS_DIR).glob("*.png")) if (d / PLOTS_DIR).is_dir() else []
        if present:
            lines.append(f"files    {', '.join(present)}")
        if plots:
            lines.append(f"plots    {PLOTS_DIR}/{{{', '.join(plots)}}}")
    if tracking.get("run_id") or tracking.get("ui_hint"):
        lines.append(f"tracking {tracking.get('backend', '-')} run {tracking.get('run_id') or '-'}")
        if tracking.get("ui_hint"):
            lines.append(f"         open with: {tracking['ui_hint']}")
    return lines


def report(run_dir: str | os.PathLike[str], plots: bool = True) -> str:
    """Regenerate the plots and CSV exports of a run from its files and return its text summary.

    Raises
    ------
    UserError
        If ``run_dir`` is missing or holds no readable ``summary.json``.
    """
    from raydrift.pipeline.records import RunSummary

    raw = load_summary(run_dir)
    try:  # through the typed records: a summary of an older version gets this version's schema
        typed = RunSummary.from_dict(raw)
    except (TypeError, ValueError, AttributeError) as exc:
        raise UserError(
            f"'{Path(run_dir) / SUMMARY_FILE}' is not a raydrift run summary ({type(exc).__name__}: {exc})"
        ) from exc
    # the summary may have been written elsewhere (copied run dir): point at where it is now
    typed.run.run_dir = str(Path(run_dir))
    summary = typed.to_dict()
    try:
        metrics = read_metrics(run_dir)
    except (OSError, csv.Error, UnicodeDecodeError) as exc:
        raise UserError(
            f"'{Path(run_dir) / METRICS_FILE}' cannot be read ({type(exc).__name__}: {exc})"
        ) from exc
    if plots:
        make_plots(run_dir, summary, metrics)
    try:
        export_csv(run_dir, summary)
    except OSError as exc:
        raise UserError(
            f"cannot write the CSV exports into '{run_dir}' ({type(exc).__name__}: {exc}): "
            "check that the run directory is writable"
        ) from exc
    return format_summary(summary)
