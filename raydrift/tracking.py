"""Experiment tracking: MLflow, Weights & Biases, or none.

The coordinator talks to a :class:`Tracker`: ``start`` once with the run name and the flattened
config, ``log_metrics`` per interval / update, ``log_artifacts`` with the run directory at the end,
then ``finish``. The base class is the ``none`` backend: every method is a no-op.

Tracking is a convenience on top of the run directory, never a dependency of the run: a tracker
never raises. ``metrics.csv``, the CSV exports and ``summary.json`` are written by
:mod:`raydrift.report` independently of it.

MLflow: an unreachable store falls back to a local one
--------------------------------------------------------
:func:`make_tracker` gives :class:`MLflowTracker` a fallback store,
``sqlite:///<runs_dir>/mlflow-fallback.db``. If the configured store cannot be reached or created at
start, or a later call fails (server down, disk full, database gone), the tracker logs ONE warning
naming the store, the error and the fallback, creates a run of the same name in the fallback store
and goes on there: params, tags and every metric value logged so far are replayed into it, and
everything after goes there too. Nothing is lost, and the whole run is in one place.

Replay needs what was sent before the failure. Rather than keep it in memory (a run lasts days: the
driver's memory must not grow with the stream) or write everything twice, each call is first
appended as one JSON line to a journal, ``<runs_dir>/.mlflow-journal/<run name>.jsonl`` (about 25
bytes per metric value, no fsync; ~0.1 ms per call against ~18 ms for the sqlite ``log_batch``
itself, measured on a 2-core machine), then sent to the store. On a failure
the journal is replayed into the fallback run, in batches of 1,000 values, and then deleted. It is
also deleted when a run finishes ``completed``; an interrupted or failed run keeps it, so that a
resumed run (:meth:`MLflowTracker.load_state_dict`, then ``start`` with the same run name) can still
replay the whole run. A resumed run that had fallen back stays in the fallback store.

If the fallback fails too, or there is none (an ``MLflowTracker`` built without ``fallback_dir``),
the tracker logs one warning and becomes a no-op, as does :class:`WandbTracker` on any failure.

Weights & Biases
----------------
:class:`WandbTracker` logs to W&B online, or offline without any network: ``WANDB_MODE=offline``
(or ``logging.wandb_mode: offline``) writes the run to ``<runs_dir>/wandb/offline-run-*/`` (or under
``WANDB_DIR``), which ``wandb sync <that folder>`` uploads later. Metrics are plotted against a
``batch_id`` step metric rather than W&B's own ``step``: W&B drops values logged at a step lower than
the last one, and a drift alarm is logged at its batch after later intervals were.

MLflow and wandb are imported lazily (in ``start``): importing them takes seconds and
``import raydrift`` must stay fast.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import socket
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlparse

from raydrift.config import LoggingConfig

_log = logging.getLogger(__name__)

#: Longest param value sent to MLflow (MLflow 3 allows 6000; old servers 500).
MAX_PARAM_LENGTH = 500
#: MLflow's per-``log_batch`` limits.
_MAX_PARAMS_PER_BATCH = 100
_MAX_METRICS_PER_BATCH = 1000

#: HTTP limits used while talking to a remote tracking server, unless the user set these variables:
#: MLflow's defaults (7 retries with exponential backoff, 120 s timeout) would stall a run for
#: minutes on an unreachable server before the tracker could fall back.
HTTP_LIMITS_ENV: dict[str, str] = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
#: Seconds to wait for a TCP connection to a remote tracking server at start.
CONNECT_TIMEOUT_S = 3.0

#: The local MLflow store used when the configured one fails: ``<runs_dir>/<this>``.
FALLBACK_DB = "mlflow-fallback.db"
#: Where :class:`MLflowTracker` journals what it sent, for a replay into the fallback store.
JOURNAL_DIR = ".mlflow-journal"

#: Seconds ``wandb.init`` may take to start (W&B's default is 90), unless ``WANDB_INIT_TIMEOUT`` is set.
WANDB_INIT_TIMEOUT_S = 30.0
#: The W&B metric every logged metric is plotted against (the batch id of ``log_metrics``' step).
WANDB_STEP_METRIC = "batch_id"

# run status (raydrift's words) -> MLflow RunStatus name
_STATUS = {"completed": "FINISHED", "interrupted": "KILLED", "failed": "FAILED"}


class Tracker:
    """A tracking backend; this base class is the ``none`` backend (every method does nothing).

    Attributes
    ----------
    run_id
        The backend's id of the run, once started (``None`` for the ``none`` backend).
    ui_hint
        How to look at the run (a command or a URL), or ``None``.
    """

    backend: str = "none"

    def __init__(self) -> None:
        self.run_id: str | None = None
        self.ui_hint: str | None = None

    def start(self, run_name: str, params: Mapping[str, Any]) -> None:
        """Open a run named ``run_name`` and record ``params`` (nested dicts are flattened)."""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Record ``metrics`` at ``step`` (the batch id). Non-numeric and ``None`` values are dropped."""

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Attach ``tags`` to the run."""

    def log_artifacts(self, run_dir: str | os.PathLike[str]) -> None:
        """Upload the run directory's outputs (summary.json, metrics.csv, config.yaml, plots/)."""

    def finish(self, status: str = "completed") -> None:
        """Close the run with ``status``: ``completed``, ``interrupted`` or ``failed``."""

    @property
    def active(self) -> bool:
        """Whether calls reach a backend."""
        return False

    def info(self) -> dict[str, Any]:
        """``{"backend", "run_id", "ui_hint"}`` for the run summary."""
        return {"backend": self.backend, "run_id": self.run_id, "ui_hint": self.ui_hint}

    def state_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "ui_hint": self.ui_hint}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.run_id = state.get("run_id")
        self.ui_hint = state.get("ui_hint")


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested params as ``{"section.key": "value"}`` strings, values cut to :data:`MAX_PARAM_LENGTH`.

    >>> flatten_params({"train": {"lr": 0.001, "epochs": 3}, "name": "x", "data": {}})
    {'train.lr': '0.001', 'train.epochs': '3', 'name': 'x', 'data': '{}'}
    """
    out: dict[str, str] = {}
    for key, value in params.items():
        full = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten_params(value, f"{full}."))
        else:
            text = "None" if value is None else str(value)
            out[_safe_key(full)] = text[:MAX_PARAM_LENGTH]
    return out


_BAD_KEY_CHARS = re.compile(r"[^\w.\- /]")


def _safe_key(key: str) -> str:
    """A key MLflow accepts: alphanumerics, ``_ - . /`` and spaces, no path tricks, <= 250 chars."""
    key = _BAD_KEY_CHARS.sub("_", str(key))
    key = re.sub(r"/+", "/", key).strip("/")
    key = "/".join(p if p not in (".", "..") else "_" for p in key.split("/"))
    return (key or "_")[:250]


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///...`` URI (``None`` for in-memory or other URIs)."""
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :].split("?", 1)[0]
    return Path(path) if path and path != ":memory:" else None


