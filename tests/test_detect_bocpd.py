"""BOCPD against an independent, unpruned implementation and analytic cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import betaln, gammaln

from raydrift.detection.bocpd import BOCPDDetector


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
    prior = BOCPDDetector(model=model, hazard=0.02)  # the normal model's prior comes from the burn-in
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
