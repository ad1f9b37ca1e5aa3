"""CUSUM and EWMA (implemented in raydrift) against analytic results."""

from __future__ import annotations

import math

import numpy as np
import pytest

from raydrift.detection.base import estimate_mean_std
from raydrift.detection.cusum import CUSUMDetector
from raydrift.detection.ewma import EWMADetector


def _run_length(det: CUSUMDetector | EWMADetector, xs: np.ndarray) -> int | None:
    for t, x in enumerate(xs.tolist(), start=1):
        det.update(x)
        if det.drift_detected:
            return t
    return None


def _mean_run_length(make: type, params: dict, shift: float, runs: int, seed: int, cap: int) -> float:
    rng = np.random.default_rng(seed)
    lengths = []
    for _ in range(runs):
        rl = _run_length(make(**params), rng.normal(shift, 1.0, size=cap))
        lengths.append(rl if rl is not None else cap)
    return float(np.mean(lengths))


# ---------------------------------------------------------------------------------------------------
# CUSUM


@pytest.mark.parametrize(("shift", "k", "h"), [(1.0, 0.5, 5.0), (2.0, 0.5, 5.0), (3.5, 1.0, 8.0)])
def test_cusum_step_alarm_time_is_exact(shift: float, k: float, h: float) -> None:
    """After a step of ``shift`` sigmas, S+ grows by (shift - k) per value: alarm at the first t with t (shift - k) > h."""
    det = CUSUMDetector(allowance=k, threshold=h, warning_threshold=h / 2, target=0.0, sigma=1.0)
    xs = np.concatenate([np.zeros(50), np.full(50, shift)])
    expected = math.floor(h / (shift - k)) + 1
    assert _run_length(det, xs) == 50 + expected


def test_cusum_scale_invariance() -> None:
    """Values are standardized: the same stream in other units alarms at the same time."""
    xs = np.concatenate([np.zeros(30), np.full(30, 2.0)])
    a = CUSUMDetector(threshold=5.0, warning_threshold=2.0, target=0.0, sigma=1.0)
    b = CUSUMDetector(threshold=5.0, warning_threshold=2.0, target=10.0, sigma=0.01)
    assert _run_length(a, xs) == _run_length(b, 10.0 + 0.01 * xs)


def test_cusum_arl_matches_siegmund() -> None:
    """N(0, 1) values, k = 0.5, h = 4: in-control ARL ~ 336, ARL at a 1-sigma shift ~ 8.4 (Siegmund)."""
    params = {"allowance": 0.5, "threshold": 4.0, "warning_threshold": 2.0, "target": 0.0, "sigma": 1.0}
    b = 4.0 + 1.166

    def siegmund(delta: float) -> float:
        return (math.exp(-2 * delta * b) + 2 * delta * b - 1) / (2 * delta**2)

    arl0 = _mean_run_length(CUSUMDetector, params, 0.0, runs=400, seed=0, cap=5000)
    arl1 = _mean_run_length(CUSUMDetector, params, 1.0, runs=400, seed=1, cap=5000)
    assert arl0 == pytest.approx(siegmund(-0.5), rel=0.15)  # 338
    assert arl1 == pytest.approx(siegmund(0.5), rel=0.1)  # 8.3


def test_cusum_direction() -> None:
    xs = np.concatenate([np.zeros(20), np.full(20, -2.0)])
    up = CUSUMDetector(allowance=0.5, threshold=5.0, warning_threshold=2.0, target=0.0, sigma=1.0)
    both = CUSUMDetector(
        allowance=0.5, threshold=5.0, warning_threshold=2.0, target=0.0, sigma=1.0, mode="both"
    )
    assert _run_length(up, xs) is None
    assert _run_length(both, xs) == 24


