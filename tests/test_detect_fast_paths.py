"""The detectors' tight-loop fast paths (``update_many``) give River's own alarms, bit for bit."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from river import drift
from river.drift import binary
from scipy.stats import ks_2samp

from raydrift.detection import calibration as calib
from raydrift.detection import make_detector
from raydrift.detection.base import feed_with_warnings
from raydrift.detection.ddm import DDMDetector
from raydrift.detection.hddm_a import HDDMADetector
from raydrift.detection.page_hinkley import PageHinkleyDetector
from raydrift.detection.two_sample import _ks_statistics, ks_window_statistics, ranks_right

PH_PARAMS: list[dict[str, Any]] = [
    {},
    {"threshold": 5.0, "mode": "up", "min_instances": 50},
    {"threshold": 3.0, "mode": "down", "delta": 0.0, "alpha": 1.0},
    {"threshold": 2.0, "delta": 0.05, "alpha": 0.99, "min_instances": 1},
]


def _stream(seed: int, n: int = 6000) -> list[float]:
    """0/1 errors and real values, with mean shifts both ways, so that every mode alarms."""
    rng = np.random.default_rng(seed)
    p = np.repeat(rng.uniform(0.02, 0.6, size=6), n // 6)
    if seed % 2:
        return (rng.random(p.size) < p).astype(np.float64).tolist()
    return (p * 4 + rng.normal(0.0, 1.0, size=p.size)).tolist()


def _river_alarms(river: Any, values: list[float]) -> list[int]:
    alarms = []
    for i, x in enumerate(values):
        river.update(x)
        if river.drift_detected:
            alarms.append(i)
    return alarms


def _fast_alarms(det: Any, values: list[float], chunk: int) -> list[int]:
    """Alarms of ``update_many`` fed in chunks of ``chunk`` values, resumed after each alarm."""
    alarms, pos = [], 0
    while pos < len(values):
        part = values[pos : pos + chunk]
        j = det.update_many(part)
        if j < 0:
            pos += len(part)
        else:
            alarms.append(pos + j)
            pos += j + 1
    return alarms


def _ph_state(river: Any) -> tuple[float, ...]:
    m = river._x_mean
    return (m.n, m._mean, river._sum_increase, river._sum_decrease, river._min_increase, river._max_decrease)


@pytest.mark.parametrize("params", PH_PARAMS)
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_page_hinkley_fast_path_alarms_where_river_does(params: dict[str, Any], seed: int) -> None:
    values = _stream(seed)
    river = drift.PageHinkley(**params)
    expected = _river_alarms(river, values)
    for chunk in (1, 64, 1000):
        det = PageHinkleyDetector(**params)
        assert _fast_alarms(det, values, chunk) == expected
        assert _ph_state(det.river) == _ph_state(river)  # the same floats, not close ones
        assert det.drift_detected == river.drift_detected


def test_the_streams_make_every_setting_alarm_several_times() -> None:
    """Guards the test above: identical alarm lists must not be trivially empty."""
    for params in PH_PARAMS:
        counts = [len(_river_alarms(drift.PageHinkley(**params), _stream(s))) for s in range(4)]
        assert min(counts) >= 1 and sum(counts) >= 6, (params, counts)


def test_page_hinkley_fast_path_resumes_from_a_loaded_state() -> None:
    """A detector restored from its state continues exactly as the one that was saved."""
    values = _stream(5)
    a = make_detector("page_hinkley", {"threshold": 3.0})
    a.update_many(values[:2500])
    b = make_detector("page_hinkley", {"threshold": 3.0})
    b.load_state_dict(a.state_dict())
    assert _fast_alarms(a, values[2500:], 64) == _fast_alarms(b, values[2500:], 64)
    assert _ph_state(a.river) == _ph_state(b.river)  # type: ignore[attr-defined]


def test_page_hinkley_fast_path_falls_back_on_other_internals() -> None:
    """A River object without the attributes the loop reads is fed through its public update."""

    class OtherPH(drift.PageHinkley):
        pass

    det = PageHinkleyDetector(threshold=3.0)
    det._river = OtherPH(threshold=3.0)
    values = _stream(2)
    assert _fast_alarms(det, values, 64) == _river_alarms(drift.PageHinkley(threshold=3.0), values)


def test_page_hinkley_fast_path_does_not_call_rivers_update() -> None:
    """The loop is really taken (the comparisons above would also pass through the public loop)."""
    det = PageHinkleyDetector(threshold=3.0)

    def boom(x: float) -> None:
        raise AssertionError("River's update called")

    det.river.update = boom
    assert _fast_alarms(det, _stream(1), 64)


# --- ddm: River's DDM arithmetic in one loop, warning zones tracked on the way ------------------------

DDM_PARAMS: list[dict[str, Any]] = [
    {},
    {"warm_start": 50, "warning_threshold": 1.5, "drift_threshold": 2.5},
    {"warm_start": 0, "warning_threshold": 1.0, "drift_threshold": 1.2},
    {"warm_start": 5, "warning_threshold": 0.5, "drift_threshold": 4.0},
]


def _binary_stream(seed: int, n: int = 6000) -> list[float]:
    """0/1 errors (even seeds) or error probabilities in [0, 1] (odd seeds) with rate shifts both ways."""
    rng = np.random.default_rng(seed)
    p = np.repeat(rng.uniform(0.02, 0.6, size=6), n // 6)
    if seed % 2:
        return np.clip(p + rng.normal(0.0, 0.2, size=p.size), 0.0, 1.0).tolist()
    return (rng.random(p.size) < p).astype(np.float64).tolist()


def _warning_run(feed: Any, values: list[float], chunk: int) -> tuple[list[int], list[int]]:
    """``(alarms, positions where a warning zone opened)`` of ``feed(part, in_zone)`` (an
    ``update_many_warnings``) over ``values`` in chunks of ``chunk``, resumed after each alarm; the
    zone openings located by chunk (the first value of the chunk that opened them)."""
    alarms, opened_at, pos, in_zone = [], [], 0, False
    while pos < len(values):
        part = values[pos : pos + chunk]
        j, opened, in_zone = feed(part, in_zone)
        opened_at += [pos] * opened
        if j < 0:
            pos += len(part)
        else:
            alarms.append(pos + j)
            pos += j + 1
    return alarms, opened_at


def _ddm_state(river: Any) -> tuple[Any, ...]:
    m = river._p
    return (m.n, m._mean, river._p_min, river._s_min, river._ps_min, river._warning_detected, river._drift_detected)


def _river_ddm_feed(river: Any) -> Any:
    return lambda part, in_zone: feed_with_warnings(river, river.update, part, in_zone)


@pytest.mark.parametrize("params", DDM_PARAMS)
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_ddm_fast_path_alarms_and_warns_where_river_does(params: dict[str, Any], seed: int) -> None:
    values = _binary_stream(seed)
    for chunk in (1, 64, 1000):
        river = binary.DDM(**params)
        expected = _warning_run(_river_ddm_feed(river), values, chunk)
        det = DDMDetector(**params)
        assert _warning_run(det.update_many_warnings, values, chunk) == expected
        assert _ddm_state(det.river) == _ddm_state(river)  # the same floats, not close ones
        assert det.drift_detected == river.drift_detected and det.warning_detected == river.warning_detected
        plain = DDMDetector(**params)
        assert _fast_alarms(plain, values, chunk) == expected[0]  # update_many: the same alarms


def test_the_binary_streams_make_every_ddm_setting_alarm_and_warn() -> None:
    """Guards the test above: identical alarm and warning lists must not be trivially empty."""
    for params in DDM_PARAMS:
        runs = [_warning_run(_river_ddm_feed(binary.DDM(**params)), _binary_stream(s), 64) for s in range(4)]
        assert min(len(a) for a, _ in runs) >= 1 and sum(len(a) for a, _ in runs) >= 6, (params, runs)
        assert sum(len(w) for _, w in runs) >= 4, (params, runs)


def test_ddm_fast_path_resumes_from_a_loaded_state() -> None:
    """A detector restored from its state continues exactly as the one that was saved."""
    values = _binary_stream(4)
    a = make_detector("ddm", {"warm_start": 10})
    a.update_many_warnings(values[:2500], False)
    b = make_detector("ddm", {"warm_start": 10})
    b.load_state_dict(a.state_dict())
    assert _warning_run(a.update_many_warnings, values[2500:], 64) == _warning_run(b.update_many_warnings, values[2500:], 64)
    assert _ddm_state(a.river) == _ddm_state(b.river)  # type: ignore[attr-defined]


def test_ddm_fast_path_falls_back_on_other_internals() -> None:
    """A River object of another class is fed through its public update."""

    class OtherDDM(binary.DDM):
        pass

    det = DDMDetector(warm_start=10)
    det._river = OtherDDM(warm_start=10)
    values = _binary_stream(2)
    expected = _warning_run(_river_ddm_feed(binary.DDM(warm_start=10)), values, 64)
    assert _warning_run(det.update_many_warnings, values, 64) == expected


def test_ddm_fast_path_does_not_call_rivers_update() -> None:
    """The loop is really taken (the comparisons above would also pass through the public loop)."""
    det = DDMDetector(warm_start=10)

    def boom(x: float) -> None:
        raise AssertionError("River's update called")

    det.river.update = boom
    assert _warning_run(det.update_many_warnings, _binary_stream(2), 64)[0]


# --- hddm_a: River's HDDM_A arithmetic in one loop ---------------------------------------------------

HDDM_A_PARAMS: list[dict[str, Any]] = [
    {},
    {"drift_confidence": 0.0001, "two_sided_test": True},
    {"drift_confidence": 0.01, "warning_confidence": 0.05},
    {"drift_confidence": 0.005, "warning_confidence": 0.02, "two_sided_test": True},
]


def _hddm_a_state(river: Any) -> tuple[Any, ...]:
    z, lo, hi = river._z, river._x_min, river._x_max
    return (z.n, z._mean, lo.n, lo._mean, hi.n, hi._mean, river._warning_detected, river._drift_detected)


@pytest.mark.parametrize("params", HDDM_A_PARAMS)
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_hddm_a_fast_path_alarms_and_warns_where_river_does(params: dict[str, Any], seed: int) -> None:
    values = _binary_stream(seed)
    for chunk in (1, 64, 1000):
        river = binary.HDDMA(**params)
        expected = _warning_run(_river_ddm_feed(river), values, chunk)
        det = HDDMADetector(**params)
        assert _warning_run(det.update_many_warnings, values, chunk) == expected
        assert _hddm_a_state(det.river) == _hddm_a_state(river)  # the same floats, not close ones
        plain = HDDMADetector(**params)
        assert _fast_alarms(plain, values, chunk) == expected[0]


def test_the_binary_streams_make_every_hddm_a_setting_alarm_and_warn() -> None:
    for params in HDDM_A_PARAMS:
        runs = [_warning_run(_river_ddm_feed(binary.HDDMA(**params)), _binary_stream(s), 64) for s in range(4)]
        assert min(len(a) for a, _ in runs) >= 1 and sum(len(a) for a, _ in runs) >= 6, (params, runs)
        assert sum(len(w) for _, w in runs) >= 4, (params, runs)


def test_hddm_a_fast_path_resumes_from_a_loaded_state_and_falls_back() -> None:
    values = _binary_stream(4)
    a = make_detector("hddm_a", {"two_sided_test": True})
    a.update_many_warnings(values[:2500], False)
    b = make_detector("hddm_a", {"two_sided_test": True})
    b.load_state_dict(a.state_dict())
    assert _warning_run(a.update_many_warnings, values[2500:], 64) == _warning_run(b.update_many_warnings, values[2500:], 64)
    assert _hddm_a_state(a.river) == _hddm_a_state(b.river)  # type: ignore[attr-defined]

    class OtherHDDMA(binary.HDDMA):
        pass

    det = HDDMADetector()
    det._river = OtherHDDMA()
    expected = _warning_run(_river_ddm_feed(binary.HDDMA()), values, 64)
    assert _warning_run(det.update_many_warnings, values, 64) == expected


def test_hddm_a_fast_path_does_not_call_rivers_update() -> None:
    det = HDDMADetector(two_sided_test=True)

    def boom(x: float) -> None:
        raise AssertionError("River's update called")

    det.river.update = boom
    assert _warning_run(det.update_many_warnings, _binary_stream(2), 64)[0]


# --- ks calibration: window statistics from ranks, streams followed incrementally ------------------


@pytest.mark.parametrize(("n", "m", "d"), [(50, 50, 1), (20, 30, 3), (200, 200, 16), (7, 13, 2)])
def test_ks_window_statistics_are_scipys(n: int, m: int, d: int) -> None:
    """The calibration's KS statistics (ranks against the sorted reference, no sort per window) are
    scipy's ``ks_2samp`` statistics, and bit for bit the detector's own test's."""
    rng = np.random.default_rng(n * m + d)
    ref, x = rng.standard_normal((n, d)), rng.standard_normal((6 * m, d))
    starts = np.array([0, 3, m, 2 * m + 1, 5 * m])
    fast = ks_window_statistics(ref, x, starts, m)
    for row, s in zip(fast, starts.tolist(), strict=True):
        w = x[s : s + m]
        scipy_stats = [ks_2samp(ref[:, f], w[:, f]).statistic for f in range(d)]
        np.testing.assert_allclose(row, scipy_stats, rtol=0, atol=1e-12)
        assert np.array_equal(row, _ks_statistics(ref, w))


