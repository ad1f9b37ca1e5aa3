"""Tests of raydrift.learning: replay memory, the training loop, strategies and CL metrics."""

from __future__ import annotations

import copy
import pickle
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from raydrift.config import ContinualLearningConfig, TrainConfig
from raydrift.errors import ConfigError
from raydrift.harness import Batch, Harness
from raydrift.learning import (
    STRATEGY_REGISTRY,
    ReplayMemory,
    UpdateData,
    UpdateStrategy,
    average_accuracy,
    backward_transfer,
    cl_summary,
    evaluate,
    forgetting,
    make_strategy,
    pretrain,
    seed_everything,
    train_update,
)
from raydrift.learning.loop import all_reduce_gradients, compute_step_gradients
from raydrift.learning.strategies import resolve_strategy
from raydrift.learning.strategies.naive import NaiveUpdate
from raydrift.learning.strategies.replay import ReplayUpdate

DIM, CLASSES = 8, 4


class TinyHarness(Harness):
    """A linear classifier on Gaussian data: 4 classes, 8 features."""

    name = "tiny"

    def build_model(self) -> nn.Linear:
        g = torch.Generator().manual_seed(self.seed)
        model = nn.Linear(DIM, CLASSES)
        with torch.no_grad():
            model.weight.copy_(0.1 * torch.randn(CLASSES, DIM, generator=g))
            model.bias.zero_()
        return model

    def stream(self) -> Iterator[Batch]:
        yield from ()

    def test_sets(self) -> dict[int, tuple[Tensor, Tensor]]:
        return {}


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Iterator[None]:
    # The models here are tiny: intra-op threads only add synchronisation, which is very slow when
    # the (2-core) machine is busy. Restored afterwards for the other test modules.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def task_data(task: int, n: int, seed: int) -> tuple[Tensor, Tensor]:
    """Task 0: classes 0/1 split by the sign of feature 0; task 1: classes 2/3 by feature 1.

    The tasks sit at different means, so a linear model can solve both at once (class-incremental).
    """
    g = torch.Generator().manual_seed(1000 * task + seed)
    x = torch.randn(n, DIM, generator=g)
    x[:, 2 + task] += 3.0
    y = (x[:, task] > 0).long() + 2 * task
    return x, y


def tcfg(**kw: Any) -> TrainConfig:
    return TrainConfig.model_validate(kw)


def clcfg(**kw: Any) -> ContinualLearningConfig:
    return ContinualLearningConfig.model_validate(kw)


# ---------------------------------------------------------------------------------------------------
# ReplayMemory


def ids_batch(start: int, n: int) -> tuple[Tensor, Tensor]:
    """Samples whose feature is their stream index (to see which ones the memory kept)."""
    idx = torch.arange(start, start + n)
    return idx.float().unsqueeze(1), idx


def fill(mem: ReplayMemory, total: int, batch: int) -> None:
    for start in range(0, total, batch):
        mem.add(*ids_batch(start, min(batch, total - start)))


def test_memory_capacity_and_contents() -> None:
    mem = ReplayMemory(capacity=50, seed=1)
    fill(mem, 30, 7)
    assert len(mem) == 30 and mem.seen == 30
    x, y = mem.tensors()
    assert torch.equal(y, torch.arange(30))  # fill phase: slot i holds sample i
    fill_more = ReplayMemory(capacity=50, seed=1)
    fill(fill_more, 1000, 64)
    x, y = fill_more.tensors()
    assert len(fill_more) == 50 and fill_more.seen == 1000
    assert x.shape == (50, 1) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.equal(x.squeeze(1).long(), y)  # x and y rows stay paired
    assert len(set(y.tolist())) == 50  # no sample stored twice
    assert fill_more.nbytes == 50 * (4 + 8 + 8)  # input, label, id


