"""BOCPD's ``ert``: the alarm threshold calibrated by simulating many stationary streams at once.

:class:`BOCPDDetector` with ``threshold: null`` alarms at the threshold under which a stationary
stream runs ``ert`` values, on average, from a (re)start to the first alarm. The threshold is found by
simulation, once per setting (cached like ``ks``'s, :mod:`raydrift.detection.calibration`):

1. ``STREAMS`` independent stationary streams are run *together* through :class:`VectorBOCPD`, a numpy
   version of the detector's own pruned run-length recursion on arrays of shape
   ``(streams, runs)`` (the same floats as the detector's, ``tests/test_detect_bocpd.py``): i.i.d.
   standard normal values for ``normal`` (the model takes its prior's mean and scale from the burn-in,
   so it is location- and scale-free: one simulation serves every normal stream), 0/1 values at the
   base ``rate`` for ``bernoulli`` (the Beta prior is fixed, so the false-alarm rate depends on it);
2. for each stream the *record* values of the change probability (each value above every earlier one
   at which an alarm is possible) and when they came: the first alarm at threshold ``h`` is the first
   record at or above ``h``, so one simulation gives the run length of every threshold;
3. the threshold whose mean run length is ``ert``: a stream without an alarm is censored, counted as
   time at risk (the mean is ``first - 1`` plus the values at risk over the runs that ended);
4. the streams censored at that threshold are run 4 times longer and the threshold solved again, up to
   3 times (the streams whose burn-in made false alarms rare make the long runs).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from raydrift.detection.bocpd import _tables
from raydrift.detection.calibration import write_json_record

__all__ = ["STREAMS", "SPAN", "SEED", "BOCPDCalibration", "BOCPDSetting", "VectorBOCPD", "calibrate_bocpd"]

#: Simulated stationary streams per calibration.
STREAMS = 400
#: Each stream first runs this many times ``ert`` values.
SPAN = 2.0
#: Seed of the simulated values (the same threshold for the same setting on every machine).
SEED = 19
#: Bumped when the simulation changes: cached files of an older version are recomputed.
VERSION = 1

_MEMORY: dict[str, BOCPDCalibration] = {}


@dataclass(frozen=True)
class BOCPDSetting:
    """What the false-alarm rate of a :class:`BOCPDDetector` depends on (its threshold aside)."""

    model: str  # "bernoulli" or "normal"
    hazard: float
    max_runs: int
    prior_a: float
    prior_b: float
    prior_kappa: float
    prior_alpha: float
    burn_in: int
    rate: float | None = None  # bernoulli: the stationary rate of ones

    @property
    def first(self) -> int:
        """The first value (1-based, since a restart) at which an alarm is possible."""
        return self.burn_in if self.model == "normal" else 2


@dataclass(frozen=True)
class BOCPDCalibration:
    """A calibrated threshold, as cached (in memory, and on disk as JSON).

    Attributes
    ----------
    key : str
        The setting (canonical JSON: :class:`BOCPDSetting`, ``ert``, the simulation's size, seed, version).
    threshold : float
        Alarm when the change probability reaches it.
    mean_run_length : float
        The simulated mean run length at ``threshold``.
    censored : float
        Fraction of the simulated streams that ended without an alarm.
    streams, values : int
        Simulated streams and the longest one's values.
    seconds : float
        Time the simulation took.
    """

    key: str
    threshold: float
    mean_run_length: float
    censored: float
    streams: int
    values: int
    seconds: float

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, key: str) -> BOCPDCalibration | None:
        """The calibration in ``text`` if it is one for ``key``, else None (recompute it)."""
        try:
            doc = json.loads(text)
            cal = cls(
                key=str(doc["key"]),
                threshold=float(doc["threshold"]),
                mean_run_length=float(doc["mean_run_length"]),
                censored=float(doc["censored"]),
                streams=int(doc["streams"]),
                values=int(doc["values"]),
                seconds=float(doc["seconds"]),
            )
        except (ValueError, KeyError, TypeError):
            return None
        return cal if cal.key == key and 0.0 < cal.threshold < 1.0 else None


class VectorBOCPD:
    """The detector's recursion (:meth:`BOCPDDetector._step`, ``_prune``) on ``streams`` streams at once.

    :meth:`step` takes one value per stream and returns each stream's change probability (the one
    :meth:`BOCPDDetector._decide` compares with the threshold). ``normal``: the first ``burn_in``
    values set each stream's prior (:meth:`start_normal`), as the detector's burn-in does (its
    extension while the values are all equal is not simulated: real values are not all equal).
    """

    def __init__(self, setting: BOCPDSetting, streams: int) -> None:
        self.s = setting
        self.cap = setting.max_runs + max(8, setting.max_runs // 2)
        self.t = 0
        self.k = 0
        self.lw = np.zeros((streams, self.cap))
        self.start = np.zeros((streams, self.cap), dtype=np.int64)
        self.s1 = np.zeros((streams, self.cap))
        self.s2 = np.zeros((streams, self.cap))
        self.lb = np.zeros((streams, self.cap))  # normal: log of s2
        self.mu0 = np.zeros((streams, 1))
        self.beta0 = np.ones((streams, 1))

    def take(self, rows: np.ndarray) -> None:
        """Keep the streams ``rows`` only (to follow them longer)."""
        for name in ("lw", "start", "s1", "s2", "lb", "mu0", "beta0"):
            setattr(self, name, getattr(self, name)[rows])

    def start_normal(self, burn: np.ndarray) -> np.ndarray:
        """``normal``: the prior from the first values ``burn`` ``(streams, burn_in)``, then those values
        stepped; the change probabilities after each, ``(streams, burn_in)``."""
        self.mu0 = burn.mean(axis=1, keepdims=True)
        self.beta0 = self.s.prior_alpha * burn.var(axis=1, ddof=1, keepdims=True)
        return np.stack([self.step(burn[:, j]) for j in range(burn.shape[1])], axis=1)

    def _new_stats(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.s.model == "bernoulli":
            return x, np.zeros_like(x)
        k0, mu0, beta0 = self.s.prior_kappa, self.mu0[:, 0], self.beta0[:, 0]
        return (k0 * mu0 + x) / (k0 + 1.0), beta0 + k0 * (x - mu0) ** 2 / (2.0 * (k0 + 1.0))

    def step(self, x: np.ndarray) -> np.ndarray:
        """One value per stream; returns the change probability of each."""
        s, k = self.s, self.k
        self.t += 1
        if k == 0:
            self.k = 1
            self.lw[:, 0], self.start[:, 0] = 0.0, 0
            self.s1[:, 0], self.s2[:, 0] = self._new_stats(x)
            if self.s.model == "normal":
                self.lb[:, 0] = np.log(self.s2[:, 0])
            return np.zeros(x.shape[0])
        n = self.t - 1 - self.start[:, :k]
        tables = _tables(s.model, s.prior_a, s.prior_b, s.prior_kappa, s.prior_alpha, self.t)
        grow = self._grow(x, n, tables)  # log weight of each run grown by x, before normalising
        if s.model == "bernoulli":
            p0 = s.prior_a / (s.prior_a + s.prior_b)
            lp0 = np.where(x >= 0.5, math.log(p0), math.log1p(-p0))
        else:
            g, half_nu1, fnu = tables[:3]
            d0 = x - self.mu0[:, 0]
            b0 = self.beta0[:, 0]
            lp0 = g[0] - 0.5 * np.log(b0) - half_nu1[0] * np.log1p(d0 * d0 / (b0 * fnu[0]))
        new = math.log(s.hazard) + lp0
        top = np.maximum(grow.max(axis=1), new)
        w = np.subtract(grow, top[:, None])
        log_evidence = top + np.log(np.exp(w, out=w).sum(axis=1) + np.exp(new - top))
        np.subtract(grow, log_evidence[:, None], out=self.lw[:, :k])
        self.lw[:, k] = new - log_evidence
        self.start[:, k] = self.t - 1
        self.s1[:, k], self.s2[:, k] = self._new_stats(x)
        if s.model == "normal":
            self.lb[:, k] = np.log(self.s2[:, k])
        self.k = k + 1
        if self.k == self.cap:
            self._prune()
        return -np.expm1(self.lw[:, 0])

    def _grow(self, x: np.ndarray, n: np.ndarray, tables: tuple[np.ndarray, ...]) -> np.ndarray:
        """``lw + log predictive of x + log(1 - hazard)`` for each kept run; updates its statistics.

        ``normal``: the Student-t's ``log1p(d^2 / (beta f nu))`` is ``log(beta') - log(beta)`` (``beta'``
        the run's next beta: ``f nu = 1 / grow_beta``), so one logarithm per run and value (``lb``
        keeps ``log(beta)``) instead of two; equal to the detector's to rounding."""
        s, k = self.s, self.k
        s1, s2, xc = self.s1[:, :k], self.s2[:, :k], x[:, None]
        if s.model == "bernoulli":
            p1 = (s.prior_a + s1) * tables[0][n]
            lp = np.log(np.where(xc >= 0.5, p1, 1.0 - p1))
            s1 += xc
            lp += self.lw[:, :k]
            lp += math.log1p(-s.hazard)
            return lp
        g, half_nu1, _, grow_beta, step_mu = tables
        lb = self.lb[:, :k]
        d = xc - s1
        s1 += step_mu[n] * d
        d *= d
        d *= grow_beta[n]
        s2 += d
        lb_new = np.log(s2)
        out = lb - lb_new
        out *= half_nu1[n]
        lb *= 0.5
        out -= lb
        out += g[n]
        out += self.lw[:, :k]
        out += math.log1p(-s.hazard)
        lb[...] = lb_new
        return out

    def _prune(self) -> None:
        k, m = self.k, self.s.max_runs
        keep = np.sort(np.argpartition(self.lw[:, 1:k], -(m - 1), axis=1)[:, -(m - 1) :] + 1, axis=1)
        keep = np.concatenate([np.zeros((keep.shape[0], 1), dtype=keep.dtype), keep], axis=1)
        for name in ("lw", "start", "s1", "s2", "lb"):
            arr = getattr(self, name)
            arr[:, :m] = np.take_along_axis(arr, keep, axis=1)
        self.k = m
        v = self.lw[:, :m]
        top = v.max(axis=1, keepdims=True)
        v -= top + np.log(np.exp(v - top).sum(axis=1, keepdims=True))


