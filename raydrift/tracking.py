"""Experiment tracking: MLflow, or none.

The coordinator talks to a :class:`Tracker`: ``start`` once with the run name and the flattened
config, ``log_metrics`` per interval / update, ``log_artifacts`` with the run directory at the end,
then ``finish``. The base class is the ``none`` backend: every method is a no-op.

Tracking is a convenience on top of the run directory, never a dependency of the run: if the MLflow
store cannot be reached or created, or a later call fails, :class:`MLflowTracker` logs ONE warning
and becomes a no-op. ``metrics.csv`` and ``summary.json`` are written by :mod:`raydrift.report`
independently of it.

MLflow is imported lazily (in :meth:`MLflowTracker.start`): importing it takes seconds and
``import raydrift`` must stay fast.
"""

from __future__ import annotations

import logging
import math
import os
import re
import socket
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any
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
#: minutes on an unreachable server before the tracker could fall back to a no-op.
HTTP_LIMITS_ENV: dict[str, str] = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
#: Seconds to wait for a TCP connection to a remote tracking server at start.
CONNECT_TIMEOUT_S = 3.0

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


@contextmanager
def _quiet_store_setup() -> Iterator[None]:
    """Silence the INFO lines MLflow / alembic print while creating a new database's tables."""
    loggers = [logging.getLogger(n) for n in ("mlflow.store.db.utils", "alembic")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


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
    """

    backend = "mlflow"

    def __init__(self, tracking_uri: str, experiment: str = "raydrift") -> None:
        super().__init__()
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.experiment_id: str | None = None
        self._client: Any = None
        self._failed = False
        db = _sqlite_path(tracking_uri)
        if tracking_uri.startswith(("http://", "https://")):
            self.ui_hint = tracking_uri
        else:
            self.ui_hint = f"mlflow ui --backend-store-uri {tracking_uri}"
        # relative sqlite paths are relative to the working directory, as for SQLAlchemy
        self._artifact_root = (db.resolve().parent / "mlartifacts").as_uri() if db is not None else None

    @property
    def active(self) -> bool:
        return self._client is not None and self.run_id is not None and not self._failed

    # --- failure handling -----------------------------------------------------------------------
    def _disable(self, what: str, exc: BaseException) -> None:
        if not self._failed:
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            _log.warning(
                "MLflow tracking disabled (%s failed on %s: %s%s); the run goes on, its results are in "
                "the run directory",
                what,
                self.tracking_uri,
                type(exc).__name__,
                f": {msg[:300]}" if msg else "",
            )
        self._failed = True

    def _check_reachable(self) -> None:
        """Fail fast on an unreachable server or an uncreatable sqlite file, before MLflow retries."""
        parsed = urlparse(self.tracking_uri)
        if parsed.scheme in ("http", "https"):
            port = parsed.port or (443 if parsed.scheme == "https" else 80)
            with socket.create_connection((parsed.hostname or "localhost", port), timeout=CONNECT_TIMEOUT_S):
                pass
        db = _sqlite_path(self.tracking_uri)
        if db is not None:
            db.parent.mkdir(parents=True, exist_ok=True)

    # --- API --------------------------------------------------------------------------------------
    def start(self, run_name: str, params: Mapping[str, Any]) -> None:
        """Create (or, after :meth:`load_state_dict`, reopen) the MLflow run and log ``params``."""
        if self._failed:
            return
        try:
            self._check_reachable()
            with _bounded_http(), _quiet_store_setup():
                from mlflow.tracking import MlflowClient

                self._client = MlflowClient(tracking_uri=self.tracking_uri)
                if self.run_id is not None:  # resume: the run exists, params are already recorded
                    self._client.update_run(self.run_id, status="RUNNING")
                    return
                self.experiment_id = self._experiment_id()
                run = self._client.create_run(self.experiment_id, run_name=run_name)
                self.run_id = run.info.run_id
                self._log_params(flatten_params(params))
        except Exception as exc:  # noqa: BLE001 - tracking must never stop a run
            self._disable("start", exc)

    def _experiment_id(self) -> str:
        client = self._client
        exp = client.get_experiment_by_name(self.experiment)
        if exp is not None:
            return str(exp.experiment_id)
        location = f"{self._artifact_root}/{_safe_key(self.experiment)}" if self._artifact_root else None
        try:
            return str(client.create_experiment(self.experiment, artifact_location=location))
        except Exception:
            # another run created it between our two calls
            exp = client.get_experiment_by_name(self.experiment)
            if exp is None:
                raise
            return str(exp.experiment_id)

    def _log_params(self, params: Mapping[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), _MAX_PARAMS_PER_BATCH):
            self._client.log_batch(self.run_id, params=items[i : i + _MAX_PARAMS_PER_BATCH], synchronous=True)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        if not self.active or not metrics:
            return
        try:
            from mlflow.entities import Metric

            ts = int(time.time() * 1000)
            items = []
            for key, value in metrics.items():
                try:
                    v = float(value)
                except (TypeError, ValueError):
                    continue
                if math.isfinite(v):  # NaN / inf would plot as gaps or break charts
                    items.append(Metric(_safe_key(key), v, ts, int(step)))
            with _bounded_http():
                for i in range(0, len(items), _MAX_METRICS_PER_BATCH):
                    self._client.log_batch(
                        self.run_id, metrics=items[i : i + _MAX_METRICS_PER_BATCH], synchronous=True
                    )
        except Exception as exc:  # noqa: BLE001
            self._disable("log_metrics", exc)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        if not self.active or not tags:
            return
        try:
            from mlflow.entities import RunTag

            items = [RunTag(_safe_key(k), str(v)[:5000]) for k, v in tags.items()]
            with _bounded_http():
                for i in range(0, len(items), _MAX_PARAMS_PER_BATCH):
                    self._client.log_batch(
                        self.run_id, tags=items[i : i + _MAX_PARAMS_PER_BATCH], synchronous=True
                    )
        except Exception as exc:  # noqa: BLE001
            self._disable("set_tags", exc)

    def log_artifacts(self, run_dir: str | os.PathLike[str]) -> None:
        if not self.active:
            return
        from raydrift.report import CONFIG_FILE, METRICS_FILE, PLOTS_DIR, SUMMARY_FILE

        d = Path(run_dir)
        try:
            with _bounded_http():
                for name in (SUMMARY_FILE, METRICS_FILE, CONFIG_FILE):
                    if (d / name).is_file():
                        self._client.log_artifact(self.run_id, str(d / name))
                if (d / PLOTS_DIR).is_dir() and any((d / PLOTS_DIR).iterdir()):
                    self._client.log_artifacts(self.run_id, str(d / PLOTS_DIR), artifact_path=PLOTS_DIR)
        except Exception as exc:  # noqa: BLE001
            self._disable("log_artifacts", exc)

    def finish(self, status: str = "completed") -> None:
        if not self.active:
            return
        try:
            with _bounded_http():
                self._client.set_terminated(self.run_id, status=_STATUS.get(status, status.upper()))
        except Exception as exc:  # noqa: BLE001
            self._disable("finish", exc)

    def info(self) -> dict[str, Any]:
        out = super().info()
        out.update(tracking_uri=self.tracking_uri, experiment=self.experiment)
        return out

    # --- state --------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "experiment_id": self.experiment_id, "failed": self._failed}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.experiment_id = state.get("experiment_id")
        self._failed = bool(state.get("failed", False))

    def __getstate__(self) -> dict[str, Any]:
        # the client holds a database engine / HTTP session: a copy reconnects on start()
        state = self.__dict__.copy()
        state["_client"] = None
        return state


def make_tracker(cfg: LoggingConfig, runs_dir: str | os.PathLike[str]) -> Tracker:
    """The tracker named by ``cfg.backend`` (``mlflow`` or ``none``).

    ``mlflow`` without ``tracking_uri`` uses ``sqlite:///<absolute runs_dir>/mlflow.db``. If MLflow is
    not installed, one warning and the ``none`` tracker.
    """
    if cfg.backend == "none":
        return Tracker()
    if cfg.backend == "mlflow":
        import importlib.util

        if importlib.util.find_spec("mlflow") is None:
            _log.warning("logging.backend is 'mlflow' but mlflow is not installed: tracking disabled")
            return Tracker()
        return MLflowTracker(cfg.tracking_uri or default_tracking_uri(runs_dir), cfg.experiment)
    raise ValueError(f"unknown tracking backend {cfg.backend!r}")  # the config schema prevents this
