"""BOCPD: Bayesian online change-point detection (Adams & MacKay 2007), implemented in raydrift.

The stream is a sequence of segments; within a segment the values are i.i.d. from a model whose
parameters are drawn afresh from a conjugate prior at every change point, and a change point follows
each value with constant probability ``hazard``. The *run length* ``r_t`` is the number of values since
the last change point. Its posterior ``P(r_t | x_1..x_t)`` follows a two-term recursion: every run
either grows by one (probability ``1 - hazard`` times the predictive probability of ``x_t`` given the
run's values) or a new run starts (``hazard`` times the evidence so far times the prior predictive).
With a conjugate model every run's predictive is closed-form from its sufficient statistics:

* ``bernoulli``: Beta(``prior_a``, ``prior_b``) - Bernoulli, for the per-sample error indicator;
  predictive ``P(x = 1) = (prior_a + k) / (prior_a + prior_b + n)``.
* ``normal``: Normal with unknown mean and variance, Normal-Gamma prior (``prior_kappa``,
  ``prior_alpha``; the prior mean and scale are set from the first ``burn_in`` values after a
  (re)start, so the detector is location- and scale-free); the predictive is a Student-t with
  ``2 alpha_n`` degrees of freedom.

The run-length posterior is pruned to the ``max_runs`` most probable runs (the run that started at the
last restart is always kept), so one update costs O(``max_runs``) whatever the stream's length.

An alarm is raised when the posterior probability that a change occurred since the last restart reaches
``threshold``: the Shiryaev-type rule of Bayesian quickest detection. The change point reported is the
start of the most probable run among those that started after the restart
(:attr:`BOCPDDetector.values_since_change`), with that probability (:attr:`change_probability`). After
an alarm the detector continues *from the located change point*: on the next update it restarts on the
values since the change, so a second change soon after the first is not missed and no value after the
change is lost.

``threshold`` null sets it from ``ert``, the expected number of values from one false alarm to the
next on a stationary stream (each run starting with the restart on the located change point), by
simulation (:mod:`raydrift.detection.bocpd_sim`: many stationary
streams run at once through a vectorised copy of this recursion; cached per setting, in memory and with
``calibration_cache`` as JSON). ``normal`` is location- and scale-free, so one simulation on standard
normal values serves every normal stream. ``bernoulli``'s false-alarm rate depends on the stream's rate
of ones: the threshold is calibrated at the rate of the first ``rate_values`` values the detector sees
(rounded to :func:`rate_grid`), with no alarm before them.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from functools import lru_cache
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from scipy.special import gammaln

from raydrift.detection.base import NativeDetector, check_param

__all__ = ["MODELS", "RATE_GRID_STEP", "BOCPDDetector", "rate_grid"]

MODELS = ("auto", "bernoulli", "normal")

#: Values kept since the last restart, to restart from a located change point.
HISTORY = 20_000

#: A burn-in whose values are all equal is extended up to this many values (then a tiny scale is used).
MAX_BURN_IN = 100

#: ``bernoulli`` with ``ert``: the observed rate of ones is rounded to this step in log-odds.
RATE_GRID_STEP = 0.1


def rate_grid(ones: float, values: int) -> float:
    """The rate of ones at which ``bernoulli``'s threshold is calibrated: ``ones / values``, kept at least
    half a value away from 0 and 1, rounded to a grid of step :data:`RATE_GRID_STEP` in log-odds (so the
    cache serves streams of about the same rate)."""
    p = min(max(ones, 0.5), values - 0.5) / values
    logit = round(math.log(p / (1.0 - p)) / RATE_GRID_STEP) * RATE_GRID_STEP
    return round(1.0 / (1.0 + math.exp(-logit)), 12)


class RunLengthState:
    """What every run-length (BOCPD) detector here shares: the read-outs of its posterior and the
    restart on the values since the located change point. The detector keeps ``_p_change``,
    ``_since_change``, ``_k`` (runs held), ``_history``, ``_threshold``, ``_drift`` and implements
    ``reset`` and ``_observe``."""

    _p_change: float
    _since_change: int | None
    _k: int
    _history: list[float]
    _threshold: float | None
    _drift: bool

    @property
    def change_probability(self) -> float:
        """Posterior probability that a change occurred since the last restart (after the last update)."""
        return self._p_change

    @property
    def values_since_change(self) -> int | None:
        """Values since the located change point, the change point's value included (None: no change
        located yet). After an alarm, the alarming value is the ``values_since_change``-th after it."""
        return self._since_change

    @property
    def active_runs(self) -> int:
        """Run lengths currently kept in the posterior (pruned back towards ``max_runs``)."""
        return self._k

    if TYPE_CHECKING:  # the detector's own (declared here for the type checker only)

        def reset(self) -> None: ...

        def _observe(self, x: float) -> None: ...

    def _restart_from_change(self) -> None:
        """After an alarm: start again on the values since the located change point."""
        k = self._since_change or 0
        tail = self._history[-k:] if k > 0 else []
        threshold = self._threshold
        self.reset()
        self._threshold = threshold
        for v in tail:
            self._observe(v)
        # a second alarm within the values already seen after the change is not raised again
        self._drift = False


class BOCPDDetector(RunLengthState, NativeDetector):
    """BOCPD: alarms when the run-length posterior says a change point occurred since the last restart.

    Adams & MacKay's Bayesian online change-point detection with a conjugate model, a constant hazard
    and a pruned run-length posterior (see :mod:`raydrift.detection.bocpd`). It reports where the
    change happened (:attr:`values_since_change`) and how probable it is (:attr:`change_probability`),
    and continues from the located change point after an alarm. Two-sided: it alarms on increases and
    decreases alike (the engine's ``direction: degrade`` drops improvements).

    Parameters
    ----------
    model : {"auto", "bernoulli", "normal"}
        The segment model. ``bernoulli`` (Beta-Bernoulli) for 0/1 values; ``normal`` (Normal with
        unknown mean and variance: a Student-t predictive) for real values; ``auto``: ``bernoulli``
        when the engine feeds 0/1 values (a ``binary`` metric at ``sample`` granularity), else
        ``normal``.
    hazard : float
        Prior probability of a change point after each value, in (0, 1) (``1 / hazard`` is the
        expected segment length a priori).
    ert : float
        Expected run time: the mean number of values between two false alarms on a stationary stream
        (> 1). Sets ``threshold`` when that is null.
    threshold : float or None
        Alarm when the posterior probability of a change since the last restart reaches it, in (0, 1);
        null: calibrated from ``ert`` by simulation (:mod:`raydrift.detection.bocpd_sim`).
    max_runs : int
        Run lengths kept in the posterior (>= 2): the cost of one update.
    prior_a, prior_b : float
        Beta prior of the ``bernoulli`` model (> 0).
    prior_kappa, prior_alpha : float
        Normal-Gamma prior of the ``normal`` model (> 0): pseudo-observations of the mean and shape of
        the precision's Gamma prior. The prior mean and scale come from the burn-in.
    burn_in : int
        ``normal`` model: values after a (re)start that set the prior's mean and scale (>= 2; extended
        while they are all equal). No alarm during it; the values are then processed as any other.
    rate_values : int
        ``bernoulli`` with ``threshold`` null: the threshold is calibrated at the rate of ones of the
        first ``rate_values`` values (>= 10); no alarm before them (they are processed as any other).
    calibration_cache : str or None
        Directory where the ``ert`` calibration is kept as a JSON file, one per setting (null: the
        default cache directory, ``$RAYDRIFT_CACHE_DIR`` or ``~/.cache/raydrift``; see
        :func:`~raydrift.detection.calibration.default_cache_dir`).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> det = BOCPDDetector(model="normal", threshold=0.99)
    >>> xs = np.concatenate([rng.normal(0.0, 1.0, 300), rng.normal(3.0, 1.0, 100)])
    >>> alarms = []
    >>> for t, x in enumerate(xs):
    ...     det.update(x)
    ...     if det.drift_detected:  # the alarm, and the change point it locates
    ...         alarms.append((t, t - det.values_since_change + 1))
    >>> alarms
    [(301, 300)]
    """

    name: ClassVar[str] = "bocpd"

    def __init__(
        self,
        model: str = "auto",
        hazard: float = 0.01,
        ert: float = 10_000.0,
        threshold: float | None = None,
        max_runs: int = 100,
        prior_a: float = 1.0,
        prior_b: float = 1.0,
        prior_kappa: float = 0.1,
        prior_alpha: float = 1.0,
        burn_in: int = 5,
        rate_values: int = 500,
        calibration_cache: str | None = None,
    ) -> None:
        check_param("model", model in MODELS, f"one of {', '.join(MODELS)}", model)
        check_param("hazard", 0.0 < hazard < 1.0, "a number in (0, 1)", hazard)
        check_param("ert", ert > 1.0, "a number > 1 (values between false alarms)", ert)
        check_param("threshold", threshold is None or 0.0 < threshold < 1.0, "null or a number in (0, 1)", threshold)
        check_param("max_runs", max_runs >= 2, "an integer >= 2", max_runs)
        for key, v in (("prior_a", prior_a), ("prior_b", prior_b), ("prior_kappa", prior_kappa), ("prior_alpha", prior_alpha)):
            check_param(key, v > 0.0, "a number > 0", v)
        check_param("burn_in", burn_in >= 2, "an integer >= 2", burn_in)
        check_param("rate_values", rate_values >= 10, "an integer >= 10", rate_values)
        check_param(
            "calibration_cache",
            calibration_cache is None or (isinstance(calibration_cache, str) and calibration_cache != ""),
            "null or a directory",
            calibration_cache,
        )
        self.model = model
        self.hazard = hazard
        self.ert = ert
        self.threshold = threshold
        self.max_runs = max_runs
        self.prior_a = prior_a
        self.prior_b = prior_b
        self.prior_kappa = prior_kappa
        self.prior_alpha = prior_alpha
        self.burn_in = burn_in
        self.rate_values = rate_values
        self.calibration_cache = calibration_cache
        self._calibration: tuple[float, float, float, int, float, float] | None = None
        self._resolved = "normal" if model == "auto" else model
        self._threshold = threshold
        self.reset()

    # --- protocol --------------------------------------------------------------------------------
    @property
    def input_domain(self) -> str:
        return "binary" if self.model == "bernoulli" else "real"

    def configure_for_domain(self, domain: str) -> None:
        """``model: auto``: Beta-Bernoulli for 0/1 values, Student-t otherwise (the engine calls this)."""
        if self.model == "auto":
            self._resolved = "bernoulli" if domain == "binary" else "normal"
            self._threshold = self.threshold
            self._calibration = None
            self.reset()

    @property
    def resolved_model(self) -> str:
        """The segment model in use (``model`` with ``auto`` resolved)."""
        return self._resolved

    def reset(self) -> None:
        self._drift = False
        self._t = 0  # values since the restart
        self._history: list[float] = []  # values since the restart (the newest HISTORY)
        self._burn: list[float] = []
        self._mu0 = 0.0
        self._beta0 = 1.0
        cap = self.max_runs + max(8, self.max_runs // 2)  # pruned back to max_runs when full
        self._k = 0  # runs kept; the arrays below hold them in [:k], oldest first
        self._lw = np.zeros(cap)  # log posterior of each kept run (normalized)
        self._start = np.zeros(cap, dtype=np.int64)  # 0-based index (since the restart) of its first value
        self._s1 = np.zeros(cap)  # bernoulli: sum of values; normal: posterior mean
        self._s2 = np.zeros(cap)  # normal: posterior beta
        self._p_change = 0.0
        self._since_change: int | None = None
        self._rate_n = 0  # bernoulli, threshold to calibrate: values seen, and their sum
        self._rate_k = 0.0

    def update(self, x: float) -> None:
        if self._drift:
            self._restart_from_change()
        if self._threshold is None:
            self._rate_n += 1
            self._rate_k += float(x)
        self._observe(float(x))

    # --- internals -------------------------------------------------------------------------------
    def _observe(self, x: float) -> None:
        self._history.append(x)
        if len(self._history) > 2 * HISTORY:
            del self._history[:-HISTORY]
        self._t += 1
        if self._resolved == "normal" and self._k == 0:
            self._burn.append(x)
            if not self._burn_in_done():
                return
            burn, self._burn = self._burn, []
            self._set_normal_prior(burn)
            self._t -= len(burn)
            for v in burn:
                self._t += 1
                self._step(v)
            return
        self._step(x)

    def _burn_in_done(self) -> bool:
        n = len(self._burn)
        return n >= self.burn_in and (n >= MAX_BURN_IN or max(self._burn) > min(self._burn))

    def _set_normal_prior(self, values: list[float]) -> None:
        v = np.asarray(values, dtype=np.float64)
        var = float(v.var(ddof=1))
        if var <= 0.0:  # a constant burn-in of MAX_BURN_IN values
            var = max(1e-12, (1e-6 * abs(float(v.mean()))) ** 2)
        self._mu0 = float(v.mean())
        # prior expected precision 1 / var: Gamma(alpha, beta) with mean alpha / beta
        self._beta0 = self.prior_alpha * var

    def _step(self, x: float) -> None:
        t, k = self._t, self._k  # x is the t-th value since the restart (1-based)
        if k == 0:  # the run of the restart: certain, no hazard
            self._k = 1
            self._lw[0], self._start[0] = 0.0, 0
            self._s1[0], self._s2[0] = self._new_stats(x)
            self._p_change = 0.0
            return
        n = t - 1 - self._start[:k]  # values each run holds before x
        tables = _tables(self._resolved, self.prior_a, self.prior_b, self.prior_kappa, self.prior_alpha, t)
        s1, s2 = self._s1[:k], self._s2[:k]
        if self._resolved == "bernoulli":
            p1 = (self.prior_a + s1) * tables[0][n]
            lp = x * np.log(p1) + (1.0 - x) * np.log1p(-p1) if 0.0 < x < 1.0 else np.log(p1 if x >= 0.5 else 1.0 - p1)
            p0 = self.prior_a / (self.prior_a + self.prior_b)
            lp0 = x * math.log(p0) + (1.0 - x) * math.log1p(-p0)
            s1 += x
        else:
            g, half_nu1, fnu, grow_beta, step_mu = tables
            d = x - s1
            d2 = d * d
            lp = g[n] - 0.5 * np.log(s2) - half_nu1[n] * np.log1p(d2 / (s2 * fnu[n]))
            d0 = x - self._mu0
            lp0 = float(g[0] - 0.5 * math.log(self._beta0) - half_nu1[0] * math.log1p(d0 * d0 / (self._beta0 * fnu[0])))
            s2 += grow_beta[n] * d2
            s1 += step_mu[n] * d
        grow = self._lw[:k] + lp + math.log1p(-self.hazard)
        new = math.log(self.hazard) + lp0
        top = max(float(grow.max()), new)
        log_evidence = top + math.log(float(np.exp(grow - top).sum()) + math.exp(new - top))
        self._lw[:k] = grow - log_evidence
        self._lw[k] = new - log_evidence
        self._start[k] = t - 1
        self._s1[k], self._s2[k] = self._new_stats(x)
        self._k = k + 1
        if self._k == self._lw.size:
            self._prune()
        self._decide()

    def _new_stats(self, x: float) -> tuple[float, float]:
        """Sufficient statistics of a run holding ``x`` only."""
        if self._resolved == "bernoulli":
            return x, 0.0
        k0 = self.prior_kappa
        mu = (k0 * self._mu0 + x) / (k0 + 1.0)
        beta = self._beta0 + k0 * (x - self._mu0) ** 2 / (2.0 * (k0 + 1.0))
        return mu, beta

    def _prune(self) -> None:
        # keep the restart's run (index 0) and the most probable others
        k, m = self._k, self.max_runs
        keep = np.sort(np.argpartition(self._lw[1:k], -(m - 1))[-(m - 1) :] + 1)
        keep = np.concatenate([[0], keep])
        for arr in (self._lw, self._start, self._s1, self._s2):
            arr[:m] = arr[keep]
        self._k = m
        self._lw[:m] -= _logsumexp(self._lw[:m])

    def _decide(self) -> None:
        k = self._k
        first = 1 if self._start[0] == 0 else 0  # the restart's run is kept unless pruned early
        self._p_change = 1.0 - float(math.exp(self._lw[0])) if first else 1.0
        if k <= first:
            return
        best = first + int(np.argmax(self._lw[first:k]))
        self._since_change = int(self._t - self._start[best])
        threshold = self._threshold
        if threshold is None:
            if self._resolved == "bernoulli" and self._rate_n < self.rate_values:
                self._drift = False  # the rate to calibrate at is not known yet
                return
            threshold = self.calibrate()
        self._drift = self._p_change >= threshold

    @property
    def calibration(self) -> tuple[float, float, float, int, float, float] | None:
        """``(threshold, simulated mean run length, censored fraction, simulated streams, bernoulli's
        rate or nan, seconds the simulation took)`` of the ``ert`` calibration behind the threshold
        (after it ran), else None."""
        return self._calibration

    def calibrate(self) -> float:
        """The threshold for ``ert`` (simulated once per setting, cached); ``bernoulli``: at the rate of
        the values seen so far (:func:`rate_grid`)."""
        from raydrift.detection.bocpd_sim import BOCPDSetting, calibrate_bocpd

        rate = rate_grid(self._rate_k, max(1, self._rate_n)) if self._resolved == "bernoulli" else None
        setting = BOCPDSetting(
            self._resolved,
            float(self.hazard),
            int(self.max_runs),
            float(self.prior_a),
            float(self.prior_b),
            float(self.prior_kappa),
            float(self.prior_alpha),
            int(self.burn_in),
            rate,
        )
        cal = calibrate_bocpd(setting, float(self.ert), self.calibration_cache)
        self._threshold = cal.threshold
        rate_or_nan = math.nan if rate is None else rate
        self._calibration = (cal.threshold, cal.mean_run_length, cal.censored, cal.streams, rate_or_nan, cal.seconds)
        return cal.threshold

    @classmethod
    def _unit_test_params(cls) -> Iterator[dict[str, Any]]:
        yield {"threshold": 0.99}
        yield {"model": "bernoulli", "hazard": 0.005, "threshold": 0.999, "max_runs": 50}
        yield {"model": "normal", "threshold": 0.995, "burn_in": 10}


def _logsumexp(v: np.ndarray) -> float:
    top = float(v.max())
    return top + math.log(float(np.exp(v - top).sum()))


_TABLE_STEP = 4096


@lru_cache(maxsize=32)
def _tables_of(model: str, a: float, b: float, kappa0: float, alpha0: float, size: int) -> tuple[np.ndarray, ...]:
    """Per run length ``n`` (values held), the terms of the predictive that depend on ``n`` only."""
    n = np.arange(size, dtype=np.float64)
    if model == "bernoulli":
        return (1.0 / (a + b + n),)
    kappa = kappa0 + n
    alpha = alpha0 + 0.5 * n
    nu = 2.0 * alpha
    f = (kappa + 1.0) / (alpha * kappa)  # scale^2 of the Student-t = beta * f
    g = gammaln(0.5 * (nu + 1.0)) - gammaln(0.5 * nu) - 0.5 * np.log(math.pi * nu * f)
    return g, 0.5 * (nu + 1.0), f * nu, kappa / (2.0 * (kappa + 1.0)), 1.0 / (kappa + 1.0)


def _tables(model: str, a: float, b: float, kappa0: float, alpha0: float, t: int) -> tuple[np.ndarray, ...]:
    size = _TABLE_STEP * (1 + t // _TABLE_STEP)  # covers every run length up to t
    return _tables_of(model, a, b, kappa0, alpha0, size)
