"""Drift detection: registry, generic detector checks, aggregation, and the ordering/detection engine."""

from __future__ import annotations

import pickle
import random
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import pytest

from raydrift.config import DriftDetectionConfig
from raydrift.detection import (
    DETECTOR_REGISTRY,
    BatchResult,
    DetectionEngine,
    DetectionOutput,
    DriftDetector,
    DriftEvent,
    IntervalRecord,
    aggregate,
    list_detectors,
    make_detector,
    resolve_detector,
)
from raydrift.detection.change_point import split_at_change
from raydrift.errors import ConfigError

BS = 64


# ---------------------------------------------------------------------------------------------------
# helpers


class ScriptedDetector(DriftDetector):
    """Test double: alarms on the updates whose 1-based count (over its whole life) is in ``alarm_at``."""

    name: ClassVar[str] = "scripted"

    def __init__(self, alarm_at: list[int] | None = None) -> None:
        self.alarm_at = alarm_at
        self.fed: list[float] = []
        self.resets = 0
        self._drift = False

    def update(self, x: float) -> None:
        self.fed.append(x)
        self._drift = len(self.fed) in (self.alarm_at or [])

    @property
    def drift_detected(self) -> bool:
        return self._drift

    def reset(self) -> None:
        self.resets += 1
        self._drift = False

    def state_dict(self) -> dict[str, Any]:
        return {"fed": list(self.fed), "resets": self.resets, "drift": self._drift}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.fed, self.resets, self._drift = list(state["fed"]), state["resets"], state["drift"]

    @classmethod
    def _unit_test_params(cls) -> Iterator[dict[str, Any]]:
        yield {"alarm_at": [5]}


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setitem(DETECTOR_REGISTRY, "scripted", f"{__name__}:ScriptedDetector")
    return "scripted"


def bernoulli_results(
    acc: list[tuple[int, float]], n_batches: int, seed: int = 0, bs: int = BS, version: int = 0
) -> list[BatchResult]:
    """Per-sample correctness (1.0/0.0) batches; ``acc`` = [(first_sample, accuracy), ...] in order."""
    rng = np.random.default_rng(seed)
    idx = np.arange(n_batches * bs)
    p = np.zeros(idx.size)
    regime = np.zeros(idx.size, dtype=int)
    for r, (start, a) in enumerate(acc):
        p[idx >= start] = a
        regime[idx >= start] = r
    values = (rng.random(idx.size) < p).astype(np.float32)
    out = []
    for b in range(n_batches):
        v = values[b * bs : (b + 1) * bs]
        out.append(
            BatchResult(
                batch_id=b,
                regime=int(regime[(b + 1) * bs - 1]),
                version=version,
                values=v,
                metrics={"accuracy": float(v.mean()), "loss": float(1.0 - v.mean()) * 2},
            )
        )
    return out


def constant_results(values: list[float], bs: int = BS, version: int = 0) -> list[BatchResult]:
    """Batch b has every sample equal to ``values[b]``."""
    return [
        BatchResult(b, 0, version, np.full(bs, v, dtype=np.float32), {"accuracy": v})
        for b, v in enumerate(values)
    ]


def revalue(results: list[BatchResult], version: int) -> list[BatchResult]:
    """The same batches as if re-evaluated by model ``version`` (same values, new version)."""
    return [BatchResult(r.batch_id, r.regime, version, r.values.copy(), dict(r.metrics)) for r in results]


def coordinated_run(
    engine: DetectionEngine, results: list[BatchResult], rng: random.Random | None, chunk: int = 7
) -> tuple[list[DriftEvent], list[IntervalRecord]]:
    """Simulate the coordinator: results arrive in (shuffled) chunks; on an event, resume at b + 1 with
    a new version and re-deliver every later batch evaluated by that version."""
    events: list[DriftEvent] = []
    intervals: list[IntervalRecord] = []
    version = 0
    todo = [r for r in results]
    while todo:
        order = list(todo)
        if rng is not None:
            rng.shuffle(order)
        event = None
        for i in range(0, len(order), chunk):
            out = engine.ingest_many(order[i : i + chunk])
            intervals += out.intervals
            if out.events:
                event = out.events[0]
                events += out.events
                # the rest of this chunk and the later chunks arrive while paused: dropped
                for r in order[i + chunk :]:
                    assert engine.ingest(r).events == []
                break
        if event is None:
            break
        version += 1
        engine.resume_after_update(event.batch_id + 1, version)
        todo = revalue([r for r in results if r.batch_id > event.batch_id], version)
    intervals += engine.finish()
    return events, intervals


