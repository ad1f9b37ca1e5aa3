"""Label-free drift detection end to end: the real pipeline on a real local Ray cluster.

The monitors send each sample's input features instead of using the labels (``label_free.signal:
features``, ``use: instead``), the DetectorActor runs the MMD two-sample test on them at its defaults
(reference and current windows of 200 samples, a test every 100, alpha 0.005). The synthetic harness
moves its class clusters by 4 noise standard deviations at each regime change (3 regimes of 24
batches of 32 samples), a covariate shift the test must see; within a regime the features are
stationary and it must stay quiet, also after an update, when the detector's reference window is
refreshed with the new regime's features.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pipeline_runs import run_pipeline

REGIME_BATCHES = 24
BATCH_SIZE = 32

CONFIG = [
    "name=label-free-e2e",
    "seed=0",
    "verbosity=0",
    "model.harness=synthetic",
    f"data.regime_batches={REGIME_BATCHES}",
    "data.num_regimes=3",
    f"stream.batch_size={BATCH_SIZE}",
    "monitor.num_monitors=1",
    "monitor.num_cpus=1",
    "drift_detection.warmup_batches=3",
    "drift_detection.cooldown_batches=2",
    "drift_detection.label_free.signal=features",
    "drift_detection.label_free.detector=mmd",
    "drift_detection.label_free.use=instead",
    "continual_learning.memory_size=200",
    "continual_learning.window_batches=6",
    "train.num_workers=0",
    "train.epochs=10",
    "train.batch_size=32",
    "train.lr=0.01",
    "logging.backend=none",
    "logging.plots=false",
    # Monitoring pauses while an update trains, so the batches after it are evaluated with the new
    # weights and fed in order (with `continue` this short stream would end before the first update
    # goes live, and nothing after it would be fed).
    "monitor.on_drift=pause",
]


@pytest.fixture(scope="module")
def label_free_run(ray_cluster: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return run_pipeline(tmp_path_factory.mktemp("label_free"), CONFIG)


def test_label_free_alarm_near_the_regime_change_and_none_before(label_free_run: dict[str, Any]) -> None:
    s = label_free_run
    assert s["run"]["status"] == "completed"
    starts = {r["regime"]: r["batch_id"] for r in s["stream"]["regime_starts"]}
    assert starts == {0: 0, 1: REGIME_BATCHES, 2: 2 * REGIME_BATCHES}
    events = s["drift_events"]
    assert events, "the label-free detector raised no alarm"
    # every alarm is the label-free detector's: the labels are not used
    assert all(e["signal"] == "label_free:features" and e["detector"] == "mmd" for e in events)
    # none in the first regime; the first within 200 samples + one test cadence (100) of the change
    first = events[0]
    assert first["batch_id"] >= starts[1], (
        f"alarm at batch {first['batch_id']}, before the change at {starts[1]}"
    )
    assert first["sample_index"] - starts[1] * BATCH_SIZE <= 300
    assert first["regime"] == 1
    # the score of a label-free alarm is the test statistic (squared MMD, > 0)
    assert first["score"] > 0


def test_reference_refreshed_after_the_update(label_free_run: dict[str, Any]) -> None:
    """After the update the reference window holds the new regime's features: no second alarm in
    regime 1, and the next change is detected against it."""
    s = label_free_run
    starts = {r["regime"]: r["batch_id"] for r in s["stream"]["regime_starts"]}
    events = s["drift_events"]
    assert [e["regime"] for e in events] == [1, 2], [(e["batch_id"], e["regime"]) for e in events]
    second = events[1]["batch_id"]
    # the refreshed reference (200 samples) and current window (200) fill ~12.5 batches after the
    # update; then a test every 100 samples: the change is seen within a few batches
    assert starts[2] <= second < starts[2] + 10, f"second alarm at batch {second}, change at {starts[2]}"


def test_label_free_alarms_trigger_updates(label_free_run: dict[str, Any]) -> None:
    s = label_free_run
    # each alarm's first update; a follow-up (adapt until recovered) is for the same drift
    firsts = [u for u in s["updates"] if u["followup"] == 0]
    assert [u["drift_batch_id"] for u in firsts] == [e["batch_id"] for e in s["drift_events"]]
    drifts = {e["batch_id"] for e in s["drift_events"]}
    assert all(u["drift_batch_id"] in drifts for u in s["updates"])
    for upd in firsts:
        r = upd["regime"]
        assert upd["test_accuracy_after"][r] > upd["test_accuracy_before"][r] + 0.3
