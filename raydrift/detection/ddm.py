"""DDM: the Drift Detection Method of Gama et al. (wraps :class:`river.drift.binary.DDM`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

from river.drift import binary

from raydrift.detection.base import RiverDetector, check_param

__all__ = ["DDMDetector"]


class DDMDetector(RiverDetector):
    """DDM: alarms when the error rate rises ``drift_threshold`` standard deviations above its minimum.

    A binary detector: it expects the per-sample error indicator (1 = the model was wrong, 0 = right),
    which is what the engine feeds at ``granularity: sample`` for a higher-is-better 0/1 metric such as
    accuracy. It only flags *increases* of the error rate. Fed batch or interval means it treats them as
    error probabilities, but its standard deviation is the Bernoulli one of a single sample, so it is
    then far too slow: use it at ``sample`` granularity.

    Parameters
    ----------
    warm_start : int
        Values seen before the first warning or alarm can be raised.
    warning_threshold : float
        Standard deviations above the minimum at which the warning zone starts.
    drift_threshold : float
        Standard deviations above the minimum at which a drift is signalled
        (``> warning_threshold``).

    Examples
    --------
    >>> import random
    >>> det = DDMDetector()
    >>> rng = random.Random(0)
    >>> stream = [float(rng.random() < 0.05) for _ in range(2000)] + [float(rng.random() < 0.5) for _ in range(500)]
    >>> alarms = [i for i, x in enumerate(stream) if (det.update(x), det.drift_detected)[1]]
    >>> any(2000 <= a < 2200 for a in alarms)  # DDM also raises early false alarms (at 35 and 117 here)
    True
    """

    name: ClassVar[str] = "ddm"
    domain: ClassVar[str] = "binary"
    has_warnings: ClassVar[bool] = True
    warmup: ClassVar[int] = 300  # its minimum error rate is estimated from few values at first

    @property
    def two_sided(self) -> bool:
        return False
    river_cls: ClassVar[type[Any]] = binary.DDM

    def __init__(
        self, warm_start: int = 30, warning_threshold: float = 2.0, drift_threshold: float = 3.0
    ) -> None:
        check_param("warm_start", warm_start >= 0, "an integer >= 0", warm_start)
        check_param("warning_threshold", warning_threshold > 0, "a number > 0", warning_threshold)
        check_param(
            "drift_threshold",
            drift_threshold > warning_threshold,
            f"a number > warning_threshold={warning_threshold}",
            drift_threshold,
        )
        self.warm_start = warm_start
        self.warning_threshold = warning_threshold
        self.drift_threshold = drift_threshold
        self._build()

    @classmethod
    def _unit_test_params(cls) -> Iterator[dict[str, Any]]:
        yield {}
        yield {"warm_start": 50, "warning_threshold": 1.5, "drift_threshold": 2.5}
