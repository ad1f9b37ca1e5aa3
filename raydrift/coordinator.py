"""The coordinator: one raydrift job from its config to its summary.

:meth:`Coordinator.run` checks the config and the harness before anything starts (one-line
:class:`~raydrift.errors.UserError` for a mistake), starts or joins Ray, opens the run directory (or
the one being resumed), builds or pre-trains the initial model, then hands over to the loop
(:class:`raydrift.pipeline.loop.Loop`: dispatch, detection, updates, broadcast). However the run ends,
completed, interrupted by a signal or failed, the summary, the CSV files and the plots are written
and what the run started is stopped. docs/architecture.md maps the modules.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray
import torch

from raydrift.callbacks import Callback, CallbackManager
from raydrift.checkpoint import load_checkpoint, truncate_csv
from raydrift.config import RaydriftConfig, save_config
from raydrift.detection.engine import DetectionEngine
from raydrift.errors import UserError
from raydrift.harness import Harness
from raydrift.learning.loop import pretrain
from raydrift.pipeline.heldout import HeldOut
from raydrift.pipeline.loop import Loop, LoopParts
from raydrift.pipeline.records import ResumeMark, RunSummary
from raydrift.pipeline.summary import cl_metrics, new_summary, write_outputs
from raydrift.pipeline.update import run_in_thread
from raydrift.preflight import Preflight, check_config, check_resources, harness_call, local_resources
from raydrift.report import MetricsWriter, format_summary, summary_from_json
from raydrift.session import (
    RayInfo,
    RaySession,
    RunInterrupted,
    install_stop_handlers,
    restore_handlers,
    stopping,
)
from raydrift.tracking import Tracker, make_tracker
from raydrift.trainer import StandingTrainer, make_updater
from raydrift.update import Updater, copy_run_outputs, train_storage
from raydrift.weights import load_into, load_weights

__all__ = ["BATCHES_FILE", "BATCH_COLUMNS", "ERROR_LOG", "Coordinator", "error_line", "make_run_dir", "run_in_thread"]

Console = Callable[[str], None]

BATCHES_FILE = "batches.csv"
BATCH_COLUMNS = ["batch_id", "regime", "version", "n", "value", "monitor", "status", "reason"]


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
        self.session = RaySession(cfg, self.address)
        self.summary = RunSummary()
        self.callbacks = CallbackManager(callbacks)
        self.resume = resume
        self.loop: Loop | None = None

    @property
    def version(self) -> int:
        """The live model version (0 before the loop starts)."""
        return self.loop.stages.broadcast.version if self.loop is not None else 0

    def log(self, msg: str, level: int = 1) -> None:
        if self.cfg.verbosity >= level:
            self.console(msg)

    def _harness_spec(self) -> dict[str, Any]:
        cfg = self.cfg
        return {"spec": cfg.model.harness, "options": dict(cfg.data), "seed": cfg.seed, "batch_size": cfg.stream.batch_size}

    # --- the run -------------------------------------------------------------------------------
    def run(self) -> RunSummary:
        """Check the config, start Ray, run the loop; the summary is written however the run ends.

        A mistake in the config, the harness or the cluster's size raises a one-line
        :class:`UserError` before anything starts. Once the run directory exists, every ending
        (completed, interrupted by a signal, failed) writes the summary, the CSV files and the plots,
        and stops what the run started; a failure is re-raised after that.
        """
        started = dt.datetime.now()
        t_start = time.perf_counter()
        # The driver's own work (pre-training, the accuracy matrix) is small; the cores belong to the
        # actors. More threads here slow everything down on a small, busy machine.
        torch.set_num_threads(1)
        pre = check_config(self.cfg)
        checkpoint = self._load_checkpoint(pre) if self.resume else None
        info = self._start_ray()
        # ray.init replaced the SIGTERM handler: a stop must end the run cleanly, not exit the driver
        handlers = install_stop_handlers() if self.session.connected else {}
        state = _RunState()
        try:
            run_dir = self._open_run(pre, checkpoint, started)
            self.summary.run.ray_address, self.summary.run.dashboard_url = info.address, info.dashboard_url
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
                if self.run_dir is not None and self.summary.run.run_dir:
                    self._finish_run(state, t_start)
            finally:
                self._shutdown()
                restore_handlers(handlers)
        self.log(format_summary(self.summary.to_dict()))
        return self.summary

    def _load_checkpoint(self, pre: Preflight) -> dict[str, Any]:
        """The checkpoint to resume from, every field checked before Ray starts: its detector state is
        loaded into an engine built as the DetectorActor will build it (a one-line error if refused)."""
        assert self.run_dir is not None
        engine = DetectionEngine(
            self.cfg.drift_detection, pre.metric, pre.higher_is_better, seed=self.cfg.seed,
            domain=pre.harness.metric_domain(pre.metric),
        )
        return load_checkpoint(self.run_dir, engine=engine)

    def _start_ray(self) -> RayInfo:
        """Start or connect to Ray after checking that the config fits (a local cluster is checked
        against this machine before it starts, an existing one once connected; skipped when the
        cluster autoscales)."""
        cfg = self.cfg
        local = not ray.is_initialized() and not self.address
        if local and not cfg.ray.autoscaling:
            check_resources(cfg, local_resources(cfg), "this machine")
        info = self.session.start()
        try:
            if not cfg.ray.autoscaling:
                check_resources(cfg, ray.cluster_resources())
        except BaseException:
            self.session.shutdown()
            raise
        return info

    def _open_run(self, pre: Preflight, checkpoint: dict[str, Any] | None, started: dt.datetime) -> Path:
        """The run directory and the summary (new, or the checkpoint's with this resume noted)."""
        if self.run_dir is None:
            self.run_dir = make_run_dir(self.cfg)
        run_dir = self.run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        if checkpoint is None:
            save_config(self.cfg, run_dir / "config.yaml")
            self.summary = new_summary(self.cfg, run_dir, pre.metric, pre.higher_is_better, started)
            regimes = sorted(pre.test_sets)
            self.summary.stream.regime_names = {r: pre.regime_names.get(r, f"regime-{r}") for r in regimes}
            self.summary.accuracy_matrix.regimes = regimes
        else:
            self.summary = RunSummary.from_dict(summary_from_json(checkpoint["summary"]))
            run = self.summary.run
            run.resumed.append(ResumeMark(at=started.isoformat(timespec="seconds"), batch_id=int(checkpoint["processed"])))
            run.status, run.finished, run.error, run.signal = "running", None, None, None
            run.run_dir = str(run_dir)
        self.log(f"run directory: {run_dir}")
        return run_dir

    def _initial_model(self, harness: Harness, device: str, checkpoint: dict[str, Any] | None) -> torch.nn.Module:
        """The checkpoint's model when resuming; else build it and load ``model.checkpoint`` or
        pre-train it. It stays on ``device`` (the driver pre-trains and evaluates the test sets there)."""
        cfg, spec = self.cfg, self.cfg.model.harness
        torch.manual_seed(cfg.seed)
        model = harness_call(spec, "build_model()", harness.build_model)
        if checkpoint is not None:
            load_into(model, checkpoint["weights"])
            self.log(f"resuming at batch {checkpoint['processed']} (model v{checkpoint['version']})")
            return model.to(device)
        mc = cfg.model
        if mc.checkpoint:
            load_into(model, load_weights(Path(mc.checkpoint)))  # checked before the run started (preflight)
            self.log(f"initial weights from {mc.checkpoint}")
        model.to(device)
        if mc.checkpoint or mc.pretrain_epochs <= 0:
            return model
        data = harness_call(spec, "pretrain_data()", harness.pretrain_data)
        if data is not None:
            t0 = time.perf_counter()
            losses = harness_call(
                spec, "pre-training (loss, metrics or build_optimizer)", pretrain, model, harness, data[0], data[1],
                mc.pretrain_epochs, mc.pretrain_lr, cfg.train.batch_size, cfg.seed,
            )
            self.log(
                f"pre-trained the initial model on {len(data[1])} samples for {mc.pretrain_epochs} "
                f"epoch(s) in {time.perf_counter() - t0:.1f}s (loss {losses[-1]:.3f})"
            )
        return model

    def _run_loop(self, pre: Preflight, checkpoint: dict[str, Any] | None, run_dir: Path, state: _RunState) -> None:
        cfg = self.cfg
        # a standing trainer's workers start now, while the model pre-trains and the stream is monitored
        updater = make_updater(cfg, self._harness_spec(), train_storage(cfg.ray.storage_path, run_dir))
        updater.start()
        try:
            self._loop(pre, checkpoint, run_dir, state, updater)
        finally:
            updater.shutdown()

    def _loop(
        self,
        pre: Preflight,
        checkpoint: dict[str, Any] | None,
        run_dir: Path,
        state: _RunState,
        updater: Updater | StandingTrainer,
    ) -> None:
        cfg = self.cfg
        model = self._initial_model(pre.harness, pre.device, checkpoint)
        if checkpoint is None:
            HeldOut(pre.harness, pre.test_sets, model, self.summary).row("initial", 0, -1)
        tracker: Tracker = make_tracker(cfg.logging, Path(cfg.logging.runs_dir).resolve())
        state.tracker = tracker
        resumed = checkpoint is not None
        if checkpoint is not None:
            tracker.load_state_dict(checkpoint.get("tracker") or {})
            truncate_csv(run_dir / "metrics.csv", int(checkpoint["metrics_rows"]))
            truncate_csv(run_dir / BATCHES_FILE, int(checkpoint["batches_rows"]))
        tracker.start(run_dir.name, cfg.to_dict())
        self.summary.tracking = tracker.info()
        writers = (
            MetricsWriter(run_dir, append=resumed),
            MetricsWriter(run_dir, columns=BATCH_COLUMNS, append=resumed, filename=BATCHES_FILE),
        )
        state.writers = list(writers)
        parts = LoopParts(
            run_dir, self.summary, pre.harness, self._harness_spec(), model, pre.device, pre.test_sets, writers, tracker,
            updater,
        )
        self.loop = state.loop = Loop(cfg, parts, self.callbacks, self.log)
        self.loop.run(checkpoint)

    def _finish_run(self, state: _RunState, t_start: float) -> None:
        """Close the books of a run however it ended: summary, CSV exports, plots, tracking."""
        cfg, summary, run_dir = self.cfg, self.summary, self.run_dir
        assert run_dir is not None
        if state.loop is not None:
            state.loop.record_books()
        for w in state.writers:
            w.close()
        run = summary.run
        run.status = state.status
        if isinstance(state.interrupted, RunInterrupted):
            run.signal = signal.Signals(state.interrupted.signum).name
        elif state.interrupted is not None:
            run.signal = "SIGINT"
        run.error = None if state.error is None else error_line(state.error)
        run.finished = dt.datetime.now().isoformat(timespec="seconds")
        run.wall_seconds = round(time.perf_counter() - t_start, 3)
        if state.error is not None:
            write_error_log(run_dir, state.error)
        cl_metrics(summary)
        tracker = state.tracker
        cl = {k: v for k, v in summary.cl_metrics.items() if isinstance(v, int | float)}
        if tracker is not None and cl:
            tracker.log_metrics(cl, step=summary.stream.batches)
        if tracker is not None:
            summary.tracking = tracker.info()  # a fallback store mid-run changes it
        write_outputs(run_dir, summary, cfg.logging.plots, self.log)
        if tracker is not None:
            tracker.log_artifacts(run_dir)
        try:
            dest = copy_run_outputs(run_dir, cfg.ray.storage_path)
            if dest:
                self.log(f"outputs copied to {dest}")
        except Exception as exc:  # noqa: BLE001 - a failed copy must not lose the run
            self.log(f"warning: copying outputs to ray.storage_path failed: {exc}")
        if tracker is not None:
            tracker.finish(state.status)
        self.callbacks.invoke("on_run_end", summary)

    def _shutdown(self) -> None:
        """Kill the run's actors and end the Ray session (a cluster this run started stops with it)."""
        if not ray.is_initialized():
            return
        if self.loop is not None:
            # on a cluster that outlives the run, wait until the actor names are free for the next run
            self.loop.stages.supervisor.shutdown(wait_for_names=not self.session.started)
        self.session.shutdown()


@dataclass
class _RunState:
    """How far a run got, for closing its books however it ends."""

    loop: Loop | None = None
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
