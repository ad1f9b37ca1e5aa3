"""Coordinator cost per batch as the number of monitors grows (docs/scaling.md).

Runs the real :class:`raydrift.coordinator.Coordinator` on a stream with no drift and a trivial model
(a 4 -> 2 linear layer), with ``M`` lightweight monitors (``monitor.num_cpus: 0``) and
``monitor.max_in_flight: 2 * M``, one batch per task. For each ``M`` it reports, over the monitoring loop only (actor
start-up excluded):

- driver CPU seconds per batch (``time.process_time`` of the driver process, Ray's threads included):
  the coordinator's cost, which bounds the batches/s one driver can sustain;
- wall seconds per batch and samples/s;
- the broadcast: one ``ray.put`` of the weights, then a task carrying the version to every monitor.

Usage (one Ray cluster, started here)::

    .venv/bin/python benchmarks/scaling.py --monitors 1 4 16 32 --batches 400 --batch-size 64

Writes ``runs/bench-scaling.json`` (``--out``); an existing file is never replaced without ``--overwrite``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from raydrift.harness import Batch, Harness

torch.set_num_threads(1)


class TrivialOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    batches: int = Field(400, ge=1)


class TrivialHarness(Harness):
    """One regime of Gaussian points labelled by the sign of their first coordinate; a linear model."""

    name: ClassVar[str] = "trivial"
    Options: ClassVar[type[BaseModel]] = TrivialOptions
    metric_directions: ClassVar[dict[str, bool]] = {"accuracy": True, "loss": False}

    def _sample(self, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.randn(n, 4, generator=gen)
        return x, (x[:, 0] > 0).long()

    def build_model(self) -> nn.Module:
        torch.manual_seed(self.seed)
        return nn.Linear(4, 2)

    def stream(self) -> Iterator[Batch]:
        gen = torch.Generator().manual_seed(self.seed + 1)
        for _ in range(self.options.batches):
            yield Batch(*self._sample(self.batch_size, gen), regime=0)

    def test_sets(self) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        return {0: self._sample(256, torch.Generator().manual_seed(self.seed + 2))}


def broadcast_by_task(monitors: list[Any], version: int) -> float:
    """Seconds of a broadcast of small weights as the coordinator does it after an update: one put, and
    each monitor's next task (here one with no batches) carries ``version`` (newer than the one the
    monitors hold) and its ref; until every monitor has loaded it."""
    import ray

    from raydrift.weights import to_numpy

    w = to_numpy(nn.Linear(4, 2).state_dict())
    t0 = time.perf_counter()
    ref = ray.put(w)
    ray.get([m.evaluate_many.remote([], version, ref) for m in monitors])
    return time.perf_counter() - t0


def measure(num_monitors: int, batches: int, batch_size: int, tmp: Path) -> dict[str, Any]:
    from raydrift.config import build_config
    from raydrift.coordinator import Coordinator

    timing: dict[str, float] = {}

    class TimedCoordinator(Coordinator):
        def log(self, msg: str, level: int = 1) -> None:
            # The coordinator logs this line once its actors are up and the stream starts: the
            # clock starts here, so actor start-up is not counted.
            if "monitor(s), detector" in msg:
                timing["cpu0"], timing["wall0"] = time.process_time(), time.perf_counter()
            super().log(msg, level)

    import raydrift.pipeline.loop as loop_module

    loop_run = loop_module.Loop.run

    def timed_run(loop: Any, checkpoint: Any) -> None:
        timing["cpu0"], timing["wall0"] = time.process_time(), time.perf_counter()
        loop_run(loop, checkpoint)
        timing["loop_cpu"] = time.process_time() - timing["cpu0"]
        timing["loop_wall"] = time.perf_counter() - timing["wall0"]
        timing["broadcast"] = broadcast_by_task(loop.stages.supervisor.monitors, 10**6)

    loop_module.Loop.run = timed_run  # type: ignore[method-assign]

    cfg = build_config(
        None,
        [
            "name=scaling",
            "verbosity=0",
            "model.harness=scaling:TrivialHarness",
            "model.pretrain_epochs=0",
            f"data.batches={batches}",
            f"stream.batch_size={batch_size}",
            "stream.prefetch=16",
            f"monitor.num_monitors={num_monitors}",
            "monitor.num_cpus=0",
            f"monitor.max_in_flight={2 * num_monitors}",
            "monitor.batches_per_task=1",  # one batch per task: the driver's worst case
            "drift_detection.granularity=batch",
            "drift_detection.warmup_batches=1000000",  # no drift: the loop only
            "train.num_workers=0",
            "logging.backend=none",
            "logging.plots=false",
            "logging.save_weights=false",
            f"logging.runs_dir={tmp}",
        ],
    )
    run_dir = tmp / f"m{num_monitors}"
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        summary = TimedCoordinator(cfg, run_dir=run_dir, console=lambda _: None).run().to_dict()
    finally:
        loop_module.Loop.run = loop_run  # type: ignore[method-assign]
    total = time.perf_counter() - t0
    assert summary["stream"]["batches"] == batches, summary["stream"]
    n = summary["stream"]["batches"]
    return {
        "monitors": num_monitors,
        "batches": n,
        "driver_cpu_ms_per_batch": round(1000 * timing["loop_cpu"] / n, 3),
        "wall_ms_per_batch": round(1000 * timing["loop_wall"] / n, 3),
        "samples_per_second": round(n * batch_size / timing["loop_wall"], 1),
        "broadcast_ms": round(1000 * timing["broadcast"], 2),
        "run_seconds_incl_startup": round(total, 2),
    }


def detector_cost(granularity: str, batch_size: int, batches: int = 300) -> dict[str, Any]:
    """CPU microseconds per batch of the ordered detection step (``DetectionEngine.ingest``), no Ray:
    what the single detector actor spends per batch, the ceiling of ordered detection."""
    import numpy as np

    from raydrift.config import DriftDetectionConfig
    from raydrift.detection.engine import BatchResult, DetectionEngine

    cfg = DriftDetectionConfig(granularity=granularity, warmup_batches=10**9)  # type: ignore[arg-type]
    engine = DetectionEngine(cfg, "accuracy", True, seed=0)
    rng = np.random.default_rng(0)
    results = [
        BatchResult(
            batch_id=b,
            regime=0,
            version=0,
            values=(rng.random(batch_size) < 0.9).astype(np.float32),
            metrics={"accuracy": 0.9},
            monitor="m",
            eval_seconds=0.0,
        )
        for b in range(batches)
    ]
    t0 = time.process_time()
    for r in results:
        engine.ingest(r)
    us = 1e6 * (time.process_time() - t0) / batches
    return {
        "granularity": granularity,
        "batch_size": batch_size,
        "detector_us_per_batch": round(us, 1),
        "max_samples_per_second": round(batch_size * 1e6 / us),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--monitors", type=int, nargs="+", default=[1, 4, 16, 32])
    p.add_argument("--batches", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-cpus", type=int, default=2)
    p.add_argument("--out", default="runs/bench-scaling.json")
    p.add_argument("--overwrite", action="store_true", help="let --out replace an existing file")
    p.add_argument(
        "--detector", action="store_true", help="only time DetectionEngine.ingest per batch (no Ray)"
    )
    args = p.parse_args(argv)
    if args.detector:
        for gran in ("sample", "batch"):
            for bs in (64, 1024, 8192):
                print(json.dumps(detector_cost(gran, bs)), flush=True)
        return 0
    if Path(args.out).exists() and not args.overwrite:
        print(f"error: {args.out} exists: pass --overwrite to replace it, or --out another file", file=sys.stderr)
        return 2

    import tempfile

    import ray

    here = str(Path(__file__).resolve().parent)
    sys.path.insert(0, here)
    path = os.pathsep.join([here, str(Path(here).parent)])
    ray.init(
        num_cpus=args.num_cpus,
        include_dashboard=False,
        namespace="raydrift",
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": path}},
    )
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for m in args.monitors:
                row = measure(m, args.batches, args.batch_size, Path(tmp))
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        ray.shutdown()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    out.write_text(json.dumps({"args": vars(args), "loadavg": load, "rows": rows}, indent=2))
    print(f"\nmachine: {os.cpu_count()} cores, load average {load[0]:.1f}; written to {out}")
    print(f"{'monitors':>8} {'driver CPU ms/batch':>20} {'wall ms/batch':>14} {'samples/s':>10} {'broadcast ms':>13}")
    for r in rows:
        print(
            f"{r['monitors']:>8} {r['driver_cpu_ms_per_batch']:>20.3f} {r['wall_ms_per_batch']:>14.3f} "
            f"{r['samples_per_second']:>10,.0f} {r['broadcast_ms']:>13.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