def test_ks_exact_statistic_handles_ties_as_scipy() -> None:
    """The detector's test (sorted pooled sample) on discrete values with many ties."""
    rng = np.random.default_rng(3)
    for _ in range(20):
        a, b = rng.integers(0, 5, (40, 2)).astype(float), rng.integers(0, 6, (25, 2)).astype(float)
        expected = [ks_2samp(a[:, f], b[:, f]).statistic for f in range(2)]
        np.testing.assert_allclose(_ks_statistics(a, b), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["ks", "mmd"])
def test_a_simulated_stream_run_in_pieces_is_the_stream_run_at_once(name: str) -> None:
    """Following a stream longer computes only its new tests, and they are those of one long run."""
    params: dict[str, Any] = {"reference_size": 30, "window_size": 20, "test_every": 7, "ert": 300}
    if name == "mmd":
        params |= {"permutations": 99, "seed": 2}
    det = make_detector(name, params)
    start = det._simulate(2)  # type: ignore[attr-defined]
    whole = start(np.random.default_rng(11)).more(40)
    pieces = start(np.random.default_rng(11))
    parts = np.concatenate([pieces.more(1), pieces.more(9), pieces.more(30)])
    assert np.array_equal(whole, parts)
    # and the p-values of the detector's own test on those windows, one by one after a restart
    xs = np.random.default_rng(11).standard_normal((30 + 20 + 39 * 7, 2))
    det.reset()  # type: ignore[attr-defined]
    one_by_one = [det._test(xs[:30], xs[30 + 7 * k : 50 + 7 * k])[1] for k in range(40)]  # type: ignore[attr-defined]
    assert np.array_equal(whole, one_by_one)


