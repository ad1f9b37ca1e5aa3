"""Adapt until recovered: after a drift's update, keep adapting while the model is still degraded.

One update after a drift is often not enough (a short window, a large change). After an update goes
live, the :class:`AdaptationWatch` scores the next ``adaptation.check_batches`` batches evaluated with
the new weights (each batch scored before any training on it) and compares their monitored metric with
the drift's pre-drift reference. Still worse than the reference by more than ``adaptation.tolerance``:
the loop trains a follow-up update on the newest window (the post-drift data seen since) plus the
memory, up to ``adaptation.max_followups`` per drift. Back within the tolerance: the drift is recovered,
and its :class:`AdaptationRecord` says after how many batches, samples and seconds. The detector is not
what decides this: it restarts after each update (a new model's values are a new stream), so a model
that stays bad would never be flagged again; the watch flags it.

A new drift alarm ends the watch of the previous drift (its record stays, not recovered). If that
drift had not recovered, the new one keeps its pre-drift reference when it is the better of the two:
an alarm during a gradual change, or after a failed adaptation, compares with the level the model
had before it was degraded, not with a degraded level (which a still-bad model would "recover" to).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

from raydrift.detection.engine import DriftEvent

__all__ = ["AdaptationRecord", "AdaptationWatch"]


@dataclass
class AdaptationRecord:
    """One drift's adaptation (``summary["adaptations"]``)."""

    drift_batch_id: int = -1
    regime: int = 0
    metric: str = ""
    higher_is_better: bool = True
    pre_drift_value: float | None = None
    """The monitored metric before the change: the drift event's reference, or the previous drift's
    when that one had not recovered and its reference is better (see the module docstring)."""
    value_at_alarm: float | None = None
    updates: int = 0
    """Updates trained for this drift (the first one plus follow-ups)."""
    recovered: bool = False
    recovery_batches: int | None = None
    """Batches from the drift to the end of the first check window that was back within the tolerance."""
    recovery_samples: int | None = None
    recovery_seconds: float | None = None
    """Wall time from the alarm to that moment."""
    checks: list[float] = field(default_factory=list)
    """The monitored metric of each check window, in order."""
    test_accuracy_before: float | None = None
    """The regime's held-out test accuracy before the drift's first update."""
    test_accuracy_after: float | None = None
    """... and after its last update."""


@dataclass
class _Window:
    version: int
    batches: int = 0
    samples: int = 0
    total: float = 0.0


class AdaptationWatch:
    """Watches the batches after each update of the current drift and says when a follow-up is due."""

    def __init__(self, tolerance: float, check_batches: int, max_followups: int, metric: str,
                 higher_is_better: bool, enabled: bool = True) -> None:
        self.tolerance, self.check_batches, self.max_followups = tolerance, check_batches, max_followups
        self.metric, self.higher_is_better, self.enabled = metric, higher_is_better, enabled
        self.record: AdaptationRecord | None = None
        self.event: DriftEvent | None = None
        self.window: _Window | None = None
        self.t_alarm = 0.0
        self.samples_since = 0
        self._due = False

    # --- the drift's life ----------------------------------------------------------------------------
    def drift(self, event: DriftEvent, t_alarm: float) -> AdaptationRecord:
        """A new drift: its record (the previous drift's watch ends)."""
        prev = self.record
        self.event, self.t_alarm, self.window, self._due, self.samples_since = event, t_alarm, None, False, 0
        ref = None if event.reference is None or math.isnan(event.reference) else float(event.reference)
        if prev is not None and not prev.recovered and prev.pre_drift_value is not None:
            ref = prev.pre_drift_value if ref is None else self._better(prev.pre_drift_value, ref)
        self.record = AdaptationRecord(
            drift_batch_id=event.batch_id, regime=event.regime, metric=self.metric,
            higher_is_better=self.higher_is_better, pre_drift_value=ref,
            value_at_alarm=None if math.isnan(event.value) else float(event.value),
        )
        return self.record

    def _better(self, a: float, b: float) -> float:
        return max(a, b) if self.higher_is_better else min(a, b)

    def updated(self, live_version: int, test_before: float | None, test_after: float | None) -> None:
        """An update of the current drift ended; ``live_version`` is what the next batches are scored
        with (the new version, or the old one when the update was not promoted)."""
        rec = self.record
        if rec is None:
            return
        rec.updates += 1
        if rec.test_accuracy_before is None:
            rec.test_accuracy_before = test_before
        if test_after is not None:
            rec.test_accuracy_after = test_after
        self._due = False
        self.window = None if rec.recovered else _Window(live_version)

    # --- scoring ------------------------------------------------------------------------------------
    def batch(self, row: dict[str, Any]) -> None:
        """An accepted batch (its ``batches.csv`` row, in stream order)."""
        if row.get("status") != "ok" or self.record is None:
            return
        n = int(row["n"])
        self.samples_since += n
        w = self.window
        if w is None or int(row["version"]) < w.version or self._due:
            return
        value = float(row["value"])
        if math.isnan(value):
            return
        w.batches += 1
        w.samples += n
        w.total += value * n
        if w.batches >= self.check_batches:
            self._check(w, int(row["batch_id"]))

    def _check(self, w: _Window, batch_id: int) -> None:
        rec = self.record
        assert rec is not None
        value = w.total / max(1, w.samples)
        rec.checks.append(value)
        ref = rec.pre_drift_value
        back = ref is None or (value >= ref - self.tolerance if self.higher_is_better else value <= ref + self.tolerance)
        if back:
            rec.recovered = True
            rec.recovery_batches = batch_id - rec.drift_batch_id
            rec.recovery_samples = self.samples_since
            rec.recovery_seconds = round(time.perf_counter() - self.t_alarm, 3)
            self.window = None
        elif self.enabled and rec.updates <= self.max_followups:
            self._due = True
        else:
            self.window = None  # the budget is spent: the drift stays not recovered

    def check_ends_at(self, processed: int) -> int | None:
        """The last batch of the check window in progress, for ``processed`` batches accepted so far
        (None: no check in progress). Always at least ``processed``: dispatch can go on."""
        w = self.window
        if w is None or self._due:
            return None
        return processed - 1 + max(1, self.check_batches - w.batches)

    def followup_due(self) -> DriftEvent | None:
        """The drift to train a follow-up update for, once (None: none due)."""
        if not self._due or self.event is None:
            return None
        self._due = False
        self.window = None
        return self.event
