"""EDDM: the Early Drift Detection Method (wraps :class:`river.drift.binary.EDDM`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

from river.drift import binary

from raydrift.detection.base import RiverDetector, check_param

__all__ = ["EDDMDetector"]


class EDDMDetector(RiverDetector):
    """EDDM: alarms when the distance between consecutive errors shrinks well below its maximum.

    A binary detector for the per-sample error indicator (1 = error), use it at ``granularity:
    sample``: it counts a fed value equal to 1 as an error and anything else as a correct
    prediction, so batch or interval means are meaningless to it. Meant for gradual drift: it watches
    the mean and spread of the gap between errors rather than the error rate itself.

    Parameters
    ----------
    warm_start : int
        Errors seen before the first warning or alarm can be raised.
    alpha : float
        Warning zone when (mean + 2 std of the error gap) falls below ``alpha`` times its maximum;
        in (0, 1), ``alpha >= beta``.
    beta : float
        Drift when it falls below ``beta`` times its maximum; in (0, 1).

    Examples
    --------
    >>> import random
    >>> det = EDDMDetector()
    >>> rng = random.Random(0)
    >>> stream = [float(rng.random() < 0.05) for _ in range(3000)] + [float(rng.random() < 0.6) for _ in range(500)]
    >>> alarms = [i for i, x in enumerate(stream) if (det.update(x), det.drift_detected)[1]]
    >>> any(3000 <= a < 3300 for a in alarms)
    True
    """

    name: ClassVar[str] = "eddm"
    domain: ClassVar[str] = "binary"
    has_warnings: ClassVar[bool] = True
    warmup: ClassVar[int] = 300

    @property
    def two_sided(self) -> bool:
        return False
    river_cls: ClassVar[type[Any]] = binary.EDDM

    def __init__(self, warm_start: int = 30, alpha: float = 0.95, beta: float = 0.9) -> None:
        check_param("warm_start", warm_start >= 0, "an integer >= 0", warm_start)
        check_param("alpha", 0.0 < alpha < 1.0, "a number in (0, 1)", alpha)
        check_param("beta", 0.0 < beta < 1.0, "a number in (0, 1)", beta)
        # River's EDDM warns when the ratio drops below alpha and alarms below beta.
        check_param("alpha", alpha >= beta, f"a number >= beta={beta}", alpha)
        self.warm_start = warm_start
        self.alpha = alpha
        self.beta = beta
        self._build()

    @classmethod
    def _unit_test_params(cls) -> Iterator[dict[str, Any]]:
        yield {}
        yield {"warm_start": 20, "alpha": 0.9, "beta": 0.8}
