"""The engine's issue-19 behaviours: located change points on the event, detection continuing from the
change point (the rest of an alarm's batch is fed), warm-up in samples, ``direction: any`` for one-sided
detectors, the per-sample fast path giving the same alarms as the per-value one."""

from __future__ import annotations

import numpy as np
import pytest

from raydrift.config import DriftDetectionConfig
from raydrift.detection import BatchResult, DetectionEngine
from raydrift.detection.two_sided import TwoSidedDetector

BS = 64


def series_batches(values: np.ndarray, bs: int = BS, version: int = 0) -> list[BatchResult]:
    return [
        BatchResult(b, 0, version, values[i : i + bs].astype(np.float32), {})
        for b, i in enumerate(range(0, len(values), bs))
    ]


def change_points(cfg: DriftDetectionConfig, values: np.ndarray, bs: int = BS, bump: bool = False) -> list[int]:
    """0-based located change points of a real-valued series fed as a lower-is-better metric; on an
    alarm the engine resumes at the next batch, with the same model (``bump``: a new version)."""
    eng = DetectionEngine(cfg, "value", higher_is_better=False)
    res = series_batches(values, bs)
    found, b, version = [], 0, 0
    while b < len(res):
        r = res[b]
        out = eng.ingest(BatchResult(r.batch_id, 0, version, r.values, {}))
        b += 1
        for ev in out.events:
            found.append(ev.change_sample_index - 1)
            version += int(bump)
            eng.resume_after_update(ev.batch_id + 1, version)
            b = ev.batch_id + 1
    return found


def run_with_resume(eng: DetectionEngine, res: list[BatchResult]) -> list:  # type: ignore[type-arg]
    events, b = [], 0
    while b < len(res):
        out = eng.ingest(res[b])
        b += 1
        for ev in out.events:
            events.append(ev)
            eng.resume_after_update(ev.batch_id + 1, 0)
    return events


def test_event_locates_the_change_inside_the_batch() -> None:
    rng = np.random.default_rng(0)
    xs = np.concatenate([rng.normal(0, 1, 300), rng.normal(4, 1, 200)])
    cfg = DriftDetectionConfig(detector="bocpd", params={"threshold": 0.99}, direction="any")
    eng = DetectionEngine(cfg, "value", higher_is_better=False)
    ev = eng.ingest_many(series_batches(xs)).events[0]
    assert abs(ev.change_sample_index - 301) <= 2 and ev.sample_index >= ev.change_sample_index
    assert ev.change_batch_id == (ev.change_sample_index - 1) // BS
    assert ev.change_probability is not None and ev.change_probability >= 0.99
    assert ev.reference == pytest.approx(0.0, abs=0.3) and ev.value > 2.0  # the mean since the change


def test_detection_continues_from_the_change_point_within_the_batch() -> None:
    """Two changes 20 samples apart, inside one batch of 64: both are found when monitoring resumes
    with the same model (the rest of the alarm's batch is fed); a new model starts afresh."""
    rng = np.random.default_rng(1)
    xs = np.concatenate([rng.normal(0, 1, 210), rng.normal(5, 1, 20), rng.normal(-5, 1, 150)])
    cfg = DriftDetectionConfig(detector="bocpd", params={"threshold": 0.99}, direction="any")
    found = change_points(cfg, xs)
    assert len(found) == 2 and abs(found[0] - 210) <= 2 and abs(found[1] - 230) <= 2
    assert len(change_points(cfg, xs, bump=True)) == 1  # the alarm's batch was the old model's


def test_warmup_in_samples() -> None:
    rng = np.random.default_rng(2)
    xs = np.concatenate([rng.normal(0, 1, 20), rng.normal(5, 1, 200)])
    cfg = DriftDetectionConfig(detector="bocpd", params={"threshold": 0.99}, direction="any")
    assert [abs(c - 20) <= 2 for c in change_points(cfg, xs, bs=64)] == [True]  # inside the first batch
    late = DriftDetectionConfig(**{**cfg.model_dump(), "warmup_samples": 100})
    assert change_points(late, xs) == []  # suppressed; the detector restarted from the change