def test_memory_capacity_zero_and_empty() -> None:
    mem = ReplayMemory(capacity=0)
    x, y = mem.tensors()
    assert x.shape == (0,) and y.shape == (0,) and y.dtype == torch.int64
    mem.add(torch.randn(10, 3, 2), torch.arange(10))
    x, y = mem.tensors()
    assert len(mem) == 0 and mem.seen == 10 and x.shape == (0, 3, 2) and mem.nbytes == 0
    xs, ys = mem.sample(5, torch.Generator().manual_seed(0))
    assert len(xs) == 0 and len(ys) == 0


def test_memory_rejects_mismatched_batches() -> None:
    mem = ReplayMemory(capacity=10)
    mem.add(torch.randn(4, 3), torch.arange(4))
    with pytest.raises(ValueError, match="shape"):
        mem.add(torch.randn(4, 5), torch.arange(4))
    with pytest.raises(ValueError):
        mem.add(torch.randn(4, 3), torch.arange(3))


def test_memory_reservoir_is_uniform() -> None:
    # 1000 samples, capacity 100, 400 seeds: each sample is kept with probability 0.1, i.e. 40 times
    # on average. Sums over blocks of 100 consecutive samples have mean 4000 and a standard deviation
    # of at most sqrt(100 * 400 * 0.1 * 0.9) = 60 (inclusions within one run are negatively
    # correlated, which only lowers it). Tolerance: 300 (5 sigma) per block, so a sampler that favours
    # early or late samples by more than 7.5 % fails.
    total, cap, runs = 1000, 100, 400
    counts = np.zeros(total)
    for seed in range(runs):
        mem = ReplayMemory(cap, seed=seed)
        fill(mem, total, 37)
        counts[mem.tensors()[1].numpy()] += 1
    assert counts.sum() == cap * runs
    blocks = counts.reshape(10, 100).sum(axis=1)
    assert np.all(np.abs(blocks - 4000) < 300), blocks
    # no single sample is kept far more or less often than 40 times (binomial sd 6; 1000 samples)
    assert counts.min() > 40 - 30 and counts.max() < 40 + 30, (counts.min(), counts.max())


def test_memory_deterministic_and_batch_split_invariant() -> None:
    a, b, c = ReplayMemory(64, seed=3), ReplayMemory(64, seed=3), ReplayMemory(64, seed=3)
    fill(a, 2000, 50)
    fill(b, 2000, 50)
    fill(c, 2000, 13)  # same samples, different batches
    assert torch.equal(a.tensors()[1], b.tensors()[1])
    assert torch.equal(a.tensors()[1], c.tensors()[1])
    d = ReplayMemory(64, seed=4)
    fill(d, 2000, 50)
    assert not torch.equal(a.tensors()[1], d.tensors()[1])


def test_memory_state_round_trip_continues_identically() -> None:
    a = ReplayMemory(40, seed=7)
    fill(a, 300, 25)
    state = a.state_dict()
    b = ReplayMemory(1, seed=99)
    b.load_state_dict(state)
    c = pickle.loads(pickle.dumps(a))
    assert torch.equal(a.tensors()[1], b.tensors()[1])
    for mem in (a, b, c):
        for start in range(300, 1000, 25):
            mem.add(*ids_batch(start, 25))
    assert a.seen == b.seen == c.seen == 1000
    assert torch.equal(a.tensors()[1], b.tensors()[1])
    assert torch.equal(a.tensors()[1], c.tensors()[1])
    # an empty memory round-trips as empty (trailing shape still unknown)
    e = ReplayMemory(5)
    e.load_state_dict(ReplayMemory(5).state_dict())
    assert len(e) == 0 and e.tensors()[0].shape == (0,)


def test_memory_sample() -> None:
    mem = ReplayMemory(20, seed=0)
    fill(mem, 100, 10)
    x, y = mem.sample(8, torch.Generator().manual_seed(1))
    x2, y2 = mem.sample(8, torch.Generator().manual_seed(1))
    assert torch.equal(y, y2) and len(set(y.tolist())) == 8  # seeded, without replacement
    assert set(y.tolist()) <= set(mem.tensors()[1].tolist())
    x, y = mem.sample(50, torch.Generator().manual_seed(1))
    assert len(y) == 50  # with replacement when asking for more than stored


