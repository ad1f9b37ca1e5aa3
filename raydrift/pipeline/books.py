"""The loop's books: what was accepted, in stream order, and what it says about the model.

:class:`Books` takes the detector's ordered output (:class:`~raydrift.detection.engine.DetectionOutput`)
and writes ``batches.csv`` (each accepted batch id exactly once) and ``metrics.csv`` (one row per
interval), counts samples and monitoring time, tracks regimes and quarantined batches, and fills in the
effect of promoted updates (the first interval on their version, the batches to recovery).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from raydrift.detection.engine import DetectionOutput, IntervalRecord
from raydrift.metrics import RunMetrics
from raydrift.pipeline.records import Quarantined, RegimeStart, RunSummary, UpdateRecord
from raydrift.report import MetricsWriter
from raydrift.tracking import Tracker

__all__ = ["RECOVERY_TOLERANCE", "Books"]

RECOVERY_TOLERANCE = 0.02
"""An update has recovered when an interval's metric is back within this of the pre-drift level."""


class Books:
    """Counts and records of one run's accepted batches and intervals."""

    def __init__(
        self,
        summary: RunSummary,
        metrics_writer: MetricsWriter,
        batches_writer: MetricsWriter,
        tracker: Tracker,
        run_metrics: RunMetrics,
        log: Callable[[str], None],
    ) -> None:
        self.summary = summary
        self.metrics_writer, self.batches_writer = metrics_writer, batches_writer
        self.tracker, self.run_metrics, self.log = tracker, run_metrics, log
        self.higher_is_better = summary.detection.higher_is_better
        self.processed = 0  # batch ids < processed were accepted
        self.samples = 0
        self.monitor_seconds = 0.0
        self.t_mon = time.perf_counter()
        self.last_value = float("nan")
        self.last_progress = 0.0
        self.detect_seconds = 0.0
        self.since_snapshot = 0
        self.samples_during_update: int | None = None  # counting while an update trains
        self.pending_after: list[UpdateRecord] = []
        self.awaiting_recovery: list[UpdateRecord] = []

    def resume(self, processed: int, books: dict[str, Any]) -> None:
        """Continue the books of a checkpoint (its counts and the updates still awaiting their effect)."""
        self.processed = processed
        self.samples = int(books["samples"])
        self.monitor_seconds = float(books["monitor_seconds"])
        self.last_value = float(books["last_value"])
        ups = self.summary.updates
        self.pending_after = [u for u in ups if u.accuracy_after is None]
        if ups and ups[-1].recovery_batches is None:
            self.awaiting_recovery = [ups[-1]]

    def state(self) -> dict[str, Any]:
        """The counts a checkpoint keeps."""
        return {
            "samples": self.samples,
            "monitor_seconds": self.monitor_seconds + time.perf_counter() - self.t_mon,
            "last_value": self.last_value,
        }

    # --- the monitoring clock ------------------------------------------------------------------------
    def stop_clock(self) -> None:
        """Monitoring stops (``on_drift: pause`` while an update trains, or the stream's end)."""
        self.monitor_seconds += time.perf_counter() - self.t_mon
        self.t_mon = time.perf_counter()

    def start_clock(self) -> None:
        self.t_mon = time.perf_counter()

    def rate(self) -> float:
        """Samples per second of monitoring so far."""
        return self.samples / max(1e-9, self.monitor_seconds + time.perf_counter() - self.t_mon)

    # --- accepting --------------------------------------------------------------------------------
    def accept(self, out: DetectionOutput, on_batch: Callable[[dict[str, Any]], None]) -> list[int]:
        """Record the output's batches and intervals; returns the batch ids newly quarantined.
        ``processed`` moves to the output's ``next_batch``."""
        st = self.summary.stream
        newly_quarantined: list[int] = []
        for row in out.batches:
            b = int(row["batch_id"])
            self.batches_writer.write(row)
            r = int(row["regime"])
            if row["status"] == "quarantined":
                newly_quarantined.append(b)
                st.quarantined.append(Quarantined(batch_id=b, reason=row["reason"]))
                self.log(f"warning: batch {b} quarantined: {row['reason']}")
            else:
                self.samples += int(row["n"])
                if self.samples_during_update is not None:
                    self.samples_during_update += int(row["n"])
                if not st.regime_starts or st.regime_starts[-1].regime != r:
                    st.regime_starts.append(RegimeStart(regime=r, batch_id=b))
                    if r not in st.regimes_seen:
                        st.regimes_seen.append(r)
            on_batch(row)
        if out.next_batch > self.processed:
            self.since_snapshot += out.next_batch - self.processed
            self.processed = out.next_batch
        for rec in out.intervals:
            self.on_interval(rec)
        return newly_quarantined

    def on_interval(self, rec: IntervalRecord) -> None:
        self.last_value = rec.value
        self.run_metrics.interval(rec.value)
        self.metrics_writer.write(rec.to_dict())
        self.tracker.log_metrics({"monitored": rec.value, **rec.metrics}, step=rec.last_batch)
        for upd in self.pending_after:
            if rec.version >= upd.version:
                upd.accuracy_after = rec.value
        self.pending_after[:] = [u for u in self.pending_after if u.accuracy_after is None]
        tol = RECOVERY_TOLERANCE
        for upd in self.awaiting_recovery:
            ref = upd.pre_drift_value
            if ref is None or math.isnan(ref):
                continue
            back = rec.value >= ref - tol if self.higher_is_better else rec.value <= ref + tol
            if rec.version >= upd.version and back:
                upd.recovery_batches = rec.last_batch - upd.drift_batch_id
        self.awaiting_recovery[:] = [u for u in self.awaiting_recovery if u.recovery_batches is None]

    def promoted(self, upd: UpdateRecord) -> None:
        """A promoted update waits for its first interval and for recovery (a new drift ends the wait
        of earlier updates: their recovery stays None)."""
        self.awaiting_recovery.clear()
        self.awaiting_recovery.append(upd)
        self.pending_after.append(upd)

    def progress_line(self, metric: str, version: int, max_batches: int | None, training: bool) -> str | None:
        """The progress line, at most every 2 s (None: not due, or nothing measured yet)."""
        now = time.perf_counter()
        if math.isnan(self.last_value):
            return None
        self.last_progress = now
        total = f"/{max_batches}" if max_batches else ""
        rate = self.rate()
        self.run_metrics.throughput(rate)
        s = self.summary
        return (
            f"[batch {self.processed}{total}] {metric} {self.last_value:.3f}  model v{version}  "
            f"drifts {len(s.drift_events)}  updates {len(s.updates)}  "
            f"{rate:,.0f} samples/s{'  (update training)' if training else ''}"
        )

    def progress_due(self) -> bool:
        return time.perf_counter() - self.last_progress > 2.0
