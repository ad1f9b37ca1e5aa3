"""BOCPD against an independent, unpruned implementation and analytic cases."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from scipy.special import betaln, gammaln

from raydrift.detection import bocpd_sim
from raydrift.detection.bocpd import BOCPDDetector, rate_grid
from raydrift.detection.bocpd_sim import BOCPDSetting, VectorBOCPD


def _log_ml(model: str, v: list[float], det: BOCPDDetector) -> float:
    """Log marginal likelihood of one segment, from its values (closed form, nothing incremental)."""
    x = np.asarray(v, dtype=np.float64)
    n = x.size
    if model == "bernoulli":
        a, b = det.prior_a, det.prior_b
        return float(betaln(a + x.sum(), b + n - x.sum()) - betaln(a, b))
    mu0, k0, a0, b0 = det._mu0, det.prior_kappa, det.prior_alpha, det._beta0
    kn, an = k0 + n, a0 + n / 2.0
    mean = x.mean() if n else 0.0
    bn = b0 + 0.5 * float(((x - mean) ** 2).sum()) + k0 * n * (mean - mu0) ** 2 / (2.0 * kn)
    return float(
        gammaln(an) - gammaln(a0) + a0 * math.log(b0) - an * math.log(bn) + 0.5 * math.log(k0 / kn) - n / 2 * math.log(2 * math.pi)
    )


def _reference(model: str, xs: list[float], det: BOCPDDetector) -> list[tuple[float, int]]:
    """(P(change since the start), values since the most probable later run's start) after each value,
    by Adams & MacKay's recursion over every run length, segment likelihoods recomputed from scratch."""
    h = det.hazard
    runs: list[tuple[int, float]] = []  # (start, log weight)
    out = []
    for t, _ in enumerate(xs):
        if not runs:
            runs = [(0, 0.0)]
            out.append((0.0, -1))
            continue
        new_runs = []
        for s, lw in runs:
            lp = _log_ml(model, xs[s : t + 1], det) - _log_ml(model, xs[s:t], det)
            new_runs.append((s, lw + lp + math.log1p(-h)))
        new_runs.append((t, math.log(h) + _log_ml(model, [xs[t]], det)))
        top = max(w for _, w in new_runs)
        z = top + math.log(sum(math.exp(w - top) for _, w in new_runs))
        runs = [(s, w - z) for s, w in new_runs]
        p_change = 1.0 - math.exp(runs[0][1])
        best = max(runs[1:], key=lambda r: r[1])[0]
        out.append((p_change, t + 1 - best))
    return out


@pytest.mark.parametrize("model", ["bernoulli", "normal"])
def test_matches_an_independent_implementation(model: str) -> None:
    rng = np.random.default_rng(1)
    if model == "bernoulli":
        xs = (rng.random(120) < np.where(np.arange(120) < 70, 0.1, 0.6)).astype(float).tolist()
    else:
        xs = np.concatenate([rng.normal(5.0, 2.0, 70), rng.normal(9.0, 2.0, 50)]).tolist()
    det = BOCPDDetector(model=model, hazard=0.02, threshold=0.999999999, max_runs=1000)
    ours = []
    for x in xs:
        det.update(x)
        ours.append((det.change_probability, det.values_since_change))
        if det.drift_detected:
            break  # it restarts from the change point after an alarm
    burn = 0 if model == "bernoulli" else det.burn_in
    prior = BOCPDDetector(model=model, hazard=0.02, threshold=0.5)  # the normal model's prior: the burn-in
    for x in xs[:burn]:
        prior.update(x)
    ref = _reference(model, xs[: len(ours)], prior)
    for t in range(max(2, burn), len(ours)):
        assert ours[t][0] == pytest.approx(ref[t][0], abs=1e-9), t
        assert ours[t][1] == ref[t][1], t
    assert len(ours) > 75 and ref[-1][0] > 0.99  # the comparison covers a detected change


def test_two_values_analytic() -> None:
    h = 0.1
    det = BOCPDDetector(model="bernoulli", hazard=h, threshold=0.99)
    det.update(1.0)
    assert det.change_probability == 0.0
    det.update(1.0)
    grow, new = (1 - h) * 2 / 3, h * 0.5  # P(x2 = 1 | x1 = 1) = (1 + 1) / (1 + 1 + 1); prior 1/2
    assert det.change_probability == pytest.approx(new / (grow + new))
    assert det.values_since_change == 1


def test_pruning_bounds_the_posterior() -> None:
    det = BOCPDDetector(model="normal", threshold=0.999, max_runs=30)
    rng = np.random.default_rng(0)
    for x in rng.normal(size=2000):
        det.update(float(x))
        assert det.active_runs <= 30 + 15
    assert det.active_runs >= 30


def test_locates_changes_and_continues_from_them() -> None:
    """Two changes 40 values apart: both found and located within a few values; after the first
    alarm the detector restarts from its change point, not after the alarm."""
    rng = np.random.default_rng(3)
    xs = np.concatenate([rng.normal(0, 1, 200), rng.normal(4, 1, 40), rng.normal(-2, 1, 200)])
    det = BOCPDDetector(model="normal", threshold=0.99)
    located = []
    for t, x in enumerate(xs):
        det.update(float(x))
        if det.drift_detected:
            located.append(t - det.values_since_change + 1)
    assert len(located) == 2
    assert abs(located[0] - 200) <= 2 and abs(located[1] - 240) <= 2


def test_auto_model_follows_the_domain() -> None:
    det = BOCPDDetector()
    assert det.resolved_model == "normal" and det.input_domain == "real"
    det.configure_for_domain("binary")
    assert det.resolved_model == "bernoulli"
    det.configure_for_domain("probability")
    assert det.resolved_model == "normal"
    assert BOCPDDetector(model="bernoulli").input_domain == "binary"


# --- ert: the threshold calibrated by the vectorised simulation ---------------------------------------


def _never(det: BOCPDDetector) -> BOCPDDetector:
    det._threshold = 1.1  # type: ignore[attr-defined]  # no alarm: follow the posterior alone
    return det


def _sim_probabilities(model: str, xs: np.ndarray, max_runs: int) -> tuple[np.ndarray, np.ndarray]:
    """Change probabilities and located change points of VectorBOCPD fed the rows of ``xs``."""
    det = BOCPDDetector(model=model, threshold=0.5, max_runs=max_runs)
    setting = BOCPDSetting(model, det.hazard, max_runs, 1.0, 1.0, 0.1, 1.0, det.burn_in, 0.2)
    v = VectorBOCPD(setting, xs.shape[0])
    b = det.burn_in if model == "normal" else 0
    p = list(v.start_normal(xs[:, :b]).T) if b else []
    since = [np.zeros(xs.shape[0], dtype=np.int64)] * b
    for j in range(b, xs.shape[1]):
        p.append(v.step(xs[:, j]))
        best = 1 + np.argmax(v.lw[:, 1 : v.k], axis=1) if v.k > 1 else np.zeros(xs.shape[0], dtype=np.int64)
        since.append(v.t - v.start[np.arange(xs.shape[0]), best])
    return np.stack(p, axis=1), np.stack(since, axis=1)


@pytest.mark.parametrize("model", ["bernoulli", "normal"])
def test_the_vectorised_simulation_is_the_detector(model: str) -> None:
    """The same values through one detector each and through VectorBOCPD at once (pruning included:
    ``max_runs`` 30, 900 values): the same change probabilities to 1e-9, the same located change."""
    rng = np.random.default_rng(3)
    xs = (rng.random((4, 900)) < 0.2).astype(float) if model == "bernoulli" else rng.normal(2.0, 3.0, (4, 900))
    xs[1, 400:] = (rng.random(500) < 0.6) if model == "bernoulli" else xs[1, 400:] + 6.0  # a change
    p, since = _sim_probabilities(model, xs, 30)
    first = 2 if model == "bernoulli" else 5
    for i in range(xs.shape[0]):
        det = _never(BOCPDDetector(model=model, threshold=0.5, max_runs=30))
        for j, x in enumerate(xs[i]):
            det.update(float(x))
            if j + 1 >= first:
                assert det.change_probability == pytest.approx(p[i, j], abs=1e-9), (i, j)
                assert j < 5 or det.values_since_change == since[i, j], (i, j)
    assert p[1, 450] > 0.99 and p[0].max() < 0.99  # the comparison covers a change and a stationary stream


@pytest.mark.parametrize("model", ["bernoulli", "normal"])
def test_the_simulated_restart_is_the_detectors(model: str) -> None:
    """After an alarm the detector restarts on the values since the located change: the simulation
    replays that tail and continues: the same change probabilities after the alarm."""
    rng = np.random.default_rng(5)
    if model == "bernoulli":
        xs = (rng.random(600) < np.where(np.arange(600) < 300, 0.1, 0.5)).astype(float)
    else:
        xs = np.concatenate([rng.normal(0.0, 1.0, 300), rng.normal(2.5, 1.0, 300)])
    det = BOCPDDetector(model=model, threshold=0.99)
    after: list[float] = []
    alarm = since = None
    for t, x in enumerate(xs):
        det.update(float(x))
        if alarm is not None:
            after.append(det.change_probability)
            if det.drift_detected:
                break
        elif det.drift_detected:
            alarm, since = t, det.values_since_change
    assert alarm is not None and since is not None and len(after) > 100
    replay = xs[alarm - since + 1 : alarm + 1 + len(after)][None, :]
    p, _ = _sim_probabilities(model, replay, det.max_runs)
    np.testing.assert_allclose(p[0, since:], after, atol=1e-9)


@pytest.mark.parametrize("model", ["bernoulli", "normal"])
def test_ert_is_the_measured_mean_run_length(model: str) -> None:
    """``threshold`` null, ``ert`` 300: on 200,000 stationary values the mean of the run lengths (alarm
    to alarm, the detector restarting from each located change) is within 20% of ``ert`` (600+ runs;
    the stand-in posterior odds gave 0.32-1.94)."""
    ert, n = 300.0, 200_000
    rng = np.random.default_rng(11)
    xs = (rng.random(n) < 0.15).astype(float) if model == "bernoulli" else rng.normal(10.0, 4.0, n)
    det = BOCPDDetector(model=model, ert=ert)
    alarms = []
    for t, x in enumerate(xs.tolist()):
        det.update(x)
        if det.drift_detected:
            alarms.append(t)
    assert det.calibration is not None
    assert abs(det.calibration[1] / ert - 1.0) < 0.02  # the simulation solved it
    runs = np.diff(alarms)  # the first run (bernoulli: no alarm in the first rate_values) left out
    assert len(runs) > 500
    assert abs(runs.mean() / ert - 1.0) < 0.2, (runs.mean(), len(runs), det.calibration)
    if model == "bernoulli":
        assert alarms[0] >= det.rate_values - 1 and det.calibration[4] == rate_grid(float(xs[:500].sum()), 500)


def test_rate_grid() -> None:
    assert rate_grid(50, 500) == rate_grid(51, 500)  # about the same rate: the same calibration
    assert abs(rate_grid(50, 500) - 0.1) < 0.006 and rate_grid(0, 500) > 0.0 and rate_grid(500, 500) < 1.0
    assert rate_grid(10, 500) < rate_grid(50, 500) < rate_grid(250, 500) == 0.5


def test_calibration_cache_is_plain_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    setting = BOCPDSetting("normal", 0.01, 20, 1.0, 1.0, 0.1, 1.0, 5)
    cal = bocpd_sim.calibrate_bocpd(setting, 150.0, str(tmp_path), streams=60)
    (path,) = tmp_path.glob("bocpd-ert-*.json")
    doc = json.loads(path.read_text())
    assert doc["threshold"] == cal.threshold and doc["key"] == cal.key and 0.0 < cal.threshold < 1.0
    calls: list[int] = []
    real = bocpd_sim.simulate_threshold
    monkeypatch.setattr(bocpd_sim, "simulate_threshold", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(bocpd_sim, "_MEMORY", {})
    assert bocpd_sim.calibrate_bocpd(setting, 150.0, str(tmp_path), streams=60) == cal
    assert calls == []  # read back from the file, not simulated
    path.write_text('{"key": "another setting", "threshold": 0.5}')
    monkeypatch.setattr(bocpd_sim, "_MEMORY", {})
    assert bocpd_sim.calibrate_bocpd(setting, 150.0, str(tmp_path), streams=60).threshold == cal.threshold
    assert len(calls) == 1  # a foreign file is recomputed
    assert bocpd_sim.BOCPDCalibration.from_json("not json", cal.key) is None


def test_bernoulli_waits_for_its_rate_and_options_are_checked() -> None:
    det = BOCPDDetector(model="bernoulli", ert=200.0, rate_values=50)
    for _ in range(49):
        det.update(1.0)  # all ones: a change probability near 0 at any rate, but no calibration yet
        assert det.calibration is None and not det.drift_detected
    det.update(1.0)
    assert det.calibration is not None and det.calibration[4] == rate_grid(50, 50)
    with pytest.raises(ValueError):
        BOCPDDetector(rate_values=5)
    with pytest.raises(ValueError):
        BOCPDDetector(calibration_cache="")
