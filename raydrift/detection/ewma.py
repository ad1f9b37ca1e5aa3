"""EWMA: the exponentially weighted moving-average control chart (implemented in raydrift)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, ClassVar

from raydrift.detection.base import ControlChart, check_param

__all__ = ["EWMADetector"]


class EWMADetector(ControlChart):
    """EWMA chart: alarms when the exponentially weighted mean leaves its control limit.

    Roberts' EWMA chart (with Ross et al.'s use of it on the error indicator, ECDD, in mind)::

        Z_0 = target,    Z_t = (1 - smoothing) Z_{t-1} + smoothing x_t
        sigma_Z(t) = sigma sqrt(smoothing / (2 - smoothing) (1 - (1 - smoothing)^(2t)))

    A drift is signalled when ``Z_t > target + threshold sigma_Z(t)`` (with ``mode: both`` also when
    ``Z_t < target - threshold sigma_Z(t)``); the warning zone starts at ``warning_threshold``.
    ``sigma_Z(t)`` is the exact standard deviation of ``Z_t`` for independent in-control values;
    ``time_varying: false`` uses its limit ``sigma sqrt(smoothing / (2 - smoothing))`` from the start
    (the asymptotic limits of the published ARL tables: ``smoothing = 0.1``, ``threshold = 2.814``,
    ``mode: both`` give an in-control ARL of about 500 values, Lucas & Saccucci 1990).

    ``threshold`` is in standard deviations of ``Z``, so the setting carries over between granularities
    once ``target`` and ``sigma`` describe the values fed. When ``target`` or ``sigma`` is not given it
    is estimated from the first ``min_instances`` values after a (re)start (no alarm meanwhile); see
    :func:`raydrift.detection.base.estimate_mean_std`. It starts afresh on the update after an alarm.

    Parameters
    ----------
    smoothing : float
        Weight of the newest value (lambda), in (0, 1]. Small: long memory, detects small shifts;
        1 gives a Shewhart chart.
    threshold : float
        L: control limit in standard deviations of Z (> 0).
    warning_threshold : float
        Warning limit in standard deviations of Z (``<= threshold``).
    min_instances : int
        Burn-in values used to estimate ``target`` / ``sigma`` (not used when both are given).
    target : float or None
        In-control mean of the fed values (``null``: estimated during the burn-in).
    sigma : float or None
        In-control standard deviation of one fed value (``null``: estimated during the burn-in).
    min_sigma : float
        Floor of an estimated ``sigma`` for non-binary values.
    time_varying : bool
        Exact, time-varying control limits (default) or their asymptotic value.
    mode : {"up", "both"}
        ``up``: only increases of the fed value (a worsening metric); ``both``: also decreases.

    Examples
    --------
    >>> det = EWMADetector(smoothing=0.5, threshold=3.0, warning_threshold=2.0, target=0.0, sigma=1.0,
    ...                    time_varying=False)
    >>> alarms = []
    >>> for t, x in enumerate([0.0] * 5 + [3.0] * 5):
    ...     det.update(x)
    ...     if det.drift_detected:
    ...         alarms.append(t)
    >>> alarms  # limit 3 sqrt(1/3) = 1.73; Z = 1.5, 2.25 at t = 5, 6; restart at Z = 0: again at t = 8
    [6, 8]
    """

    name: ClassVar[str] = "ewma"

    def __init__(
        self,
        smoothing: float = 0.02,
        threshold: float = 4.5,
        warning_threshold: float = 3.0,
        min_instances: int = 200,
        target: float | None = None,
        sigma: float | None = None,
        min_sigma: float = 1e-6,
        time_varying: bool = True,
        mode: str = "up",
    ) -> None:
        check_param("smoothing", 0.0 < smoothing <= 1.0, "a number in (0, 1]", smoothing)
        self._check_chart_params(threshold, warning_threshold, min_instances, sigma, min_sigma, mode)
        self.smoothing = smoothing
        self.threshold = threshold
        self.warning_threshold = warning_threshold
        self.min_instances = min_instances
        self.target = target
        self.sigma = sigma
        self.min_sigma = min_sigma
        self.time_varying = time_varying
        self.mode = mode
        self.reset()

    def reset(self) -> None:
        self._reset_burn_in()
        self._z = self._mu if self._mu is not None else 0.0
        self._t = 0  # values charted (after the burn-in)
        self._decay_sq = 1.0  # (1 - smoothing)^(2 t)

    @property
    def statistic(self) -> float:
        """``|Z_t - target| / sigma_Z(t)`` after the last update (0 during the burn-in)."""
        if self._mu is None or self._sd is None or self._t == 0:
            return 0.0
        return abs(self._z - self._mu) / self._sigma_z()

    def _sigma_z(self) -> float:
        assert self._sd is not None
        lam = self.smoothing
        factor = lam / (2.0 - lam)
        if self.time_varying:
            factor *= 1.0 - self._decay_sq
        return self._sd * math.sqrt(factor)

    def update(self, x: float) -> None:
        if self._drift:
            self.reset()
        x = float(x)
        if self._burn_in(x):
            if self._mu is not None:  # the burn-in just ended: the chart starts at the in-control mean
                self._z = self._mu
            return
        assert self._mu is not None and self._sd is not None
        lam = self.smoothing
        self._z = (1.0 - lam) * self._z + lam * x
        self._t += 1
        self._decay_sq *= (1.0 - lam) ** 2
        dev = (self._z - self._mu) / self._sigma_z()
        if self.mode == "up":
            dev = max(dev, 0.0)
        dev = abs(dev)
        self._drift = dev > self.threshold
        self._warning = not self._drift and dev > self.warning_threshold

    @classmethod
    def _unit_test_params(cls) -> Iterator[dict[str, Any]]:
        yield {}
        yield {
            "smoothing": 0.1,
            "threshold": 3.0,
            "warning_threshold": 2.0,
            "min_instances": 50,
            "mode": "both",
        }
