"""Monitor: evaluation results and versioned, atomic weight swaps (no Ray)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
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


def test_ensure_version_fetches_only_a_newer_version() -> None:
    monitor, weights = make()
    batch = next(iter(monitor.harness.stream()))
    fetched: list[int] = []

    def fetch(scale: float) -> dict[str, np.ndarray]:
        fetched.append(1)
        return {k: v * scale for k, v in weights.items()}

    assert monitor.ensure_version(0, lambda: fetch(0.0)) == 0 and not fetched  # already held
    assert monitor.ensure_version(3, lambda: fetch(0.0)) == 3 and len(fetched) == 1
    assert monitor.ensure_version(3, lambda: fetch(1.0)) == 3 and len(fetched) == 1  # not again
    assert monitor.ensure_version(2, None) == 3  # an older task's version: nothing to load
    assert monitor.evaluate(0, batch).version == 3
    # zero weights (version 3's) give constant logits
    assert len(set(monitor._model(batch.x).argmax(1).tolist())) == 1
    stats = monitor.stats()
    assert stats["swaps"] == 1 and stats["swap_seconds"] > 0
    version, t0, t1 = stats["last_swap"]
    assert version == 3 and t1 >= t0


def test_ensure_version_without_weights_for_a_newer_version_is_an_error() -> None:
    monitor, _ = make()
    with pytest.raises(RuntimeError, match="holds weights version 0; a task needs version 1"):
        monitor.ensure_version(1, None)
    assert monitor.version == 0


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


def read_only(weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Copies of ``weights`` marked read-only, as a monitor actor gets them from Ray's object store."""
    out = {k: v.copy() for k, v in weights.items()}
    for v in out.values():
        v.flags.writeable = False
    return out


def test_read_only_weights_are_assigned_without_a_copy_and_writable_ones_are_copied() -> None:
    monitor, weights = make()
    shared = read_only({k: v * 0.5 for k, v in weights.items()})
    monitor.set_weights(1, shared)
    state = monitor._model.state_dict()
    assert all(state[k].data_ptr() == torch.from_numpy(v).data_ptr() for k, v in shared.items() if v.size)
    own = {k: v * 0.25 for k, v in weights.items()}  # writable: the caller may still change them
    monitor.set_weights(2, own)
    state = monitor._model.state_dict()
    assert all(state[k].data_ptr() != v.ctypes.data for k, v in own.items() if v.size)
    assert all(np.array_equal(state[k].numpy(), v) for k, v in own.items())


def test_zero_copy_swaps_reuse_the_previous_model_only_when_no_evaluation_holds_it() -> None:
    monitor, weights = make()
    batch = next(iter(monitor.harness.stream()))
    monitor.set_weights(1, read_only(weights))
    first = monitor._model
    monitor.set_weights(2, read_only(weights))
    second = monitor._model
    monitor.set_weights(3, read_only(weights))
    assert monitor._model is first and second is not first  # double buffering: v1's object holds v3
    # an evaluation holding the spare (v2's model) makes the next swap build a new object instead
    monitor._busy[id(second)] += 1
    monitor.set_weights(4, read_only(weights))
    assert monitor._model is not second and monitor._model is not first
    monitor._busy.clear()
    assert monitor.evaluate(0, batch).version == 4


def test_zero_copy_swap_is_atomic_under_concurrent_evaluation() -> None:
    monitor, weights = make()
    batch = next(iter(monitor.harness.stream()))
    versions = {v: read_only({k: np.full_like(a, v * 0.01) for k, a in weights.items()}) for v in range(1, 40)}
    expected = {}
    for v, w in versions.items():
        model = monitor.harness.build_model()
        model.load_state_dict({k: torch.from_numpy(a.copy()) for k, a in w.items()})
        with torch.no_grad():
            expected[v] = float(monitor.harness.metrics(model(batch.x), batch.y)["loss"].float().mean())
    seen: list[tuple[int, float]] = []
    stop = threading.Event()

    def evaluate_loop() -> None:
        while not stop.is_set():
            r = monitor.evaluate(0, batch)
            seen.append((r.version, r.metrics["loss"]))

    t = threading.Thread(target=evaluate_loop)
    t.start()
    for v, w in versions.items():
        n = len(seen)
        monitor.set_weights(v, w)
        deadline = time.monotonic() + 5
        while len(seen) < n + 2 and time.monotonic() < deadline:  # evaluations around every swap
            time.sleep(0.0005)
    stop.set()
    t.join()
    checked = [(v, loss) for v, loss in seen if v > 0]
    assert len({v for v, _ in checked}) >= 30  # the loop overlapped the swaps
    for version, loss in checked:  # each evaluation saw exactly one version's weights
        assert loss == pytest.approx(expected[version], rel=1e-5)


class _Scaled(torch.nn.Module):
    """A module with its own loading logic (stores half of what it is given): not the fast path."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(3))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        state_dict[prefix + "w"] = state_dict[prefix + "w"] / 2
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def test_assign_puts_parameters_and_buffers_in_place_and_defers_to_custom_loading() -> None:
    from raydrift.monitor import _state_slots

    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3), torch.nn.ReLU()).eval()
    rng = np.random.default_rng(0)  # positive values: running_var must be
    weights = read_only(
        {
            k: (0.1 + np.abs(rng.normal(size=v.shape))).astype(np.float32) if v.is_floating_point() else v.numpy()
            for k, v in net.state_dict().items()
        }
    )
    x = torch.randn(5, 4)
    reference = copy_loaded(net, weights)
    out = Monitor._assign(net, weights)
    assert out is net and _state_slots(net) is not None
    assert isinstance(net[0].weight, torch.nn.Parameter) and net[0].weight.requires_grad
    assert net[1].running_mean.data_ptr() == torch.from_numpy(weights["1.running_mean"]).data_ptr()
    with torch.no_grad():
        assert torch.equal(net(x), reference(x))
    # a wrong shape or a missing key: load_state_dict's own error
    bad = dict(weights, **{"0.weight": read_only({"a": np.zeros((2, 2), np.float32)})["a"]})
    with pytest.raises(RuntimeError, match="size mismatch"):
        Monitor._assign(net, bad)
    with pytest.raises(RuntimeError, match="Missing key"):
        Monitor._assign(net, {k: v for k, v in weights.items() if k != "0.bias"})
    # a module outside torch.nn with its own _load_from_state_dict goes through load_state_dict
    scaled = torch.nn.Sequential(_Scaled())
    assert _state_slots(scaled) is None
    Monitor._assign(scaled, read_only({"0.w": np.full(3, 4.0, np.float32)}))
    assert scaled[0].w.tolist() == [2.0, 2.0, 2.0]


def copy_loaded(net: torch.nn.Module, weights: dict[str, np.ndarray]) -> torch.nn.Module:
    import copy

    other = copy.deepcopy(net)
    other.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in weights.items()})
    return other.eval()
