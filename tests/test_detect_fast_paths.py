"""The detectors' tight-loop fast paths (``update_many``) give River's own alarms, bit for bit."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from river import drift

from raydrift.detection import make_detector
from raydrift.detection.page_hinkley import PageHinkleyDetector

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