def default_tracking_uri(runs_dir: str | os.PathLike[str]) -> str:
    """``sqlite:///<absolute runs_dir>/mlflow.db`` (MLflow's file store is in maintenance mode)."""
    return f"sqlite:///{Path(runs_dir).expanduser().resolve() / 'mlflow.db'}"


@contextmanager
def _bounded_http() -> Iterator[None]:
    """Apply :data:`HTTP_LIMITS_ENV` for the duration of a call, leaving user-set values alone.

    MLflow reads these variables on every request; setting them only around our calls keeps the
    limits out of the user's own MLflow calls in the same process.
    """
    added = [k for k in HTTP_LIMITS_ENV if k not in os.environ]
    for k in added:
        os.environ[k] = HTTP_LIMITS_ENV[k]
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def fallback_tracking_uri(runs_dir: str | os.PathLike[str]) -> str:
    """``sqlite:///<absolute runs_dir>/mlflow-fallback.db``: where MLflow tracking goes when its store fails."""
    return f"sqlite:///{Path(runs_dir).expanduser().resolve() / FALLBACK_DB}"


#: Loggers that print on their own while we talk to a store: table creation (INFO), a failed SQL
#: statement (ERROR with a traceback), HTTP retries (WARNING). Our one warning says what happened.
_NOISY_LOGGERS = {
    "alembic": logging.WARNING,
    "mlflow.store.db.utils": logging.CRITICAL,
    "urllib3.connectionpool": logging.ERROR,
}


