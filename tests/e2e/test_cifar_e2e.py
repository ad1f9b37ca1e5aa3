"""The CIFAR harness end to end on a real local Ray cluster: synthetic CIFAR-shaped images, the small
ViT, a low-contrast regime that the detector must catch and the update must repair (CPU only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pipeline_runs import run_pipeline

pytestmark = pytest.mark.e2e

REGIME_BATCHES = 10
BATCH = 32
OVERRIDES = [
    "name=cifar-e2e",
    "seed=0",
    "verbosity=0",
    "device=cpu",
    "model.harness=cifar",
    "monitor.on_drift=pause",  # a replayed stream, faster than an update
    "model.pretrain_epochs=3",
    "model.pretrain_lr=0.003",
    "data.source=synthetic",
    "data.model=small_vit",
    "data.synthetic_train=1000",
    "data.synthetic_test=300",
    "data.pretrain_samples=900",
    "data.test_samples=200",
    "data.regimes=[clean, contrast_5]",
    f"data.regime_batches={REGIME_BATCHES}",
    f"stream.batch_size={BATCH}",
    "monitor.num_monitors=1",
    "monitor.num_cpus=1",
    "drift_detection.warmup_batches=3",
    "drift_detection.cooldown_batches=2",
    "drift_detection.interval=3",
    "continual_learning.memory_size=200",
    "continual_learning.window_batches=6",
    "continual_learning.post_drift_batches=3",
    "train.num_workers=0",
    "train.epochs=5",
    "train.batch_size=32",
    "train.lr=0.003",
    "logging.backend=none",
    "logging.plots=false",
]


@pytest.fixture(scope="module")
def summary(ray_cluster: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return run_pipeline(tmp_path_factory.mktemp("cifar"), OVERRIDES)


def test_the_contrast_regime_is_detected(summary: dict[str, Any]) -> None:
    s = summary
    assert s["run"]["status"] == "completed"
    assert s["stream"]["batches"] == 2 * REGIME_BATCHES
    starts = {r["regime"]: r["batch_id"] for r in s["stream"]["regime_starts"]}
    assert starts == {0: 0, 1: REGIME_BATCHES}
    drifts = [e["batch_id"] for e in s["drift_events"]]
    assert drifts, "no drift detected"
    assert REGIME_BATCHES <= drifts[0] < REGIME_BATCHES + 5, f"first drift at {drifts[0]}"


def test_the_update_repairs_the_low_contrast_regime(summary: dict[str, Any]) -> None:
    s = summary
    rows = s["accuracy_matrix"]["rows"]
    assert rows[0]["accuracy"][0] > 0.9, f"pre-trained clean accuracy {rows[0]['accuracy'][0]:.3f}"
    assert rows[0]["accuracy"][1] < rows[0]["accuracy"][0] - 0.2, "low contrast should hurt the clean model"
    upd = s["updates"][0]
    before, after = upd["test_accuracy_before"][1], upd["test_accuracy_after"][1]
    assert after > before + 0.15, f"low-contrast regime accuracy {before:.3f} -> {after:.3f}"
    assert (
        set(s["monitoring"]["monitor_versions"].values()) == {s["model_version"]} and s["model_version"] >= 1
    )
