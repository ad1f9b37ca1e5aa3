"""Several Ray nodes on one machine (``ray.cluster_utils.Cluster``): a head and 2 worker nodes that
declare a custom ``monitor_node`` resource. Monitors ask for it (``monitor.resources``) and are spread
(``monitor.scheduling: spread``): one per worker node, none on the head. A drift triggers a Ray Train
update and every monitor ends on the new version. The dashboard metrics recorded by the monitors
(worker nodes) and by :class:`raydrift.metrics.RunMetrics` (the driver, on the head) reach each node's
Prometheus endpoint."""

from __future__ import annotations

import re
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import ray

from raydrift.config import build_config
from raydrift.coordinator import Coordinator
from raydrift.metrics import RunMetrics

NS = "raydrift"
BASE = [
    "name=multinode",
    "seed=0",
    "verbosity=0",
    "model.harness=synthetic",
    "monitor.on_drift=pause",  # a replayed stream, faster than an update
    "data.num_regimes=3",
    "data.regime_batches=24",
    "stream.batch_size=32",
    # ~7 s of stream: Ray exports metrics every few seconds, a shorter run may end between two exports
    "stream.max_batches_per_second=10",
    "monitor.num_monitors=2",
    "monitor.num_cpus=0.5",
    "monitor.resources={monitor_node: 1}",
    "monitor.scheduling=spread",
    "drift_detection.warmup_batches=3",
    "drift_detection.cooldown_batches=2",
    "drift_detection.interval=4",
    "continual_learning.window_batches=6",
    "train.num_workers=0",  # the update runs in-process: Train worker start-up is 10-20 s here
    "train.epochs=10",
    "train.batch_size=32",
    "train.lr=0.01",
    "logging.backend=none",
    "logging.plots=false",
]


