"""HDDM_W: Hoeffding-bound drift detection with a moving weighted average test (wraps :class:`river.drift.binary.HDDMW`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

from river.drift import binary

from raydrift.detection.base import RiverDetector, check_param

__all__ = ["HDDMWDetector"]


class HDDMWDetector(RiverDetector):
    """HDDM_W: alarms when an exponentially weighted error average exceeds the one before a cut point by more than a McDiarmid bound.

    A binary detector for the per-sample error indicator (1 = error), meant for ``granularity:
    sample`` (its bounds assume values in [0, 1]; fed batch means it is valid but slow). It has a
    warning zone.

    Parameters
    ----------
    drift_confidence : float
        Confidence level of the drift test, in (0, 1); smaller = fewer false alarms.
    warning_confidence : float
        Confidence level of the warning test, in (0, 1), ``>= drift_confidence``.
    lambda_val : float
        Weight of the newest value in the exponentially weighted averages, in (0, 1].
    two_sided_test : bool
        Also flag a *decrease* of the error rate (by default only increases).

    Examples
    --------
    >>> import random
    >>> det = HDDMWDetector()
    >>> rng = random.Random(0)
    >>> stream = [float(rng.random() < 0.05) for _ in range(2000)] + [float(rng.random() < 0.5) for _ in range(500)]
    >>> alarms = [i for i, x in enumerate(stream) if (det.update(x), det.drift_detected)[1]]
    >>> 2000 <= alarms[0] < 2200
    True
    """

    name: ClassVar[str] = "hddm_w"
    domain: ClassVar[str] = "probability"
    has_warnings: ClassVar[bool] = True

    @property
    def two_sided(self) -> bool:
        return bool(self.two_sided_test)
    river_cls: ClassVar[type[Any]] = binary.HDDMW

    def __init__(
        self,
        drift_confidence: float = 0.001,
        warning_confidence: float = 0.005,
        lambda_val: float = 0.05,
        two_sided_test: bool = False,
    ) -> None:
        check_param("drift_confidence", 0.0 < drift_confidence < 1.0, "a number in (0, 1)", drift_confidence)
        check_param(
            "warning_confidence",
            drift_confidence <= warning_confidence < 1.0,
            f"a number in [drift_confidence={drift_confidence}, 1)",
            warning_confidence,
        )
        check_param("lambda_val", 0.0 < lambda_val <= 1.0, "a number in (0, 1]", lambda_val)
        self.drift_confidence = drift_confidence
        self.warning_confidence = warning_confidence
        self.lambda_val = lambda_val
        self.two_sided_test = two_sided_test
        self._build()

    @classmethod
    def _unit_test_params(cls) -> Iterator[dict[str, Any]]:
        yield {}
        yield {"drift_confidence": 0.0001, "two_sided_test": True}
