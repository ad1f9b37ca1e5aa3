"""The loop: dispatch with backpressure, ordered detection, drift -> update -> gate -> broadcast.

The coordinator runs in the driver process. Batches travel from the StreamReader to a MonitorActor
and results from the monitor to the DetectorActor by object ref; the driver only waits on refs and
keeps the books. On a drift at batch ``b`` it keeps monitoring with the current weights until the
post-drift window (``post_drift_batches``) is complete, then trains the update with Ray Train on the
window + replay memory, checks the new weights on a held-out slice (the promotion gate), ``ray.put``s
them once and sends the ref to every monitor with the new version.

While the update trains, ``monitor.on_drift`` decides: ``continue`` (default) keeps evaluating the
stream with the old weights (no downtime; the detector records those results but is not fed until
the new weights are live), ``pause`` stops, then rewinds the stream to the batch after the window:
every later batch is evaluated with the new weights, so the drift events depend only on the stream,
the config and the seed, never on the number of monitors or on scheduling.

Reliability (``docs/reliability.md``): each accepted batch id is written once to ``batches.csv``; the
detector's and the stream reader's state are snapshotted after each update and every
``reliability.checkpoint_every_batches`` batches (and written to ``<run_dir>/checkpoint/`` for
``raydrift run --resume``); a dead monitor is replaced with the current weights and its in-flight
batches are dispatched again, a dead detector is restored from its snapshot and re-fed the calls
since, a dead stream reader is restored from its snapshot and caught up; a failed update (after
``train.max_failures`` retries) or a rejected one leaves the old weights live.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
import torch
from ray.exceptions import RayActorError, RayTaskError

from raydrift.actors import DetectorActor, MonitorActor, StreamReader, evaluate_many_args
from raydrift.callbacks import Callback
from raydrift.checkpoint import load_checkpoint, save_checkpoint, truncate_csv
from raydrift.config import RaydriftConfig, save_config
from raydrift.detection.engine import DetectionOutput, DriftEvent, IntervalRecord
from raydrift.errors import UserError
from raydrift.harness import Harness
from raydrift.learning.loop import UpdateData, evaluate, pretrain
from raydrift.learning.metrics import cl_summary
from raydrift.metrics import RunMetrics
from raydrift.preflight import Preflight, check_config, check_resources, harness_call, local_resources
from raydrift.report import (
    MetricsWriter,
    export_csv,
    format_summary,
    make_plots,
    summary_from_json,
    summary_to_json,
    write_summary,
)
from raydrift.session import (
    RayInfo,
    RaySession,
    RunInterrupted,
    install_stop_handlers,
    restore_handlers,
    stopping,
)
from raydrift.stream import BatchMeta
from raydrift.tracking import Tracker, make_tracker
from raydrift.update import UpdateOutcome, Updater, copy_run_outputs, train_storage
from raydrift.weights import Weights, load_into, load_weights, save_weights, to_numpy, to_state_dict

Console = Callable[[str], None]

RECOVERY_TOLERANCE = 0.02
"""An update has recovered when an interval's metric is back within this of the pre-drift level."""


def make_run_dir(cfg: RaydriftConfig) -> Path:
    """``<runs_dir>/<name>-<timestamp>/`` (a suffix is added if it exists)."""
    root = Path(cfg.logging.runs_dir).resolve()
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = root / f"{cfg.name}-{stamp}"
    i = 1
    while run_dir.exists():
        run_dir = root / f"{cfg.name}-{stamp}-{i}"
        i += 1
    run_dir.mkdir(parents=True)
    return run_dir


