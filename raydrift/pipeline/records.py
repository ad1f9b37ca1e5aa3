"""The run's records: typed, and the owners of their JSON form.

``summary.json`` is :meth:`RunSummary.to_dict` written as JSON; ``raydrift report``, the CSV exports and
the plots read it back through :meth:`RunSummary.from_dict`, which also loads the summaries of older
raydrift versions (a field they lack takes its default, a field this version does not know is dropped).
A reader learns the schema from these classes; every field is documented where it is declared.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

from raydrift.detection.engine import DriftEvent
from raydrift.pipeline.adaptation import AdaptationRecord

__all__ = [
    "AccuracyMatrix",
    "AdaptationRecord",
    "AccuracyRow",
    "DetectionInfo",
    "DriftEvent",
    "GateDecision",
    "MetricMatrix",
    "MonitoringStats",
    "NotPromotedRecord",
    "Quarantined",
    "RecoveryRecord",
    "RegimeStart",
    "ResumeMark",
    "RunInfo",
    "RunSummary",
    "StreamBooks",
    "UpdateRecord",
    "drift_event_from_dict",
]

T = TypeVar("T")


def _pick(cls: type[T], d: Any, **nested: Any) -> T:
    """``cls(**d)`` with only the fields ``cls`` declares (older and newer summaries load);
    ``nested`` maps a field name to the function that builds it from its JSON value."""
    if not isinstance(d, dict):
        d = {}
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs = {k: (nested[k](v) if k in nested else v) for k, v in d.items() if k in names}
    return cls(**kwargs)


# Every field of a record has a default, so that the summary of an older raydrift version (which may
# lack a field) still loads; a record built by the loop sets every field.


def _list(cls: type[T]) -> Any:
    return lambda items: [_pick(cls, x) for x in (items or [])]


def _flat(obj: Any) -> dict[str, Any]:
    """A record's fields as a dict, nested records and lists of them included (``asdict`` would also
    deep-copy the plain dicts, which is fine: they are small)."""
    return dataclasses.asdict(obj)


def _nan(v: Any) -> float:
    return float("nan") if v is None else float(v)


def drift_event_from_dict(d: dict[str, Any]) -> DriftEvent:
    """A :class:`DriftEvent` from its ``summary.json`` form (JSON has no NaN: ``null`` is read back as NaN)."""
    required = {"batch_id": -1, "sample_index": 0, "detector": "", "value": None, "reference": None,
                "regime": 0, "version": 0}
    ev = _pick(DriftEvent, {**required, **(d if isinstance(d, dict) else {})})
    ev.value, ev.reference, ev.score = _nan(ev.value), _nan(ev.reference), _nan(ev.score)
    return ev


@dataclass
class ResumeMark:
    """One ``raydrift run --resume`` of this run: when, and the first batch id it served."""

    at: str = ""
    batch_id: int = 0


@dataclass
class RunInfo:
    """The run as a whole (``summary["run"]``)."""

    name: str = ""
    run_dir: str = ""
    status: str = "running"
    """``running``, ``completed``, ``interrupted`` or ``failed``."""
    started: str = ""
    finished: str | None = None
    wall_seconds: float | None = None
    ray_address: str | None = None
    dashboard_url: str | None = None
    harness: str = ""
    seed: int = 0
    error: str | None = None
    """``Type: first line`` of the failure (the traceback is in ``error.log``)."""
    signal: str | None = None
    """``SIGINT`` or ``SIGTERM`` when the run was interrupted."""
    resumed: list[ResumeMark] = field(default_factory=list)


@dataclass
class RegimeStart:
    regime: int = 0
    batch_id: int = 0


@dataclass
class Quarantined:
    """A batch a monitor could not evaluate (kept out of the detector, the window and the memory)."""

    batch_id: int = 0
    reason: str = ""


@dataclass
class StreamBooks:
    """What the stream delivered (``summary["stream"]``); ``batches`` matches ``batches.csv``."""

    batches: int = 0
    samples: int = 0
    regimes_seen: list[int] = field(default_factory=list)
    regime_names: dict[int, str] = field(default_factory=dict)
    regime_starts: list[RegimeStart] = field(default_factory=list)
    quarantined: list[Quarantined] = field(default_factory=list)


@dataclass
class MonitoringStats:
    """The monitors (``summary["monitoring"]``); the rates and per-monitor figures are set when the
    stream ends (None for a run stopped before)."""

    num_monitors: int = 0
    on_drift: str = "continue"
    samples_per_second: float | None = None
    batches_per_second: float | None = None
    monitoring_seconds: float | None = None
    samples_during_updates: int | None = None
    monitor_versions: dict[str, int] | None = None
    monitor_batches: dict[str, int] | None = None
    monitor_torch_threads: dict[str, int] | None = None
    monitor_nodes: dict[str, str | None] | None = None
    eval_seconds_total: float | None = None
    quarantined_batches: int | None = None
    actor_restarts: dict[str, int] | None = None


@dataclass
class DetectionInfo:
    detector: str = ""
    granularity: str = "sample"
    metric: str = ""
    higher_is_better: bool = True


@dataclass
class GateDecision:
    """The promotion gate's verdict on a candidate (:func:`raydrift.pipeline.gate.promotion_gate`)."""

    promote: bool = False
    reason: str = ""
    holdout_current: float | None = None
    holdout_new: float | None = None
    memory_current: float | None = None
    memory_new: float | None = None
    holdout_samples: int = 0


