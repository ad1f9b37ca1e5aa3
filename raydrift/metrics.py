"""Dashboard metrics: Ray custom metrics (``ray.util.metrics``) recorded by the actors and the coordinator.

Ray exports them to Prometheus with a ``ray_`` prefix (counters also get a ``_total`` suffix) from the
metrics agent of the node where they are recorded, next to Ray's own metrics; the Ray dashboard's
Metrics tab and ``cluster/grafana/raydrift-dashboard.json`` plot them. Every name is in
:data:`METRICS`.

Two recorders, both cheap (a few microseconds a call) and both no-ops outside a Ray worker or driver:

- :class:`MonitorMetrics`, one per ``MonitorActor`` (tag ``monitor``): batches and samples evaluated,
  evaluation latency, the model version in use;
- :class:`RunMetrics`, in the coordinator (tag ``run``): the monitored metric per interval, samples/s,
  drift events, updates and their latency.

Metric handles are created on first use and dropped when pickled, so both classes pickle.

Ray drops a gauge's value from the node's endpoint some time after its last ``set`` (about 20 s,
measured on Ray 2.60), so the recorders set their gauges again with every call: a monitor's version
with every batch, the run's gauges with every interval, progress line, drift or update.

Examples
--------
>>> m = RunMetrics("demo", "accuracy")  # outside Ray: every call is a no-op
>>> m.interval(0.93)
>>> m.enabled
False
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

PREFIX = "raydrift_"

# Seconds; updates take ~1 s (in-process) to minutes (multi-GPU): cover both ends.
UPDATE_SECONDS_BOUNDARIES = [0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0]
EVAL_SECONDS_BOUNDARIES = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5]


@dataclass(frozen=True)
class MetricSpec:
    """One exported metric: its kind, help text, tag keys and (histograms) bucket boundaries."""

    name: str
    kind: Literal["counter", "gauge", "histogram"]
    description: str
    tag_keys: tuple[str, ...]
    boundaries: tuple[float, ...] = ()

    @property
    def prometheus_name(self) -> str:
        """The name Prometheus sees (counters ``..._total``, histograms ``..._bucket/_sum/_count``)."""
        return f"ray_{self.name}_total" if self.kind == "counter" else f"ray_{self.name}"


METRICS: dict[str, MetricSpec] = {
    s.name: s
    for s in [
        MetricSpec(f"{PREFIX}batches_evaluated", "counter", "stream batches evaluated", ("monitor", "run")),
        MetricSpec(f"{PREFIX}samples_evaluated", "counter", "stream samples evaluated", ("monitor", "run")),
        MetricSpec(
            f"{PREFIX}eval_seconds",
            "histogram",
            "seconds to evaluate one batch",
            ("monitor", "run"),
            tuple(EVAL_SECONDS_BOUNDARIES),
        ),
        MetricSpec(f"{PREFIX}model_version", "gauge", "model version a monitor evaluates with", ("monitor", "run")),
        MetricSpec(
            f"{PREFIX}monitored_metric",
            "gauge",
            "the monitored metric, aggregated over the last interval",
            ("run", "metric"),
        ),
        MetricSpec(
            f"{PREFIX}samples_per_second", "gauge", "samples evaluated per second of monitoring", ("run",)
        ),
        MetricSpec(f"{PREFIX}drift_events", "counter", "drift events detected", ("run", "detector")),
        MetricSpec(f"{PREFIX}updates", "counter", "model updates broadcast", ("run", "strategy")),
        MetricSpec(
            f"{PREFIX}update_seconds",
            "histogram",
            "seconds of an update by phase: total, waiting, training, broadcasting",
            ("run", "phase"),
            tuple(UPDATE_SECONDS_BOUNDARIES),
        ),
        MetricSpec(f"{PREFIX}run_model_version", "gauge", "latest model version broadcast", ("run",)),
    ]
}

UPDATE_PHASES = ("total", "waiting", "training", "broadcasting")


def _ray_ready() -> bool:
    try:
        import ray
    except ImportError:  # pragma: no cover - ray is a dependency
        return False
    return bool(ray.is_initialized())


def make_metric(spec: MetricSpec) -> Any:
    """The ``ray.util.metrics`` object for ``spec`` (needs a connected Ray worker or driver)."""
    from ray.util import metrics as rm

    if spec.kind == "counter":
        return rm.Counter(spec.name, description=spec.description, tag_keys=spec.tag_keys)
    if spec.kind == "gauge":
        return rm.Gauge(spec.name, description=spec.description, tag_keys=spec.tag_keys)
    return rm.Histogram(
        spec.name, description=spec.description, boundaries=list(spec.boundaries), tag_keys=spec.tag_keys
    )


class _Recorder:
    """Creates the metric handles it needs on first use; drops them when pickled."""

    def __init__(self, enabled: bool | None = None) -> None:
        self._enabled_arg = enabled
        self._handles: dict[str, Any] = {}
        self._gauges: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

    def _set(self, short: str, value: float, tags: dict[str, str]) -> None:
        """Set a gauge and remember it, so that :meth:`_refresh` can set it again."""
        self._gauges[(short, tuple(sorted(tags.items())))] = float(value)
        self._get(short).set(float(value), tags=tags)

    def _refresh(self) -> None:
        for (short, tags), value in self._gauges.items():
            self._get(short).set(value, tags=dict(tags))

    @property
    def enabled(self) -> bool:
        """Recording needs Ray: False outside a worker or a connected driver, or when turned off."""
        return self._enabled_arg is not False and _ray_ready()

    def _get(self, short: str) -> Any:
        name = PREFIX + short
        handle = self._handles.get(name)
        if handle is None:
            handle = self._handles[name] = make_metric(METRICS[name])
        return handle

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_handles": {}, "_gauges": {}}  # handles are per process: made again on first use

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


class MonitorMetrics(_Recorder):
    """What a ``MonitorActor`` records, tagged with its name (``monitor-0`` …) and its run.

    Parameters
    ----------
    monitor
        The monitor's actor name.
    run
        The run's name (its run directory's name), so a dashboard can filter one run's monitors.
    enabled
        False turns recording off; None (default) records whenever Ray is initialized.
    """

    def __init__(self, monitor: str, run: str = "", enabled: bool | None = None) -> None:
        super().__init__(enabled)
        self.monitor = monitor
        self.run = run

    def batch(self, n_samples: int, seconds: float, version: int | None = None) -> None:
        """One batch of ``n_samples`` evaluated in ``seconds`` (with model ``version``)."""
        if not self.enabled:
            return
        tags = {"monitor": self.monitor, "run": self.run}
        self._get("batches_evaluated").inc(1.0, tags=tags)
        if n_samples > 0:
            self._get("samples_evaluated").inc(float(n_samples), tags=tags)
        self._get("eval_seconds").observe(float(seconds), tags=tags)
        if version is not None:
            self._set("model_version", float(version), tags)

    def batches(self, results: Sequence[Any]) -> None:
        """Several batches (``BatchResult``s with ``values``, ``eval_seconds``, ``version``) evaluated
        by one task: counters are incremented once, each batch's time is observed."""
        if not self.enabled or not results:
            return
        tags = {"monitor": self.monitor, "run": self.run}
        self._get("batches_evaluated").inc(float(len(results)), tags=tags)
        n = sum(len(r.values) for r in results)
        if n > 0:
            self._get("samples_evaluated").inc(float(n), tags=tags)
        hist = self._get("eval_seconds")
        for r in results:
            hist.observe(float(r.eval_seconds), tags=tags)
        self._set("model_version", float(results[-1].version), tags)

    def version(self, version: int) -> None:
        """The model version the monitor now evaluates with."""
        if self.enabled:
            self._set("model_version", float(version), {"monitor": self.monitor, "run": self.run})