class Coordinator:
    """Runs one raydrift job end to end and returns its summary (also written to summary.json)."""

    def __init__(
        self,
        cfg: RaydriftConfig,
        address: str | None = None,
        console: Console = print,
        run_dir: Path | None = None,
        callbacks: Sequence[Callback] = (),
        resume: bool = False,
    ) -> None:
        """``resume=True`` continues the run in ``run_dir`` from its checkpoint (``raydrift run --resume``)."""
        if resume and run_dir is None:
            raise UserError("resuming needs the run directory (raydrift run --resume RUN_DIR)")
        self.cfg = cfg
        self.address = address or cfg.ray.address or os.environ.get("RAY_ADDRESS") or None
        self.console = console
        self.run_dir = run_dir
        self.harness_spec: dict[str, Any] = {
            "spec": cfg.model.harness,
            "options": dict(cfg.data),
            "seed": cfg.seed,
            "batch_size": cfg.stream.batch_size,
        }
        self.session = RaySession(cfg, self.address)
        self.summary: dict[str, Any] = {}
        self.callbacks = list(callbacks)
        self.resume = resume
        self.version = 0
        self.monitors: list[Any] = []
        self._stream: Any = None
        self._detector: Any = None

    @property
    def detector(self) -> Any:
        """The DetectorActor handle of the running loop (None before it starts)."""
        return self._detector

    @property
    def stream(self) -> Any:
        """The StreamReader handle of the running loop (None before it starts)."""
        return self._stream

    # ------------------------------------------------------------------------------------------
    def log(self, msg: str, level: int = 1) -> None:
        if self.cfg.verbosity >= level:
            self.console(msg)

    def _actor_spec(self) -> dict[str, Any]:
        s = self.harness_spec
        return {"spec": s["spec"], "options": s["options"], "seed": s["seed"], "batch_size": s["batch_size"]}

    # --- setup ---------------------------------------------------------------------------------
    def _initial_model(self, harness: Harness, device: str = "cpu") -> torch.nn.Module:
        """Build the model, load ``model.checkpoint`` or pre-train it; it stays on ``device`` (the driver
        pre-trains and evaluates the test sets there)."""
        torch.manual_seed(self.cfg.seed)
        spec = self.cfg.model.harness
        model = harness_call(spec, "build_model()", harness.build_model)
        mc = self.cfg.model
        if mc.checkpoint:
            path = Path(mc.checkpoint)
            load_into(model, load_weights(path))  # checked before the run started (preflight)
            self.log(f"initial weights from {path}")
        model.to(device)
        if not mc.checkpoint and mc.pretrain_epochs > 0:
            data = harness_call(spec, "pretrain_data()", harness.pretrain_data)
            if data is not None:
                t0 = time.perf_counter()
                losses = harness_call(
                    spec,
                    "pre-training (loss, metrics or build_optimizer)",
                    pretrain,
                    model,
                    harness,
                    data[0],
                    data[1],
                    mc.pretrain_epochs,
                    mc.pretrain_lr,
                    self.cfg.train.batch_size,
                    self.cfg.seed,
                )
                self.log(
                    f"pre-trained the initial model on {len(data[1])} samples for {mc.pretrain_epochs} "
                    f"epoch(s) in {time.perf_counter() - t0:.1f}s (loss {losses[-1]:.3f})"
                )
        return model

    def _start_ray(self) -> RayInfo:
        """Start or connect to Ray after checking that the config fits (a local cluster is checked
        against this machine before it starts, an existing one once connected)."""
        cfg = self.cfg
        local = not ray.is_initialized() and not self.address
        if local and not cfg.ray.autoscaling:
            check_resources(cfg, local_resources(cfg), "this machine")
        info = self.session.start()
        try:
            self._check_resources()
        except BaseException:
            self.session.shutdown()
            raise
        return info

    def _check_resources(self) -> None:
        """Monitors and trainer workers must fit in the cluster at the same time (see
        :func:`raydrift.preflight.check_resources`); skipped when the cluster autoscales."""
        if not self.cfg.ray.autoscaling:
            check_resources(self.cfg, ray.cluster_resources())

    # --- the run -------------------------------------------------------------------------------
    def _new_summary(self, metric: str, higher_is_better: bool, started: dt.datetime) -> dict[str, Any]:
        cfg = self.cfg
        return {  # the schema is in raydrift/report.py
            "run": {
                "name": cfg.name,
                "run_dir": str(self.run_dir),
                "status": "running",
                "started": started.isoformat(timespec="seconds"),
                "finished": None,
                "wall_seconds": None,
                "ray_address": None,
                "dashboard_url": None,
                "harness": cfg.model.harness,
                "seed": cfg.seed,
                "error": None,
                "signal": None,
                "resumed": [],
            },
            "stream": {
                "batches": 0,
                "samples": 0,
                "regimes_seen": [],
                "regime_names": {},
                "regime_starts": [],
                "quarantined": [],
            },
            "monitoring": {"num_monitors": cfg.monitor.num_monitors, "on_drift": cfg.monitor.on_drift},
            "detection": {
                "detector": cfg.drift_detection.detector,
                "granularity": cfg.drift_detection.granularity,
                "metric": metric,
                "higher_is_better": higher_is_better,
            },
            "drift_events": [],
            "updates": [],
            "rejected_updates": [],
            "recoveries": [],
            "accuracy_matrix": {"regimes": [], "rows": []},
            "cl_metrics": {},
            "profile": {},
        }

    def _open_run(self, pre: Preflight, checkpoint: dict[str, Any] | None, started: dt.datetime) -> Path:
        """The run directory and the summary (new, or the checkpoint's with this resume noted)."""
        if self.run_dir is None:
            self.run_dir = make_run_dir(self.cfg)
        run_dir = self.run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        if checkpoint is None:
            save_config(self.cfg, run_dir / "config.yaml")
            self.summary = self._new_summary(pre.metric, pre.higher_is_better, started)
        else:
            self.summary = summary_from_json(checkpoint["summary"])
            run = self.summary["run"]
            run.setdefault("resumed", []).append(
                {"at": started.isoformat(timespec="seconds"), "batch_id": int(checkpoint["processed"])}
            )
            run.update({"status": "running", "finished": None, "error": None, "signal": None})
        self.log(f"run directory: {run_dir}")
        return run_dir

    def run(self) -> dict[str, Any]:
        """Check the config, start Ray, run the loop; the summary is written however the run ends.

        A mistake in the config, the harness or the cluster's size raises a one-line
        :class:`UserError` before anything starts. Once the run directory exists, every ending
        (completed, interrupted by a signal, failed) writes the summary, the CSV files and the plots,
        and stops what the run started; a failure is re-raised after that.
        """
        cfg = self.cfg
        started = dt.datetime.now()
        t_start = time.perf_counter()
        # The driver's own work (pre-training, the accuracy matrix) is small; the cores belong to the
        # actors. More threads here slow everything down on a small, busy machine.
        torch.set_num_threads(1)
        pre = check_config(cfg)
        checkpoint = load_checkpoint(self.run_dir) if self.resume else None  # type: ignore[arg-type]
        info = self._start_ray()
        # ray.init replaced the SIGTERM handler: a stop must end the run cleanly, not exit the driver
        handlers = install_stop_handlers() if self.session.connected else {}
        state = _RunState()
        try:
            run_dir = self._open_run(pre, checkpoint, started)
            self.summary["run"].update({"ray_address": info.address, "dashboard_url": info.dashboard_url})
            if info.dashboard_url:
                self.log(f"Ray dashboard: {info.dashboard_url}")
            self._run_loop(pre, checkpoint, run_dir, state)
        except KeyboardInterrupt as exc:
            state.interrupted = exc
            self.log("interrupted: shutting down and keeping what was written")
        except BaseException as exc:
            state.error = exc
            raise
        finally:
            stopping()  # a signal from here on is acknowledged, not raised: the summary gets written
            try:
                if self.run_dir is not None and self.summary:
                    self._finish_run(state, t_start)
            finally:
                self._shutdown()
                restore_handlers(handlers)
        self.log(format_summary(self.summary))
        return self.summary

    def _run_loop(
        self, pre: Preflight, checkpoint: dict[str, Any] | None, run_dir: Path, state: _RunState
    ) -> None:
        cfg, harness, summary = self.cfg, pre.harness, self.summary
        test_sets = pre.test_sets
        regimes = sorted(test_sets)
        if checkpoint is None:
            summary["stream"]["regime_names"] = {r: pre.regime_names.get(r, f"regime-{r}") for r in regimes}
            summary["accuracy_matrix"]["regimes"] = regimes
            model = self._initial_model(harness, pre.device)
        else:
            torch.manual_seed(cfg.seed)
            model = harness.build_model().to(pre.device)
            load_into(model, checkpoint["weights"])
            self.log(f"resuming at batch {checkpoint['processed']} (model v{checkpoint['version']})")

        def test_row(label: str, version: int, batch_id: int, m: torch.nn.Module) -> list[float | None]:
            t0 = time.perf_counter()
            accs: list[float | None] = []
            for r in regimes:
                x, y = test_sets[r]
                accs.append(
                    evaluate(m, harness, x, y)["accuracy"]
                    if "accuracy" in harness.metric_directions
                    else None
                )
            summary["accuracy_matrix"]["rows"].append(
                {"label": label, "version": version, "batch_id": batch_id, "accuracy": accs}
            )
            prof = summary.setdefault("profile", {})
            prof["accuracy_matrix_seconds"] = prof.get("accuracy_matrix_seconds", 0.0) + time.perf_counter() - t0
            return accs

        if checkpoint is None:
            test_row("initial", 0, -1, model)
        weights: Weights = to_numpy(model.state_dict())
        tracker: Tracker = make_tracker(cfg.logging, Path(cfg.logging.runs_dir).resolve())
        state.tracker = tracker
        if checkpoint is not None:
            tracker.load_state_dict(checkpoint.get("tracker") or {})
            truncate_csv(run_dir / "metrics.csv", int(checkpoint["metrics_rows"]))
            truncate_csv(run_dir / BATCHES_FILE, int(checkpoint["batches_rows"]))
        tracker.start(run_dir.name, cfg.to_dict())
        summary["tracking"] = tracker.info()
        resumed = checkpoint is not None
        state.writers = [
            MetricsWriter(run_dir, append=resumed),
            MetricsWriter(run_dir, columns=BATCH_COLUMNS, append=resumed, filename=BATCHES_FILE),
        ]
        loop = _Loop(self, harness, model, weights, pre.metric, pre.higher_is_better, pre.device, test_row)
        loop.metrics_writer, loop.batches_writer, loop.tracker = *state.writers, tracker
        state.loop = loop
        loop.run(checkpoint)

    def _finish_run(self, state: _RunState, t_start: float) -> None:
        """Close the books of a run however it ended: summary, CSV exports, plots, tracking."""
        cfg, summary, run_dir = self.cfg, self.summary, self.run_dir
        assert run_dir is not None
        if state.loop is not None:
            state.loop.record_books()
        for w in state.writers:
            w.close()
        status = state.status
        run = summary["run"]
        run["status"] = status
        if isinstance(state.interrupted, RunInterrupted):
            run["signal"] = signal.Signals(state.interrupted.signum).name
        elif state.interrupted is not None:
            run["signal"] = "SIGINT"
        run["error"] = None if state.error is None else error_line(state.error)
        run["finished"] = dt.datetime.now().isoformat(timespec="seconds")
        run["wall_seconds"] = round(time.perf_counter() - t_start, 3)
        if state.error is not None:
            write_error_log(run_dir, state.error)
        self._finish_cl_metrics()
        tracker = state.tracker
        cl = {k: v for k, v in summary["cl_metrics"].items() if isinstance(v, int | float)}
        if tracker is not None and cl:
            tracker.log_metrics(cl, step=summary["stream"]["batches"])
        if tracker is not None:
            summary["tracking"] = tracker.info()  # a fallback store mid-run changes it
        write_summary(run_dir, summary)
        try:
            export_csv(run_dir, summary)
        except Exception as exc:  # noqa: BLE001 - exports must never lose a run
            self.log(f"warning: CSV export failed: {exc}")
        if cfg.logging.plots:
            try:
                make_plots(run_dir, summary)
            except Exception as exc:  # noqa: BLE001 - plots must never lose a run
                self.log(f"warning: plots failed: {exc}")
        if tracker is not None:
            tracker.log_artifacts(run_dir)
        try:
            dest = copy_run_outputs(run_dir, cfg.ray.storage_path)
            if dest:
                self.log(f"outputs copied to {dest}")
        except Exception as exc:  # noqa: BLE001 - a failed copy must not lose the run
            self.log(f"warning: copying outputs to ray.storage_path failed: {exc}")
        if tracker is not None:
            tracker.finish(status)
        for cb in self.callbacks:
            cb.on_run_end(self, summary)

    def _finish_cl_metrics(self) -> None:
        """Average accuracy, forgetting and BWT from the accuracy matrix (see docs/continuous_learning.md).

        Row k was taken at stream position p_k (its drift batch; -1 for the initial model). A regime
        counts as seen at row k if it started at or before p_k; the row that closes regime j is the
        last row taken before the next regime started (the model as it was when regime j ended).
        """
        am = self.summary["accuracy_matrix"]
        rows = [r["accuracy"] for r in am["rows"]]
        starts = self.summary["stream"]["regime_starts"]
        if not rows or not starts or any(a is None for a in rows[-1]):
            return
        col = {r: i for i, r in enumerate(am["regimes"])}
        pos = [r["batch_id"] for r in am["rows"]]
        seen_at = [max(1, len({s["regime"] for s in starts if s["batch_id"] <= max(p, 0)})) for p in pos]
        last_row: dict[int, int] = {}
        for i, s in enumerate(starts):
            end = starts[i + 1]["batch_id"] if i + 1 < len(starts) else float("inf")
            ks = [k for k, p in enumerate(pos) if p < end]
            if s["regime"] in col and ks:
                last_row[col[s["regime"]]] = max(ks)
        try:
            self.summary["cl_metrics"] = cl_summary(rows, seen_at, last_row)
        except Exception as exc:  # noqa: BLE001 - reporting must not fail the run
            self.summary["cl_metrics"] = {"error": f"{type(exc).__name__}: {exc}"}

    def _shutdown(self) -> None:
        """Kill the run's actors and end the Ray session (a cluster this run started stops with it)."""
        if not ray.is_initialized():
            return
        for h in [self._stream, self._detector, *self.monitors]:
            if h is not None:
                try:
                    ray.kill(h)
                except Exception:  # noqa: BLE001 - best effort at shutdown
                    pass
        if not self.session.started:
            # On a cluster that outlives the run, wait until the actor names are free for the next run.
            names = ["stream", "detector", *(f"monitor-{i}" for i in range(len(self.monitors)))]
            deadline = time.monotonic() + 10
            while names and time.monotonic() < deadline:
                try:
                    ray.get_actor(names[0], namespace=self.cfg.ray.namespace)
                    time.sleep(0.05)
                except ValueError:
                    names.pop(0)
        self.session.shutdown()


