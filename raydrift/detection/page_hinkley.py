"""Page-Hinkley: a CUSUM test on the deviation from the running mean (wraps :class:`river.drift.PageHinkley`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

from river import drift, stats

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

    def update_many(self, values: list[float]) -> int:
        """River's Page-Hinkley fed in one tight loop over local variables: the arithmetic of
        :meth:`river.drift.PageHinkley.update` (and of its running ``stats.Mean``), value by value in
        the same order, so the sums and alarms are bit-identical, without River's four method calls
        per value. The state is written back to the River object at the end (or at the alarm)."""
        river = self._river
        mean = getattr(river, "_x_mean", None)
        if type(river) is not drift.PageHinkley or type(mean) is not stats.Mean or not _has_ph_state(river):
            return super().update_many(values)  # another River version's internals: the public loop
        if river._drift_detected:  # River resets on the update after an alarm
            river._reset()
            mean = river._x_mean
        up, down = river.mode != "down", river.mode != "up"
        n, m = mean.n, mean._mean
        si, sd, lo, hi = river._sum_increase, river._sum_decrease, river._min_increase, river._max_decrease
        alpha, delta, thr, min_n = river.alpha, river.delta, river.threshold, river.min_instances
        alarm = -1
        for i, x in enumerate(values):
            n += 1.0
            m += (1.0 / n) * (x - m)
            dev = x - m
            si = alpha * si + dev - delta
            sd = alpha * sd + dev + delta
            if si < lo:
                lo = si
            if sd > hi:
                hi = sd
            if n >= min_n and ((up and si - lo > thr) or (down and hi - sd > thr)):
                alarm = i
                break
        mean.n, mean._mean = n, m
        river._sum_increase, river._sum_decrease, river._min_increase, river._max_decrease = si, sd, lo, hi
        river._drift_detected = alarm >= 0
        return alarm

    @classmethod
    def _unit_test_params(cls) -> Iterator[dict[str, Any]]:
        yield {}
        yield {"threshold": 20.0, "mode": "up", "min_instances": 50}


_PH_STATE = ("_drift_detected", "_sum_increase", "_sum_decrease", "_min_increase", "_max_decrease")


def _has_ph_state(river: Any) -> bool:
    """Whether ``river`` holds the attributes the fast path reads (River 0.21-0.26's PageHinkley)."""
    return all(hasattr(river, a) for a in _PH_STATE) and hasattr(river._x_mean, "_mean")