def cfg(**kw: Any) -> DriftDetectionConfig:
    return DriftDetectionConfig(**kw)


# ---------------------------------------------------------------------------------------------------
# registry and errors


def test_registry_names_resolve() -> None:
    assert set(DETECTOR_REGISTRY) >= {"adwin", "kswin", "page_hinkley"}
    for name in DETECTOR_REGISTRY:
        cls = resolve_detector(name)
        assert cls.name == name
        assert issubclass(cls, DriftDetector)


def test_unknown_detector_names_closest() -> None:
    with pytest.raises(ConfigError) as exc:
        make_detector("adwn", {})
    msg = str(exc.value)
    assert "did you mean 'adwin'?" in msg and "\n" not in msg
    with pytest.raises(ConfigError, match="did you mean 'page_hinkley'"):
        make_detector("pagehinkley", {})


def test_unknown_param_named_with_closest_and_valid_ones() -> None:
    with pytest.raises(ConfigError) as exc:
        make_detector("adwin", {"clok": 1})
    msg = str(exc.value)
    assert "'clok'" in msg and "did you mean 'clock'" in msg
    assert "delta, clock, max_buckets, min_window_length, grace_period" in msg
    assert "\n" not in msg


@pytest.mark.parametrize(
    ("name", "params", "bad"),
    [
        ("adwin", {"delta": "abc"}, "delta"),
        ("adwin", {"delta": 2.0}, "delta"),
        ("adwin", {"clock": 0}, "clock"),
        ("adwin", {"clock": 2.5}, "clock"),
        ("kswin", {"stat_size": 200}, "stat_size"),
        ("kswin", {"alpha": 0.0}, "alpha"),
        ("page_hinkley", {"mode": "sideways"}, "mode"),
        ("page_hinkley", {"threshold": -1}, "threshold"),
    ],
)
def test_bad_param_value_named(name: str, params: dict[str, Any], bad: str) -> None:
    with pytest.raises(ConfigError) as exc:
        make_detector(name, params)
    msg = str(exc.value)
    assert f"'{bad}'" in msg and "valid params:" in msg and "\n" not in msg


def test_param_coercion_and_seed() -> None:
    det = make_detector("adwin", {"delta": "1e-3", "clock": 1})
    assert det.delta == pytest.approx(0.001) and det.clock == 1  # type: ignore[attr-defined]
    assert make_detector("kswin", {}, seed=7).seed == 7  # type: ignore[attr-defined]
    assert make_detector("kswin", {"seed": 3}, seed=7).seed == 3  # type: ignore[attr-defined]


def test_dotted_paths() -> None:
    det = make_detector("raydrift.detection.adwin:ADWINDetector", {"clock": 4})
    assert det.name == "adwin" and det.clock == 4  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match="not a subclass"):
        make_detector("raydrift.errors:ConfigError", {})
    with pytest.raises(ConfigError, match="cannot import module"):
        make_detector("no_such_pkg.mod:Det", {})
    with pytest.raises(ConfigError, match="has no attribute"):
        make_detector("raydrift.detection.adwin:Nope", {})


def test_list_detectors() -> None:
    rows = {name: (params, doc) for name, params, doc in list_detectors()}
    assert set(rows) == set(DETECTOR_REGISTRY)
    assert rows["adwin"][0] == {  # raydrift's default setting, not River's 0.002 / 32
        "delta": 0.05,
        "clock": 1,
        "max_buckets": 5,
        "min_window_length": 5,
        "grace_period": 10,
    }
    assert rows["page_hinkley"][0]["threshold"] == 50.0
    assert rows["kswin"][0]["window_size"] == 100
    assert all(doc and "\n" not in doc for _, doc in rows.values())


# The generic check suite over every registered detector is in tests/test_detectors_generic.py.


# ---------------------------------------------------------------------------------------------------
# aggregation