@dataclass
class _RunState:
    """How far a run got, for closing its books however it ends."""

    loop: _Loop | None = None
    tracker: Tracker | None = None
    writers: list[MetricsWriter] = field(default_factory=list)
    interrupted: KeyboardInterrupt | None = None
    error: BaseException | None = None

    @property
    def status(self) -> str:
        if self.interrupted is not None:
            return "interrupted"
        return "failed" if self.error is not None else "completed"


def error_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (the full traceback goes to ``error.log``)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:500] if text else ''}".rstrip(": ")


ERROR_LOG = "error.log"


def write_error_log(run_dir: Path, exc: BaseException) -> None:
    """The failure's full traceback, for the developer (the summary and the console get one line)."""
    import traceback

    try:
        (run_dir / ERROR_LOG).write_text("".join(traceback.format_exception(exc)), encoding="utf-8")
    except OSError:
        pass


def run_in_thread(fn: Callable[..., Any], *args: Any) -> Future[Any]:
    """``fn(*args)`` in a daemon thread: an update that is still training when the run is stopped must
    not keep the process alive (a ThreadPoolExecutor's threads are joined at exit)."""
    fut: Future[Any] = Future()

    def target() -> None:
        if not fut.set_running_or_notify_cancel():
            return
        try:
            fut.set_result(fn(*args))
        except BaseException as exc:  # noqa: BLE001 - handed to whoever reads the future
            fut.set_exception(exc)

    threading.Thread(target=target, name="raydrift-update", daemon=True).start()
    return fut


_Item = tuple[BatchMeta, Any, int]
"""A batch in the coordinator's books: its metadata, the ref of its chunk and its index there."""

BATCHES_FILE = "batches.csv"
BATCH_COLUMNS = ["batch_id", "regime", "version", "n", "value", "monitor", "status", "reason"]
_ACTOR_ERRORS = (RayActorError, RayTaskError, ray.exceptions.ObjectLostError)


@dataclass
class _Collecting:
    """A drift waiting for its post-drift window."""

    event: DriftEvent
    t_alarm: float
    upto: int


@dataclass
class _UpdateJob:
    """An update training in the background (``on_drift: continue``) or in the foreground."""

    event: DriftEvent
    t_alarm: float
    upto: int
    kind: str
    strategy: str
    future: Future[dict[str, Any]]
    t0: float
    t1: float
    samples_during: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