# ---------------------------------------------------------------------------------------------------
# the training loop


def update_data(n_window: int = 45, n_memory: int = 30) -> UpdateData:
    wx, wy = task_data(1, n_window, seed=1)
    mx, my = task_data(0, n_memory, seed=2)
    return UpdateData(wx, wy, mx, my)


def grads(model: nn.Module) -> list[Tensor]:
    out = []
    for p in model.parameters():
        assert p.grad is not None
        out.append(p.grad.clone())
    return out


def test_step_gradient_sharding_matches_single_worker() -> None:
    # One global step of 7 current + 7 history samples: the gradients of 2 (and 3) ranks, summed as
    # the all-reduce does, equal the 1-rank gradient. Tolerance 1e-6 (float32 summation order).
    harness = TinyHarness(seed=0)
    strategy = ReplayUpdate(clcfg(params={"replay_weight": 0.7}))
    x, y = task_data(1, 7, seed=5)
    xh, yh = task_data(0, 7, seed=6)
    model = harness.build_model()
    loss1 = compute_step_gradients(model, harness, strategy, x, y, xh, yh)
    ref = grads(model)
    assert all(float(g.abs().sum()) > 0 for g in ref)
    for world in (2, 3):
        summed = [torch.zeros_like(g) for g in ref]
        loss_sum = torch.zeros(())
        for rank in range(world):
            m = copy.deepcopy(model)
            loss_sum += compute_step_gradients(m, harness, strategy, x, y, xh, yh, rank, world)
            for s, g in zip(summed, grads(m), strict=True):
                s += g
        for s, g in zip(summed, ref, strict=True):
            torch.testing.assert_close(s, g, atol=1e-6, rtol=0)
        torch.testing.assert_close(loss_sum, loss1, atol=1e-6, rtol=0)


class ThreadAllReduce:
    """An in-place SUM all-reduce between threads (emulates torch.distributed for lockstep ranks)."""

    def __init__(self, world_size: int) -> None:
        self.barrier = threading.Barrier(world_size, timeout=60)
        self.slots: list[Tensor | None] = [None] * world_size

    def for_rank(self, rank: int) -> Any:
        def all_reduce(t: Tensor) -> None:
            self.slots[rank] = t.clone()
            self.barrier.wait()
            total = torch.stack([s for s in self.slots if s is not None]).sum(dim=0)
            self.barrier.wait()  # everyone has read the slots before they are overwritten
            t.copy_(total)

        return all_reduce