def test_aggregate() -> None:
    assert aggregate([1.0, 0.0, 0.5], "mean") == pytest.approx(0.5)
    assert aggregate(np.array([0.9, 0.1, 0.2], dtype=np.float32), "median") == pytest.approx(0.2)
    assert aggregate([0.3, 0.7], "last") == pytest.approx(0.7)
    assert aggregate([1.0, 0.0], "mean", weights=[3, 1]) == pytest.approx(0.75)
    assert np.isnan(aggregate([1.0], "mean", weights=[0]))
    with pytest.raises(ValueError, match="empty"):
        aggregate([], "mean")
    with pytest.raises(ValueError, match="unknown aggregation"):
        aggregate([1.0], "max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="weights"):
        aggregate([1.0, 2.0], "mean", weights=[1.0])


# ---------------------------------------------------------------------------------------------------
# engine: ordering, duplicates, pause/resume


def _as_dicts(events: list[DriftEvent], intervals: list[IntervalRecord]) -> tuple[list[dict], list[dict]]:
    return [e.to_dict() for e in events], [i.to_dict() for i in intervals]


# River's defaults are tuned for per-sample values (see docs/drift_detectors.md): coarser granularities
# get a Page-Hinkley threshold in the units of a mean, so that every run has several alarms.
_COARSE_PH = {"threshold": 0.3, "min_instances": 5}


@pytest.mark.parametrize(
    ("granularity", "detector", "params"),
    [
        ("sample", "adwin", {"clock": 1}),
        ("batch", "page_hinkley", _COARSE_PH),
        ("interval", "page_hinkley", _COARSE_PH),
    ],
)
def test_order_invariance_under_shuffled_arrival(
    granularity: str, detector: str, params: dict[str, Any]
) -> None:
    # two degradations, so the runs include an alarm, a resume and a second alarm
    results = bernoulli_results([(0, 0.97), (30 * BS, 0.5), (80 * BS + 10, 0.1)], n_batches=130, seed=4)
    c = cfg(detector=detector, params=params, granularity=granularity, interval=4)
    ref_events, ref_intervals = coordinated_run(DetectionEngine(c, "accuracy", True), results, None)
    assert len(ref_events) >= 2  # a meaningful comparison
    for seed in range(4):
        ev, iv = coordinated_run(DetectionEngine(c, "accuracy", True), results, random.Random(seed))
        assert _as_dicts(ev, iv) == _as_dicts(ref_events, ref_intervals)


def test_duplicates_are_ignored() -> None:
    results = bernoulli_results([(0, 0.95), (40 * BS, 0.5)], n_batches=60, seed=1)
    c = cfg(detector="adwin", params={"clock": 1})
    once = DetectionEngine(c, "accuracy", True).ingest_many(results)
    twice_eng = DetectionEngine(c, "accuracy", True)
    # each result delivered twice: once while buffered (reverse order) and once after processing
    twice = twice_eng.ingest_many(list(reversed(results[:20])) + list(reversed(results[:20])) + results[20:])
    assert _as_dicts(once.events, once.intervals) == _as_dicts(twice.events, twice.intervals)
    assert once.events and twice_eng.stats["duplicates"] == 20


def test_pause_drops_and_resume_restarts() -> None:
    results = bernoulli_results([(0, 0.97), (20 * BS, 0.3)], n_batches=40, seed=2)
    c = cfg(detector="adwin", params={"clock": 1}, interval=3, warmup_batches=2, cooldown_batches=0)
    eng = DetectionEngine(c, "accuracy", True)
    out = eng.ingest_many(results)
    assert len(out.events) == 1 and eng.paused
    b = out.events[0].batch_id
    assert 20 <= b <= 23
    assert out.next_batch == b + 1 == eng.next_batch
    # the interval containing b is closed early; every processed batch is in exactly one interval
    assert out.intervals[-1].last_batch == b
    covered = [i for rec in out.intervals for i in range(rec.first_batch, rec.last_batch + 1)]
    assert covered == list(range(b + 1))
    assert eng.stats["dropped_paused"] == len(results) - (b + 1)
    # while paused everything is dropped, even the next batch
    assert eng.ingest(revalue(results[b + 1 : b + 2], 1)[0]).next_batch == b + 1
    eng.resume_after_update(b + 1, version=1)
    assert not eng.paused and eng.version == 1
    # a result of the old model arriving late is stale
    eng.ingest(results[b + 1])
    assert eng.next_batch == b + 1 and eng.stats["dropped_stale"] == 1
    # re-evaluated batches are processed; a new interval starts at b + 1
    fresh = bernoulli_results([(0, 0.3)], n_batches=40, seed=3, version=1)[b + 1 :]
    out2 = eng.ingest_many(fresh)
    assert out2.events == []  # the new level is the new normal after the reset
    assert out2.intervals[0].first_batch == b + 1 and out2.intervals[0].version == 1
    with pytest.raises(ValueError, match=">= 0"):
        eng.resume_after_update(-1, version=2)
    with pytest.raises(ValueError, match="version"):
        eng.resume_after_update(eng.next_batch, version=0)


def test_resume_can_rewind_to_reprocess_batches(scripted: str) -> None:
    """The coordinator may monitor past an alarm with the old model (collecting a post-drift window),
    then rewind: those batches are processed again with the new version."""
    c = cfg(
        detector=scripted, params={"alarm_at": [2 * BS + 1]}, interval=3, warmup_batches=0, direction="any"
    )
    eng = DetectionEngine(c, "accuracy", True)
    res = constant_results([1.0] * 10)
    out = eng.ingest_many(res)
    assert [e.batch_id for e in out.events] == [2]
    eng.resume_after_update(3, version=0)  # keep collecting with the same model
    out = eng.ingest_many(res[3:6])
    assert eng.next_batch == 6 and [(i.first_batch, i.last_batch) for i in out.intervals] == [(3, 5)]
    eng.resume_after_update(4, version=1)  # trained on batches up to 3: re-evaluate from 4
    assert eng.ingest(res[6]).next_batch == 4  # an old-model result: stale
    out = eng.ingest_many(revalue(res[4:], 1))
    assert eng.next_batch == 10 and eng.stats["dropped_stale"] == 1
    assert [(i.first_batch, i.last_batch, i.version) for i in out.intervals] == [(4, 6, 1), (7, 9, 1)]
    # reset for the new model only: resuming with the same one continues from the change point
    assert eng.stats["updates"] == 2 and eng.detector.resets == 1  # type: ignore[attr-defined]


def test_alarm_stops_feeding_within_the_batch(scripted: str) -> None:
    c = cfg(detector=scripted, params={"alarm_at": [2 * BS + 10]}, warmup_batches=0, direction="any")
    eng = DetectionEngine(c, "accuracy", True)
    out = eng.ingest_many(constant_results([1.0] * 6))
    det = eng.detector
    assert isinstance(det, ScriptedDetector)
    assert len(det.fed) == 2 * BS + 10  # nothing after the alarming sample of batch 2
    (ev,) = out.events
    assert (ev.batch_id, ev.sample_index, ev.detector) == (2, 2 * BS + 10, "scripted")
    assert (
        eng.stats["samples"] == 3 * BS and eng.stats["dropped_after_alarm"] + eng.stats["dropped_paused"] == 3
    )


def test_resume_without_alarm_closes_partial_interval(scripted: str) -> None:
    c = cfg(detector=scripted, params={}, interval=4)
    eng = DetectionEngine(c, "accuracy", True)
    res = constant_results([1.0] * 10)
    assert [i.last_batch for i in eng.ingest_many(res[:6]).intervals] == [3]
    eng.resume_after_update(6, version=1)
    out = eng.ingest_many(revalue(res[6:], 1))
    assert [(i.first_batch, i.last_batch) for i in out.intervals] == [(4, 5), (6, 9)]


# ---------------------------------------------------------------------------------------------------
# engine: what the detector is fed


def test_fed_values_per_granularity(scripted: str) -> None:
    accs = [1.0, 0.5, 0.75, 0.25, 0.0, 1.0]
    for granularity, expected in [
        ("sample", [1 - a for a in accs for _ in range(BS)]),
        ("batch", [1 - a for a in accs]),
        ("interval", [1 - (1.0 + 0.5 + 0.75) / 3, 1 - (0.25 + 0.0 + 1.0) / 3]),
    ]:
        eng = DetectionEngine(cfg(detector=scripted, granularity=granularity, interval=3), "accuracy", True)
        eng.ingest_many(constant_results(accs))
        assert eng.detector.fed == pytest.approx(expected)  # type: ignore[attr-defined]
    # a lower-is-better metric is fed as is; the interval aggregate follows cfg.aggregation
    eng = DetectionEngine(
        cfg(detector=scripted, granularity="interval", interval=3, aggregation="median"), "loss", False
    )
    eng.ingest_many(constant_results(accs))
    assert eng.detector.fed == pytest.approx([0.75, 0.25])  # type: ignore[attr-defined]


def test_warmup_suppresses_early_alarms(scripted: str) -> None:
    # alarms at a sample of batch 1 (in warm-up) and of batch 3 (after it)
    c = cfg(detector=scripted, params={"alarm_at": [BS + 5, 3 * BS + 5]}, warmup_batches=3, direction="any")
    eng = DetectionEngine(c, "accuracy", True)
    out = eng.ingest_many(constant_results([1.0] * 6))
    assert [e.batch_id for e in out.events] == [3]
    assert eng.stats["suppressed_alarms"] == 1 and eng.stats["alarms"] == 2


@pytest.mark.parametrize("reset", [True, False])
def test_cooldown_and_reset_after_update(scripted: str, reset: bool) -> None:
    # alarm in batch 1; after the resume at 2, alarms in batch 3 (cooldown) and batch 5 (after it)
    alarms = [BS + 1, 3 * BS + 1, 5 * BS + 1]
    c = cfg(
        detector=scripted,
        params={"alarm_at": alarms},
        warmup_batches=0,
        cooldown_batches=3,
        direction="any",
        reset_after_update=reset,
    )
    eng = DetectionEngine(c, "accuracy", True)
    res = constant_results([1.0] * 8)
    assert [e.batch_id for e in eng.ingest_many(res).events] == [1]
    eng.resume_after_update(2, version=1)
    assert eng.detector.resets == int(reset)  # type: ignore[attr-defined]
    out = eng.ingest_many(revalue(res[2:], 1))
    assert [e.batch_id for e in out.events] == [5]
    assert eng.stats["suppressed_alarms"] == 1
    # values kept feeding the detector during the cooldown
    assert len(eng.detector.fed) == 5 * BS + 1  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("granularity", "detector", "params"),
    [
        ("sample", "adwin", {"clock": 1}),
        ("sample", "page_hinkley", {}),
        ("batch", "page_hinkley", {"threshold": 1.0, "min_instances": 5}),
    ],
)
def test_direction_degrade_ignores_improvements(
    granularity: str, detector: str, params: dict[str, Any]
) -> None:
    improving = bernoulli_results([(0, 0.5), (30 * BS, 0.97)], n_batches=60, seed=5)
    base = {"detector": detector, "params": params, "granularity": granularity}
    eng = DetectionEngine(cfg(**base, direction="degrade"), "accuracy", True)
    assert eng.ingest_many(improving).events == []
    assert eng.stats["ignored_improvements"] >= 1
    eng_any = DetectionEngine(cfg(**base, direction="any"), "accuracy", True)
    (ev,) = eng_any.ingest_many(improving).events
    assert ev.value > ev.reference  # accuracy went up
    # the same detector under 'degrade' does flag the reverse change
    worsening = bernoulli_results([(0, 0.97), (30 * BS, 0.5)], n_batches=60, seed=5)
    (ev,) = DetectionEngine(cfg(**base, direction="degrade"), "accuracy", True).ingest_many(worsening).events
    assert ev.value < ev.reference and ev.reference > 0.9