class _Loop:
    """The books and the steps of one run's loop (the Coordinator's working part)."""

    def __init__(
        self,
        coord: Coordinator,
        harness: Harness,
        model: torch.nn.Module,
        weights: Weights,
        metric: str,
        higher_is_better: bool,
        device: str,
        test_row: Callable[..., list[float | None]],
    ) -> None:
        self.c = coord
        self.cfg = coord.cfg
        self.summary = coord.summary
        self.harness = harness
        self.model = model
        self.weights = weights
        self.metric = metric
        self.higher_is_better = higher_is_better
        self.device = device
        self.test_row = test_row
        self.metrics_writer: MetricsWriter
        self.batches_writer: MetricsWriter
        self.tracker: Tracker
        self.spec = coord._actor_spec()
        self.weights_ref: Any = None
        self.strategy_state: dict[str, Any] | None = None
        self.strategy_state_ref: Any = None
        # (meta, chunk ref, index in the chunk) of batches fetched and not dispatched, in stream order
        self.queue: list[_Item] = []
        self.fetch: Any = None  # the pending StreamReader.next_chunk call, if any
        self.inflight: dict[Any, tuple[list[_Item], int]] = {}  # task -> (its batches, monitor index)
        self.load: list[int] = []
        # the weights version each monitor was last sent (with a task) or built with, -1 if unknown: a
        # task carries the current version's ref only to a monitor that may not have it yet
        self.sent: list[int] = []
        self.tasks_sent = 0
        self.last_task: dict[int, int] = {}  # monitor index -> number of the last task sent to it
        self.max_in_flight = 1  # set when the monitors start
        self.stream_done = False
        self.processed = 0  # batch ids < processed were accepted
        self.samples = 0
        self.monitor_seconds = 0.0
        self.t_mon = time.perf_counter()
        self.last_value = float("nan")
        self.last_progress = 0.0
        self.batch_regime: dict[int, int] = {}
        self.pending_after: list[dict[str, Any]] = []
        self.awaiting_recovery: list[dict[str, Any]] = []
        self.collecting: _Collecting | None = None
        self.job: _UpdateJob | None = None
        self.det_log: list[tuple[Any, ...]] = []  # detector calls since the snapshot, to re-feed
        self.det_snapshot: bytes | None = None
        self.stream_snapshot: dict[str, Any] | None = None
        self.since_snapshot = 0
        self.t_snapshot = time.monotonic()
        self.restarts = {"monitor": 0, "detector": 0, "stream": 0}
        self.quarantined: set[int] = set()
        self.detect_seconds = 0.0
        self.run_metrics = RunMetrics(coord.run_dir.name, metric)  # type: ignore[union-attr]
        self.updater = Updater(
            self.cfg, self.spec, train_storage(self.cfg.ray.storage_path, coord.run_dir)  # type: ignore[arg-type]
        )

    # --- actors ------------------------------------------------------------------------------------
    def _name(self, base: str) -> str:
        """``base`` if no live actor holds that name, else ``base-r<k>`` (a dead actor's name may linger)."""
        ns = self.cfg.ray.namespace
        for k in range(100):
            name = base if k == 0 else f"{base}-r{k}"
            try:
                ray.get_actor(name, namespace=ns)
            except ValueError:
                return name
        raise RuntimeError(f"no free actor name for {base}")

    def _make_monitor(self, i: int) -> Any:
        mc, cfg = self.cfg.monitor, self.cfg
        label_free = cfg.drift_detection.label_free.signal
        name = self._name(f"monitor-{i}")
        return MonitorActor.options(  # type: ignore[attr-defined]
            name=name,
            namespace=cfg.ray.namespace,
            num_cpus=mc.num_cpus,
            num_gpus=mc.num_gpus,
            resources=dict(mc.resources) or None,  # custom resources: pin monitors to node types
            scheduling_strategy="SPREAD" if mc.scheduling == "spread" else "DEFAULT",
        ).remote(
            self.spec,
            self.metric,
            self.weights_ref,
            self.c.version,
            name,
            mc.num_cpus,
            self.device if mc.num_gpus > 0 else "cpu",
            None if label_free == "none" else label_free,
        )

    def _make_stream(self) -> Any:
        cfg = self.cfg
        return StreamReader.options(  # type: ignore[attr-defined]
            name=self._name("stream"), namespace=cfg.ray.namespace, num_cpus=0
        ).remote(self.spec, cfg.stream.model_dump(), cfg.continual_learning.model_dump())

    def _make_detector(self) -> Any:
        cfg = self.cfg
        return DetectorActor.options(  # type: ignore[attr-defined]
            name=self._name("detector"), namespace=cfg.ray.namespace, num_cpus=0
        ).remote(
            cfg.drift_detection.model_dump(),
            self.metric,
            self.higher_is_better,
            cfg.seed,
            self.harness.metric_domain(self.metric),
        )

    @staticmethod
    def _alive(handle: Any) -> bool:
        try:
            ray.get(handle.ping.remote(), timeout=60)
            return True
        except RayActorError:
            return False
        except ray.exceptions.GetTimeoutError:
            return True  # busy, not dead

    def _count_restart(self, role: str, detail: str) -> None:
        self.restarts[role] += 1
        limit = self.cfg.reliability.max_actor_restarts
        self.summary["recoveries"].append(
            {"actor": role, "detail": detail, "batch_id": self.processed, "time": dt.datetime.now().isoformat()}
        )
        if self.restarts[role] > limit:
            raise RuntimeError(
                f"the {role} actor died {self.restarts[role]} times (reliability.max_actor_restarts={limit})"
            )
        self.c.log(f"warning: {detail}; recovered (restart {self.restarts[role]}/{limit})")

    @staticmethod
    def _kill(handle: Any) -> None:
        try:
            ray.kill(handle)
        except Exception:  # noqa: BLE001 - it is dead already
            pass

    def _forget_in_flight(self) -> None:
        """Drop the books of dispatched, queued and requested batches (they will be served again).

        A dropped task may never have run (e.g. its batches were owned by a stream reader that died), so
        whether its monitor loaded the version it carried is unknown: the next task to every monitor
        carries the current version's ref again (a monitor that holds it ignores it)."""
        self.inflight.clear()
        self.queue.clear()
        self.fetch = None
        self.load = [0] * len(self.c.monitors)
        self.sent = [-1] * len(self.c.monitors)
        for b in [b for b in self.batch_regime if b >= self.processed]:
            self.batch_regime.pop(b)

    def _with_recovery(self, what: str, call: Callable[[], Any]) -> Any:
        """``call()``, recovering a dead actor and retrying when it fails for that reason."""
        for _ in range(self.cfg.reliability.max_actor_restarts + 2):
            try:
                return call()
            except _ACTOR_ERRORS as exc:
                self.recover(exc)
        raise RuntimeError(f"{what} failed repeatedly")

    def replace_monitor(self, i: int) -> None:
        """A dead monitor: a new one with the current weights; its in-flight batches go out again."""
        self._count_restart("monitor", f"monitor {i} died")
        self._kill(self.c.monitors[i])
        self.c.monitors[i] = self._make_monitor(i)
        self.sent[i] = self.c.version
        again = [item for items, j in self.inflight.values() if j == i for item in items]
        for t in [t for t, (_, j) in self.inflight.items() if j == i]:
            del self.inflight[t]
        self.load[i] = 0
        self.requeue(again)

    def restore_detector(self) -> None:
        """A dead detector: a new one from the snapshot, re-fed every call made since."""
        self._count_restart("detector", "the detector died")
        self._kill(self.c._detector)
        det = self._make_detector()
        if self.det_snapshot is not None:
            ray.get(det.load_state_dict.remote(self.det_snapshot))
        last = None
        for call in self.det_log:
            last = getattr(det, call[0]).remote(*call[1:])
        if last is not None:
            ray.get(last)
        self.c._detector = det

    def restore_stream(self) -> None:
        """A dead stream reader: a new one from the snapshot, caught up to the accepted position."""
        self._count_restart("stream", "the stream reader died")
        self._kill(self.c._stream)
        st = self._make_stream()
        if self.stream_snapshot is not None:
            ray.get(st.load_state_dict.remote(self.stream_snapshot))
        ray.get(st.catch_up.remote(self.processed - 1, sorted(self.quarantined)))
        self.c._stream = st
        # batches in flight were owned by the dead reader: serve them again
        self._forget_in_flight()
        self.stream_done = False

    def recover(self, exc: BaseException, monitor: int | None = None) -> str:
        """Which actor died (restored now), or re-raise ``exc`` when none did."""
        if not self._alive(self.c._detector):
            self.restore_detector()
            return "detector"
        if not self._alive(self.c._stream):
            self.restore_stream()
            return "stream"
        dead = [i for i in ([monitor] if monitor is not None else range(len(self.c.monitors)))
                if not self._alive(self.c.monitors[i])]
        for i in dead:
            self.replace_monitor(i)
        if dead:
            return "monitor"
        if monitor is not None and isinstance(exc, RayTaskError) and not isinstance(exc, RayActorError):
            raise exc
        # an object owned by a dead process (e.g. a batch of an earlier stream reader)
        if isinstance(exc, ray.exceptions.ObjectLostError | ray.exceptions.OwnerDiedError):
            self.restore_stream_refs()
            return "objects"
        raise exc

    def restore_stream_refs(self) -> None:
        self._forget_in_flight()
        ray.get(self.c._stream.rewind.remote(self.processed))
        self.stream_done = False

    def det_call(self, method: str, *args: Any) -> Any:
        """Call the detector (fire and forget) and log it for a re-feed after a restore."""
        self.det_log.append((method, *args))
        return getattr(self.c._detector, method).remote(*args)

    def stream_get(self, method: str, *args: Any) -> Any:
        return self._with_recovery(
            f"stream reader call {method}", lambda: ray.get(getattr(self.c._stream, method).remote(*args))
        )

    # --- set-up ------------------------------------------------------------------------------------
    def start(self, checkpoint: dict[str, Any] | None) -> None:
        c, cfg = self.c, self.cfg
        if checkpoint is not None:
            c.version = int(checkpoint["version"])
            self.weights = to_numpy(checkpoint["weights"])
            self.strategy_state = checkpoint.get("strategy_state")
            self.processed = int(checkpoint["processed"])
            books = checkpoint["books"]
            self.samples = int(books["samples"])
            self.monitor_seconds = float(books["monitor_seconds"])
            self.last_value = float(books["last_value"])
            self.quarantined = {int(q["batch_id"]) for q in self.summary["stream"].get("quarantined", [])}
            ups = self.summary["updates"]
            self.pending_after = [u for u in ups if u.get("accuracy_after") is None]
            if ups and ups[-1].get("recovery_batches") is None:
                self.awaiting_recovery = [ups[-1]]
        self.weights_ref = ray.put(self.weights)
        if self.strategy_state is not None:
            self.strategy_state_ref = ray.put(self.strategy_state)
        c._stream = self._make_stream()
        c.monitors = [self._make_monitor(i) for i in range(cfg.monitor.num_monitors)]
        self.load = [0] * len(c.monitors)
        self.sent = [c.version] * len(c.monitors)
        self.max_in_flight = cfg.monitor.max_in_flight or 2 * len(c.monitors)
        c._detector = self._make_detector()
        if checkpoint is not None:
            ray.get(c._stream.load_state_dict.remote(checkpoint["stream"]))
            ray.get(c._detector.load_state_dict.remote(checkpoint["detector"]))
        ray.get([m.stats.remote() for m in c.monitors])  # actors are up
        self.snapshot()  # a run stopped from here on can be resumed
        self.t_mon = time.perf_counter()  # monitoring time starts now, not with the actors' start-up
        c.log(
            f"{len(c.monitors)} monitor(s), detector '{cfg.drift_detection.detector}' on {self.metric} "
            f"({cfg.drift_detection.granularity} granularity), strategy '{cfg.continual_learning.strategy}', "
            f"on drift: {cfg.monitor.on_drift}"
        )
        for cb in c.callbacks:
            cb.on_run_start(c)

    # --- snapshots and checkpoints -------------------------------------------------------------------
    def snapshot(self, write: bool = True) -> None:
        """Snapshot the detector and the stream reader; with ``write``, also the on-disk checkpoint."""
        self.det_snapshot, self.stream_snapshot = self._with_recovery(
            "snapshot", lambda: ray.get([self.c._detector.state_dict.remote(), self.c._stream.state_dict.remote()])
        )
        self.det_log.clear()
        self.since_snapshot = 0
        self.t_snapshot = time.monotonic()
        rc = self.cfg.reliability
        if write and rc.checkpoints:
            self.metrics_writer.flush()
            self.batches_writer.flush()
            state = {
                "processed": self.processed,
                "version": self.c.version,
                "weights": to_state_dict(self.weights),
                "strategy_state": self.strategy_state,
                "stream": self.stream_snapshot,
                "detector": self.det_snapshot,
                "summary": summary_to_json(self.summary),
                "books": {
                    "samples": self.samples,
                    "monitor_seconds": self.monitor_seconds + time.perf_counter() - self.t_mon,
                    "last_value": self.last_value,
                },
                "metrics_rows": self.metrics_writer.rows_written,
                "batches_rows": self.batches_writer.rows_written,
                "tracker": self.tracker.state_dict(),
            }
            path = save_checkpoint(self.c.run_dir, state)  # type: ignore[arg-type]
            for cb in self.c.callbacks:
                cb.on_checkpoint(self.c, path)

    def maybe_snapshot(self) -> None:
        rc = self.cfg.reliability
        every = rc.checkpoint_every_batches or 50
        due = time.monotonic() - self.t_snapshot >= rc.checkpoint_min_seconds
        if self.since_snapshot >= every and due and self.collecting is None and self.job is None:
            self.snapshot(write=self.cfg.reliability.checkpoint_every_batches > 0)

    # --- accepting results ---------------------------------------------------------------------------
    def on_interval(self, rec: IntervalRecord) -> None:
        self.last_value = rec.value
        self.run_metrics.interval(rec.value)
        self.metrics_writer.write(rec.to_dict())
        self.tracker.log_metrics({"monitored": rec.value, **rec.metrics}, step=rec.last_batch)
        for upd in self.pending_after:
            if rec.version >= upd["version"]:
                upd["accuracy_after"] = rec.value
        self.pending_after[:] = [u for u in self.pending_after if u.get("accuracy_after") is None]
        tol = RECOVERY_TOLERANCE
        for upd in self.awaiting_recovery:
            ref = upd["pre_drift_value"]
            back = rec.value >= ref - tol if self.higher_is_better else rec.value <= ref + tol
            if rec.version >= upd["version"] and back:
                upd["recovery_batches"] = rec.last_batch - upd["drift_batch_id"]
        self.awaiting_recovery[:] = [u for u in self.awaiting_recovery if u["recovery_batches"] is None]

    def accept(self, out: DetectionOutput) -> None:
        starts = self.summary["stream"]["regime_starts"]
        newly_quarantined: list[int] = []
        for row in out.batches:
            b = int(row["batch_id"])
            self.batches_writer.write(row)
            self.batch_regime.pop(b, None)
            r = int(row["regime"])
            if row["status"] == "quarantined":
                self.quarantined.add(b)
                newly_quarantined.append(b)
                self.summary["stream"]["quarantined"].append({"batch_id": b, "reason": row["reason"]})
                self.c.log(f"warning: batch {b} quarantined: {row['reason']}")
            else:
                self.samples += int(row["n"])
                if self.job is not None:
                    self.job.samples_during += int(row["n"])
                if not starts or starts[-1]["regime"] != r:
                    starts.append({"regime": r, "batch_id": b})
                    if r not in self.summary["stream"]["regimes_seen"]:
                        self.summary["stream"]["regimes_seen"].append(r)
            for cb in self.c.callbacks:
                cb.on_batch(self.c, row)
        if out.next_batch > self.processed:
            # accepted batches join the window and the replay memory (quarantined ones do not)
            self.c._stream.commit.remote(out.next_batch - 1, newly_quarantined)
            self.since_snapshot += out.next_batch - self.processed
            self.processed = out.next_batch
        for rec in out.intervals:
            self.on_interval(rec)

    def progress(self, force: bool = False) -> None:
        now = time.perf_counter()
        if (force or now - self.last_progress > 2.0) and not math.isnan(self.last_value):
            self.last_progress = now
            total = f"/{self.cfg.stream.max_batches}" if self.cfg.stream.max_batches else ""
            rate = self.samples / max(1e-9, self.monitor_seconds + now - self.t_mon)
            self.run_metrics.throughput(rate)
            training = "  (update training)" if self.job is not None else ""
            self.c.log(
                f"[batch {self.processed}{total}] {self.metric} {self.last_value:.3f}  model v{self.c.version}  "
                f"drifts {len(self.summary['drift_events'])}  updates {len(self.summary['updates'])}  "
                f"{rate:,.0f} samples/s{training}"
            )

    # --- dispatching ---------------------------------------------------------------------------------
    def drain(self) -> None:
        """Let in-flight batches finish and forget them (they are served again after a rewind)."""
        if self.inflight:
            ray.wait(list(self.inflight), num_returns=len(self.inflight))
        self._forget_in_flight()

    def rewind(self, batch_id: int) -> None:
        """Serve the stream again from ``batch_id``; batches queued or requested before are dropped."""
        self.queue.clear()
        self.fetch = None
        self.stream_get("rewind", batch_id)
        self.stream_done = False

    def requeue(self, items: list[_Item]) -> None:
        """Batches to dispatch again (their monitor died), in stream order ahead of the rest."""
        self.queue[:0] = items
        self.queue.sort(key=lambda item: item[0].batch_id)

    @property
    def chunk_size(self) -> int:
        return max(self.cfg.stream.prefetch, self.cfg.monitor.batches_per_task)

    def request_chunk(self) -> None:
        """Keep one ``next_chunk`` call pending while the queue runs low (the driver does not wait for
        the stream reader, which may be pacing the stream, unless it has nothing else to do)."""
        if self.fetch is None and not self.stream_done and len(self.queue) < self.chunk_size:
            self.fetch = self.c._stream.next_chunk.remote(self.chunk_size)

    def take_chunk(self) -> None:
        """Wait for the pending ``next_chunk`` call and queue its batches (or note the stream's end)."""
        ref, self.fetch = self.fetch, None
        if ref is None:
            return
        try:
            metas, chunk = ray.get(ref)
        except _ACTOR_ERRORS as exc:
            self.recover(exc)  # the stream reader is restored and the queue is empty: fetch again
            return
        if not metas:
            self.stream_done = True
            return
        self.queue.extend((meta, chunk, j) for j, meta in enumerate(metas))

    def fill(self) -> None:
        """Keep the pipeline full; while collecting a post-drift window, not beyond its end.

        A monitor task evaluates up to ``monitor.batches_per_task`` consecutive batches. A shorter
        group goes out only to an idle monitor (or when no more batches can join it), so a busy
        pipeline runs full groups and a slow (paced) stream is not held back."""
        mc = self.cfg.monitor
        k = mc.batches_per_task
        self.request_chunk()
        while self.queue and len(self.inflight) < self.max_in_flight:
            if self.job is not None and mc.on_drift == "pause":
                return
            upto = self.collecting.upto if self.collecting is not None else None
            n = 0
            while n < min(k, len(self.queue)) and (upto is None or self.queue[n][0].batch_id <= upto):
                n += 1
            if n == 0:
                return
            # the least loaded monitor; among equals the one that waited longest (a slow stream's
            # single batches go round the monitors rather than all to the first)
            i = min(range(len(self.c.monitors)), key=lambda j: (self.load[j], self.last_task.get(j, -1), j))
            more_coming = self.fetch is not None and n == len(self.queue)
            if n < k and self.load[i] > 0 and more_coming:
                return  # every monitor is busy: let the group fill up
            group, self.queue[:n] = self.queue[:n], []
            self.dispatch(group, i)
            self.request_chunk()

    def dispatch(self, group: list[_Item], i: int) -> None:
        for meta, _, _ in group:
            self.batch_regime[meta.batch_id] = meta.regime
        version = self.c.version
        weights_ref = self.weights_ref if self.sent[i] < version else None
        self.sent[i] = version
        args = evaluate_many_args([(meta.batch_id, ref, j) for meta, ref, j in group], version, weights_ref)
        task = self.c.monitors[i].evaluate_many.remote(*args)
        self.inflight[task] = (group, i)
        self.load[i] += 1
        self.tasks_sent += 1
        self.last_task[i] = self.tasks_sent

    def ingest(self, task: Any, i: int, items: list[_Item]) -> DetectionOutput | None:
        """The detector's output for a finished task; None when the task's monitor had died (its
        batches, these included, are queued again)."""
        for _ in range(self.cfg.reliability.max_actor_restarts + 2):
            t0 = time.perf_counter()
            try:
                out: DetectionOutput = ray.get(self.c._detector.ingest_many.remote(task))
                self.detect_seconds += time.perf_counter() - t0
                self.det_log.append(("ingest_many", task))
                return out
            except _ACTOR_ERRORS as exc:
                what = self.recover(exc, monitor=i)
                if what == "monitor":
                    self.requeue(items)
                if what != "detector":
                    return None
        raise RuntimeError("the detector failed repeatedly")

    # --- the loop ------------------------------------------------------------------------------------
    def run(self, checkpoint: dict[str, Any] | None) -> None:
        self.start(checkpoint)
        post = self.cfg.continual_learning.post_drift_batches
        while True:
            self.fill()
            if self.job is not None and self.job.future.done():
                self.finish_update()
                continue
            if not self.inflight:
                paused = self.job is not None and self.cfg.monitor.on_drift == "pause"
                if self.job is not None and (paused or (self.stream_done and not self.queue)):
                    self.job.future.result()  # wait; errors are captured in the result
                    continue
                ended = self.stream_done and not self.queue
                if self.job is None and self.collecting is not None and (
                    self.processed > self.collecting.upto
                    or ended
                    or (self.queue and self.queue[0][0].batch_id > self.collecting.upto)
                ):
                    # the window is complete (nothing of it left to serve), or the stream ended first
                    self.start_update(self.collecting, min(self.collecting.upto, self.processed - 1))
                    continue
                if self.stream_done and not self.queue:
                    break
                if self.queue:
                    raise RuntimeError(f"nothing in flight but {len(self.queue)} batch(es) queued")
                self.request_chunk()
                if self.job is None:
                    self.take_chunk()  # nothing else to do: wait for the stream
                    continue
                # an update trains (on_drift: continue): wait for the stream or the update, below
            timeout = 0.05 if self.job is not None else None
            waiting = [*self.inflight, *([self.fetch] if self.fetch is not None else [])]
            ready, _ = ray.wait(waiting, num_returns=1, timeout=timeout, fetch_local=False)
            if not ready:
                continue
            task = ready[0]
            if self.fetch is not None and task == self.fetch:
                self.take_chunk()
                continue
            items, i = self.inflight.pop(task)
            self.load[i] -= 1
            out = self.ingest(task, i, items)
            if out is None:
                continue
            self.accept(out)
            self.progress(force=bool(out.events))
            if out.events:
                self.on_event(out.events[0], post)
            elif self.collecting is not None and self.processed > self.collecting.upto:
                self.start_update(self.collecting, self.collecting.upto)
            self.maybe_snapshot()
        if self.job is not None:
            self.finish_update()
        self.end()

    def on_event(self, event: DriftEvent, post: int) -> None:
        rec = event.to_dict()
        self.summary["drift_events"].append(rec)
        self.run_metrics.drift(event.detector)
        self.tracker.log_metrics({"drift": 1.0}, step=event.batch_id)
        self.c.log(
            f"drift at batch {event.batch_id} (regime {event.regime}): {self.metric} {event.value:.3f} "
            f"vs {event.reference:.3f} before, detector {event.detector}"
        )
        for cb in self.c.callbacks:
            cb.on_drift(self.c, rec)
        if self.collecting is not None:  # a second alarm while collecting: train on what we have
            self.start_update(self.collecting, event.batch_id, after_alarm=True)
        elif post == 0:
            self.start_update(_Collecting(event, time.perf_counter(), event.batch_id), event.batch_id, after_alarm=True)
        else:
            # keep monitoring with the current weights until the post-drift window is complete
            self.collecting = _Collecting(event, time.perf_counter(), event.batch_id + post)
            self.drain()
            self.rewind(event.batch_id + 1)
            self.det_call("resume_after_update", event.batch_id + 1, self.c.version)
            self.c.log(f"collecting {post} post-drift batch(es) before the update", level=2)

    # --- updates -------------------------------------------------------------------------------------
    def start_update(self, col: _Collecting, upto: int, after_alarm: bool = False) -> None:
        """Train on the window ending at ``upto`` (in the background with ``on_drift: continue``).

        ``after_alarm``: called on the alarm itself, so the engine is paused at ``upto``.
        """
        cfg, c = self.cfg, self.c
        self.collecting = None
        pause = cfg.monitor.on_drift == "pause"
        t0 = time.perf_counter()
        if pause:
            self.monitor_seconds += t0 - self.t_mon
            self.drain()
        else:
            if after_alarm:  # results after the alarm were dropped: serve them again
                self.drain()
                self.rewind(upto + 1)
                self.det_call("resume_after_update", upto + 1, c.version)
                self.processed = upto + 1
            self.det_call("hold")
        holdout = cfg.promotion.holdout_batches if cfg.promotion.enabled else 0

        def fetch() -> Any:
            ref = c._stream.update_data.remote(upto, holdout)
            ray.get(ref)  # raise here if the stream reader died
            return ref

        data_ref = self._with_recovery("update data", fetch)
        t1 = time.perf_counter()
        event = col.event
        for cb in c.callbacks:
            cb.on_update_start(c, event.to_dict())
        # the drift's score picks the kind of update (drift_detection.regimes)
        kind = getattr(event, "update_kind", "continual_learning") or "continual_learning"
        start_ref, strategy = self.weights_ref, cfg.continual_learning.strategy
        if kind == "fine_tuning":
            strategy = "naive"  # plain fine-tuning on the window
        elif kind == "retrain":
            torch.manual_seed(cfg.seed + c.version + 1)  # re-initialise, then memory + window
            start_ref = ray.put(to_numpy(self.harness.build_model().state_dict()))
        future = run_in_thread(
            self._train_and_gate, start_ref, data_ref, c.version + 1, strategy, self.strategy_state_ref, self.weights
        )
        self.job = _UpdateJob(event, col.t_alarm, upto, kind, strategy, future, t0, t1)
        if pause:
            future.result()
            self.finish_update()

    def _train_and_gate(
        self,
        start_ref: Any,
        data_ref: Any,
        version: int,
        strategy: str,
        strategy_state_ref: Any,
        current: Weights,
    ) -> dict[str, Any]:
        """Runs in the update thread: Ray Train, then the promotion gate. Never raises."""
        res: dict[str, Any] = {"outcome": None, "error": None, "gate": None}
        t0 = time.perf_counter()
        try:
            res["outcome"] = self.updater.run(
                start_ref, data_ref, version, strategy=strategy, strategy_state_ref=strategy_state_ref
            )
        except Exception as exc:  # noqa: BLE001 - a failed update keeps the old model
            res["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
        t1 = time.perf_counter()
        res["training_seconds"] = t1 - t0
        if res["outcome"] is not None and self.cfg.promotion.enabled:
            try:
                res["gate"] = self._gate(ray.get(data_ref), current, res["outcome"].weights)
            except Exception as exc:  # noqa: BLE001 - a gate that cannot decide rejects
                res["gate"] = {"promote": False, "reason": f"the gate failed: {type(exc).__name__}: {exc}"}
        res["gating_seconds"] = time.perf_counter() - t1
        return res

    def _gate(self, data: UpdateData, current: Weights, candidate: Weights) -> dict[str, Any]:
        """Promote only if the candidate matches the current model on the holdout (within
        ``tolerance``) and loses at most ``max_memory_drop`` on the memory (monitored metric)."""
        pc = self.cfg.promotion
        sign = 1.0 if self.higher_is_better else -1.0

        models = []
        for w in (current, candidate):
            m = self.harness.build_model()
            load_into(m, w)
            models.append(m)

        def score(m: torch.nn.Module, x: torch.Tensor | None, y: torch.Tensor | None) -> float | None:
            if x is None or y is None or len(y) == 0:
                return None
            return evaluate(m, self.harness, x, y).get(self.metric)

        hold_cur, hold_new = (score(m, data.holdout_x, data.holdout_y) for m in models)
        mem_cur, mem_new = (score(m, data.memory_x, data.memory_y) for m in models)
        reasons = []
        if hold_cur is not None and hold_new is not None and sign * (hold_new - hold_cur) < -pc.tolerance:
            reasons.append(f"holdout {self.metric} {hold_new:.3f} < current {hold_cur:.3f} - tolerance {pc.tolerance}")
        drop = pc.max_memory_drop
        if drop is not None and mem_cur is not None and mem_new is not None and sign * (mem_new - mem_cur) < -drop:
            reasons.append(f"memory {self.metric} {mem_new:.3f} dropped more than {drop} from {mem_cur:.3f}")
        return {
            "promote": not reasons,
            "reason": "; ".join(reasons),
            "holdout_current": hold_cur,
            "holdout_new": hold_new,
            "memory_current": mem_cur,
            "memory_new": mem_new,
            "holdout_samples": 0 if data.holdout_y is None else len(data.holdout_y),
        }

    def sync_monitors(self) -> None:
        """Every monitor on the current version now, waited for (a dead one is replaced, already with
        it). During the run a new version reaches each monitor with its next task instead; this is
        for the end, so that no monitor is left on an older version (and its weights)."""
        c, version = self.c, self.c.version
        acks = self._with_recovery(
            f"loading version {version} on the monitors",
            lambda: ray.get([m.set_weights.remote(version, self.weights_ref) for m in c.monitors]),
        )
        if any(a != version for a in acks):
            raise RuntimeError(f"monitors did not load version {version}: {acks}")
        self.sent = [version] * len(c.monitors)

    def finish_update(self) -> None:
        job, cfg, c = self.job, self.cfg, self.c
        assert job is not None
        res = job.future.result()
        self.job = None
        pause = cfg.monitor.on_drift == "pause"
        t2 = time.perf_counter()
        outcome: UpdateOutcome | None = res["outcome"]
        gate = res["gate"]
        event, upto = job.event, job.upto
        if outcome is None or (gate is not None and not gate["promote"]):
            status = "failed" if outcome is None else "rejected"
            reason = res["error"] if outcome is None else gate["reason"]
            rec = {
                "status": status,
                "reason": reason,
                "drift_batch_id": event.batch_id,
                "window_last_batch_id": upto,
                "version_kept": c.version,
                "strategy": job.strategy,
                "update_kind": job.kind,
                "training_seconds": round(res["training_seconds"], 4),
                "gate": gate,
            }
            self.summary["rejected_updates"].append(rec)
            self.tracker.log_metrics({f"update_{status}": 1.0}, step=upto)
            c.log(f"warning: update after the drift at batch {event.batch_id} {status} ({reason}); model v{c.version} stays")
            if pause:
                self.rewind(upto + 1)
                self.det_call("resume_after_update", upto + 1, c.version)
                self.processed = upto + 1
                self.t_mon = time.perf_counter()
            else:
                self.det_call("release", c.version)
            self.snapshot()
            for cb in c.callbacks:
                cb.on_update_end(c, rec)
            return
        c.version += 1
        version = c.version
        self.weights = outcome.weights
        if outcome.strategy_state is not None:
            self.strategy_state = outcome.strategy_state
            self.strategy_state_ref = ray.put(outcome.strategy_state)
        # the broadcast: one ray.put; every task sent from now on carries this version, and each monitor
        # loads it from the object store (shared, not copied, by monitors on a node) before its next task
        self.weights_ref = ray.put(self.weights)
        t3 = time.perf_counter()
        if pause:
            self.rewind(upto + 1)
            self.det_call("resume_after_update", upto + 1, version)
            self.processed = upto + 1
        else:
            self.det_call("release", version)
        prev = self.summary["accuracy_matrix"]["rows"][-1]["accuracy"]
        load_into(self.model, self.weights)
        after = self.test_row(f"update-{version}", version, upto, self.model)
        regimes = self.summary["accuracy_matrix"]["regimes"]
        m = outcome.metrics
        upd: dict[str, Any] = {
            "version": version,
            "status": "promoted",
            "drift_batch_id": event.batch_id,
            "window_last_batch_id": upto,
            "live_batch_id": upto + 1 if pause else self.processed,
            "strategy": job.strategy,
            "update_kind": job.kind,
            "score": getattr(event, "score", None),
            "on_drift": cfg.monitor.on_drift,
            "collecting_seconds": round(job.t0 - job.t_alarm, 4),
            "waiting_seconds": round(job.t1 - job.t0, 4),
            "training_seconds": round(res["training_seconds"], 4),
            "gating_seconds": round(res["gating_seconds"], 4),
            "broadcasting_seconds": round(t3 - t2, 4),
            "total_seconds": round(t3 - job.t0, 4),
            "samples_during_update": job.samples_during,
            "window_samples": int(m.get("window_samples", 0)),
            "memory_samples": int(m.get("memory_samples", 0)),
            "train_loss": m.get("train_loss"),
            "train_steps": m.get("steps"),
            "train_loop_seconds": m.get("seconds"),  # the gradient steps alone
            "train_forward_backward_seconds": m.get("forward_backward_seconds"),
            "train_optimizer_seconds": m.get("optimizer_seconds"),
            "train_torch_threads": m.get("torch_threads"),
            "window_accuracy_after_training": m.get("window_accuracy"),
            "memory_accuracy_after_training": m.get("memory_accuracy"),
            "gate": gate,
            "regime": event.regime,
            "accuracy_before": event.value,
            "pre_drift_value": event.reference,
            # batches from the drift until the monitored metric is back within RECOVERY_TOLERANCE
            # of its pre-drift level (None: not within this regime)
            "recovery_batches": None,
            "accuracy_after": None,
            "test_accuracy_before": dict(zip(regimes, prev, strict=True)),
            "test_accuracy_after": dict(zip(regimes, after, strict=True)),
        }
        self.summary["updates"].append(upd)
        self.awaiting_recovery.clear()  # a new drift ends the wait of earlier updates (recovery: None)
        self.awaiting_recovery.append(upd)
        self.run_metrics.update(upd)
        self.pending_after.append(upd)
        self.tracker.log_metrics(
            {
                "update_total_seconds": upd["total_seconds"],
                "update_training_seconds": upd["training_seconds"],
                "model_version": float(version),
            },
            step=upto,
        )
        cur = regimes.index(event.regime) if event.regime in regimes else None
        before_s = f"{prev[cur]:.3f}" if cur is not None and prev[cur] is not None else "n/a"
        after_s = f"{after[cur]:.3f}" if cur is not None and after[cur] is not None else "n/a"
        during = f", {job.samples_during} samples monitored meanwhile" if not pause else ""
        c.log(
            f"update v{version} on batches {max(0, upto + 1 - cfg.continual_learning.window_batches)}-{upto}"
            f" + memory: waiting {job.t1 - job.t0:.2f}s, training {res['training_seconds']:.2f}s, "
            f"gate {res['gating_seconds']:.2f}s, broadcasting {t3 - t2:.2f}s{during}; "
            f"regime {event.regime} test accuracy {before_s} -> {after_s}"
        )
        if pause:
            self.t_mon = time.perf_counter()
        self.snapshot()
        for cb in c.callbacks:
            cb.on_update_end(c, upd)

    # --- the end -------------------------------------------------------------------------------------
    def end(self) -> None:
        c, cfg, summary = self.c, self.cfg, self.summary
        self.monitor_seconds += time.perf_counter() - self.t_mon
        self.t_mon = time.perf_counter()
        for rec in ray.get(c._detector.finish.remote()):
            self.on_interval(rec)
        self.sync_monitors()
        stats = ray.get([m.stats.remote() for m in c.monitors])
        summary["stream"]["batches"] = self.processed
        summary["stream"]["samples"] = self.samples
        during = sum(u.get("samples_during_update", 0) for u in summary["updates"])
        summary["monitoring"].update(
            {
                "samples_per_second": round(self.samples / max(self.monitor_seconds, 1e-9), 2),
                "batches_per_second": round(self.processed / max(self.monitor_seconds, 1e-9), 3),
                "monitoring_seconds": round(self.monitor_seconds, 3),
                "samples_during_updates": during,
                "monitor_versions": {s["name"]: s["version"] for s in stats},
                "monitor_batches": {s["name"]: s["batches"] for s in stats},
                "monitor_torch_threads": {s["name"]: s["torch_threads"] for s in stats},
                "monitor_nodes": {s["name"]: s.get("node_id") for s in stats},
                "eval_seconds_total": round(sum(s["eval_seconds"] for s in stats), 3),
                "quarantined_batches": len(summary["stream"]["quarantined"]),
                "actor_restarts": dict(self.restarts),
            }
        )
        prof = summary.setdefault("profile", {})
        ups = summary["updates"]
        prof.update(
            {
                "inference_seconds": round(sum(s["eval_seconds"] for s in stats), 4),
                "detection_seconds": round(self.detect_seconds, 4),
                "update_training_seconds": round(sum(u["training_seconds"] for u in ups), 4),
                "update_forward_backward_seconds": round(
                    sum(u.get("train_forward_backward_seconds") or 0.0 for u in ups), 4
                ),
                "update_optimizer_seconds": round(sum(u.get("train_optimizer_seconds") or 0.0 for u in ups), 4),
                "update_gating_seconds": round(sum(u.get("gating_seconds") or 0.0 for u in ups), 4),
                "broadcast_seconds": round(sum(u["broadcasting_seconds"] for u in ups), 4),
                # the monitors' side of it: fetching and loading new versions at the start of a task
                "monitor_swap_seconds": round(sum(s.get("swap_seconds", 0.0) for s in stats), 4),
                "accuracy_matrix_seconds": round(prof.get("accuracy_matrix_seconds", 0.0), 4),
            }
        )
        summary["model_version"] = c.version
        late = [u for u in ups if u.get("on_drift") == "continue" and u["live_batch_id"] >= self.processed - 1]
        if late:
            c.log(
                f"note: the stream ended while update v{late[-1]['version']} was training, "
                f"{late[-1]['samples_during_update']} samples were monitored with the old weights meanwhile; "
                "for a recorded stream replayed faster than an update, use monitor.on_drift: pause "
                "(or pace it with stream.max_batches_per_second)"
            )
        if cfg.logging.save_weights:
            save_weights(self.weights, c.run_dir / "weights.pt")  # type: ignore[operator]
        self.snapshot()

    def record_books(self) -> None:
        """The stream's counts in the summary as the loop has them now (also when the run was stopped
        early: they match ``batches.csv``)."""
        st = self.summary["stream"]
        st["batches"] = self.processed
        st["samples"] = self.samples
        self.summary["model_version"] = self.c.version
