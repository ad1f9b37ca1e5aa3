"""DDM: the Drift Detection Method of Gama et al. (wraps :class:`river.drift.binary.DDM`)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, ClassVar

from river import stats
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

    def update_many(self, values: list[float]) -> int:
        return self.update_many_warnings(values, False)[0]

    def update_many_warnings(self, values: list[float], in_zone: bool) -> tuple[int, int, bool]:
        """River's DDM fed in one tight loop over local variables: the arithmetic of
        :meth:`river.drift.binary.DDM.update` (and of its running ``stats.Mean``), value by value in
        the same order, so the error rates, minima and alarms are bit-identical, without River's
        method calls per value; the warning zones are tracked on the way by the engine's rule (see
        :meth:`DriftDetector.update_many_warnings`). The state is written back at the end (or at the
        alarm)."""
        river = self._river
        mean = getattr(river, "_p", None)
        if type(river) is not binary.DDM or type(mean) is not stats.Mean or not _has_ddm_state(river):
            return super().update_many_warnings(values, in_zone)  # another River version's internals
        if river._drift_detected:  # River resets on the update after an alarm
            river._reset()
            mean = river._p
        n, p = mean.n, mean._mean
        p_min, s_min, ps_min = river._p_min, river._s_min, river._ps_min
        warm, wt, dt = river.warm_start, river.warning_threshold, river.drift_threshold
        warning, drift = river._warning_detected, False
        warn_at = drift_at = 0.0
        if p_min is not None:
            warn_at, drift_at = p_min + wt * s_min, p_min + dt * s_min
        sqrt = math.sqrt
        opened, alarm = 0, -1
        for i, x in enumerate(values):
            n += 1.0
            p += (1.0 / n) * (x - p)
            if n > warm:
                s = sqrt(p * (1 - p) / n)
                ps = p + s
                if ps <= ps_min:
                    p_min, s_min, ps_min = p, s, ps
                    warn_at, drift_at = p_min + wt * s_min, p_min + dt * s_min
                warning = ps > warn_at
                if ps > drift_at:
                    drift, warning = True, False
            if warning:
                if not in_zone:
                    in_zone, opened = True, opened + 1
            elif in_zone and not drift:
                in_zone = False
            if drift:
                alarm = i
                break
        mean.n, mean._mean = n, p
        river._p_min, river._s_min, river._ps_min = p_min, s_min, ps_min
        river._warning_detected, river._drift_detected = warning, drift
        return alarm, opened, in_zone

    @classmethod
    def _unit_test_params(cls) -> Iterator[dict[str, Any]]:
        yield {}
        yield {"warm_start": 50, "warning_threshold": 1.5, "drift_threshold": 2.5}


_DDM_STATE = ("_drift_detected", "_warning_detected", "_p_min", "_s_min", "_ps_min")


def _has_ddm_state(river: Any) -> bool:
    """Whether ``river`` holds the attributes the fast path reads (River 0.21-0.26's DDM)."""
    return all(hasattr(river, a) for a in _DDM_STATE) and hasattr(river._p, "_mean")