def _gate(d: Any) -> GateDecision | None:
    return None if d is None else _pick(GateDecision, d)


@dataclass
class UpdateRecord:
    """A promoted update (``summary["updates"]``): timings, training figures, the gate and the effect."""

    version: int = 0
    drift_batch_id: int = -1
    followup: int = 0
    """0: the drift's first update; k: its k-th follow-up (the model was still degraded)."""
    window_last_batch_id: int = -1
    live_batch_id: int = -1
    """The first batch evaluated with the new weights' version in the books."""
    strategy: str = ""
    update_kind: str = "continual_learning"
    status: str = "promoted"
    score: float | None = None
    on_drift: str = "continue"
    collecting_seconds: float = 0.0
    """From the alarm until the post-drift window was complete."""
    waiting_seconds: float = 0.0
    """Fetching the update's data from the stream reader."""
    training_seconds: float = 0.0
    gating_seconds: float = 0.0
    broadcasting_seconds: float = 0.0
    total_seconds: float = 0.0
    samples_during_update: int = 0
    """Samples monitored with the old weights while this update trained (``on_drift: continue``)."""
    window_samples: int = 0
    memory_samples: int = 0
    train_loss: float | None = None
    train_steps: int | None = None
    train_loop_seconds: float | None = None
    """The gradient steps alone."""
    train_forward_backward_seconds: float | None = None
    train_optimizer_seconds: float | None = None
    train_torch_threads: int | None = None
    train_queue_seconds: float | None = None
    """Standing trainer: from the job's submission until a worker took it."""
    train_handoff_seconds: float | None = None
    """Standing trainer: from rank 0's result until the driver had it."""
    train_job_attempts: int | None = None
    """Standing trainer: times the job ran (> 1: a worker group was restarted mid-job)."""
    window_accuracy_after_training: float | None = None
    memory_accuracy_after_training: float | None = None
    gate: GateDecision | None = None
    regime: int = 0
    accuracy_before: float | None = None
    """The monitored metric at the alarm (the drift event's ``value``)."""
    pre_drift_value: float | None = None
    """The monitored metric before the change (the drift event's ``reference``)."""
    recovery_batches: int | None = None
    """Batches from the drift until the monitored metric is back within the recovery tolerance of
    ``pre_drift_value`` (None: not within this regime)."""
    accuracy_after: float | None = None
    """The monitored metric of the first interval evaluated with this version."""
    test_accuracy_before: dict[int, float | None] = field(default_factory=dict)
    test_accuracy_after: dict[int, float | None] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> UpdateRecord:
        return _pick(cls, d, gate=_gate)


@dataclass
class NotPromotedRecord:
    """An update that did not go live (``summary["rejected_updates"]``): ``failed`` (an exception,
    ``reason`` says which) or ``rejected`` (by the gate)."""

    status: str = "failed"
    reason: str = ""
    drift_batch_id: int = -1
    followup: int = 0
    window_last_batch_id: int = -1
    version_kept: int = 0
    strategy: str = ""
    update_kind: str = "continual_learning"
    training_seconds: float = 0.0
    gate: GateDecision | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NotPromotedRecord:
        return _pick(cls, d, gate=_gate)


@dataclass
class RecoveryRecord:
    """A dead actor the loop replaced (``summary["recoveries"]``)."""

    actor: str = ""
    detail: str = ""
    batch_id: int = 0
    time: str = ""


