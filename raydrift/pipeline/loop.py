"""The loop: dispatch with backpressure, ordered detection, drift -> update -> gate -> broadcast.

``run()`` is ``start(); while advance(): pass; end()``. Each :meth:`Loop.advance` does one step:
keep the monitors busy (:mod:`~raydrift.pipeline.dispatch`), wait for one finished task, have the
detector ingest it in stream order (:mod:`~raydrift.pipeline.supervision`), accept its batches and
intervals (:mod:`~raydrift.pipeline.books`), and act on a drift: collect the post-drift window
(:class:`~raydrift.pipeline.update.PendingDrift`), then train, gate and broadcast
(:mod:`~raydrift.pipeline.update`). What the stream does while an update trains is the on-drift
policy's (:mod:`~raydrift.pipeline.policy`). The loop's state is three fields: ``pending`` (a drift
waiting for its window), ``update.job`` (an update training) and the dispatcher's ``ended``.

Reliability (docs/reliability.md): each accepted batch id is written once to ``batches.csv``; the
detector's and the stream reader's state are snapshotted after each update and every
``reliability.checkpoint_every_batches`` batches (and written to ``<run_dir>/checkpoint/`` for
``raydrift run --resume``); dead actors are replaced by the supervisor.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
import torch

from raydrift.callbacks import CallbackManager, RunContext
from raydrift.checkpoint import save_checkpoint
from raydrift.config import RaydriftConfig
from raydrift.detection.engine import DetectionOutput, DriftEvent
from raydrift.harness import Harness
from raydrift.metrics import RunMetrics
from raydrift.pipeline.adaptation import AdaptationWatch
from raydrift.pipeline.books import Books
from raydrift.pipeline.broadcast import Broadcast
from raydrift.pipeline.dispatch import Dispatcher, Item
from raydrift.pipeline.heldout import HeldOut
from raydrift.pipeline.policy import make_policy
from raydrift.pipeline.records import RecoveryRecord, RunSummary
from raydrift.pipeline.stages import Stages
from raydrift.pipeline.summary import end_of_stream
from raydrift.pipeline.supervision import ACTOR_ERRORS, ActorFactory, Supervisor
from raydrift.pipeline.update import PendingDrift, UpdateLifecycle
from raydrift.report import MetricsWriter, summary_to_json
from raydrift.tracking import Tracker
from raydrift.trainer import StandingTrainer
from raydrift.update import Updater
from raydrift.weights import save_weights, to_numpy, to_state_dict

__all__ = ["Loop", "LoopParts"]


class LoopParts:
    """What the coordinator hands the loop: the run's outputs and the model to start from."""

    def __init__(
        self,
        run_dir: Path,
        summary: RunSummary,
        harness: Harness,
        spec: dict[str, Any],
        model: torch.nn.Module,
        device: str,
        test_sets: dict[int, tuple[torch.Tensor, torch.Tensor]],
        writers: tuple[MetricsWriter, MetricsWriter],
        tracker: Tracker,
        updater: Updater | StandingTrainer,
    ) -> None:
        self.run_dir, self.summary, self.harness, self.spec = run_dir, summary, harness, spec
        self.model, self.device, self.test_sets = model, device, test_sets
        self.writers, self.tracker, self.updater = writers, tracker, updater


