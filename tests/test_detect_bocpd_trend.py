"""bocpd_trend against an unpruned, unvectorised implementation that recomputes every segment's
Normal-inverse-gamma posterior from its values (batch formulas, matrix solves); its behaviour on trends."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from raydrift.detection.bocpd import BOCPDDetector
from raydrift.detection.bocpd_trend import TrendBOCPDDetector
from raydrift.detection.registry import make_detector


def _batch_predictive(x: float, ys: list[float], level: float, p: dict[str, float], beta0: float) -> float:
    """log p(x | the run's values ys) for a run with prior level ``level``, from the batch posterior."""
    lam0 = np.diag([p["prior_kappa"], p["prior_slope_kappa"]])
    mu0 = np.array([level, 0.0])
    n = len(ys)
    lam, mu, alpha, beta = lam0, mu0, p["prior_alpha"], beta0
    if n:
        X = np.column_stack([np.ones(n), np.arange(n, dtype=float)])
        y = np.asarray(ys)
        lam = lam0 + X.T @ X
        mu = np.linalg.solve(lam, lam0 @ mu0 + X.T @ y)
        alpha = p["prior_alpha"] + n / 2
        beta = beta0 + 0.5 * (y @ y + mu0 @ lam0 @ mu0 - mu @ lam @ mu)
    phi = np.array([1.0, float(n)])
    scale2 = beta / alpha * (1.0 + phi @ np.linalg.solve(lam, phi))
    return float(stats.t.logpdf(x, 2 * alpha, loc=phi @ mu, scale=math.sqrt(scale2)))


def _reference(xs: list[float], p: dict[str, float]) -> list[tuple[float, int | None]]:
    """(probability of a change since the start, values since the most probable change) after each
    value from the end of the burn-in on: the full run-length recursion, every run kept, no alarm."""
    b = int(p["burn_in"])
    slope, level0 = np.polyfit(np.arange(b, dtype=float), np.asarray(xs[:b]), 1)
    resid = np.asarray(xs[:b]) - (level0 + slope * np.arange(b))
    beta0 = p["prior_alpha"] * float(resid @ resid) / (b - 2)
    h = p["hazard"]
    logw = {0: 0.0}  # run start (0-based) -> log posterior
    out: list[tuple[float, int | None]] = []
    for i, x in enumerate(xs):
        if i > 0:
            joint = {}
            for s, lw in logw.items():
                level = level0 if s == 0 else xs[s - 1]
                joint[s] = lw + _batch_predictive(x, xs[s:i], level, p, beta0) + math.log1p(-h)
            joint[i] = math.log(h) + _batch_predictive(x, [], xs[i - 1], p, beta0)
            top = max(joint.values())
            z = top + math.log(sum(math.exp(v - top) for v in joint.values()))
            logw = {s: v - z for s, v in joint.items()}
        later = {s: v for s, v in logw.items() if s > 0}
        since = i - max(later, key=lambda s: (later[s], -s)) + 1 if later else None
        if i >= b - 1:
            out.append((1.0 - math.exp(logw[0]), since))
    return out


def _stream(seed: int) -> list[float]:
    rng = np.random.default_rng(seed)
    t = np.arange(120.0)
    x = 0.3 * t + rng.normal(0.0, 1.0, 120)
    x[70:] += 5.0 - 0.5 * (t[70:] - 70)  # a jump and a new slope
    return x.tolist()


PARAMS = [
    {"hazard": 0.01, "prior_kappa": 0.1, "prior_slope_kappa": 1.0, "prior_alpha": 1.0, "burn_in": 5},
    {"hazard": 0.001, "prior_kappa": 0.01, "prior_slope_kappa": 100.0, "prior_alpha": 1.0, "burn_in": 5},
    {"hazard": 0.05, "prior_kappa": 0.5, "prior_slope_kappa": 0.05, "prior_alpha": 2.0, "burn_in": 8},
]


@pytest.mark.parametrize("p", PARAMS)
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_the_unvectorised_recursion(p: dict[str, float], seed: int) -> None:
    xs = _stream(seed)
    det = TrendBOCPDDetector(threshold=1.0 - 1e-12, max_runs=500, **p)  # type: ignore[arg-type]
    got = []
    for i, x in enumerate(xs):
        det.update(x)
        if i >= p["burn_in"] - 1:
            got.append((det.change_probability, det.values_since_change))
        if det.drift_detected:
            break
    ref = _reference(xs, p)[: len(got)]
    assert len(got) > 60  # past the change at 70 (the alarm, if any, comes after it)
    for (pg, kg), (pr, kr) in zip(got, ref, strict=True):
        assert pg == pytest.approx(pr, abs=1e-9)
        assert kg == kr
    assert max(pg for pg, _ in got) > 0.99  # the change is seen


def test_restarts_on_the_values_since_the_change() -> None:
    xs = _stream(0)
    det = TrendBOCPDDetector()
    i = -1
    while not det.drift_detected:
        i += 1
        det.update(xs[i])
    k = det.values_since_change
    assert k is not None and 70 <= i < 80 and abs(i - k + 1 - 70) <= 2
    fresh = TrendBOCPDDetector()
    for x in xs[i - k + 1 : i + 1]:
        fresh.update(x)
    for x in xs[i + 1 :]:
        det.update(x)
        fresh.update(x)
        assert det.change_probability == fresh.change_probability
        assert det.drift_detected == fresh.drift_detected


def _alarms(det: object, xs: np.ndarray) -> list[int]:
    out = []
    for i, x in enumerate(xs):
        det.update(float(x))  # type: ignore[attr-defined]
        if det.drift_detected:  # type: ignore[attr-defined]
            out.append(i)
    return out


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e6])
def test_a_noisy_trend_is_no_change_but_a_kink_is(scale: float) -> None:
    rng = np.random.default_rng(3)
    t = np.arange(2000.0)
    trend = scale * (0.02 * t + rng.normal(0.0, 1.0, t.size))
    plain = _alarms(BOCPDDetector(model="normal", threshold=0.99), trend)
    assert len(plain) >= 10  # the i.i.d. segment model takes the trend for many level shifts
    assert _alarms(TrendBOCPDDetector(), trend) == []
    kink = trend + scale * np.where(t >= 1500, -0.1 * (t - 1500), 0.0)  # the slope turns from +0.02 to -0.08
    alarms = _alarms(TrendBOCPDDetector(), kink)
    assert alarms and 1500 <= alarms[0] < 1600


def test_prunes_to_max_runs_and_checks_its_params() -> None:
    det = TrendBOCPDDetector(max_runs=20)
    rng = np.random.default_rng(0)
    kept = []
    for x in rng.normal(0.0, 1.0, 500):
        det.update(float(x))
        kept.append(det.active_runs)
    assert max(kept) == 29 and min(kept[100:]) == 20  # pruned back to 20 when 20 + max(8, 10) are held
    for bad in ({"burn_in": 2}, {"prior_slope_kappa": 0.0}, {"hazard": 1.0}, {"threshold": 1.0}):
        with pytest.raises(Exception, match=next(iter(bad))):
            make_detector("bocpd_trend", bad)
