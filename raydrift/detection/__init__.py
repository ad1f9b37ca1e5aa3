"""Drift detection: River detectors behind one protocol, and the engine that feeds them in stream order.

A detector is named in the config (``drift_detection.detector``) by registry name or dotted path and
built with :func:`make_detector`; :class:`DetectionEngine` orders monitor results by batch id, feeds
the detector per ``drift_detection.granularity`` and aggregates the ``metrics.csv`` intervals. A new
detector is one file in this folder plus one entry in :data:`DETECTOR_REGISTRY`. See
``docs/drift_detectors.md``.
"""

from __future__ import annotations

from raydrift.detection.aggregation import AGGREGATIONS, aggregate
from raydrift.detection.base import DriftDetector, InvalidParam, RiverDetector
from raydrift.detection.domains import DOMAINS, check_detector_domain, check_input_domain
from raydrift.detection.engine import (
    BatchResult,
    DetectionEngine,
    DetectionOutput,
    DriftEvent,
    IntervalRecord,
)
from raydrift.detection.registry import DETECTOR_REGISTRY, list_detectors, make_detector, resolve_detector

__all__ = [
    "AGGREGATIONS",
    "DOMAINS",
    "DETECTOR_REGISTRY",
    "BatchResult",
    "DetectionEngine",
    "DetectionOutput",
    "DriftDetector",
    "DriftEvent",
    "IntervalRecord",
    "InvalidParam",
    "RiverDetector",
    "aggregate",
    "check_detector_domain",
    "check_input_domain",
    "list_detectors",
    "make_detector",
    "resolve_detector",
]
