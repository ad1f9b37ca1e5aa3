"""The detection engine: puts monitor results in stream order, feeds the detector, aggregates intervals.

:class:`DetectionEngine` is a plain class (unit-tested without Ray); the ``DetectorActor`` is a thin
Ray shell around it. Monitors evaluate batches in parallel and their results arrive in any order, at
least once; the engine turns that into one deterministic sequence of detector updates, so the same
results give the same drift events and the same ``metrics.csv`` rows whatever their arrival order.

Semantics (see also ``docs/drift_detectors.md``):

Ordering
    Results are buffered and processed strictly in batch-id order, starting at ``start_batch``. A
    result whose batch id was already processed or is already buffered is ignored (retries upstream
    deliver at least once). A result evaluated by a model version older than the one given to the
    last :meth:`DetectionEngine.resume_after_update` is dropped (stale).
What the detector sees (``granularity``)
    ``sample``: every per-sample value in order; ``batch``: each batch's mean; ``interval``: the
    interval aggregate (``aggregation``) each time ``interval`` batches complete. The value fed is
    ``1 - v`` for a higher-is-better metric (the error indicator for accuracy), ``v`` otherwise, so a
    larger fed value is always worse.
Direction
    ``degrade``: an alarm counts only if the mean of the recent fed values (the newest values covering
    at least ``max(30, batch size)`` samples) is worse than the mean of the values fed since the last
    reset, excluding the recent ones; an alarm on an improvement is ignored (``ignored_improvements``).
    When nothing precedes the recent window there is nothing to compare with, and the alarm counts.
    ``any``: every alarm counts.
Warm-up and cooldown
    No alarm counts before ``warmup_batches`` batches have been processed since the start, nor within
    ``cooldown_batches`` batches after :meth:`~DetectionEngine.resume_after_update`
    (``suppressed_alarms``). Values still feed the detector meanwhile.
Reset
    River detectors reset themselves on the update after any alarm; the direction reference follows
    (it restarts from the recent window) so that both describe the same stretch of the stream. With
    ``reset_after_update`` the detector and the direction reference are cleared at
    :meth:`~DetectionEngine.resume_after_update`.
Warning zones
    While the detector reports ``warning_detected`` the engine is in a warning zone; the batch where
    it started is :attr:`DetectionEngine.warning_since` and each start is reported in
    :attr:`DetectionOutput.warnings`. A drift that follows a warning carries the zone's first batch
    (``DriftEvent.warning_batch_id``): the data since then is the classic DDM training window.
Score and update kind
    Every :class:`DriftEvent` carries a ``score`` (how severe the drift is) and the ``update_kind`` it
    maps to with ``regimes``: ``continual_learning`` below ``regimes.fine_tuning``, ``fine_tuning``
    below ``regimes.retrain``, ``retrain`` from there (a threshold left ``null`` is never reached).
    For an alarm of the metric detector the score is the degradation of the monitored metric, in its
    own units (reference minus value for a higher-is-better metric: 0.3 = accuracy fell by 0.3),
    clipped at 0, NaN when there is no reference. ``value`` is the mean since the most likely change
    point among the values fed since the last reset, ``reference`` the mean before it (a quick alarm
    comes when the last batch still holds mostly values from before the change: measured over a fixed
    recent window, the drop would look smaller than it is); for a label-free alarm it is the two-sample
    statistic (``mmd``: squared MMD, in [0, 2]; ``ks``: the largest KS statistic, in [0, 1]).
Label-free detection
    With ``label_free.signal`` set, a second detector (``label_free.detector``, a two-sample window
    detector) is fed the per-sample confidence, entropy or feature vectors that the monitors attach
    to each :class:`BatchResult` (``use: beside`` the metric detector, or ``instead`` of it), sample
    by sample, interleaved with the metric detector at ``sample`` granularity. Warm-up and cooldown
    apply to it, ``direction`` does not (a distribution change is neither better nor worse). Its
    reference window is refreshed after every accepted update (a resume with a newer model version),
    whatever ``reset_after_update`` says.
Alarm
    On an alarm in batch ``b`` the engine returns a :class:`DriftEvent`, stops feeding within ``b``
    (at the alarming sample), closes the partial interval containing ``b``, drops buffered results
    with id > ``b`` and becomes :attr:`~DetectionEngine.paused`: results ingested while paused are
    dropped (the coordinator re-evaluates those batches with the updated model).
    ``resume_after_update(b + 1, version)`` unpauses; processing and a new interval start at ``b + 1``
    (an earlier batch id rewinds: batches from there are processed again with the new model).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from raydrift.config import DriftDetectionConfig, UpdateRegimesConfig
from raydrift.detection.aggregation import aggregate
from raydrift.detection.base import DriftDetector
from raydrift.detection.change_point import split_at_change
from raydrift.detection.domains import default_metric_domain, fed_domain, sanitize
from raydrift.detection.registry import make_detector
from raydrift.detection.two_sided import TwoSidedDetector
from raydrift.plain_state import StateError, check_plain, from_plain, to_plain

__all__ = [
    "UPDATE_KINDS",
    "BatchResult",
    "DetectionEngine",
    "DetectionOutput",
    "DriftEvent",
    "IntervalRecord",
    "update_kind",
]

#: What a drift event asks the coordinator to run, from mild to severe.
UPDATE_KINDS = ("continual_learning", "fine_tuning", "retrain")

#: The recent window of the direction check covers at least this many samples (or one batch if larger).
MIN_RECENT_SAMPLES = 30

#: Fed values kept for locating the change behind an alarm (the event's value and score).
CHANGE_HISTORY = 4096

#: the bit pattern of float32 1.0, and the dtypes, for ``_nothing_to_sanitize``
_ONE_BITS = np.array(1.0, dtype=np.float32).view(np.uint32)[()]
_F32, _U32 = np.dtype(np.float32), np.dtype(np.uint32)

_FIXED_COLUMNS = ("interval", "first_batch", "last_batch", "n_samples", "value", "regime", "version")


@dataclass
class BatchResult:
    """What a monitor returns for one evaluated batch.

    Attributes
    ----------
    batch_id : int
        Position of the batch in the stream: 0, 1, 2, ...
    regime : int
        Ground-truth regime id, for reporting only: detection never reads it.
    version : int
        Model version that evaluated the batch.
    values : np.ndarray
        Per-sample values of the monitored metric (float32, length ``n``).
    metrics : dict[str, float]
        Batch means of every harness metric (e.g. ``{"accuracy": 0.9, "loss": 0.3}``).
    monitor : str
        Name of the monitor actor that evaluated it.
    eval_seconds : float
        Time the evaluation took.
    confidence : np.ndarray or None
        Label-free signal, optional: per-sample confidence of the prediction (the largest softmax
        probability), float32, length ``n``. Sent by monitors built with ``label_free`` on.
    entropy : np.ndarray or None
        Label-free signal, optional: per-sample entropy of the predicted distribution (nats).
    features : np.ndarray or None
        Label-free signal, optional: per-sample input or embedding features, float32, shape
        ``(n, d)``.
    quarantined : str or None
        Why the batch could not be evaluated (NaN/inf inputs, a wrong shape or dtype, the model
        raised, ...), or None. A quarantined result has no values; the engine counts it, skips it
        in stream order and feeds nothing from it to a detector.
    """

    batch_id: int
    regime: int
    version: int
    values: np.ndarray
    metrics: dict[str, float]
    monitor: str = ""
    eval_seconds: float = 0.0
    confidence: np.ndarray | None = None
    entropy: np.ndarray | None = None
    features: np.ndarray | None = None
    quarantined: str | None = None

    def __post_init__(self) -> None:
        self.values = np.asarray(self.values, dtype=np.float32).reshape(-1)
        n = self.values.shape[0]
        for name in ("confidence", "entropy"):
            v = getattr(self, name)
            if v is not None:
                v = np.asarray(v, dtype=np.float32).reshape(-1)
                if v.shape[0] != n:
                    raise ValueError(f"batch {self.batch_id}: {v.shape[0]} {name} values for {n} samples")
                setattr(self, name, v)
        if self.features is not None:
            f = np.asarray(self.features, dtype=np.float32)
            f = f.reshape(f.shape[0], -1) if f.ndim != 1 else f.reshape(-1, 1)
            if f.shape[0] != n:
                raise ValueError(f"batch {self.batch_id}: {f.shape[0]} feature rows for {n} samples")
            self.features = f

    def signal(self, name: str) -> np.ndarray | None:
        """The label-free signal ``name`` (``confidence``, ``entropy`` or ``features``) as ``(n, d)``."""
        v = getattr(self, name)
        if v is None:
            return None
        return np.asarray(v).reshape(v.shape[0], -1)

    @property
    def n(self) -> int:
        """Number of samples in the batch."""
        return int(self.values.shape[0])


@dataclass
class DriftEvent:
    """A drift alarm that counted.

    Attributes
    ----------
    batch_id : int
        The batch containing the alarming value.
    sample_index : int
        1-based index of the alarming sample among the samples processed by the engine: the samples
        of every batch processed before ``batch_id``, plus its index within the batch, plus one (its
        position in the stream, unless a rewind made the engine process some batches twice). At
        ``batch`` or ``interval`` granularity, the last sample of ``batch_id``.
    detector : str
        Registry name of the detector.
    value : float
        The monitored metric's mean since the most likely change point before the alarm (e.g. the
        accuracy since the change), located among the values fed since the detector's last reset
        (:func:`raydrift.detection.change_point.split_at_change`).
    reference : float
        Its mean since the last reset, before that change point (NaN if there was none).
    regime, version : int
        Regime (reporting only) and model version of ``batch_id``.
    score : float
        Severity of the drift (>= 0, or NaN): the degradation of the monitored metric in its units for
        the metric detector (``reference - value`` for a higher-is-better metric, clipped at 0; NaN
        without a reference), the two-sample statistic for a label-free alarm.
    update_kind : str
        The update the coordinator should run, from ``score`` and ``drift_detection.regimes``:
        ``continual_learning`` (the CL strategy), ``fine_tuning`` (plain fine-tuning on the window)
        or ``retrain`` (re-initialise, train on memory + window).
    warning_batch_id : int or None
        First batch of the warning zone that preceded the alarm (None if there was none).
    signal : str
        What alarmed: ``metric`` (the monitored metric's detector) or ``label_free:<signal>``.
    change_sample_index : int
        1-based index (as ``sample_index``) of the first sample after the located change point: the
        detector's own location (``bocpd``) or the most likely single mean shift among the values fed
        since the detector's last reset. ``sample_index - change_sample_index + 1`` samples were seen
        since the change. At ``batch`` or ``interval`` granularity, ``sample_index``.
    change_batch_id : int
        The batch holding that sample (-1 when unknown).
    change_probability : float
        The detector's posterior probability that a change occurred (``bocpd``), None for detectors
        that give none.
    """

    batch_id: int
    sample_index: int
    detector: str
    value: float
    reference: float
    regime: int
    version: int
    score: float = float("nan")
    update_kind: str = "continual_learning"
    warning_batch_id: int | None = None
    signal: str = "metric"
    change_sample_index: int = 0
    change_batch_id: int = -1
    change_probability: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The event as a plain dict (JSON-friendly)."""
        return asdict(self)


def update_kind(score: float, regimes: UpdateRegimesConfig) -> str:
    """The update kind a drift of this ``score`` maps to (see :data:`UPDATE_KINDS`).

    Examples
    --------
    >>> r = UpdateRegimesConfig(fine_tuning=0.1, retrain=0.4)
    >>> [update_kind(s, r) for s in (0.05, 0.1, 0.3, 0.5, float("nan"))]
    ['continual_learning', 'fine_tuning', 'fine_tuning', 'retrain', 'continual_learning']
    """
    if regimes.retrain is not None and score >= regimes.retrain:
        return "retrain"
    if regimes.fine_tuning is not None and score >= regimes.fine_tuning:
        return "fine_tuning"
    return "continual_learning"


@dataclass
class IntervalRecord:
    """One aggregation interval: one row of ``metrics.csv``.

    Attributes
    ----------
    interval : int
        0, 1, 2, ... in stream order.
    first_batch, last_batch : int
        Batch ids it covers (inclusive). Every processed batch is in exactly one interval.
    n_samples : int
        Samples in those batches.
    value : float
        The monitored metric aggregated over the interval (``aggregation`` of the batch means;
        ``mean`` is the sample-weighted mean).
    metrics : dict[str, float]
        Every harness metric, sample-weighted mean over the interval.
    regime, version : int
        Regime and model version of the interval's last batch.
    """

    interval: int
    first_batch: int
    last_batch: int
    n_samples: int
    value: float
    metrics: dict[str, float]
    regime: int
    version: int

    def to_dict(self) -> dict[str, Any]:
        """A flat dict for CSV: the fixed columns, then one column per metric.

        A metric whose name clashes with a fixed column is written as ``metric_<name>``.
        """
        row: dict[str, Any] = {
            "interval": self.interval,
            "first_batch": self.first_batch,
            "last_batch": self.last_batch,
            "n_samples": self.n_samples,
            "value": self.value,
            "regime": self.regime,
            "version": self.version,
        }
        for name, v in self.metrics.items():
            row[f"metric_{name}" if name in _FIXED_COLUMNS else name] = v
        return row


@dataclass
class DetectionOutput:
    """What one call to :meth:`DetectionEngine.ingest` produced.

    Attributes
    ----------
    events : list[DriftEvent]
        Alarms that counted (at most one per call to ``ingest``: the engine pauses on it).
    intervals : list[IntervalRecord]
        Intervals closed by this call.
    next_batch : int
        The batch id the engine processes next.
    warnings : list[int]
        Batch ids where a warning zone started during this call.
    batches : list[dict]
        One row per batch processed by this call, in stream order (``batches.csv``): ``batch_id``,
        ``regime``, ``version``, ``n``, ``value`` (mean of the monitored metric), ``monitor``,
        ``status`` (``ok`` or ``quarantined``) and ``reason``.
    """

    events: list[DriftEvent] = field(default_factory=list)
    intervals: list[IntervalRecord] = field(default_factory=list)
    next_batch: int = 0
    warnings: list[int] = field(default_factory=list)
    batches: list[dict[str, Any]] = field(default_factory=list)

    def extend(self, other: DetectionOutput) -> None:
        self.events.extend(other.events)
        self.intervals.extend(other.intervals)
        self.warnings.extend(other.warnings)
        self.batches.extend(other.batches)
        self.next_batch = other.next_batch


class _DirectionReference:
    """The fed values since the last (re)start, for the ``degrade`` check and for locating a change.

    Values carry a weight (the samples they stand for: 1 per sample, ``n`` per batch mean). The newest
    :data:`CHANGE_HISTORY` values are kept (as numpy chunks, one per batch: appending a batch costs the
    same whatever its size); older ones only as a sum. The *recent window* is the shortest suffix of
    the values covering at least ``recent_samples`` samples, computed when an alarm asks for it.
    """

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.xs: list[np.ndarray] = []
        self.ws: list[np.ndarray] = []
        self.n_kept = 0
        self.total_sum = 0.0
        self.total_w = 0.0

    def push(self, x: float, w: float, recent_samples: float = 0.0) -> None:
        self.push_many(np.array([x]), np.array([w]))

    def push_many(self, x: np.ndarray, w: np.ndarray, w_sum: float | None = None) -> None:
        """Append values ``x`` of weights ``w`` (``w_sum``: their sum, when the caller knows it)."""
        size = x.size
        if size == 0:
            return
        self.xs.append(x)
        self.ws.append(w)
        self.n_kept += size
        self.total_sum += float(np.dot(x, w))
        self.total_w += float(w.sum()) if w_sum is None else w_sum
        while self.n_kept - self.xs[0].size >= CHANGE_HISTORY:
            self.n_kept -= self.xs.pop(0).size
            self.ws.pop(0)

    def _kept(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.xs:
            return np.zeros(0), np.zeros(0)
        if len(self.xs) > 1:
            self.xs, self.ws = [np.concatenate(self.xs)], [np.concatenate(self.ws)]
        return self.xs[0][-CHANGE_HISTORY:], self.ws[0][-CHANGE_HISTORY:]

    def _recent_len(self, w: np.ndarray, recent_samples: float) -> int:
        """Entries of the recent window: the shortest suffix with weight >= recent_samples (>= 1)."""
        if w.size == 0:
            return 0
        back = np.cumsum(w[::-1])
        return min(int(w.size), int(np.searchsorted(back, recent_samples)) + 1)

    def _keep_last(self, k: int) -> None:
        x, w = self._kept()
        x, w = x[x.size - k :].copy(), w[w.size - k :].copy()
        self.clear()
        self.push_many(x, w)

    def restart_from_recent(self, recent_samples: float) -> None:
        """Forget the reference; keep the recent window (the detector's own reset after an alarm)."""
        x, w = self._kept()
        self._keep_last(self._recent_len(w, recent_samples))

    def restart_from_last(self, k: int) -> None:
        """Keep only the newest ``k`` values (those since a located change point)."""
        self._keep_last(k)

    def split_last(self, k: int) -> tuple[float, float, float]:
        """``(mean before, mean of the newest k values, their weight)``; NaN mean without values."""
        x, w = self._kept()
        k = min(k, x.size)
        after_sum, after_w = float(np.dot(x[x.size - k :], w[w.size - k :])), float(w[w.size - k :].sum())
        before_w = self.total_w - after_w
        before = (self.total_sum - after_sum) / before_w if before_w > 1e-12 else float("nan")
        after = after_sum / after_w if after_w > 0 else float("nan")
        return before, after, after_w

    def is_worse(self, recent_samples: float) -> bool:
        """Whether the recent mean is larger (worse) than the reference; True when there is no reference."""
        _, w = self._kept()
        ref, recent, _ = self.split_last(self._recent_len(w, recent_samples))
        return bool(np.isnan(ref)) or recent > ref

    def change_split(self, recent_samples: float) -> tuple[float, float, float]:
        """``(mean before, mean since, samples since)`` the most likely change in the values since the
        last (re)start. Falls back to the recent window when no split is possible (too few values)."""
        x, w = self._kept()
        if x.size:
            kept_sum, kept_w = float(np.dot(x, w)), float(w.sum())
            split = split_at_change(x, w, self.total_sum - kept_sum, max(0.0, self.total_w - kept_w))
            if split is not None:
                return split[1], split[2], float(w[w.size - split[0] :].sum())
        return self.split_last(self._recent_len(w, recent_samples))

    def state_dict(self) -> dict[str, Any]:
        x, w = self._kept()
        return {"x": to_plain(x.copy()), "w": to_plain(w.copy()), "total_sum": self.total_sum, "total_w": self.total_w}

    def load_state_dict(self, state: dict[str, Any], where: str = "reference") -> None:
        fields = {"x": (np.ndarray,), "w": (np.ndarray,), "total_sum": _NUMBER, "total_w": _NUMBER}
        values = _fields_from_plain(state, where, fields)
        x, w = values["x"], values["w"]
        floats = (np.float32, np.float64)
        if x.ndim != 1 or x.shape != w.shape or x.size > CHANGE_HISTORY or x.dtype not in floats or w.dtype not in floats:
            raise StateError(f"{where}: 'x' and 'w' must be float 1-D arrays of one length <= {CHANGE_HISTORY}")
        self.clear()
        self.push_many(x, w)
        self.total_sum = float(values["total_sum"])
        self.total_w = float(values["total_w"])


@dataclass
class _OpenInterval:
    first_batch: int
    last_batch: int
    n_batches: int = 0
    n_samples: int = 0
    batch_means: list[float] = field(default_factory=list)
    batch_ns: list[int] = field(default_factory=list)
    metric_sums: dict[str, float] = field(default_factory=dict)
    metric_ns: dict[str, int] = field(default_factory=dict)
    regime: int = 0
    version: int = 0

    def add(self, r: BatchResult, mean: float, n: int) -> None:
        """Count batch ``r`` of ``n`` samples whose monitored metric's mean is ``mean``."""
        self.last_batch = r.batch_id
        self.n_batches += 1
        self.n_samples += n
        if n > 0:
            self.batch_means.append(mean)
            self.batch_ns.append(n)
            sums, ns = self.metric_sums, self.metric_ns
            for name, v in r.metrics.items():
                sums[name] = sums.get(name, 0.0) + float(v) * n
                ns[name] = ns.get(name, 0) + n
        self.regime = r.regime
        self.version = r.version

    def value(self, how: str) -> float:
        if not self.batch_means:
            return float("nan")
        if how == "mean":  # aggregate()'s weighted mean; its weights' sum is n_samples (exact integers)
            w = np.array(self.batch_ns, dtype=np.float64)
            return float(np.dot(np.array(self.batch_means, dtype=np.float64), w) / float(self.n_samples))
        return aggregate(self.batch_means, how, weights=self.batch_ns)  # type: ignore[arg-type]

    def close(self, index: int, how: str) -> IntervalRecord:
        return IntervalRecord(
            interval=index,
            first_batch=self.first_batch,
            last_batch=self.last_batch,
            n_samples=self.n_samples,
            value=self.value(how),
            metrics={k: self.metric_sums[k] / self.metric_ns[k] for k in self.metric_sums},
            regime=self.regime,
            version=self.version,
        )


_COUNTERS = (
    "batches",
    "samples",
    "alarms",
    "events",
    "ignored_improvements",
    "suppressed_alarms",
    "duplicates",
    "dropped_paused",
    "dropped_stale",
    "dropped_after_alarm",
    "updates",
    "warnings",
    "label_free_alarms",
    "quarantined",
    "not_fed",
    "non_finite",
    "clipped",
    "detector_errors",
)


class DetectionEngine:
    """Orders monitor results by batch id, feeds the drift detector, and aggregates intervals.

    See the module docstring for the full semantics (ordering, granularity, direction, warm-up,
    cooldown, reset, pause on alarm).

    Parameters
    ----------
    cfg : DriftDetectionConfig
        The ``drift_detection:`` section.
    metric : str
        The monitored metric (its per-sample values are :attr:`BatchResult.values`).
    higher_is_better : bool
        Whether a larger metric is better (then the detector is fed ``1 - v``).
    seed : int
        Seed for detectors that draw random numbers (KSWIN).
    start_batch : int
        The first batch id to process.

    Examples
    --------
    >>> import numpy as np
    >>> from raydrift.config import DriftDetectionConfig
    >>> cfg = DriftDetectionConfig(detector="adwin", params={"clock": 1}, warmup_batches=2)
    >>> eng = DetectionEngine(cfg, metric="accuracy", higher_is_better=True)
    >>> rng = np.random.default_rng(0)
    >>> results = [BatchResult(b, 0, 0, (rng.random(64) < (0.95 if b < 40 else 0.5)).astype("float32"), {})
    ...            for b in range(60)]
    >>> out = eng.ingest_many(reversed(results))  # any arrival order
    >>> [(e.batch_id, eng.paused) for e in out.events]
    [(40, True)]
    """

    def __init__(
        self,
        cfg: DriftDetectionConfig,
        metric: str,
        higher_is_better: bool,
        seed: int = 0,
        start_batch: int = 0,
        domain: str | None = None,
    ) -> None:
        self.cfg = cfg
        self.metric = metric
        self.higher_is_better = higher_is_better
        self.seed = seed
        self.start_batch = start_batch
        #: the monitored metric's domain (the harness's ``metric_domains``; default by its name)
        self.domain = domain or default_metric_domain(metric)
        det = make_detector(cfg.detector, cfg.params, seed=seed)
        det.configure_for_domain(fed_domain(self.domain, cfg.granularity))
        self._detector_name = det.name or type(det).__name__
        warmup = cfg.warmup_samples if cfg.warmup_samples is not None else det.warmup
        if cfg.direction == "any" and not det.two_sided:  # an improvement is a drift too
            det = TwoSidedDetector(det)
        self._detector: DriftDetector = det
        self._domain = det.input_domain
        self._alarms_from_sample = warmup  # processed-sample count from which alarms count
        self._ones = np.ones(64)  # the weights of per-sample values
        # the rest of an alarm's batch, fed when monitoring resumes with the same model
        self._carry: tuple[BatchResult, int, int] | None = None
        self._batch_starts: deque[tuple[int, int]] = deque(maxlen=CHANGE_HISTORY)  # (first sample, batch)
        lf = cfg.label_free
        self._lf_detector: DriftDetector | None = None
        if lf.signal != "none":
            self._lf_detector = make_detector(lf.detector, lf.params, seed=seed)
        self._use_metric = lf.signal == "none" or lf.use == "beside"
        self._warning_since: int | None = None
        self._reference = _DirectionReference()
        self._next = start_batch
        self._buffer: dict[int, BatchResult] = {}
        self._paused = False
        self._version = 0
        self._held = False  # an update trains while monitoring continues: feed no detector
        self._feed_from = 0  # results of older model versions are recorded but not fed
        self._alarms_from = cfg.warmup_batches  # processed-batch count from which alarms count
        self._recent_samples = MIN_RECENT_SAMPLES
        self._interval: _OpenInterval | None = None
        self._n_intervals = 0
        self._pending: list[IntervalRecord] = []  # closed outside ingest (resume), emitted next
        self._stats = dict.fromkeys(_COUNTERS, 0)

    # --- read-only views -------------------------------------------------------------------------
    @property
    def paused(self) -> bool:
        """True after an alarm until :meth:`resume_after_update`: results are dropped meanwhile."""
        return self._paused

    @property
    def next_batch(self) -> int:
        """The batch id processed next."""
        return self._next

    @property
    def version(self) -> int:
        """The model version given to the last :meth:`resume_after_update` (0 before any)."""
        return self._version

    @property
    def detector(self) -> DriftDetector:
        """The drift detector (read-only use)."""
        return self._detector

    @property
    def label_free_detector(self) -> DriftDetector | None:
        """The label-free detector (``label_free.signal`` set), else None (read-only use)."""
        return self._lf_detector

    @property
    def warning_since(self) -> int | None:
        """First batch of the current warning zone, or None when no detector is in its warning zone."""
        return self._warning_since

    @property
    def buffered(self) -> list[int]:
        """Batch ids received but not processed yet (waiting for an earlier batch)."""
        return sorted(self._buffer)

    @property
    def stats(self) -> dict[str, int]:
        """Counters: batches, samples, alarms (raw detector alarms), events, ignored_improvements,
        suppressed_alarms (warm-up/cooldown), duplicates, dropped_paused, dropped_stale,
        dropped_after_alarm, updates."""
        return dict(self._stats)

    # --- ingestion -------------------------------------------------------------------------------
    def ingest(self, result: BatchResult) -> DetectionOutput:
        """Receive one result; process every result that is now next in stream order.

        Returns
        -------
        DetectionOutput
            The events and closed intervals produced by this call (usually none, or one interval).
        """
        out = DetectionOutput(next_batch=self._next)
        if self._pending:
            out.intervals = self._take_pending()
        if self._paused:
            self._stats["dropped_paused"] += 1
            return out
        if result.version < self._version:
            self._stats["dropped_stale"] += 1
            return out
        b = result.batch_id
        if b < self._next or b in self._buffer:
            self._stats["duplicates"] += 1
            return out
        if b == self._next:  # next in stream order (the usual case): processed without buffering
            self._process(result, out)
        else:
            self._buffer[b] = result
        while not self._paused and self._next in self._buffer:
            self._process(self._buffer.pop(self._next), out)
        out.next_batch = self._next
        return out

    def ingest_many(self, results: Iterable[BatchResult]) -> DetectionOutput:
        """:meth:`ingest` each result in the order given; the outputs concatenated."""
        out = DetectionOutput(next_batch=self._next)
        for r in results:
            out.extend(self.ingest(r))
        return out

    def resume_after_update(self, next_batch: int, version: int) -> None:
        """Continue after a model update: process from ``next_batch``, expect results of ``version``.

        Unpauses the engine, starts a new interval at ``next_batch`` (a partial interval still open,
        when called without a preceding alarm, is closed and returned by the next :meth:`ingest`),
        and, when ``version`` is new (an update went live), suppresses alarms for
        ``cooldown_batches`` batches and, with ``reset_after_update``, resets the detector and the
        direction reference. Buffered results before ``next_batch`` or older than ``version`` are
        dropped.

        With the same ``version`` right after an alarm (``next_batch`` is the alarm's batch + 1: the
        coordinator keeps monitoring with the same model), detection continues from the located change
        point: the detector keeps what it learnt since the change, and the values of the alarm's batch
        after the alarming one are fed before batch ``next_batch`` (alarms there are reported with
        the alarm's batch id).

        ``next_batch`` is usually the batch after the alarm. It may also rewind to a batch already
        processed (the coordinator kept monitoring past the alarm with the old model to collect a
        post-drift window, then re-evaluates those batches with the new one): those batch ids are then
        processed again, once more, and appear in a second interval, with the new version.

        Raises
        ------
        ValueError
            ``next_batch`` is negative, or ``version`` is older than the current version.
        """
        if next_batch < 0:
            raise ValueError(f"next_batch must be >= 0, got {next_batch}")
        if version < self._version:
            raise ValueError(f"version {version} < current version {self._version}")
        new = version > self._version
        self._close_interval(into=self._pending)
        keep = {b: r for b, r in self._buffer.items() if b >= next_batch and r.version >= version}
        self._stats["dropped_stale"] += len(self._buffer) - len(keep)
        self._buffer = keep
        self._next = next_batch
        self._paused = False
        carry = self._carry
        if carry is None or new or next_batch != carry[0].batch_id + 1:
            self._carry = None  # the rest of the alarm's batch is fed only when the same model goes on
        if new:
            self._alarms_from = max(self._alarms_from, self._stats["batches"] + self.cfg.cooldown_batches)
        if self._lf_detector is not None and (self.cfg.reset_after_update or new):
            self._lf_detector.reset()  # refresh the reference window after an accepted update
        self._version = version
        if self.cfg.reset_after_update and new:
            self._detector.reset()
            self._reference.clear()
            self._warning_since = None
        self._stats["updates"] += 1

    def hold(self) -> None:
        """An update is training while monitoring continues (``monitor.on_drift: continue``).

        Results are still processed in order, recorded in intervals and rows, but no detector is fed
        until :meth:`release`: the old model's metric on the new data would only raise the same alarm
        again.
        """
        self._held = True
        self._carry = None

    def release(self, version: int) -> None:
        """The update ended: feed detectors again, from results of model ``version`` on.

        ``version`` is the new model's version when its weights went live, or the current one when the
        update failed or was rejected. Results of older versions still in flight are recorded but not
        fed. Alarms are suppressed for ``cooldown_batches`` batches; with ``reset_after_update`` the
        detector and the direction reference are cleared; the label-free reference window is refreshed
        when the version is new.
        """
        new = version > self._feed_from
        self._held = False
        self._carry = None
        self._feed_from = max(self._feed_from, version)
        self._alarms_from = max(self._alarms_from, self._stats["batches"] + self.cfg.cooldown_batches)
        if self._lf_detector is not None and (self.cfg.reset_after_update or new):
            self._lf_detector.reset()
        if self.cfg.reset_after_update:
            self._detector.reset()
            self._reference.clear()
            self._warning_since = None
        if new:
            self._stats["updates"] += 1

    def finish(self) -> list[IntervalRecord]:
        """Flush at the end of the stream: the partial interval (and any pending one), closed.

        Buffered results that never became next in order (a gap upstream) are not processed; see
        :attr:`buffered`.
        """
        out = self._take_pending()
        self._close_interval(into=out)
        return out

    # --- internals -------------------------------------------------------------------------------
    def _take_pending(self) -> list[IntervalRecord]:
        pending, self._pending = self._pending, []
        return pending

    def _close_interval(self, into: list[IntervalRecord]) -> None:
        if self._interval is not None:
            into.append(self._interval.close(self._n_intervals, self.cfg.aggregation))
            self._n_intervals += 1
            self._interval = None

    def _to_metric(self, fed: float) -> float:
        return 1.0 - fed if self.higher_is_better else fed

    def _track_warning(self, detector: DriftDetector, batch_id: int, out: DetectionOutput) -> None:
        warning = detector.warning_detected
        if warning and self._warning_since is None:
            self._warning_since = batch_id
            self._stats["warnings"] += 1
            out.warnings.append(batch_id)
        elif not warning and not detector.drift_detected and self._warning_since is not None:
            # the zone ends when no detector is in it any more
            others = [d for d in (self._detector, self._lf_detector) if d is not None and d is not detector]
            if not any(d.warning_detected for d in others):
                self._warning_since = None

    def _safe_value(self, x: float) -> float | None:
        """``x`` clipped into the detector's domain; None (not fed) when it is not finite."""
        if not math.isfinite(x):
            self._stats["non_finite"] += 1
            return None
        if self._domain != "real" and not 0.0 <= x <= 1.0:
            self._stats["clipped"] += 1
            return min(1.0, max(0.0, x))
        return x

    def _update_detector(self, x: float) -> None:
        """Feed the metric detector; one that raises on a value restarts instead of killing the actor."""
        try:
            self._detector.update(x)
        except (ArithmeticError, ValueError):
            self._stats["detector_errors"] += 1
            self._detector.reset()

    def _locates(self) -> int | None:
        """Values since the change the metric detector located behind its alarm (None: it does not)."""
        k = self._detector.values_since_change
        return k if k is not None and k > 0 else None

    def _restart_reference(self) -> None:
        k = self._locates()
        if k is not None:
            self._reference.restart_from_last(k)  # as the detector: from its located change point
        else:
            self._reference.restart_from_recent(self._recent_samples)

    def _alarm_counts(self, allowed: bool) -> bool:
        """The metric detector alarmed: True if the alarm counts (warm-up, cooldown, direction)."""
        self._stats["alarms"] += 1
        if not allowed:
            self._stats["suppressed_alarms"] += 1
            self._restart_reference()
            return False
        if self.cfg.direction == "degrade":
            k = self._locates()
            if k is not None:  # worse since the located change than before it
                before, after, _ = self._reference.split_last(k)
                worse = bool(np.isnan(before)) or after > before
            else:
                worse = self._reference.is_worse(self._recent_samples)
            if not worse:
                self._stats["ignored_improvements"] += 1
                self._restart_reference()
                return False
        return True

    def _feed(self, x: float, weight: float, allowed: bool, batch_id: int, out: DetectionOutput) -> bool:
        """Feed one value to the metric detector; True if it raised an alarm that counts."""
        safe = self._safe_value(x)
        if safe is None:
            return False
        x = safe
        if self._use_metric:
            self._update_detector(x)
            self._track_warning(self._detector, batch_id, out)
        self._reference.push(x, weight)
        if not self._use_metric or not self._detector.drift_detected:
            return False
        return self._alarm_counts(allowed)

    def _feed_samples(
        self, r: BatchResult, start: int, base: int, allowed: bool, out: DetectionOutput, mean: float | None = None
    ) -> DriftEvent | None:
        """Feed the per-sample values of ``r`` from index ``start`` on (``base``: samples processed
        before ``r``; ``mean``: the mean of all of ``r.values``, when the caller has it); the event of
        the first alarm that counts, if any."""
        if self._lf_detector is None and self.cfg.granularity == "sample":  # the metric detector alone
            v = r.values[start:] if start else r.values
            return self._feed_fast(r, v, start, base, allowed, out, None if start else mean)
        vals = r.values[start:].astype(np.float64)
        fed = (1.0 - vals) if self.higher_is_better else vals
        lf = self._label_free_values(r)
        per_sample = self.cfg.granularity == "sample"
        xs = fed.tolist()
        for j, x in enumerate(xs):
            i = start + j
            ok = allowed and base + i + 1 > self._alarms_from_sample
            if per_sample and self._feed(x, 1.0, ok, r.batch_id, out):
                return self._event(r, base + i + 1, carry_from=i + 1)
            if lf is not None and self._feed_label_free(lf[i], ok, r.batch_id, out):
                return self._event(r, base + i + 1, label_free=True)
        return None

    def _feed_fast(
        self, r: BatchResult, v: np.ndarray, start: int, base: int, allowed: bool, out: DetectionOutput, mean: float | None
    ) -> DriftEvent | None:
        """The per-sample path of the metric detector alone: the batch at once (``update_many``, or
        ``update_many_warnings`` tracking the warning zone), the values (``v``, the metric's, from
        sample ``start`` on) made safe and the direction reference appended as arrays."""
        # 1 - v in float64 (v float32: exact), as astype then subtract, in one call
        fed = np.subtract(1.0, v, dtype=np.float64) if self.higher_is_better else v.astype(np.float64)
        if self._nothing_to_sanitize(v, mean) or (fed.size and 0.0 <= fed.min() and fed.max() <= 1.0):
            safe, where = fed, None  # the usual case
        else:
            safe, non_finite, clipped = sanitize(fed, self._domain)
            self._stats["non_finite"] += non_finite
            self._stats["clipped"] += clipped
            where = np.flatnonzero(np.isfinite(fed)) if non_finite else None
        xs = safe.tolist()
        pos = 0
        while pos < len(xs):
            try:
                j = self._update_many(xs[pos:] if pos else xs, r.batch_id, out)
            except (ArithmeticError, ValueError):  # a value the detector cannot take: it restarts
                self._stats["detector_errors"] += 1
                self._detector.reset()
                j = -1
            end = len(xs) if j < 0 else pos + j + 1
            k = end - pos
            if self._ones.size < k:
                self._ones = np.ones(k)
            ones = self._ones if self._ones.size == k else self._ones[:k]  # no view in the usual case
            self._reference.push_many(safe if k == safe.size else safe[pos:end], ones, float(k))
            if j < 0:
                return None
            i = start + (int(where[pos + j]) if where is not None else pos + j)
            if self._alarm_counts(allowed and base + i + 1 > self._alarms_from_sample):
                return self._event(r, base + i + 1, carry_from=i + 1)
            pos = end
        return None

    def _nothing_to_sanitize(self, v: np.ndarray, mean: float | None) -> bool:
        """A cheap sufficient test that the values fed from the metric's ``v`` need no sanitising
        (False: the caller looks closer). All of ``v`` in [0, 1]: no float32 bit pattern above 1.0's
        (non-negative floats order as their bits; -0.0, a negative value, inf and NaN all exceed
        1.0's), then ``1 - v`` is in [0, 1] too. For a ``real`` detector, all finite: a finite
        float64 mean of float32 values (``mean``, of the whole batch, given when ``v`` is all of it)."""
        if self._domain == "real" and mean is not None:
            return math.isfinite(mean)
        return bool(v.size) and v.dtype == _F32 and not np.count_nonzero(np.greater(v.view(_U32), _ONE_BITS))

    def _update_many(self, xs: list[float], batch_id: int, out: DetectionOutput) -> int:
        """Feed ``xs`` to the metric detector until it alarms (the index, or -1); the warning zones
        opened on the way are recorded as :meth:`_track_warning` records them value by value."""
        det = self._detector
        if not det.has_warnings:
            return det.update_many(xs)
        j, opened, in_zone = det.update_many_warnings(xs, self._warning_since is not None)
        if opened:
            self._stats["warnings"] += opened
            out.warnings.extend([batch_id] * opened)
            self._warning_since = batch_id if in_zone else None
        elif not in_zone:
            self._warning_since = None
        return j

    def _feed_label_free(self, v: np.ndarray, allowed: bool, batch_id: int, out: DetectionOutput) -> bool:
        """Feed one sample's label-free signal; True if it raised an alarm that counts."""
        det = self._lf_detector
        assert det is not None
        if not np.isfinite(v).all():
            self._stats["non_finite"] += 1
            return False
        try:
            det.update(v)
        except (ArithmeticError, ValueError):
            self._stats["detector_errors"] += 1
            det.reset()
            return False
        self._track_warning(det, batch_id, out)
        if not det.drift_detected:
            return False
        self._stats["alarms"] += 1
        self._stats["label_free_alarms"] += 1
        if not allowed:
            self._stats["suppressed_alarms"] += 1
            return False
        return True

    def _batch_of(self, sample_index: int) -> int:
        """The batch id holding the (1-based) processed sample ``sample_index``."""
        for first, batch_id in reversed(self._batch_starts):
            if first < sample_index:
                return batch_id
        return self._batch_starts[0][1] if self._batch_starts else -1

    def _event(
        self, r: BatchResult, sample_index: int, label_free: bool = False, carry_from: int | None = None
    ) -> DriftEvent:
        # measured from the located change point, not a fixed recent window: a quick alarm comes
        # when the recent window still holds mostly values from before the change
        k = None if label_free else self._locates()
        if k is not None:
            ref, recent, after_w = self._reference.split_last(k)
            given = float(self._detector.change_probability)
            probability: float | None = None if math.isnan(given) else given  # ks, mmd: none
        else:
            ref, recent, after_w = self._reference.change_split(self._recent_samples)
            probability = None
        if label_free:
            det = self._lf_detector
            assert det is not None
            name = det.name or type(det).__name__
            score = float(getattr(det, "statistic", float("nan")))
            signal = f"label_free:{self.cfg.label_free.signal}"
        else:
            name = self._detector_name
            score = max(0.0, recent - ref) if not np.isnan(ref) else float("nan")
            signal = "metric"
        at = self.cfg.granularity == "sample"
        change = max(1, sample_index - int(round(after_w)) + 1) if at else sample_index
        located = self._lf_detector.values_since_change if label_free and self._lf_detector else None
        if located:  # the label-free detector's own location (fed per sample at every granularity)
            change = max(1, sample_index - located + 1)
        event = DriftEvent(
            batch_id=r.batch_id,
            sample_index=sample_index,
            detector=name,
            value=self._to_metric(recent),
            reference=self._to_metric(ref),
            regime=r.regime,
            version=r.version,
            score=score,
            update_kind=update_kind(score, self.cfg.regimes),
            warning_batch_id=self._warning_since,
            signal=signal,
            change_sample_index=change,
            change_batch_id=self._batch_of(change),
            change_probability=probability,
        )
        self._warning_since = None
        self._restart_reference()
        if carry_from is not None and self._lf_detector is None and carry_from < r.n:
            self._carry = (r, carry_from, sample_index - carry_from)
        return event

    def _label_free_values(self, r: BatchResult) -> np.ndarray | None:
        if self._lf_detector is None or r.n == 0:
            return None
        name = self.cfg.label_free.signal
        v = r.signal(name)
        if v is None:
            raise ValueError(
                f"drift_detection.label_free.signal is '{name}' but batch {r.batch_id} (from "
                f"'{r.monitor or 'a monitor'}') carries no {name}: build the monitors with "
                f"label_free='{name}'"
            )
        return v

    def _process(self, r: BatchResult, out: DetectionOutput) -> None:
        cfg = self.cfg
        if self._carry is not None and self._feed_carry(out):
            self._stats["dropped_after_alarm"] += 1  # r: after the alarm, served again on resume
            return
        n = r.values.shape[0]
        # np.mean's own arithmetic (float64 sum, then one division), once per batch
        mean = float(np.add.reduce(r.values, dtype=np.float64)) / n if n else float("nan")
        row = {
            "batch_id": r.batch_id,
            "regime": r.regime,
            "version": r.version,
            "n": n,
            "value": mean,
            "monitor": r.monitor,
            "status": "ok" if r.quarantined is None else "quarantined",
            "reason": r.quarantined or "",
        }
        out.batches.append(row)
        if r.quarantined is not None:  # counted and skipped: nothing to feed or aggregate
            self._stats["quarantined"] += 1
            self._next = r.batch_id + 1
            return
        allowed = self._stats["batches"] >= self._alarms_from
        if n > self._recent_samples:
            self._recent_samples = n
        before = self._stats["samples"]
        self._batch_starts.append((before, r.batch_id))
        event: DriftEvent | None = None
        feed = not self._held and r.version >= self._feed_from
        if not feed:
            self._stats["not_fed"] += 1
        if feed and n > 0 and cfg.granularity == "sample" and self._lf_detector is None:
            event = self._feed_fast(r, r.values, 0, before, allowed, out, mean)  # as _feed_samples would
        elif feed and n > 0 and (cfg.granularity == "sample" or self._lf_detector is not None):
            event = self._feed_samples(r, 0, before, allowed, out, mean)
        if feed and event is None and n > 0 and cfg.granularity == "batch":
            x = 1.0 - mean if self.higher_is_better else mean
            if self._feed(x, float(n), allowed, r.batch_id, out):
                event = self._event(r, before + n)

        if self._interval is None:
            self._interval = _OpenInterval(first_batch=r.batch_id, last_batch=r.batch_id)
        self._interval.add(r, mean, n)
        self._stats["batches"] += 1
        self._stats["samples"] += n
        self._next = r.batch_id + 1

        complete = self._interval.n_batches >= cfg.interval
        if feed and event is None and complete and cfg.granularity == "interval" and self._interval.batch_means:
            agg = self._interval.value(cfg.aggregation)
            x = 1.0 - agg if self.higher_is_better else agg
            if self._feed(x, float(self._interval.n_samples), allowed, r.batch_id, out):
                event = self._event(r, self._stats["samples"])
        if complete or event is not None:
            self._close_interval(into=out.intervals)
        if event is not None:
            self._emit(event, out)

    def _emit(self, event: DriftEvent, out: DetectionOutput) -> None:
        out.events.append(event)
        self._stats["events"] += 1
        self._paused = True
        self._stats["dropped_after_alarm"] += len(self._buffer)
        self._buffer.clear()

    def _feed_carry(self, out: DetectionOutput) -> bool:
        """Feed the rest of the last alarm's batch (monitoring went on with the same model); True if
        it raised an alarm that counts (then emitted, and the engine paused)."""
        assert self._carry is not None
        r, start, base = self._carry
        self._carry = None
        if self._held or r.version < self._feed_from:
            return False
        event = self._feed_samples(r, start, base, self._stats["batches"] >= self._alarms_from, out)
        if event is None:
            return False
        self._emit(event, out)
        return True

    # --- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly here, as plain values (:mod:`raydrift.plain_state`):
        it goes into the run's checkpoint and is read back without pickle."""
        carry = self._carry
        state = {
            "metric": self.metric,
            "higher_is_better": self.higher_is_better,
            "seed": self.seed,
            "start_batch": self.start_batch,
            "detector": self._detector.state_dict(),
            "label_free_detector": self._lf_detector.state_dict() if self._lf_detector is not None else None,
            "warning_since": self._warning_since,
            "reference": self._reference.state_dict(),
            "next": self._next,
            "buffer": [_result_to_plain(r) for r in self._buffer.values()],
            "paused": self._paused,
            "held": self._held,
            "feed_from": self._feed_from,
            "version": self._version,
            "alarms_from": self._alarms_from,
            "alarms_from_sample": self._alarms_from_sample,
            "carry": [_result_to_plain(carry[0]), carry[1], carry[2]] if carry is not None else None,
            "batch_starts": [[int(a), int(b)] for a, b in self._batch_starts],
            "recent_samples": self._recent_samples,
            "interval": to_plain(asdict(self._interval)) if self._interval is not None else None,
            "n_intervals": self._n_intervals,
            "pending": [to_plain(asdict(p)) for p in self._pending],
            "stats": dict(self._stats),
        }
        check_plain(state, "detection engine state")
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a state from :meth:`state_dict` of an engine built with the same config.

        Every field is checked (plain values, types, shapes) before the engine's own fields change.

        Raises
        ------
        raydrift.plain_state.StateError
            One line naming the first field that this engine would not have written.
        """
        where = "detection engine state"
        v = _fields_from_plain(state, where, _ENGINE_FIELDS, raw=_ENGINE_RAW)
        if v["metric"] != self.metric:
            raise StateError(f"{where}: saved for metric '{v['metric']}', this run monitors '{self.metric}'")
        buffer = [_result_from_plain(r, f"{where}['buffer'][{i}]") for i, r in enumerate(v["buffer"])]
        carry = _carry_from_plain(v["carry"], f"{where}['carry']")
        starts = _int_pairs(v["batch_starts"], f"{where}['batch_starts']")
        interval = _interval_from_plain(v["interval"], f"{where}['interval']") if v["interval"] is not None else None
        pending = [_record_from_plain(p, f"{where}['pending'][{i}]") for i, p in enumerate(v["pending"])]
        stats = v["stats"]
        if not set(stats) <= set(_COUNTERS) or not all(type(x) is int for x in stats.values()):
            raise StateError(f"{where}['stats']: expected integer counters among {', '.join(_COUNTERS)}")
        if (v["label_free_detector"] is None) != (self._lf_detector is None):
            saved = "off" if v["label_free_detector"] is None else "on"
            raise StateError(f"{where}['label_free_detector']: saved with label-free detection {saved}, the config differs")
        self._reference.load_state_dict(v["reference"], f"{where}['reference']")
        self._detector.load_state_dict(v["detector"])
        if self._lf_detector is not None:
            self._lf_detector.load_state_dict(v["label_free_detector"])
        self.higher_is_better, self.seed, self.start_batch = v["higher_is_better"], v["seed"], v["start_batch"]
        self._warning_since, self._next, self._paused, self._held = v["warning_since"], v["next"], v["paused"], v["held"]
        self._buffer = {r.batch_id: r for r in buffer}
        self._feed_from, self._version = v["feed_from"], v["version"]
        self._alarms_from, self._alarms_from_sample = v["alarms_from"], v["alarms_from_sample"]
        self._carry = carry
        self._batch_starts = deque(starts, maxlen=CHANGE_HISTORY)
        self._recent_samples = v["recent_samples"]
        self._interval, self._n_intervals, self._pending = interval, v["n_intervals"], pending
        self._stats = {**dict.fromkeys(_COUNTERS, 0), **stats}


# --- plain state of the engine's records -------------------------------------------------------------
_NUMBER: tuple[type, ...] = (int, float)
_INT: tuple[type, ...] = (int,)
_OPT_INT: tuple[type, ...] = (int, type(None))
_OPT_ARRAY: tuple[type, ...] = (np.ndarray, type(None))
#: engine fields rebuilt by their own readers (the others by from_plain)
_ENGINE_RAW = ("detector", "label_free_detector", "reference", "buffer", "carry", "interval", "pending")
_ENGINE_FIELDS: dict[str, tuple[type, ...]] = {
    "metric": (str,),
    "higher_is_better": (bool,),
    "seed": _INT,
    "start_batch": _INT,
    "detector": (dict,),
    "label_free_detector": (dict, type(None)),
    "warning_since": _OPT_INT,
    "reference": (dict,),
    "next": _INT,
    "buffer": (list,),
    "paused": (bool,),
    "held": (bool,),
    "feed_from": _INT,
    "version": _INT,
    "alarms_from": _INT,
    "alarms_from_sample": _INT,
    "carry": (list, type(None)),
    "batch_starts": (list,),
    "recent_samples": _NUMBER,
    "interval": (dict, type(None)),
    "n_intervals": _INT,
    "pending": (list,),
    "stats": (dict,),
}
_RESULT_FIELDS: dict[str, tuple[type, ...]] = {
    "batch_id": _INT,
    "regime": _INT,
    "version": _INT,
    "values": (np.ndarray,),
    "metrics": (dict,),
    "monitor": (str,),
    "eval_seconds": _NUMBER,
    "confidence": _OPT_ARRAY,
    "entropy": _OPT_ARRAY,
    "features": _OPT_ARRAY,
    "quarantined": (str, type(None)),
}
_INTERVAL_FIELDS: dict[str, tuple[type, ...]] = {
    "first_batch": _INT,
    "last_batch": _INT,
    "n_batches": _INT,
    "n_samples": _INT,
    "batch_means": (list,),
    "batch_ns": (list,),
    "metric_sums": (dict,),
    "metric_ns": (dict,),
    "regime": _INT,
    "version": _INT,
}
_RECORD_FIELDS: dict[str, tuple[type, ...]] = {
    "interval": _INT,
    "first_batch": _INT,
    "last_batch": _INT,
    "n_samples": _INT,
    "value": _NUMBER,
    "metrics": (dict,),
    "regime": _INT,
    "version": _INT,
}


def _fields_from_plain(
    state: Any, where: str, fields: dict[str, tuple[type, ...]], raw: tuple[str, ...] = ()
) -> dict[str, Any]:
    """``state``, a plain dict with exactly ``fields``, rebuilt (:func:`from_plain`; ``raw`` fields are
    only checked to be plain), each of the listed types (``bool`` is not an ``int`` here)."""
    check_plain(state, where)
    if type(state) is not dict or set(state) != set(fields):
        got = sorted(state) if type(state) is dict else type(state).__name__
        raise StateError(f"{where}: has fields {got}, expected {sorted(fields)}")
    out = {k: (v if k in raw else from_plain(v, f"{where}[{k!r}]")) for k, v in state.items()}
    for name, types in fields.items():
        if type(out[name]) not in types:
            expected = "/".join(t.__name__ for t in types)
            raise StateError(f"{where}[{name!r}]: a {type(out[name]).__name__}, expected {expected}")
    return out


def _number_map(value: dict[str, Any], where: str, types: tuple[type, ...] = _NUMBER) -> None:
    if not all(type(x) in types for x in value.values()):
        raise StateError(f"{where}: expected a mapping of names to numbers")


def _int_pairs(value: list[Any], where: str) -> list[tuple[int, int]]:
    if not all(type(p) is list and len(p) == 2 and all(type(x) is int for x in p) for p in value):
        raise StateError(f"{where}: expected a list of [int, int] pairs")
    return [(a, b) for a, b in value]


def _result_to_plain(r: BatchResult) -> dict[str, Any]:
    return {f: to_plain(getattr(r, f)) for f in _RESULT_FIELDS}


def _result_from_plain(value: Any, where: str) -> BatchResult:
    v = _fields_from_plain(value, where, _RESULT_FIELDS)
    _number_map(v["metrics"], f"{where}['metrics']")
    for name in ("values", "confidence", "entropy", "features"):
        a = v[name]
        if a is not None and (a.dtype != np.float32 or a.ndim > 2):
            raise StateError(f"{where}[{name!r}]: expected a float32 array of at most 2 dimensions")
    try:
        return BatchResult(**v)
    except ValueError as exc:
        raise StateError(f"{where}: {exc}") from None


def _carry_from_plain(value: list[Any] | None, where: str) -> tuple[BatchResult, int, int] | None:
    if value is None:
        return None
    if len(value) != 3 or not all(type(x) is int for x in value[1:]):
        raise StateError(f"{where}: expected [batch result, int, int]")
    return _result_from_plain(value[0], f"{where}[0]"), value[1], value[2]


def _interval_from_plain(value: dict[str, Any], where: str) -> _OpenInterval:
    v = _fields_from_plain(value, where, _INTERVAL_FIELDS)
    if not all(type(x) in _NUMBER for x in v["batch_means"]) or not all(type(x) is int for x in v["batch_ns"]):
        raise StateError(f"{where}: 'batch_means' must be numbers and 'batch_ns' integers")
    _number_map(v["metric_sums"], f"{where}['metric_sums']")
    _number_map(v["metric_ns"], f"{where}['metric_ns']", _INT)
    if set(v["metric_sums"]) != set(v["metric_ns"]) or len(v["batch_means"]) != len(v["batch_ns"]):
        raise StateError(f"{where}: inconsistent sums and counts")
    return _OpenInterval(**v)


def _record_from_plain(value: Any, where: str) -> IntervalRecord:
    v = _fields_from_plain(value, where, _RECORD_FIELDS)
    _number_map(v["metrics"], f"{where}['metrics']")
    return IntervalRecord(**v)