class _Records:
    """Each stream's record change probabilities (above every earlier one from ``first`` on) and when."""

    def __init__(self, streams: int, first: int) -> None:
        self.first = first
        self.best = np.full(streams, -1.0)
        self.rows: list[np.ndarray] = []
        self.times: list[np.ndarray] = []
        self.values: list[np.ndarray] = []
        self.lengths = np.zeros(streams, dtype=np.int64)

    def add(self, rows: np.ndarray, t: int, p: np.ndarray) -> None:
        """Change probabilities ``p`` of the streams ``rows`` at their ``t``-th value."""
        self.lengths[rows] = t
        if t < self.first:
            return
        up = p > self.best[rows]
        if up.any():
            r = rows[up]
            self.best[r] = p[up]
            self.rows.append(r)
            self.times.append(np.full(r.size, t, dtype=np.int64))
            self.values.append(p[up])

    def first_alarms(self, threshold: float) -> np.ndarray:
        """Each stream's first alarm (1-based value) at ``threshold``; 0: none."""
        out = np.full(self.best.size, np.iinfo(np.int64).max)
        if self.rows:
            rows, times, values = (np.concatenate(a) for a in (self.rows, self.times, self.values))
            hit = values >= threshold
            np.minimum.at(out, rows[hit], times[hit])
        return np.where(out == np.iinfo(np.int64).max, 0, out)

    def mean_run_length(self, threshold: float) -> float:
        """Mean run length at ``threshold``: ``first - 1`` plus values at risk per run that ended."""
        alarms = self.first_alarms(threshold)
        events = int((alarms > 0).sum())
        if events == 0:
            return math.inf
        at_risk = float((np.where(alarms > 0, alarms, self.lengths) - self.first + 1).sum())
        return self.first - 1 + at_risk / events

    def solve(self, ert: float) -> float:
        """The smallest record value whose mean run length reaches ``ert`` (the mean grows with the
        threshold and changes only at record values); the largest record if none does."""
        if not self.values:
            return 0.5
        levels = np.unique(np.concatenate(self.values))
        lo, hi = 0, levels.size - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if self.mean_run_length(float(levels[mid])) >= ert:
                hi = mid
            else:
                lo = mid + 1
        return float(min(max(levels[lo], 1e-12), 1.0 - 1e-16))


