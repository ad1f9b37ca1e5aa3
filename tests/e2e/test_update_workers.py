"""Updater with real Ray Train workers: the weights come back as rank 0's return value (no checkpoint),
a retried attempt (train.max_failures) still delivers them, and a failure raises."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray
import torch

from raydrift.config import RaydriftConfig
from raydrift.harness import build_harness
from raydrift.learning import UpdateData
from raydrift.update import Updater
from raydrift.weights import to_numpy

OPTIONS = {"num_regimes": 2, "regime_batches": 3, "hidden": 16}

# A synthetic harness whose model cannot be built the first time in a run: the first Train attempt
# fails, the retry (train.max_failures: 1) succeeds.
FAIL_ONCE = textwrap.dedent(
    """
    from pathlib import Path

    from pydantic import ConfigDict

    from harnesses.synthetic import GaussianDriftHarness, SyntheticOptions


    class FailOnceOptions(SyntheticOptions):
        model_config = ConfigDict(extra="forbid")
        marker: str = ""


    class FailOnceHarness(GaussianDriftHarness):
        Options = FailOnceOptions

        def build_model(self):
            marker = Path(self.options.marker)
            if self.options.marker and not marker.exists():
                marker.touch()
                raise RuntimeError("first attempt fails on purpose")
            return super().build_model()
    """
)


@pytest.fixture(scope="module")
def code_dir(ray_cluster: Path) -> Iterator[Path]:
    (ray_cluster / "failonce_harness.py").write_text(FAIL_ONCE)
    sys.path.insert(0, str(ray_cluster))  # the config validates the harness options in this process
    try:
        yield ray_cluster
    finally:
        sys.path.remove(str(ray_cluster))


def config(tmp_path: Path, harness: str, options: dict[str, Any], **train: Any) -> RaydriftConfig:
    return RaydriftConfig.model_validate(
        {
            "name": "update-workers",
            "seed": 0,
            "device": "cpu",
            "model": {"harness": harness, "pretrain_epochs": 0},
            "data": options,
            "continual_learning": {"strategy": "replay"},
            "train": {"num_workers": 1, "cpus_per_worker": 1, "epochs": 1, "batch_size": 32, **train},
            "logging": {"backend": "none", "plots": False, "save_weights": False, "runs_dir": str(tmp_path)},
        }
    )


def refs() -> tuple[Any, Any, dict[str, np.ndarray]]:
    harness = build_harness("synthetic", OPTIONS, seed=0, batch_size=64)
    batches = list(harness.stream())
    data = UpdateData(
        torch.cat([b.x for b in batches[3:]]),
        torch.cat([b.y for b in batches[3:]]),
        torch.cat([b.x for b in batches[:2]]),
        torch.cat([b.y for b in batches[:2]]),
    )
    initial = to_numpy(harness.build_model().state_dict())
    return ray.put(initial), ray.put(data), initial


def test_one_worker_returns_the_weights_without_a_checkpoint(code_dir: Path, tmp_path: Path) -> None:
    weights_ref, data_ref, initial = refs()
    storage = tmp_path / "train"
    updater = Updater(config(tmp_path, "synthetic", OPTIONS), {"spec": "synthetic", "options": OPTIONS}, storage)
    outcome = updater.run(weights_ref, data_ref, version=1)
    assert set(outcome.weights) == set(initial)
    assert all(isinstance(v, np.ndarray) for v in outcome.weights.values())
    assert any(not np.array_equal(outcome.weights[k], initial[k]) for k in initial)  # it trained
    assert outcome.metrics["version"] == 1 and outcome.metrics["world_size"] == 1
    assert outcome.strategy_state == {}  # replay keeps no state between updates
    assert not list(storage.rglob("checkpoint_*"))  # Ray Train persisted no checkpoint


def test_a_retried_attempt_still_returns_the_weights(code_dir: Path, tmp_path: Path) -> None:
    weights_ref, data_ref, initial = refs()
    options = {**OPTIONS, "marker": str(tmp_path / "failed-once")}
    spec = "failonce_harness:FailOnceHarness"
    cfg = config(tmp_path, spec, options, max_failures=1)
    outcome = Updater(cfg, {"spec": spec, "options": options}, tmp_path / "train").run(
        weights_ref, data_ref, version=2
    )
    assert (tmp_path / "failed-once").exists()  # the first attempt did fail
    assert set(outcome.weights) == set(initial) and outcome.metrics["version"] == 2


def test_a_failed_update_raises(code_dir: Path, tmp_path: Path) -> None:
    weights_ref, data_ref, _ = refs()
    options = {**OPTIONS, "marker": str(tmp_path / "failed-once")}
    spec = "failonce_harness:FailOnceHarness"
    updater = Updater(config(tmp_path, spec, options, max_failures=0), {"spec": spec, "options": options}, tmp_path)
    with pytest.raises(Exception, match="first attempt fails on purpose"):
        updater.run(weights_ref, data_ref, version=3)


def test_train_steps_hold_on_two_workers(code_dir: Path, tmp_path: Path) -> None:
    # train.steps on a real 2-worker Ray Train run: both ranks stop at the same global step (the
    # gradients' all-reduce would hang otherwise), past an epoch boundary and inside the last epoch
    weights_ref, data_ref, initial = refs()
    n = len(ray.get(data_ref).window_y)
    per_epoch = -(-n // 32)
    steps = 2 * per_epoch + 1
    cfg = config(tmp_path, "synthetic", OPTIONS, num_workers=2, steps=steps)
    outcome = Updater(cfg, {"spec": "synthetic", "options": OPTIONS}, tmp_path / "train").run(
        weights_ref, data_ref, version=1
    )
    assert outcome.metrics["world_size"] == 2
    assert outcome.metrics["steps"] == steps, outcome.metrics
    assert any(not np.array_equal(outcome.weights[k], initial[k]) for k in initial)