@pytest.fixture(scope="module")
def cluster() -> Iterator[dict[str, Any]]:
    """Head (2 CPUs: driver-side actors and the Train worker) + 2 worker nodes (1 CPU, 2 monitor slots)."""
    from ray.cluster_utils import Cluster

    c = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 2,
            "include_dashboard": False,
            "_system_config": {"metrics_report_interval_ms": 100},  # metrics reach Prometheus quickly
        },
    )
    workers = [c.add_node(num_cpus=1, resources={"monitor_node": 2}) for _ in range(2)]
    c.wait_for_nodes()
    ray.init(address=c.address, namespace=NS, log_to_driver=False)
    try:
        yield {
            "head": c.head_node.node_id,
            "workers": {w.node_id for w in workers},
            "metrics_ports": {
                n["NodeID"]: n["MetricsExportPort"] for n in ray.nodes() if n["Alive"]
            },
        }
    finally:
        ray.shutdown()
        c.shutdown()


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def sample_value(text: str, metric: str, /, **tags: str) -> float | None:
    """The value of the first sample of ``metric`` whose labels include ``tags``."""
    for line in text.splitlines():
        if not line.startswith(metric + "{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line[: line.rindex("}")]))
        if all(labels.get(k) == v for k, v in tags.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


@pytest.fixture(scope="module")
def spread_run(cluster: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One run; meanwhile, where each monitor lives and what the nodes' metrics endpoints show."""
    tmp = tmp_path_factory.mktemp("multinode")
    cfg = build_config(None, [*BASE, f"logging.runs_dir={tmp / 'runs'}"])
    run_dir = tmp / "run"
    run_dir.mkdir()
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["summary"] = Coordinator(cfg, run_dir=run_dir, console=lambda _: None).run().to_dict()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            result["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    nodes: dict[str, str] = {}
    scrapes: dict[str, list[str]] = {}  # worker node id -> every scrape that showed raydrift metrics
    while thread.is_alive():
        for i in range(2):
            name = f"monitor-{i}"
            if name not in nodes:
                try:
                    stats = ray.get(ray.get_actor(name, namespace=NS).stats.remote(), timeout=10)
                    nodes[name] = stats["node_id"]
                except (ValueError, ray.exceptions.RayError):
                    pass  # not created yet (or already gone)
        for node_id in cluster["workers"]:
            text = scrape(cluster["metrics_ports"][node_id])
            if "ray_raydrift_" in text:
                scrapes.setdefault(node_id, []).append(text)
        time.sleep(0.1)
    thread.join()
    if "error" in result:
        raise result["error"]
    return {"summary": result["summary"], "nodes": nodes, "scrapes": scrapes}


def test_monitors_are_spread_over_the_worker_nodes(cluster: dict[str, Any], spread_run: dict[str, Any]) -> None:
    nodes = spread_run["nodes"]
    assert sorted(nodes) == ["monitor-0", "monitor-1"], nodes
    assert set(nodes.values()) == cluster["workers"], "one monitor per worker node, none on the head"


def test_an_update_reaches_every_monitor(spread_run: dict[str, Any]) -> None:
    s = spread_run["summary"]
    assert s["run"]["status"] == "completed"
    assert s["drift_events"] and s["updates"], "no drift/update on a stream with a regime change"
    assert s["model_version"] == len(s["updates"]) >= 1
    assert s["monitoring"]["monitor_versions"] == {"monitor-0": s["model_version"], "monitor-1": s["model_version"]}
    assert all(b > 0 for b in s["monitoring"]["monitor_batches"].values()), "a monitor evaluated nothing"


def test_monitor_metrics_reach_each_worker_nodes_prometheus_endpoint(
    cluster: dict[str, Any], spread_run: dict[str, Any]
) -> None:
    nodes, scrapes = spread_run["nodes"], spread_run["scrapes"]
    final = spread_run["summary"]["model_version"]
    for name, node_id in nodes.items():
        texts = scrapes.get(node_id, [])
        assert texts, f"{name}: its node never exported raydrift metrics"

        def seen(metric: str, texts: list[str] = texts, name: str = name) -> list[float]:
            values = (sample_value(t, metric, monitor=name) for t in texts)
            return [v for v in values if v is not None]

        batches = seen("ray_raydrift_batches_evaluated_total")
        assert batches and max(batches) >= 1, f"{name}: no batches counter on its node"
        # counters are exported independently, so one scrape may hold them at different moments:
        # check each is there and plausible rather than equal to each other
        samples = seen("ray_raydrift_samples_evaluated_total")
        assert samples and max(samples) >= 32 and max(samples) % 32 == 0, samples
        evals = seen("ray_raydrift_eval_seconds_count")
        assert evals and max(evals) >= 1, evals
        versions = seen("ray_raydrift_model_version")
        # the gauge is exported (the post-update value may land after the last scrape; the final
        # version of every monitor is checked through the actors themselves in the test above)
        assert versions and min(versions) == 0 and max(versions) <= final, versions


def test_run_metrics_from_the_driver_reach_the_heads_endpoint(cluster: dict[str, Any]) -> None:
    m = RunMetrics("mn-metrics", "accuracy")
    assert m.enabled
    m.interval(0.75)
    m.throughput(1234.0)
    m.drift("adwin")
    m.update({"version": 3, "strategy": "replay", "total_seconds": 2.5, "training_seconds": 2.0})
    port = cluster["metrics_ports"][cluster["head"]]
    want = {
        ("ray_raydrift_monitored_metric", (("metric", "accuracy"),)): 0.75,
        ("ray_raydrift_samples_per_second", ()): 1234.0,
        ("ray_raydrift_drift_events_total", (("detector", "adwin"),)): 1.0,
        ("ray_raydrift_updates_total", (("strategy", "replay"),)): 1.0,
        ("ray_raydrift_update_seconds_count", (("phase", "total"),)): 1.0,
        ("ray_raydrift_update_seconds_count", (("phase", "training"),)): 1.0,
        ("ray_raydrift_run_model_version", ()): 3.0,
    }
    got: dict[Any, float | None] = {}
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = scrape(port)
        got = {k: sample_value(text, k[0], run="mn-metrics", **dict(k[1])) for k in want}
        if got == want:
            break
        time.sleep(0.5)
    lines = [line for line in text.splitlines() if line.startswith("ray_raydrift") and "_bucket" not in line]
    assert got == want, "\n".join(lines)

