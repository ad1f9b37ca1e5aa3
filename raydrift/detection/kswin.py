"""KSWIN: Kolmogorov-Smirnov windowing (wraps :class:`river.drift.KSWIN`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

from river import drift

from raydrift.detection.base import RiverDetector, check_param

__all__ = ["KSWINDetector"]


class KSWINDetector(RiverDetector):
    """KSWIN: alarms when a Kolmogorov-Smirnov test separates the newest values from a sample of older ones.

    Parameters
    ----------
    alpha : float
        Significance of the KS test, in (0, 1); River advises below 0.01.
    window_size : int
        Sliding window of the most recent values.
    stat_size : int
        Size of the newest part of the window and of the random sample drawn from the older part;
        ``stat_size < window_size``.
    seed : int
        Seed of the random sample of old values, so that a run is reproducible.
        :func:`raydrift.detection.make_detector` passes the run's seed unless ``params`` sets one.

    Notes
    -----
    KSWIN runs a two-sample KS test on every update (about 200 us each): on a per-sample stream of
    thousands of samples per second it can use a whole core.

    Examples
    --------
    >>> import random
    >>> det = KSWINDetector(seed=1)
    >>> rng = random.Random(0)
    >>> stream = [rng.gauss(0.3, 0.1) for _ in range(1000)] + [rng.gauss(0.6, 0.1) for _ in range(500)]
    >>> alarms = []
    >>> for i, x in enumerate(stream):
    ...     det.update(x)
    ...     if det.drift_detected:
    ...         alarms.append(i)
    >>> min(a for a in alarms if a >= 1000) < 1100  # the first alarm after the change at 1000
    True
    """

    name: ClassVar[str] = "kswin"
    river_cls: ClassVar[type[Any]] = drift.KSWIN

    def __init__(
        self, alpha: float = 0.005, window_size: int = 100, stat_size: int = 30, seed: int = 0
    ) -> None:
        check_param("alpha", 0.0 < alpha < 1.0, "a number in (0, 1)", alpha)
        check_param("window_size", window_size >= 2, "an integer >= 2", window_size)
        check_param(
            "stat_size",
            1 <= stat_size < window_size,
            f"an integer in [1, window_size={window_size})",
            stat_size,
        )
        self.alpha = alpha
        self.window_size = window_size
        self.stat_size = stat_size
        self.seed = seed
        self._build()

    @classmethod
    def _unit_test_params(cls) -> Iterator[dict[str, Any]]:
        yield {"seed": 1}
        yield {"alpha": 0.001, "window_size": 60, "stat_size": 20, "seed": 3}