class _Simulation:
    """The streams, their values drawn from one seeded generator, and their records."""

    def __init__(self, setting: BOCPDSetting, streams: int) -> None:
        self.s = setting
        self.rng = np.random.default_rng(SEED)
        self.sim = VectorBOCPD(setting, streams)
        self.rows = np.arange(streams)
        self.records = _Records(streams, setting.first)

    def _values(self, count: int) -> np.ndarray:
        if self.s.model == "bernoulli":
            return (self.rng.random(count) < float(self.s.rate or 0.0)).astype(np.float64)
        return self.rng.standard_normal(count)

    def run_to(self, values: int) -> None:
        """Run the kept streams up to ``values`` values each."""
        if self.sim.t == 0 and self.s.model == "normal":
            b = self.s.burn_in
            probs = self.sim.start_normal(self._values(self.rows.size * b).reshape(self.rows.size, b))
            for j in range(b):
                self.records.add(self.rows, j + 1, probs[:, j])
        while self.sim.t < values:
            p = self.sim.step(self._values(self.rows.size))
            self.records.add(self.rows, self.sim.t, p)

    def follow(self, rows: np.ndarray) -> None:
        """Keep only the streams ``rows`` (global indices, a subset of the kept ones)."""
        local = np.searchsorted(self.rows, rows)
        self.sim.take(local)
        self.rows = rows


