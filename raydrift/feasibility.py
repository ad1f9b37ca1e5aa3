"""Can an autoscaling cluster ever satisfy the run's requests? And what is it waiting for?

With ``ray.autoscaling: true`` the cluster's current totals say nothing (it may have no worker node
yet), but its node types and their maxima do. :func:`check_feasible` refuses, in one
:class:`~raydrift.errors.UserError` line, a config that no combination of node types can satisfy:

- a monitor, or a Ray Train worker, that asks for more of a resource than any single node type has
  (``monitor.num_gpus: 2`` when the largest node type has 1 GPU);
- more of a resource in total (every monitor plus every train worker) than all node types at their
  maximum count have together.

Both are necessary conditions, so a request that could fit is never refused. The node types come
from :func:`discover_node_types`: the autoscaler's cluster config in the GCS (autoscaler v2, KubeRay),
else the autoscaling config file of this machine's autoscaler (the head, where ``ray job submit``
runs the driver); when neither is found nothing is refused. :func:`pending_line` says what the
autoscaler is doing while the actors wait.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raydrift.config import RaydriftConfig
from raydrift.errors import UserError

__all__ = [
    "NodeType",
    "autoscaler_status",
    "Request",
    "check_feasible",
    "discover_node_types",
    "node_types_from_autoscaling_config",
    "node_types_from_cluster_config",
    "pending_line",
    "requests_of",
]

UNLIMITED = math.inf
_EPS = 1e-9


@dataclass(frozen=True)
class NodeType:
    """A node type the cluster can have: its resources and how many of it at most."""

    name: str
    resources: Mapping[str, float]
    max_count: float  # UNLIMITED when the autoscaler sets no bound


@dataclass(frozen=True)
class Request:
    """``count`` actors (or workers) that each need ``resources`` on one node."""

    what: str
    resources: Mapping[str, float]
    count: int
    fix: str = field(default="")


def requests_of(cfg: RaydriftConfig) -> list[Request]:
    """What the run places: the monitors and (during an update) the Ray Train workers."""
    mc, tc = cfg.monitor, cfg.train
    monitor = {"CPU": mc.num_cpus, **({"GPU": mc.num_gpus} if mc.num_gpus else {}), **dict(mc.resources)}
    out = [Request("a monitor", monitor, mc.num_monitors, "lower monitor.num_cpus/num_gpus/resources")]
    if tc.num_workers > 0:
        worker = {"CPU": tc.cpus_per_worker, **({"GPU": tc.gpus_per_worker} if tc.use_gpu else {})}
        out.append(Request("a train worker", worker, tc.num_workers, "lower train.cpus_per_worker/gpus_per_worker"))
    return out


_NOT_SHOWN = ("memory", "object_store_memory")


def _fmt(resources: Mapping[str, float]) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in resources.items() if v and k not in _NOT_SHOWN) + "}"


def check_feasible(cfg: RaydriftConfig, types: Iterable[NodeType], where: str = "the cluster") -> None:
    """Raise a one-line :class:`UserError` when no combination of ``types`` can hold the run."""
    types = [t for t in types if t.max_count > 0]
    if not types:
        return
    shapes = ", ".join(f"{t.name} {_fmt(t.resources)} x{'∞' if t.max_count == UNLIMITED else f'{t.max_count:g}'}"
                       for t in types)
    requests = requests_of(cfg)
    for r in requests:
        if r.count > 0 and not any(_fits(r.resources, t.resources) for t in types):
            raise UserError(
                f"{r.what} asks for {_fmt(r.resources)} but no node type of {where} has that much ({shapes}): "
                f"{r.fix}, or add a node type that has it"
            )
    for key in sorted({k for r in requests for k, v in r.resources.items() if v}):
        need = sum(r.count * r.resources.get(key, 0.0) for r in requests)
        most = sum(t.max_count * t.resources.get(key, 0.0) for t in types)
        if need > most + _EPS:
            raise UserError(
                f"the run needs {need:g} {key} at once (monitors and train workers) but every node type of "
                f"{where} at its maximum count has {most:g} ({shapes}): lower monitor.num_monitors or "
                "train.num_workers, or raise the node types' max_workers"
            )


def _fits(need: Mapping[str, float], have: Mapping[str, float]) -> bool:
    return all(have.get(k, 0.0) + _EPS >= v for k, v in need.items() if v)


def node_types_from_autoscaling_config(config: Mapping[str, Any]) -> list[NodeType] | None:
    """Node types of a cluster launcher / ``--autoscaling-config`` file (None if a type's resources
    are not written down: the autoscaler detects them from the instance type, raydrift cannot)."""
    types = config.get("available_node_types") or {}
    head, total_max = config.get("head_node_type"), config.get("max_workers")
    out = []
    for name, spec in types.items():
        resources = spec.get("resources")
        if resources is None:
            return None
        count = 1.0 if name == head else float(spec.get("max_workers", total_max if total_max is not None else UNLIMITED))
        if total_max is not None and name != head:
            count = min(count, float(total_max))
        out.append(NodeType(str(name), {str(k): float(v) for k, v in resources.items()}, count))
    return out or None


def node_types_from_cluster_config(config: Any) -> list[NodeType] | None:
    """Node types of the GCS's ``autoscaler_pb2.ClusterConfig`` (``max_count`` -1: no bound)."""
    groups = list(getattr(config, "node_group_configs", []) or [])
    out = [
        NodeType(
            g.name or f"group-{k}",
            {str(r): float(v) for r, v in g.resources.items()},
            UNLIMITED if g.max_count < 0 else float(g.max_count),
        )
        for k, g in enumerate(groups)
    ]
    return out or None