def test_direction_for_lower_is_better_metric(scripted: str) -> None:
    # a loss that drops (improves) then rises (degrades); alarms scripted on both
    losses = [1.0] * 5 + [0.1] * 5 + [2.0] * 5
    c = cfg(detector=scripted, params={"alarm_at": [6, 12]}, granularity="batch", warmup_batches=0)
    eng = DetectionEngine(c, "loss", False)
    out = eng.ingest_many(constant_results(losses))
    assert [e.batch_id for e in out.events] == [11]
    assert eng.stats["ignored_improvements"] == 1
    assert out.events[0].value == pytest.approx(2.0)


@pytest.mark.parametrize("detector", ["adwin", "page_hinkley"])
@pytest.mark.parametrize("seed", range(4))
def test_detects_abrupt_bernoulli_change_quickly(detector: str, seed: int) -> None:
    """Accuracy 0.95 -> 0.5 after 3,200 samples: detected within 200 samples at sample granularity,
    default parameters, no false alarm before the change."""
    change = 50 * BS
    results = bernoulli_results([(0, 0.95), (change, 0.5)], n_batches=80, seed=seed)
    eng = DetectionEngine(cfg(detector=detector), "accuracy", True, seed=seed)
    out = eng.ingest_many(results)
    assert len(out.events) == 1
    ev = out.events[0]
    assert change < ev.sample_index <= change + 200
    assert ev.regime == 1 and ev.version == 0
    assert ev.reference == pytest.approx(0.95, abs=0.03)


