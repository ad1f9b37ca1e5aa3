"""Input domains: which values a detector can take, which values a metric produces.

A detector is built for one kind of input: the per-sample error indicator (``binary``: 0 or 1), values
in [0, 1] (``probability``: an error rate, a batch mean of 0/1 values, a confidence) or any real number
(``real``: a loss, a latency, an entropy). ``binary`` is contained in ``probability``, which is
contained in ``real``. Fed something outside its domain, a detector misbehaves: River's DDM takes the
square root of ``p (1 - p)`` and dies with ``math domain error`` on a loss above 1; the Hoeffding-bound
detectors (``hddm_a``, ``hddm_w``, ``fhddm``) and ADWIN assume a range of 1 and alarm on every other
value of a loss in the thousands, or never on one in the thousandths.

So each detector declares its domain (:attr:`raydrift.detection.DriftDetector.input_domain`), each
harness the domain of each metric (:attr:`raydrift.Harness.metric_domains`), and
:func:`check_detector_domain` refuses a config whose detector cannot take what it would be fed, with
one line naming both. At run time the engine also clips values into the detector's domain and skips
non-finite ones (:func:`sanitize`), so that no value can kill the detector.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from raydrift.errors import ConfigError

if TYPE_CHECKING:
    from raydrift.config import DriftDetectionConfig, RaydriftConfig
    from raydrift.detection.base import DriftDetector
    from raydrift.harness import Harness

__all__ = [
    "DOMAINS",
    "DOMAIN_TEXT",
    "SIGNAL_DOMAINS",
    "check_detector_domain",
    "check_input_domain",
    "contains",
    "default_metric_domain",
    "fed_domain",
    "sanitize",
]

#: From the narrowest to the widest; each contains the ones before it.
DOMAINS = ("binary", "probability", "real")

DOMAIN_TEXT = {
    "binary": "0/1 values (binary)",
    "probability": "values in [0, 1] (probability)",
    "real": "any real values (real)",
}

#: The label-free signals' domains (``drift_detection.label_free.signal``).
SIGNAL_DOMAINS = {"confidence": "probability", "entropy": "real", "features": "real"}

#: Domains of the metrics :meth:`raydrift.Harness.metrics` computes by default.
_BUILTIN_METRICS = {"accuracy": "binary", "loss": "real"}


def contains(outer: str, inner: str) -> bool:
    """Whether every value of domain ``inner`` is in domain ``outer``.

    Examples
    --------
    >>> contains("probability", "binary"), contains("binary", "probability"), contains("real", "real")
    (True, False, True)
    """
    return DOMAINS.index(inner) <= DOMAINS.index(outer)


def narrowest(domains: list[str]) -> str:
    """The narrowest of ``domains`` (what a detector made of several can take: all of them must)."""
    return min(domains, key=DOMAINS.index) if domains else "real"


def default_metric_domain(metric: str) -> str:
    """The domain of a metric no harness declared: the built-in ``accuracy`` and ``loss``, else ``real``."""
    return _BUILTIN_METRICS.get(metric, "real")


def fed_domain(metric_domain: str, granularity: str) -> str:
    """The domain of the values a detector is fed for a metric of ``metric_domain``.

    The engine feeds ``1 - v`` for a higher-is-better metric, which keeps every domain. At ``batch`` or
    ``interval`` granularity it feeds means (or medians) of per-sample values: the mean of 0/1 values
    is a probability, not a 0/1 value.
    """
    if granularity != "sample" and metric_domain == "binary":
        return "probability"
    return metric_domain


def check_input_domain(cfg: DriftDetectionConfig, metric: str, metric_domain: str, seed: int = 0) -> None:
    """Raise :class:`ConfigError` unless the configured detectors can take what they would be fed.

    Parameters
    ----------
    cfg : DriftDetectionConfig
        The ``drift_detection:`` section.
    metric : str
        The monitored metric (``monitor.metric``), for the message.
    metric_domain : str
        Its domain (one of :data:`DOMAINS`).
    seed : int
        Passed to the detectors that take one (they are built to read their domain).
    """
    from raydrift.detection.registry import make_detector

    if metric_domain not in DOMAINS:
        raise ConfigError(
            f"metric '{metric}' declares the domain '{metric_domain}': use one of {', '.join(DOMAINS)} "
            "in the harness's metric_domains"
        )
    lf = cfg.label_free
    if lf.signal == "none" or lf.use == "beside":
        fed = fed_domain(metric_domain, cfg.granularity)
        det = make_detector(cfg.detector, cfg.params, seed=seed)
        _check(det, cfg.detector, fed, f"monitor.metric '{metric}' ({cfg.granularity} granularity) gives")
    if lf.signal != "none":
        det = make_detector(lf.detector, lf.params, seed=seed)
        signal = SIGNAL_DOMAINS[lf.signal]
        _check(det, lf.detector, signal, f"drift_detection.label_free.signal '{lf.signal}' gives")


def _check(det: DriftDetector, name: str, fed: str, what: str) -> None:
    if not contains(det.input_domain, fed):
        raise ConfigError(
            f"drift_detection: detector '{name}' takes {DOMAIN_TEXT[det.input_domain]} but {what} "
            f"{DOMAIN_TEXT[fed]}: choose a detector for {fed} values (`raydrift detectors` lists each "
            "one's input), or monitor another metric"
        )


def check_detector_domain(cfg: RaydriftConfig, harness: Harness | type[Harness] | None = None) -> None:
    """Check a whole config: the monitored metric's domain (from its harness) against the detectors.

    The metric's domain comes from the harness's ``metric_domains`` (a metric it does not
    declare there counts as ``real``, the built-in ``accuracy`` and ``loss`` as ``binary`` and
    ``real``). A metric the harness does not produce at all is left to the check that names the
    harness's metrics. ``harness``: the harness built from the config (its metrics may depend on its
    options, e.g. a regression stream's ``se``); else the class ``model.harness`` names.

    Raises
    ------
    ConfigError
        One line naming the detector, what it takes, the metric and what it gives.
    """
    from raydrift.harness import resolve_harness

    if harness is None:
        harness = resolve_harness(cfg.model.harness)
    metric = cfg.monitor.metric
    if metric not in harness.metric_directions:
        return
    check_input_domain(cfg.drift_detection, metric, harness.metric_domain(metric), seed=cfg.seed)


def sanitize(values: np.ndarray, domain: str) -> tuple[np.ndarray, int, int]:
    """``values`` made safe for a detector of ``domain``: non-finite values dropped, others clipped.

    Returns
    -------
    tuple
        ``(values, non_finite, clipped)``: the float64 values to feed, how many were dropped and how
        many were clipped into [0, 1] (``binary`` and ``probability`` detectors).
    """
    v: Any = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return v, 0, 0
    lo, hi = float(v.min()), float(v.max())  # NaN propagates: one pass tells whether all is well
    if 0.0 <= lo and hi <= 1.0 or (domain == "real" and math.isfinite(lo) and math.isfinite(hi)):
        return v, 0, 0
    finite = np.isfinite(v)
    non_finite = int(v.size - np.count_nonzero(finite))
    if non_finite:
        v = v[finite]
    clipped = 0
    if domain != "real" and v.size:
        out = (v < 0.0) | (v > 1.0)
        clipped = int(np.count_nonzero(out))
        if clipped:
            v = np.clip(v, 0.0, 1.0)
    return v, non_finite, clipped
