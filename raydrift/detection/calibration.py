"""False alarms set by expected run time: the p-value threshold of a window detector, by simulation.

A two-sample window detector (:class:`raydrift.detection.two_sample.TwoSampleDetector`: ``ks``,
``mmd``) given ``ert`` (the expected number of values between two false alarms on a stationary
stream, the way alibi-detect's online detectors take it) does not use ``alpha``: its threshold on the
test's p-value is the one under which a stationary stream runs ``ert`` values, on average, from a
(re)start to the first alarm. Repeated tests on overlapping windows against one reference are
dependent, so the threshold is found by simulation, once per setting, at the first test:

1. ``CALIBRATION_STREAMS`` stationary streams of i.i.d. standard normal samples with the detector's
   number of features, each as long as ``CALIBRATION_SPAN`` times the tests a run takes on average;
2. on each, the detector's own test (``_test``: the same windows, the same permutations after a
   restart) at every test position against the stream's first ``reference_size`` values: one p-value
   sequence per stream;
3. the threshold that makes the mean run length ``ert``: a run ends at the first test whose p-value is
   below the threshold, or equal to it with a calibrated probability (the p-values are discrete: a KS
   statistic moves in steps of 1 / window, a permutation p-value in steps of 1 / (permutations + 1);
   without that randomised edge the run length could only move in steps); a stream without an alarm
   is censored (the mean is the total time at risk over the runs that ended);
4. the streams censored at that threshold are run 4 times longer and the threshold solved again, up to
   3 times: the references under which false alarms are rare make the long runs that dominate the
   mean, so they are followed rather than extrapolated. A stream keeps its generators, so following it
   computes only its new tests; the threshold is solved on each stream's first-alarm candidates
   (:func:`first_alarm_candidates`), the same first alarms at every threshold as the full matrix.

The p-value of one test is (nearly) distribution-free: KS's depends on ranks only (exact for
continuous features), MMD's permutation p-value is uniform for any exchangeable sample. So the
threshold calibrated on Gaussian samples carries over to other continuous distributions. Features that
are dependent, or values with ties (discrete features), make the tests conservative: the run length
is then longer than ``ert``. Autocorrelated values (not i.i.d.) make it shorter.

The result is cached in memory per setting and as one plain JSON file per setting
(:class:`Calibration`) in a directory: ``calibration_cache``, else :func:`default_cache_dir` (so a
setting is simulated once per machine, not once per run and process); each file is checked against
its key when read back, and a file that does not parse or does not match is recomputed and replaced.
Nothing read from it can run code.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

__all__ = [
    "CALIBRATION_SEED",
    "CALIBRATION_SPAN",
    "CALIBRATION_STREAMS",
    "Calibration",
    "SimulatedStream",
    "calibrate",
    "alarms_at",
    "first_alarm_candidates",
    "mean_run_length",
    "solve_threshold",
    "write_json_record",
]

#: Simulated stationary streams per calibration.
CALIBRATION_STREAMS = 1000
#: Each stream runs this many times the tests a run takes on average at the requested ``ert``.
CALIBRATION_SPAN = 3.0
#: Seed of the simulated samples (the same threshold for the same setting on every machine).
CALIBRATION_SEED = 19
#: Bumped when the simulation changes: cached files of an older version are recomputed.
CALIBRATION_VERSION = 2

_MEMORY: dict[str, Calibration] = {}


@dataclass(frozen=True)
class Calibration:
    """A calibrated p-value threshold, as cached (in memory, and on disk as JSON).

    Attributes
    ----------
    key : str
        The setting it was computed for (canonical JSON: detector, its parameters except the
        thresholds, number of features, ``ert``, the simulation's size, seed and version).
    alpha : float
        The p-value threshold: an alarm when a test's p-value is below it ...
    edge_probability : float
        ... or, with this probability, equal to it (p-values are discrete: without it the run length
        could only move in steps).
    mean_run_length : float
        The simulated mean run length (values from a (re)start to the first alarm) at ``alpha``.
    censored : float
        Fraction of the simulated streams that ended without an alarm.
    streams, tests : int
        Simulated streams and tests on each.
    """

    key: str
    alpha: float
    edge_probability: float
    mean_run_length: float
    censored: float
    streams: int
    tests: int

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, key: str) -> Calibration | None:
        """The calibration in ``text`` if it is one for ``key``, else None (recompute it)."""
        try:
            doc = json.loads(text)
            cal = cls(
                key=str(doc["key"]),
                alpha=float(doc["alpha"]),
                edge_probability=float(doc["edge_probability"]),
                mean_run_length=float(doc["mean_run_length"]),
                censored=float(doc["censored"]),
                streams=int(doc["streams"]),
                tests=int(doc["tests"]),
            )
        except (ValueError, KeyError, TypeError):
            return None
        ok = cal.key == key and 0.0 <= cal.alpha <= 1.0 and 0.0 <= cal.edge_probability <= 1.0
        return cal if ok else None


#: p-value of a test a stream did not run (shorter streams, padded): never an alarm
_NOT_RUN = 2.0


def _levels(p_values: np.ndarray) -> np.ndarray:
    """The distinct p-values, sorted: the levels a threshold can sit between (the tests' p-values are
    discrete: a KS statistic moves by steps of 1 / window, a permutation p-value by 1 / (n + 1))."""
    levels = np.unique(p_values)
    return levels[levels <= 1.0]


def alarms_at(p_values: np.ndarray, coins: np.ndarray, levels: np.ndarray, tau: float) -> np.ndarray:
    """Which tests alarm at the randomised threshold ``tau``: with ``j = floor(tau)`` and
    ``q = tau - j``, a p-value below ``levels[j]``, or equal to it with probability ``q`` (``coins``:
    one uniform number per test)."""
    j = min(int(tau), levels.size - 1)
    q = tau - j if int(tau) < levels.size else 1.0
    level = levels[j]
    return (p_values < level) | ((p_values == level) & (coins < q))


def mean_run_length(
    alarms: np.ndarray, lengths: np.ndarray, first_test: int, test_every: int, index: np.ndarray | None = None
) -> float:
    """The mean run length (values) given which tests alarm (``(streams, tests)``; stream ``i`` ran
    ``lengths[i]`` tests): the tests at risk over the runs that ended, as values. A run's ``k``-th test
    (0-based) comes ``first_test + k * test_every`` values after the (re)start. ``index``: the test
    each column stands for, per stream, when the columns are a selection (:func:`first_alarm_candidates`)."""
    col, hit = np.argmax(alarms, axis=1), alarms.any(axis=1)
    events = int(hit.sum())
    if events == 0:
        return math.inf
    idx = col if index is None else index[np.arange(index.shape[0]), col]
    at_risk = float(np.where(hit, idx + 1, lengths).sum())
    return first_test + test_every * (at_risk / events - 1.0)


def first_alarm_candidates(p_values: np.ndarray, coins: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The only tests that can be a run's first alarm, whatever the threshold: those whose p-value is
    at most every earlier one's (a test after a smaller p-value cannot be first: that one alarmed,
    being below any level this one reaches). ``(p-values, coins, test index)`` of those tests, per
    stream, left-aligned and padded with tests that never alarm: a few dozen columns instead of
    thousands, the same first alarms at every threshold."""
    p = np.asarray(p_values, dtype=np.float64)
    keep = np.empty(p.shape, dtype=bool)
    keep[:, :1] = True
    if p.shape[1] > 1:
        keep[:, 1:] = p[:, 1:] <= np.minimum.accumulate(p, axis=1)[:, :-1]
    keep &= p <= 1.0  # padding (tests a stream did not run) never alarms
    rows, cols = np.nonzero(keep)
    pos = np.cumsum(keep, axis=1)[rows, cols] - 1
    width = max(1, int(pos.max()) + 1) if pos.size else 1
    p_c = np.full((p.shape[0], width), _NOT_RUN)
    coins_c = np.ones_like(p_c)
    index = np.zeros(p_c.shape, dtype=np.int64)
    p_c[rows, pos], coins_c[rows, pos], index[rows, pos] = p[rows, cols], coins[rows, cols], cols
    return p_c, coins_c, index


def solve_threshold(
    p_values: np.ndarray, coins: np.ndarray, lengths: np.ndarray, ert: float, first_test: int, test_every: int
) -> tuple[float, float, float, np.ndarray]:
    """The randomised threshold whose mean run length is ``ert``: ``(level, probability at the level,
    mean run length, which streams alarmed)`` (an alarm when the p-value is below the level, or equal
    to it with that probability). Solved on the :func:`first_alarm_candidates` alone."""
    p_c, coins_c, index = first_alarm_candidates(p_values, coins)
    levels = _levels(p_c)
    lo, hi = 0.0, float(levels.size)  # the run length shrinks as tau grows
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        alarms = alarms_at(p_c, coins_c, levels, mid)
        if mean_run_length(alarms, lengths, first_test, test_every, index) >= ert:
            lo = mid
        else:
            hi = mid
    j = min(int(hi), levels.size - 1)
    q = hi - j if int(hi) < levels.size else 1.0
    alarms = alarms_at(p_c, coins_c, levels, hi)
    run = mean_run_length(alarms, lengths, first_test, test_every, index)
    return float(levels[j]), float(q), float(run), np.asarray(alarms.any(axis=1))


class SimulatedStream(Protocol):
    """One simulated stationary stream, run test by test: :meth:`more` gives the p-values of its next
    ``tests`` tests (the same stream whether it is run in one call or in several)."""

    def more(self, tests: int) -> np.ndarray: ...


class _Streams:
    """The simulated streams' p-values and coins, ``(streams, tests)``, padded where a stream ran
    fewer tests (``lengths``). Each stream has its own seed and keeps its generators, so following it
    longer runs only the new tests."""

    def __init__(self, simulate: Callable[[np.random.Generator], SimulatedStream], tests: int) -> None:
        self.p = np.full((CALIBRATION_STREAMS, tests), _NOT_RUN)
        self.coins = np.ones_like(self.p)
        self.lengths = np.zeros(CALIBRATION_STREAMS, dtype=np.int64)
        self._streams = [simulate(np.random.default_rng([CALIBRATION_SEED, i])) for i in range(CALIBRATION_STREAMS)]
        self._coins = [np.random.default_rng([CALIBRATION_SEED, i, 1]) for i in range(CALIBRATION_STREAMS)]
        self.run(np.arange(CALIBRATION_STREAMS), tests)

    def run(self, rows: np.ndarray, tests: int) -> None:
        if tests > self.p.shape[1]:
            pad = ((0, 0), (0, tests - self.p.shape[1]))
            self.p = np.pad(self.p, pad, constant_values=_NOT_RUN)
            self.coins = np.pad(self.coins, pad, constant_values=1.0)
        for i in rows:
            have = int(self.lengths[i])
            if tests > have:
                self.p[i, have:tests] = self._streams[i].more(tests - have)
                self.coins[i, have:tests] = self._coins[i].random(tests - have)
                self.lengths[i] = tests


#: Environment variable naming the directory of cached calibrations (set it empty: memory only).
CACHE_ENV = "RAYDRIFT_CACHE_DIR"


def default_cache_dir() -> str | None:
    """Where calibrations are cached when a detector names no ``calibration_cache``:
    ``$RAYDRIFT_CACHE_DIR``, else ``$XDG_CACHE_HOME/raydrift`` or ``~/.cache/raydrift``, with
    ``/calibration`` added; None (memory only) when ``RAYDRIFT_CACHE_DIR`` is set but empty."""
    env = os.environ.get(CACHE_ENV)
    if env is not None:
        return str(Path(env).expanduser() / "calibration") if env.strip() else None
    base = os.environ.get("XDG_CACHE_HOME")
    if not base:
        try:
            base = str(Path.home() / ".cache")
        except RuntimeError:  # no home directory (a bare container): memory only
            return None
    return str(Path(base).expanduser() / "raydrift" / "calibration")


def calibrate(
    key: dict[str, Any],
    simulate: Callable[[np.random.Generator], SimulatedStream],
    ert: float,
    first_test: int,
    test_every: int,
    cache_dir: str | None = None,
) -> Calibration:
    """The threshold for ``key`` (cached), simulating if needed.

    Parameters
    ----------
    key : dict
        What the threshold depends on (JSON-serialisable); the simulation's size is added.
    simulate : callable
        ``simulate(rng)``: one stationary stream drawn from ``rng``, as a :class:`SimulatedStream`
        (``.more(tests)``: the p-values of its next ``tests`` tests).
    ert : float
        Requested mean run length (values).
    first_test, test_every : int
        Values from a (re)start to the first test, and between tests.
    cache_dir : str, optional
        Directory for the JSON file of this setting (None: :func:`default_cache_dir`).
    """
    tests = max(10, math.ceil(CALIBRATION_SPAN * (ert - first_test) / test_every) + 1)
    full = {**key, "ert": ert, "streams": CALIBRATION_STREAMS, "tests": tests}
    full |= {"seed": CALIBRATION_SEED, "version": CALIBRATION_VERSION}
    text = json.dumps(full, sort_keys=True, default=str)
    if text in _MEMORY:
        return _MEMORY[text]
    path = None
    cache_dir = cache_dir if cache_dir is not None else default_cache_dir()
    if cache_dir is not None:
        digest = hashlib.sha256(text.encode()).hexdigest()[:20]
        path = Path(cache_dir) / f"{key.get('detector', 'detector')}-ert-{digest}.json"
        cached = _read(path, text)
        if cached is not None:
            _MEMORY[text] = cached
            return cached
    cal = _solve(text, simulate, tests, ert, first_test, test_every)
    _MEMORY[text] = cal
    if path is not None:
        write_json_record(path, cal)
    return cal


def _solve(
    key: str,
    simulate: Callable[[np.random.Generator], SimulatedStream],
    tests: int,
    ert: float,
    first_test: int,
    test_every: int,
) -> Calibration:
    """Simulate and solve; the streams still without an alarm at the solution are run 4 times longer
    (up to 3 times) and the threshold solved again: the references that make false alarms rare
    dominate the mean run length, so they are followed rather than extrapolated."""
    streams = _Streams(simulate, tests)
    for extension in range(4):
        level, q, run, hit = solve_threshold(
            streams.p, streams.coins, streams.lengths, ert, first_test, test_every
        )
        censored = np.flatnonzero(~hit)
        if censored.size == 0 or extension == 3:
            break
        streams.run(censored, 4 * int(streams.lengths.max()))
    return Calibration(
        key=key,
        alpha=level,
        edge_probability=q,
        mean_run_length=run,
        censored=float(censored.size / CALIBRATION_STREAMS),
        streams=CALIBRATION_STREAMS,
        tests=int(streams.lengths.max()),
    )


def _read(path: Path, key: str) -> Calibration | None:
    try:
        return Calibration.from_json(path.read_text(encoding="utf-8"), key)
    except (OSError, UnicodeDecodeError):
        return None


class _JSONRecord(Protocol):
    def to_json(self) -> str: ...


def write_json_record(path: Path, cal: _JSONRecord) -> None:
    """Write ``cal.to_json()`` atomically; a directory that cannot be written only loses the disk cache."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(cal.to_json(), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass
