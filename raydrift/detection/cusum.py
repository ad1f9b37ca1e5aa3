"""CUSUM: Page's cumulative-sum control chart on standardized values (implemented in raydrift)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

from raydrift.detection.base import ControlChart, check_param

__all__ = ["CUSUMDetector"]


class CUSUMDetector(ControlChart):
    """CUSUM: alarms when the cumulative standardized excess over the in-control mean exceeds ``threshold``.

    Page's tabular CUSUM. Each value is standardized, ``z = (x - target) / sigma``, and accumulated::

        S+_t = max(0, S+_{t-1} + z_t - allowance)        (increase: the metric got worse)
        S-_t = max(0, S-_{t-1} - z_t - allowance)        (decrease; only with ``mode: both``)

    and a drift is signalled when ``S+ > threshold`` (or ``S- > threshold``). ``allowance`` (k) and
    ``threshold`` (h) are in standard deviations, so the same setting works at every granularity once
    ``target`` and ``sigma`` describe the values fed. k is usually half the shift to detect (in
    standard deviations); h sets the false-alarm rate. For normal values, k = 0.5 and h = 4 give an
    in-control average run length (ARL) of about 336 values and detect a 1-sigma shift after about 8.4
    (Siegmund's approximation; ``tests/test_detectors_control_charts.py`` checks both).

    When ``target`` or ``sigma`` is not given it is estimated from the first ``min_instances`` values
    after a (re)start (the burn-in: no alarm during it); see
    :func:`raydrift.detection.base.estimate_mean_std` for 0/1 values. Like River's detectors, it
    starts afresh (with a new burn-in) on the update after an alarm.

    Parameters
    ----------
    allowance : float
        k: slack per value, in standard deviations (>= 0).
    threshold : float
        h: alarm threshold on the cumulative sum, in standard deviations (> 0).
    warning_threshold : float
        Warning zone while a cumulative sum exceeds this (in standard deviations,
        ``<= threshold``).
    min_instances : int
        Burn-in values used to estimate ``target`` / ``sigma``; no alarm before the first value
        after them. Not used when both ``target`` and ``sigma`` are given.
    target : float or None
        In-control mean of the fed values (``null``: estimated during the burn-in).
    sigma : float or None
        In-control standard deviation of the fed values (``null``: estimated during the burn-in).
    min_sigma : float
        Floor of an estimated ``sigma`` for non-binary values (guards against a constant burn-in).
    mode : {"up", "both"}
        ``up``: only increases of the fed value (a worsening metric); ``both``: also decreases.

    Examples
    --------
    >>> det = CUSUMDetector(allowance=0.5, threshold=5.0, warning_threshold=3.0, target=0.0, sigma=1.0)
    >>> alarms = []
    >>> for t, x in enumerate([0.0] * 10 + [2.0] * 10):
    ...     det.update(x)
    ...     if det.drift_detected:
    ...         alarms.append(t)
    >>> alarms  # S+ grows by 2 - 0.5 = 1.5 per value from t = 10: 6.0 > 5 at t = 13; restart, again at 17
    [13, 17]
    """

    name: ClassVar[str] = "cusum"

    def __init__(
        self,
        allowance: float = 0.25,
        threshold: float = 30.0,
        warning_threshold: float = 15.0,
        min_instances: int = 300,
        target: float | None = None,
        sigma: float | None = None,
        min_sigma: float = 1e-6,
        mode: str = "up",
    ) -> None:
        check_param("allowance", allowance >= 0.0, "a number >= 0", allowance)
        self._check_chart_params(threshold, warning_threshold, min_instances, sigma, min_sigma, mode)
        self.allowance = allowance
        self.threshold = threshold
        self.warning_threshold = warning_threshold
        self.min_instances = min_instances
        self.target = target
        self.sigma = sigma
        self.min_sigma = min_sigma
        self.mode = mode
        self.reset()

    def reset(self) -> None:
        self._reset_burn_in()
        self._pos = 0.0
        self._neg = 0.0

    @property
    def statistic(self) -> float:
        """The larger cumulative sum (in standard deviations) after the last update."""
        return max(self._pos, self._neg)

    def update(self, x: float) -> None:
        if self._drift:
            self.reset()
        x = float(x)
        if self._burn_in(x):
            return
        assert self._mu is not None and self._sd is not None
        z = (x - self._mu) / self._sd
        self._pos = max(0.0, self._pos + z - self.allowance)
        if self.mode == "both":
            self._neg = max(0.0, self._neg - z - self.allowance)
        stat = self.statistic
        self._drift = stat > self.threshold
        self._warning = not self._drift and stat > self.warning_threshold

    @classmethod
    def _unit_test_params(cls) -> Iterator[dict[str, Any]]:
        yield {}
        yield {
            "allowance": 1.0,
            "threshold": 10.0,
            "warning_threshold": 5.0,
            "min_instances": 50,
            "mode": "both",
        }