@contextmanager
def _quiet_mlflow() -> Iterator[None]:
    """Silence :data:`_NOISY_LOGGERS` for the duration of one of our MLflow calls."""
    saved = []
    for name, level in _NOISY_LOGGERS.items():
        lg = logging.getLogger(name)
        if lg.getEffectiveLevel() < level:
            saved.append((lg, lg.level))
            lg.setLevel(level)
    try:
        yield
    finally:
        for lg, old in saved:
            lg.setLevel(old)


def _first_line(exc: BaseException, limit: int = 300) -> str:
    """``Type: first line of the message`` of ``exc``, and of its root cause, for a one-line warning.

    MLflow wraps database errors: the root cause (e.g. ``sqlite3.OperationalError: unable to open
    database file``) is what tells the user what happened.
    """

    def line(e: BaseException, qualified: bool = False) -> str:
        name = type(e).__name__
        if qualified and type(e).__module__ != "builtins":
            name = f"{type(e).__module__}.{name}"  # sqlite3.OperationalError, not OperationalError
        text = str(e).strip()
        msg = text.splitlines()[0][:limit] if text else ""
        return f"{name}: {msg}" if msg else name

    root, seen = exc, {id(exc)}
    while (nxt := root.__cause__ or root.__context__) is not None and id(nxt) not in seen:
        root = nxt
        seen.add(id(nxt))
    return line(exc) if root is exc else f"{line(exc)} (cause: {line(root, qualified=True)})"


def _ui_hint(uri: str) -> str:
    if uri.startswith(("http://", "https://")):
        return uri
    return f"mlflow ui --backend-store-uri {uri}"


