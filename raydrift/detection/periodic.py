"""Periodic trigger: a baseline that signals a "drift" every ``period`` values, whatever they are."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

from raydrift.detection.base import NativeDetector, check_param

__all__ = ["PeriodicDetector"]


class PeriodicDetector(NativeDetector):
    """Periodic baseline: alarms on every ``period``-th value fed, ignoring the values.

    The "retrain on a schedule" policy, as a detector: benchmarks print it next to every real detector,
    and it is a legitimate setting when updates are cheap. ``period`` counts the values fed, so it is in
    samples at ``granularity: sample``, in batches at ``batch`` and in intervals at ``interval``. The
    count restarts at every :meth:`reset` (with ``reset_after_update``, after every update).

    Parameters
    ----------
    period : int
        Values between two alarms (>= 1).
    offset : int
        Values before the first alarm (default: ``period``).

    Examples
    --------
    >>> det = PeriodicDetector(period=3)
    >>> [t for t in range(10) if (det.update(0.0), det.drift_detected)[1]]
    [2, 5, 8]
    """

    name: ClassVar[str] = "periodic"
    baseline: ClassVar[bool] = True

    def __init__(self, period: int = 5000, offset: int | None = None) -> None:
        check_param("period", period >= 1, "an integer >= 1", period)
        check_param("offset", offset is None or offset >= 1, "null or an integer >= 1", offset)
        self.period = period
        self.offset = offset
        self.reset()

    def reset(self) -> None:
        self._n = 0
        self._drift = False

    def update(self, x: float) -> None:
        self._n += 1
        first = self.offset if self.offset is not None else self.period
        self._drift = self._n >= first and (self._n - first) % self.period == 0

    @classmethod
    def _unit_test_params(cls) -> Iterator[dict[str, Any]]:
        yield {"period": 150}
        yield {"period": 100, "offset": 30}
