"""The update lifecycle: drift -> post-drift window -> training -> promotion gate -> broadcast.

On a drift at batch ``b`` the loop keeps monitoring until the post-drift window
(``continual_learning.post_drift_batches``) is complete (:class:`PendingDrift`), then
:meth:`UpdateLifecycle.start` fetches the update's data (window + replay memory) from the stream reader
and trains in a background thread (:func:`raydrift.update.Updater.run`, Ray Train), then the candidate
goes through the promotion gate (:func:`raydrift.pipeline.gate.promotion_gate`).
:meth:`UpdateLifecycle.finish` either publishes it (:class:`raydrift.pipeline.broadcast.Broadcast`)
and records an :class:`UpdateRecord`, or keeps the old weights and records a
:class:`NotPromotedRecord` (failed: an exception; rejected: the gate). What the stream does meanwhile is
the on-drift policy's (:mod:`raydrift.pipeline.policy`).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import ray
import torch

from raydrift.callbacks import CallbackManager
from raydrift.config import RaydriftConfig
from raydrift.detection.engine import DriftEvent
from raydrift.harness import Harness
from raydrift.metrics import RunMetrics
from raydrift.pipeline.adaptation import AdaptationWatch
from raydrift.pipeline.gate import promotion_gate
from raydrift.pipeline.heldout import HeldOut
from raydrift.pipeline.policy import OnDriftPolicy
from raydrift.pipeline.records import GateDecision, NotPromotedRecord, RunSummary, UpdateRecord
from raydrift.pipeline.stages import Stages
from raydrift.tracking import Tracker
from raydrift.trainer import StandingTrainer
from raydrift.update import UpdateOutcome, Updater
from raydrift.weights import Weights, to_numpy

__all__ = ["PendingDrift", "TrainResult", "UpdateJob", "UpdateLifecycle", "run_in_thread"]


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


@dataclass
class PendingDrift:
    """A drift waiting for its post-drift window (batches up to ``upto``)."""

    event: DriftEvent
    t_alarm: float
    upto: int


@dataclass
class TrainResult:
    """What the update thread hands back (it never raises)."""

    outcome: UpdateOutcome | None
    error: str | None
    gate: GateDecision | None
    training_seconds: float
    gating_seconds: float


@dataclass
class UpdateJob:
    """An update training in the background (``on_drift: continue``) or in the foreground."""

    event: DriftEvent
    t_alarm: float
    upto: int
    kind: str
    strategy: str
    future: Future[TrainResult]
    t0: float
    t1: float
    followup: int = 0


class UpdateLifecycle:
    """Starts, trains, gates and closes the books of one update at a time."""

    def __init__(
        self,
        cfg: RaydriftConfig,
        harness: Harness,
        stages: Stages,
        policy: OnDriftPolicy,
        updater: Updater | StandingTrainer,
        heldout: HeldOut,
        summary: RunSummary,
        tracker: Tracker,
        run_metrics: RunMetrics,
        callbacks: CallbackManager,
        log: Callable[..., None],
        snapshot: Callable[[], None],
        adaptation: AdaptationWatch,
    ) -> None:
        self.cfg, self.harness, self.stages, self.policy = cfg, harness, stages, policy
        self.updater, self.heldout, self.summary = updater, heldout, summary
        self.tracker, self.run_metrics, self.callbacks = tracker, run_metrics, callbacks
        self.log, self.snapshot, self.adaptation = log, snapshot, adaptation
        self.metric = summary.detection.metric
        self.higher_is_better = summary.detection.higher_is_better
        self.job: UpdateJob | None = None

    @property
    def training(self) -> bool:
        return self.job is not None

    @property
    def blocks_dispatch(self) -> bool:
        """Dispatch waits while an update trains (``on_drift: pause``)."""
        return self.job is not None and not self.policy.monitors_during_update

    # --- start ------------------------------------------------------------------------------------
    def start(self, pending: PendingDrift, upto: int, after_alarm: bool = False, followup: int = 0) -> None:
        """Train on the window ending at ``upto`` (in the background with ``on_drift: continue``).

        ``after_alarm``: called on the alarm itself, so the engine is paused at ``upto``. ``followup``:
        the k-th follow-up update of the drift (the model stayed degraded after the previous one).
        """
        cfg, st = self.cfg, self.stages
        t0 = time.perf_counter()
        self.policy.before_training(st, upto, after_alarm)
        holdout = cfg.promotion.holdout_batches if cfg.promotion.enabled else 0
        data_ref = st.supervisor.update_data(upto, holdout, self._since(pending.event, followup))
        t1 = time.perf_counter()
        event = pending.event
        self.callbacks.invoke("on_update_start", event)
        # the drift's score picks the kind of update (drift_detection.regimes)
        kind = event.update_kind or "continual_learning"
        b = st.broadcast
        start_ref, strategy = b.weights_ref, cfg.continual_learning.strategy
        if kind == "fine_tuning":
            strategy = "naive"  # plain fine-tuning on the window
        elif kind == "retrain":
            torch.manual_seed(cfg.seed + b.version + 1)  # re-initialise, then memory + window
            start_ref = ray.put(to_numpy(self.harness.build_model().state_dict()))
        future = run_in_thread(
            self.train_and_gate, start_ref, data_ref, b.version + 1, strategy, b.strategy_state_ref, b.weights
        )
        self.job = UpdateJob(event, pending.t_alarm, upto, kind, strategy, future, t0, t1, followup)
        st.books.samples_during_update = 0
        if not self.policy.monitors_during_update:
            future.result()
            self.finish()

    def _since(self, event: DriftEvent, followup: int) -> int | None:
        """A follow-up with ``adaptation.followup_data: since_drift`` trains on every batch since the
        drift's located change point (the alarm's batch when it was not located); a first update, or
        ``window``, on the newest window."""
        if followup == 0 or self.cfg.adaptation.followup_data != "since_drift":
            return None
        return event.change_batch_id if event.change_batch_id >= 0 else event.batch_id

    def train_and_gate(
        self, start_ref: Any, data_ref: Any, version: int, strategy: str, strategy_state_ref: Any, current: Weights
    ) -> TrainResult:
        """Runs in the update thread: Ray Train, then the promotion gate. Never raises."""
        outcome: UpdateOutcome | None = None
        error: str | None = None
        gate: GateDecision | None = None
        t0 = time.perf_counter()
        try:
            outcome = self.updater.run(
                start_ref, data_ref, version, strategy=strategy, strategy_state_ref=strategy_state_ref
            )
        except Exception as exc:  # noqa: BLE001 - a failed update keeps the old model
            error = f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
        t1 = time.perf_counter()
        if outcome is not None and self.cfg.promotion.enabled:
            try:
                gate = promotion_gate(
                    self.cfg.promotion, self.harness, self.metric, self.higher_is_better,
                    ray.get(data_ref), current, outcome.weights,
                )
            except Exception as exc:  # noqa: BLE001 - a gate that cannot decide rejects
                gate = GateDecision(promote=False, reason=f"the gate failed: {type(exc).__name__}: {exc}")
        return TrainResult(outcome, error, gate, t1 - t0, time.perf_counter() - t1)

    # --- finish -----------------------------------------------------------------------------------
    def finish(self) -> None:
        """The job's result: promote and broadcast, or keep the old model. Either way the detector
        continues (policy), a snapshot is taken and ``on_update_end`` runs."""
        job = self.job
        assert job is not None
        res = job.future.result()
        self.job = None
        samples_during = self.stages.books.samples_during_update or 0
        self.stages.books.samples_during_update = None
        if res.outcome is None or (res.gate is not None and not res.gate.promote):
            rec: UpdateRecord | NotPromotedRecord = self._not_promoted(job, res)
            self.adaptation.updated(self.stages.broadcast.version, None, None)
        else:
            upd = rec = self._promote(job, res, res.outcome, samples_during)
            r = upd.regime
            self.adaptation.updated(upd.version, upd.test_accuracy_before.get(r), upd.test_accuracy_after.get(r))
        self.policy.update_done(self.stages)
        self.snapshot()
        self.callbacks.invoke("on_update_end", rec)

    def _not_promoted(self, job: UpdateJob, res: TrainResult) -> NotPromotedRecord:
        version = self.stages.broadcast.version
        status = "failed" if res.outcome is None else "rejected"
        reason = res.error if res.outcome is None else res.gate.reason  # type: ignore[union-attr]
        rec = NotPromotedRecord(
            status=status,
            reason=reason or "",
            drift_batch_id=job.event.batch_id,
            followup=job.followup,
            window_last_batch_id=job.upto,
            version_kept=version,
            strategy=job.strategy,
            update_kind=job.kind,
            training_seconds=round(res.training_seconds, 4),
            gate=res.gate,
        )
        self.summary.rejected_updates.append(rec)
        self.tracker.log_metrics({f"update_{status}": 1.0}, step=job.upto)
        self.log(
            f"warning: update after the drift at batch {job.event.batch_id} {status} ({reason}); "
            f"model v{version} stays"
        )
        self.policy.after_update(self.stages, job.upto, version)
        return rec

    def _promote(self, job: UpdateJob, res: TrainResult, outcome: UpdateOutcome, samples_during: int) -> UpdateRecord:
        t2 = time.perf_counter()
        version = self.stages.broadcast.publish(outcome.weights, outcome.strategy_state)
        t3 = time.perf_counter()
        self.policy.after_update(self.stages, job.upto, version)
        prev = self.summary.accuracy_matrix.rows[-1].accuracy
        after = self.heldout.row(f"update-{version}", version, job.upto, outcome.weights)
        upd = self._record(job, res, outcome, version, samples_during, (t2, t3), (prev, after))
        self.summary.updates.append(upd)
        self.stages.books.promoted(upd)
        self.run_metrics.update(dataclasses.asdict(upd))
        self.tracker.log_metrics(
            {
                "update_total_seconds": upd.total_seconds,
                "update_training_seconds": upd.training_seconds,
                "model_version": float(version),
            },
            step=job.upto,
        )
        self.log(self._update_line(upd, job, res, t3 - t2, prev, after))
        return upd

    def _record(
        self,
        job: UpdateJob,
        res: TrainResult,
        outcome: UpdateOutcome,
        version: int,
        samples_during: int,
        times: tuple[float, float],
        rows: tuple[list[float | None], list[float | None]],
    ) -> UpdateRecord:
        (t2, t3), (prev, after) = times, rows
        event, m, pause = job.event, outcome.metrics, not self.policy.monitors_during_update
        regimes = self.heldout.regimes
        return UpdateRecord(
            version=version,
            drift_batch_id=event.batch_id,
            followup=job.followup,
            window_last_batch_id=job.upto,
            live_batch_id=job.upto + 1 if pause else self.stages.books.processed,
            strategy=job.strategy,
            update_kind=job.kind,
            score=event.score,
            on_drift=self.policy.name,
            collecting_seconds=round(job.t0 - job.t_alarm, 4),
            waiting_seconds=round(job.t1 - job.t0, 4),
            training_seconds=round(res.training_seconds, 4),
            gating_seconds=round(res.gating_seconds, 4),
            broadcasting_seconds=round(t3 - t2, 4),
            total_seconds=round(t3 - job.t0, 4),
            samples_during_update=samples_during,
            window_samples=int(m.get("window_samples", 0)),
            memory_samples=int(m.get("memory_samples", 0)),
            train_loss=m.get("train_loss"),
            train_steps=m.get("steps"),
            train_loop_seconds=m.get("seconds"),
            train_forward_backward_seconds=m.get("forward_backward_seconds"),
            train_optimizer_seconds=m.get("optimizer_seconds"),
            train_torch_threads=m.get("torch_threads"),
            train_queue_seconds=m.get("queue_seconds"),
            train_handoff_seconds=m.get("handoff_seconds"),
            train_job_attempts=m.get("job_attempts"),
            window_accuracy_after_training=m.get("window_accuracy"),
            memory_accuracy_after_training=m.get("memory_accuracy"),
            gate=res.gate,
            regime=event.regime,
            accuracy_before=event.value,
            pre_drift_value=event.reference,
            test_accuracy_before=dict(zip(regimes, prev, strict=True)),
            test_accuracy_after=dict(zip(regimes, after, strict=True)),
        )

    def _update_line(
        self,
        upd: UpdateRecord,
        job: UpdateJob,
        res: TrainResult,
        broadcast_s: float,
        prev: list[float | None],
        after: list[float | None],
    ) -> str:
        regimes = self.heldout.regimes
        cur = regimes.index(upd.regime) if upd.regime in regimes else None
        name = "accuracy"
        before, after_v = (None, None) if cur is None else (prev[cur], after[cur])
        if before is None and after_v is None:  # no accuracy (e.g. regression): the monitored metric
            name = self.metric
            before, after_v = self.heldout.value(name, upd.regime, -2), self.heldout.value(name, upd.regime, -1)
        before_s = "n/a" if before is None else f"{before:.3f}"
        after_s = "n/a" if after_v is None else f"{after_v:.3f}"
        during = f", {upd.samples_during_update} samples monitored meanwhile" if self.policy.monitors_during_update else ""
        first = max(0, job.upto + 1 - self.cfg.continual_learning.window_batches)
        since = self._since(job.event, job.followup)
        if since is not None:  # every batch since the change point, when that is more than the window
            first = min(first, max(since, job.upto + 1 - self.cfg.adaptation.max_followup_batches))
        what = f"follow-up {job.followup} of the drift at batch {upd.drift_batch_id}, " if job.followup else ""
        return (
            f"update v{upd.version} ({what}batches {first}-{job.upto} + memory): waiting {job.t1 - job.t0:.2f}s, "
            f"training {res.training_seconds:.2f}s{_standing_split(upd)}, gate {res.gating_seconds:.2f}s, "
            f"broadcasting {broadcast_s:.2f}s{during}; regime {upd.regime} test {name} {before_s} -> {after_s}"
        )


def _standing_split(upd: UpdateRecord) -> str:
    """`` (queue 0.01s, hand-off 0.05s)`` on a standing worker, nothing for an in-process update: the
    parts of ``training`` that were the job's wait for a worker and its result's trip back."""
    if upd.train_queue_seconds is None or upd.train_handoff_seconds is None:
        return ""
    return f" (queue {upd.train_queue_seconds:.2f}s, hand-off {upd.train_handoff_seconds:.2f}s)"
