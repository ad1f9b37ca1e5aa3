"""Monitoring throughput while an update trains, against the same run with no update (issue 16).

One process, one local Ray cluster. Real ``Coordinator`` runs on the MNIST harness (one
``identity`` regime, so the stream is the same in both), ``monitor.on_drift: continue``, the promotion
gate and follow-up updates off:

- **baseline**: detector ``never`` and ``train.num_workers: 0``: no update and no trainer process;
  its steady-state samples/s (the first 20% of the stream left out, as in ``benchmarks/pipeline.py``);
- **with updates**, once per ``--workers`` value: detector ``periodic`` (an alarm every ``--period``
  batches), each alarm an update on that many standing Ray Train workers (0: in the driver's update
  thread); the samples the monitors evaluated while each update trained (``samples_during_update``
  of its record) over the seconds it trained and was gated; on a standing trainer the first update,
  whose job also waited for the workers' start-up, is left out.

ratio = samples/s during updates / baseline samples/s. Target (issue 16): at least 0.8 on a machine
with a free core for the trainer. On a 2-core machine the trainer's worker takes one of the two
cores the monitors use, so the figure says what such a machine gives, not whether the design blocks
(a blocked driver would give ~0).

    python benchmarks/during_update.py --out /tmp/during_update.json
    python benchmarks/during_update.py --out benchmarks/results/during_update.json --overwrite
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
for _p in (str(HERE), str(HERE.parent)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from pipeline import NO_GATE, coordinator_throughput, loadavg, log, make_config, r, run_coordinator  # noqa: E402


def config(tmp: Path, name: str, args: argparse.Namespace, detection: dict[str, Any], workers: int) -> Any:
    """The shared config of every run: only the detector and the Ray Train workers differ."""
    return make_config(
        tmp,
        name,
        model={"harness": "mnist", "pretrain_epochs": 1},
        data={"source": "bundled", "regimes": ["identity"], "regime_batches": args.batches},
        monitor={"num_monitors": args.monitors, "num_cpus": args.monitor_cpus, "on_drift": "continue"},
        drift_detection={"granularity": "batch", "direction": "any", "warmup_batches": 1} | detection,
        continual_learning={"window_batches": 8, "post_drift_batches": 0},
        train={"num_workers": workers, "cpus_per_worker": 1, "epochs": args.epochs},
        adaptation={"until_recovered": False},
        **NO_GATE,
    )


def during_rate(summary: dict[str, Any]) -> dict[str, Any]:
    """Samples/s the monitors evaluated while the updates trained, from the update records.

    On a standing trainer the first update's job also waits for the workers' start-up (its
    ``train_queue_seconds``), which is not an update's cost: it is left out (issue 16 asks for the
    figure after the first update)."""
    ups = summary["updates"]
    skipped = 1 if ups and ups[0].get("train_queue_seconds") is not None else 0
    steady = ups[skipped:]
    samples = sum(u["samples_during_update"] for u in steady)
    seconds = sum(u["training_seconds"] + u["gating_seconds"] for u in steady)
    return {
        "updates": len(ups),
        "first_update_left_out": bool(skipped),
        "update_seconds": [r(u["training_seconds"] + u["gating_seconds"], 2) for u in ups],
        "samples_during_updates": samples,
        "samples_per_second": r(samples / seconds, 1) if seconds > 0 else None,
    }


def measure(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    base_summary, base_probe, base_wall = run_coordinator(config(tmp, "baseline", args, {"detector": "never"}, 0), tmp)
    base_rate = coordinator_throughput(base_summary, base_probe).get("samples_per_second")
    log(f"baseline (no update, no trainer): {base_rate} samples/s")
    out: dict[str, Any] = {"baseline": {"samples_per_second": base_rate, "run_seconds": r(base_wall, 1)}}
    periodic = {"detector": "periodic", "params": {"period": args.period}}
    for w in args.workers:
        summary, _probe, wall = run_coordinator(config(tmp, f"updates-w{w}", args, periodic, w), tmp)
        during = during_rate(summary)
        rate = during["samples_per_second"]
        ratio = rate / base_rate if base_rate and rate else None
        log(f"{w} worker(s): during {during['updates']} update(s) {rate} samples/s: ratio {r(ratio, 2)}")
        out[f"workers_{w}"] = during | {"run_seconds": r(wall, 1), "status": summary["run"]["status"],
                                        "ratio": r(ratio, 3)}
    return out


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--workers", type=int, nargs="+", default=[1, 0],
                   help="train.num_workers of the update runs (0: the update in the driver's update thread)")
    p.add_argument("--monitors", type=int, default=2)
    p.add_argument("--monitor-cpus", type=float, default=0.5, help="monitor.num_cpus (configs/mnist.yaml's)")
    p.add_argument("--batches", type=int, default=4000, help="stream batches of 64")
    p.add_argument("--period", type=int, default=800, help="batches between the periodic detector's alarms")
    p.add_argument("--epochs", type=int, default=5, help="train.epochs of each update (its length)")
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray cluster (default: all)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.out.exists() and not args.overwrite:
        print(f"during_update.py: {args.out} exists; pass --overwrite to replace it", file=sys.stderr)
        return 2
    import ray
    import torch

    torch.set_num_threads(1)
    meta = {"command": " ".join(["python", "benchmarks/during_update.py", *(argv or sys.argv[1:])]),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "cores": os.cpu_count(), "loadavg_start": loadavg(),
            "args": {k: str(v) for k, v in vars(args).items()}}
    path = os.pathsep.join([str(HERE), str(HERE.parent), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, namespace="raydrift",
             log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
    try:
        with tempfile.TemporaryDirectory(prefix="raydrift-during-") as tmp:
            result = measure(args, Path(tmp))
    finally:
        ray.shutdown()
    meta["loadavg_end"] = loadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "result": result}, indent=2) + "\n")
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
