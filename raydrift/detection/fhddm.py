"""FHDDM: the Fast Hoeffding Drift Detection Method (wraps :class:`river.drift.binary.FHDDM`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

from river.drift import binary

from raydrift.detection.base import RiverDetector, check_param

__all__ = ["FHDDMDetector"]


class FHDDMDetector(RiverDetector):
    """FHDDM: alarms when the accuracy in a sliding window falls a Hoeffding bound below its maximum.

    A binary detector for the per-sample error indicator (1 = error): use it at ``granularity:
    sample``. It has no warning zone.

    River's implementation alarms when the window mean of its input *drops* (it tracks the maximum
    of the mean, as the original FHDDM does with the accuracy), although its docstring calls its
    input an error indicator. So this wrapper feeds River ``1 - x``, the correctness indicator: fed
    raydrift's error indicator, it alarms when errors increase.

    Parameters
    ----------
    sliding_window_size : int
        Values in the sliding window; no alarm before it is full.
    confidence_level : float
        Probability of a false alarm allowed by the Hoeffding bound, in (0, 1).
    short_window_size : int or None
        With a value (< ``sliding_window_size``), also test a short window (the "stacking" FHDDM-S
        variant, quicker on abrupt changes).

    Examples
    --------
    >>> import random
    >>> det = FHDDMDetector()
    >>> rng = random.Random(0)
    >>> stream = [float(rng.random() < 0.05) for _ in range(2000)] + [float(rng.random() < 0.5) for _ in range(500)]
    >>> alarms = [i for i, x in enumerate(stream) if (det.update(x), det.drift_detected)[1]]
    >>> 2000 <= alarms[0] < 2200
    True
    """

    name: ClassVar[str] = "fhddm"
    domain: ClassVar[str] = "binary"

    @property
    def two_sided(self) -> bool:
        return False
    river_cls: ClassVar[type[Any]] = binary.FHDDM

    def __init__(
        self,
        sliding_window_size: int = 100,
        confidence_level: float = 0.000001,
        short_window_size: int | None = None,
    ) -> None:
        check_param("sliding_window_size", sliding_window_size >= 2, "an integer >= 2", sliding_window_size)
        check_param("confidence_level", 0.0 < confidence_level < 1.0, "a number in (0, 1)", confidence_level)
        check_param(
            "short_window_size",
            short_window_size is None or 1 <= short_window_size < sliding_window_size,
            f"null or an integer in [1, sliding_window_size={sliding_window_size})",
            short_window_size,
        )
        self.sliding_window_size = sliding_window_size
        self.confidence_level = confidence_level
        self.short_window_size = short_window_size
        self._build()

    def update(self, x: float) -> None:
        self._river.update(1.0 - x)

    @classmethod
    def _unit_test_params(cls) -> Iterator[dict[str, Any]]:
        yield {}
        yield {"sliding_window_size": 60, "short_window_size": 20}