def run_ranks(world: int, strategy_name: str, data: UpdateData, cfg: TrainConfig, seed: int) -> list[Any]:
    harness = TinyHarness(seed=0)
    reducer = ThreadAllReduce(world)
    results: list[Any] = [None] * world
    errors: list[BaseException] = []

    def worker(rank: int) -> None:
        try:
            model = harness.build_model()
            strategy = make_strategy(strategy_name, clcfg())
            metrics = train_update(
                model, harness, strategy, data, cfg, seed, rank, world, reducer.for_rank(rank)
            )
            results[rank] = (model, metrics)
        except BaseException as exc:  # surfaced below; a dead rank breaks the barrier for the others
            errors.append(exc)
            reducer.barrier.abort()

    threads = [threading.Thread(target=worker, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


@pytest.mark.parametrize("world", [2, 3])
def test_train_update_n_workers_equals_one_worker(world: int) -> None:
    # Full updates (Adam, 3 epochs, 45 samples in global batches of 16: the last batch of 13 leaves
    # uneven shards) run by `world` lockstep ranks equal the 1-worker update: final weights within
    # 1e-5, train_loss within 1e-5, every rank bitwise identical to rank 0.
    data = update_data()
    cfg = tcfg(epochs=3, batch_size=16, lr=0.05)
    harness = TinyHarness(seed=0)
    single = harness.build_model()
    m1 = train_update(single, harness, ReplayUpdate(clcfg()), data, cfg, seed=11)
    ranks = run_ranks(world, "replay", data, cfg, seed=11)
    for model, metrics in ranks:
        for p, q in zip(model.parameters(), single.parameters(), strict=True):
            torch.testing.assert_close(p, q, atol=1e-5, rtol=0)
        assert metrics["train_loss"] == pytest.approx(m1["train_loss"], abs=1e-5)
        assert metrics["steps"] == m1["steps"] == 9
    for model, _ in ranks[1:]:
        for p, q in zip(model.parameters(), ranks[0][0].parameters(), strict=True):
            assert torch.equal(p, q)


def test_train_update_needs_all_reduce_for_many_workers() -> None:
    harness = TinyHarness()
    with pytest.raises(ValueError, match="all_reduce"):
        train_update(harness.build_model(), harness, NaiveUpdate(), update_data(), tcfg(), 0, 0, 2, None)


def test_train_update_deterministic_and_metrics() -> None:
    data = update_data()
    cfg = tcfg(epochs=2, batch_size=10, lr=0.01)
    harness = TinyHarness(seed=0)
    a, b, c = harness.build_model(), harness.build_model(), harness.build_model()
    ma = train_update(a, harness, ReplayUpdate(clcfg()), data, cfg, seed=1)
    train_update(b, harness, ReplayUpdate(clcfg()), data, cfg, seed=1)
    train_update(c, harness, ReplayUpdate(clcfg()), data, cfg, seed=2)
    assert torch.equal(a.weight, b.weight)
    assert not torch.equal(a.weight, c.weight)  # the seed changes batch order and history draws
    assert set(ma) >= {
        "train_loss",
        "steps",
        "samples",
        "seconds",
        "forward_backward_seconds",
        "optimizer_seconds",
    }
    assert ma["steps"] == 2 * 5 and ma["samples"] == 2 * 45
    assert ma["forward_backward_seconds"] + ma["optimizer_seconds"] <= ma["seconds"]
    assert 0 < ma["train_loss"] < 10


def test_train_steps_sets_the_budget_whatever_the_window() -> None:
    # 45 window samples at batch 10: 5 steps per epoch (the last one of 5 samples)
    data = update_data()
    harness = TinyHarness(seed=0)
    for steps, samples in ((3, 30), (5, 45), (12, 45 + 45 + 20)):
        m = train_update(harness.build_model(), harness, NaiveUpdate(clcfg()), data,
                         tcfg(epochs=1, steps=steps, batch_size=10, lr=0.01), seed=1)
        assert m["steps"] == steps and m["samples"] == samples
    # the first epochs of a step budget are the epochs of an epoch budget (same permutations)
    a, b = harness.build_model(), harness.build_model()
    train_update(a, harness, NaiveUpdate(clcfg()), data, tcfg(epochs=2, batch_size=10, lr=0.01), seed=1)
    train_update(b, harness, NaiveUpdate(clcfg()), data, tcfg(epochs=9, steps=10, batch_size=10, lr=0.01), seed=1)
    assert torch.equal(a.weight, b.weight)
    empty = UpdateData(data.window_x[:0], data.window_y[:0], data.memory_x, data.memory_y)
    assert train_update(a, harness, NaiveUpdate(clcfg()), empty, tcfg(steps=4), seed=1)["steps"] == 0
    with pytest.raises(ValueError):
        tcfg(steps=0)


def test_replay_with_empty_memory_is_naive() -> None:
    data = update_data(n_memory=0)
    cfg = tcfg(epochs=2, batch_size=16, lr=0.05)
    harness = TinyHarness(seed=0)
    a, b = harness.build_model(), harness.build_model()
    train_update(a, harness, ReplayUpdate(clcfg()), data, cfg, seed=4)
    train_update(b, harness, NaiveUpdate(clcfg()), data, cfg, seed=4)
    assert torch.equal(a.weight, b.weight) and torch.equal(a.bias, b.bias)
    empty = UpdateData(data.window_x[:0], data.window_y[:0], data.memory_x, data.memory_y)
    metrics = train_update(a, harness, NaiveUpdate(clcfg()), empty, cfg, seed=4)
    assert metrics["steps"] == 0 and np.isnan(metrics["train_loss"])


def test_all_reduce_gradients_fills_missing_grads() -> None:
    first, second = nn.Linear(2, 2), nn.Linear(2, 2)
    model = nn.Sequential(first, second)
    first.weight.grad = torch.ones(2, 2)
    calls: list[int] = []

    def fake(t: Tensor) -> None:
        calls.append(t.numel())
        t.mul_(2)

    all_reduce_gradients(model, fake)
    assert calls == [12]  # one flattened collective for all float32 gradients
    assert torch.equal(first.weight.grad, 2 * torch.ones(2, 2))
    assert second.bias.grad is not None and torch.equal(second.bias.grad, torch.zeros(2))


def test_replay_forgets_less_than_naive() -> None:
    # Pre-train on task 0, then update on task 1 only (window) with a memory of 100 task-0 samples.
    # Naive fine-tuning drifts towards task 1's classes; replay keeps task 0.
    # Measured (seeded, 10 epochs, Adam lr 0.05) on held-out task-0 data: naive loss 2.25, accuracy
    # 0.25; replay loss 0.26, accuracy 0.92; on the memory itself the gap is similar. Asserted with
    # margin: replay loss < 0.3 x naive loss (held-out and memory), accuracy > naive + 0.4.
    harness = TinyHarness(seed=0)
    x0, y0 = task_data(0, 400, seed=0)
    model = harness.build_model()
    losses = pretrain(model, harness, x0, y0, epochs=5, lr=0.05, batch_size=32, seed=0)
    assert len(losses) == 5 and losses[-1] < losses[0]
    test0 = task_data(0, 500, seed=9)
    test1 = task_data(1, 500, seed=9)
    assert evaluate(model, harness, *test0)["accuracy"] > 0.9
    memory = ReplayMemory(100, seed=0)
    memory.add(x0, y0)
    wx, wy = task_data(1, 256, seed=1)
    data = UpdateData(wx, wy, *memory.tensors())
    cfg = tcfg(epochs=10, batch_size=32, lr=0.05)
    results = {}
    for name in ("naive", "replay"):
        m = copy.deepcopy(model)
        train_update(m, harness, make_strategy(name, clcfg()), data, cfg, seed=0)
        results[name] = (
            evaluate(m, harness, *test0),
            evaluate(m, harness, *test1),
            evaluate(m, harness, data.memory_x, data.memory_y),
        )
    (naive0, naive1, naive_mem), (replay0, replay1, replay_mem) = results["naive"], results["replay"]
    assert replay0["loss"] < 0.3 * naive0["loss"], (replay0, naive0)
    assert replay_mem["loss"] < 0.3 * naive_mem["loss"], (replay_mem, naive_mem)
    assert replay0["accuracy"] > naive0["accuracy"] + 0.4, (replay0, naive0)
    assert replay1["accuracy"] > 0.9 and naive1["accuracy"] > 0.9  # both learned the new task


def test_evaluate_is_sample_mean_and_restores_mode() -> None:
    harness = TinyHarness(seed=0)
    model = harness.build_model()
    x, y = task_data(0, 101, seed=3)
    a = evaluate(model, harness, x, y, batch_size=7)
    b = evaluate(model, harness, x, y, batch_size=1000)
    assert a.keys() == {"accuracy", "loss"}
    assert a["accuracy"] == pytest.approx(b["accuracy"]) and a["loss"] == pytest.approx(b["loss"], rel=1e-6)
    assert model.training
    assert evaluate(model, harness, x[:0], y[:0]) == {}


def test_seed_everything() -> None:
    seed_everything(5)
    a = (torch.rand(3), np.random.rand(3))
    seed_everything(5)
    b = (torch.rand(3), np.random.rand(3))
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1])


