"""The adaptation watch: follow-up updates while the model stays degraded after a drift (no Ray)."""

from __future__ import annotations

import math

from raydrift.detection.engine import DriftEvent
from raydrift.pipeline.adaptation import AdaptationWatch


def event(batch_id: int = 10, reference: float = 0.9, value: float = 0.4) -> DriftEvent:
    return DriftEvent(batch_id=batch_id, sample_index=0, detector="adwin", value=value, reference=reference,
                      regime=1, version=0)


def row(b: int, value: float, version: int, n: int = 10, status: str = "ok") -> dict[str, object]:
    return {"batch_id": b, "value": value, "version": version, "n": n, "status": status}


def watch(**kw: object) -> AdaptationWatch:
    args: dict[str, object] = {"tolerance": 0.02, "check_batches": 3, "max_followups": 2, "metric": "accuracy",
                               "higher_is_better": True} | kw
    return AdaptationWatch(**args)  # type: ignore[arg-type]


def test_a_model_still_degraded_after_its_update_gets_a_followup_until_the_budget_is_spent() -> None:
    w = watch()
    rec = w.drift(event(), 0.0)
    w.updated(1, test_before=0.3, test_after=0.6)
    for b in range(15, 18):
        w.batch(row(b, 0.7, 1))
    assert w.followup_due() is not None and w.followup_due() is None  # once
    w.updated(2, 0.3, 0.7)
    for b in range(20, 23):
        w.batch(row(b, 0.8, 2))
    assert w.followup_due() is not None  # 2nd follow-up (max_followups=2)
    w.updated(3, 0.3, 0.75)
    for b in range(25, 28):
        w.batch(row(b, 0.85, 3))
    assert w.followup_due() is None  # budget spent: 1 update + 2 follow-ups
    assert not rec.recovered and rec.updates == 3 and rec.checks == [0.7, 0.8, 0.85]
    assert rec.test_accuracy_before == 0.3 and rec.test_accuracy_after == 0.75


def test_recovery_is_recorded_with_batches_and_samples_since_the_drift() -> None:
    w = watch()
    rec = w.drift(event(batch_id=10), 0.0)
    w.batch(row(11, 0.5, 0))  # before the update: counted in samples, not scored
    w.updated(1, None, None)
    w.batch(row(12, 0.95, 0))  # still the old version (on_drift: continue): not scored
    for b in (13, 14, 15):
        w.batch(row(b, 0.89, 1))
    assert w.followup_due() is None
    assert rec.recovered and rec.recovery_batches == 5 and rec.recovery_samples == 50
    assert rec.recovery_seconds is not None and rec.recovery_seconds >= 0


def test_lower_is_better_metrics_recover_downwards() -> None:
    w = watch(metric="loss", higher_is_better=False)
    rec = w.drift(event(reference=0.3, value=1.5), 0.0)
    w.updated(1, None, None)
    for b in range(3):
        w.batch(row(b + 11, 0.31, 1))
    assert rec.recovered
    w2 = watch(metric="loss", higher_is_better=False)
    w2.drift(event(reference=0.3, value=1.5), 0.0)
    w2.updated(1, None, None)
    for b in range(3):
        w2.batch(row(b + 11, 0.5, 1))
    assert w2.followup_due() is not None


