"""raydrift on a fake autoscaling cluster (tests/e2e/fake_cluster.py): a head with 0 CPUs, a CPU
node type (1 CPU) and a GPU node type (1 CPU, 1 logical GPU), no worker node at the start and idle
nodes removed after a few seconds. Every actor of a run needs a node the autoscaler adds for it.

- Scale-up from zero: the monitors get a CPU node, the standing Ray Train worker of the update a
  second one; the run completes with every batch id once; afterwards the idle nodes are removed.
- Monitors asking for ``monitor.num_gpus: 0.5`` bring up the GPU node and both run on it.
- SIGKILL of the raylet of monitor-0's node mid-run (a node loss): every batch id once, the same
  drift events as the fault-free run, one restart of each actor that was on the node.
- ``ray job submit`` then ``ray job stop``: the run ends ``interrupted`` and ``--resume`` finishes it.

Run alone with ``pytest -m autoscaling tests/e2e/test_autoscaling.py`` (a few minutes); the default
selection leaves it out (pyproject addopts, docs/cluster.md says why).
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import ray
from fake_cluster import RAY, ROOT, FakeCluster, NodeType, fake_autoscaling_cluster, own_processes
from pipeline_runs import run_pipeline
from test_job_submit import job_status

from raydrift.callbacks import Callback, RunContext

pytestmark = [pytest.mark.e2e, pytest.mark.autoscaling]

NS = "raydrift"
BATCHES = 48
IDLE_TIMEOUT_S = 6.0
SCALE_DOWN_BOUND_S = 90.0  # idle timeout + the autoscaler's rounds and a raylet's exit, on a loaded machine
TYPES = (NodeType("cpu", cpus=1, max_workers=3), NodeType("gpu", cpus=1, gpus=1, max_workers=1))
BASE = [
    "name=autoscale",
    "seed=0",
    "verbosity=0",
    "ray.autoscaling=true",
    "ray.actor_start_timeout_s=240",
    "model.harness=synthetic",
    "monitor.on_drift=pause",  # deterministic: a node loss must not change the drift events
    "data.num_regimes=3",
    "data.regime_batches=16",
    "stream.batch_size=32",
    "monitor.num_monitors=2",
    "monitor.num_cpus=0.5",  # both on one 1-CPU node: the update's worker needs another
    "drift_detection.warmup_batches=3",
    "drift_detection.cooldown_batches=2",
    "drift_detection.interval=4",
    "continual_learning.window_batches=6",
    "train.num_workers=1",  # a standing Ray Train worker, on a node of its own
    "train.cpus_per_worker=1",
    "train.epochs=10",
    "train.batch_size=32",
    "train.lr=0.01",
    "logging.backend=none",
    "logging.plots=false",
    "reliability.checkpoint_every_batches=8",
    "reliability.checkpoint_min_seconds=0",
]


@dataclass
class Watch:
    """What a background thread saw of the cluster during a run: alive worker nodes over time and
    the node of every named actor and Ray Train worker."""

    head: str
    started: float = field(default_factory=time.monotonic)
    samples: list[tuple[float, frozenset[str]]] = field(default_factory=list)
    gpu_nodes: set[str] = field(default_factory=set)
    placements: dict[str, set[str]] = field(default_factory=dict)
    first_seen: dict[tuple[str, str], float] = field(default_factory=dict)
    """(actor, node) -> seconds after the start when the actor was first seen alive there."""

    def sample(self) -> None:
        now = time.monotonic() - self.started
        alive = [n for n in ray.nodes() if n["Alive"] and n["NodeID"] != self.head]
        self.gpu_nodes |= {n["NodeID"] for n in alive if n["Resources"].get("GPU")}
        self.samples.append((now, frozenset(n["NodeID"] for n in alive)))
        for a in actors():
            self.placements.setdefault(a.name, set()).add(a.node_id)
            self.first_seen.setdefault((a.name, a.node_id), now)

    def first_up_s(self, actor: str) -> float:
        return round(min(t for (name, _), t in self.first_seen.items() if name == actor), 1)

    def first_worker_node_s(self) -> float | None:
        return next((t for t, nodes in self.samples if nodes), None)

    def most_nodes(self) -> int:
        return max((len(nodes) for _, nodes in self.samples), default=0)


@dataclass(frozen=True)
class Placed:
    """An alive actor and its node."""

    name: str
    node_id: str


def actors() -> list[Placed]:
    """Alive named actors and Ray Train workers (named ``RayTrainWorker``), from the GCS."""
    from ray._private import state

    found = []
    for a in state.actors().values():
        train = str(a["ActorClassName"]).endswith("RayTrainWorker")
        if a["State"] == "ALIVE" and (a["Name"] or train):
            found.append(Placed("RayTrainWorker" if train else a["Name"], a["Address"]["NodeID"]))
    return found


@dataclass
class Observed:
    summary: dict[str, Any]
    watch: Watch
    seconds: float
    scale_down_s: float | None = None


def watched_run(
    cluster: FakeCluster, tmp_path: Path, overrides: list[str], callbacks: tuple[Callback, ...] = ()
) -> Observed:
    """A run on the cluster while a thread samples it; then the wait for the idle nodes to go."""
    watch = Watch(head=head_id())
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            watch.sample()
            stop.wait(0.5)

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    try:
        summary = run_pipeline(tmp_path, [*BASE, *overrides], callbacks)
    finally:
        seconds = time.monotonic() - watch.started
        stop.set()
        thread.join()
    return Observed(summary, watch, seconds, wait_for_no_worker_nodes(SCALE_DOWN_BOUND_S))


def head_id() -> str:
    (head,) = [n["NodeID"] for n in ray.nodes() if n["Alive"] and "node:__internal_head__" in n["Resources"]]
    return str(head)


def wait_for_no_worker_nodes(bound: float) -> float | None:
    """Seconds until only the head is alive (None: not within ``bound``)."""
    start = time.monotonic()
    while time.monotonic() - start < bound:
        if [n["NodeID"] for n in ray.nodes() if n["Alive"]] == [head_id()]:
            return time.monotonic() - start
        time.sleep(0.5)
    return None


@pytest.fixture(scope="module")
def cluster() -> Iterator[FakeCluster]:
    with fake_autoscaling_cluster(TYPES, idle_timeout_s=IDLE_TIMEOUT_S) as c:
        previous = os.environ.get("RAY_AUTH_MODE")
        os.environ["RAY_AUTH_MODE"] = "token"  # the driver sends the default token, as the nodes do
        from ray._raylet import Config

        Config.initialize("")  # this process may have read the mode before (as ray.init does)
        ray.init(address=c.gcs_address, namespace=NS, log_to_driver=False)
        try:
            yield c
        finally:
            ray.shutdown()
            if previous is None:
                os.environ.pop("RAY_AUTH_MODE", None)
            else:
                os.environ["RAY_AUTH_MODE"] = previous


def batch_ids(run_dir: Path) -> list[int]:
    path = run_dir / "batches.csv"
    if not path.is_file():
        return []
    with open(path) as f:
        return [int(r["batch_id"]) for r in csv.DictReader(f)]


def assert_complete(summary: dict[str, Any]) -> None:
    assert summary["run"]["status"] == "completed", summary["run"]["error"]
    assert batch_ids(Path(summary["run"]["run_dir"])) == list(range(BATCHES)), "every batch id once, in order"
    assert summary["stream"]["batches"] == BATCHES
    assert summary["drift_events"] and summary["updates"]
    assert set(summary["monitoring"]["monitor_versions"].values()) == {summary["model_version"]}


@pytest.fixture(scope="module")
def clean_run(cluster: FakeCluster, tmp_path_factory: pytest.TempPathFactory) -> Observed:
    assert wait_for_no_worker_nodes(SCALE_DOWN_BOUND_S) is not None, "the cluster does not start from zero"
    return watched_run(cluster, tmp_path_factory.mktemp("clean"), [])


def measured(what: str, value: object) -> None:
    """A figure for docs/cluster.md (shown with ``pytest -s``)."""
    print(f"measured: {what} = {value}", file=sys.stderr)


def nodes_of(watch: Watch, *names: str) -> set[str]:
    return set().union(*(watch.placements.get(n, set()) for n in names))


def test_monitors_and_the_update_scale_the_cluster_up_from_zero(clean_run: Observed) -> None:
    s, w = clean_run.summary, clean_run.watch
    assert_complete(s)
    monitors = nodes_of(w, "monitor-0", "monitor-1")
    train = nodes_of(w, "RayTrainWorker")
    worker_nodes = set().union(*(nodes for _, nodes in w.samples))
    assert monitors and monitors <= worker_nodes, "monitors ran on nodes added for them, not on the head"
    assert train and train <= worker_nodes, "the update's Ray Train worker ran on an added node"
    assert not monitors & train, "a 1-CPU node holds both monitors (0.5 CPU each): the worker needs another"
    assert w.most_nodes() >= 2
    measured("run seconds (fault-free)", round(clean_run.seconds, 1))
    measured("first worker node after run start (s)", w.first_worker_node_s())
    measured("monitors first seen (s)", {k: w.first_up_s(k) for k in ("monitor-0", "monitor-1")})
    measured("train worker first seen (s)", w.first_up_s("RayTrainWorker"))
    measured("worker nodes at most", w.most_nodes())
    measured(
        "updates (version, queue s, training s, total s)",
        [
            (u["version"], u["train_queue_seconds"], u["training_seconds"], u["total_seconds"])
            for u in s["updates"]
        ],
    )


def test_idle_nodes_are_removed_after_the_run(clean_run: Observed) -> None:
    assert clean_run.scale_down_s is not None, (
        f"worker nodes still up {SCALE_DOWN_BOUND_S:.0f} s after the run"
    )
    measured(
        f"scale-down after the run (s, idle timeout {IDLE_TIMEOUT_S:.0f} s)", round(clean_run.scale_down_s, 1)
    )


def test_monitors_asking_for_gpu_fractions_run_on_the_gpu_node(cluster: FakeCluster, tmp_path: Path) -> None:
    obs = watched_run(
        cluster,
        tmp_path,
        ["monitor.num_gpus=0.5", "monitor.num_cpus=0", "train.num_workers=0", "data.num_regimes=2"],
    )
    assert obs.summary["run"]["status"] == "completed", obs.summary["run"]["error"]
    assert batch_ids(Path(obs.summary["run"]["run_dir"])) == list(range(32))
    monitors = nodes_of(obs.watch, "monitor-0", "monitor-1")
    assert len(monitors) == 1 and monitors <= obs.watch.gpu_nodes, "both monitors share the one GPU node"
    measured("gpu run: first worker node (s)", obs.watch.first_worker_node_s())


def raylet_pid(node: dict[str, Any]) -> int:
    token = f"--raylet_socket_name={node['RayletSocketName']}"
    (pid,) = [
        p
        for p, cmd in own_processes(token)
        if cmd.split(" ", 1)[0].endswith("/raylet") and token in cmd.split()
    ]
    return pid


class KillNodeOf(Callback):
    """SIGKILLs the raylet of the node ``actor`` runs on when batch ``at`` is accepted (a node loss)."""

    def __init__(self, actor: str, at: int) -> None:
        self.actor, self.at = actor, at
        self.node: str | None = None
        self.on_node: list[str] = []
        self.at_s = 0.0

    def on_batch(self, ctx: RunContext, row: dict[str, Any]) -> None:
        if self.node is not None or int(row["batch_id"]) < self.at:
            return
        placed = {a.name: a.node_id for a in actors()}
        node_id = placed[self.actor]
        (node,) = [n for n in ray.nodes() if n["NodeID"] == node_id and n["Alive"]]
        assert node_id != head_id()
        self.on_node = sorted(name for name, n in placed.items() if n == node_id)
        os.kill(raylet_pid(node), signal.SIGKILL)
        self.node, self.at_s = node_id, time.monotonic()


def test_a_lost_node_costs_no_batch_and_one_restart_per_actor_on_it(
    cluster: FakeCluster, clean_run: Observed, tmp_path: Path
) -> None:
    kill = KillNodeOf("monitor-0", at=10)
    obs = watched_run(cluster, tmp_path, [], callbacks=(kill,))
    assert kill.node is not None and "monitor-0" in kill.on_node
    s = obs.summary
    assert_complete(s)
    clean = clean_run.summary
    assert [e["batch_id"] for e in s["drift_events"]] == [e["batch_id"] for e in clean["drift_events"]]
    # one node loss = one restart of each actor that was on the node (not one more because Ray
    # restarted it on the dying node before the node was declared dead)
    kinds: dict[str, int] = {}
    for name in kill.on_node:
        kind = name.split("-", 1)[0]
        kinds[kind] = kinds.get(kind, 0) + 1
    restarts = {k: v for k, v in (s["monitoring"]["actor_restarts"] or {}).items() if v}
    assert restarts == kinds, f"on the lost node: {kill.on_node}; recoveries: {s['recoveries']}"
    replaced = [
        t for (name, node), t in obs.watch.first_seen.items() if name == "monitor-0" and node != kill.node
    ]
    assert replaced, "monitor-0 was replaced on another node"
    measured(
        "node loss: kill -> monitor-0 alive on a new node (s)",
        round(min(replaced) - (kill.at_s - obs.watch.started), 1),
    )
    measured("node loss: worker nodes at most", obs.watch.most_nodes())
    measured("node loss: actors on the node", kill.on_node)
    measured("node loss: restarts", restarts)
    measured("node loss: run seconds vs fault-free", (round(obs.seconds, 1), round(clean_run.seconds, 1)))


JOB_OVERRIDES = [
    "name=jobstop",
    "verbosity=1",
    "ray.autoscaling=true",
    "model.harness=synthetic",
    "data={num_regimes: 2, regime_batches: 16}",
    "stream.batch_size=32",
    "stream.max_batches_per_second=4",  # paced: the stop comes mid-stream
    "monitor.num_monitors=1",
    "monitor.num_cpus=0.5",
    "drift_detection.warmup_batches=3",
    "train.num_workers=0",
    "train.epochs=5",
    "reliability.checkpoint_every_batches=4",
    "reliability.checkpoint_min_seconds=0",
    "logging.backend=none",
    "logging.plots=false",
]


def ray_job(cluster: FakeCluster, *args: str, timeout: float = 60) -> str:
    out = subprocess.run(
        [RAY, "job", args[0], "--address", cluster.dashboard_url, *args[1:]],
        env=cluster.env, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert out.returncode == 0, f"ray job {args[0]} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout + out.stderr


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.5)


def test_ray_job_stop_ends_the_run_interrupted_and_it_resumes(cluster: FakeCluster, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    sets = [a for o in [*JOB_OVERRIDES, f"logging.runs_dir={runs}"] for a in ("--set", o)]
    out = ray_job(
        cluster, "submit", "--no-wait", "--", "raydrift", "run", str(ROOT / "configs" / "mnist.yaml"), *sets
    )
    match = re.search(r"Job '(raysubmit_\w+)' submitted successfully", out)
    assert match, out[-3000:]
    job = match.group(1)

    def run_dir() -> Path | None:
        found = list(runs.glob("jobstop-*"))
        return found[0] if found else None

    wait_for(
        lambda: (d := run_dir()) is not None and len(batch_ids(d)) >= 6, 240, "the job never got to batch 6"
    )
    ray_job(cluster, "stop", job)
    wait_for(
        lambda: job_status(ray_job(cluster, "status", job), job) == "STOPPED", 120, "the job did not stop"
    )
    directory = run_dir()
    assert directory is not None
    wait_for(lambda: (directory / "summary.json").is_file(), 30, "no summary after the stop")
    summary = json.loads((directory / "summary.json").read_text())
    logs = ray_job(cluster, "logs", job)
    assert summary["run"]["status"] == "interrupted", logs[-3000:]
    assert summary["run"]["signal"] == "SIGTERM"
    ids = batch_ids(directory)
    assert 0 < summary["stream"]["batches"] == len(ids) < 32 and ids == list(range(len(ids)))

    resumed = subprocess.run(
        [sys.executable, "-m", "raydrift.cli", "run", "--resume", str(directory), "--address", cluster.gcs_address],
        env=cluster.env, cwd=tmp_path, capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    summary = json.loads((directory / "summary.json").read_text())
    assert summary["run"]["status"] == "completed"
    assert batch_ids(directory) == list(range(32)), "every batch id exactly once"