def _local_autoscaling_config(gcs_address: str) -> Path | None:
    """The ``--autoscaling-config`` of the autoscaler monitor on this machine serving ``gcs_address``."""
    try:
        import psutil
    except ImportError:
        return None
    port = gcs_address.rsplit(":", 1)[-1]
    for proc in psutil.process_iter(["cmdline"]):
        args = proc.info.get("cmdline") or []
        if not any(a.endswith("monitor.py") for a in args):
            continue
        if not any(a.startswith("--gcs-address=") and a.rsplit(":", 1)[-1] == port for a in args):
            continue
        for a in args:
            if a.startswith("--autoscaling-config="):
                return Path(a.split("=", 1)[1]).expanduser()
    return None


def discover_node_types(gcs_address: str) -> tuple[list[NodeType] | None, str]:
    """The connected cluster's node types and where they were read (``(None, why)`` if not found)."""
    try:
        from ray._private import state

        found = node_types_from_cluster_config(state.state.get_cluster_config())
        if found:
            return found, "the autoscaler's cluster config"
    except Exception:  # noqa: BLE001 - another Ray version, or no autoscaler state
        pass
    path = _local_autoscaling_config(gcs_address)
    if path is None or not path.is_file():
        return None, "no autoscaler config found (neither in the GCS nor on this machine)"
    import yaml

    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        return None, f"cannot read the autoscaling config {path}: {exc}"
    found = node_types_from_autoscaling_config(config or {})
    return (found, f"the autoscaling config {path}") if found else (None, f"{path} gives no node resources")


def pending_line(status_json: str | bytes | None) -> str:
    """What the (v1) autoscaler reports it is doing: launches under way, nodes pending or failed and
    demands it cannot place (``''`` when nothing is pending or there is no report)."""
    if not status_json:
        return ""
    try:
        status = json.loads(status_json)
        report = status.get("autoscaler_report") or {}
        demand = (status.get("load_metrics_report") or {}).get("resource_demand") or []
    except (ValueError, AttributeError):
        return ""
    parts = []
    if demand:
        parts.append("demand " + ", ".join(f"{_fmt(shape)} x{count}" for shape, count in demand))
    launches = report.get("pending_launches") or {}
    if launches:
        parts.append("launching " + ", ".join(f"{n} x{c}" for n, c in launches.items()))
    pending = report.get("pending_nodes") or []
    if pending:
        parts.append(f"{len(pending)} node(s) starting ({', '.join(sorted({str(p[1]) for p in pending if len(p) > 1}))})")
    failed = report.get("failed_nodes") or []
    if failed:
        parts.append(f"{len(failed)} node(s) failed to start")
    infeasible = report.get("infeasible_requests") or report.get("infeasible_resources")
    if infeasible:
        parts.append(f"cannot place {infeasible}")
    return "; ".join(parts)


def autoscaler_status() -> str:
    """:func:`pending_line` of the connected cluster's autoscaler (``''`` when it reports nothing)."""
    try:
        from ray.experimental.internal_kv import _internal_kv_get

        return pending_line(_internal_kv_get("__autoscaling_status"))
    except Exception:  # noqa: BLE001 - no autoscaler, or another Ray version
        return ""
