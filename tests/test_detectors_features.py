"""Label-free two-sample tests, ensembles, score -> update kind, warning zones, and label-free detection in the engine."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from scipy.stats import ks_2samp

from raydrift.config import DriftDetectionConfig
from raydrift.detection import BatchResult, DetectionEngine, make_detector
from raydrift.detection.engine import update_kind
from raydrift.detection.two_sample import _ks_statistics, ks_test, mmd_test
from raydrift.errors import ConfigError

BS = 64


# ---------------------------------------------------------------------------------------------------
# two-sample tests


def test_ks_matches_scipy_per_feature() -> None:
    rng = np.random.default_rng(0)
    x = np.round(rng.normal(size=(150, 4)), 1)  # rounded: ties
    y = np.round(rng.normal(0.3, 1.2, size=(90, 4)), 1)
    stats = _ks_statistics(x, y)
    for j in range(4):
        ref = ks_2samp(x[:, j], y[:, j], method="asymp")
        assert stats[j] == pytest.approx(ref.statistic)
    stat, p = ks_test(x, y, "none")
    ref_p = min(ks_2samp(x[:, j], y[:, j], method="asymp").pvalue for j in range(4))
    assert stat == pytest.approx(stats.max()) and p == pytest.approx(ref_p, rel=1e-6)
    assert ks_test(x, y, "bonferroni")[1] == pytest.approx(min(1.0, 4 * ref_p), rel=1e-6)
    assert ks_test(x, y, "fdr_bh")[1] <= ks_test(x, y, "bonferroni")[1]


@pytest.mark.parametrize("test", ["mmd", "ks"])
def test_no_alarm_on_one_distribution_at_the_stated_level(test: str) -> None:
    """50 pairs of samples from one 3-D Gaussian: the rejection rate at alpha = 0.05 stays near 0.05."""
    rng = np.random.default_rng(1)
    rejections = 0
    for i in range(50):
        a, b = rng.normal(size=(100, 3)), rng.normal(size=(100, 3))
        p = mmd_test(a, b, 99, np.random.default_rng(i))[1] if test == "mmd" else ks_test(a, b)[1]
        rejections += p < 0.05
    assert rejections <= 7  # binomial(50, 0.05): P(> 7) < 0.5 %


def test_mean_and_covariance_shifts() -> None:
    rng = np.random.default_rng(2)
    a = rng.normal(size=(200, 2))
    mean_shift = rng.normal(size=(200, 2)) + [0.7, 0.0]
    cov = np.array([[1.0, 0.95], [0.95, 1.0]])
    cov_shift = rng.multivariate_normal([0, 0], cov, size=200)  # same marginals, new dependence
    assert mmd_test(a, mean_shift, 199, np.random.default_rng(0))[1] < 0.01
    assert ks_test(a, mean_shift)[1] < 0.01
    assert mmd_test(a, cov_shift, 199, np.random.default_rng(0))[1] < 0.01
    assert ks_test(a, cov_shift)[1] > 0.05  # per-feature KS cannot see it: the marginals did not move


@pytest.mark.parametrize("name", ["mmd", "ks"])
def test_label_free_detector_stationary_then_shift(name: str) -> None:
    """Defaults: no alarm over 4,000 stationary 5-D samples; a 1-sigma shift of one feature within 400 samples."""
    rng = np.random.default_rng(3)
    det = make_detector(name, {})
    for x in rng.normal(size=(4000, 5)):
        det.update(x)
        assert not det.drift_detected
    shifted = rng.normal(size=(600, 5)) + [0, 0, 0, 1.0, 0]
    alarms = [t for t, x in enumerate(shifted) if (det.update(x), det.drift_detected)[1]]
    assert alarms and alarms[0] < 400


def test_two_sample_detector_validation() -> None:
    with pytest.raises(ConfigError, match="'alpha' expects a number > 1 / \\(permutations \\+ 1\\)"):
        make_detector("mmd", {"alpha": 0.001, "permutations": 99})
    with pytest.raises(ConfigError, match="'correction' expects one of"):
        make_detector("ks", {"correction": "holm-ish"})


# ---------------------------------------------------------------------------------------------------
# ensembles (periodic members make the votes deterministic)

_MEMBERS = [
    {"detector": "periodic", "params": {"period": 100}},
    {"detector": "periodic", "params": {"period": 150}},
    "never",
]


def _ensemble_alarms(**kw: object) -> list[int]:
    det = make_detector("ensemble", {"members": _MEMBERS, **kw})
    return [t for t in range(400) if (det.update(0.0), det.drift_detected)[1]]


def test_ensemble_voting_rules() -> None:
    # members alarm at t = 99, 199, 299, 399 (period 100) and 149, 299 (150); votes reset after an alarm
    assert _ensemble_alarms(voting="any") == [99, 199, 299, 399]  # each alarm restarts every member
    assert _ensemble_alarms(voting="majority", vote_window=60) == [149, 299]
    assert _ensemble_alarms(voting="majority", vote_window=40) == [299]
    assert _ensemble_alarms(voting="all") == []
    assert _ensemble_alarms(voting="weighted", weights=[1.0, 1.0, 3.0]) == []
    assert _ensemble_alarms(voting="weighted", weights=[3.0, 1.0, 1.0], weight_threshold=0.6) == [
        99,
        199,
        299,
        399,
    ]


def test_ensemble_errors_are_one_line() -> None:
    with pytest.raises(ConfigError, match="member 1 \\(adwim\\).*did you mean 'adwin'"):
        make_detector("ensemble", {"members": ["ddm", "adwim"]})
    with pytest.raises(ConfigError, match="'weights' expects null or 2 non-negative numbers"):
        make_detector("ensemble", {"members": ["ddm", "adwin"], "weights": [1.0]})
    with pytest.raises(ConfigError, match="cannot contain an ensemble"):
        make_detector("ensemble", {"members": ["ddm", "ensemble"]})


# ---------------------------------------------------------------------------------------------------
# engine: score -> update kind, warning zones


def _bernoulli(
    acc: list[tuple[int, float]], n_batches: int, seed: int = 0, **signals: np.ndarray
) -> list[BatchResult]:
    rng = np.random.default_rng(seed)
    idx = np.arange(n_batches * BS)
    p = np.zeros(idx.size)
    for start, a in acc:
        p[idx >= start] = a
    values = (rng.random(idx.size) < p).astype(np.float32)
    out = []
    for b in range(n_batches):
        sl = slice(b * BS, (b + 1) * BS)
        v = values[sl]
        extra = {k: s[sl] for k, s in signals.items()}
        out.append(BatchResult(b, int(b * BS >= acc[-1][0]), 0, v, {"accuracy": float(v.mean())}, **extra))
    return out


def test_update_kind_thresholds() -> None:
    from raydrift.config import UpdateRegimesConfig

    assert update_kind(0.9, UpdateRegimesConfig()) == "continual_learning"
    r = UpdateRegimesConfig(fine_tuning=0.2)
    assert [update_kind(s, r) for s in (0.19, 0.2, 5.0)] == [
        "continual_learning",
        "fine_tuning",
        "fine_tuning",
    ]


@pytest.mark.parametrize(
    ("regimes", "kind"),
    [
        ({}, "continual_learning"),
        ({"fine_tuning": 0.1, "retrain": 0.9}, "fine_tuning"),
        ({"fine_tuning": 0.05, "retrain": 0.1}, "retrain"),
    ],
)
def test_event_score_maps_to_update_kind(regimes: dict, kind: str) -> None:
    results = _bernoulli([(0, 0.97), (40 * BS, 0.4)], 60)
    eng = DetectionEngine(DriftDetectionConfig(regimes=regimes), "accuracy", True)
    (event,) = eng.ingest_many(results).events
    assert event.batch_id >= 40
    assert event.score == pytest.approx(event.reference - event.value)
    # the drop is 0.97 -> 0.4 = 0.57, measured on the few samples since the change (the alarm comes
    # ~15 samples into it): thresholds 0.1 / 0.9 and 0.05 / 0.1 are far from it
    assert 0.3 < event.score < 0.85 and event.update_kind == kind
    assert event.to_dict()["update_kind"] == kind and event.signal == "metric"


def test_warning_zone_is_reported_and_carried_by_the_event() -> None:
    # accuracy degrading gradually: DDM enters its warning zone before it alarms
    n = 80
    rng = np.random.default_rng(5)
    acc = np.clip(0.97 - np.maximum(0, np.arange(n * BS) - 30 * BS) / (40 * BS) * 0.5, 0, 1)
    vals = (rng.random(n * BS) < acc).astype(np.float32)
    results = [BatchResult(b, 0, 0, vals[b * BS : (b + 1) * BS], {}) for b in range(n)]
    eng = DetectionEngine(DriftDetectionConfig(detector="ddm", warmup_batches=10), "accuracy", True)
    out = eng.ingest_many(results)
    (event,) = out.events
    assert out.warnings and eng.stats["warnings"] >= 1
    assert event.warning_batch_id is not None and event.warning_batch_id <= event.batch_id
    assert event.warning_batch_id in out.warnings
    assert eng.warning_since is None  # the zone ends with the drift


# ---------------------------------------------------------------------------------------------------
# engine: label-free detection


def _lf_cfg(**kw: object) -> DriftDetectionConfig:
    lf = {
        "signal": "features",
        "detector": "mmd",
        "params": {"reference_size": 128, "window_size": 128, "test_every": 64},
    }
    lf.update(kw)  # type: ignore[arg-type]
    return DriftDetectionConfig(label_free=lf)


def _feature_results(n_batches: int, shift_at: int, seed: int = 0) -> list[BatchResult]:
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(n_batches * BS, 4)).astype(np.float32)
    feats[shift_at * BS :, 1] += 1.5
    # accuracy does not change: only label-free detection can see this covariate shift
    return _bernoulli([(0, 0.9), (10**9, 0.9)], n_batches, seed=seed, features=feats)


def test_label_free_instead_of_accuracy_detects_a_covariate_shift() -> None:
    results = _feature_results(40, shift_at=20)
    eng = DetectionEngine(_lf_cfg(use="instead"), "accuracy", True)
    (event,) = eng.ingest_many(results).events
    assert event.signal == "label_free:features" and event.detector == "mmd"
    assert 20 <= event.batch_id <= 24 and event.score > 0
    assert eng.stats["label_free_alarms"] == 1
    # beside: the accuracy detector sees nothing, the label-free one the same shift
    eng2 = DetectionEngine(_lf_cfg(use="beside"), "accuracy", True)
    (event2,) = eng2.ingest_many(results).events
    assert event2.to_dict() == event.to_dict()
    # without label-free detection nothing happens
    assert DetectionEngine(DriftDetectionConfig(), "accuracy", True).ingest_many(results).events == []


def test_label_free_reference_refreshed_after_an_accepted_update() -> None:
    results = _feature_results(40, shift_at=15)
    lf = {
        "signal": "features",
        "detector": "mmd",
        "use": "instead",
        "params": {"reference_size": 128, "window_size": 128, "test_every": 64},
    }
    cfg = DriftDetectionConfig(reset_after_update=False, label_free=lf)
    eng = DetectionEngine(cfg, "accuracy", True)
    assert eng.ingest_many(results[:14]).events == []
    det = eng.label_free_detector
    assert det is not None and det.reference_full  # type: ignore[attr-defined]
    eng.resume_after_update(14, 0)  # same version: no update was accepted, the reference stays
    assert det.reference_full  # type: ignore[attr-defined]
    eng.resume_after_update(14, 1)  # a newer model: the reference is collected again
    assert not det.reference_full  # type: ignore[attr-defined]
    # the refreshed reference is the shifted data (from batch 15 on): no alarm on it
    later = [
        BatchResult(r.batch_id, r.regime, 1, r.values, r.metrics, features=r.features) for r in results[15:]
    ]
    eng.resume_after_update(15, 2)
    assert eng.ingest_many(later).events == []


def test_label_free_missing_signal_is_named() -> None:
    results = _bernoulli([(0, 0.9)], 3)
    eng = DetectionEngine(_lf_cfg(signal="entropy"), "accuracy", True)
    with pytest.raises(ValueError, match="carries no entropy: build the monitors with label_free='entropy'"):
        eng.ingest_many(results)


def test_label_free_engine_state_round_trip() -> None:
    results = _feature_results(40, shift_at=20)
    eng = DetectionEngine(_lf_cfg(), "accuracy", True)
    eng.ingest_many(results[:18])
    restored = DetectionEngine(_lf_cfg(), "accuracy", True)
    restored.load_state_dict(eng.state_dict())
    copy = pickle.loads(pickle.dumps(eng))
    outs = [e.ingest_many(results[18:]).events for e in (eng, restored, copy)]
    assert outs[0] and all([x.to_dict() for x in o] == [x.to_dict() for x in outs[0]] for o in outs)


def test_batch_result_signal_shapes() -> None:
    r = BatchResult(0, 0, 0, np.ones(3), {}, confidence=[0.9, 0.8, 0.7], features=np.zeros((3, 2, 2)))
    assert r.signal("confidence").shape == (3, 1) and r.signal("features").shape == (3, 4)  # type: ignore[union-attr]
    assert r.signal("entropy") is None
    with pytest.raises(ValueError, match="2 confidence values for 3 samples"):
        BatchResult(0, 0, 0, np.ones(3), {}, confidence=[0.9, 0.8])


# ---------------------------------------------------------------------------------------------------
# the monitor's optional label-free output


def test_monitor_sends_label_free_signals_only_when_asked() -> None:
    import torch

    from raydrift.harness import build_harness
    from raydrift.monitor import Monitor
    from raydrift.weights import to_numpy

    harness = build_harness("synthetic", {}, seed=0, batch_size=16)
    weights = to_numpy(harness.build_model().state_dict())
    batch = next(iter(harness.stream()))
    plain = Monitor(harness, "accuracy", weights).evaluate(0, batch)
    assert plain.confidence is None and plain.entropy is None and plain.features is None
    with torch.inference_mode():
        probs = torch.softmax(harness.build_model().eval()(batch.x), dim=1).numpy()
    conf = Monitor(harness, "accuracy", weights, label_free="confidence").evaluate(0, batch)
    assert conf.confidence is not None and np.allclose(conf.confidence, probs.max(axis=1), atol=1e-5)
    ent = Monitor(harness, "accuracy", weights, label_free="entropy").evaluate(0, batch)
    assert ent.entropy is not None and np.allclose(
        ent.entropy, -(probs * np.log(probs)).sum(axis=1), atol=1e-4
    )
    feats = Monitor(harness, "accuracy", weights, label_free="features").evaluate(0, batch)
    assert feats.features is not None and feats.features.shape == (len(batch.y), batch.x[0].numel())
    with pytest.raises(ValueError, match="label_free must be one of"):
        Monitor(harness, "accuracy", weights, label_free="logits")


def test_monitor_computes_harness_features_without_autograd() -> None:
    import torch

    from raydrift.harness import build_harness
    from raydrift.monitor import Monitor
    from raydrift.weights import to_numpy

    harness = build_harness("synthetic", {}, seed=0, batch_size=16)
    seen: list[bool] = []

    def features(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        hidden = model[1](model[0](x))  # the MLP's hidden layer: an embedding
        seen.append(torch.is_inference_mode_enabled() and not hidden.requires_grad)
        return hidden

    harness.features = features  # type: ignore[attr-defined]
    weights = to_numpy(harness.build_model().state_dict())
    batch = next(iter(harness.stream()))
    result = Monitor(harness, "accuracy", weights, label_free="features").evaluate(0, batch)
    assert result.features is not None and result.features.shape == (16, harness.opts.hidden)
    assert seen == [True]