def test_cooldown_only_after_a_new_model() -> None:
    rng = np.random.default_rng(3)
    xs = np.concatenate([rng.normal(0, 1, 200), rng.normal(5, 1, 100), rng.normal(-3, 1, 200)])
    cfg = DriftDetectionConfig(
        detector="bocpd", params={"threshold": 0.99}, direction="any", cooldown_batches=3
    )
    assert len(change_points(cfg, xs)) == 2  # same model: no cooldown
    assert len(change_points(cfg, xs, bump=True)) == 1  # the second change falls in the cooldown


@pytest.mark.parametrize("detector", ["fhddm", "ddm", "hddm_a", "cusum"])
def test_direction_any_sees_improvements_with_one_sided_detectors(detector: str) -> None:
    rng = np.random.default_rng(4)
    acc = (rng.random(12000) < np.where(np.arange(12000) < 6000, 0.6, 0.98)).astype(float)  # better
    for direction, expect in (("degrade", False), ("any", True)):
        cfg = DriftDetectionConfig(detector=detector, direction=direction)
        eng = DetectionEngine(cfg, "accuracy", higher_is_better=True)
        events = run_with_resume(eng, series_batches(acc))
        assert any(6000 < e.sample_index < 7000 for e in events) == expect, (direction, events)
    eng = DetectionEngine(DriftDetectionConfig(detector=detector, direction="any"), "accuracy", True)
    assert isinstance(eng.detector, TwoSidedDetector)


def test_two_sided_detectors_are_not_wrapped() -> None:
    for det in ("adwin", "bocpd", "kswin"):
        eng = DetectionEngine(DriftDetectionConfig(detector=det, direction="any"), "accuracy", True)
        assert not isinstance(eng.detector, TwoSidedDetector)


def test_auto_model_from_the_metric_domain() -> None:
    eng = DetectionEngine(DriftDetectionConfig(detector="bocpd"), "accuracy", True)
    assert eng.detector.resolved_model == "bernoulli"  # type: ignore[attr-defined]
    eng = DetectionEngine(DriftDetectionConfig(detector="bocpd", granularity="batch"), "accuracy", True)
    assert eng.detector.resolved_model == "normal"  # type: ignore[attr-defined]
    eng = DetectionEngine(DriftDetectionConfig(detector="bocpd"), "accuracy", True, domain="real")
    assert eng.detector.resolved_model == "normal"  # type: ignore[attr-defined]


@pytest.mark.parametrize("seed", range(3))
def test_fast_path_matches_the_per_value_path(seed: int) -> None:
    """adwin through update_many (batch at once) alarms where feeding River value by value does."""
    from river import drift

    rng = np.random.default_rng(seed)
    p = np.where(np.arange(20000) < 10000, 0.05, 0.3)
    err = (rng.random(20000) < p).astype(float)
    eng = DetectionEngine(DriftDetectionConfig(detector="adwin"), "accuracy", higher_is_better=True)
    res = series_batches(1.0 - err)
    ours, b = [], 0
    while b < len(res):
        out = eng.ingest(res[b])
        b += 1
        for ev in out.events:
            ours.append(ev.sample_index - 1)
            eng.resume_after_update(ev.batch_id + 1, 0)
    river, alarms = drift.ADWIN(delta=0.05, clock=1), []
    for i, x in enumerate(err):
        river.update(float(x))
        if river.drift_detected:
            alarms.append(i)
    # every alarm of River's that counts (a worsening) is an engine event at the same sample
    assert ours and all(a in alarms for a in ours), (ours, alarms)
    assert any(10000 <= a < 10300 for a in ours)