@dataclass
class AccuracyRow:
    """Test accuracy on every regime's held-out set, taken at ``batch_id`` (-1: the initial model)."""

    label: str = ""
    version: int = 0
    batch_id: int = -1
    accuracy: list[float | None] = field(default_factory=list)


@dataclass
class MetricMatrix:
    """One harness metric on every regime's held-out set (rows as in the accuracy matrix)."""

    metric: str = ""
    higher_is_better: bool = True
    rows: list[AccuracyRow] = field(default_factory=list)
    """``AccuracyRow.accuracy`` holds this metric's values."""
    cl_metrics: dict[str, Any] = field(default_factory=dict)
    """Average, forgetting and backward transfer in this metric's direction (forgetting > 0: worse)."""


def _matrices(d: Any) -> dict[str, MetricMatrix]:
    if not isinstance(d, dict):
        return {}
    return {k: _pick(MetricMatrix, v, rows=_list(AccuracyRow)) for k, v in d.items()}


@dataclass
class AccuracyMatrix:
    regimes: list[int] = field(default_factory=list)
    rows: list[AccuracyRow] = field(default_factory=list)


@dataclass
class RunSummary:
    """Everything a run reports (``summary.json``).

    ``cl_metrics`` (average accuracy, forgetting, backward transfer from the accuracy matrix),
    ``profile`` (seconds per stage) and ``tracking`` (the MLflow or file store) are flat name -> value
    maps.
    """

    run: RunInfo = field(default_factory=RunInfo)
    stream: StreamBooks = field(default_factory=StreamBooks)
    monitoring: MonitoringStats = field(default_factory=MonitoringStats)
    detection: DetectionInfo = field(default_factory=DetectionInfo)
    drift_events: list[DriftEvent] = field(default_factory=list)
    updates: list[UpdateRecord] = field(default_factory=list)
    rejected_updates: list[NotPromotedRecord] = field(default_factory=list)
    recoveries: list[RecoveryRecord] = field(default_factory=list)
    adaptations: list[AdaptationRecord] = field(default_factory=list)
    """Per drift: the updates it took and whether (and how fast) the monitored metric recovered."""
    accuracy_matrix: AccuracyMatrix = field(default_factory=AccuracyMatrix)
    metric_matrices: dict[str, MetricMatrix] = field(default_factory=dict)
    """Every harness metric (the monitored one included) per regime, after each update."""
    cl_metrics: dict[str, Any] = field(default_factory=dict)
    profile: dict[str, float] = field(default_factory=dict)
    tracking: dict[str, Any] = field(default_factory=dict)
    model_version: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``summary.json``; NaN stays a float here, JSON writes it as ``null``)."""
        d = _flat(self)
        d["drift_events"] = [ev.to_dict() for ev in self.drift_events]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunSummary:
        """Read a summary back (this version's or an older one's)."""
        if not isinstance(d, dict):
            d = {}
        return cls(
            run=_pick(RunInfo, d.get("run"), resumed=_list(ResumeMark)),
            stream=_pick(
                StreamBooks, d.get("stream"), regime_starts=_list(RegimeStart), quarantined=_list(Quarantined)
            ),
            monitoring=_pick(MonitoringStats, d.get("monitoring")),
            detection=_pick(DetectionInfo, d.get("detection")),
            drift_events=[drift_event_from_dict(e) for e in d.get("drift_events") or []],
            updates=[UpdateRecord.from_dict(u) for u in d.get("updates") or []],
            rejected_updates=[NotPromotedRecord.from_dict(u) for u in d.get("rejected_updates") or []],
            recoveries=_list(RecoveryRecord)(d.get("recoveries")),
            adaptations=_list(AdaptationRecord)(d.get("adaptations")),
            accuracy_matrix=_pick(AccuracyMatrix, d.get("accuracy_matrix"), rows=_list(AccuracyRow)),
            metric_matrices=_matrices(d.get("metric_matrices")),
            cl_metrics=dict(d.get("cl_metrics") or {}),
            profile=dict(d.get("profile") or {}),
            tracking=dict(d.get("tracking") or {}),
            model_version=int(d.get("model_version") or 0),
        )

    @property
    def failed_updates(self) -> list[NotPromotedRecord]:
        return [u for u in self.rejected_updates if u.status == "failed"]
