"""Never-trigger baseline: a detector that never signals a drift (the "deploy and forget" policy)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

from raydrift.detection.base import NativeDetector

__all__ = ["NeverDetector"]


class NeverDetector(NativeDetector):
    """Never baseline: never alarms; the model is never updated.

    Benchmarks print it next to every real detector (its misses are every change, its false alarms
    zero). It counts the values fed, so that its state is not trivially empty.

    Examples
    --------
    >>> det = NeverDetector()
    >>> any((det.update(1.0), det.drift_detected)[1] for _ in range(1000))
    False
    """

    name: ClassVar[str] = "never"
    baseline: ClassVar[bool] = True

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self._n = 0

    @property
    def drift_detected(self) -> bool:
        return False

    def update(self, x: float) -> None:
        self._n += 1

    @classmethod
    def _unit_test_params(cls) -> Iterator[dict[str, Any]]:
        yield {}