# ---------------------------------------------------------------------------------------------------
# strategies


class ScaledNaive(UpdateStrategy):
    """A strategy defined outside the registry (found by dotted path)."""

    name = "scaled-naive"

    def loss(
        self, model: nn.Module, harness: Harness, x_cur: Tensor, y_cur: Tensor, x_hist: Any, y_hist: Any
    ) -> Tensor:
        return 2.0 * harness.loss(model(x_cur), y_cur)


def test_strategy_registry_and_errors() -> None:
    assert isinstance(make_strategy("replay", clcfg()), ReplayUpdate)
    assert isinstance(make_strategy("naive"), NaiveUpdate)
    assert resolve_strategy(f"{__name__}:ScaledNaive") is ScaledNaive
    with pytest.raises(ConfigError, match="did you mean 'replay'") as info:
        make_strategy("replya", clcfg())
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="cannot import module"):
        make_strategy("nosuchpkg.mod:Cls")
    with pytest.raises(ConfigError, match="no attribute"):
        make_strategy(f"{__name__}:Missing")
    with pytest.raises(ConfigError, match="not a subclass"):
        make_strategy(f"{__name__}:TinyHarness")


@pytest.mark.parametrize("name", sorted(STRATEGY_REGISTRY))
def test_registered_strategies_generic_checks(name: str) -> None:
    # The checks every registered strategy must pass: its name matches the registry, it builds from
    # config with each of its _unit_test_params, returns a finite scalar loss with and without a
    # history batch, pickles, and round-trips its state.
    cls = resolve_strategy(name)
    assert cls.name == name
    harness = TinyHarness(seed=0)
    model = harness.build_model()
    x, y = task_data(1, 6, seed=0)
    xh, yh = task_data(0, 6, seed=0)
    for params in cls._unit_test_params():
        strategy = cls(clcfg(strategy=name, params=params))
        for hist in ((xh, yh), (None, None)):
            loss = strategy.loss(model, harness, x, y, *hist)
            assert loss.ndim == 0 and torch.isfinite(loss)
        assert strategy.history_batch_size(6) >= 0
        clone = pickle.loads(pickle.dumps(strategy))
        assert type(clone) is cls
        clone.load_state_dict(strategy.state_dict())