def test_cusum_burn_in_estimates_and_warning() -> None:
    det = CUSUMDetector(min_instances=98, threshold=10.0, warning_threshold=3.0)
    for _ in range(98):
        det.update(0.0)  # no error in the burn-in: Laplace's rule, p = 1/100
        assert not det.drift_detected
    assert det._mu == pytest.approx(0.01) and det._sd == pytest.approx(math.sqrt(0.01 * 0.99))
    det.update(1.0)  # z = 0.99 / 0.0995 = 9.95; S+ = 9.7 > 3: warning, not yet drift
    assert det.warning_detected and not det.drift_detected
    det.update(1.0)
    assert det.drift_detected and not det.warning_detected
    assert estimate_mean_std(3, 6.0, 14.0, binary=False, min_sigma=5.0) == (2.0, 5.0)


# ---------------------------------------------------------------------------------------------------
# EWMA


@pytest.mark.parametrize(("lam", "L", "shift"), [(0.1, 3.0, 1.0), (0.2, 2.5, 1.2), (0.05, 4.0, 2.0)])
def test_ewma_step_alarm_time_is_exact(lam: float, L: float, shift: float) -> None:
    """Noise-free step at t0: Z_t = shift (1 - (1 - lam)^(t - t0)); limit L sqrt(lam / (2 - lam) (1 - (1 - lam)^(2t)))."""
    t0 = 40
    det = EWMADetector(smoothing=lam, threshold=L, warning_threshold=L / 2, target=0.0, sigma=1.0)
    xs = np.concatenate([np.zeros(t0), np.full(400, shift)])
    t = np.arange(1, xs.size + 1)
    z = np.where(t > t0, shift * (1 - (1 - lam) ** (t - t0)), 0.0)
    limit = L * np.sqrt(lam / (2 - lam) * (1 - (1 - lam) ** (2 * t)))
    assert (z > limit).any()
    expected = int(t[np.argmax(z > limit)])
    assert _run_length(det, xs) == expected


def test_ewma_arl_matches_lucas_saccucci() -> None:
    """lam = 0.1, L = 2.814, two-sided, asymptotic limits: in-control ARL ~ 500 (Lucas & Saccucci 1990)."""
    params = {
        "smoothing": 0.1,
        "threshold": 2.814,
        "warning_threshold": 2.0,
        "target": 0.0,
        "sigma": 1.0,
        "time_varying": False,
        "mode": "both",
    }
    arl0 = _mean_run_length(EWMADetector, params, 0.0, runs=400, seed=2, cap=10000)
    assert arl0 == pytest.approx(500, rel=0.15)
    # and a 1-sigma shift is detected after about 10.3 values (same table)
    arl1 = _mean_run_length(EWMADetector, params, 1.0, runs=400, seed=3, cap=10000)
    assert arl1 == pytest.approx(10.3, rel=0.1)


def test_ewma_statistic_has_unit_variance_in_control() -> None:
    """With exact limits the standardized statistic (Z_t - target) / sigma_Z(t) has variance 1 at every t."""
    rng = np.random.default_rng(4)
    stats = []
    for _ in range(2000):
        det = EWMADetector(
            smoothing=0.3, threshold=50.0, warning_threshold=40.0, target=0.0, sigma=2.0, mode="both"
        )
        for x in rng.normal(0.0, 2.0, size=3).tolist():
            det.update(x)
        stats.append((det._z - 0.0) / det._sigma_z())
    assert np.var(stats) == pytest.approx(1.0, rel=0.1)


def test_ewma_direction_and_burn_in() -> None:
    down = np.concatenate([np.zeros(20), np.full(40, -2.0)])
    assert _run_length(EWMADetector(target=0.0, sigma=1.0), down) is None
    assert _run_length(EWMADetector(target=0.0, sigma=1.0, mode="both"), down) is not None
    det = EWMADetector(min_instances=50)
    rng = np.random.default_rng(0)
    xs = (rng.random(50) < 0.2).astype(float)
    for x in xs.tolist():
        det.update(x)
        assert not det.drift_detected
    p = (xs.sum() + 1) / 52
    assert det._mu == pytest.approx(p) and det._sd == pytest.approx(math.sqrt(p * (1 - p)))
