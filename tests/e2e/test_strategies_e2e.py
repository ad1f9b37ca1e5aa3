"""Every update strategy through the whole pipeline (real cluster, TorchTrainer in local mode)."""

from __future__ import annotations

from pathlib import Path

import pytest

from raydrift.config import build_config
from raydrift.coordinator import Coordinator

BASE = [
    "verbosity=0",
    "model.harness=synthetic",
    "monitor.on_drift=pause",  # a replayed stream, faster than an update
    "data.regime_batches=14",
    "data.num_regimes=3",
    "stream.batch_size=32",
    "monitor.num_cpus=0.5",
    "drift_detection.warmup_batches=3",
    "drift_detection.cooldown_batches=2",
    "continual_learning.memory_size=200",
    "continual_learning.window_batches=6",
    # ADWIN alarms ~10 samples into a regime: 5 more batches give the window 5 of the new regime plus
    # the one held out for the promotion gate
    "continual_learning.post_drift_batches=5",
    "train.num_workers=0",
    "train.epochs=8",
    "train.batch_size=32",
    "train.lr=0.01",
    "logging.backend=none",
    "logging.plots=false",
]


@pytest.mark.parametrize("strategy", ["naive", "replay", "der++", "ewc_online", "jvp"])
def test_strategy_adapts_in_the_pipeline(ray_cluster: Path, tmp_path: Path, strategy: str) -> None:
    cfg = build_config(
        None, [*BASE, f"continual_learning.strategy={strategy}", f"logging.runs_dir={tmp_path / 'runs'}"]
    )
    s = Coordinator(cfg, run_dir=tmp_path, console=lambda _: None).run().to_dict()
    assert s["run"]["status"] == "completed"
    assert len(s["updates"]) >= 2, s["drift_events"]
    for upd in s["updates"]:
        assert upd["strategy"] == strategy
        r = upd["regime"]
        if upd["followup"] == 0:  # a drift's first update; a follow-up starts from an adapted model
            assert upd["test_accuracy_after"][r] > upd["test_accuracy_before"][r] + 0.1


def test_two_ray_train_workers_equal_one(ray_cluster: Path, tmp_path: Path) -> None:
    """The JVP update with 2 real Ray Train workers equals the in-process update on the same global batch."""
    import ray
    import torch

    from raydrift.harness import build_harness
    from raydrift.learning.loop import UpdateData
    from raydrift.update import Updater
    from raydrift.weights import to_numpy

    spec = {"spec": "synthetic", "options": {}, "seed": 0, "batch_size": 32}
    harness = build_harness(**spec)
    torch.manual_seed(0)
    weights = to_numpy(harness.build_model().state_dict())
    stream = harness.stream()
    window = [next(stream) for _ in range(4)]
    history = [next(stream) for _ in range(4)]
    data = UpdateData(
        torch.cat([b.x for b in window]),
        torch.cat([b.y for b in window]),
        torch.cat([b.x for b in history]),
        torch.cat([b.y for b in history]),
    )
    refs = ray.put(weights), ray.put(data)
    out = {}
    for workers in (0, 2):
        cfg = build_config(
            None,
            [*BASE, "continual_learning.strategy=jvp", f"train.num_workers={workers}", "train.epochs=2"],
        )
        out[workers] = Updater(cfg, spec, tmp_path / f"train-{workers}").run(*refs, version=1).weights
    assert out[2].keys() == out[0].keys()
    for k in out[0]:
        # float32, different summation order: equal to 1e-5
        assert abs(out[2][k] - out[0][k]).max() < 1e-5, k
    assert any(abs(out[0][k] - weights[k]).max() > 1e-3 for k in weights)  # the update did move the weights
