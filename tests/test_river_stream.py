"""The River stream harness (no Ray): shapes, determinism, the drift schedule, metrics and directions."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from harnesses.river_stream import RiverStreamHarness, RiverStreamOptions
from raydrift.config import build_config
from raydrift.harness import build_harness, resolve_harness


def _h(seed: int = 0, batch_size: int = 16, **opts: object) -> RiverStreamHarness:
    return RiverStreamHarness({"regime_batches": 3, "test_size": 50, "pretrain_size": 40, **opts}, seed, batch_size)


def test_registry_name_resolves() -> None:
    assert resolve_harness("river") is RiverStreamHarness
    h = build_harness("river", {"generator": "agrawal"}, 0, 8)
    assert isinstance(h, RiverStreamHarness)


@pytest.mark.parametrize(
    ("generator", "width", "outputs"),
    [("sea", 3, 2), ("agrawal", 9 - 3 + 5 + 20 + 9, 2), ("stagger", 9, 2), ("rbf", 10, 2), ("friedman", 10, 1)],
)
def test_shapes(generator: str, width: int, outputs: int) -> None:
    h = _h(generator=generator)
    batches = list(h.stream())
    assert len(batches) == 3 * 3
    assert all(b.x.shape == (16, width) and b.x.dtype == torch.float32 for b in batches)
    assert batches[0].y.dtype == (torch.float32 if generator == "friedman" else torch.int64)
    out = h.build_model()(batches[0].x)
    assert out.shape == (16, outputs)
    tests = h.test_sets()
    assert sorted(tests) == [0, 1, 2] and all(x.shape == (50, width) and len(y) == 50 for x, y in tests.values())
    data = h.pretrain_data()
    assert data is not None and data[0].shape == (40, width)


def test_one_hot_columns_are_one_hot() -> None:
    x = torch.cat([b.x for b in _h(generator="stagger").stream()])
    assert set(x.unique().tolist()) == {0.0, 1.0}
    assert torch.equal(x.sum(1), torch.full((len(x),), 3.0))  # size, color, shape: one of three each


def test_deterministic_by_seed() -> None:
    a, b, c = _h(seed=1), _h(seed=1), _h(seed=2)
    xa, xb, xc = (torch.cat([batch.x for batch in h.stream()]) for h in (a, b, c))
    assert torch.equal(xa, xb) and not torch.equal(xa, xc)
    assert torch.equal(a.test_sets()[2][0], b.test_sets()[2][0])
    for pa, pb in zip(a.build_model().parameters(), b.build_model().parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_raw_stream_is_the_stream() -> None:
    h = _h(generator="agrawal")
    for (regime, raw), batch in zip(h.raw_stream(), h.stream(), strict=True):
        x, y = h.encode(raw)
        assert regime == batch.regime and torch.equal(x, batch.x) and torch.equal(y, batch.y)


def test_regimes_switch_where_the_schedule_says() -> None:
    h = _h(generator="sea", regime_batches=4)
    assert [b.regime for b in h.stream()] == [0] * 4 + [1] * 4 + [2] * 4
    assert h.regime_names() == {0: "sea-0", 1: "sea-2", 2: "sea-3"}


def _label_agreement(h: RiverStreamHarness, regime: int, with_regime: int) -> float:
    """Share of regime ``regime``'s stream samples whose label ``with_regime``'s concept would also give."""
    samples = h.regime_samples(regime)
    ref = h.generator(with_regime, 9)
    rule = ref._classification_functions[ref.classification_function]
    return sum(int(rule(*x.values()) == y) for x, y in samples) / len(samples)


def test_abrupt_switch_changes_the_concept() -> None:
    h = _h(generator="agrawal", regime_batches=10)
    assert _label_agreement(h, 0, 0) == 1.0
    assert _label_agreement(h, 1, 1) == 1.0
    assert _label_agreement(h, 1, 0) < 0.7  # functions 0 and 2 agree on about half the samples


def test_gradual_switch_mixes_the_concepts_then_settles() -> None:
    h = _h(
        generator="agrawal",
        batch_size=50,
        regime_batches=12,
        regimes=[{"params": {"classification_function": 0}}, {"params": {"classification_function": 2}, "width": 200}],
    )
    samples = h.regime_samples(1)
    new = h.generator(1, 9)
    rule = new._classification_functions[2]
    agree = [int(rule(*x.values()) == y) for x, y in samples]
    early, late = sum(agree[:50]) / 50, sum(agree[-200:]) / 200
    assert late == 1.0 and early < 0.9  # the first 50 samples are mostly the old concept
    assert h.regime_names()[1] == "agrawal-2-gradual200"


def test_classification_metrics_and_directions() -> None:
    h = _h(generator="sea")
    assert h.metric_directions == {"accuracy": True, "loss": False}
    out = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    m = h.metrics(out, torch.tensor([0, 0]))
    assert m["accuracy"].tolist() == [1.0, 0.0]


def test_regression_metrics_and_directions() -> None:
    h = _h(generator="friedman")
    assert h.metric_directions == {"se": False, "ae": False}
    assert h.metric_domain("se") == "real"
    out = torch.tensor([[1.0], [-1.0]])
    m = h.metrics(out, torch.tensor([0.5, 1.0]))
    assert m["se"].tolist() == [0.25, 4.0] and m["ae"].tolist() == [0.5, 2.0]
    assert h.loss(out, torch.tensor([0.5, 1.0])).item() == pytest.approx(2.125)
    # the target is standardised on regime 0: a regime-0 batch has mean ~0 and std ~1
    y = torch.cat([b.y for b in _h(generator="friedman", regime_batches=20).stream()][:20])
    assert abs(y.mean().item()) < 0.2 and 0.8 < y.std().item() < 1.2


def test_regression_concepts_differ() -> None:
    """A model fitted to Friedman concept 0 (least squares on the features) is worse on concepts 1, 2."""
    h = _h(generator="friedman", test_size=2000)
    tests = h.test_sets()
    x0, y0 = tests[0]
    design = torch.cat([x0, torch.ones(len(x0), 1)], 1)
    w = torch.linalg.lstsq(design, y0[:, None]).solution
    err = {r: ((torch.cat([x, torch.ones(len(x), 1)], 1) @ w).squeeze(1) - y).square().mean().item()
           for r, (x, y) in tests.items()}
    assert err[1] > 2 * err[0] and err[2] > 2 * err[0]


def test_bad_options_are_one_line_errors() -> None:
    with pytest.raises(ValidationError, match="variant"):
        RiverStreamOptions.model_validate({"generator": "sea", "regimes": [{"params": {"variant": 9}}]})
    with pytest.raises(ValidationError, match="width must be 0"):
        RiverStreamOptions.model_validate({"regimes": [{"width": 5}]})
    with pytest.raises(ValidationError):
        RiverStreamOptions.model_validate({"generator": "nope"})


@pytest.mark.parametrize("name", ["river-sea", "river-agrawal", "river-friedman"])
def test_example_configs_validate(name: str) -> None:
    from pathlib import Path

    cfg = build_config(Path(__file__).parents[1] / "configs" / f"{name}.yaml", [])
    h = build_harness(cfg.model.harness, cfg.data, cfg.seed, cfg.stream.batch_size)
    assert cfg.monitor.metric in h.metric_directions
