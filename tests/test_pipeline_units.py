"""Unit tests of the pipeline's pieces that only had end-to-end tests: the promotion gate, the run
records and their JSON form, the books, the on-drift policies and the callback manager (no Ray)."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from raydrift.callbacks import Callback, CallbackError, CallbackManager
from raydrift.config import PromotionConfig
from raydrift.detection.engine import DetectionOutput, IntervalRecord
from raydrift.learning.loop import UpdateData
from raydrift.metrics import RunMetrics
from raydrift.pipeline.books import Books
from raydrift.pipeline.gate import decide, promotion_gate
from raydrift.pipeline.policy import KeepMonitoring, PauseMonitoring, make_policy
from raydrift.pipeline.records import (
    DriftEvent,
    GateDecision,
    NotPromotedRecord,
    RunSummary,
    UpdateRecord,
)
from raydrift.report import summary_from_json, summary_to_json

# --- the gate ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("higher", "cur", "new", "promote"),
    [(True, 0.8, 0.79, False), (True, 0.8, 0.8, True), (True, 0.8, 0.9, True),
     (False, 1.3, 1.4, False), (False, 1.3, 1.2, True)],
)
def test_gate_compares_in_the_metrics_direction(higher: bool, cur: float, new: float, promote: bool) -> None:
    d = decide(PromotionConfig(), "m", higher, (cur, new), (None, None), 10)
    assert d.promote is promote
    if not promote:
        assert ("lower" if higher else "higher") in d.reason and "m" in d.reason


def test_gate_tolerance_and_memory_drop() -> None:
    cfg = PromotionConfig(tolerance=0.05, max_memory_drop=0.1)
    assert decide(cfg, "acc", True, (0.8, 0.76), (0.9, 0.85), 1).promote
    d = decide(cfg, "acc", True, (0.8, 0.76), (0.9, 0.7), 1)
    assert not d.promote and "memory" in d.reason and "holdout" not in d.reason
    assert decide(cfg, "acc", True, (None, None), (None, None), 0).promote  # nothing to judge on


def test_gate_scores_real_models_on_holdout() -> None:
    class H:
        metric_directions = {"accuracy": True}

        def build_model(self) -> torch.nn.Module:
            return torch.nn.Linear(2, 2)

        def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.cross_entropy(out, y)

        def metrics(self, out: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"accuracy": (out.argmax(1) == y).float()}

    good = {"weight": torch.tensor([[1.0, 0.0], [0.0, 1.0]]), "bias": torch.zeros(2)}
    bad = {"weight": torch.tensor([[0.0, 1.0], [1.0, 0.0]]), "bias": torch.zeros(2)}
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]] * 5)
    y = torch.tensor([0, 1] * 5)
    data = UpdateData(x, y, x[:0], y[:0], holdout_x=x, holdout_y=y)
    harness: Any = H()
    kept = promotion_gate(PromotionConfig(), harness, "accuracy", True, data, good, bad)
    assert not kept.promote and kept.holdout_current == 1.0 and kept.holdout_new == 0.0
    assert kept.holdout_samples == 10
    assert promotion_gate(PromotionConfig(), harness, "accuracy", True, data, bad, good).promote


# --- records ----------------------------------------------------------------------------------------


def make_summary() -> RunSummary:
    s = RunSummary()
    s.run.name, s.detection.metric = "t", "accuracy"
    s.stream.regime_names = {0: "a", 1: "b"}
    s.drift_events.append(DriftEvent(batch_id=5, sample_index=300, detector="adwin", value=0.4,
                                      reference=float("nan"), regime=1, version=0))
    s.updates.append(UpdateRecord(version=1, drift_batch_id=5, window_last_batch_id=8, live_batch_id=9,
                                  strategy="replay", update_kind="continual_learning",
                                  gate=GateDecision(promote=True), test_accuracy_after={0: 0.9, 1: None}))
    s.rejected_updates.append(NotPromotedRecord(status="failed", reason="IndexError: x", drift_batch_id=20,
                                                window_last_batch_id=22, version_kept=1, strategy="jvp",
                                                update_kind="continual_learning"))
    return s


def test_summary_round_trips_through_its_json_form() -> None:
    s = make_summary()
    text = summary_to_json(s.to_dict())
    back = RunSummary.from_dict(summary_from_json(text))
    assert back.updates[0].gate == GateDecision(promote=True)
    assert back.updates[0].test_accuracy_after == {0: 0.9, 1: None}
    assert math.isnan(back.drift_events[0].reference)  # NaN -> null -> NaN
    assert back.failed_updates[0].reason == "IndexError: x"
    assert summary_to_json(back.to_dict()) == text


def test_an_old_summary_without_new_fields_loads() -> None:
    old = {"run": {"name": "x", "status": "completed"}, "updates": [{"version": 1, "regime": 0}],
           "drift_events": [{"batch_id": 3, "value": 0.5}], "unknown_section": {}}
    s = RunSummary.from_dict(old)
    assert s.run.status == "completed" and s.updates[0].version == 1 and s.drift_events[0].batch_id == 3
    assert s.rejected_updates == [] and s.recoveries == [] and s.model_version == 0
    assert "unknown_section" not in s.to_dict()


# --- books ------------------------------------------------------------------------------------------


class Writer:
    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def write(self, row: dict[str, Any]) -> None:
        self.rows.append(row)


def interval(first: int, last: int, value: float, version: int) -> IntervalRecord:
    return IntervalRecord(interval=0, first_batch=first, last_batch=last, n_samples=8, value=value,
                          metrics={}, regime=0, version=version)


def test_books_accept_batches_in_order_and_fill_in_an_updates_effect(tmp_path: Path) -> None:
    s = RunSummary()
    metrics, batches = Writer(), Writer()
    tracker = SimpleNamespace(log_metrics=lambda *a, **k: None)
    books = Books(s, metrics, batches, tracker, RunMetrics("r", "accuracy", enabled=False), lambda _: None)  # type: ignore[arg-type]
    rows = [{"batch_id": b, "regime": b // 2, "version": 0, "n": 8, "value": 0.9, "monitor": "m",
             "status": "ok", "reason": ""} for b in range(4)]
    rows[3] |= {"status": "quarantined", "reason": "nan"}
    seen: list[int] = []
    quarantined = books.accept(DetectionOutput(next_batch=4, batches=rows), lambda row: seen.append(row["batch_id"]))
    assert quarantined == [3] and seen == [0, 1, 2, 3] and books.processed == 4 and books.samples == 24
    assert [(r.regime, r.batch_id) for r in s.stream.regime_starts] == [(0, 0), (1, 2)]
    upd = UpdateRecord(version=1, drift_batch_id=2, pre_drift_value=0.9)
    books.promoted(upd)
    books.on_interval(interval(4, 5, 0.5, 0))  # the old version: not this update's effect
    assert upd.accuracy_after is None
    books.on_interval(interval(6, 7, 0.6, 1))
    assert upd.accuracy_after == 0.6 and upd.recovery_batches is None  # not back yet
    books.on_interval(interval(8, 9, 0.89, 1))
    assert upd.recovery_batches == 9 - 2 and books.awaiting_recovery == []


# --- policies ---------------------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def __getattr__(self, name: str) -> Any:
        return lambda *a, **k: self.calls.append((name, *a))


def stages() -> Any:
    from raydrift.pipeline.stages import Stages

    st = Stages(Recorder(), Recorder(), SimpleNamespace(version=3), Recorder())  # type: ignore[arg-type]
    st.books.processed = 0  # type: ignore[misc]
    return st


def test_keep_monitoring_holds_then_releases_the_detector() -> None:
    st = stages()
    p = make_policy("continue")
    assert isinstance(p, KeepMonitoring) and p.monitors_during_update
    p.before_training(st, 10, after_alarm=False)
    assert st.supervisor.calls == [("hold_detection",)] and st.dispatcher.calls == []
    p.after_update(st, 10, 4)
    assert st.supervisor.calls[-1] == ("release_detection", 4)


def test_keep_monitoring_after_an_alarm_serves_the_dropped_batches_again() -> None:
    st = stages()
    KeepMonitoring().before_training(st, 10, after_alarm=True)
    assert st.dispatcher.calls == [("drain",), ("rewind", 11)]
    assert st.supervisor.calls == [("resume_detection", 11, 3), ("hold_detection",)]
    assert st.books.processed == 11


def test_pause_rewinds_to_the_batch_after_the_window_with_the_new_version() -> None:
    st = stages()
    p = make_policy("pause")
    assert isinstance(p, PauseMonitoring) and not p.monitors_during_update
    p.before_training(st, 10, after_alarm=True)
    assert st.dispatcher.calls == [("drain",)] and ("stop_clock",) in st.books.calls
    p.after_update(st, 10, 4)
    assert st.dispatcher.calls[-1] == ("rewind", 11) and st.supervisor.calls[-1] == ("resume_detection", 11, 4)
    assert st.books.processed == 11
    p.update_done(st)
    assert st.books.calls[-1] == ("start_clock",)


# --- callbacks --------------------------------------------------------------------------------------


def test_callback_manager_names_the_callback_and_hook_that_failed() -> None:
    class Broken(Callback):
        def on_drift(self, ctx: Any, event: Any) -> None:
            raise ValueError("boom")

    seen: list[Any] = []

    class Ok(Callback):
        def on_drift(self, ctx: Any, event: Any) -> None:
            seen.append((ctx, event))

    mgr = CallbackManager([Ok(), Broken()], ctx="ctx")  # type: ignore[arg-type]
    with pytest.raises(CallbackError, match=r"Broken\.on_drift failed: ValueError: boom"):
        mgr.invoke("on_drift", "ev")
    assert seen == [("ctx", "ev")]
    with pytest.raises(ValueError, match="unknown callback hook"):
        mgr.invoke("on_nothing")


def test_cl_metrics_of_a_lower_is_better_metric_point_the_same_way() -> None:
    from raydrift.pipeline.records import AccuracyRow, MetricMatrix, RegimeStart
    from raydrift.pipeline.summary import cl_metrics

    s = RunSummary()
    s.accuracy_matrix.regimes = [0, 1]
    s.stream.regime_starts = [RegimeStart(0, 0), RegimeStart(1, 10)]
    rows = [("initial", -1), ("update-1", 10)]
    for label, b in rows:
        s.accuracy_matrix.rows.append(AccuracyRow(label, 0, b, [None, None]))
    # squared error: regime 0 learnt at 0.1, then worse (0.3) after adapting to regime 1 (0.2)
    se = MetricMatrix("se", False, [AccuracyRow("initial", 0, -1, [0.1, 0.9]), AccuracyRow("update-1", 1, 10, [0.3, 0.2])])
    acc = MetricMatrix("acc", True, [AccuracyRow("initial", 0, -1, [0.9, 0.1]), AccuracyRow("update-1", 1, 10, [0.7, 0.8])])
    s.metric_matrices = {"se": se, "acc": acc}
    cl_metrics(s)
    assert se.cl_metrics["final_average_accuracy"] == pytest.approx(0.25)
    assert se.cl_metrics["forgetting"] == pytest.approx(0.2) and acc.cl_metrics["forgetting"] == pytest.approx(0.2)
    assert se.cl_metrics["backward_transfer"] == pytest.approx(-0.2)
    assert acc.cl_metrics["backward_transfer"] == pytest.approx(-0.2)
    assert s.cl_metrics == {}  # no accuracy: the accuracy matrix gives nothing