def test_default_setting_meets_the_detection_target() -> None:
    """The default setting (``DriftDetectionConfig()``: adwin, delta 0.05, clock 1, per sample): at most
    0.2 false alarms per 10,000 stationary samples (4 in 210,000 at accuracies 0.95 / 0.75 / 0.5), and
    an error increase 0.05 -> 0.18 (River's SEA streams) detected within 200 samples."""
    false_alarms = 0
    for seed, acc in enumerate((0.95, 0.75, 0.5)):
        eng = DetectionEngine(DriftDetectionConfig(), "accuracy", True, seed=seed)
        for r in bernoulli_results([(0, acc)], n_batches=70_000 // BS + 1, seed=seed):
            out = eng.ingest(r)
            if out.events:  # resume as after an update
                false_alarms += 1
                eng.resume_after_update(out.events[0].batch_id + 1, eng.version + 1)
    assert false_alarms <= 4
    change = 100 * BS
    for seed in range(4):
        results = bernoulli_results([(0, 0.95), (change, 0.82)], n_batches=130, seed=seed)
        events = (
            DetectionEngine(DriftDetectionConfig(), "accuracy", True, seed=seed).ingest_many(results).events
        )
        assert len(events) == 1 and change < events[0].sample_index <= change + 200, events


def test_split_at_change() -> None:
    # noise-free segments: the exact split, with the older values only known as a sum
    x = np.array([0.1] * 5 + [2.0] * 3)
    assert split_at_change(x, np.full(8, 10.0), prior_sum=50.0, prior_weight=50.0) == (
        3,
        pytest.approx(0.55),
        2.0,
    )
    # batch means weigh as many samples as they average; too little weight after: no split
    assert split_at_change(np.array([0.0, 1.0]), np.array([64.0, 4.0])) is None
    assert split_at_change(np.array([]), np.array([])) is None
    # Bernoulli 0.05 -> 0.6 for 20 samples: located near the change, means near the truth
    rng = np.random.default_rng(0)
    x = np.r_[rng.random(2000) < 0.05, rng.random(20) < 0.6].astype(float)
    split = split_at_change(x, np.ones_like(x))
    assert split is not None
    n_after, before, after = split
    assert (
        15 <= n_after <= 30
        and before == pytest.approx(0.05, abs=0.01)
        and after == pytest.approx(0.6, abs=0.2)
    )


def test_event_value_is_measured_since_the_change() -> None:
    """A quick alarm (~15 samples into 0.97 -> 0.4) still reports the accuracy since the change, not
    the mean of a recent window that holds mostly the old regime."""
    change = 40 * BS
    values, references, windows = [], [], []
    for seed in range(10):
        results = bernoulli_results([(0, 0.97), (change, 0.4)], n_batches=60, seed=seed)
        (ev,) = (
            DetectionEngine(DriftDetectionConfig(), "accuracy", True, seed=seed).ingest_many(results).events
        )
        assert ev.sample_index - change <= 64  # within the batch of the change
        values.append(ev.value)
        references.append(ev.reference)
        seen = np.concatenate([r.values for r in results])[: ev.sample_index]
        windows.append(float(seen[-BS:].mean()))  # the last 64 samples before the alarm
    # biased low (the alarm comes when the few samples since the change look bad), but near 0.4
    assert abs(np.mean(values) - 0.4) < 0.15 and np.mean(references) == pytest.approx(0.97, abs=0.01)
    assert np.mean(windows) > 0.75  # what a window of the last batch's size would have reported


# ---------------------------------------------------------------------------------------------------
# engine: intervals, records, state


def test_interval_records_cover_each_batch_once() -> None:
    results = bernoulli_results([(0, 0.97), (33 * BS, 0.4)], n_batches=70, seed=6, bs=50)
    c = cfg(detector="adwin", params={"clock": 1}, interval=5)
    eng = DetectionEngine(c, "accuracy", True)
    events, intervals = coordinated_run(eng, results, random.Random(0))
    assert events
    covered = [b for rec in intervals for b in range(rec.first_batch, rec.last_batch + 1)]
    assert covered == list(range(70))
    assert [rec.interval for rec in intervals] == list(range(len(intervals)))
    assert all(rec.last_batch - rec.first_batch + 1 <= 5 for rec in intervals)
    assert any(rec.last_batch == events[0].batch_id for rec in intervals)
    # values and metrics are sample-weighted means of the batches (last version's re-evaluation)
    for rec in intervals:
        batch = [r for r in results if rec.first_batch <= r.batch_id <= rec.last_batch]
        assert rec.n_samples == sum(r.n for r in batch)
        acc = float(np.mean(np.concatenate([r.values for r in batch])))
        assert rec.value == pytest.approx(acc) and rec.metrics["accuracy"] == pytest.approx(acc)
        assert rec.metrics["loss"] == pytest.approx(np.mean([r.metrics["loss"] for r in batch]))
        assert rec.regime == batch[-1].regime
    assert {rec.version for rec in intervals} == set(range(len(events) + 1))


def test_interval_record_and_event_dicts() -> None:
    rec = IntervalRecord(2, 10, 14, 320, 0.9, {"accuracy": 0.9, "value": 1.0}, 1, 3)
    row = rec.to_dict()
    assert list(row)[:7] == [
        "interval",
        "first_batch",
        "last_batch",
        "n_samples",
        "value",
        "regime",
        "version",
    ]
    assert row["accuracy"] == 0.9 and row["metric_value"] == 1.0 and row["value"] == 0.9
    ev = DriftEvent(5, 321, "adwin", 0.5, 0.95, 1, 0)
    assert ev.to_dict() == {
        "batch_id": 5,
        "sample_index": 321,
        "detector": "adwin",
        "value": 0.5,
        "reference": 0.95,
        "regime": 1,
        "version": 0,
        "score": ev.score,
        "update_kind": "continual_learning",
        "warning_batch_id": None,
        "signal": "metric",
        "change_sample_index": 0,
        "change_batch_id": -1,
        "change_probability": None,
    }
    assert np.isnan(ev.score)
    r = BatchResult(0, 0, 0, np.array([1, 0, 1]), {"accuracy": 2 / 3})
    assert r.n == 3 and r.values.dtype == np.float32
    assert isinstance(DetectionOutput(), DetectionOutput)


def test_finish_flushes_partial_interval() -> None:
    eng = DetectionEngine(cfg(interval=4), "accuracy", True)
    out = eng.ingest_many(constant_results([1.0] * 6))
    assert [(i.first_batch, i.last_batch) for i in out.intervals] == [(0, 3)]
    assert [(i.first_batch, i.last_batch, i.n_samples) for i in eng.finish()] == [(4, 5, 2 * BS)]
    assert eng.finish() == []


@pytest.mark.parametrize("detector", sorted(DETECTOR_REGISTRY))
def test_engine_state_round_trip(detector: str) -> None:
    results = bernoulli_results([(0, 0.97), (30 * BS, 0.4)], n_batches=45, seed=7)
    params = {"period": 1000} if detector == "periodic" else {}
    c = cfg(detector=detector, params=params)
    eng = DetectionEngine(c, "accuracy", True, seed=3)
    head = eng.ingest_many(results[:25])
    version = 0
    while head.events:  # an early (false) alarm: resume as the coordinator would
        version += 1
        eng.resume_after_update(head.events[-1].batch_id + 1, version)
        head = eng.ingest_many(revalue(results[head.events[-1].batch_id + 1 : 25], version))
    results = revalue(results, version)
    eng.ingest_many(results[27:30])  # 27..29 wait in the buffer
    assert eng.buffered == [27, 28, 29]
    state = eng.state_dict()
    restored = DetectionEngine(c, "accuracy", True, seed=3)
    restored.load_state_dict(state)
    copy = pickle.loads(pickle.dumps(eng))
    tails = [e.ingest_many(results[25:27] + results[30:]) for e in (eng, restored, copy)]
    assert tails[0].events or detector == "never"  # the change is detected
    ref = _as_dicts(tails[0].events, tails[0].intervals)
    assert all(_as_dicts(t.events, t.intervals) == ref for t in tails[1:])
    assert eng.stats == restored.stats == copy.stats


def test_start_batch() -> None:
    eng = DetectionEngine(cfg(interval=2), "accuracy", True, start_batch=3)
    res = constant_results([1.0] * 6)
    out = eng.ingest_many(res)
    assert eng.stats["duplicates"] == 3 and out.next_batch == 6
    assert [(i.first_batch, i.last_batch) for i in out.intervals] == [(3, 4)]


def test_unknown_detector_in_engine_config() -> None:
    with pytest.raises(ConfigError, match="did you mean 'kswin'"):
        DetectionEngine(cfg(detector="kswim"), "accuracy", True)
