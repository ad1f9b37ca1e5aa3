"""KS: label-free drift detection by per-feature Kolmogorov-Smirnov tests with a multiple-testing correction."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np

from raydrift.detection.base import check_param
from raydrift.detection.two_sample import (
    CORRECTIONS,
    TwoSampleDetector,
    combine_p_values,
    ks_sf,
    ks_test,
    ks_window_statistics,
)

__all__ = ["KSDetector"]


class KSDetector(TwoSampleDetector):
    """KS: alarms when some feature's distribution differs between the reference and current windows.

    A two-sample Kolmogorov-Smirnov test per feature (asymptotic p-values, as
    ``scipy.stats.ks_2samp(method="asymp")``), combined by ``correction`` into one p-value for "some
    feature changed" (see :func:`raydrift.detection.two_sample.ks_test`). Cheap (vectorized over
    features) and tells which feature moved, but blind to a change of the dependence between features
    (use ``mmd`` for that). Windows are described in
    :class:`raydrift.detection.two_sample.TwoSampleDetector`.

    Parameters
    ----------
    reference_size : int
        Values in the reference window, collected after each (re)start.
    window_size : int
        Values in the current (sliding) window.
    test_every : int
        Values between two tests once the current window is full (the check cadence).
    alpha : float
        Drift when the corrected p-value is below it (unless ``ert`` is set).
    warning_alpha : float
        Warning zone when the corrected p-value is below it (``>= alpha``).
    correction : {"bonferroni", "fdr_bh", "none"}
        Multiple-testing correction over features.
    ert : float or None
        Expected run time between false alarms, in values (samples), on a stationary stream: with a
        value, ``alpha`` is not used; the p-value threshold is calibrated by simulation at the first
        test (:mod:`raydrift.detection.calibration`). ``> reference_size + window_size``.
    calibration_cache : str or None
        Directory where that calibration is kept as a JSON file, one per setting (null: the default
        cache directory, :func:`~raydrift.detection.calibration.default_cache_dir`).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> det = KSDetector(reference_size=100, window_size=100, test_every=50)
    >>> xs = np.concatenate([rng.normal(size=(400, 4)), rng.normal(size=(300, 4)) + [0, 0, 1.5, 0]])
    >>> alarms = [t for t, x in enumerate(xs) if (det.update(x), det.drift_detected)[1]]
    >>> 400 <= alarms[0] < 550
    True
    """

    name: ClassVar[str] = "ks"

    def __init__(
        self,
        reference_size: int = 200,
        window_size: int = 200,
        test_every: int = 100,
        alpha: float = 0.0005,
        warning_alpha: float = 0.01,
        correction: str = "bonferroni",
        ert: float | None = None,
        calibration_cache: str | None = None,
    ) -> None:
        self._init_windows(
            reference_size, window_size, test_every, alpha, warning_alpha, ert, calibration_cache
        )
        check_param("correction", correction in CORRECTIONS, f"one of {', '.join(CORRECTIONS)}", correction)
        self.correction = correction
        self.reset()

    def _test(self, reference: np.ndarray, current: np.ndarray) -> tuple[float, float]:
        return ks_test(reference, current, self.correction)

    def _p_values(self, reference: np.ndarray, x: np.ndarray, starts: np.ndarray) -> np.ndarray:
        # the statistics of all windows from ranks against the sorted reference, their p-values in one
        # call: what ks_test computes, vectorised (the same floats for samples without ties)
        ref = np.asarray(reference, dtype=np.float64).reshape(reference.shape[0], -1)
        n, m = ref.shape[0], self.window_size
        stats = ks_window_statistics(ref, np.asarray(x, dtype=np.float64).reshape(x.shape[0], -1), starts, m)
        sf = np.clip(ks_sf(stats, round(n * m / (n + m))), 0.0, 1.0)
        return combine_p_values(sf, self.correction)

    @classmethod
    def _unit_test_params(cls) -> Iterator[dict[str, Any]]:
        yield {"reference_size": 100, "window_size": 60, "test_every": 20, "alpha": 0.001}
        yield {"reference_size": 80, "window_size": 50, "test_every": 25, "correction": "fdr_bh"}
        yield {"reference_size": 20, "window_size": 20, "test_every": 10, "ert": 300}