class RunMetrics(_Recorder):
    """What the coordinator records for one run, tagged ``run=<run name>``.

    Parameters
    ----------
    run
        The run's name (its run directory's name is unique per run).
    metric
        The monitored metric's name (``monitor.metric``), used as the ``metric`` tag.
    enabled
        False turns recording off; None (default) records whenever Ray is initialized.
    """

    def __init__(self, run: str, metric: str, enabled: bool | None = None) -> None:
        super().__init__(enabled)
        self.run = run
        self.metric = metric

    def interval(self, value: float) -> None:
        """The monitored metric aggregated over one interval (``IntervalRecord.value``)."""
        if self.enabled and value == value:  # NaN (an empty interval) is not exported
            self._set("monitored_metric", value, {"run": self.run, "metric": self.metric})
            self._refresh()

    def throughput(self, samples_per_second: float) -> None:
        """Samples evaluated per second of monitoring so far."""
        if self.enabled:
            self._set("samples_per_second", samples_per_second, {"run": self.run})
            self._refresh()

    def drift(self, detector: str) -> None:
        """One drift event acted on."""
        if self.enabled:
            self._get("drift_events").inc(1.0, tags={"run": self.run, "detector": detector})
            self._refresh()

    def update(self, update: Mapping[str, Any]) -> None:
        """One update broadcast: an entry of ``summary["updates"]`` (``version``, ``strategy``,
        ``total_seconds``, ``waiting_seconds``, ``training_seconds``, ``broadcasting_seconds``)."""
        if not self.enabled:
            return
        self._get("updates").inc(1.0, tags={"run": self.run, "strategy": str(update.get("strategy", ""))})
        hist = self._get("update_seconds")
        for phase in UPDATE_PHASES:
            seconds = update.get(f"{phase}_seconds")
            if seconds is not None:
                hist.observe(float(seconds), tags={"run": self.run, "phase": phase})
        if update.get("version") is not None:
            self._set("run_model_version", float(update["version"]), {"run": self.run})
        self._refresh()
