"""The continual-learning strategies (naive, replay, ewc_online, der++, jvp) and the replay memory policies."""

from __future__ import annotations

import copy
import pickle
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from raydrift.config import ContinualLearningConfig, TrainConfig
from raydrift.harness import Batch, Harness
from raydrift.learning import STRATEGY_REGISTRY, ReplayMemory, UpdateData, make_strategy, train_update
from raydrift.learning.strategies.base import StepContext
from raydrift.learning.strategies.derpp import DERPPUpdate
from raydrift.learning.strategies.ewc_online import OnlineEWCUpdate, diagonal_fisher

DIM, CLASSES = 6, 4


class SmallHarness(Harness):
    """A 6-16-4 ReLU MLP on Gaussian blobs."""

    name = "small"

    def build_model(self) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return nn.Sequential(nn.Linear(DIM, 16), nn.ReLU(), nn.Linear(16, CLASSES))

    def stream(self) -> Iterator[Batch]:
        yield from ()

    def test_sets(self) -> dict[int, tuple[Tensor, Tensor]]:
        return {}


def task(t: int, n: int, seed: int) -> tuple[Tensor, Tensor]:
    """Task 0: classes 0/1 by the sign of feature 0; task 1: classes 2/3 by feature 1 (shifted mean)."""
    g = torch.Generator().manual_seed(100 * t + seed)
    x = torch.randn(n, DIM, generator=g)
    x[:, 2 + t] += 3.0
    return x, (x[:, t] > 0).long() + 2 * t


def clcfg(**kw: Any) -> ContinualLearningConfig:
    return ContinualLearningConfig.model_validate(kw)


TRAIN = TrainConfig.model_validate({"epochs": 3, "batch_size": 16, "lr": 0.02})


def trained_on_task0(harness: Harness) -> nn.Module:
    model = harness.build_model()
    x, y = task(0, 200, seed=1)
    train_update(model, harness, make_strategy("naive"), UpdateData(x, y, x[:0], y[:0]), TRAIN, seed=0)
    return model