class Loop:
    """One run's loop over the stream."""

    def __init__(self, cfg: RaydriftConfig, parts: LoopParts, callbacks: CallbackManager, log: Callable[..., None]) -> None:
        self.cfg, self.parts, self.log = cfg, parts, log
        s = self.summary = parts.summary
        metric, hib = s.detection.metric, s.detection.higher_is_better
        self.run_metrics = RunMetrics(parts.run_dir.name, metric)
        self.heldout = HeldOut(parts.harness, parts.test_sets, parts.model, s)
        broadcast = Broadcast(to_numpy(parts.model.state_dict()))
        books = Books(s, *parts.writers, parts.tracker, self.run_metrics, log)
        factory = ActorFactory(
            cfg, parts.spec, metric, hib, parts.device, parts.harness.metric_domain(metric), parts.run_dir.name
        )
        sup = Supervisor(cfg, factory, broadcast, self._restarted, lambda: books.processed, log)
        dispatcher = Dispatcher(cfg, sup, broadcast)
        sup.dispatch = dispatcher
        self.stages = Stages(sup, dispatcher, broadcast, books)
        self.callbacks = callbacks
        callbacks.ctx = RunContext(
            cfg, parts.run_dir, lambda: broadcast.version, lambda: s, lambda: (sup.stream, sup.detector, sup.monitors)
        )
        self.policy = make_policy(cfg.monitor.on_drift)
        ad = cfg.adaptation
        self.adaptation = AdaptationWatch(ad.tolerance, ad.check_batches, ad.max_followups, metric, hib, ad.until_recovered)
        self.update = UpdateLifecycle(
            cfg, parts.harness, self.stages, self.policy, parts.updater, self.heldout, s, parts.tracker,
            self.run_metrics, callbacks, log, self.snapshot, self.adaptation,
        )
        self.pending: PendingDrift | None = None
        self.t_snapshot = time.monotonic()

    # --- the phases -------------------------------------------------------------------------------
    def run(self, checkpoint: dict[str, Any] | None) -> None:
        self.start(checkpoint)
        while self.advance():
            pass
        if self.update.training:
            self.update.finish()
        self.end()

    def start(self, checkpoint: dict[str, Any] | None) -> None:
        """Start the actors (from the checkpoint's state when resuming) and take the first snapshot."""
        st, cfg = self.stages, self.cfg
        stream_state = detector_state = None
        if checkpoint is not None:
            b = st.broadcast
            b.version = int(checkpoint["version"])
            b.weights = to_numpy(checkpoint["weights"])
            b.strategy_state = checkpoint.get("strategy_state")
            st.books.resume(int(checkpoint["processed"]), checkpoint["books"])
            st.supervisor.quarantined = {q.batch_id for q in self.summary.stream.quarantined}
            stream_state, detector_state = checkpoint["stream"], checkpoint["detector"]
        st.broadcast.start()
        st.supervisor.start(stream_state, detector_state)
        st.dispatcher.sent = [st.broadcast.version] * len(st.supervisor.monitors)
        self.snapshot()  # a run stopped from here on can be resumed
        st.books.start_clock()  # monitoring time starts now, not with the actors' start-up
        self.log(
            f"{len(st.supervisor.monitors)} monitor(s), detector '{cfg.drift_detection.detector}' on "
            f"{self.summary.detection.metric} ({cfg.drift_detection.granularity} granularity), strategy "
            f"'{cfg.continual_learning.strategy}', on drift: {cfg.monitor.on_drift}"
        )
        self.callbacks.invoke("on_run_start")

    def advance(self) -> bool:
        """One step of the loop; False when the stream is done."""
        d, up = self.stages.dispatcher, self.update
        if up.blocks_dispatch:
            d.request_chunk()
        else:
            d.fill(self._dispatch_limit())
        if up.job is not None and up.job.future.done():
            up.finish()
            return True
        if not d.inflight:
            idle = self._when_idle()
            if idle is not None:
                return idle
        self._wait_and_ingest()
        return True

    def _dispatch_limit(self) -> int | None:
        """The last batch to dispatch now: a pending drift's window end, or (``on_drift: pause``) the end
        of the adaptation check window, so a follow-up update trains right after its check instead of
        after the tasks already sent past it."""
        if self.pending is not None:
            return self.pending.upto
        if not self.policy.monitors_during_update:
            return self.adaptation.check_ends_at(self.stages.books.processed)
        return None

    def _when_idle(self) -> bool | None:
        """Nothing in flight: wait for the update, start one, fetch, or end (None: wait below)."""
        d, up, books, p = self.stages.dispatcher, self.update, self.stages.books, self.pending
        if up.job is not None and (up.blocks_dispatch or d.ended):
            up.job.future.result()  # wait; errors are captured in the result
            return True
        if up.job is None and p is not None and (
            books.processed > p.upto or d.ended or (d.queue and d.queue[0][0].batch_id > p.upto)
        ):
            # the window is complete (nothing of it left to serve), or the stream ended first
            self._start_update(min(p.upto, books.processed - 1))
            return True
        if d.ended:
            return False
        if d.queue:
            raise RuntimeError(f"nothing in flight but {len(d.queue)} batch(es) queued")
        d.request_chunk()
        if up.job is None:
            d.take_chunk()  # nothing else to do: wait for the stream
            return True
        return None  # an update trains (on_drift: continue): wait for the stream or the update

    def _wait_and_ingest(self) -> None:
        d = self.stages.dispatcher
        timeout = 0.05 if self.update.training else None
        ready, _ = ray.wait(d.waiting_refs(), num_returns=1, timeout=timeout, fetch_local=False)
        if not ready:
            return
        task = ready[0]
        if d.fetch is not None and task == d.fetch:
            d.take_chunk()
            return
        items, i = d.finished(task)
        out = self._ingest(task, i, items)
        if out is None:
            return
        self._accept(out)
        self._progress(force=bool(out.events))
        if out.events:
            self._on_drift(out.events[0])
        elif self.pending is not None and self.stages.books.processed > self.pending.upto:
            self._start_update(self.pending.upto)
        elif self.pending is None and not self.update.training:
            self._maybe_follow_up()
        self._maybe_snapshot()

    # --- steps --------------------------------------------------------------------------------------
    def _ingest(self, task: Any, i: int, items: list[Item]) -> DetectionOutput | None:
        """The detector's output for a finished task; None when the task's monitor had died (its
        batches, these included, are queued again)."""
        sup = self.stages.supervisor
        for _ in range(self.cfg.reliability.max_actor_restarts + 2):
            t0 = time.perf_counter()
            try:
                out = sup.ingest(task)
                self.stages.books.detect_seconds += time.perf_counter() - t0
                return out
            except ACTOR_ERRORS as exc:
                what = sup.recover(exc, monitor=i)
                if what == "monitor":
                    self.stages.dispatcher.requeue(items)
                if what != "detector":
                    return None
        raise RuntimeError("the detector failed repeatedly")

    def _accept(self, out: DetectionOutput) -> None:
        books, sup = self.stages.books, self.stages.supervisor
        before = books.processed
        newly = books.accept(out, self._on_batch)
        sup.quarantined.update(newly)
        if out.next_batch > before:
            # accepted batches join the window and the replay memory (quarantined ones do not)
            sup.commit(out.next_batch - 1, newly)

    def _on_batch(self, row: dict[str, Any]) -> None:
        self.adaptation.batch(row)
        self.callbacks.invoke("on_batch", row)

    def _progress(self, force: bool = False) -> None:
        books = self.stages.books
        if force or books.progress_due():
            line = books.progress_line(
                self.summary.detection.metric, self.stages.broadcast.version, self.cfg.stream.max_batches,
                self.update.training,
            )
            if line is not None:
                self.log(line)

    def _on_drift(self, event: DriftEvent) -> None:
        self.summary.drift_events.append(event)
        self.run_metrics.drift(event.detector)
        self.parts.tracker.log_metrics({"drift": 1.0}, step=event.batch_id)
        self.log(
            f"drift at batch {event.batch_id} (regime {event.regime}): {self.summary.detection.metric} "
            f"{event.value:.3f} vs {event.reference:.3f} before, detector {event.detector}"
        )
        self.callbacks.invoke("on_drift", event)
        self.summary.adaptations.append(self.adaptation.drift(event, time.perf_counter()))
        post = self.cfg.continual_learning.post_drift_batches
        if self.pending is not None:  # a second alarm while collecting: train on what we have
            self._start_update(event.batch_id, after_alarm=True)
        elif post == 0:
            self.pending = PendingDrift(event, time.perf_counter(), event.batch_id)
            self._start_update(event.batch_id, after_alarm=True)
        else:
            # keep monitoring with the current weights until the post-drift window is complete
            self.pending = PendingDrift(event, time.perf_counter(), event.batch_id + post)
            self.stages.dispatcher.drain()
            self.stages.resume_at(event.batch_id + 1, self.stages.broadcast.version, accept_from_there=False)
            self.log(f"collecting {post} post-drift batch(es) before the update", level=2)

    def _start_update(self, upto: int, after_alarm: bool = False, followup: int = 0) -> None:
        pending, self.pending = self.pending, None
        assert pending is not None
        self.update.start(pending, upto, after_alarm, followup)

    def _maybe_follow_up(self) -> None:
        """The model is still degraded after the drift's last update: train again on the newest window."""
        event = self.adaptation.followup_due()
        rec = self.adaptation.record
        if event is None or rec is None:
            return
        upto = self.stages.books.processed - 1
        k = rec.updates
        ref = "-" if rec.pre_drift_value is None else f"{rec.pre_drift_value:.3f}"
        self.log(
            f"still degraded after the update for the drift at batch {event.batch_id}: "
            f"{self.summary.detection.metric} {rec.checks[-1]:.3f} vs {ref} before the drift; "
            f"follow-up update {k}/{self.cfg.adaptation.max_followups}"
        )
        self.pending = PendingDrift(event, time.perf_counter(), upto)
        self._start_update(upto, followup=k)

    def _restarted(self, role: str, detail: str) -> None:
        self.summary.recoveries.append(
            RecoveryRecord(actor=role, detail=detail, batch_id=self.stages.books.processed, time=dt.datetime.now().isoformat())
        )

    # --- snapshots and checkpoints --------------------------------------------------------------------
    def snapshot(self, write: bool = True) -> None:
        """Snapshot the detector and the stream reader; with ``write``, also the on-disk checkpoint."""
        st = self.stages
        det_state, stream_state = st.supervisor.snapshot()
        st.books.since_snapshot = 0
        self.t_snapshot = time.monotonic()
        if not (write and self.cfg.reliability.checkpoints):
            return
        mw, bw = self.parts.writers
        mw.flush()
        bw.flush()
        state = {
            "processed": st.books.processed,
            "version": st.broadcast.version,
            "weights": to_state_dict(st.broadcast.weights),
            "strategy_state": st.broadcast.strategy_state,
            "stream": stream_state,
            "detector": det_state,
            "summary": summary_to_json(self.summary.to_dict()),
            "books": st.books.state(),
            "metrics_rows": mw.rows_written,
            "batches_rows": bw.rows_written,
            "tracker": self.parts.tracker.state_dict(),
        }
        path = save_checkpoint(self.parts.run_dir, state)
        self.callbacks.invoke("on_checkpoint", path)

    def _maybe_snapshot(self) -> None:
        rc = self.cfg.reliability
        every = rc.checkpoint_every_batches or 50
        due = time.monotonic() - self.t_snapshot >= rc.checkpoint_min_seconds
        if self.stages.books.since_snapshot >= every and due and self.pending is None and not self.update.training:
            self.snapshot(write=rc.checkpoint_every_batches > 0)

    # --- the end ----------------------------------------------------------------------------------------
    def end(self) -> None:
        st, s = self.stages, self.summary
        st.books.stop_clock()
        for rec in st.supervisor.finish_detection():
            st.books.on_interval(rec)
        st.supervisor.sync_monitors()
        stats = st.supervisor.monitor_stats()
        b = st.books
        end_of_stream(s, stats, b.processed, b.samples, b.monitor_seconds, b.detect_seconds, st.supervisor.restarts)
        s.model_version = st.broadcast.version
        late = [u for u in s.updates if u.on_drift == "continue" and u.live_batch_id >= b.processed - 1]
        if late:
            self.log(
                f"note: the stream ended while update v{late[-1].version} was training, "
                f"{late[-1].samples_during_update} samples were monitored with the old weights meanwhile; "
                "for a recorded stream replayed faster than an update, use monitor.on_drift: pause "
                "(or pace it with stream.max_batches_per_second)"
            )
        if self.cfg.logging.save_weights:
            save_weights(st.broadcast.weights, self.parts.run_dir / "weights.pt")
        self.snapshot()

    def record_books(self) -> None:
        """The stream's counts in the summary as the loop has them now (also when the run was stopped
        early: they match ``batches.csv``)."""
        self.summary.stream.batches = self.stages.books.processed
        self.summary.stream.samples = self.stages.books.samples
        self.summary.model_version = self.stages.broadcast.version