def test_replay_loss_is_weighted_sum() -> None:
    harness = TinyHarness(seed=0)
    model = harness.build_model()
    x, y = task_data(1, 6, seed=0)
    xh, yh = task_data(0, 5, seed=0)
    lc = harness.loss(model(x), y)
    lh = harness.loss(model(xh), yh)
    got = ReplayUpdate(clcfg(params={"replay_weight": 0.3})).loss(model, harness, x, y, xh, yh)
    torch.testing.assert_close(got, lc + 0.3 * lh)
    torch.testing.assert_close(ReplayUpdate(clcfg()).loss(model, harness, x, y, None, None), lc)
    assert NaiveUpdate(clcfg()).history_batch_size(32) == 0


# ---------------------------------------------------------------------------------------------------
# CL metrics

# 3 regimes; rows: initial model, two updates during regime 1, one during regime 2.
ROWS: list[list[float | None]] = [
    [0.90, 0.20, 0.10],
    [0.60, 0.80, 0.15],
    [0.70, 0.85, 0.30],
    [0.50, 0.60, 0.90],
]
SEEN_AT = [1, 2, 2, 3]
LAST_ROW = {0: 0, 1: 2, 2: 3}


def test_cl_metrics_known_answers() -> None:
    assert average_accuracy(ROWS[-1], 3) == pytest.approx((0.5 + 0.6 + 0.9) / 3)
    assert average_accuracy(ROWS[1], 2) == pytest.approx(0.7)
    # f_0 = max(0.9, 0.6, 0.7) - 0.5 = 0.4; f_1 = max(0.8, 0.85) - 0.6 = 0.25 (row 0 had not seen 1)
    assert forgetting(ROWS, SEEN_AT) == pytest.approx(0.325)
    # BWT: regime 0 from row 0: 0.5 - 0.9; regime 1 from row 2: 0.6 - 0.85
    assert backward_transfer(ROWS, LAST_ROW, 3) == pytest.approx((-0.4 - 0.25) / 2)
    summary = cl_summary(ROWS, SEEN_AT, LAST_ROW)
    assert summary == pytest.approx(
        {"final_average_accuracy": 2.0 / 3, "forgetting": 0.325, "backward_transfer": -0.325}
    )