def bare_river_alarms(river: object, fed: list[float], bs: int) -> tuple[list[int], list[int]]:
    """0-based alarm positions of a River detector fed ``fed`` directly, and the batches where a
    warning zone opens (a warning while none is open; it closes on a value with neither)."""
    alarms, zones, in_zone = [], [], False
    for i, x in enumerate(fed):
        river.update(x)  # type: ignore[attr-defined]
        drift = bool(river.drift_detected)  # type: ignore[attr-defined]
        if getattr(river, "warning_detected", False):
            if not in_zone:
                in_zone = True
                zones.append(i // bs)
        elif in_zone and not drift:
            in_zone = False
        if drift:
            alarms.append(i)
    return alarms, zones


@pytest.mark.parametrize(
    ("detector", "params", "direction"),
    [
        ("adwin", {}, "any"),
        ("adwin", {"delta": 0.002, "clock": 32}, "any"),
        ("page_hinkley", {}, "any"),
        ("hddm_a", {"two_sided_test": True}, "any"),
        ("hddm_w", {"two_sided_test": True}, "any"),
        ("ddm", {}, "degrade"),
        ("hddm_a", {}, "degrade"),
        ("eddm", {}, "degrade"),
    ],
)
@pytest.mark.parametrize("seed", range(2))
def test_engine_alarms_where_the_bare_river_detector_does(
    detector: str, params: dict, direction: str, seed: int
) -> None:
    """The engine's fast paths change nothing: its events (resuming with the same model after each)
    fall on exactly the samples where the River detector, fed the same values one by one, alarms, and
    its warning zones open in the same batches (``direction: degrade`` ignores those on an improvement)."""
    from raydrift.detection import make_detector

    rng = np.random.default_rng(seed)
    n, bs = 24000, 50  # batches of 50: alarms fall anywhere inside a batch
    p = np.select([np.arange(n) < 8000, np.arange(n) < 16000], [0.05, 0.35], 0.1)
    err = (rng.random(n) < p).astype(np.float32)
    cfg = DriftDetectionConfig(
        detector=detector, params=params, direction=direction, warmup_samples=0, cooldown_batches=0
    )
    eng = DetectionEngine(cfg, "accuracy", higher_is_better=True, seed=seed)
    res = series_batches(1.0 - err, bs=bs)
    ours, warnings, b = [], [], 0
    while b < len(res):
        out = eng.ingest(res[b])
        warnings += out.warnings
        b += 1
        for ev in out.events:
            ours.append(ev.sample_index - 1)
            eng.resume_after_update(ev.batch_id + 1, 0)
    fed = [x for r in res for x in (1.0 - r.values.astype(np.float64)).tolist()]
    river = make_detector(detector, params, seed=seed).river  # type: ignore[attr-defined]
    alarms, zones = bare_river_alarms(river, fed, bs)
    assert len(alarms) >= (2 if direction == "any" else 1)  # the stream has alarms to compare
    # every raw alarm is the bare detector's; with ``degrade`` those on an improvement are ignored
    ignored = eng.stats["ignored_improvements"]
    assert ours == [a for a in alarms if a in ours] and len(ours) == len(alarms) - ignored
    assert ignored == 0 or direction == "degrade"
    assert warnings == zones
    assert eng.stats["alarms"] == len(alarms) and eng.stats["warnings"] == len(zones)


@pytest.mark.parametrize("seed", range(3))
def test_fhddm_direction_any_finds_an_improvement_as_a_worsening(seed: int) -> None:
    """``fhddm`` is one-sided (River's FHDDM tracks the maximum of the accuracy): with ``direction:
    any`` its twin fed ``1 - x`` finds an accuracy rise 0.6 -> 0.98 within 100 samples, as the
    detector itself finds the mirror-image fall 0.98 -> 0.6."""
    rng = np.random.default_rng(seed)
    u = rng.random(12000)
    first = np.arange(12000) < 6000
    for before, after in ((0.6, 0.98), (0.98, 0.6)):
        acc = (u < np.where(first, before, after)).astype(float)
        eng = DetectionEngine(DriftDetectionConfig(detector="fhddm", direction="any"), "accuracy", True)
        events = run_with_resume(eng, series_batches(acc))
        assert any(6000 < e.sample_index <= 6100 for e in events), (before, after, events)


# --- the per-sample path's cheap "nothing to sanitise" test ----------------------------------------

_EDGES = np.array(
    [0.0, -0.0, 1.0, 0.5, np.nextafter(np.float32(1), np.float32(2)), -np.float32(1e-45), np.float32(1e-45),
     -0.3, 1.7, np.nan, np.inf, -np.inf, 3e38],
    dtype=np.float32,
)


def _edge_batches(seed: int, n_batches: int = 120) -> list[BatchResult]:
    """Batches of 0/1 values (a worsening half-way) into which some batches mix the edge values above."""
    rng = np.random.default_rng(seed)
    out = []
    for b in range(n_batches):
        v = (rng.random(BS) < (0.9 if b < n_batches // 2 else 0.5)).astype(np.float32)
        if rng.random() < 0.4:
            k = rng.integers(1, 4)
            v[rng.integers(0, BS, k)] = rng.choice(_EDGES, k)
        out.append(BatchResult(b, 0, 0, v, {}))
    return out


def test_nothing_to_sanitize_only_says_so_when_it_is_true() -> None:
    """True only when every fed value (``1 - v`` and ``v``) is finite and in [0, 1]; for a ``real``
    detector given the batch mean, exactly when every value is finite."""
    rng = np.random.default_rng(0)
    eng = DetectionEngine(DriftDetectionConfig(detector="adwin"), "accuracy", higher_is_better=True)
    real = DetectionEngine(DriftDetectionConfig(detector="page_hinkley"), "value", higher_is_better=False)
    said = {True: 0, False: 0}
    for _ in range(3000):
        v = rng.choice(_EDGES, rng.integers(1, 5)) if rng.random() < 0.5 else rng.random(8).astype(np.float32)
        f = v.astype(np.float64)
        clean = bool(np.all(np.isfinite(f)) and f.min() >= 0.0 and f.max() <= 1.0 and (1.0 - f).min() >= 0.0)
        got = eng._nothing_to_sanitize(v, None)
        said[got] += 1
        assert not got or clean, v
        assert got or not (clean and not np.signbit(f).any()), v  # it may only refuse -0.0
        with np.errstate(invalid="ignore", over="ignore"):
            mean = float(np.add.reduce(v, dtype=np.float64)) / v.size
        assert real._nothing_to_sanitize(v, mean) == bool(np.all(np.isfinite(f))), v
    assert min(said.values()) > 500  # both answers were exercised


@pytest.mark.parametrize("detector", ["adwin", "page_hinkley", "ddm"])
@pytest.mark.parametrize("higher_is_better", [True, False])
@pytest.mark.parametrize("seed", range(3))
def test_the_cheap_sanitize_test_changes_nothing(detector: str, higher_is_better: bool, seed: int) -> None:
    """Batches with NaN, inf, -0.0, tiny negatives and values just above 1: the engine's events, counters
    and direction reference are those of the same engine made to run the full check on every batch."""
    cfg = DriftDetectionConfig(detector=detector, direction="any")
    a = DetectionEngine(cfg, "accuracy", higher_is_better=higher_is_better)
    b = DetectionEngine(cfg, "accuracy", higher_is_better=higher_is_better)
    b._nothing_to_sanitize = lambda v, mean: False  # type: ignore[method-assign]
    ev_a, ev_b = run_with_resume(a, _edge_batches(seed)), run_with_resume(b, _edge_batches(seed))
    assert ev_a and [str(e) for e in ev_a] == [str(e) for e in ev_b]  # str: a NaN score equals itself
    assert a.stats == b.stats and a.stats["non_finite"] > 0
    assert a.stats["clipped"] > 0 or a.detector.input_domain == "real"
    ra, rb = a._reference, b._reference
    assert ra.total_sum == rb.total_sum and ra.total_w == rb.total_w
    assert np.array_equal(ra._kept()[0], rb._kept()[0]) and ra._kept()[0].size > 0


def test_interval_mean_is_aggregates_weighted_mean_bit_for_bit() -> None:
    """The interval's ``mean`` (weights' sum taken as ``n_samples``) is ``aggregate``'s, float for float,
    with batches of different sizes, empty ones among them."""
    from raydrift.detection.aggregation import aggregate
    from raydrift.detection.engine import _OpenInterval

    rng = np.random.default_rng(0)
    for t in range(300):
        iv = _OpenInterval(first_batch=0, last_batch=0)
        for b in range(int(rng.integers(1, 12))):
            n = int(rng.choice([0, 1, 7, 64, 1000]))
            v = rng.random(n).astype(np.float32)
            mean = float(np.add.reduce(v, dtype=np.float64)) / n if n else float("nan")
            iv.add(BatchResult(b, 0, 0, v, {"m": mean} if n else {}), mean, n)
        expected = aggregate(iv.batch_means, "mean", weights=iv.batch_ns) if iv.batch_means else float("nan")
        got = iv.value("mean")
        assert got == expected or (np.isnan(got) and np.isnan(expected)), (t, got, expected)