def test_an_alarm_during_an_unrecovered_drift_keeps_the_healthy_reference() -> None:
    # a gradual change alarms twice: the second alarm's own reference (0.79) is already degraded; the
    # model must get back to the level before the first (0.93), not to 0.79
    w = watch()
    w.drift(event(batch_id=52, reference=0.93, value=0.79), 0.0)
    rec = w.drift(event(batch_id=56, reference=0.79, value=0.57), 1.0)
    assert rec.pre_drift_value == 0.93
    w.updated(1, None, None)
    for b in range(57, 60):
        w.batch(row(b, 0.78, 1))  # back at the second alarm's reference, still 0.15 under the first
    assert not rec.recovered and w.followup_due() is not None
    # once a drift recovered, the next one compares with its own reference
    w2 = watch()
    first = w2.drift(event(batch_id=10, reference=0.93, value=0.5), 0.0)
    w2.updated(1, None, None)
    for b in range(11, 14):
        w2.batch(row(b, 0.92, 1))
    assert first.recovered
    assert w2.drift(event(batch_id=40, reference=0.85, value=0.4), 2.0).pre_drift_value == 0.85
    # lower is better: the lower of the two references
    w3 = watch(metric="loss", higher_is_better=False)
    w3.drift(event(reference=0.3, value=0.9), 0.0)
    assert w3.drift(event(batch_id=14, reference=0.9, value=1.6), 1.0).pre_drift_value == 0.3
    assert w3.drift(event(batch_id=18, reference=math.nan, value=1.6), 2.0).pre_drift_value == 0.3


def test_quarantined_and_nan_batches_are_not_scored_and_followups_can_be_off() -> None:
    w = watch(enabled=False)
    rec = w.drift(event(), 0.0)
    w.updated(1, None, None)
    w.batch(row(11, 0.1, 1, status="quarantined"))
    w.batch(row(12, math.nan, 1))
    for b in (13, 14, 15):
        w.batch(row(b, 0.5, 1))
    assert w.followup_due() is None and not rec.recovered and rec.checks == [0.5]


def test_a_drift_without_a_reference_counts_as_recovered_at_its_first_check() -> None:
    w = watch()
    rec = w.drift(event(reference=math.nan), 0.0)
    w.updated(1, None, None)
    for b in (11, 12, 13):
        w.batch(row(b, 0.2, 1))
    assert rec.recovered and rec.pre_drift_value is None


def test_the_check_window_caps_dispatch_and_always_lets_the_next_batch_go() -> None:
    w = watch()
    assert w.check_ends_at(10) is None  # no drift
    w.drift(event(), 0.0)
    w.updated(1, None, None)
    assert w.check_ends_at(12) == 14  # batches 12, 13, 14 are the check window
    w.batch(row(12, 0.5, 1))
    assert w.check_ends_at(13) == 14
    w.batch(row(13, 0.5, 1))
    w.batch(row(14, 0.5, 1))
    assert w.check_ends_at(15) is None  # the check is done: a follow-up is due


def test_followup_data_picks_the_follow_ups_window() -> None:
    from types import SimpleNamespace

    from raydrift.config import RaydriftConfig
    from raydrift.pipeline.supervision import _recent_batches
    from raydrift.pipeline.update import UpdateLifecycle

    def cfg(**adaptation: object) -> RaydriftConfig:
        return RaydriftConfig.model_validate(
            {"model": {"harness": "synthetic"}, "continual_learning": {"window_batches": 6},
             "adaptation": adaptation}
        )

    located = DriftEvent(batch_id=52, sample_index=0, detector="adwin", value=0.5, reference=0.9, regime=2,
                         version=4, change_batch_id=50)
    unlocated = DriftEvent(batch_id=52, sample_index=0, detector="adwin", value=0.5, reference=0.9, regime=2,
                           version=4)
    window, since = cfg(), cfg(followup_data="since_drift", max_followup_batches=20)
    assert window.adaptation.followup_data == "window"  # the default: the follow-up's newest window
    for c, first, follow, follow_unlocated in ((window, None, None, None), (since, None, 50, 52)):
        life = SimpleNamespace(cfg=c)
        assert UpdateLifecycle._since(life, located, 0) is first  # type: ignore[arg-type]
        assert UpdateLifecycle._since(life, located, 2) == follow  # type: ignore[arg-type]
        assert UpdateLifecycle._since(life, unlocated, 1) == follow_unlocated  # type: ignore[arg-type]
    # the stream reader keeps the longer history only when follow-ups can ask for it
    assert _recent_batches(window) == 6 and _recent_batches(since) == 20
    assert _recent_batches(cfg(followup_data="since_drift", max_followups=0)) == 6
