"""MMD: label-free drift detection by a kernel two-sample test with a permutation p-value."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np

from raydrift.detection.base import check_param
from raydrift.detection.two_sample import TwoSampleDetector, mmd_test

__all__ = ["MMDDetector"]


class MMDDetector(TwoSampleDetector):
    """MMD: alarms when a kernel two-sample test separates the current window from the reference window.

    Multivariate (features, embeddings) or univariate (confidence, entropy, a per-sample metric).
    The statistic is the squared maximum mean discrepancy with a Gaussian kernel whose bandwidth is
    the median pairwise distance of the pooled windows; the p-value comes from ``permutations``
    random relabellings, so it is never below ``1 / (permutations + 1)``: ``alpha`` must be larger.
    Windows are described in :class:`raydrift.detection.two_sample.TwoSampleDetector`. One test costs
    O((reference_size + window_size)^2 * permutations): about 10-30 ms at the defaults.

    Parameters
    ----------
    reference_size : int
        Values in the reference window, collected after each (re)start.
    window_size : int
        Values in the current (sliding) window.
    test_every : int
        Values between two tests once the current window is full (the check cadence).
    alpha : float
        Drift when the p-value is below it; ``> 1 / (permutations + 1)`` (not used with ``ert``).
    warning_alpha : float
        Warning zone when the p-value is below it (``>= alpha``).
    permutations : int
        Relabellings for the p-value.
    standardize : bool
        Scale each feature by its reference standard deviation before the test (features of very
        different scales would otherwise be dominated by the largest).
    seed : int
        Seed of the permutations (the run's seed unless ``params`` sets one).
    ert : float or None
        Expected run time between false alarms, in values (samples), on a stationary stream: with a
        value, ``alpha`` is not used; the p-value threshold is calibrated by simulation at the first
        test (:mod:`raydrift.detection.calibration`). ``> reference_size + window_size``; the
        threshold it needs must stay above ``1 / (permutations + 1)``.
    calibration_cache : str or None
        Directory where that calibration is kept as a JSON file, one per setting (null: the default
        cache directory, :func:`~raydrift.detection.calibration.default_cache_dir`).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> det = MMDDetector(reference_size=100, window_size=100, test_every=50, seed=0)
    >>> xs = np.concatenate([rng.normal(size=(400, 2)), rng.normal(size=(300, 2)) + [1.5, 0.0]])
    >>> alarms = [t for t, x in enumerate(xs) if (det.update(x), det.drift_detected)[1]]
    >>> 400 <= alarms[0] < 550
    True
    """

    name: ClassVar[str] = "mmd"

    def __init__(
        self,
        reference_size: int = 200,
        window_size: int = 200,
        test_every: int = 100,
        alpha: float = 0.005,
        warning_alpha: float = 0.05,
        permutations: int = 299,
        standardize: bool = True,
        seed: int = 0,
        ert: float | None = None,
        calibration_cache: str | None = None,
    ) -> None:
        self._init_windows(
            reference_size, window_size, test_every, alpha, warning_alpha, ert, calibration_cache
        )
        check_param("permutations", permutations >= 1, "an integer >= 1", permutations)
        check_param(
            "alpha",
            ert is not None or alpha > 1.0 / (permutations + 1),
            f"a number > 1 / (permutations + 1) = {1.0 / (permutations + 1):.4g}",
            alpha,
        )
        if ert is not None:  # the threshold is at least about one test's share of the run
            first = reference_size + window_size
            share = test_every / (ert - first + test_every)
            check_param(
                "ert",
                share > 2.0 / (permutations + 1),
                f"a run length the p-values of {permutations} permutations can resolve (ert < "
                f"{first - test_every + test_every * (permutations + 1) / 2:.0f}; raise permutations)",
                ert,
            )
        self.permutations = permutations
        self.standardize = standardize
        self.seed = seed
        self.reset()

    def _test(self, reference: np.ndarray, current: np.ndarray) -> tuple[float, float]:
        if self.standardize:
            scale = reference.std(axis=0)
            scale[scale <= 0] = 1.0
            reference, current = reference / scale, current / scale
        return mmd_test(reference, current, self.permutations, self._rng)

    @classmethod
    def _unit_test_params(cls) -> Iterator[dict[str, Any]]:
        yield {"reference_size": 100, "window_size": 60, "test_every": 30, "permutations": 99, "alpha": 0.02}
        yield {
            "reference_size": 80,
            "window_size": 50,
            "test_every": 25,
            "permutations": 99,
            "alpha": 0.02,
            "standardize": False,
            "seed": 3,
        }
