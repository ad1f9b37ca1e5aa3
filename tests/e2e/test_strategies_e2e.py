"""Every update strategy through the whole pipeline (real cluster, TorchTrainer in local mode)."""

from __future__ import annotations

from pathlib import Path

import pytest

from raydrift.config import build_config
from raydrift.coordinator import Coordinator

BASE = [
    "verbosity=0",
    "model.harness=synthetic",
    "data.regime_batches=14",
    "data.num_regimes=3",
    "stream.batch_size=32",
    "monitor.num_cpus=0.5",
    "drift_detection.warmup_batches=3",
    "drift_detection.cooldown_batches=2",
    "continual_learning.memory_size=200",
    "continual_learning.window_batches=6",
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
    s = Coordinator(cfg, run_dir=tmp_path, console=lambda _: None).run()
    assert s["run"]["status"] == "completed"
    assert len(s["updates"]) >= 2, s["drift_events"]
    for upd in s["updates"]:
        assert upd["strategy"] == strategy
        r = upd["regime"]
        assert upd["test_accuracy_after"][r] > upd["test_accuracy_before"][r] + 0.1