def test_cl_metrics_forgetting_and_bwt_differ() -> None:
    # Regime 0 peaks mid-way (0.95 at row 1) then recovers to 0.92: forgetting counts the drop from
    # the peak (0.03) while BWT compares with the end of regime 0 (row 0: 0.8) and sees +0.12.
    rows: list[list[float | None]] = [[0.8, 0.1], [0.95, 0.7], [0.92, 0.9]]
    assert forgetting(rows, [1, 2, 2]) == pytest.approx(0.03)
    assert backward_transfer(rows, {0: 0, 1: 2}, 2) == pytest.approx(0.12)
    # final accuracy above every earlier one: negative forgetting, or 0 when clipped
    rows2: list[list[float | None]] = [[0.5, 0.1], [0.6, 0.7], [0.9, 0.9]]
    assert forgetting(rows2, [1, 2, 2]) == pytest.approx(-0.3)
    assert forgetting(rows2, [1, 2, 2], clip=True) == 0.0


def test_cl_metrics_degenerate_cases() -> None:
    rows: list[list[float | None]] = [[0.9, 0.1], [0.8, 0.2]]
    assert cl_summary(rows, [1, 1], {0: 1}) == {
        "final_average_accuracy": pytest.approx(0.8),
        "forgetting": None,
        "backward_transfer": None,
    }
    # None entries are skipped
    rows_none: list[list[float | None]] = [[0.9, None, 0.1], [0.6, None, 0.8]]
    assert average_accuracy(rows_none[-1], 3) == pytest.approx(0.7)
    assert forgetting(rows_none, [1, 3]) == pytest.approx(0.3)  # regime 1 has no values, regime 2 is last
    assert average_accuracy([None, None], 2) is None
    with pytest.raises(ValueError):
        forgetting(rows, [1])
    with pytest.raises(ValueError):
        cl_summary([], [], {})


# ---------------------------------------------------------------------------------------------------
# train_func under Ray Train (local mode: num_workers=0 runs in this process, no cluster needed)


def test_train_func_local_mode(tmp_path: Any) -> None:
    # The weights train_func returns (Result.return_value, no checkpoint) are exactly those of a direct
    # train_update with seed = seed + version (bitwise: same process, same ops).
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from raydrift.learning.loop import train_func
    from raydrift.weights import to_numpy

    harness = TinyHarness(seed=3)
    initial = harness.build_model()
    data = update_data()
    train = tcfg(num_workers=0, epochs=2, batch_size=16, lr=0.05)
    config = {
        "harness": f"{TinyHarness.__module__}:TinyHarness",
        "harness_options": {},
        "seed": 3,
        "batch_size": 16,
        "train": train.model_dump(),
        "continual_learning": clcfg(strategy="replay").model_dump(),
        "weights_ref": to_numpy(initial.state_dict()),  # a plain value is accepted as well as an ObjectRef
        "data_ref": data,
        "version": 2,
    }
    trainer = TorchTrainer(
        train_loop_per_worker=train_func,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=0),
        run_config=RunConfig(name="test-update-v2", storage_path=str(tmp_path)),
    )
    result = trainer.fit()
    assert result.checkpoint is None  # nothing is written for an update
    out = result.return_value
    state = out["weights"]
    assert all(isinstance(v, np.ndarray) for v in state.values())  # Ray Train refuses torch tensors here
    expected = copy.deepcopy(initial)
    metrics = train_update(expected, harness, ReplayUpdate(clcfg()), data, train, seed=3 + 2)
    assert np.array_equal(state["weight"], expected.weight.detach().numpy())
    assert np.array_equal(state["bias"], expected.bias.detach().numpy())
    result_metrics = out["metrics"]
    assert result_metrics["version"] == 2 and result_metrics["steps"] == metrics["steps"] == 6
    assert result_metrics["train_loss"] == pytest.approx(metrics["train_loss"])
