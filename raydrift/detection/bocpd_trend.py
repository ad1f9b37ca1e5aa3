"""Trend-aware BOCPD: Bayesian online change points between segments of local linear trend.

:mod:`raydrift.detection.bocpd` (Adams & MacKay 2007) assumes i.i.d. values within a segment; on a
metric that drifts steadily (a growing loss, a latency that creeps up) every stretch of the trend looks
like a new level and it alarms every few dozen values. This detector keeps the run-length recursion and
replaces the segment model by a Bayesian linear regression *in time*: within a segment that started at
index ``s``, ``x_t = a + b (t - s) + e_t`` with ``e_t ~ N(0, sigma^2)`` i.i.d. and a
Normal-inverse-gamma prior on ``(a, b, sigma^2)``:

* ``sigma^2 ~ InvGamma(prior_alpha, prior_alpha * v)``, ``v`` the residual variance of a least-squares
  line through the first ``burn_in`` values after a (re)start (so the detector is location-, scale- and
  trend-free);
* ``a | sigma^2 ~ N(m, sigma^2 / prior_kappa)`` with ``m`` the value just before the segment (for the
  restart's run: the burn-in line at its first value), so a new segment starts near where the old one
  ended, its jump measured in units of the noise;
* ``b | sigma^2 ~ N(0, sigma^2 / prior_slope_kappa)``, the slope in units of the noise per value.

Each run's posterior is kept by the exact recursive least-squares update of the Normal-inverse-gamma
(mean, covariance factor, ``beta``; ``alpha`` grows by one half per value), and its predictive for the
next value is a Student-t with ``2 alpha`` degrees of freedom. The segment model conditions on the
value before the segment only, so the recursion is still exact for the model it states. The rest is
:class:`~raydrift.detection.bocpd.BOCPDDetector`'s: constant ``hazard``, posterior pruned to ``max_runs``
runs (the restart's run always kept), an alarm when the probability of a change since the restart
reaches ``threshold``, the start of the most probable later run as the change point, and after an alarm
a restart on the values since that point.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
from scipy.special import gammaln

from raydrift.detection.base import NativeDetector, check_param
from raydrift.detection.bocpd import HISTORY, MAX_BURN_IN, RunLengthState

__all__ = ["TrendBOCPDDetector", "burn_in_line"]


def burn_in_line(values: list[float]) -> tuple[float, float]:
    """Least-squares line through ``values`` (at times 0, 1, ...): its value at time 0 and the residual
    variance (``n - 2`` degrees of freedom; 0 when the values lie on a line)."""
    v = np.asarray(values, dtype=np.float64)
    n = v.size
    tau = np.arange(n, dtype=np.float64)
    tc = tau - tau.mean()
    slope = float((tc * (v - v.mean())).sum() / (tc * tc).sum())
    intercept = float(v.mean() - slope * tau.mean())
    resid = v - intercept - slope * tau
    return intercept, float((resid * resid).sum() / max(1, n - 2))


class TrendBOCPDDetector(RunLengthState, NativeDetector):
    """BOCPD with a local-linear-trend segment model: alarms on a change of level or slope, not on a trend.

    Adams & MacKay's run-length recursion (see :mod:`raydrift.detection.bocpd`) whose segments are
    Bayesian linear regressions in time, with Normal-inverse-gamma priors scaled by the burn-in's
    residual noise (see :mod:`raydrift.detection.bocpd_trend`). It reports where the change happened
    (:attr:`values_since_change`) and how probable it is (:attr:`change_probability`), and continues from
    the located change point after an alarm. Two-sided.

    Parameters
    ----------
    hazard : float
        Prior probability of a change point after each value, in (0, 1).
    ert : float
        Expected run time between false alarms (> 1); sets ``threshold`` when that is null (for now by
        the posterior-odds stand-in :func:`odds_threshold`; not calibrated by simulation, unlike
        ``bocpd``'s).
    threshold : float or None
        Alarm when the posterior probability of a change since the last restart reaches it, in (0, 1);
        null: set from ``ert``. The default, 0.9999, and the priors' defaults were picked on 6 TCPD
        series (``docs/drift_detectors.md``, "Real-world change points").
    max_runs : int
        Run lengths kept in the posterior (>= 2): the cost of one update.
    prior_kappa : float
        Precision of a segment's starting level around the value before it, in units of the noise
        precision (> 0): its prior standard deviation is ``sigma / sqrt(prior_kappa)``.
    prior_slope_kappa : float
        Precision of a segment's slope around 0, in units of the noise precision per value squared
        (> 0): prior standard deviation ``sigma / sqrt(prior_slope_kappa)`` per value.
    prior_alpha : float
        Shape of the noise variance's inverse-gamma prior (> 0); its scale is ``prior_alpha`` times
        the burn-in's residual variance.
    burn_in : int
        Values after a (re)start that set the noise scale (>= 3; extended while they lie exactly on a
        line). No alarm during it; they are then processed as any other.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> t = np.arange(400.0)
    >>> xs = 0.05 * t + rng.normal(0.0, 1.0, 400) + np.where(t >= 300, 4.0, 0.0)  # a trend, then a jump
    >>> det = TrendBOCPDDetector()
    >>> alarms = []
    >>> for i, x in enumerate(xs):
    ...     det.update(x)
    ...     if det.drift_detected:
    ...         alarms.append((i, i - det.values_since_change + 1))
    >>> alarms
    [(301, 300)]
    """

    name: ClassVar[str] = "bocpd_trend"
    domain: ClassVar[str] = "real"

    def __init__(
        self,
        hazard: float = 0.001,
        ert: float = 10_000.0,
        threshold: float | None = 0.9999,
        max_runs: int = 100,
        prior_kappa: float = 0.01,
        prior_slope_kappa: float = 100.0,
        prior_alpha: float = 1.0,
        burn_in: int = 5,
    ) -> None:
        check_param("hazard", 0.0 < hazard < 1.0, "a number in (0, 1)", hazard)
        check_param("ert", ert > 1.0, "a number > 1 (values between false alarms)", ert)
        check_param("threshold", threshold is None or 0.0 < threshold < 1.0, "null or a number in (0, 1)", threshold)
        check_param("max_runs", max_runs >= 2, "an integer >= 2", max_runs)
        for key, v in (("prior_kappa", prior_kappa), ("prior_slope_kappa", prior_slope_kappa), ("prior_alpha", prior_alpha)):
            check_param(key, v > 0.0, "a number > 0", v)
        check_param("burn_in", burn_in >= 3, "an integer >= 3", burn_in)
        self.hazard = hazard
        self.ert = ert
        self.threshold = threshold
        self.max_runs = max_runs
        self.prior_kappa = prior_kappa
        self.prior_slope_kappa = prior_slope_kappa
        self.prior_alpha = prior_alpha
        self.burn_in = burn_in
        self._threshold = threshold
        self.reset()

    def reset(self) -> None:
        self._drift = False
        self._t = 0  # values since the restart
        self._history: list[float] = []  # values since the restart (the newest HISTORY)
        self._burn: list[float] = []
        self._level0 = 0.0  # the restart's run: prior level (the burn-in line at its first value)
        self._beta0 = 1.0  # prior_alpha * the burn-in's residual variance
        self._prev = 0.0  # the value before the current one
        cap = self.max_runs + max(8, self.max_runs // 2)  # pruned back to max_runs when full
        self._k = 0  # runs kept; the arrays below hold them in [:k], oldest first
        self._lw = np.zeros(cap)  # log posterior of each kept run (normalized)
        self._start = np.zeros(cap, dtype=np.int64)  # 0-based index (since the restart) of its first value
        self._mu = np.zeros((2, cap))  # posterior mean of (level at the run's start, slope)
        self._cov = np.zeros((3, cap))  # posterior covariance / sigma^2: (level, cross, slope)
        self._beta = np.zeros(cap)  # posterior beta of sigma^2
        self._p_change = 0.0
        self._since_change: int | None = None

    def update(self, x: float) -> None:
        if self._drift:
            self._restart_from_change()
        self._observe(float(x))

    # --- internals -------------------------------------------------------------------------------
    def _observe(self, x: float) -> None:
        self._history.append(x)
        if len(self._history) > 2 * HISTORY:
            del self._history[:-HISTORY]
        self._t += 1
        if self._k == 0:
            self._burn.append(x)
            if not self._burn_in_done():
                return
            burn, self._burn = self._burn, []
            self._set_prior(burn)
            self._t -= len(burn)
            for v in burn:
                self._t += 1
                self._step(v)
                self._prev = v
            return
        self._step(x)
        self._prev = x

    def _burn_in_done(self) -> bool:
        n = len(self._burn)
        return n >= self.burn_in and (n >= MAX_BURN_IN or burn_in_line(self._burn)[1] > 0.0)

    def _set_prior(self, values: list[float]) -> None:
        level, var = burn_in_line(values)
        if var <= 0.0:  # MAX_BURN_IN values exactly on a line
            var = max(1e-12, (1e-6 * abs(float(np.mean(values)))) ** 2)
        self._level0 = level
        self._beta0 = self.prior_alpha * var

    def _prior_run(self, i: int, level: float) -> None:
        self._mu[0, i], self._mu[1, i] = level, 0.0
        self._cov[0, i], self._cov[1, i], self._cov[2, i] = 1.0 / self.prior_kappa, 0.0, 1.0 / self.prior_slope_kappa
        self._beta[i] = self._beta0

    def _step(self, x: float) -> None:
        t, k = self._t, self._k  # x is the t-th value since the restart (1-based)
        if k == 0:  # the run of the restart: certain, no hazard
            self._k = 1
            self._lw[0], self._start[0] = 0.0, 0
            self._prior_run(0, self._level0)
            self._absorb(x, 0, 1)
            self._p_change = 0.0
            return
        grow = self._lw[:k] + self._absorb(x, 0, k) + math.log1p(-self.hazard)
        self._prior_run(k, self._prev)
        self._start[k] = t - 1
        new = math.log(self.hazard) + float(self._absorb(x, k, k + 1)[0])
        top = max(float(grow.max()), new)
        log_evidence = top + math.log(float(np.exp(grow - top).sum()) + math.exp(new - top))
        self._lw[:k] = grow - log_evidence
        self._lw[k] = new - log_evidence
        self._k = k + 1
        if self._k == self._lw.size:
            self._prune()
        self._decide()

    def _absorb(self, x: float, lo: int, hi: int) -> np.ndarray:
        """Runs ``lo:hi``: the log predictive density of ``x``, then their posteriors updated with it."""
        tau = (self._t - 1 - self._start[lo:hi]).astype(np.float64)  # x's time within each run
        alpha = self.prior_alpha + 0.5 * tau  # tau values held before x
        m0, m1 = self._mu[0, lo:hi], self._mu[1, lo:hi]
        c00, c01, c11 = self._cov[0, lo:hi], self._cov[1, lo:hi], self._cov[2, lo:hi]
        beta = self._beta[lo:hi]
        e = x - (m0 + m1 * tau)
        g0, g1 = c00 + c01 * tau, c01 + c11 * tau  # cov @ [1, tau]
        s = 1.0 + g0 + g1 * tau
        q = e * e / (2.0 * beta * s)
        lp = gammaln(alpha + 0.5) - gammaln(alpha) - 0.5 * np.log(2.0 * math.pi * beta * s) - (alpha + 0.5) * np.log1p(q)
        m0 += g0 * e / s
        m1 += g1 * e / s
        c00 -= g0 * g0 / s
        c01 -= g0 * g1 / s
        c11 -= g1 * g1 / s
        beta += beta * q
        return np.asarray(lp)

    def _prune(self) -> None:
        # keep the restart's run (index 0) and the most probable others
        k, m = self._k, self.max_runs
        keep = np.sort(np.argpartition(self._lw[1:k], -(m - 1))[-(m - 1) :] + 1)
        keep = np.concatenate([[0], keep])
        for arr in (self._lw, self._start, self._beta):
            arr[:m] = arr[keep]
        self._mu[:, :m] = self._mu[:, keep]
        self._cov[:, :m] = self._cov[:, keep]
        self._k = m
        top = float(self._lw[:m].max())
        self._lw[:m] -= top + math.log(float(np.exp(self._lw[:m] - top).sum()))

    def _decide(self) -> None:
        k = self._k
        self._p_change = 1.0 - float(math.exp(self._lw[0]))  # the restart's run is never pruned
        if k <= 1:
            return
        best = 1 + int(np.argmax(self._lw[1:k]))
        self._since_change = int(self._t - self._start[best])
        if self._threshold is None:
            self._threshold = odds_threshold(self.hazard, self.ert)
        self._drift = self._p_change >= self._threshold

    @classmethod
    def _unit_test_params(cls) -> Iterator[dict[str, Any]]:
        yield {"threshold": 0.99}
        yield {"hazard": 0.005, "threshold": 0.999, "max_runs": 50, "prior_slope_kappa": 10.0}
        yield {"threshold": 0.995, "burn_in": 10, "prior_kappa": 0.5}


def odds_threshold(hazard: float, ert: float) -> float:
    """The threshold at which the posterior odds of a change reach ``hazard * ert``: a stand-in for a
    calibration (``bocpd``'s simulation does not model a trend segment; measured run lengths of this
    rule for ``bocpd`` were 0.3-1.9 times ``ert``)."""
    odds = max(1.0, hazard * ert)
    return odds / (1.0 + odds)
