"""False alarms set by expected run time (``ert``) for the two-sample window detectors, the JSON
calibration cache, and the change point they locate at an alarm."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from raydrift.config import DriftDetectionConfig
from raydrift.detection import BatchResult, DetectionEngine, InvalidParam, make_detector, resolve_detector
from raydrift.detection import calibration as calib


def run_lengths(det: object, xs: np.ndarray) -> list[int]:
    """Values from each (re)start to the alarm, the alarming value included."""
    runs, last = [], 0
    for i, x in enumerate(xs):
        det.update(x)  # type: ignore[attr-defined]
        if det.drift_detected:  # type: ignore[attr-defined]
            runs.append(i + 1 - last)
            last = i + 1
    return runs


def test_ks_mean_run_length_is_the_requested_ert() -> None:
    """On a stationary stream (uniform, not the Gaussian of the simulation: the KS p-value depends on
    ranks only) the mean of about 250 run lengths is within 20% of ``ert``; with ``alpha`` set instead
    the run lengths follow no request, and nearly every one would end at the first test."""
    ert = 1000
    det = make_detector("ks", {"reference_size": 50, "window_size": 50, "test_every": 10, "ert": ert})
    xs = np.random.default_rng(2024).random((260_000, 1))
    runs = run_lengths(det, xs)
    assert len(runs) > 200
    assert abs(np.mean(runs) / ert - 1.0) < 0.2, (np.mean(runs), len(runs))
    assert np.mean(np.array(runs) == 100) < 0.1  # not at the first possible test after each restart
    cal = det.calibration  # type: ignore[attr-defined]
    assert cal is not None and abs(cal[2] / ert - 1.0) < 0.02  # the simulation solved it


@pytest.mark.parametrize("name", ["ks", "mmd"])
def test_the_simulation_is_the_detector(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The calibration's p-values and coins, replayed through the detector on the same streams, give
    the same run lengths: the simulation models this very detector (windows, cadence, permutations,
    restart, the randomised decision at the threshold)."""
    monkeypatch.setattr(calib, "CALIBRATION_STREAMS", 30)
    params = {"reference_size": 30, "window_size": 20, "test_every": 5, "ert": 200}
    if name == "mmd":
        params |= {"permutations": 199, "seed": 4}
    det = make_detector(name, params)
    cal = det.calibrate(2)  # type: ignore[attr-defined]
    simulate = det._simulate(2)  # type: ignore[attr-defined]
    for i in range(8):
        tests = 30
        p = simulate(np.random.default_rng([5, i])).more(tests)
        rng = np.random.default_rng([5, i])
        xs = rng.standard_normal((30 + 20 + (tests - 1) * 5, 2))
        det.reset()  # type: ignore[attr-defined]
        alarm = next((t + 1 for t, x in enumerate(xs) if (det.update(x), det.drift_detected)[1]), None)  # type: ignore[attr-defined]
        below = np.flatnonzero(p < cal.alpha)
        at = np.flatnonzero(p == cal.alpha)
        first_below = 50 + 5 * int(below[0]) if below.size else None
        if not at.size or (below.size and at[0] > below[0]):  # no coin decides it: exactly the same
            assert alarm == first_below, (i, alarm, first_below)
        else:  # a coin at the threshold may end it earlier, never later
            assert alarm is not None or first_below is None
            assert first_below is None or alarm is not None and alarm <= first_below