def loss_on(model: nn.Module, harness: Harness, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return float(harness.loss(model(x), y))


# ---------------------------------------------------------------------------------------------------
# every strategy


@pytest.mark.parametrize("name", sorted(STRATEGY_REGISTRY))
def test_one_update_lowers_current_loss(name: str) -> None:
    # One update (3 epochs over 64 window samples, memory of 40 task-0 samples) lowers the
    # current-regime loss on held-out task-1 data, for every registered strategy; the state it
    # exports pickles and loads into a fresh instance.
    harness = SmallHarness(seed=0)
    model = trained_on_task0(harness)
    wx, wy = task(1, 64, seed=2)
    mx, my = task(0, 40, seed=3)
    tx, ty = task(1, 300, seed=4)
    before = loss_on(model, harness, tx, ty)
    strategy = make_strategy(name, clcfg())
    out = train_update(
        model, harness, strategy, UpdateData(wx, wy, mx, my, memory_ids=torch.arange(40)), TRAIN, seed=1
    )
    after = loss_on(model, harness, tx, ty)
    assert np.isfinite(out["train_loss"])
    assert after < before - 0.2, (before, after)
    state = pickle.loads(pickle.dumps(strategy.state_dict()))
    make_strategy(name, clcfg()).load_state_dict(state)


def test_memory_strategies_forget_less_than_naive() -> None:
    # Same update as above; task-0 held-out loss after it: every memory-based strategy stays below
    # naive fine-tuning's.
    harness = SmallHarness(seed=0)
    base = trained_on_task0(harness)
    wx, wy = task(1, 64, seed=2)
    mx, my = task(0, 40, seed=3)
    hx, hy = task(0, 300, seed=5)
    data = UpdateData(wx, wy, mx, my, memory_ids=torch.arange(40))
    losses = {}
    for name in ("naive", "replay", "der++", "jvp", "ewc_online"):
        model = copy.deepcopy(base)
        train_update(
            model,
            harness,
            make_strategy(
                name, clcfg(strategy=name, params={"penalty_weight": 1000.0} if name == "ewc_online" else {})
            ),
            data,
            TRAIN,
            seed=1,
        )
        losses[name] = loss_on(model, harness, hx, hy)
    for name in ("replay", "der++", "jvp", "ewc_online"):
        assert losses[name] < losses["naive"], losses


# ---------------------------------------------------------------------------------------------------
# EWC


def test_ewc_penalty_zero_at_anchor_and_quadratic() -> None:
    harness = SmallHarness(seed=0)
    model = trained_on_task0(harness)
    mx, my = task(0, 40, seed=3)
    ewc = OnlineEWCUpdate(clcfg(params={"penalty_weight": 2.0}))
    ewc.setup(model, harness, UpdateData(mx[:0], my[:0], mx, my))  # no state: Fisher on the memory
    assert ewc.fisher is not None and ewc.anchor is not None
    assert float(ewc.penalty(model)) == 0.0
    assert sum(float(f.sum()) for f in ewc.fisher.values()) > 0
    shifted = copy.deepcopy(model)
    with torch.no_grad():
        for p in shifted.parameters():
            p += 0.1
    p1 = float(ewc.penalty(shifted))
    with torch.no_grad():
        for p in shifted.parameters():
            p += 0.1  # now 0.2 from the anchor: the penalty is 4x
    assert p1 > 0 and float(ewc.penalty(shifted)) == pytest.approx(4 * p1, rel=1e-4)


def test_diagonal_fisher_is_mean_squared_per_sample_gradient() -> None:
    harness = SmallHarness(seed=0)
    model = harness.build_model()
    x, y = task(0, 5, seed=1)
    fisher = diagonal_fisher(model, harness, x, y, chunk=2)
    expected = {k: torch.zeros_like(p) for k, p in model.named_parameters()}
    for i in range(5):
        model.zero_grad()
        harness.loss(model(x[i : i + 1]), y[i : i + 1]).backward()
        for k, p in model.named_parameters():
            assert p.grad is not None
            expected[k] += p.grad**2 / 5
    for k in expected:
        torch.testing.assert_close(fisher[k], expected[k], atol=1e-6, rtol=1e-5)


def test_ewc_state_persists_and_decays_across_updates() -> None:
    # After update 1 the Fisher F1 is the memory Fisher (setup) decayed by γ plus the window Fisher
    # (teardown), anchored at the final weights. Update 2 loaded from that state: F2 = γ F1 + F_new.
    harness = SmallHarness(seed=0)
    model = trained_on_task0(harness)
    cfg = clcfg(params={"decay": 0.5, "penalty_weight": 10.0})
    wx, wy = task(1, 48, seed=2)
    mx, my = task(0, 40, seed=3)
    data = UpdateData(wx, wy, mx, my)
    first = OnlineEWCUpdate(cfg)
    train_update(model, harness, first, data, TRAIN, seed=1)
    state = pickle.loads(pickle.dumps(first.state_dict()))
    assert state["updates"] == 2
    for k, p in model.named_parameters():
        torch.testing.assert_close(state["anchor"][k], p.detach())
    second = OnlineEWCUpdate(cfg)
    second.load_state_dict(state)
    second.setup(model, harness, data)
    assert float(second.penalty(model)) == 0.0  # the anchor is where update 1 ended
    f1 = {k: v.clone() for k, v in state["fisher"].items()}
    second.teardown(model, harness)  # no training in between: F_new is the window Fisher at the same θ
    window_f = diagonal_fisher(model, harness, wx, wy)
    assert second.fisher is not None
    for k in f1:
        torch.testing.assert_close(second.fisher[k], 0.5 * f1[k] + window_f[k], atol=1e-7, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------
# DER++ logits


def test_derpp_records_logits_once_and_keeps_them_by_id() -> None:
    harness = SmallHarness(seed=0)
    model = trained_on_task0(harness)
    mx, my = task(0, 10, seed=3)
    ids = torch.arange(50, 60)
    data = UpdateData(mx[:0], my[:0], mx, my, memory_ids=ids)
    first = DERPPUpdate(clcfg())
    first.setup(model, harness, data)
    assert first.bank.recorded == 10
    with torch.no_grad():
        torch.testing.assert_close(first._z, model(mx))
    # the next update: the model has moved, the memory replaced two samples (ids 50, 51 -> 70, 71)
    moved = copy.deepcopy(model)
    with torch.no_grad():
        for p in moved.parameters():
            p += 0.5
    nx, ny = task(0, 2, seed=9)
    mx2 = torch.cat([nx, mx[2:]])
    ids2 = torch.cat([torch.tensor([70, 71]), ids[2:]])
    second = DERPPUpdate(clcfg())
    second.load_state_dict(pickle.loads(pickle.dumps(first.state_dict())))
    second.setup(moved, harness, UpdateData(mx[:0], my[:0], mx2, torch.cat([ny, my[2:]]), memory_ids=ids2))
    assert second.bank.recorded == 2 and second._z is not None
    with torch.no_grad():
        torch.testing.assert_close(second._z[2:], model(mx[2:]))  # kept: recorded by the old model
        torch.testing.assert_close(second._z[:2], moved(nx))  # new samples: recorded by the incoming model
    assert second.bank.ids is not None and second.bank.ids.tolist() == ids2.tolist()  # pruned to the memory


def test_derpp_loss_terms() -> None:
    # backward with stored logits = L_c + α mean-squared logit error + β CE on the history batch.
    harness = SmallHarness(seed=0)
    model = harness.build_model()
    xc, yc = task(1, 8, seed=1)
    xh, yh = task(0, 8, seed=2)
    z = torch.randn(8, CLASSES)
    der = DERPPUpdate(clcfg(params={"alpha": 0.3, "beta": 0.7}))
    der._z = z
    ctx = StepContext(0, 1, 8, 8, 0, 0, hist_index=torch.arange(8))
    got = der.backward(model, harness, xc, yc, xh, yh, ctx)
    with torch.no_grad():
        out = model(xh)
        want = harness.loss(model(xc), yc) + 0.3 * ((out - z) ** 2).mean() + 0.7 * harness.loss(out, yh)
    assert float(got) == pytest.approx(float(want), abs=1e-6)


# ---------------------------------------------------------------------------------------------------
# replay memory policies


def test_class_balanced_memory_balances_an_imbalanced_stream() -> None:
    # Stream of 3,000 samples, class c with frequency ∝ (c+1)^-2 over 5 classes (class 4: ~56 samples);
    # capacity 100. Class-balanced: every class holds 20 ± 1. Reservoir: proportional to the stream
    # (class 0 holds > 50).
    rng = np.random.default_rng(0)
    p = 1.0 / (np.arange(5) + 1.0) ** 2
    y = torch.from_numpy(rng.choice(5, size=3000, p=p / p.sum()))
    x = torch.arange(3000).float().unsqueeze(1)
    balanced = ReplayMemory(100, seed=1, policy="class_balanced")
    reservoir = ReplayMemory(100, seed=1)
    for s in range(0, 3000, 64):
        balanced.add(x[s : s + 64], y[s : s + 64])
        reservoir.add(x[s : s + 64], y[s : s + 64])
    counts = balanced.class_counts()
    assert len(balanced) == 100 and set(counts) == set(range(5))
    assert max(counts.values()) - min(counts.values()) <= 1
    assert reservoir.class_counts()[0] > 50
    xs, ys = balanced.tensors()
    assert torch.equal(y[xs.squeeze(1).long()], ys)  # x and y stay paired
    assert torch.equal(balanced.ids(), xs.squeeze(1).long())  # the id is the stream index


def test_class_balanced_memory_is_uniform_within_a_class() -> None:
    # Balanced 2-class stream of 200 samples, capacity 20: each class keeps 10 of its 100. Over 200
    # seeds the first and second halves of each class's stream are kept equally often: the share of
    # first-half samples is 0.5 ± 0.03 (the standard error is ~0.008).
    first_half = 0
    total = 0
    y = torch.arange(200) % 2
    x = torch.arange(200).float().unsqueeze(1)
    for seed in range(200):
        mem = ReplayMemory(20, seed=seed, policy="class_balanced")
        mem.add(x, y)
        kept = mem.tensors()[0].squeeze(1).long()
        first_half += int((kept < 100).sum())
        total += len(kept)
    assert abs(first_half / total - 0.5) < 0.03


def test_memory_max_bytes_and_logits() -> None:
    # Rows of 4 float32 features + label + id = 32 bytes: 330 bytes hold 10 rows. Recording 4 logits
    # per row (16 bytes) lowers the effective capacity to 6 and evicts.
    mem = ReplayMemory(50, seed=0, max_bytes=330)
    mem.add(torch.randn(30, 4), torch.arange(30) % 3)
    assert len(mem) == 10 and mem.effective_capacity == 10 and mem.nbytes <= 330
    assert mem.logits() is None
    ids = mem.ids()
    mem.set_logits(ids[:3], torch.ones(3, 4))
    assert mem.effective_capacity == 6 and len(mem) == 6 and mem.nbytes <= 330
    z = mem.logits()
    assert z is not None and z.shape == (6, 4)
    kept = set(mem.ids().tolist())
    recorded = [i for i, v in enumerate(mem.ids().tolist()) if v in set(ids[:3].tolist())]
    assert all(bool(torch.all(z[i] == 1.0)) for i in recorded)
    assert int(torch.isnan(z).any(dim=1).sum()) == 6 - len(recorded)
    assert kept <= set(ids.tolist())
    mem.add(torch.randn(40, 4), torch.arange(40) % 3)
    assert len(mem) == 6 and mem.nbytes <= 330


@pytest.mark.parametrize("policy", ["reservoir", "class_balanced"])
def test_memory_state_round_trip(policy: str) -> None:
    a = ReplayMemory(20, seed=3, policy=policy, max_bytes=10_000)
    x, y = torch.randn(50, 2), torch.arange(50) % 4
    a.add(x[:30], y[:30])
    a.set_logits(a.ids(), torch.randn(len(a), 4))
    b = ReplayMemory(1)
    b.load_state_dict(pickle.loads(pickle.dumps(a.state_dict())))
    a.add(x[30:], y[30:])
    b.add(x[30:], y[30:])
    for u, v in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        if isinstance(u, Tensor):
            assert torch.equal(torch.nan_to_num(u, 9.0), torch.nan_to_num(v, 9.0))
        else:
            assert u == v
    with pytest.raises(ValueError, match="policy"):
        ReplayMemory(5, policy="fifo")  # type: ignore[arg-type]


def test_train_func_passes_strategy_state(tmp_path: Any) -> None:
    # train_func (Ray Train local mode) loads `strategy_state` and returns the new state as torch.save
    # bytes, read back with weights_only=True.
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from raydrift.learning.loop import load_strategy_state, train_func
    from raydrift.weights import to_numpy

    harness = SmallHarness(seed=0)
    model = trained_on_task0(harness)
    wx, wy = task(1, 32, seed=2)
    mx, my = task(0, 20, seed=3)
    previous = OnlineEWCUpdate(clcfg())
    previous.setup(model, harness, UpdateData(wx, wy, mx, my))
    previous.teardown(model, harness)
    config = {
        "harness": f"{SmallHarness.__module__}:SmallHarness",
        "harness_options": {},
        "seed": 0,
        "batch_size": 16,
        "train": TrainConfig.model_validate({"num_workers": 0, "epochs": 1, "batch_size": 16}).model_dump(),
        "continual_learning": clcfg(strategy="ewc_online").model_dump(),
        "weights_ref": to_numpy(model.state_dict()),
        "data_ref": UpdateData(wx, wy, mx, my),
        "version": 1,
        "strategy_state": previous.state_dict(),
    }
    trainer = TorchTrainer(
        train_loop_per_worker=train_func,
        train_loop_config=config,
        scaling_config=ScalingConfig(num_workers=0),
        run_config=RunConfig(name="test-strategy-state", storage_path=str(tmp_path)),
    )
    result = trainer.fit()
    out = result.return_value
    state = load_strategy_state(out["strategy_state"])
    assert state["updates"] == previous.updates + 1  # continued from the state passed in
    assert 0.0 <= out["metrics"]["window_accuracy"] <= 1.0
    assert 0.0 <= out["metrics"]["memory_accuracy"] <= 1.0


# ---------------------------------------------------------------------------------------------------
# options models


@pytest.mark.parametrize("name", sorted(STRATEGY_REGISTRY))
def test_every_strategy_owns_a_documented_options_model(name: str) -> None:
    # Every option has a default and a description (raydrift keys and the docs list them from the
    # model), the model refuses unknown keys, and each _unit_test_params entry validates.
    from raydrift.errors import ConfigError
    from raydrift.learning.strategies import StrategyOptions, resolve_strategy

    cls = resolve_strategy(name)
    assert issubclass(cls.Options, StrategyOptions)
    for key, field in cls.Options.model_fields.items():
        assert field.description, f"{name}: option '{key}' has no description"
        assert not field.is_required(), f"{name}: option '{key}' has no default"
    for params in cls._unit_test_params():
        assert cls(clcfg(strategy=name, params=params)).options == cls.Options(**params)
    with pytest.raises(ConfigError, match="unknown key 'continual_learning.params.no_such_option'"):
        make_strategy(name, clcfg(strategy=name, params={"no_such_option": 1}))


def test_params_belong_to_the_configured_strategy() -> None:
    # make_strategy with another name than continual_learning.strategy (the coordinator's naive
    # fine-tuning update) gives that strategy its defaults instead of refusing the params.
    from raydrift.learning.strategies.jvp import JVPOptions, JVPRegularizedUpdate
    from raydrift.learning.strategies.naive import NaiveUpdate

    cfg = clcfg(strategy="jvp", params={"penalty_weight": 0.0, "logit_weight": 0.0})
    jvp = make_strategy("jvp", cfg)
    assert isinstance(jvp, JVPRegularizedUpdate) and jvp.options.penalty_weight == 0.0
    assert isinstance(make_strategy("naive", cfg), NaiveUpdate)
    assert make_strategy("der++", cfg).options.alpha == 0.5  # type: ignore[attr-defined]
    with pytest.raises(TypeError, match="takes JVPOptions"):
        JVPRegularizedUpdate(options=NaiveUpdate.Options())
    assert JVPRegularizedUpdate(options=JVPOptions(sign=1)).options.sign == 1


# ---------------------------------------------------------------------------------------------------
# any output shape: (n,), (n, 1), (n, k); classification and regression

# case -> (output size k of the last layer, output shape after the model, task kind)
SHAPES: dict[str, tuple[int, str, str]] = {
    "classification (n, k)": (CLASSES, "nk", "classification"),
    "classification (n,)": (1, "n", "classification"),
    "classification (n, 1)": (1, "n1", "classification"),
    "regression (n,)": (1, "n", "regression"),
    "regression (n, 1)": (1, "n1", "regression"),
    "regression (n, k)": (3, "nk", "regression"),
}


class _Squeeze(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x.squeeze(-1)


class ShapeHarness(Harness):
    """A 6-16-k MLP whose output is ``(n,)``, ``(n, 1)`` or ``(n, k)``: cross-entropy (k classes),
    binary cross-entropy on one logit, or squared error on ``k`` regression targets."""

    name = "shapes"

    def __init__(self, case: str, seed: int = 0) -> None:
        super().__init__(seed=seed)
        self.k, self.form, self.kind = SHAPES[case]

    def build_model(self) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            layers: list[nn.Module] = [nn.Linear(DIM, 16), nn.ReLU(), nn.Linear(16, self.k)]
            if self.form == "n":
                layers.append(_Squeeze())
            return nn.Sequential(*layers)

    def loss(self, outputs: Tensor, y: Tensor) -> Tensor:
        if self.kind == "regression":
            return nn.functional.mse_loss(outputs, y)
        if self.form == "nk":
            return nn.functional.cross_entropy(outputs, y)
        return nn.functional.binary_cross_entropy_with_logits(outputs.reshape(len(y)), y.float())

    def metrics(self, outputs: Tensor, y: Tensor) -> dict[str, Tensor]:
        if self.kind == "regression":
            return {"se": ((outputs - y) ** 2).reshape(len(y), -1).mean(dim=1)}
        if self.form == "nk":
            return super().metrics(outputs, y)
        return {"accuracy": ((outputs.reshape(len(y)) > 0).long() == y).float()}

    def stream(self) -> Iterator[Batch]:
        yield from ()

    def test_sets(self) -> dict[int, tuple[Tensor, Tensor]]:
        return {}

    def data(self, t: int, n: int, seed: int) -> tuple[Tensor, Tensor]:
        """Task ``t``'s inputs and the targets this case's loss takes."""
        x, labels = task(t, n, seed)
        if self.kind == "classification":
            return x, labels if self.form == "nk" else labels % 2
        w = torch.linspace(-1.0, 1.0, DIM * self.k).reshape(DIM, self.k) * (1.0 if t == 0 else -1.0)
        y = torch.tanh(x @ w)
        return x, (y[:, 0] if self.form == "n" else y)


@pytest.mark.parametrize("case", list(SHAPES))
@pytest.mark.parametrize("name", sorted(STRATEGY_REGISTRY))
def test_every_strategy_takes_every_output_shape(name: str, case: str) -> None:
    # Two updates (task 1, then back to task 0, the state carried from the first to the second as
    # the pipeline does) with a replay memory that stores the case's targets: the first lowers task 1's
    # loss on held-out data by at least 10%, both train to a finite loss, and the strategies that
    # replay outputs record one row per memory sample of the model's output size (1 for (n,) and
    # (n, 1), k for (n, k)).
    harness = ShapeHarness(case)
    model = harness.build_model()
    x0, y0 = harness.data(0, 200, seed=1)
    train_update(model, harness, make_strategy("naive"), UpdateData(x0, y0, x0[:0], y0[:0]), TRAIN, seed=0)
    memory = ReplayMemory(40, seed=0)
    memory.add(x0[:40], y0[:40])
    state: dict[str, Any] = {}
    for update, t in enumerate((1, 0)):
        wx, wy = harness.data(t, 64, seed=2 + update)
        tx, ty = harness.data(t, 300, seed=4 + update)
        before = loss_on(model, harness, tx, ty)
        strategy = make_strategy(name, clcfg(strategy=name))
        strategy.load_state_dict(state)
        mx, my = memory.tensors()
        assert my.shape[1:] == y0.shape[1:] and my.dtype == y0.dtype
        data = UpdateData(wx, wy, mx, my, memory_ids=memory.ids())
        out = train_update(model, harness, strategy, data, TRAIN, seed=1 + update)
        after = loss_on(model, harness, tx, ty)
        assert np.isfinite(out["train_loss"]), out
        if update == 0:
            assert after < 0.9 * before, (before, after)
        state = pickle.loads(pickle.dumps(strategy.state_dict()))
        memory.add(wx[:20], wy[:20])
        if name in ("der++", "jvp"):
            logits = state["bank"]["logits"]
            assert logits.shape == (len(mx), harness.k) and not torch.isnan(logits).any()


def test_memory_keeps_regression_targets() -> None:
    # Float targets (n,) and (n, k) are stored as given (not cast to class labels), survive a state
    # round trip, and a mismatched target shape or a class-balanced memory of float targets is refused.
    g = torch.Generator().manual_seed(0)
    for shape in ((50,), (50, 3)):
        x, y = torch.randn(50, DIM, generator=g), torch.randn(*shape, generator=g) * 0.1
        memory = ReplayMemory(20, seed=1)
        memory.add(x[:30], y[:30])
        memory.add(x[30:], y[30:])
        mx, my = memory.tensors()
        assert my.dtype == torch.float32 and my.shape == (20, *shape[1:])
        rows = [int(torch.nonzero((x == r).all(dim=1))[0]) for r in mx]
        torch.testing.assert_close(my, y[rows])  # each target still belongs to its input
        again = ReplayMemory(0)
        again.load_state_dict(pickle.loads(pickle.dumps(memory.state_dict())))
        torch.testing.assert_close(again.tensors()[1], my)
        assert memory.class_counts() == {}
    with pytest.raises(ValueError, match="targets of shape"):
        memory.add(x[:2], torch.zeros(2, 4))
    with pytest.raises(ValueError, match="use 'reservoir' for regression targets"):
        ReplayMemory(10, policy="class_balanced").add(x[:4], torch.zeros(4))
