"""HDDM_A: Hoeffding-bound drift detection with a moving average test (wraps :class:`river.drift.binary.HDDMA`)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, ClassVar

from river import stats
from river.drift import binary

from raydrift.detection.base import RiverDetector, check_param

__all__ = ["HDDMADetector"]


class HDDMADetector(RiverDetector):
    """HDDM_A: alarms when the mean error of the stream since a cut point exceeds the mean before it by more than a Hoeffding bound.

    A binary detector for the per-sample error indicator (1 = error), meant for ``granularity:
    sample`` (its bounds assume values in [0, 1]; fed batch means it is valid but slow). It has a
    warning zone.

    Parameters
    ----------
    drift_confidence : float
        Confidence level of the drift test, in (0, 1); smaller = fewer false alarms.
    warning_confidence : float
        Confidence level of the warning test, in (0, 1), ``>= drift_confidence``.
    two_sided_test : bool
        Also flag a *decrease* of the error rate (by default only increases).

    Examples
    --------
    >>> import random
    >>> det = HDDMADetector()
    >>> rng = random.Random(0)
    >>> stream = [float(rng.random() < 0.05) for _ in range(2000)] + [float(rng.random() < 0.5) for _ in range(500)]
    >>> alarms = [i for i, x in enumerate(stream) if (det.update(x), det.drift_detected)[1]]
    >>> 2000 <= alarms[0] < 2200
    True
    """

    name: ClassVar[str] = "hddm_a"
    domain: ClassVar[str] = "probability"
    has_warnings: ClassVar[bool] = True

    @property
    def two_sided(self) -> bool:
        return bool(self.two_sided_test)
    river_cls: ClassVar[type[Any]] = binary.HDDMA

    def __init__(
        self,
        drift_confidence: float = 0.001,
        warning_confidence: float = 0.005,
        two_sided_test: bool = False,
    ) -> None:
        check_param("drift_confidence", 0.0 < drift_confidence < 1.0, "a number in (0, 1)", drift_confidence)
        check_param(
            "warning_confidence",
            drift_confidence <= warning_confidence < 1.0,
            f"a number in [drift_confidence={drift_confidence}, 1)",
            warning_confidence,
        )
        self.drift_confidence = drift_confidence
        self.warning_confidence = warning_confidence
        self.two_sided_test = two_sided_test
        self._build()

    def update_many(self, values: list[float]) -> int:
        return self.update_many_warnings(values, False)[0]

    def update_many_warnings(self, values: list[float], in_zone: bool) -> tuple[int, int, bool]:
        """River's HDDM_A fed in one tight loop over local variables: the arithmetic of
        :meth:`river.drift.binary.HDDMA.update` (its three running means, the Hoeffding bounds, the
        cut points and both tests), value by value in the same order, so the means and alarms are
        bit-identical, without River's method calls and ``Mean`` clones per value; the warning zones
        are tracked on the way by the engine's rule. The state is written back at the end (or at the
        alarm)."""
        river = self._river
        if type(river) is not binary.HDDMA or not _has_hddm_a_state(river):
            return super().update_many_warnings(values, in_zone)  # another River version's internals
        if river._drift_detected:  # River resets on the update after an alarm
            river._reset()
        z, lo, hi = river._z, river._x_min, river._x_max
        zn, zm, an, am, bn, bm = z.n, z._mean, lo.n, lo._mean, hi.n, hi._mean
        hb = math.log(1.0 / river.drift_confidence)  # the Hoeffding bound's log, as River computes it
        ld, lw = math.log(2.0 / river.drift_confidence), math.log(2.0 / river.warning_confidence)
        two, sqrt = river.two_sided_test, math.sqrt
        warning, drift = river._warning_detected, False
        opened, alarm = 0, -1
        for i, x in enumerate(values):
            zn += 1.0
            zm += (1.0 / zn) * (x - zm)
            if an == 0:
                an, am = zn, zm
            if bn == 0:
                bn, bm = zn, zm
            eps_z = sqrt(1.0 / (2 * zn) * hb)
            if am + sqrt(1.0 / (2 * an) * hb) >= zm + eps_z:
                an, am = zn, zm
            if bm - sqrt(1.0 / (2 * bn) * hb) <= zm - eps_z:
                bn, bm = zn, zm
            drift = warning = False
            if an != zn:  # the mean increased?
                m = (zn - an) / an * (1.0 / zn)
                if zm - am >= sqrt(m / 2 * ld):
                    drift = True
                elif zm - am >= sqrt(m / 2 * lw):
                    warning = True
            if two and bn != zn:  # the mean decreased?
                m = (zn - bn) / bn * (1.0 / zn)
                if bm - zm >= sqrt(m / 2 * ld):
                    drift = True
                elif bm - zm >= sqrt(m / 2 * lw):
                    warning = True
            if warning:
                if not in_zone:
                    in_zone, opened = True, opened + 1
            elif in_zone and not drift:
                in_zone = False
            if drift:
                alarm = i
                break
        z.n, z._mean, lo.n, lo._mean, hi.n, hi._mean = zn, zm, an, am, bn, bm
        river._warning_detected, river._drift_detected = warning, drift
        return alarm, opened, in_zone

    @classmethod
    def _unit_test_params(cls) -> Iterator[dict[str, Any]]:
        yield {}
        yield {"drift_confidence": 0.0001, "two_sided_test": True}


def _has_hddm_a_state(river: Any) -> bool:
    """Whether ``river`` holds what the fast path reads (River 0.21-0.26's HDDMA): three distinct
    plain running means and the two flags."""
    means = [getattr(river, a, None) for a in ("_z", "_x_min", "_x_max")]
    return (
        all(type(m) is stats.Mean for m in means)
        and len({id(m) for m in means}) == 3
        and hasattr(river, "_drift_detected")
        and hasattr(river, "_warning_detected")
    )
