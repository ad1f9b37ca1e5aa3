"""BOCPD's ``ert``: the alarm threshold calibrated by simulating many stationary streams at once.

:class:`BOCPDDetector` with ``threshold: null`` alarms at the threshold under which a stationary
stream runs ``ert`` values, on average, from one alarm to the next. After an alarm the detector
restarts on the values since the change point it located (a few to a few hundred values that looked
like a change), so a run after an alarm is not a run from a fresh start: on stationary data 20% of
them end within 20 values (a fresh-start calibration gave 0.50-0.57 times ``ert``). The threshold is
found by simulation, once per setting (cached like ``ks``'s, :mod:`raydrift.detection.calibration`):

1. stationary streams are run *together* through :class:`VectorBOCPD`, a numpy version of the
   detector's own pruned run-length recursion on arrays of shape ``(streams, runs)`` (the same
   probabilities as the detector's to 1e-9, ``tests/test_detect_bocpd.py``): i.i.d. standard normal
   values for ``normal`` (the model takes its prior's mean and scale from the burn-in, so it is
   location- and scale-free: one simulation serves every normal stream), 0/1 values at the base
   ``rate`` for ``bernoulli`` (the Beta prior is fixed, so the false-alarm rate depends on it);
2. each stream starts as the detector restarts: it replays a *tail* (the values since the change point
   located at an alarm of the previous stage, not counted in the run), then takes fresh values;
3. for each stream the *record* values of the change probability (each value above every earlier one
   at which an alarm is possible), when they came and the change point located then: the first alarm
   at threshold ``h`` is the first record at or above ``h``, so one simulation gives the run length
   (and the next tail) of every threshold;
4. the threshold whose mean run length is ``ert``: a stream without an alarm is censored, counted as
   time at risk; in the last stage the streams censored at that threshold are run 4 times longer and
   it is solved again, twice (to 32 ``ert``: the false-alarm hazard falls with the time since the
   restart, so the long runs are followed, not extrapolated);
5. three stages: ``PILOT_STREAMS`` fresh streams, ``PILOT_STREAMS`` restarted on their tails at their
   threshold, ``STREAMS`` restarted on those at theirs: the last stage's threshold is the result (the
   pilots' censored streams are followed once, to 8 ``ert``, so that the long runs give tails too).

Cost: about ``(2 PILOT_STREAMS + STREAMS) x 2 ert`` simulated values of ``max_runs`` runs each.
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
from raydrift.detection.calibration import default_cache_dir, write_json_record

__all__ = ["STREAMS", "SPAN", "SEED", "BOCPDCalibration", "BOCPDSetting", "VectorBOCPD", "calibrate_bocpd"]

#: Simulated stationary streams that solve the threshold (after two pilot stages, see simulate_threshold).
STREAMS = 600
#: Each stream first runs this many times ``ert`` values.
SPAN = 2.0
#: Fresh (unrestarted) streams that give the restart tails.
PILOT_STREAMS = 150
#: Seed of the simulated values (the same threshold for the same setting on every machine).
SEED = 19
#: Bumped when the simulation changes: cached files of an older version are recomputed.
VERSION = 3

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
        g = tables[0]
        nf = n.astype(np.float64)  # the other n-only terms from n: a gather costs several operations
        lb = self.lb[:, :k]
        d = xc - s1
        step_mu = nf + (s.prior_kappa + 1.0)
        np.divide(1.0, step_mu, out=step_mu)  # 1 / (kappa + 1)
        s1 += step_mu * d
        d *= d
        step_mu *= -0.5
        step_mu += 0.5  # grow_beta = kappa / (2 (kappa + 1))
        d *= step_mu
        s2 += d
        lb_new = np.log(s2)
        out = lb - lb_new
        nf *= 0.5
        nf += s.prior_alpha + 0.5  # (nu + 1) / 2
        out *= nf
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
    """Each stream's record change probabilities (above every earlier one at which an alarm is possible)
    with when they came (in values since the alarm that started the run) and the detector's located
    change point then (``values_since_change``: the values the next run restarts on)."""

    def __init__(self, first: np.ndarray, lag: np.ndarray) -> None:
        self.first = first  # per stream: first value (since the restart) at which an alarm is possible
        self.lag = lag  # per stream: values replayed at the restart (not counted in the run)
        self.best = np.full(first.size, -1.0)
        self.rows: list[np.ndarray] = []
        self.times: list[np.ndarray] = []
        self.values: list[np.ndarray] = []
        self.since: list[np.ndarray] = []
        self.lengths = np.zeros(first.size, dtype=np.int64)  # values run since the restart

    def candidates(self, rows: np.ndarray, t: int, p: np.ndarray) -> np.ndarray:
        """Which of the streams ``rows`` (change probabilities ``p`` at their ``t``-th value) set a record."""
        self.lengths[rows] = t
        return (p > self.best[rows]) & (t >= self.first[rows])

    def add(self, rows: np.ndarray, t: int, p: np.ndarray, since: np.ndarray) -> None:
        self.best[rows] = p
        self.rows.append(rows)
        self.times.append(np.full(rows.size, t, dtype=np.int64))
        self.values.append(p)
        self.since.append(since)

    def first_alarms(self, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        """Each stream's first alarm at ``threshold`` (value since the restart, 0: none) and its
        ``values_since_change`` then."""
        big = np.iinfo(np.int64).max
        out = np.full(self.best.size, big)
        since = np.zeros(self.best.size, dtype=np.int64)
        if self.rows:
            rows, times, values, sc = (
                np.concatenate(a) for a in (self.rows, self.times, self.values, self.since)
            )
            hit = np.flatnonzero(values >= threshold)
            np.minimum.at(out, rows[hit], times[hit])
            first = hit[times[hit] == out[rows[hit]]]
            since[rows[first]] = sc[first]
        return np.where(out == big, 0, out), since

    def mean_run_length(self, threshold: float) -> float:
        """Mean run length (values from the alarm that started the run) at ``threshold``: each stream's
        first possible alarm, plus the values at risk after it per run that ended."""
        alarms = self.first_alarms(threshold)[0]
        events = int((alarms > 0).sum())
        if events == 0:
            return math.inf
        at_risk = float((np.where(alarms > 0, alarms, self.lengths) - self.first + 1).sum())
        return float((self.first - self.lag).mean()) - 1.0 + at_risk / events

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
    """Stationary streams run together, each restarted as the detector restarts after an alarm: on
    its ``tail`` (the values since a located change point, replayed, not counted in the run) and then
    fresh values from one seeded generator. Keeps every stream's values, for the next stage's tails."""

    def __init__(self, setting: BOCPDSetting, tails: list[np.ndarray], stage: int) -> None:
        self.s = setting
        self.rng = np.random.default_rng([SEED, stage])
        streams = len(tails)
        self.sim = VectorBOCPD(setting, streams)
        self.rows = np.arange(streams)
        lag = np.array([t.size for t in tails], dtype=np.int64)
        self.queue = np.zeros((streams, max(1, int(lag.max()))))
        for i, t in enumerate(tails):
            self.queue[i, : t.size] = t
        first = np.maximum(lag + 1, setting.first)
        self.records = _Records(first, lag)
        self.history: list[list[np.ndarray]] = [[] for _ in range(streams)]

    def _fresh(self, count: int) -> np.ndarray:
        if self.s.model == "bernoulli":
            return (self.rng.random(count) < float(self.s.rate or 0.0)).astype(np.float64)
        return self.rng.standard_normal(count)

    def _inputs(self, steps: int) -> np.ndarray:
        """The kept streams' next ``steps`` values: their tail's, then fresh ones."""
        t0 = self.sim.t
        x = self._fresh(self.rows.size * steps).reshape(self.rows.size, steps)
        lag = self.records.lag[self.rows]
        todo = np.flatnonzero(lag > t0)
        for i in todo:
            n = min(steps, int(lag[i]) - t0)
            x[i, :n] = self.queue[self.rows[i], t0 : t0 + n]
        return x

    def run_to(self, values: int) -> None:
        """Run the kept streams up to ``values`` values since their restart (replayed ones included)."""
        steps = values - self.sim.t
        if steps <= 0:
            return
        x = self._inputs(steps)
        done = 0
        if self.sim.t == 0 and self.s.model == "normal":
            b = self.s.burn_in
            probs = self.sim.start_normal(x[:, :b])
            for j in range(b):
                self._record(j + 1, probs[:, j])
            done = b
        for j in range(done, steps):
            self._record(self.sim.t + 1, self.sim.step(x[:, j]))
        for i, row in enumerate(self.rows):
            self.history[row].append(x[i])

    def _record(self, t: int, p: np.ndarray) -> None:
        up = np.flatnonzero(self.records.candidates(self.rows, t, p))
        if up.size:
            v = self.sim
            best = 1 + np.argmax(v.lw[up, 1 : v.k], axis=1)
            self.records.add(self.rows[up], t, p[up], t - v.start[up, best])

    def follow(self, rows: np.ndarray) -> None:
        """Keep only the streams ``rows`` (global indices, a subset of the kept ones)."""
        self.sim.take(np.searchsorted(self.rows, rows))
        self.rows = rows

    def tails(self, threshold: float, streams: int) -> list[np.ndarray]:
        """``streams`` restart tails: the values since the located change point at the first alarm at
        ``threshold`` of the streams that alarmed, taken in turn."""
        alarms, since = self.records.first_alarms(threshold)
        out = []
        for i in np.flatnonzero(alarms > 0):
            values = np.concatenate(self.history[i])
            t, k = int(alarms[i]), min(int(since[i]), HISTORY_VALUES)
            out.append(values[t - k : t].copy())
        if not out:
            return [np.zeros(0)] * streams
        return [out[i % len(out)] for i in range(streams)]


#: Restart tails are cut to the values the detector keeps (``bocpd.HISTORY``).
HISTORY_VALUES = 20_000


def _stage(
    setting: BOCPDSetting, ert: float, tails: list[np.ndarray], stage: int, follows: int
) -> tuple[_Simulation, float, float, int]:
    """One stage: ``(simulation, threshold, mean run length, streams censored)``; the streams censored at
    the solution are followed 4 times longer, up to ``follows`` times (those still censored then count
    as time at risk). On stationary data the false-alarm hazard falls with the time since the restart
    (at ``ert`` 10,000: 0.7 per 1,000 values in the first 100, 0.02 after 40,000), so the long runs
    that make the mean are followed rather than extrapolated at the average hazard."""
    sim = _Simulation(setting, tails, stage)
    length = max(setting.first + 10, math.ceil(SPAN * ert))
    for extension in range(follows + 1):
        sim.run_to(length + int(sim.records.lag.max()))
        threshold = sim.records.solve(ert)
        censored = np.flatnonzero(sim.records.first_alarms(threshold)[0] == 0)
        if censored.size == 0 or extension == follows:
            break
        sim.follow(censored)
        length *= 4
    return sim, threshold, sim.records.mean_run_length(threshold), int(censored.size)


def simulate_threshold(
    setting: BOCPDSetting, ert: float, streams: int = STREAMS, pilot: int = PILOT_STREAMS
) -> tuple[float, float, float, int]:
    """``(threshold, simulated mean run length, censored fraction, longest stream)`` for ``ert``.

    A run starts after an alarm, on the values since the located change point (the detector restarts
    there), and those depend on the threshold: ``pilot`` fresh streams solve a first threshold, whose
    alarms' tails restart ``pilot`` streams that solve a second one, whose tails restart the
    ``streams`` streams that solve the threshold returned (each stage's tails taken in turn)."""
    sim, threshold, run, censored = _stage(setting, ert, [np.zeros(0)] * pilot, 0, 1)
    for stage, size in enumerate((pilot, streams), start=1):
        sim, threshold, run, censored = _stage(setting, ert, sim.tails(threshold, size), stage, stage)
    return threshold, run, censored / sim.records.first.size, int(sim.records.lengths.max())


def calibrate_bocpd(
    setting: BOCPDSetting, ert: float, cache_dir: str | None = None, streams: int = STREAMS
) -> BOCPDCalibration:
    """The threshold for ``setting`` and ``ert`` (cached in memory and as JSON in ``cache_dir``, else
    :func:`~raydrift.detection.calibration.default_cache_dir`)."""
    full = {**asdict(setting), "ert": float(ert), "streams": streams, "pilot": PILOT_STREAMS, "span": SPAN}
    full |= {"seed": SEED, "version": VERSION}
    key = json.dumps(full, sort_keys=True)
    if key in _MEMORY:
        return _MEMORY[key]
    path = None
    cache_dir = cache_dir if cache_dir is not None else default_cache_dir()
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