def _finite_items(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The numeric, finite values of ``metrics`` (NaN / inf would plot as gaps or break charts)."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, bool) or value is None:
            continue
        try:
            v = float(value)
        except (TypeError, ValueError):
            continue
        if math.isfinite(v):
            out[str(key)] = v
    return out


def _artifact_files(run_dir: str | os.PathLike[str]) -> list[tuple[str, Path]]:
    """``(relative name, path)`` of the run outputs a tracker uploads; weights.pt stays local."""
    from raydrift.report import CONFIG_FILE, EXPORT_FILES, METRICS_FILE, PLOTS_DIR, SUMMARY_FILE

    d = Path(run_dir)
    out = [(n, d / n) for n in (SUMMARY_FILE, METRICS_FILE, *EXPORT_FILES, CONFIG_FILE) if (d / n).is_file()]
    if (d / PLOTS_DIR).is_dir():
        out += [(f"{PLOTS_DIR}/{p.name}", p) for p in sorted((d / PLOTS_DIR).iterdir()) if p.is_file()]
    return out


def _file_name(name: str) -> str:
    """``name`` as a safe file name (run names are ``<name>-<timestamp>`` already)."""
    return re.sub(r"[^\w.\-]", "_", name).lstrip(".") or "run"


class MLflowTracker(Tracker):
    """Tracks a run in MLflow (default store: ``sqlite:///<runs_dir>/mlflow.db``).

    Uses an explicit ``MlflowClient`` rather than MLflow's global "active run", so nothing leaks into
    user code that also uses MLflow. Params are flattened with dotted keys; each ``log_metrics`` call
    is one synchronous ``log_batch`` request (synchronous so that a failure is seen here, not lost in
    MLflow's background logging thread).

    Parameters
    ----------
    tracking_uri
        MLflow tracking URI (``sqlite:///...``, ``http://host:port``, ...).
    experiment
        Experiment name; created if missing. For a sqlite store, its artifacts go next to the
        database (``<db dir>/mlartifacts/<experiment>``), not in the current directory.
    fallback_dir
        Where the local fallback store (:data:`FALLBACK_DB`) and the journal (:data:`JOURNAL_DIR`)
        live, usually the runs directory. ``None``: no fallback, a failing store disables tracking.

    Attributes
    ----------
    fallback_uri
        The fallback store's URI (``None`` without ``fallback_dir``).
    using_fallback
        Whether the run is being logged to the fallback store.
    primary_run_id
        After a fall back: the run id in the configured store, if the run was created there.
    """

    backend = "mlflow"

    def __init__(
        self,
        tracking_uri: str,
        experiment: str = "raydrift",
        fallback_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__()
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.fallback_dir = None if fallback_dir is None else Path(fallback_dir).expanduser().resolve()
        fallback = None if fallback_dir is None else fallback_tracking_uri(fallback_dir)
        # a store cannot be its own fallback
        self.fallback_uri = fallback if fallback != tracking_uri else None
        self.experiment_id: str | None = None
        self.primary_run_id: str | None = None
        self.using_fallback = False
        self.run_name: str | None = None
        self.ui_hint = _ui_hint(tracking_uri)
        self._params: dict[str, str] = {}
        self._client: Any = None
        self._failed = False
        self._journal_failed = False

    @property
    def active(self) -> bool:
        return self._client is not None and self.run_id is not None and not self._failed

    @property
    def store_uri(self) -> str:
        """The URI of the store the run is logged to now."""
        return self.fallback_uri if self.using_fallback and self.fallback_uri else self.tracking_uri

    @property
    def journal_path(self) -> Path | None:
        """The journal of this run (``None`` when there is nothing to fall back to)."""
        if self.fallback_dir is None or self.fallback_uri is None or self.run_name is None:
            return None
        return self.fallback_dir / JOURNAL_DIR / f"{_file_name(self.run_name)}.jsonl"

    # --- stores -----------------------------------------------------------------------------------
    @staticmethod
    def _check_reachable(uri: str) -> None:
        """Fail fast on an unreachable server or an uncreatable sqlite file, before MLflow retries."""
        parsed = urlparse(uri)
        if parsed.scheme in ("http", "https"):
            port = parsed.port or (443 if parsed.scheme == "https" else 80)
            with socket.create_connection((parsed.hostname or "localhost", port), timeout=CONNECT_TIMEOUT_S):
                pass
        db = _sqlite_path(uri)
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)

    def _open(self, uri: str) -> Any:
        self._check_reachable(uri)
        from mlflow.tracking import MlflowClient

        return MlflowClient(tracking_uri=uri)

    def _experiment_id(self, client: Any, uri: str) -> str:
        exp = client.get_experiment_by_name(self.experiment)
        if exp is not None:
            return str(exp.experiment_id)
        db = _sqlite_path(uri)
        # relative sqlite paths are relative to the working directory, as for SQLAlchemy
        location = (
            f"{(db.resolve().parent / 'mlartifacts').as_uri()}/{_safe_key(self.experiment)}" if db else None
        )
        try:
            return str(client.create_experiment(self.experiment, artifact_location=location))
        except Exception:
            # another run created it between our two calls
            exp = client.get_experiment_by_name(self.experiment)
            if exp is None:
                raise
            return str(exp.experiment_id)

    @staticmethod
    def _log_params(client: Any, run_id: str, params: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), _MAX_PARAMS_PER_BATCH):
            client.log_batch(run_id, params=items[i : i + _MAX_PARAMS_PER_BATCH], synchronous=True)

    @staticmethod
    def _log_metric_rows(client: Any, run_id: str, rows: list[list[Any]]) -> None:
        """Send ``[key, value, timestamp_ms, step]`` rows in ``log_batch`` calls of at most 1,000."""
        from mlflow.entities import Metric

        for i in range(0, len(rows), _MAX_METRICS_PER_BATCH):
            items = [Metric(k, v, ts, step) for k, v, ts, step in rows[i : i + _MAX_METRICS_PER_BATCH]]
            client.log_batch(run_id, metrics=items, synchronous=True)

    @staticmethod
    def _log_tags(client: Any, run_id: str, tags: Mapping[str, str]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, v) for k, v in tags.items()]
        for i in range(0, len(items), _MAX_PARAMS_PER_BATCH):
            client.log_batch(run_id, tags=items[i : i + _MAX_PARAMS_PER_BATCH], synchronous=True)

    # --- journal ----------------------------------------------------------------------------------
    def _journal(self, record: Mapping[str, Any]) -> None:
        """Append ``record`` to the journal while the configured store is in use."""
        path = self.journal_path
        if path is None or self.using_fallback or self._journal_failed:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record, separators=(",", ":")) + "\n")
        except OSError as exc:
            self._journal_failed = True
            _log.warning(
                "MLflow tracking journal %s cannot be written (%s): if %s fails later, the fallback store "
                "will miss what was logged before",
                path,
                _first_line(exc),
                self.tracking_uri,
            )

    def _drop_journal(self) -> None:
        path = self.journal_path
        if path is not None:
            try:
                path.unlink(missing_ok=True)
            except OSError:
                pass

    def _replay(self, client: Any, run_id: str, unjournaled: list[list[Any]]) -> int:
        """Log the params, then the journal's tags and metrics into ``run_id``; returns the values sent."""
        if self._params:
            self._log_params(client, run_id, self._params)
        tags: dict[str, str] = {}
        rows: list[list[Any]] = []
        sent = 0
        path = self.journal_path
        if path is not None and path.is_file():
            with open(path, encoding="utf-8") as f:
                for line in f:
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError:  # a last line cut short by a crash
                        continue
                    tags.update(record.get("tags") or {})
                    rows.extend(record.get("metrics") or [])
                    if len(rows) >= _MAX_METRICS_PER_BATCH:  # stream: the journal may be long
                        self._log_metric_rows(client, run_id, rows)
                        sent += len(rows)
                        rows = []
        rows.extend(unjournaled)
        self._log_metric_rows(client, run_id, rows)
        if tags:
            self._log_tags(client, run_id, tags)
        return sent + len(rows)

    # --- failure handling -----------------------------------------------------------------------
    def _disable(self, what: str, exc: BaseException, fallback_exc: BaseException | None = None) -> None:
        if not self._failed:
            also = (
                f"; the fallback store {self.fallback_uri} failed too: {_first_line(fallback_exc)}"
                if fallback_exc is not None
                else ""
            )
            _log.warning(
                "MLflow tracking disabled (%s failed on %s: %s%s); the run goes on, its results are in "
                "the run directory",
                what,
                self.store_uri,
                _first_line(exc),
                also,
            )
        self._failed = True

    def _fall_back(self, what: str, exc: BaseException, unjournaled: list[list[Any]]) -> bool:
        """Move the run to the fallback store, replaying what the failed store got; ``False`` if impossible."""
        if self.using_fallback or self.fallback_uri is None:
            self._disable(what, exc)
            return False
        if not self._journal_failed:
            unjournaled = []  # the current call is in the journal already
        try:
            with _bounded_http(), _quiet_mlflow():
                client = self._open(self.fallback_uri)
                experiment_id = self._experiment_id(client, self.fallback_uri)
                tags = {"raydrift.primary_tracking_uri": self.tracking_uri}
                if self.run_id is not None:
                    tags["raydrift.primary_run_id"] = self.run_id
                run = client.create_run(experiment_id, run_name=self.run_name, tags=tags)
                replayed = self._replay(client, run.info.run_id, unjournaled)
        except Exception as fallback_exc:  # noqa: BLE001 - tracking must never stop a run
            self._disable(what, exc, fallback_exc)
            return False
        self._drop_journal()  # its content is in the fallback run now
        self.primary_run_id = self.run_id
        self.run_id = run.info.run_id
        self.experiment_id = experiment_id
        self._client = client
        self.using_fallback = True
        self.ui_hint = _ui_hint(self.fallback_uri)
        _log.warning(
            "MLflow tracking store %s failed (%s: %s); the run goes on in the local fallback store %s%s "
            "(open with: %s)",
            self.tracking_uri,
            what,
            _first_line(exc),
            self.fallback_uri,
            f", with the {replayed} metric values logged before" if replayed else "",
            self.ui_hint,
        )
        return True

    def _send(self, what: str, send: Any, replayed: list[list[Any]] | None = None) -> None:
        """Call ``send()`` on the current store; on failure fall back and, unless the call's data was
        replayed from the journal (``replayed`` not None), call it again there."""
        try:
            with _bounded_http(), _quiet_mlflow():
                send()
            return
        except Exception as exc:  # noqa: BLE001 - tracking must never stop a run
            error = exc
        if not self._fall_back(what, error, replayed or []) or replayed is not None:
            return
        try:
            with _bounded_http(), _quiet_mlflow():
                send()
        except Exception as exc:  # noqa: BLE001
            self._disable(what, exc)

    # --- API --------------------------------------------------------------------------------------
    def start(self, run_name: str, params: Mapping[str, Any]) -> None:
        """Create (or, after :meth:`load_state_dict`, reopen) the MLflow run and log ``params``.

        If the configured store fails, the run is created in the fallback store instead.
        """
        if self._failed:
            return
        self.run_name = run_name
        self._params = flatten_params(params)
        if self.using_fallback:  # resumed after a fall back: the whole run is in the fallback store
            try:
                with _bounded_http(), _quiet_mlflow():
                    self._client = self._open(self.store_uri)
                    self._client.update_run(self.run_id, status="RUNNING")
            except Exception as exc:  # noqa: BLE001
                self._disable("start", exc)
            return
        if self.run_id is None:
            self._drop_journal()  # a new run: an old journal of the same name is not this run's
        try:
            with _bounded_http(), _quiet_mlflow():
                client = self._open(self.tracking_uri)
                if self.run_id is not None:  # resume: the run exists, params are already recorded
                    client.update_run(self.run_id, status="RUNNING")
                    self._client = client
                    return
                self.experiment_id = self._experiment_id(client, self.tracking_uri)
                run = client.create_run(self.experiment_id, run_name=run_name)
                self._client, self.run_id = client, run.info.run_id
                self._log_params(client, self.run_id, self._params)
        except Exception as exc:  # noqa: BLE001 - tracking must never stop a run
            if self._fall_back("start", exc, []):
                return
            self._client = None

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        if not self.active or not metrics:
            return
        ts = int(time.time() * 1000)
        rows = [[_safe_key(k), v, ts, int(step)] for k, v in _finite_items(metrics).items()]
        if not rows:
            return
        self._journal({"metrics": rows})
        self._send("log_metrics", lambda: self._log_metric_rows(self._client, str(self.run_id), rows), rows)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if not self.active or not tags:
            return
        items = {_safe_key(k): str(v)[:5000] for k, v in tags.items()}
        self._journal({"tags": items})
        # tags the journal could not hold are re-sent after a fall back (replayed=None)
        replayed: list[list[Any]] | None = None if self._journal_failed else []
        self._send("set_tags", lambda: self._log_tags(self._client, str(self.run_id), items), replayed)

    def log_artifacts(self, run_dir: str | os.PathLike[str]) -> None:
        if not self.active:
            return
        files = _artifact_files(run_dir)

        def send() -> None:
            for rel, path in files:
                parent = rel.rpartition("/")[0] or None
                self._client.log_artifact(self.run_id, str(path), artifact_path=parent)

        self._send("log_artifacts", send)

    def finish(self, status: str = "completed") -> None:
        if not self.active:
            return
        mlflow_status = _STATUS.get(status, status.upper())
        self._send("finish", lambda: self._client.set_terminated(self.run_id, status=mlflow_status))
        if status == "completed":
            self._drop_journal()  # an interrupted or failed run may be resumed: keep it for a replay

    def info(self) -> dict[str, Any]:
        out = super().info()
        out.update(tracking_uri=self.tracking_uri, experiment=self.experiment)
        if self.using_fallback:
            out.update(fallback_uri=self.fallback_uri, primary_run_id=self.primary_run_id)
        return out

    # --- state --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "experiment_id": self.experiment_id,
            "failed": self._failed,
            "using_fallback": self.using_fallback,
            "primary_run_id": self.primary_run_id,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.experiment_id = state.get("experiment_id")
        self._failed = bool(state.get("failed", False))
        self.using_fallback = bool(state.get("using_fallback", False)) and self.fallback_uri is not None
        self.primary_run_id = state.get("primary_run_id")

    def __getstate__(self) -> dict[str, Any]:
        # the client holds a database engine / HTTP session: a copy reconnects on start()
        state = self.__dict__.copy()
        state["_client"] = None
        return state


