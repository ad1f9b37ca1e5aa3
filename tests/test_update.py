"""Updater (raydrift/update.py) in Ray Train's local mode: the new weights come back as the training
function's return value, without a checkpoint directory. With Ray Train workers: tests/e2e/test_update_workers.py."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from raydrift.config import RaydriftConfig
from raydrift.harness import build_harness
from raydrift.learning import UpdateData, make_strategy, seed_everything, train_update
from raydrift.update import Updater, train_poll_interval
from raydrift.weights import load_into, to_numpy

OPTIONS = {"num_regimes": 2, "regime_batches": 3, "hidden": 16}


def config(tmp_path: Path, **train: Any) -> RaydriftConfig:
    return RaydriftConfig.model_validate(
        {
            "name": "update-test",
            "seed": 0,
            "device": "cpu",
            "model": {"harness": "synthetic", "pretrain_epochs": 0},
            "data": OPTIONS,
            "continual_learning": {"strategy": "ewc_online"},
            "train": {"num_workers": 0, "epochs": 2, "batch_size": 32, **train},
            "logging": {"backend": "none", "plots": False, "save_weights": False, "runs_dir": str(tmp_path)},
        }
    )


def update_data() -> UpdateData:
    batches = list(build_harness("synthetic", OPTIONS, seed=0, batch_size=64).stream())
    window, memory = batches[3:], batches[:2]
    return UpdateData(
        torch.cat([b.x for b in window]),
        torch.cat([b.y for b in window]),
        torch.cat([b.x for b in memory]),
        torch.cat([b.y for b in memory]),
    )


def test_local_mode_returns_the_weights_without_a_checkpoint(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    harness = build_harness("synthetic", OPTIONS, seed=0, batch_size=64)
    initial = to_numpy(harness.build_model().state_dict())
    data = update_data()
    updater = Updater(cfg, {"spec": "synthetic", "options": OPTIONS}, tmp_path / "train")
    # plain values are accepted where the coordinator passes ObjectRefs (no cluster needed here)
    outcome = updater.run(initial, data, version=3)  # type: ignore[arg-type]

    # the same steps in this process give the same weights (same ops, same seed = seed + version)
    model = harness.build_model()
    load_into(model, initial)
    strategy = make_strategy("ewc_online", cfg.continual_learning)
    seed_everything(0 + 3)
    metrics = train_update(model, harness, strategy, data, cfg.train, seed=0 + 3)
    expected = to_numpy(model.state_dict())
    assert set(outcome.weights) == set(expected)
    for name, value in expected.items():
        assert isinstance(outcome.weights[name], np.ndarray)
        np.testing.assert_array_equal(outcome.weights[name], value)
    assert outcome.metrics["version"] == 3 and outcome.metrics["steps"] == metrics["steps"]
    assert outcome.metrics["train_loss"] == pytest.approx(metrics["train_loss"])
    assert 0.0 <= outcome.metrics["window_accuracy"] <= 1.0
    assert outcome.training_seconds > 0
    # the strategy state came back through torch.load(weights_only=True): CPU tensors, plain values
    state, expected_state = outcome.strategy_state, strategy.state_dict()
    assert state is not None and state["updates"] == expected_state["updates"]
    for name, fisher in expected_state["fisher"].items():
        assert state["fisher"][name].device.type == "cpu" and torch.equal(state["fisher"][name], fisher)
    # nothing of the update was written (local mode used to leave a checkpoint in a temp dir)
    assert not list(tmp_path.rglob("*.pt"))


def test_a_failing_update_raises(tmp_path: Path) -> None:
    cfg = config(tmp_path)
    updater = Updater(cfg, {"spec": "synthetic", "options": OPTIONS}, tmp_path / "train")
    wrong = {"not_a_parameter": np.zeros(2, dtype=np.float32)}
    with pytest.raises(Exception, match="not_a_parameter|state_dict|Missing"):
        updater.run(wrong, update_data(), version=1)  # type: ignore[arg-type]


def test_train_poll_interval_is_set_during_fit_only_and_the_users_setting_wins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    name = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
    monkeypatch.delenv(name, raising=False)
    with train_poll_interval(0.2):
        assert os.environ[name] == "0.2"
    assert name not in os.environ
    monkeypatch.setenv(name, "5")
    with train_poll_interval(0.2):
        assert os.environ[name] == "5"
    assert os.environ[name] == "5"