def simulate_threshold(setting: BOCPDSetting, ert: float, streams: int = STREAMS) -> tuple[float, float, float, int]:
    """``(threshold, simulated mean run length, censored fraction, longest stream)`` for ``ert``."""
    sim = _Simulation(setting, streams)
    length = max(setting.first + 10, math.ceil(SPAN * ert))
    for extension in range(4):
        sim.run_to(length)
        threshold = sim.records.solve(ert)
        censored = np.flatnonzero(sim.records.first_alarms(threshold) == 0)
        if censored.size == 0 or extension == 3:
            break
        sim.follow(censored)
        length *= 4
    run = sim.records.mean_run_length(threshold)
    return threshold, run, censored.size / streams, int(sim.records.lengths.max())


def calibrate_bocpd(
    setting: BOCPDSetting, ert: float, cache_dir: str | None = None, streams: int = STREAMS
) -> BOCPDCalibration:
    """The threshold for ``setting`` and ``ert`` (cached in memory and, with ``cache_dir``, as JSON)."""
    full = {**asdict(setting), "ert": float(ert), "streams": streams, "span": SPAN, "seed": SEED, "version": VERSION}
    key = json.dumps(full, sort_keys=True)
    if key in _MEMORY:
        return _MEMORY[key]
    path = None
    if cache_dir is not None:
        path = Path(cache_dir) / f"bocpd-ert-{hashlib.sha256(key.encode()).hexdigest()[:20]}.json"
        try:
            cached = BOCPDCalibration.from_json(path.read_text(encoding="utf-8"), key)
        except (OSError, UnicodeDecodeError):
            cached = None
        if cached is not None:
            _MEMORY[key] = cached
            return cached
    t0 = time.perf_counter()
    threshold, run, censored, values = simulate_threshold(setting, ert, streams)
    cal = BOCPDCalibration(key, threshold, run, censored, streams, values, round(time.perf_counter() - t0, 2))
    _MEMORY[key] = cal
    if path is not None:
        write_json_record(path, cal)
    return cal
