"""The run summary: how it starts, what the end of the stream adds, and the continual-learning metrics.

The summary is a :class:`~raydrift.pipeline.records.RunSummary`; ``summary.json`` is its JSON form
(:func:`write_outputs` writes it with the CSV exports and the plots, however the run ended).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

from raydrift.config import RaydriftConfig
from raydrift.learning.metrics import cl_summary
from raydrift.pipeline.records import DetectionInfo, MonitoringStats, RunInfo, RunSummary
from raydrift.report import export_csv, make_plots, write_summary

__all__ = ["cl_metrics", "end_of_stream", "new_summary", "write_outputs"]


def new_summary(cfg: RaydriftConfig, run_dir: Path, metric: str, higher_is_better: bool, started: dt.datetime) -> RunSummary:
    return RunSummary(
        run=RunInfo(
            name=cfg.name,
            run_dir=str(run_dir),
            started=started.isoformat(timespec="seconds"),
            harness=cfg.model.harness,
            seed=cfg.seed,
        ),
        monitoring=MonitoringStats(num_monitors=cfg.monitor.num_monitors, on_drift=cfg.monitor.on_drift),
        detection=DetectionInfo(
            detector=cfg.drift_detection.detector,
            granularity=cfg.drift_detection.granularity,
            metric=metric,
            higher_is_better=higher_is_better,
        ),
    )


def end_of_stream(
    summary: RunSummary,
    stats: list[dict[str, Any]],
    processed: int,
    samples: int,
    monitor_seconds: float,
    detect_seconds: float,
    restarts: dict[str, int],
) -> None:
    """The monitoring figures and the profile, from the monitors' ``stats`` at the stream's end."""
    summary.stream.batches, summary.stream.samples = processed, samples
    ups = summary.updates
    eval_s = sum(s["eval_seconds"] for s in stats)
    mon = summary.monitoring
    mon.samples_per_second = round(samples / max(monitor_seconds, 1e-9), 2)
    mon.batches_per_second = round(processed / max(monitor_seconds, 1e-9), 3)
    mon.monitoring_seconds = round(monitor_seconds, 3)
    mon.samples_during_updates = sum(u.samples_during_update for u in ups)
    mon.monitor_versions = {s["name"]: s["version"] for s in stats}
    mon.monitor_batches = {s["name"]: s["batches"] for s in stats}
    mon.monitor_torch_threads = {s["name"]: s["torch_threads"] for s in stats}
    mon.monitor_nodes = {s["name"]: s.get("node_id") for s in stats}
    mon.eval_seconds_total = round(eval_s, 3)
    mon.quarantined_batches = len(summary.stream.quarantined)
    mon.actor_restarts = dict(restarts)

    def total(values: list[float | None]) -> float:
        return round(sum(v or 0.0 for v in values), 4)

    summary.profile.update(
        {
            "inference_seconds": round(eval_s, 4),
            "detection_seconds": round(detect_seconds, 4),
            "update_training_seconds": total([u.training_seconds for u in ups]),
            "update_forward_backward_seconds": total([u.train_forward_backward_seconds for u in ups]),
            "update_optimizer_seconds": total([u.train_optimizer_seconds for u in ups]),
            "update_gating_seconds": total([u.gating_seconds for u in ups]),
            "broadcast_seconds": total([u.broadcasting_seconds for u in ups]),
            # the monitors' side of it: fetching and loading new versions at the start of a task
            "monitor_swap_seconds": round(sum(s.get("swap_seconds", 0.0) for s in stats), 4),
            "accuracy_matrix_seconds": round(summary.profile.get("accuracy_matrix_seconds", 0.0), 4),
        }
    )


def cl_metrics(summary: RunSummary) -> None:
    """Average accuracy, forgetting and BWT from the accuracy matrix (see docs/continuous_learning.md),
    and the same for every metric matrix, in each metric's own direction.

    Row k was taken at stream position p_k (its drift batch; -1 for the initial model). A regime
    counts as seen at row k if it started at or before p_k; the row that closes regime j is the
    last row taken before the next regime started (the model as it was when regime j ended).
    """
    positions = _positions(summary)
    if positions is None:
        return
    am = summary.accuracy_matrix
    summary.cl_metrics = _cl([r.accuracy for r in am.rows], True, *positions) or summary.cl_metrics
    for m in summary.metric_matrices.values():
        m.cl_metrics = _cl([r.accuracy for r in m.rows], m.higher_is_better, *positions) or {}


def _positions(summary: RunSummary) -> tuple[list[int], dict[int, int]] | None:
    """Per matrix row, how many regimes had been seen; per regime column, the row that closes it."""
    am, starts = summary.accuracy_matrix, summary.stream.regime_starts
    if not am.rows or not starts:
        return None
    col = {r: i for i, r in enumerate(am.regimes)}
    pos = [r.batch_id for r in am.rows]
    seen_at = [max(1, len({s.regime for s in starts if s.batch_id <= max(p, 0)})) for p in pos]
    last_row: dict[int, int] = {}
    for i, s in enumerate(starts):
        end = starts[i + 1].batch_id if i + 1 < len(starts) else float("inf")
        ks = [k for k, p in enumerate(pos) if p < end]
        if s.regime in col and ks:
            last_row[col[s.regime]] = max(ks)
    return seen_at, last_row


def _cl(
    rows: list[list[float | None]], higher_is_better: bool, seen_at: list[int], last_row: dict[int, int]
) -> dict[str, Any] | None:
    """CL metrics of one matrix; a lower-is-better metric is negated for the computation, so forgetting
    > 0 always means worse and backward transfer > 0 better (the average is in the metric's units)."""
    if not rows or any(a is None for a in rows[-1]):
        return None
    sign = 1.0 if higher_is_better else -1.0
    signed = [[None if v is None else sign * v for v in row] for row in rows]
    try:
        out: dict[str, Any] = dict(cl_summary(signed, seen_at, last_row))
    except Exception as exc:  # noqa: BLE001 - reporting must not fail the run
        return {"error": f"{type(exc).__name__}: {exc}"}
    avg = out.get("final_average_accuracy")
    if avg is not None:
        out["final_average_accuracy"] = sign * avg
    return out


def write_outputs(run_dir: Path, summary: RunSummary, plots: bool, warn: Callable[[str], None]) -> dict[str, Any]:
    """``summary.json``, the CSV exports and (with ``plots``) the plots; an export or a plot that fails
    is a warning, never a lost summary. Returns the JSON form that was written."""
    d = summary.to_dict()
    write_summary(run_dir, d)
    try:
        export_csv(run_dir, d)
    except Exception as exc:  # noqa: BLE001 - exports must never lose a run
        warn(f"warning: CSV export failed: {exc}")
    if plots:
        try:
            make_plots(run_dir, d)
        except Exception as exc:  # noqa: BLE001 - plots must never lose a run
            warn(f"warning: plots failed: {exc}")
    return d