def test_calibration_cache_is_plain_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(calib, "CALIBRATION_STREAMS", 50)
    monkeypatch.setattr(calib, "_MEMORY", {})
    params = {"reference_size": 20, "window_size": 20, "test_every": 10, "ert": 400}
    det = make_detector("ks", {**params, "calibration_cache": str(tmp_path)})
    cal = det.calibrate(1)  # type: ignore[attr-defined]
    (path,) = tmp_path.glob("ks-ert-*.json")
    doc = json.loads(path.read_text())
    assert doc["alpha"] == cal.alpha and doc["key"] == cal.key
    calls = []
    monkeypatch.setattr(calib, "_MEMORY", {})
    monkeypatch.setattr(calib, "_solve", lambda *a, **k: calls.append(a) or cal)
    assert make_detector("ks", {**params, "calibration_cache": str(tmp_path)}).calibrate(1) == cal  # type: ignore[attr-defined]
    assert calls == []  # read back from the file, not simulated
    path.write_text('{"key": "another setting", "alpha": 0.5}')  # damaged or foreign: recomputed
    monkeypatch.setattr(calib, "_MEMORY", {})
    make_detector("ks", {**params, "calibration_cache": str(tmp_path)}).calibrate(1)  # type: ignore[attr-defined]
    assert len(calls) == 1
    assert calib.Calibration.from_json("not json", cal.key) is None


def test_without_a_cache_dir_the_default_one_serves_the_next_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RAYDRIFT_CACHE_DIR", str(tmp_path))
    assert calib.default_cache_dir() == str(tmp_path / "calibration")
    monkeypatch.setattr(calib, "CALIBRATION_STREAMS", 50)
    monkeypatch.setattr(calib, "_MEMORY", {})
    params = {"reference_size": 20, "window_size": 20, "test_every": 10, "ert": 400}
    cal = make_detector("ks", params).calibrate(1)  # type: ignore[attr-defined]
    assert len(list((tmp_path / "calibration").glob("ks-ert-*.json"))) == 1
    calls = []
    monkeypatch.setattr(calib, "_MEMORY", {})  # as a new process (a Ray actor, the next run) starts
    monkeypatch.setattr(calib, "_solve", lambda *a, **k: calls.append(a) or cal)
    assert make_detector("ks", params).calibrate(1) == cal and calls == []  # type: ignore[attr-defined]
    monkeypatch.setenv("RAYDRIFT_CACHE_DIR", "")  # set empty: memory only
    assert calib.default_cache_dir() is None
    monkeypatch.delenv("RAYDRIFT_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert calib.default_cache_dir() == str(tmp_path / "xdg" / "raydrift" / "calibration")


@pytest.mark.parametrize(
    ("name", "params", "param"),
    [
        ("ks", {"reference_size": 200, "window_size": 200, "ert": 400}, "ert"),
        ("ks", {"ert": float("inf")}, "ert"),
        ("mmd", {"ert": 1e6, "permutations": 99}, "ert"),
        ("ks", {"ert": 5000, "calibration_cache": ""}, "calibration_cache"),
    ],
)
def test_ert_settings_that_cannot_work_are_refused(name: str, params: dict, param: str) -> None:
    with pytest.raises(InvalidParam) as err:
        resolve_detector(name)(**params)
    assert err.value.param == param


@pytest.mark.parametrize("name", ["ks", "mmd"])
@pytest.mark.parametrize("change", [430, 467, 515])
def test_the_event_locates_the_change_not_the_schedule(name: str, change: int) -> None:
    """A shift of the features' mean at ``change``: the label-free event's change point is where the
    data changed (within 15 samples), wherever that falls in the detector's test schedule."""
    rng = np.random.default_rng(change)
    n = 1200
    feats = rng.normal(size=(n, 3)).astype(np.float32)
    feats[change:, 1] += 1.5
    cfg = DriftDetectionConfig(
        label_free={
            "signal": "features",
            "detector": name,
            "params": {"reference_size": 200, "window_size": 100, "test_every": 20},
            "use": "instead",
        }
    )
    eng = DetectionEngine(cfg, "accuracy", higher_is_better=True)
    results = [
        BatchResult(b, 0, 0, np.ones(50, np.float32), {}, features=feats[i : i + 50])
        for b, i in enumerate(range(0, n, 50))
    ]
    events = eng.ingest_many(results).events
    assert events and events[0].signal == "label_free:features"
    assert abs(events[0].change_sample_index - 1 - change) <= 15, events[0]
    assert events[0].change_batch_id == (events[0].change_sample_index - 1) // 50