class WandbTracker(Tracker):
    """Tracks a run in Weights & Biases, online or offline (``WANDB_MODE=offline``, no network).

    The run is a separate W&B run object (``reinit="create_new"``): it does not become
    ``wandb.run``, so a user's own W&B run in the same process is left alone. Params become the
    run's config (nested), tags go into the config too (W&B tags are labels, not key/value pairs),
    metrics are logged against :data:`WANDB_STEP_METRIC`, and the run outputs are copied into the
    W&B run's files (the offline run folder is then complete for a later ``wandb sync``). Any
    failure logs ONE warning and the tracker becomes a no-op.

    Parameters
    ----------
    project
        W&B project.
    entity
        W&B user or team (``None``: ``WANDB_ENTITY`` or the account's default).
    mode
        ``online``, ``offline`` or ``disabled``; ``None``: ``WANDB_MODE``, else online.
    dir
        Directory under which W&B writes ``wandb/`` (``None``: ``WANDB_DIR``, else the working directory).
    """

    backend = "wandb"

    def __init__(
        self,
        project: str = "raydrift",
        entity: str | None = None,
        mode: Literal["online", "offline", "disabled"] | None = None,
        dir: str | os.PathLike[str] | None = None,  # noqa: A002 - wandb.init's name
    ) -> None:
        super().__init__()
        self.project = project
        self.entity = entity
        self.mode = mode
        self.dir = None if dir is None else str(Path(dir).expanduser().resolve())
        #: The run's local folder (``.../wandb/offline-run-*`` or ``run-*``), once started.
        self.run_path: str | None = None
        self._run: Any = None
        self._failed = False
        self._disabled_mode = False

    @property
    def active(self) -> bool:
        return self._run is not None and not self._failed

    def _disable(self, what: str, exc: BaseException) -> None:
        if not self._failed:
            _log.warning(
                "W&B tracking disabled (%s failed for project %s: %s); the run goes on, its results are "
                "in the run directory",
                what,
                self.project,
                _first_line(exc),
            )
        self._failed = True
        run, self._run = self._run, None
        if run is not None:
            try:
                run.finish(exit_code=1)
            except Exception:  # noqa: BLE001 - already failing: do not warn twice
                pass

    def start(self, run_name: str, params: Mapping[str, Any]) -> None:
        """Create (or, after :meth:`load_state_dict`, resume) the W&B run with ``params`` as its config."""
        if self._failed:
            return
        try:
            import wandb

            settings: dict[str, Any] = {"silent": True, "console": "off"}
            if "WANDB_INIT_TIMEOUT" not in os.environ:
                settings["init_timeout"] = WANDB_INIT_TIMEOUT_S
            # read the variables now: wandb reads them once per process, at its first init
            mode = self.mode or os.environ.get("WANDB_MODE")
            if mode:
                settings["mode"] = mode
            run_root = self.dir or os.environ.get("WANDB_DIR")
            if run_root:
                Path(run_root).mkdir(parents=True, exist_ok=True)
            kwargs: dict[str, Any] = {}
            if self.run_id is not None:
                kwargs.update(id=self.run_id, resume="allow")
            run = wandb.init(
                project=self.project,
                entity=self.entity,
                name=run_name,
                config=dict(params),
                dir=run_root,
                reinit="create_new",
                settings=wandb.Settings(**settings),
                **kwargs,
            )
            self._run = run
            run.define_metric(WANDB_STEP_METRIC)
            run.define_metric("*", step_metric=WANDB_STEP_METRIC)
            self.run_id = run.id
            self._disabled_mode = bool(getattr(run, "disabled", False))
            if self._disabled_mode:  # wandb_mode: disabled, a dummy run: nothing to look at
                self.run_path, self.ui_hint = None, None
            else:
                self.run_path = str(run.settings.sync_dir)
                self.ui_hint = f"wandb sync {self.run_path}" if run.offline else run.url
        except Exception as exc:  # noqa: BLE001 - tracking must never stop a run
            self._disable("start", exc)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        if not self.active or not metrics:
            return
        items: dict[str, Any] = _finite_items(metrics)
        if not items:
            return
        items[WANDB_STEP_METRIC] = int(step)
        try:
            self._run.log(items)
        except Exception as exc:  # noqa: BLE001
            self._disable("log_metrics", exc)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if not self.active or not tags:
            return
        try:
            self._run.config.update({str(k): str(v) for k, v in tags.items()}, allow_val_change=True)
        except Exception as exc:  # noqa: BLE001
            self._disable("set_tags", exc)

    def log_artifacts(self, run_dir: str | os.PathLike[str]) -> None:
        if not self.active or self._disabled_mode:
            return
        try:
            files_dir = Path(self._run.dir)
            for rel, path in _artifact_files(run_dir):
                dest = files_dir / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, dest)
                self._run.save(str(dest), base_path=str(files_dir), policy="now")
        except Exception as exc:  # noqa: BLE001
            self._disable("log_artifacts", exc)

    def finish(self, status: str = "completed") -> None:
        if not self.active:
            return
        try:
            self._run.summary["raydrift_status"] = status
            self._run.finish(exit_code=0 if status == "completed" else 1)
            self._run = None
        except Exception as exc:  # noqa: BLE001
            self._disable("finish", exc)

    def info(self) -> dict[str, Any]:
        out = super().info()
        out.update(project=self.project, entity=self.entity, run_path=self.run_path)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "run_path": self.run_path, "failed": self._failed}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.run_path = state.get("run_path")
        self._failed = bool(state.get("failed", False))

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_run"] = None  # a live run (a connection to the W&B service) does not travel
        return state


