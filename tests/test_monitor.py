"""Monitor: evaluation results and versioned, atomic weight swaps (no Ray)."""

from __future__ import annotations

import threading

import numpy as np
import torch

from raydrift.harness import build_harness
from raydrift.monitor import Monitor
from raydrift.weights import to_numpy


def make() -> tuple[Monitor, dict[str, np.ndarray]]:
    harness = build_harness("synthetic", {}, seed=0, batch_size=16)
    weights = to_numpy(harness.build_model().state_dict())
    return Monitor(harness, "accuracy", weights, version=0, name="m"), weights


def test_evaluate_returns_per_sample_values_and_means() -> None:
    monitor, _ = make()
    batch = next(iter(monitor.harness.stream()))
    r = monitor.evaluate(7, batch)
    assert r.batch_id == 7 and r.version == 0 and r.monitor == "m" and r.regime == batch.regime
    assert r.values.shape == (len(batch.y),) and r.values.dtype == np.float32
    assert set(np.unique(r.values)) <= {0.0, 1.0}
    assert r.metrics["accuracy"] == float(r.values.mean())
    assert "loss" in r.metrics and r.eval_seconds >= 0
    assert monitor.stats()["batches"] == 1


def test_older_or_equal_versions_are_ignored() -> None:
    monitor, weights = make()
    zeros = {k: np.zeros_like(v) for k, v in weights.items()}
    assert monitor.set_weights(2, zeros) == 2
    assert monitor.set_weights(1, weights) == 2  # stale push ignored
    assert monitor.set_weights(2, weights) == 2  # a retried push of the same version ignored
    batch = next(iter(monitor.harness.stream()))
    out = monitor.evaluate(0, batch)
    assert out.version == 2
    # zero weights give constant logits: every sample gets the same prediction
    assert len(set(monitor._model(batch.x).argmax(1).tolist())) == 1


def test_swap_is_atomic_under_concurrent_evaluation() -> None:
    monitor, weights = make()
    batch = next(iter(monitor.harness.stream()))
    versions = {v: {k: np.full_like(a, v * 0.01) for k, a in weights.items()} for v in range(1, 30)}
    expected = {}
    for v, w in versions.items():
        model = monitor.harness.build_model()
        model.load_state_dict({k: torch.from_numpy(a.copy()) for k, a in w.items()})
        with torch.no_grad():
            expected[v] = model(batch.x)
    seen: list[tuple[int, torch.Tensor]] = []
    stop = threading.Event()

    def evaluate_loop() -> None:
        while not stop.is_set():
            with monitor._lock:
                model, version = monitor._model, monitor.version
            with torch.no_grad():
                seen.append((version, model(batch.x)))

    t = threading.Thread(target=evaluate_loop)
    t.start()
    for v, w in versions.items():
        monitor.set_weights(v, w)
    stop.set()
    t.join()
    # every evaluation saw exactly one version's weights, never a mix
    for version, out in seen:
        if version > 0:
            assert torch.allclose(out, expected[version])
