"""The pipeline benchmark of issue 8: every figure as a ratio against a baseline measured in the same run.

One process, one local Ray cluster (``ray.init(address="local")``). Sections (``--only`` picks some):

``throughput``
    Monitoring throughput of the real :class:`raydrift.coordinator.Coordinator` (stream reader,
    monitors, ordered detector) with 1..N monitors, steady state (the first 20% of the stream and the
    actors' start-up are excluded; start-up is reported separately), against a plain single-process
    PyTorch evaluation loop over the same model and batches doing the same per-batch work as
    :meth:`raydrift.monitor.Monitor.evaluate` (forward, the harness's metrics, per-sample values as
    numpy, batch means), one torch thread. Models: the MNIST harness's CNN and a trivial 4 -> 2 linear
    layer (``benchmarks/scaling.py``). Targets: >= 0.9x at 1 monitor, >= 0.8 x N at N monitors.
    To say where the time goes it also drives the monitors directly (no stream reader, no detector):
    ``MonitorActor.evaluate`` one batch per task and per object (torch tensors), and
    ``MonitorActor.evaluate_many`` at 1 and ``--k`` batches per task from numpy chunks of 32 batches
    (what the coordinator does, ``monitor.batches_per_task``); plus the object sizes and
    deserialisation cost of a batch.
``broadcast``
    What the coordinator does after an update: ``ray.put`` of the weights once, then each monitor's next
    task (``MonitorActor.evaluate_many``, here with no batches) carries the version and its ref as an
    argument (Ray resolves it: the node pulls the weights while the task is queued) and the monitor
    loads them before evaluating. The figure is the put plus how much longer the tasks to all monitors
    take when they carry a new version than the same tasks without one (measured back to back), against
    one ``ray.put`` + ``ray.get`` of the same weights (numpy, :func:`raydrift.weights.to_numpy`) in the
    driver. Target <= 1.3x, flat in the number of monitors (1..N, and 4N in the full run). Also
    reported: put -> last monitor loaded, which adds the tasks' own round trip (tasks the monitors get
    anyway), the swap inside the task, and the eager alternative (``MonitorActor.set_weights`` on every
    monitor, waited for). Weights: the MNIST CNN (0.9 MB) and a wide MLP (67 MB, :class:`WideHarness`).
    The monitor-side swap (``Monitor.set_weights`` with read-only arrays as they come from the object store: assigned as the
    model's tensors without a copy) is timed in-process, beside ``build_model`` (random
    initialisation) and ``load_into`` (a copy), the costs a swap no longer pays.
``update``
    Drift -> new weights live on every monitor, from ``summary.json`` (``waiting`` / ``training`` /
    ``broadcasting`` seconds) of a real Coordinator run on MNIST with ``train.num_workers`` 0 (Ray Train
    local mode, in the driver), 1 and 2, against the same gradient steps run in-process
    (:func:`raydrift.learning.loop.train_update` on the very weights, data and strategy state the
    update got, recorded by wrapping :class:`raydrift.update.Updater`). A bare ``TorchTrainer(...).fit()``
    of a no-op loop with 0, 1 and 2 workers measures Ray Train's own start-up. Targets (2 cores): fixed
    overhead <= 5 s with 0 workers; <= bare ``fit()`` + 1 s with N workers.
``coordinator``
    Driver CPU per batch at 64 monitors with the trivial model (``benchmarks/scaling.py``'s method,
    re-done here with this file's instrumentation of the Coordinator), against the same at 1 monitor. Each monitor process costs ~0.3 GB of private memory here (importing
    torch), so the run is cut to the number of monitors that fits in half of the available memory,
    and the JSON says so.
``memory``
    Peak resident memory (``VmHWM``) of each actor kind (stream reader, monitors, detector) and of the
    driver (the coordinator: its growth during the run, its peak being reset at the start) for a
    Coordinator run of L and of 10L batches on the synthetic harness with ``detector: periodic``
    (updates every regime), after a discarded warm-up run of L. Also the
    update's cost against the number of regimes seen, with the accuracy-matrix evaluation (reporting)
    timed apart.
``on_drift``
    Samples evaluated during updates with ``monitor.on_drift: continue`` and ``pause``
    (``summary.json`` ``monitoring.samples_during_updates``), when the config has that option.

Usage::

    nice -n 10 .venv/bin/python benchmarks/pipeline.py --overwrite   # full (about 11 min on 2 cores)
    nice -n 10 .venv/bin/python benchmarks/pipeline.py --quick --out runs/pipeline-quick.json  # 2-3 min
    .venv/bin/python benchmarks/pipeline.py --only broadcast update --max-monitors 2 --out runs/bu.json

Writes ``benchmarks/results/pipeline.json`` (``--out``) and prints one table of figures and ratios. An
existing ``--out`` file is never replaced without ``--overwrite`` (``--merge`` updates it in place).
Linux only (peak memory is read from ``/proc``).
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import statistics
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import ray
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _p in (str(ROOT), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from scaling import TrivialHarness, broadcast_by_task  # noqa: E402

from raydrift.actors import evaluate_many_args  # noqa: E402
from raydrift.harness import Batch, Harness, build_harness  # noqa: E402
from raydrift.stream import pack_batch  # noqa: E402
from raydrift.weights import load_into, to_numpy  # noqa: E402

MiB = 2**20
SECTIONS = ("throughput", "broadcast", "update", "coordinator", "memory", "on_drift")
WARMUP_FRACTION = 0.2
"""Steady state: throughput is measured from the batch at this fraction of the stream to its end."""

# a drift every ``period`` batches, whatever the metric does (a periodic alarm is not a degradation)
PERIODIC: dict[str, Any] = {"detector": "periodic", "granularity": "batch", "direction": "any"}


# Runs that need every periodic update to go live turn the promotion gate off: a gate may reject an
# update of a model that the periodic "drift" did not hurt.
NO_GATE: dict[str, Any] = {"promotion": {"enabled": False}}

# Update latency is measured with monitoring paused during the update, so nothing else competes with
# it; the on_drift section measures what keeping monitoring on (the default) costs and gives.
PAUSE: dict[str, Any] = {"on_drift": "pause"}

TRIVIAL_SPEC = "scaling:TrivialHarness"
WIDE_SPEC = "pipeline:WideHarness"


# ---------------------------------------------------------------------------------------------------
# harnesses used only here


class WideHarness(TrivialHarness):
    """The trivial stream with a wide MLP (4 -> 4096 -> 4096 -> 2, 16.8M parameters, 67 MB float32):
    weights large enough that copying them, not calling actors, is what a broadcast costs."""

    name: ClassVar[str] = "wide"

    def build_model(self) -> nn.Module:
        torch.manual_seed(self.seed)
        return nn.Sequential(
            nn.Linear(4, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, 2)
        )


def harness_spec(model: str, batches: int, batch_size: int = 64) -> dict[str, Any]:
    """The ``build_harness`` arguments of ``model`` ('mnist', 'trivial', 'wide') for ``batches`` batches."""
    if model == "mnist":
        return {
            "spec": "mnist",
            "options": {"regimes": ["identity"], "regime_batches": batches},
            "seed": 0,
            "batch_size": batch_size,
        }
    spec = {"trivial": TRIVIAL_SPEC, "wide": WIDE_SPEC}[model]
    return {"spec": spec, "options": {"batches": batches}, "seed": 0, "batch_size": batch_size}


# ---------------------------------------------------------------------------------------------------
# small helpers


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def r(x: float | None, nd: int = 3) -> float | None:
    return None if x is None else round(float(x), nd)


def loadavg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def log(msg: str) -> None:
    print(msg, flush=True)


def steady_rate(
    points: Sequence[tuple[float, float]], total: float, skip: float = WARMUP_FRACTION
) -> float | None:
    """Units per second between the first point at or past ``skip * total`` units and the last point.

    ``points`` are ``(time, cumulative units done)`` in time order. None with fewer than two usable
    points.
    """
    if len(points) < 2:
        return None
    start = next((p for p in points if p[1] >= skip * total), points[0])
    end = points[-1]
    if end[0] <= start[0] or end[1] <= start[1]:
        start = points[0]
    if end[0] <= start[0] or end[1] <= start[1]:
        return None
    return (end[1] - start[1]) / (end[0] - start[0])


# ---------------------------------------------------------------------------------------------------
# /proc: process tree and memory (Linux)


def _ppid_map() -> dict[int, int]:
    out: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # the command name may hold spaces and parentheses: the fields start after the last ')'
        out[int(d)] = int(stat.rsplit(")", 1)[1].split()[1])
    return out


def descendants(pid: int | None = None) -> list[int]:
    """Every process below ``pid`` (default: this one): the local Ray cluster this driver started."""
    root = os.getpid() if pid is None else pid
    children: dict[int, list[int]] = {}
    for p, pp in _ppid_map().items():
        children.setdefault(pp, []).append(p)
    out, todo = [], [root]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def proc_title(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def proc_memory(pid: int | str = "self") -> dict[str, float]:
    """``rss_mb`` (now), ``peak_mb`` (VmHWM, the peak since start or the last :func:`reset_peak`) and
    ``private_mb`` (USS: pages no other process maps) of a process."""
    out: dict[str, float] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    out["rss_mb" if line.startswith("VmRSS") else "peak_mb"] = int(line.split()[1]) / 1024
        with open(f"/proc/{pid}/smaps_rollup") as f:
            priv = sum(
                int(line.split()[1]) for line in f if line.startswith(("Private_Clean:", "Private_Dirty:"))
            )
        out["private_mb"] = priv / 1024
    except OSError:
        pass
    return out


def reset_peak(pid: int | str = "self") -> bool:
    """Reset a process's VmHWM to its current RSS (Linux >= 4.0; own processes only)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def mem_available_mb() -> float:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    return float("nan")


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pids: Sequence[int]) -> dict[int, float]:
    """User + system CPU seconds consumed so far by each of ``pids`` (a process that is gone: 0)."""
    out: dict[int, float] = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            out[pid] = 0.0
            continue
        out[pid] = (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime (fields 14, 15 of stat)
    return out


def process_kind(pid: int) -> str:
    """What a process of the cluster is: driver, monitor, detector, stream_reader, raylet, gcs, idle
    worker, or other (dashboard agent, runtime-env agent, log monitor, Train actors)."""
    if pid == os.getpid():
        return "driver"
    title = proc_title(pid)
    for cls, kind in ACTOR_KINDS.items():
        if title.startswith(f"ray::{cls}"):
            return kind
    if "raylet" in title.split(" ")[0]:
        return "raylet"
    if "gcs_server" in title.split(" ")[0]:
        return "gcs"
    return "idle worker" if title.startswith("ray::IDLE") else "other"


def cluster_pids() -> dict[int, str]:
    """This driver and every process of the local cluster it started, with their kinds."""
    return {pid: process_kind(pid) for pid in [os.getpid(), *descendants()]}


def cpu_ms_per_batch(
    kinds: dict[int, str], start: dict[int, float], end: dict[int, float], batches: int
) -> dict[str, float | None]:
    """CPU milliseconds per batch between two :func:`cpu_seconds` snapshots, by process kind and in
    total (``all``)."""
    out: dict[str, float] = {}
    for pid, kind in kinds.items():
        out[kind] = out.get(kind, 0.0) + max(0.0, end.get(pid, 0.0) - start.get(pid, 0.0))
    out["all"] = sum(out.values())
    return {k: r(1000 * v / batches, 3) for k, v in sorted(out.items())}


ACTOR_KINDS = {
    "StreamReader": "stream_reader",
    "MonitorActor": "monitor",
    "DetectorActor": "detector",
}


def actor_processes() -> dict[str, list[int]]:
    """PIDs of this cluster's raydrift actors by kind (Ray titles worker processes ``ray::<Class>``)."""
    out: dict[str, list[int]] = {}
    for pid in descendants():
        title = proc_title(pid)
        for cls, kind in ACTOR_KINDS.items():
            if title.startswith(f"ray::{cls}"):
                out.setdefault(kind, []).append(pid)
    return out


# private memory (MB) of the monitor processes seen during the run, by harness spec
_MONITOR_PRIVATE_MB: dict[str, list[float]] = {}


def note_monitor_memory(harness: str) -> None:
    for pid in actor_processes().get("monitor", []):
        mb = proc_memory(pid).get("private_mb")
        if mb:
            _MONITOR_PRIVATE_MB.setdefault(harness, []).append(mb)


# ---------------------------------------------------------------------------------------------------
# baseline: the plain single-process evaluation loop


def eval_one(model: nn.Module, harness: Harness, batch: Batch, metric: str = "accuracy") -> None:
    """The per-batch work of ``Monitor.evaluate``, without Ray: forward, metrics, per-sample values as
    numpy, batch means."""
    out = model(batch.x)
    metrics = harness.metrics(out, batch.y)
    metrics[metric].detach().float().cpu().numpy().astype(np.float32)
    {k: float(v.float().mean()) for k, v in metrics.items()}


def plain_eval(
    model: nn.Module, harness: Harness, batches: Sequence[Batch], threads: int = 1, reps: int = 3
) -> dict[str, Any]:
    """Samples/s of a plain PyTorch evaluation loop over ``batches`` (after the first 20% as warm-up),
    the median of ``reps`` passes, with ``threads`` torch threads."""
    prev = torch.get_num_threads()
    torch.set_num_threads(threads)
    model.eval()
    w = max(1, int(WARMUP_FRACTION * len(batches)))
    rates, per_batch, cpu_per_batch = [], [], []
    try:
        with torch.inference_mode():
            for b in batches[:w]:
                eval_one(model, harness, b)
            for _ in range(reps):
                t0, c0 = time.perf_counter(), time.process_time()
                for b in batches[w:]:
                    eval_one(model, harness, b)
                dt = time.perf_counter() - t0
                cpu_per_batch.append(1000 * (time.process_time() - c0) / (len(batches) - w))
                rates.append(sum(len(b.y) for b in batches[w:]) / dt)
                per_batch.append(1000 * dt / (len(batches) - w))
    finally:
        torch.set_num_threads(prev)
    # every figure from the same (median) pass, so that they agree with each other on a busy machine
    k = rates.index(statistics.median_low(rates))
    return {
        "threads": threads,
        "batches": len(batches) - w,
        "samples_per_second": r(rates[k], 1),
        "ms_per_batch": r(per_batch[k], 4),
        "cpu_ms_per_batch": r(cpu_per_batch[k], 4),
        "reps": [r(x, 1) for x in rates],
    }


# ---------------------------------------------------------------------------------------------------
# the real Coordinator, instrumented from the outside


@dataclass
class Probe:
    """What one instrumented Coordinator run recorded."""

    t_run: float = 0.0
    t_loop_enter: float = 0.0  # resources checked: the actors are about to start
    t_actors_up: float = 0.0  # the coordinator logged that its actors answer
    t_shutdown: float = 0.0
    # (wall time, driver CPU time, last batch id, samples) per interval record, in order
    # (wall time, driver CPU, last batch id, samples, CPU of every process of the cluster) per
    # interval record, in order
    intervals: list[tuple[float, float, int, int, dict[int, float]]] = field(default_factory=list)
    pids: dict[int, str] = field(default_factory=dict)  # the cluster's processes at the first record
    test_row_seconds: list[float] = field(default_factory=list)  # accuracy-matrix evaluation
    updates: list[dict[str, Any]] = field(default_factory=list)  # what each Updater.run got
    actor_memory: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    driver_memory: dict[str, float] = field(default_factory=dict)
    driver_rss_start: float = 0.0
    on_shutdown: Callable[[], None] | None = None  # called while the run's actors are still alive
    _row_frame: Any = None


def _recording_writer(base: type, probe: Probe) -> type:
    """``base`` (``MetricsWriter``) noting each interval record's time, CPU and last batch in ``probe``."""

    class RecordingWriter(base):  # type: ignore[misc, valid-type]
        def write(self, row: Any) -> None:
            if "last_batch" in row and "n_samples" in row:
                if not probe.pids:
                    probe.pids = cluster_pids()
                probe.intervals.append(
                    (
                        time.perf_counter(),
                        time.process_time(),
                        int(row["last_batch"]),
                        int(row["n_samples"]),
                        cpu_seconds(list(probe.pids)),
                    )
                )
            super().write(row)

    return RecordingWriter


def _recording_updater(base: type, probe: Probe) -> type:
    """``base`` (``Updater``, ``StandingTrainer``) noting the arguments and result of each ``run``."""

    class Recording(base):  # type: ignore[misc, valid-type]
        def run(self, *args: Any, **kwargs: Any) -> Any:
            names = ("weights_ref", "data_ref", "version", "strategy", "strategy_state_ref")
            call = dict(zip(names, args, strict=False)) | kwargs
            out = super().run(*args, **kwargs)
            probe.updates.append(
                {**call, "metrics": dict(out.metrics), "training_seconds": out.training_seconds}
            )
            return out

    return Recording


def _timed_evaluate(evaluate: Callable[..., Any], probe: Probe) -> Callable[..., Any]:
    """``evaluate`` timing the calls made from ``HeldOut.row`` (the accuracy matrix) into ``probe``."""

    def timed_evaluate(*args: Any, **kwargs: Any) -> Any:
        caller = sys._getframe(1)
        if caller.f_code.co_name != "row":  # HeldOut.row: the accuracy matrix
            return evaluate(*args, **kwargs)
        t0 = time.perf_counter()
        try:
            return evaluate(*args, **kwargs)
        finally:
            # one test_row call evaluates every regime's test set: sum its calls (same frame)
            dt = time.perf_counter() - t0
            if probe._row_frame is caller:
                probe.test_row_seconds[-1] += dt
            else:
                probe._row_frame = caller
                probe.test_row_seconds.append(dt)

    return timed_evaluate


def _instrumented_coordinator(base: type, probe: Probe) -> type:
    """``base`` (``Coordinator``) noting when its actors are up and their memory before they are killed."""

    class InstrumentedCoordinator(base):  # type: ignore[misc, valid-type]
        def log(self, msg: str, level: int = 1) -> None:
            if "monitor(s), detector" in msg and not probe.t_actors_up:
                probe.t_actors_up = time.perf_counter()
            super().log(msg, level)

        def _start_ray(self) -> Any:
            info = super()._start_ray()
            probe.t_loop_enter = time.perf_counter()
            return info

        def _shutdown(self) -> None:
            probe.t_shutdown = time.perf_counter()
            for kind, pids in actor_processes().items():
                probe.actor_memory[kind] = [proc_memory(p) for p in pids]
            probe.driver_memory = proc_memory()
            note_monitor_memory(self.cfg.model.harness)
            if probe.on_shutdown is not None:
                probe.on_shutdown()
            super()._shutdown()

    return InstrumentedCoordinator


@contextmanager
def instrumented(probe: Probe) -> Iterator[type]:
    """A Coordinator subclass that fills ``probe``, with the coordinator module's ``MetricsWriter``,
    ``Updater`` and ``evaluate`` wrapped for the duration (restored afterwards).

    Only seams that do not depend on how the loop is written are used: interval records written to
    metrics.csv (the detector has accepted every batch up to ``last_batch``), the test-set evaluation
    called from ``HeldOut.row`` (the accuracy matrix, which is reporting), the
    arguments of each ``Updater.run`` (refs only: nothing is fetched inside the timed span), the
    "actors are up" log line, and the actors' memory just before ``_shutdown`` kills them.
    """
    import raydrift.coordinator as cm
    import raydrift.pipeline.heldout as heldout_module
    import raydrift.trainer as trainer_module

    seams = [
        (cm, "MetricsWriter", _recording_writer(cm.MetricsWriter, probe)),
        (trainer_module, "Updater", _recording_updater(trainer_module.Updater, probe)),
        (trainer_module, "StandingTrainer", _recording_updater(trainer_module.StandingTrainer, probe)),
        (heldout_module, "evaluate", _timed_evaluate(heldout_module.evaluate, probe)),
    ]
    saved = [(module, name, getattr(module, name)) for module, name, _ in seams]
    for module, name, value in seams:
        setattr(module, name, value)
    try:
        yield _instrumented_coordinator(cm.Coordinator, probe)
    finally:
        for module, name, value in saved:
            setattr(module, name, value)


def deep_update(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = deep_update(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def make_config(tmp: Path, name: str, **sections: Any) -> Any:
    """A validated RaydriftConfig: quiet, no tracking, no plots, no saved weights, runs under ``tmp``."""
    from raydrift.config import RaydriftConfig

    base: dict[str, Any] = {
        "name": name,
        "seed": 0,
        "device": "cpu",
        "verbosity": 0,
        "logging": {"backend": "none", "plots": False, "save_weights": False, "runs_dir": str(tmp)},
    }
    return RaydriftConfig.model_validate(deep_update(base, sections))


def run_coordinator(
    cfg: Any, tmp: Path, reset_driver_peak: bool = False, on_shutdown: Callable[[], None] | None = None
) -> tuple[dict[str, Any], Probe, float]:
    """Run the real Coordinator on the cluster this process started; returns (summary, probe, wall s).

    ``reset_driver_peak``: reset this process's VmHWM first, so ``probe.driver_memory['peak_mb']`` is
    the driver's peak during this run."""
    probe = Probe(on_shutdown=on_shutdown)
    run_dir = tmp / f"{cfg.name}-{uuid.uuid4().hex[:6]}"
    run_dir.mkdir(parents=True)
    with instrumented(probe) as cls:
        coord = cls(cfg, run_dir=run_dir, console=lambda _: None)
        if reset_driver_peak:
            reset_peak()
        probe.driver_rss_start = proc_memory().get("rss_mb", 0.0)
        probe.t_run = time.perf_counter()
        summary = coord.run().to_dict()
    return summary, probe, time.perf_counter() - probe.t_run


def coordinator_throughput(summary: dict[str, Any], probe: Probe) -> dict[str, Any]:
    """Steady-state samples/s, wall and driver CPU per batch from the interval records."""
    recs = probe.intervals
    total = summary["stream"]["batches"]
    pts, cum = [], 0
    for t, cpu, last, n, cluster in recs:
        cum += n
        pts.append((t, last + 1, cum, cpu, cluster))
    start = next((p for p in pts if p[1] >= WARMUP_FRACTION * total), pts[0]) if pts else None
    out: dict[str, Any] = {"batches": total}
    if start is not None and pts[-1][0] > start[0]:
        end = pts[-1]
        dt, nb = end[0] - start[0], end[1] - start[1]
        out.update(
            samples_per_second=r((end[2] - start[2]) / dt, 1),
            wall_ms_per_batch=r(1000 * dt / nb, 3),
            driver_cpu_ms_per_batch=r(1000 * (end[3] - start[3]) / nb, 3),
            # CPU of every process of the cluster (driver, actors, raylet, GCS): what a batch costs
            # the machine, whatever else runs on it
            cluster_cpu_ms_per_batch=cpu_ms_per_batch(probe.pids, start[4], end[4], nb)["all"],
            cpu_ms_per_batch_by_process=cpu_ms_per_batch(probe.pids, start[4], end[4], nb),
            steady_batches=nb,
        )
    mon = summary.get("monitoring", {})
    nbat = sum(mon.get("monitor_batches", {}).values()) or 1
    out.update(
        actor_startup_seconds=r(probe.t_actors_up - (probe.t_loop_enter or probe.t_run), 2),
        loop_seconds=r(
            (probe.intervals[-1][0] if probe.intervals else probe.t_shutdown) - probe.t_actors_up, 2
        ),
        summary_samples_per_second=mon.get("samples_per_second"),
        monitor_eval_ms_per_batch=r(1000 * mon.get("eval_seconds_total", 0.0) / nbat, 3),
        monitor_torch_threads=sorted(set(mon.get("monitor_torch_threads", {}).values())),
    )
    return out


# ---------------------------------------------------------------------------------------------------
# driving monitors directly (no stream reader, no detector)


def drive(
    actors: list[Any], refs: list[Any], k: int, call: Callable[[Any, list[int]], Any]
) -> dict[str, Any]:
    """Dispatch ``refs`` in groups of ``k`` to the least-loaded actor, at most 2 tasks per actor in
    flight (the coordinator's ``max_in_flight: 2M``), fetch every result; steady-state rate."""
    n = len(refs)
    groups = [list(range(i, min(i + k, n))) for i in range(0, n, k)]
    max_in_flight = 2 * len(actors)
    inflight: dict[Any, tuple[int, int]] = {}
    load = [0] * len(actors)
    points: list[tuple[float, float]] = []
    done, gi = 0, 0
    pids = cluster_pids()
    cpu_at: tuple[int, dict[int, float]] | None = None  # (batches done, CPU) when the steady state starts
    t0 = time.perf_counter()
    while gi < len(groups) or inflight:
        while gi < len(groups) and len(inflight) < max_in_flight:
            i = min(range(len(actors)), key=lambda j: (load[j], j))
            inflight[call(actors[i], groups[gi])] = (i, len(groups[gi]))
            load[i] += 1
            gi += 1
        ready, _ = ray.wait(list(inflight), num_returns=1)
        i, nb = inflight.pop(ready[0])
        load[i] -= 1
        ray.get(ready[0])
        done += nb
        points.append((time.perf_counter(), done))
        if cpu_at is None and done >= WARMUP_FRACTION * n:
            cpu_at = (done, cpu_seconds(list(pids)))
    rate = steady_rate(points, n)
    cpu: dict[str, float | None] = {}
    if cpu_at is not None and done > cpu_at[0]:
        cpu = cpu_ms_per_batch(pids, cpu_at[1], cpu_seconds(list(pids)), done - cpu_at[0])
    return {
        "batches_per_task": k,
        "batches_per_second": r(rate, 1),
        "wall_ms_per_batch": r(1000 / rate, 3) if rate else None,
        "cluster_cpu_ms_per_batch": cpu.get("all"),
        "cpu_ms_per_batch_by_process": cpu,
        "total_seconds": r(time.perf_counter() - t0, 2),
    }


def start_monitor_actors(
    spec: dict[str, Any], weights_ref: Any, m: int, num_cpus: float, prefix: str
) -> list[Any]:
    from raydrift.actors import MonitorActor

    actors = [
        MonitorActor.options(num_cpus=num_cpus, name=f"{prefix}-{i}-{uuid.uuid4().hex[:6]}").remote(  # type: ignore[attr-defined]
            spec, "accuracy", weights_ref, 0, f"{prefix}-{i}", num_cpus
        )
        for i in range(m)
    ]
    ray.get([a.stats.remote() for a in actors])
    return actors


def kill_all(actors: Sequence[Any]) -> None:
    for a in actors:
        ray.kill(a)


# ---------------------------------------------------------------------------------------------------
# section: throughput


def section_throughput(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"models": {}}
    sizes = {"mnist": args.mnist_batches, "trivial": args.trivial_batches}
    for model_name in args.throughput_models:
        nb = sizes[model_name]
        out["models"][model_name] = throughput_of(args, tmp, model_name, nb)
    return out


def transfer_costs(sample: list[Any]) -> dict[str, dict[str, float | None]]:
    """CPU of ray.put (what the stream reader does per batch) and ray.get (what a monitor does to read
    its argument) of a batch as raydrift sends it (torch tensors) and as numpy arrays (zero-copy)."""
    transfer_us: dict[str, dict[str, float | None]] = {}
    for label, objs in (
        ("torch", list(sample)),
        ("numpy", [(b.x.numpy(), b.y.numpy(), b.regime) for b in sample]),
    ):
        c0 = time.process_time()
        refs = [ray.put(o) for o in objs]
        c1 = time.process_time()
        for ref in refs:
            ray.get(ref)
        c2 = time.process_time()
        transfer_us[label] = {
            "put": r(1e6 * (c1 - c0) / len(refs), 1),
            "get": r(1e6 * (c2 - c1) / len(refs), 1),
        }
        del refs
    return transfer_us


def monitors_only(
    args: argparse.Namespace, spec: dict[str, Any], batches: list[Any], weights: Any, plain: dict[str, Any],
    model_name: str,
) -> list[dict[str, Any]]:
    """The monitors alone, at 1 and N monitors, without the coordinator."""
    out: list[dict[str, Any]] = []
    # the monitors alone, at 1 and N monitors: one batch per task and per object (torch tensors, as
    # raydrift sent them before chunks), and groups of k batches from numpy chunks (as it sends them now)
    refs = [ray.put(b) for b in batches]
    chunk = 32
    chunks = [ray.put([pack_batch(b) for b in batches[i : i + chunk]]) for i in range(0, len(batches), chunk)]

    def chunk_args(group: list[int]) -> list[Any]:
        return evaluate_many_args([(j, chunks[j // chunk], j % chunk) for j in group])

    wref = ray.put(weights)
    for m in args.direct_monitors:
        num_cpus = min(1.0, args.num_cpus / m)
        actors = start_monitor_actors(spec, wref, m, num_cpus, f"mo-{model_name}")
        note_monitor_memory(spec["spec"])
        res = drive(actors, refs, 1, lambda a, g: a.evaluate.remote(g[0], refs[g[0]]))
        stats = ray.get([a.stats.remote() for a in actors])
        res["monitor_eval_ms_per_batch"] = r(
            1000 * sum(s["eval_seconds"] for s in stats) / max(1, sum(s["batches"] for s in stats)), 3
        )
        rows = [{"actor": "MonitorActor.evaluate (torch batch per object)", "monitors": m, **res}]
        for k in args.prototype_k:
            res = drive(actors, refs, k, lambda a, g: a.evaluate_many.remote(*chunk_args(g)))
            rows.append({"actor": "MonitorActor.evaluate_many (numpy chunks)", "monitors": m, **res})
        kill_all(actors)
        for row in rows:
            bps = row["batches_per_second"] or 0.0
            row["samples_per_second"] = r(bps * spec["batch_size"], 1)
            row["ratio_vs_plain"] = r(row["samples_per_second"] / plain["samples_per_second"], 3)
            if row.get("cluster_cpu_ms_per_batch"):
                row["cpu_efficiency_vs_plain"] = r(
                    plain["cpu_ms_per_batch"] / row["cluster_cpu_ms_per_batch"], 3
                )
            out.append(row)
            log(
                f"[throughput] {model_name} monitors only, {m} x {row['actor']}, "
                f"{row['batches_per_task']} batch(es)/task: {row['samples_per_second']:,.0f} samples/s = "
                f"{row['ratio_vs_plain']:.2f}x plain ({row['wall_ms_per_batch']} ms/batch)"
            )
    return out


def throughput_of(args: argparse.Namespace, tmp: Path, model_name: str, nb: int) -> dict[str, Any]:
    """The throughput figures of one model: plain loop, pipeline at 1..N monitors, monitors alone."""
    from raydrift.monitor import Monitor

    n_max = args.max_monitors
    spec = harness_spec(model_name, nb)
    harness = build_harness(**spec)
    batches = list(harness.stream())
    t0 = time.perf_counter()
    for _ in harness.stream():
        pass
    gen_ms = 1000 * (time.perf_counter() - t0) / len(batches)
    model = harness.build_model().eval()
    weights = to_numpy(model.state_dict())
    plain = plain_eval(model, harness, batches, threads=1, reps=args.reps)
    plain_n = plain_eval(model, harness, batches, threads=n_max, reps=args.reps) if n_max > 1 else None
    log(
        f"[throughput] {model_name}: plain loop {plain['samples_per_second']:,.0f} samples/s "
        f"({plain['ms_per_batch']:.3f} ms/batch, 1 thread); stream generation {gen_ms:.3f} ms/batch"
    )

    # sizes and deserialisation of one batch, as the monitors receive it
    mon = Monitor(harness, "accuracy", weights)
    result = mon.evaluate(0, batches[0])
    transfer_us = transfer_costs(batches[:200])
    entry: dict[str, Any] = {
        "batches": len(batches),
        "batch_size": spec["batch_size"],
        "plain": plain,
        "plain_n_threads": plain_n,
        "stream_generation_ms_per_batch": r(gen_ms, 4),
        "batch_bytes": len(pickle.dumps(batches[0], protocol=5)),
        "result_bytes": len(pickle.dumps(result, protocol=5)),
        "put_get_cpu_us_per_batch": transfer_us,
        "pipeline": [],
        "monitors_only": [],
    }
    for m in args.pipeline_monitors:
        num_cpus = min(1.0, args.num_cpus / m)
        cfg = make_config(
            tmp,
            f"tp-{model_name}-{m}",
            model={"harness": spec["spec"], "pretrain_epochs": 0},
            data=spec["options"],
            # raydrift's defaults for stream.prefetch and monitor.batches_per_task
            stream={"batch_size": spec["batch_size"]},
            monitor={"num_monitors": m, "num_cpus": num_cpus, "max_in_flight": max(4, 2 * m)},
            drift_detection={"warmup_batches": 10**9},  # the default detector, never alarming
            train={"num_workers": 0},
        )
        summary, probe, wall = run_coordinator(cfg, tmp)
        row = {
            "monitors": m,
            "monitor_num_cpus": num_cpus,
            **coordinator_throughput(summary, probe),
            "run_seconds": r(wall, 2),
        }
        sps = row.get("samples_per_second") or 0.0
        row["ratio_vs_plain"] = r(sps / plain["samples_per_second"], 3)
        if row.get("cluster_cpu_ms_per_batch"):
            row["cpu_efficiency_vs_plain"] = r(plain["cpu_ms_per_batch"] / row["cluster_cpu_ms_per_batch"], 3)
        row["target"] = 0.9 if m == 1 else 0.8 * m
        entry["pipeline"].append(row)
        log(
            f"[throughput] {model_name} pipeline, {m} monitor(s): {sps:,.0f} samples/s = "
            f"{row['ratio_vs_plain']:.2f}x plain (target {row['target']:.1f}x); driver CPU "
            f"{row.get('driver_cpu_ms_per_batch')} ms/batch, monitor eval {row['monitor_eval_ms_per_batch']} "
            f"ms/batch, actor start-up {row['actor_startup_seconds']} s"
        )

    entry["monitors_only"] = monitors_only(args, spec, batches, weights, plain, model_name)
    return entry


# ---------------------------------------------------------------------------------------------------
# section: broadcast


def timed(fn: Callable[[], Any], reps: int) -> float:
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return median(ts)


def section_broadcast(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    n_max = args.max_monitors
    sizes = sorted({*range(1, n_max + 1), *([] if args.quick else [4 * n_max])})
    out: dict[str, Any] = {"monitor_counts": sizes, "weights": {}}
    versions = iter(range(1, 10**9))
    for model_name in args.broadcast_models:
        out["weights"][model_name] = broadcast_of(args, model_name, sizes, versions)
    return out


def put_get(obj: Any) -> None:
    ray.get(ray.put(obj))


def in_process_swap_costs(
    harness: Harness, model: nn.Module, w: dict[str, Any], reps: int, versions: Any
) -> dict[str, Any]:
    """The driver-side baselines (``ray.put`` + ``ray.get``, ``ray.put`` alone) and the monitor-side swap
    timed in-process: ``set_weights`` with read-only arrays from the object store and with writable ones,
    against ``build_model``, ``load_into`` and a zero-copy ``load_state_dict(assign=True)``."""
    from raydrift.monitor import Monitor

    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for _ in range(3):  # the first puts of a size touch fresh object-store pages: warm it up first
        put_get(w)
        put_get(sd)
    base = timed(lambda: put_get(w), reps)
    base_torch = timed(lambda: put_get(sd), reps)
    put_only = timed(lambda: ray.put(w), reps)
    # the monitor-side swap, in-process: what set_weights does in every monitor with the read-only
    # arrays it gets from the object store (zero-copy), and with writable ones (a copy)
    w_store = ray.get(ray.put(w))
    mon = Monitor(harness, "accuracy", w)
    rebuild = timed(lambda: mon.set_weights(next(versions), w_store), reps)
    rebuild_copy = timed(lambda: mon.set_weights(next(versions), w), reps)
    build_only = timed(harness.build_model, reps)
    fresh = harness.build_model()
    load_only = timed(lambda: load_into(fresh, w), reps)

    def assign() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torch warns that the arrays are read-only
            fresh.load_state_dict({k: torch.from_numpy(v) for k, v in w_store.items()}, assign=True)

    assign_only = timed(assign, reps)
    return {
        "weights_mb": r(sum(v.nbytes for v in w.values()) / MiB, 2),
        "baseline_put_get_ms": r(1000 * base, 3),
        "put_get_torch_state_dict_ms": r(1000 * base_torch, 3),
        "put_ms": r(1000 * put_only, 3),
        "in_process_set_weights_ms": r(1000 * rebuild, 3),
        "in_process_set_weights_writable_arrays_ms": r(1000 * rebuild_copy, 3),
        "in_process_build_model_ms": r(1000 * build_only, 3),
        "in_process_load_into_ms": r(1000 * load_only, 3),
        "in_process_zero_copy_assign_ms": r(1000 * assign_only, 3),
        "rows": [],
    }


@dataclass
class BroadcastRound:
    """One round of the broadcast figure to ``m`` monitors (seconds), and the version they hold after it."""

    put_get: float  # the baseline, measured next to the broadcast
    same_version_tasks: float  # tasks that carry no new version
    broadcast: float  # the put, plus what carrying the version made the tasks longer
    slowest_swap: float  # the longest swap inside a task
    put_to_last_loaded: float
    eager: float  # put + set_weights on every monitor, waited for
    version: int
    ref: Any


def broadcast_round(
    actors: list[Any], m: int, w: dict[str, Any], current: int, current_ref: Any, versions: Any
) -> BroadcastRound:
    """The baseline, tasks without a new version, tasks carrying one, and the eager alternative, back to
    back on the first ``m`` monitors (which hold ``current``)."""
    t0 = time.perf_counter()
    put_get(w)
    t1 = time.perf_counter()
    # a task to every monitor that carries no new version: what sending the tasks costs anyway
    s0 = time.perf_counter()
    ray.get([a.evaluate_many.remote([], current, None) for a in actors[:m]])
    s1 = time.perf_counter()
    # what the coordinator does: one ray.put, then each monitor's next task carries the version
    # and its ref (resolved by Ray), and the monitor loads it before evaluating
    version = next(versions)
    p0 = time.perf_counter()
    ref = ray.put(w)
    p1 = time.perf_counter()
    ray.get([a.evaluate_many.remote([], version, ref) for a in actors[:m]])
    p2 = time.perf_counter()
    last = [s["last_swap"] for s in ray.get([a.stats.remote() for a in actors[:m]])]
    if any(s is None or s[0] != version for s in last):
        raise RuntimeError(f"monitors did not load version {version}: {last}")
    # the eager alternative, for comparison: set_weights on every monitor, waited for
    version = next(versions)
    q0 = time.perf_counter()
    ref = ray.put(w)
    acks = ray.get([a.set_weights.remote(version, ref) for a in actors[:m]])
    q1 = time.perf_counter()
    if any(a != version for a in acks):
        raise RuntimeError(f"monitors did not load version {version}: {acks}")
    return BroadcastRound(
        put_get=t1 - t0,
        same_version_tasks=s1 - s0,
        # the monitors' fetch (Ray's argument resolution), deserialisation and swap
        broadcast=p1 - p0 + max(0.0, (p2 - p1) - (s1 - s0)),
        slowest_swap=max(s[2] - s[1] for s in last),
        put_to_last_loaded=p2 - p0,
        eager=q1 - q0,
        version=version,
        ref=ref,
    )


def broadcast_row(m: int, rounds: list[BroadcastRound]) -> dict[str, Any]:
    """The medians of ``rounds`` to ``m`` monitors, and their ratios to the put+get baseline."""
    b, base_m = median([x.broadcast for x in rounds]), median([x.put_get for x in rounds])
    e2e, pushes = median([x.put_to_last_loaded for x in rounds]), median([x.eager for x in rounds])
    return {
        "monitors": m,
        "broadcast_ms": r(1000 * b, 3),
        "tasks_without_a_new_version_ms": r(1000 * median([x.same_version_tasks for x in rounds]), 3),
        "slowest_swap_in_task_ms": r(1000 * median([x.slowest_swap for x in rounds]), 3),
        "put_to_last_monitor_loaded_ms": r(1000 * e2e, 3),
        "eager_set_weights_ms": r(1000 * pushes, 3),
        "baseline_put_get_ms": r(1000 * base_m, 3),
        "ratio_vs_put_get": r(b / base_m, 2),
        "ratio_put_to_last_loaded_vs_put_get": r(e2e / base_m, 2),
        "ratio_eager_vs_put_get": r(pushes / base_m, 2),
    }


def broadcast_of(
    args: argparse.Namespace, model_name: str, sizes: list[int], versions: Any
) -> dict[str, Any]:
    """Broadcast figures of one model's weights to ``sizes`` monitors."""
    spec = harness_spec(model_name, 4)
    harness = build_harness(**spec)
    model = harness.build_model().eval()
    w = to_numpy(model.state_dict())
    reps = args.reps_broadcast
    entry = in_process_swap_costs(harness, model, w, reps, versions)
    wref0 = ray.put(w)
    actors = start_monitor_actors(spec, wref0, max(sizes), 0.0, f"bc-{model_name}")
    rtt = timed(lambda: ray.get([a.stats.remote() for a in actors[:1]]), reps)
    entry["actor_call_round_trip_ms"] = r(1000 * rtt, 3)
    current, current_ref = 0, wref0  # the version every monitor holds
    for m in sizes:
        ray.get([a.set_weights.remote(current, current_ref) for a in actors])  # those not used so far too
        # the baseline is re-measured next to each broadcast (interleaved), so both see the same load
        rounds = []
        for rep in range(reps + 1):
            one = broadcast_round(actors, m, w, current, current_ref, versions)
            current, current_ref = one.version, one.ref
            if rep:  # the first round is a warm-up
                rounds.append(one)
        row = broadcast_row(m, rounds)
        entry["rows"].append(row)
        log(
            f"[broadcast] {model_name} ({entry['weights_mb']} MB) to {m} monitor(s): put + extra task time "
            f"{row['broadcast_ms']} ms = {row['ratio_vs_put_get']}x put+get ({row['baseline_put_get_ms']} "
            f"ms); put -> last monitor loaded {row['put_to_last_monitor_loaded_ms']} ms "
            f"({row['ratio_put_to_last_loaded_vs_put_get']}x, tasks without a new version "
            f"{row['tasks_without_a_new_version_ms']} ms); swap in task {row['slowest_swap_in_task_ms']} ms; "
            f"eager set_weights {row['eager_set_weights_ms']} ms ({row['ratio_eager_vs_put_get']}x)"
        )
    kill_all(actors)
    del wref0
    ratios = [row["ratio_vs_put_get"] for row in entry["rows"]]
    entry["flatness"] = r(ratios[-1] / ratios[0], 2)
    return entry


# ---------------------------------------------------------------------------------------------------
# section: update latency


def _noop_loop(config: dict[str, Any]) -> None:
    return None


def bare_fit(num_workers: int, tmp: Path) -> float:
    """Seconds of ``TorchTrainer(no-op).fit()`` with ``num_workers`` workers: Ray Train's own cost."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        train_loop_per_worker=_noop_loop,
        scaling_config=ScalingConfig(num_workers=num_workers),
        run_config=RunConfig(
            name=f"bare-{num_workers}-{uuid.uuid4().hex[:8]}", storage_path=str(tmp / "bare")
        ),
    )
    t0 = time.perf_counter()
    trainer.fit()
    return time.perf_counter() - t0


def in_process_update(cfg: Any, spec: dict[str, Any], rec: dict[str, Any], reps: int = 1) -> dict[str, Any]:
    """The same gradient steps as the recorded update, in this process (1 torch thread)."""
    from raydrift.learning import make_strategy, seed_everything, train_update

    harness = build_harness(**spec)
    weights, data = ray.get(rec["weights_ref"]), ray.get(rec["data_ref"])
    state_ref = rec.get("strategy_state_ref")
    state = ray.get(state_ref) if isinstance(state_ref, ray.ObjectRef) else state_ref
    strategy = rec.get("strategy") or cfg.continual_learning.strategy
    version, seed = int(rec["version"]), cfg.seed
    prev = torch.get_num_threads()
    torch.set_num_threads(max(1, int(cfg.train.cpus_per_worker)))
    times, metrics = [], {}
    try:
        for _ in range(reps):
            model = harness.build_model()
            load_into(model, weights)
            strat = make_strategy(strategy, cfg.continual_learning)  # another strategy: its defaults
            if state:
                strat.load_state_dict(state)
            seed_everything(seed + version)
            t0 = time.perf_counter()
            metrics = train_update(model, harness, strat, data, cfg.train, seed + version)
            times.append(time.perf_counter() - t0)
    finally:
        torch.set_num_threads(prev)
    return {
        "seconds": r(median(times), 3),
        "steps": int(metrics.get("steps", 0)),
        "train_loss": r(metrics.get("train_loss"), 4),
    }


def import_seconds(modules: str) -> float:
    """Wall seconds to import ``modules`` in a fresh interpreter (as a new Ray worker process would)."""
    import subprocess

    code = f"import time; t = time.perf_counter(); import {modules}; print(time.perf_counter() - t)"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(HERE)]))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return float(done.stdout.strip().splitlines()[-1])


def ray_train_baselines(args: argparse.Namespace, tmp: Path, worker_counts: list[int]) -> dict[str, Any]:
    """What a Train worker imports beyond a bare fit's (with workers), and bare ``fit()`` seconds."""
    out: dict[str, Any] = {"bare_fit_seconds": {}, "runs": []}
    if any(w > 0 for w in worker_counts):
        # what a Train worker imports for raydrift's loop beyond a bare fit's (torch, ray.train.torch);
        # torch._dynamo: torch.optim's Optimizer.__init__ imports it on the first optimizer built
        bare = "torch, ray.train.torch"
        ours = f"{bare}, raydrift.learning.loop, raydrift.learning.strategies, harnesses.mnist, torch._dynamo"
        out["worker_imports_seconds"] = {
            "bare_fit": r(import_seconds(bare), 2),
            "raydrift_mnist": r(import_seconds(ours), 2),
        }
        log(f"[update] imports in a fresh worker process: {out['worker_imports_seconds']} s")
    for w in worker_counts:
        reps = 2 if w == 0 else args.reps_fit  # the first local-mode fit pays for imports
        out["bare_fit_seconds"][str(w)] = [r(bare_fit(w, tmp), 4) for _ in range(reps)]
        log(f"[update] bare TorchTrainer.fit() with {w} worker(s): {out['bare_fit_seconds'][str(w)]} s")
    return out


def update_row(
    w: int, upd: dict[str, Any], probe: Probe, base: dict[str, Any], fits: list[float], wall: float
) -> dict[str, Any]:
    """The figures of the first update of a run with ``w`` train workers against the in-process ``base``."""
    bare = median(fits[1:] if w == 0 else fits)  # local mode: the first fit pays for imports
    overhead = upd["total_seconds"] - base["seconds"]
    row = {
        "train_workers": w,
        "on_drift": upd.get("on_drift"),
        "waiting_seconds": upd["waiting_seconds"],
        "training_seconds": upd["training_seconds"],
        "broadcasting_seconds": upd["broadcasting_seconds"],
        "total_seconds": upd["total_seconds"],
        "train_loop_seconds_in_ray_train": r(upd.get("train_loop_seconds"), 3),
        "steps": upd.get("train_steps"),
        "collecting_seconds": upd.get("collecting_seconds"),
        "accuracy_matrix_seconds": [r(x, 3) for x in probe.test_row_seconds],
        "in_process": base,
        "fixed_overhead_seconds": r(overhead, 3),
        # the same, against the loop's own time in this run (immune to the machine's load changing
        # between the two measurements)
        "overhead_around_loop_seconds": r(upd["total_seconds"] - (upd.get("train_loop_seconds") or 0.0), 3),
        "gating_seconds": upd.get("gating_seconds"),
        "ratio_vs_in_process": r(upd["total_seconds"] / max(base["seconds"], 1e-9), 2),
        "bare_fit_seconds": r(bare, 4),
        "target_overhead_seconds": 5.0 if w == 0 else r(bare + 1.0, 2),
        "run_seconds": r(wall, 2),
    }
    if base["steps"] != row["steps"]:
        row["warning"] = f"in-process steps {base['steps']} != update steps {row['steps']}"
    return row


def section_update(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    worker_counts = [w for w in (0, 1, 2) if w <= args.num_cpus][: args.update_workers]
    out = ray_train_baselines(args, tmp, worker_counts)
    rb = args.update_regime_batches
    spec = harness_spec("mnist", rb)
    spec["options"] = {"regimes": ["identity", "rotate_90"], "regime_batches": rb}
    for w in worker_counts:
        cfg = make_config(
            tmp,
            f"upd-w{w}",
            model={"harness": "mnist", "pretrain_epochs": 0},
            data=spec["options"],
            monitor={"num_monitors": args.max_monitors, "num_cpus": 0, "max_in_flight": 4, **PAUSE},
            # one drift, two batches into the second regime; none after it
            drift_detection=PERIODIC | {"params": {"period": 10**6, "offset": rb + 2}},
            train={"num_workers": w, "cpus_per_worker": 1},
        )
        summary, probe, wall = run_coordinator(cfg, tmp)
        if not summary["updates"] or not probe.updates:
            rejected = summary.get("rejected_updates", [])
            log(
                f"[update] {w} worker(s): no update went live ({len(summary['drift_events'])} drift(s), rejected: {rejected})"
            )
            out["runs"].append(
                {"train_workers": w, "error": "no update went live", "rejected_updates": rejected}
            )
            continue
        base = in_process_update(cfg, spec, probe.updates[0], reps=args.reps)
        row = update_row(w, summary["updates"][0], probe, base, out["bare_fit_seconds"][str(w)], wall)
        out["runs"].append(row)
        log(
            f"[update] {w} worker(s): total {row['total_seconds']} s (waiting {row['waiting_seconds']}, training "
            f"{row['training_seconds']}, broadcasting {row['broadcasting_seconds']}) vs in-process "
            f"{base['seconds']} s for {base['steps']} steps: overhead {row['fixed_overhead_seconds']} s "
            f"(target <= {row['target_overhead_seconds']} s)"
        )
    return out


# ---------------------------------------------------------------------------------------------------
# section: coordinator cost at many monitors


def broadcast_to_live_monitors(reps: int = 3) -> dict[str, Any]:
    """A broadcast to every live monitor of the run (named ``monitor*``) as the coordinator does it: one
    ``ray.put``, then each monitor's next task (here one with no batches) carries the version and its
    ref; from the put until every monitor has loaded it, waited for."""
    named = [a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith("monitor")]
    handles = [ray.get_actor(a["name"], namespace=a["namespace"]) for a in named]
    # versions newer than any of the run
    ts = [broadcast_by_task(handles, 10**6 + i) for i in range(reps)]
    return {"monitors": len(handles), "broadcast_ms": r(1000 * median(ts), 2)}


def coordinator_cost(tmp: Path, m: int, batches: int) -> dict[str, Any]:
    """``benchmarks/scaling.py``'s measurement with this file's instrumentation: the trivial model, ``m``
    monitors with ``num_cpus: 0``, ``max_in_flight: 2m`` and one batch per task, no drift; driver CPU and wall per batch
    in the steady state, then a broadcast to the ``m`` monitors before they are shut down."""
    cfg = make_config(
        tmp,
        f"coord-{m}",
        model={"harness": TRIVIAL_SPEC, "pretrain_epochs": 0},
        data={"batches": batches},
        stream={"batch_size": 64, "prefetch": 16},
        # one batch per task (the worst case for the driver, and every monitor gets work)
        monitor={"num_monitors": m, "num_cpus": 0, "max_in_flight": 2 * m, "batches_per_task": 1},
        drift_detection={"granularity": "batch", "warmup_batches": 10**9},
        train={"num_workers": 0},
    )
    bc: dict[str, Any] = {}
    summary, probe, wall = run_coordinator(
        cfg, tmp, on_shutdown=lambda: bc.update(broadcast_to_live_monitors())
    )
    return {
        "monitors": m,
        **coordinator_throughput(summary, probe),
        "broadcast": bc,
        "run_seconds": r(wall, 1),
    }


def section_coordinator(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    if TRIVIAL_SPEC not in _MONITOR_PRIVATE_MB:  # the throughput section did not run: measure one
        spec = harness_spec("trivial", 4)
        w = to_numpy(build_harness(**spec).build_model().state_dict())
        probe = start_monitor_actors(spec, ray.put(w), 1, 0.0, "probe")
        note_monitor_memory(TRIVIAL_SPEC)
        kill_all(probe)
    per_monitor = max(_MONITOR_PRIVATE_MB.get(TRIVIAL_SPEC) or [350.0])
    avail = mem_available_mb()
    fits = int(args.memory_fraction * avail // per_monitor)
    asked = args.many_monitors
    m = asked if asked <= fits else max(8, fits // 8 * 8)
    out: dict[str, Any] = {
        "asked_monitors": asked,
        "monitors": m,
        "monitor_private_mb": r(per_monitor, 1),
        "mem_available_mb": r(avail, 0),
    }
    if m != asked:
        out["reduced_because"] = (
            f"{asked} monitors x {per_monitor:.0f} MB private memory each (torch import) > "
            f"{args.memory_fraction:.0%} of the {avail:,.0f} MB available on this shared machine"
        )
        log(f"[coordinator] {out['reduced_because']}: running {m}")
    # quick: no 1-monitor run (its figure is in the full run)
    one = coordinator_cost(tmp, 1, args.coordinator_batches) if not args.quick else None
    many = coordinator_cost(tmp, m, args.coordinator_batches)
    out["one"], out["many"] = one, many
    base = (one or {}).get("driver_cpu_ms_per_batch")
    out["ratio_cpu_vs_one_monitor"] = r(many["driver_cpu_ms_per_batch"] / base, 2) if base else None
    one_s = f"{one['driver_cpu_ms_per_batch']} ms at 1 monitor" if one else "no 1-monitor run (quick)"
    log(
        f"[coordinator] driver CPU per batch: {many['driver_cpu_ms_per_batch']} ms at {m} monitors vs {one_s} "
        f"({out['ratio_cpu_vs_one_monitor']}x); wall per batch {many['wall_ms_per_batch']} ms; broadcast to {m}: "
        f"{many['broadcast'].get('broadcast_ms')} ms; actor start-up {many['actor_startup_seconds']} s"
    )
    return out


# ---------------------------------------------------------------------------------------------------
# section: memory and update cost over a long stream


def memory_run(args: argparse.Namespace, tmp: Path, batches: int, label: str) -> dict[str, Any]:
    rb = 20
    regimes = max(1, batches // rb)
    cfg = make_config(
        tmp,
        f"mem-{label}",
        model={"harness": "synthetic"},
        data={"num_regimes": regimes, "regime_batches": rb},
        # pause: a replayed stream outruns its updates, and with continue the detector would be held
        # through most regime changes; every change gets its update this way
        monitor={
            "num_monitors": args.max_monitors,
            "num_cpus": min(1.0, args.num_cpus / args.max_monitors),
            **PAUSE,
        },
        drift_detection=PERIODIC | {"params": {"period": rb}},
        train={"num_workers": 0},
        **NO_GATE,
    )
    summary, probe, wall = run_coordinator(cfg, tmp, reset_driver_peak=True)
    kinds = {kind: max(m.get("peak_mb", 0.0) for m in mems) for kind, mems in probe.actor_memory.items()}
    # the driver carries what earlier sections left in its heap: its growth during this run is the
    # figure (its peak is reset to its RSS at the start of the run)
    kinds["driver (growth during the run)"] = probe.driver_memory.get("peak_mb", 0.0) - probe.driver_rss_start
    ups = summary["updates"]
    third = max(1, len(ups) // 3)
    trow = probe.test_row_seconds[1:]  # the first row is the initial model, before the stream
    return {
        "batches": summary["stream"]["batches"],
        "regimes": regimes,
        "updates": len(ups),
        "rejected_updates": len(summary.get("rejected_updates", [])),
        "peak_mb": {k: r(v, 1) for k, v in kinds.items()},
        "processes": {k: len(v) for k, v in probe.actor_memory.items()},
        "update_total_seconds_first_third": r(median([u["total_seconds"] for u in ups[:third]]), 3)
        if ups
        else None,
        "update_total_seconds_last_third": r(median([u["total_seconds"] for u in ups[-third:]]), 3)
        if ups
        else None,
        "update_training_seconds_all": [u["training_seconds"] for u in ups],
        "accuracy_matrix_seconds_median": r(median(trow), 4) if trow else None,
        "driver_peak_mb": r(probe.driver_memory.get("peak_mb"), 1),
        "driver_rss_start_mb": r(probe.driver_rss_start, 1),
        "accuracy_matrix_seconds_first_third": r(median(trow[:third]), 4) if trow else None,
        "accuracy_matrix_seconds_last_third": r(median(trow[-third:]), 4) if trow else None,
        "run_seconds": r(wall, 1),
    }


def within_noise(a: float, b: float) -> bool:
    return abs(b - a) <= max(0.05 * max(a, b), 16.0)


def section_memory(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    # a first run pays for one-off imports and allocations in the driver: run L twice, keep the second
    warm = memory_run(args, tmp, args.memory_batches, "warm-up") if not args.quick else None
    if warm:
        log(f"[memory] warm-up run (discarded): peaks {warm['peak_mb']} MB")
    short = memory_run(args, tmp, args.memory_batches, "L")
    log(f"[memory] L={short['batches']} batches: peaks {short['peak_mb']} MB, {short['updates']} updates")
    long = memory_run(args, tmp, 10 * args.memory_batches, "10L")
    log(f"[memory] 10L={long['batches']} batches: peaks {long['peak_mb']} MB, {long['updates']} updates")
    cmp = {}
    for kind in long["peak_mb"]:
        a, b = short["peak_mb"].get(kind) or 0.0, long["peak_mb"][kind] or 0.0
        cmp[kind] = {
            "L": a,
            "10L": b,
            "ratio": r(b / a, 3) if a else None,
            "within_noise": within_noise(a, b),
        }
    f, last = long["update_total_seconds_first_third"], long["update_total_seconds_last_third"]
    a_s, a_l = short["accuracy_matrix_seconds_median"], long["accuracy_matrix_seconds_median"]
    return {
        "warm_up": warm,
        "L": short,
        "10L": long,
        "peaks": cmp,
        "accuracy_matrix_ratio_10L_vs_L": r(a_l / a_s, 2) if a_s and a_l else None,
        "update_cost_ratio_last_vs_first_third": r(last / f, 2) if f and last else None,
    }


# ---------------------------------------------------------------------------------------------------
# section: samples evaluated during updates


def section_on_drift(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    w = 0 if args.quick else 1  # with 1 worker the update runs outside the driver
    for mode in ("continue", "pause") if not args.quick else ("continue",):
        cfg = make_config(
            tmp,
            f"ondrift-{mode}",
            model={"harness": "synthetic"},
            data={"num_regimes": 3, "regime_batches": 40},
            monitor={"num_monitors": args.max_monitors, "num_cpus": 0, "on_drift": mode},
            drift_detection=PERIODIC | {"params": {"period": 40}},
            train={"num_workers": w, "cpus_per_worker": 1},
            **NO_GATE,
        )
        summary, _probe, wall = run_coordinator(cfg, tmp)
        mon = summary["monitoring"]
        out[mode] = {
            "train_workers": w,
            "updates": len(summary["updates"]),
            "update_seconds": [u["total_seconds"] for u in summary["updates"]],
            "samples_during_updates": mon.get("samples_during_updates"),
            "stream_samples": summary["stream"]["samples"],
            "run_seconds": r(wall, 1),
        }
        log(
            f"[on_drift] {mode}: {out[mode]['samples_during_updates']} samples evaluated during "
            f"{out[mode]['updates']} update(s)"
        )
    return out


# ---------------------------------------------------------------------------------------------------
# the table


AddRow = Callable[[str, str, str, float | None, str, bool | None], None]
"""``add(figure, value, baseline, ratio, target, met)``: appends one row of the table."""


def _throughput_figures(add: AddRow, tp: dict[str, Any]) -> None:
    for name, e in tp.items():
        base = e["plain"]["samples_per_second"]
        for p in e["pipeline"]:
            m = p["monitors"]
            ratio = p["ratio_vs_plain"]
            add(
                f"monitoring throughput, {name}, {m} monitor(s)",
                f"{p.get('samples_per_second') or 0:,.0f} samples/s",
                f"plain loop {base:,.0f} samples/s",
                ratio,
                f">= {p['target']:.1f}x",
                ratio >= p["target"],
            )
            if p.get("cpu_efficiency_vs_plain"):
                add(
                    f"  CPU per batch, all cluster processes, {name}, {m} monitor(s)",
                    f"{p['cluster_cpu_ms_per_batch']} ms",
                    f"plain loop {e['plain']['cpu_ms_per_batch']} ms",
                    p["cpu_efficiency_vs_plain"],
                    "(diagnostic: 1.0 = no overhead)",
                    None,
                )
        for p in e["monitors_only"]:
            add(
                f"  monitors only, {name}, {p['monitors']} x {p['actor']}, {p['batches_per_task']} batch/task",
                f"{p['samples_per_second']:,.0f} samples/s",
                "plain loop",
                p["ratio_vs_plain"],
                "(diagnostic)",
                None,
            )


def _broadcast_figures(add: AddRow, bc: dict[str, Any]) -> None:
    for name, e in bc.items():
        for row in e["rows"]:
            add(
                f"broadcast, {name} weights {e['weights_mb']} MB, {row['monitors']} monitor(s)",
                f"{row['broadcast_ms']} ms",
                f"put+get {row['baseline_put_get_ms']} ms",
                row["ratio_vs_put_get"],
                "<= 1.3x, flat",
                row["ratio_vs_put_get"] <= 1.3,
            )
            if "put_to_last_monitor_loaded_ms" in row:
                add(
                    "  put -> last monitor loaded (with the task's dispatch)",
                    f"{row['put_to_last_monitor_loaded_ms']} ms",
                    "put+get",
                    row["ratio_put_to_last_loaded_vs_put_get"],
                    "(diagnostic)",
                    None,
                )
                add(
                    "  eager set_weights on every monitor, waited for",
                    f"{row['eager_set_weights_ms']} ms",
                    "put+get",
                    row["ratio_eager_vs_put_get"],
                    "(diagnostic: the previous method)",
                    None,
                )


def _update_figures(add: AddRow, runs: list[dict[str, Any]]) -> None:
    for u in runs:
        if "error" in u:
            add(
                f"drift -> weights live, {u['train_workers']} train worker(s)",
                u["error"],
                "-",
                None,
                "-",
                False,
            )
            continue
        add(
            f"drift -> weights live, {u['train_workers']} train worker(s)",
            f"{u['total_seconds']} s (wait {u['waiting_seconds']} / train {u['training_seconds']} / "
            f"bcast {u['broadcasting_seconds']})",
            f"in-process {u['in_process']['seconds']} s",
            u["ratio_vs_in_process"],
            f"overhead {u['fixed_overhead_seconds']} s <= {u['target_overhead_seconds']} s",
            u["fixed_overhead_seconds"] <= u["target_overhead_seconds"],
        )


def _coordinator_figures(add: AddRow, c: dict[str, Any]) -> None:
    add(
        f"coordinator driver CPU per batch, {c['monitors']} monitors (asked {c['asked_monitors']})",
        f"{c['many']['driver_cpu_ms_per_batch']} ms",
        f"1 monitor {c['one']['driver_cpu_ms_per_batch']} ms" if c.get("one") else "-",
        c["ratio_cpu_vs_one_monitor"],
        "(none)",
        None,
    )


def _memory_figures(add: AddRow, mem: dict[str, Any]) -> None:
    for kind, v in mem["peaks"].items():
        add(
            f"peak RSS, {kind}",
            f"{v['10L']} MB at 10L",
            f"{v['L']} MB at L",
            v["ratio"],
            "equal within noise",
            v["within_noise"],
        )
    ratio = mem["update_cost_ratio_last_vs_first_third"]
    add(
        "update cost, last vs first third of updates (10L)",
        f"{mem['10L']['update_total_seconds_last_third']} s",
        f"{mem['10L']['update_total_seconds_first_third']} s",
        ratio,
        "flat (<= 1.2x)",
        None if ratio is None else ratio <= 1.2,
    )
    add(
        f"accuracy-matrix evaluation per update (reporting), {mem['10L']['regimes']} regimes (10L)",
        f"{mem['10L']['accuracy_matrix_seconds_median']} s",
        f"{mem['L']['regimes']} regimes (L) {mem['L']['accuracy_matrix_seconds_median']} s",
        mem.get("accuracy_matrix_ratio_10L_vs_L"),
        "(reporting; grows with regimes)",
        None,
    )


def _on_drift_figures(add: AddRow, od: dict[str, Any]) -> None:
    for mode in [m for m in ("continue", "pause") if m in od]:
        x = od[mode]
        add(
            f"samples evaluated during updates, on_drift={mode}",
            f"{x['samples_during_updates']} in {x['updates']} update(s) of {x['update_seconds']} s",
            f"{x['stream_samples']} stream samples",
            None,
            "-",
            None,
        )


def figures(res: dict[str, Any], n_max: int) -> list[dict[str, Any]]:
    """One row per figure: value, baseline, ratio, target, met."""
    rows: list[dict[str, Any]] = []

    def add(
        figure: str, value: str, baseline: str, ratio: float | None, target: str, met: bool | None
    ) -> None:
        rows.append(
            {
                "figure": figure,
                "value": value,
                "baseline": baseline,
                "ratio": ratio,
                "target": target,
                "met": met,
            }
        )

    _throughput_figures(add, res.get("throughput", {}).get("models", {}))
    _broadcast_figures(add, res.get("broadcast", {}).get("weights", {}))
    _update_figures(add, res.get("update", {}).get("runs", []))
    if res.get("coordinator"):
        _coordinator_figures(add, res["coordinator"])
    if res.get("memory"):
        _memory_figures(add, res["memory"])
    if res.get("on_drift"):
        _on_drift_figures(add, res["on_drift"])
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    w = max(len(x["figure"]) for x in rows) if rows else 10
    log(f"\n{'figure':<{w}}  {'value':<44} {'baseline':<32} {'ratio':>7}  {'target':<28} met")
    for x in rows:
        ratio = "" if x["ratio"] is None else f"{x['ratio']:.2f}x"
        met = {True: "yes", False: "NO", None: ""}[x["met"]]
        log(f"{x['figure']:<{w}}  {x['value']:<44} {x['baseline']:<32} {ratio:>7}  {x['target']:<28} {met}")


# ---------------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    cores = os.cpu_count() or 2
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke run of every section (~2 min)")
    p.add_argument("--max-monitors", type=int, default=cores, help="N: monitors up to N (default: the cores)")
    p.add_argument(
        "--num-cpus", type=int, default=cores, help="CPUs of the local Ray cluster (default: the cores)"
    )
    p.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    p.add_argument("--out", default=str(HERE / "results" / "pipeline.json"))
    p.add_argument("--overwrite", action="store_true", help="let --out replace an existing file")
    p.add_argument("--k", type=int, default=16, help="batches per task of the evaluate_many rows")
    p.add_argument(
        "--merge",
        action="store_true",
        help="with --only: replace those sections in the existing --out file (the rest is kept; the "
        "rerun is recorded under 'reruns')",
    )
    args = p.parse_args(argv)
    full = not args.quick
    n = args.max_monitors
    # quick: one run per section where it can, so the smoke run stays short on a loaded 2-core machine
    args.throughput_models = ["mnist", "trivial"] if full else ["mnist"]
    args.pipeline_monitors = list(range(1, n + 1)) if full else [1]
    args.direct_monitors = sorted({1, n}) if full else [1]
    args.prototype_k = [1, args.k] if full else [args.k]
    args.broadcast_models = ["mnist", "wide"] if full else ["mnist"]
    args.mnist_batches = 600 if full else 100
    args.trivial_batches = 1500 if full else 300
    args.reps = 3 if full else 1
    args.reps_broadcast = 15 if full else 3
    args.reps_fit = 2 if full else 1
    args.update_workers = 3 if full else 1  # how many of 0, 1, 2 train workers
    args.update_regime_batches = 24 if full else 12
    args.many_monitors = 64 if full else 4
    args.coordinator_batches = 400 if full else 60
    args.memory_batches = 100 if full else 20
    args.memory_fraction = 0.5
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if Path(args.out).exists() and not (args.overwrite or args.merge):
        print(
            f"error: {args.out} exists: pass --overwrite to replace it, --merge to rerun sections into it, "
            "or --out another file",
            file=sys.stderr,
        )
        return 2
    torch.set_num_threads(1)
    t_start = time.perf_counter()
    meta: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv])
        if argv is None
        else f"pipeline.py {' '.join(argv)}",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "mode": "quick" if args.quick else "full",
        "machine": {
            "cores": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "ray": ray.__version__,
            "gpu": torch.cuda.is_available(),
        },
        "loadavg_start": loadavg(),
        "args": {k: v for k, v in vars(args).items() if k != "only"},
        "sections": args.only,
    }
    log(
        f"pipeline benchmark ({meta['mode']}): {os.cpu_count()} cores, load average {meta['loadavg_start']}, "
        f"N = {args.max_monitors} monitors"
    )
    path = os.pathsep.join([str(HERE), str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    ray.init(
        address="local",
        num_cpus=args.num_cpus,
        include_dashboard=False,
        namespace="raydrift",
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": path}},
    )
    results: dict[str, Any] = {}
    funcs = {
        "throughput": section_throughput,
        "broadcast": section_broadcast,
        "update": section_update,
        "coordinator": section_coordinator,
        "memory": section_memory,
        "on_drift": section_on_drift,
    }
    try:
        with tempfile.TemporaryDirectory(prefix="raydrift-bench-") as tmpdir:
            for name in SECTIONS:
                if name not in args.only:
                    continue
                t0 = time.perf_counter()
                la = loadavg()
                results[name] = funcs[name](args, Path(tmpdir) / name)
                results[name]["seconds"] = r(time.perf_counter() - t0, 1)
                results[name]["loadavg"] = {"start": la, "end": loadavg()}
    finally:
        ray.shutdown()
    meta["loadavg_end"] = loadavg()
    meta["seconds"] = r(time.perf_counter() - t_start, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {**meta, "results": results}
    if args.merge and out.is_file():
        doc = json.loads(out.read_text())
        doc["results"].update(results)
        doc.setdefault("reruns", []).append({k: v for k, v in meta.items() if k not in ("machine", "args")})
    rows = figures(doc["results"], args.max_monitors)
    doc["figures"] = rows
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print_table(rows)
    log(
        f"\n{meta['seconds']} s; load average {meta['loadavg_start']} -> {meta['loadavg_end']}; written to {out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