def make_tracker(cfg: LoggingConfig, runs_dir: str | os.PathLike[str]) -> Tracker:
    """The tracker named by ``cfg.backend`` (``mlflow``, ``wandb`` or ``none``).

    ``mlflow`` without ``tracking_uri`` uses ``sqlite:///<absolute runs_dir>/mlflow.db``; its
    fallback store and journal live in ``runs_dir``. ``wandb`` writes under ``WANDB_DIR`` if set,
    else under ``runs_dir``; its project is ``wandb_project``, else ``WANDB_PROJECT``, else
    ``experiment``. If the backend's package is not installed: one warning and the ``none`` tracker.
    """
    import importlib.util

    if cfg.backend == "none":
        return Tracker()
    if cfg.backend == "mlflow":
        if importlib.util.find_spec("mlflow") is None:
            _log.warning("logging.backend is 'mlflow' but mlflow is not installed: tracking disabled")
            return Tracker()
        return MLflowTracker(
            cfg.tracking_uri or default_tracking_uri(runs_dir), cfg.experiment, fallback_dir=runs_dir
        )
    if cfg.backend == "wandb":
        if importlib.util.find_spec("wandb") is None:
            _log.warning(
                "logging.backend is 'wandb' but wandb is not installed (pip install 'raydrift[wandb]'): "
                "tracking disabled"
            )
            return Tracker()
        return WandbTracker(
            project=cfg.wandb_project or os.environ.get("WANDB_PROJECT") or cfg.experiment,
            entity=cfg.wandb_entity,
            mode=cfg.wandb_mode,
            dir=os.environ.get("WANDB_DIR") or runs_dir,
        )
    raise ValueError(f"unknown tracking backend {cfg.backend!r}")  # the config schema prevents this