def test_threshold_solved_on_first_alarm_candidates_is_the_full_solution() -> None:
    """Solving on the first-alarm candidates gives the first alarms of the full matrix at every
    threshold (checked against the plain computation on random discrete p-values)."""
    rng = np.random.default_rng(0)
    p = rng.integers(1, 40, (200, 300)) / 40.0
    p[:50, 250:] = calib._NOT_RUN  # streams that ran fewer tests
    lengths = np.where(np.arange(200) < 50, 250, 300)
    coins = rng.random(p.shape)
    p_c, coins_c, index = calib.first_alarm_candidates(p, coins)
    assert p_c.shape[1] < p.shape[1] // 4
    levels = np.unique(p[p <= 1.0])
    for tau in (0.0, 0.3, 1.5, 4.9, 12.0, 38.9):
        full = calib.alarms_at(p, coins, levels, tau)
        cand = calib.alarms_at(p_c, coins_c, levels, tau)
        assert np.array_equal(full.any(axis=1), cand.any(axis=1))
        got = calib.mean_run_length(cand, lengths, 100, 10, index)
        assert got == calib.mean_run_length(full, lengths, 100, 10)


@pytest.mark.parametrize("n", [2, 3, 7, 200])
def test_ranks_by_grid_are_searchsorted(n: int) -> None:
    """The grid ranking equals a binary search, with ties, values outside the range and huge ones."""
    rng = np.random.default_rng(n)
    for t in range(12):
        ref = np.sort(rng.standard_normal(n) * rng.uniform(0.01, 100.0))
        if t % 3 == 0:
            ref = np.sort(rng.integers(0, 4, n).astype(float))
        x = np.concatenate([rng.standard_normal(500) * 3, ref, rng.integers(-1, 6, 50), [1e308, -1e308]])
        assert np.array_equal(ranks_right(ref, x), np.searchsorted(ref, x, side="right"))
