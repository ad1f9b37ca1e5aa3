"""Two-sample tests for label-free drift detection, and the window detector that runs them.

Label-free detection compares a *reference window* (values seen right after a (re)start: after an
accepted update, data the updated model is known to handle) with the *current window* (the newest
values) by a two-sample test, every ``test_every`` values, and signals a drift when the test's
p-value falls below ``alpha``. The values are vectors: the model's output confidence or entropy
(one number per sample) or input / embedding features (many). Two tests:

* :func:`mmd_test`: maximum mean discrepancy with a Gaussian kernel (median-heuristic bandwidth) and a
  permutation p-value: multivariate, sees mean *and* covariance shifts.
* :func:`ks_test`: a Kolmogorov-Smirnov test per feature, the p-values combined with a multiple-testing
  correction (Bonferroni or Benjamini-Hochberg): cheap, interpretable per feature, blind to changes of
  the dependence between features.

The detectors are :class:`raydrift.detection.mmd.MMDDetector` and
:class:`raydrift.detection.ks.KSDetector`; both are ordinary registered detectors (a scalar stream is
a 1-feature stream), and the engine runs one of them on the label-free signal with
``drift_detection.label_free``.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, ClassVar

import numpy as np
from scipy.stats import kstwo

from raydrift.detection.base import NativeDetector, check_param
from raydrift.detection.calibration import Calibration, calibrate

__all__ = [
    "CORRECTIONS",
    "TwoSampleDetector",
    "combine_p_values",
    "ks_test",
    "ks_window_statistics",
    "mmd_test",
    "ranks_right",
]

CORRECTIONS = ("bonferroni", "fdr_bh", "none")


def _as_2d(x: np.ndarray) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    return arr.reshape(-1, 1) if arr.ndim == 1 else arr.reshape(arr.shape[0], -1)


def mmd_test(
    x: np.ndarray,
    y: np.ndarray,
    permutations: int = 500,
    rng: np.random.Generator | None = None,
    bandwidth: float | None = None,
) -> tuple[float, float]:
    """Squared MMD between samples ``x`` and ``y`` (Gaussian kernel) and its permutation p-value.

    Parameters
    ----------
    x, y : np.ndarray
        Samples, shape ``(n, d)`` and ``(m, d)`` (1-D arrays are one feature).
    permutations : int
        Random relabellings of the pooled sample; the p-value is
        ``(1 + #{permuted MMD >= observed}) / (1 + permutations)``, so it is never below
        ``1 / (1 + permutations)``.
    rng : np.random.Generator, optional
        Source of the permutations (default: seeded with 0).
    bandwidth : float, optional
        Kernel bandwidth sigma in ``exp(-|a - b|^2 / (2 sigma^2))``; default: the median distance
        between pooled points (median heuristic), or 1 if that is 0.

    Returns
    -------
    tuple of float
        ``(mmd2, p_value)``: the biased estimate of the squared MMD, in [0, 2].

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> a, b = rng.normal(size=(100, 3)), rng.normal(size=(100, 3))
    >>> mmd_test(a, b, 200, np.random.default_rng(1))[1] > 0.05
    True
    >>> mmd_test(a, b + 1.0, 200, np.random.default_rng(1))[1] < 0.01
    True
    """
    x2, y2 = _as_2d(x), _as_2d(y)
    n, m = x2.shape[0], y2.shape[0]
    z = np.concatenate([x2, y2])
    sq = np.sum(z * z, axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * (z @ z.T), 0.0)
    if bandwidth is None:
        med = float(np.median(d2[np.triu_indices(n + m, k=1)]))
        sigma2 = med if med > 0 else 1.0
    else:
        sigma2 = float(bandwidth) ** 2
    k = np.exp(-d2 / (2.0 * sigma2))
    # MMD^2_b = s^T K s with s = +1/n on x, -1/m on y; one matrix product for all permutations
    s = np.concatenate([np.full(n, 1.0 / n), np.full(m, -1.0 / m)])
    observed = float(s @ k @ s)
    rng = rng if rng is not None else np.random.default_rng(0)
    if permutations <= 0:
        return observed, float("nan")
    perms = np.stack([rng.permutation(s) for _ in range(permutations)], axis=1)
    stats = np.einsum("ip,ip->p", perms, k @ perms)
    # a tolerance so that relabellings equal to the observed split are counted as >= it
    exceed = int(np.sum(stats >= observed - 1e-12))
    return max(observed, 0.0), (1.0 + exceed) / (1.0 + permutations)


def _ks_statistics(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-column two-sample KS statistic sup |F_x - F_y| (ties handled exactly), as
    ``|n m (F_x - F_y)|`` counted in integers and divided once: the same float for the same value
    whichever way it is computed (:func:`ks_window_statistics` gives it too)."""
    n, m = x.shape[0], y.shape[0]
    z = np.concatenate([x, y])
    order = np.argsort(z, axis=0, kind="stable")
    zs = np.take_along_axis(z, order, axis=0)
    diff = np.cumsum(np.where(order < n, m, -n), axis=0)  # n m (F_x - F_y), exact
    # only where the next sorted value differs is the ECDF difference attained (ties move together)
    last_of_tie = np.ones_like(zs, dtype=bool)
    last_of_tie[:-1] = zs[1:] != zs[:-1]
    return np.max(np.where(last_of_tie, np.abs(diff), 0), axis=0) / (n * m)


def ranks_right(ref: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``np.searchsorted(ref, x, side="right")`` (``ref`` sorted, 1-D), by a grid of equal cells
    over ``ref``'s range: a value's rank is the reference values in lower cells plus those of its own
    cell at or below it (a few comparisons; the cell is a monotone function of the value, the same
    for ``ref`` and ``x``, so the count is exact). Several times faster than a binary search per value."""
    n = ref.size
    if n == 0 or not (np.isfinite(ref[[0, -1]]).all() and ref[-1] > ref[0]) or not np.isfinite(x).all():
        return np.searchsorted(ref, x, side="right")
    cells = 8 * n
    lo, scale = float(ref[0]), cells / float(ref[-1] - ref[0])

    def cell(v: np.ndarray) -> np.ndarray:  # 0: below ref[0], cells + 1: above ref[-1] (at most)
        with np.errstate(over="ignore"):  # a huge value: inf, clipped to the top cell
            return np.clip(np.floor((v - lo) * scale), -1, cells).astype(np.int64) + 1

    g_ref = cell(ref)
    first = np.searchsorted(g_ref, np.arange(cells + 2), side="left")  # reference values in lower cells
    occupancy = np.bincount(g_ref, minlength=cells + 2)
    table = np.full((cells + 2, int(occupancy.max())), np.inf)  # each cell's reference values
    table[g_ref, np.arange(n) - first[g_ref]] = ref
    g = cell(x)
    rank = first[g]
    for j in range(table.shape[1]):
        rank += table[g, j] <= x
    return rank


def ks_window_statistics(reference: np.ndarray, x: np.ndarray, starts: np.ndarray, m: int) -> np.ndarray:
    """The per-feature KS statistics of ``reference`` ``(n, d)`` against each window
    ``x[s : s + m]``, ``s`` in ``starts``: ``(len(starts), d)``, without sorting a window.

    Each value of ``x`` is ranked once against the sorted reference (``c``: reference values at or
    below it); a window's counts per rank give ``A_c`` (window values of rank at most ``c``), and
    ``n m sup |F_ref - F_win| = max(max_c |c m - A_c n|, max_c |c m - A_{c-1} n|)`` (the ECDFs just
    below the next reference value and at the reference value; with ``u_c = c m - A_c n``, ``u_n = 0``,
    that is ``max(m + max_{c<n} u_c, -min_c u_c)``). Exact when no window value equals a
    reference value (samples of continuous distributions), and then the same float as
    :func:`_ks_statistics`.
    """
    n, d = reference.shape
    ranks = np.empty(x.shape, dtype=np.int64)
    ref = np.sort(reference, axis=0)
    for f in range(d):
        ranks[:, f] = ranks_right(ref[:, f], x[:, f])
    c_m = np.arange(n, dtype=np.int64) * m
    out = np.empty((len(starts), d))
    chunk = max(1, 2_000_000 // (m * d + (n + 1) * d))
    for lo in range(0, len(starts), chunk):
        s = np.asarray(starts[lo : lo + chunk], dtype=np.int64)
        k = s.size
        r = ranks[s[:, None] + np.arange(m)]  # (k, m, d)
        key = (np.arange(k * d).reshape(k, 1, d) * (n + 1)) + r
        counts = np.bincount(key.ravel(), minlength=k * d * (n + 1)).reshape(k, d, n + 1)
        # u_c = c m - A_c n for c < n (u_n = 0): the statistic is max(max u + m, -min u), in integers
        u = c_m - np.cumsum(counts[:, :, :n], axis=2) * n
        out[lo : lo + k] = np.maximum(u.max(axis=2) + m, -u.min(axis=2)) / (n * m)
    return out


def ks_test(x: np.ndarray, y: np.ndarray, correction: str = "bonferroni") -> tuple[float, float]:
    """Per-feature two-sample KS tests, combined: ``(largest KS statistic, corrected p-value)``.

    The p-value of each feature is the asymptotic one of :func:`scipy.stats.ks_2samp`
    (``method="asymp"``). They are combined into one p-value for "some feature changed":
    ``bonferroni``: ``min(1, d * min p)`` (Holm's procedure rejects exactly when this does);
    ``fdr_bh``: the smallest Benjamini-Hochberg adjusted p-value, ``min_i p_(i) d / i``;
    ``none``: the smallest raw p-value (only for one feature).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> a, b = rng.normal(size=(200, 5)), rng.normal(size=(200, 5))
    >>> ks_test(a, b)[1] > 0.05
    True
    >>> b[:, 2] += 1.0
    >>> ks_test(a, b)[1] < 1e-6
    True
    """
    if correction not in CORRECTIONS:
        raise ValueError(f"unknown correction '{correction}': use one of {', '.join(CORRECTIONS)}")
    x2, y2 = _as_2d(x), _as_2d(y)
    n, m = x2.shape[0], y2.shape[0]
    stats = _ks_statistics(x2, y2)
    en = round(n * m / (n + m))
    pvals = np.clip(ks_sf(stats, en), 0.0, 1.0)
    return float(stats.max()), float(combine_p_values(pvals[None, :], correction)[0])


_KS_SF: dict[tuple[float, int], float] = {}


def ks_sf(stats: np.ndarray, en: int) -> np.ndarray:
    """``scipy.stats.kstwo.sf(stats, en)``, each distinct value computed once per process (scipy's
    exact distribution costs about a millisecond a value; a window's statistic takes few values)."""
    flat = np.asarray(stats, dtype=np.float64).reshape(-1)
    levels, where = np.unique(flat, return_inverse=True)
    todo = [v for v in levels.tolist() if (v, en) not in _KS_SF]
    if todo:
        if len(_KS_SF) > 1_000_000:
            _KS_SF.clear()
        for v, sf in zip(todo, np.atleast_1d(kstwo.sf(np.array(todo), en)).tolist(), strict=True):
            _KS_SF[(v, en)] = sf
    sf_levels = np.array([_KS_SF[(v, en)] for v in levels.tolist()])
    return sf_levels[where].reshape(np.shape(stats))


def combine_p_values(pvals: np.ndarray, correction: str) -> np.ndarray:
    """Per row of per-feature p-values ``(tests, features)``, the combined p-value (see :func:`ks_test`)."""
    d = pvals.shape[1]
    if correction == "bonferroni":
        return np.minimum(1.0, pvals.min(axis=1) * d)
    if correction == "fdr_bh":
        ranked = np.sort(pvals, axis=1)
        return np.minimum(1.0, np.min(ranked * d / np.arange(1, d + 1), axis=1))
    return pvals.min(axis=1)


class TwoSampleDetector(NativeDetector):
    """A window detector: a two-sample test between a reference window and the current window.

    After a (re)start the first ``reference_size`` values form the reference window; the newest
    ``window_size`` values after them form the current window. Once it is full, the test runs every
    ``test_every`` values (the detector's check cadence: it can only alarm on those values, which
    adds up to ``test_every - 1`` values to a detection delay) and a drift is signalled when its
    p-value is below ``alpha``; the warning zone when it is below ``warning_alpha``. The detector
    restarts on the update after an alarm (a new reference is collected from the values that follow),
    and on :meth:`reset` (the engine resets it after every accepted update, with
    ``reset_after_update``: the reference is refreshed with data the updated model handles).

    Values are numbers or 1-D arrays (one sample's features); all must have the same length.
    Subclasses implement :meth:`_test`.

    Repeating a test of level ``alpha`` on overlapping windows raises more than ``alpha`` false
    alarms per test over a stationary stream. Set ``ert`` instead (the expected number of values
    between two false alarms on a stationary stream): the p-value threshold is then calibrated by
    simulation at the first test (:mod:`raydrift.detection.calibration`) and ``alpha`` is not used.

    At an alarm the detector locates the change (:attr:`values_since_change`): the most likely single
    shift of the (reference-standardised) feature means among the reference and the current window;
    the event's change point follows the data, not the test schedule.
    """

    name: ClassVar[str] = ""
    has_warnings: ClassVar[bool] = True
    #: from the calibration for ``ert``: (threshold, probability of an alarm at it, simulated mean
    #: run length, censored fraction, streams, tests), plain numbers so that the state stays plain;
    #: None until the first test
    _calibrated: tuple[float, float, float, float, int, int] | None

    def _init_windows(
        self,
        reference_size: int,
        window_size: int,
        test_every: int,
        alpha: float,
        warning_alpha: float,
        ert: float | None = None,
        calibration_cache: str | None = None,
    ) -> None:
        check_param("reference_size", reference_size >= 2, "an integer >= 2", reference_size)
        check_param("window_size", window_size >= 2, "an integer >= 2", window_size)
        check_param("test_every", test_every >= 1, "an integer >= 1", test_every)
        check_param("alpha", 0.0 < alpha < 1.0, "a number in (0, 1)", alpha)
        check_param(
            "warning_alpha", alpha <= warning_alpha < 1.0, f"a number in [alpha={alpha}, 1)", warning_alpha
        )
        first = reference_size + window_size
        check_param(
            "ert",
            ert is None or (isinstance(ert, int | float) and math.isfinite(ert) and ert > first),
            f"null or a number of values > reference_size + window_size = {first} (the first test)",
            ert,
        )
        check_param(
            "calibration_cache",
            calibration_cache is None or (isinstance(calibration_cache, str) and calibration_cache != ""),
            "null or a directory path",
            calibration_cache,
        )
        self.reference_size = reference_size
        self.window_size = window_size
        self.test_every = test_every
        self.alpha = alpha
        self.warning_alpha = warning_alpha
        self.ert = ert
        self.calibration_cache = calibration_cache
        self._calibrated = None

    def reset(self) -> None:
        self._reference: list[np.ndarray] = []
        self._window: deque[np.ndarray] = deque(maxlen=self.window_size)
        self._since_test = 0
        self._n = 0  # values since the (re)start
        self._drift = False
        self._warning = False
        self._statistic = 0.0
        self._p_value = 1.0
        self._since_change: int | None = None
        self._rng = np.random.default_rng(int(getattr(self, "seed", 0)))
        # the randomised decision at a calibrated threshold: its own stream, so that mmd's
        # permutations are those of the simulation, and not seeded again at a restart (every run
        # would draw the same coins)
        if getattr(self, "_coin", None) is None:
            self._coin = np.random.default_rng([int(getattr(self, "seed", 0)), 1])

    @property
    def threshold(self) -> float:
        """The p-value threshold in use: ``alpha``, or the one calibrated from ``ert`` (NaN until the
        first test calibrates it)."""
        if self.ert is None:
            return self.alpha
        return self._calibrated[0] if self._calibrated is not None else float("nan")

    @property
    def calibration(self) -> tuple[float, float, float, float, int, int] | None:
        """``(threshold, probability of an alarm at it, simulated mean run length, censored fraction,
        streams, tests)`` of the calibration behind :attr:`threshold` (``ert`` set, after the first
        test), else None."""
        return self._calibrated

    def calibrate(self, n_features: int) -> Calibration:
        """The p-value threshold for ``ert`` with ``n_features`` features (simulated once, cached)."""
        if self.ert is None:
            raise ValueError(f"{self.name}: calibrate() needs ert")
        key = {
            "detector": self.name,
            "params": {
                k: v
                for k, v in self.params().items()
                if k not in ("alpha", "warning_alpha", "ert", "calibration_cache")
            },
            "features": int(n_features),
        }
        first = self.reference_size + self.window_size
        cal = calibrate(
            key, self._simulate(n_features), float(self.ert), first, self.test_every, self.calibration_cache
        )
        self._calibrated = (
            cal.alpha, cal.edge_probability, cal.mean_run_length, cal.censored, cal.streams, cal.tests
        )
        return cal

    def _simulate(self, d: int) -> Any:
        """``simulate(rng)`` for :func:`~raydrift.detection.calibration.calibrate`: one stationary
        stream of i.i.d. standard normal samples with ``d`` features, run through this detector's test."""
        sim = self.clone()
        assert isinstance(sim, TwoSampleDetector)
        return lambda rng: _WindowStream(sim, rng, d)

    @property
    def values_since_change(self) -> int | None:
        """Values since the change located at the last alarm, that value included (None before)."""
        return self._since_change

    @property
    def statistic(self) -> float:
        """The test statistic of the last test (0 before the first)."""
        return self._statistic

    @property
    def p_value(self) -> float:
        """The p-value of the last test (1 before the first)."""
        return self._p_value

    @property
    def reference_full(self) -> bool:
        """Whether the reference window is complete."""
        return len(self._reference) >= self.reference_size

    def update(self, x: Any) -> None:
        if self._drift:
            self.reset()
        v = np.array(x, dtype=np.float64).reshape(-1)
        self._n += 1
        if not self.reference_full:
            self._reference.append(v)
            return
        self._window.append(v)
        if len(self._window) < self.window_size:
            return
        # test on the value that fills the window, then on every test_every-th value after it
        self._since_test += 1
        if (self._since_test - 1) % self.test_every != 0:
            return  # between tests: no alarm; the warning zone stays as the last test left it
        reference, current = np.stack(self._reference), np.stack(list(self._window))
        stat, p = self._test(reference, current)
        self._statistic, self._p_value = stat, p
        self._drift = p < self.alpha if self.ert is None else self._alarms(p, v.size)
        self._warning = not self._drift and p < self.warning_alpha
        if self._drift:
            self._since_change = self._locate(reference, current)

    def _alarms(self, p: float, n_features: int) -> bool:
        """The calibrated decision: below the threshold, or at it with the calibrated probability."""
        if self._calibrated is None:  # the first test: the number of features is known now
            self.calibrate(n_features)
        assert self._calibrated is not None
        level, q = self._calibrated[0], self._calibrated[1]
        return p < level or (p == level and float(self._coin.random()) < q)

    def _p_values(self, reference: np.ndarray, x: np.ndarray, starts: np.ndarray) -> np.ndarray:
        """The p-values of the tests of ``reference`` against the windows ``x[s : s + window_size]``
        for ``s`` in ``starts``, in order (the calibration's loop; a subclass may vectorise it)."""
        w = self.window_size
        return np.array([self._test(reference, x[s : s + w])[1] for s in starts.tolist()])

    def _locate(self, reference: np.ndarray, current: np.ndarray) -> int:
        """Values since the most likely single shift of the standardised feature means, among the
        reference and the current window (values between them, not kept, count as after a change
        located at the window's start)."""
        z = np.concatenate([reference, current])
        scale = reference.std(axis=0)
        z = (z - reference.mean(axis=0)) / np.where(scale > 0, scale, 1.0)
        n = z.shape[0]
        k = np.arange(1, n)  # split: z[:k] before, z[k:] after
        head = np.cumsum(z, axis=0)[:-1]
        total = head[-1] + z[-1]
        diff = head / k[:, None] - (total - head) / (n - k)[:, None]
        stat = (diff * diff).sum(axis=1) * k * (n - k) / n
        split = int(k[int(np.argmax(stat))])
        if split >= reference.shape[0]:  # inside the current window
            return n - split
        return self._n - split  # inside the reference: the unkept values between count too

    def _test(self, reference: np.ndarray, current: np.ndarray) -> tuple[float, float]:
        raise NotImplementedError


class _WindowStream:
    """One simulated stationary stream through a detector's test (the calibration's
    :class:`~raydrift.detection.calibration.SimulatedStream`): the first ``reference_size`` values are
    the reference, test ``k`` compares it with the ``window_size`` values from
    ``reference_size + k * test_every`` on, as the detector does after a (re)start. It keeps its
    generators (samples, and ``mmd``'s permutations, started from the detector's seed as after a
    restart) and the values the next windows overlap, so running it in several calls gives the
    p-values of one call."""

    def __init__(self, sim: TwoSampleDetector, rng: np.random.Generator, d: int) -> None:
        sim.reset()
        self._sim, self._rng, self._d = sim, rng, d
        self._perm = sim._rng  # the permutations' generator as after a restart
        self._reference = rng.standard_normal((sim.reference_size, d))
        self._buf = np.empty((0, d))  # values from stream position _buf_start (after the reference)
        self._buf_start = 0
        self._tests = 0

    def more(self, tests: int) -> np.ndarray:
        # in pieces: the values of a long extension are never all in memory at once
        return np.concatenate([self._more(min(512, tests - k)) for k in range(0, tests, 512)] or [np.empty(0)])

    def _more(self, tests: int) -> np.ndarray:
        sim = self._sim
        every, w = sim.test_every, sim.window_size
        first = self._tests * every  # start of the next window, after the reference
        need = first + (tests - 1) * every + w - (self._buf_start + self._buf.shape[0])
        if need > 0:
            self._buf = np.concatenate([self._buf, self._rng.standard_normal((need, self._d))])
        sim._rng = self._perm
        starts = first - self._buf_start + every * np.arange(tests)
        p = sim._p_values(self._reference, self._buf, starts)
        self._tests += tests
        drop = min(self._tests * every - self._buf_start, self._buf.shape[0])
        self._buf, self._buf_start = self._buf[drop:].copy(), self._buf_start + drop  # not a view of it all
        return p
