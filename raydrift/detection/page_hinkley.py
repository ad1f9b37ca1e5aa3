"""Page-Hinkley: a CUSUM test on the deviation from the running mean (wraps :class:`river.drift.PageHinkley`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

from river import drift

from raydrift.detection.base import RiverDetector, check_param

__all__ = ["PageHinkleyDetector"]

_MODES = ("up", "down", "both")


class PageHinkleyDetector(RiverDetector):
    """Page-Hinkley: alarms when the cumulative deviation from the (fading) running mean exceeds a threshold.

    Parameters
    ----------
    min_instances : int
        No alarm before this many values have been fed.
    delta : float
        Magnitude of change tolerated per value (the CUSUM drift allowance).
    threshold : float
        Alarm threshold (lambda) on the cumulative deviation. It is in units of the fed value: a
        threshold tuned for per-sample 0/1 errors is far too large for batch or interval means, whose
        deviations are much smaller.
    alpha : float
        Forgetting factor of the cumulative sums, in (0, 1].
    mode : {"up", "down", "both"}
        Which changes of the fed value are tested. The fed value increases when the metric gets worse,
        so ``"up"`` only detects degradations; the default ``"both"`` leaves the filtering to the
        engine's ``direction`` setting.

    Examples
    --------
    >>> import random
    >>> det = PageHinkleyDetector()
    >>> rng = random.Random(0)
    >>> stream = [float(rng.random() < 0.05) for _ in range(2000)] + [float(rng.random() < 0.5) for _ in range(500)]
    >>> alarms = []
    >>> for i, x in enumerate(stream):
    ...     det.update(x)
    ...     if det.drift_detected:
    ...         alarms.append(i)
    >>> 2000 <= alarms[0] < 2300
    True
    """

    name: ClassVar[str] = "page_hinkley"
    river_cls: ClassVar[type[Any]] = drift.PageHinkley

    @property
    def two_sided(self) -> bool:
        return self.mode == "both"

    def __init__(
        self,
        min_instances: int = 30,
        delta: float = 0.005,
        threshold: float = 50.0,
        alpha: float = 1 - 0.0001,
        mode: str = "both",
    ) -> None:
        check_param("min_instances", min_instances >= 1, "an integer >= 1", min_instances)
        check_param("delta", delta >= 0.0, "a number >= 0", delta)
        check_param("threshold", threshold > 0.0, "a number > 0", threshold)
        check_param("alpha", 0.0 < alpha <= 1.0, "a number in (0, 1]", alpha)
        check_param("mode", mode in _MODES, f"one of {', '.join(_MODES)}", mode)
        self.min_instances = min_instances
        self.delta = delta
        self.threshold = threshold
        self.alpha = alpha
        self.mode = mode
        self._build()

    @classmethod
    def _unit_test_params(cls) -> Iterator[dict[str, Any]]:
        yield {}
        yield {"threshold": 20.0, "mode": "up", "min_instances": 50}
