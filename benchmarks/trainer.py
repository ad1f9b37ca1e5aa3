"""Drift -> new weights per update job: standing Ray Train workers vs a ``fit()`` per update vs in-process.

One process, one local Ray cluster (``ray.init(address="local")``), the MNIST harness's CNN and an
update like ``configs/mnist.yaml``'s (replay, a window of 8 batches of 64 and 500 memory samples,
``train.epochs`` 5 by default). For each mode, ``--jobs`` updates in a row, each from the previous
one's weights, timed from the call to ``run()`` to the new weights in the driver (what the
coordinator's update thread waits for; the broadcast to the monitors is ``benchmarks/pipeline.py
--only broadcast``). Modes:

``in-process``
    :class:`raydrift.update.Updater` with ``train.num_workers: 0`` (Ray Train's local mode, the loop in
    the driver): the baseline.
``per-fit-N``
    :class:`raydrift.update.Updater` with N workers: a fresh ``TorchTrainer.fit()`` per update.
``standing-N``
    :class:`raydrift.trainer.StandingTrainer` with N workers: one ``fit()``; ``start()`` is called
    first and its start-up (start() -> the first job's weights, minus that job's training) is
    reported apart, as ``make run`` hides it behind pre-training.

Per job: ``wall`` (drift -> weights), ``train`` (the training steps, the job's own ``seconds``),
``overhead = wall - train``; per mode the median over jobs after the first, and ratios against
in-process. Target (issue 16): standing overhead <= in-process overhead + 1 s.

Usage::

    nice -n 10 .venv/bin/python benchmarks/trainer.py                 # about 5 min on 2 busy cores
    nice -n 10 .venv/bin/python benchmarks/trainer.py --jobs 3 --epochs 1 --modes in-process standing-1

Writes ``benchmarks/results/trainer.json`` (``--out``); an existing file is never replaced without
``--overwrite``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import ray
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from raydrift.config import RaydriftConfig  # noqa: E402
from raydrift.harness import build_harness  # noqa: E402
from raydrift.learning import UpdateData  # noqa: E402
from raydrift.trainer import StandingTrainer  # noqa: E402
from raydrift.update import Updater  # noqa: E402
from raydrift.weights import to_numpy  # noqa: E402

MODES = ("in-process", "per-fit-1", "standing-1", "per-fit-2", "standing-2")
HARNESS = {"spec": "mnist", "options": {"regimes": ["identity", "rotate_90"], "regime_batches": 10}}


def config(tmp: Path, workers: int, epochs: int, standing: bool) -> RaydriftConfig:
    return RaydriftConfig.model_validate(
        {
            "name": "bench-trainer",
            "seed": 0,
            "device": "cpu",
            "model": {"harness": "mnist", "pretrain_epochs": 0},
            "data": HARNESS["options"],
            "continual_learning": {"strategy": "replay", "memory_size": 500},
            "train": {"num_workers": workers, "cpus_per_worker": 1, "epochs": epochs, "batch_size": 64,
                      "standing": standing},
            "logging": {"backend": "none", "plots": False, "save_weights": False, "runs_dir": str(tmp)},
        }
    )


def update_inputs() -> tuple[dict[str, Any], UpdateData]:
    """Initial weights and an update's data: the last 8 batches of the rotated regime as the window,
    500 samples of the first regime as the memory."""
    harness = build_harness(HARNESS["spec"], HARNESS["options"], seed=0, batch_size=64)
    batches = list(harness.stream())
    window, old = batches[-8:], batches[:8]
    mx, my = torch.cat([b.x for b in old])[:500], torch.cat([b.y for b in old])[:500]
    data = UpdateData(torch.cat([b.x for b in window]), torch.cat([b.y for b in window]), mx, my)
    return to_numpy(harness.build_model().state_dict()), data


def run_mode(mode: str, tmp: Path, jobs: int, epochs: int) -> dict[str, Any]:
    workers = 0 if mode == "in-process" else int(mode.rsplit("-", 1)[1])
    cfg = config(tmp, workers, epochs, standing=mode.startswith("standing"))
    spec = {"spec": HARNESS["spec"], "options": HARNESS["options"]}
    storage = tmp / mode
    updater: Updater | StandingTrainer = (
        StandingTrainer(cfg, spec, storage) if mode.startswith("standing") else Updater(cfg, spec, storage)
    )
    weights, data = update_inputs()
    data_ref = ray.put(data)
    updater.start()
    rows: list[dict[str, Any]] = []
    try:
        for version in range(1, jobs + 1):
            t0 = time.perf_counter()
            out = updater.run(ray.put(weights), data_ref, version)
            wall = time.perf_counter() - t0
            weights = out.weights
            train = float(out.metrics["seconds"])
            rows.append({"version": version, "wall": round(wall, 3), "train": round(train, 3),
                         "overhead": round(wall - train, 3),
                         **{k: round(float(out.metrics[k]), 4) for k in ("queue_seconds", "handoff_seconds")
                            if k in out.metrics}})
            print(f"{mode:12s} job {version}: wall {wall:7.3f} s  train {train:6.3f} s  "
                  f"overhead {wall - train:6.3f} s", flush=True)
    finally:
        updater.shutdown()
    later = rows[1:] or rows
    result: dict[str, Any] = {
        "mode": mode,
        "workers": workers,
        "jobs": rows,
        "wall_median_after_first": round(statistics.median(r["wall"] for r in later), 3),
        "train_median_after_first": round(statistics.median(r["train"] for r in later), 3),
        "overhead_median_after_first": round(statistics.median(r["overhead"] for r in later), 3),
    }
    if mode.startswith("standing"):
        first = rows[0]
        result["startup_seconds"] = round(first["wall"] - first["train"], 3)  # start() was just before
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    ap.add_argument("--jobs", type=int, default=4, help="updates per mode (the first one is reported apart)")
    ap.add_argument("--epochs", type=int, default=5, help="train.epochs of each update (configs/mnist.yaml: 5)")
    ap.add_argument("--num-cpus", type=int, default=2, help="CPUs of the local Ray cluster")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "trainer.json")
    ap.add_argument("--overwrite", action="store_true", help="let --out replace an existing file")
    args = ap.parse_args(argv)
    if args.out.exists() and not args.overwrite:
        print(f"error: {args.out} exists: pass --overwrite to replace it, or --out another file", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False, namespace="raydrift",
             log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    results: dict[str, Any] = {"cpus": os.cpu_count(), "ray_cpus": args.num_cpus, "epochs": args.epochs,
                               "loadavg_before": [round(v, 2) for v in os.getloadavg()], "modes": {}}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for mode in args.modes:
                results["modes"][mode] = run_mode(mode, Path(tmp), args.jobs, args.epochs)
    finally:
        ray.shutdown()
    results["loadavg_after"] = [round(v, 2) for v in os.getloadavg()]
    base = results["modes"].get("in-process")
    if base:
        for m in results["modes"].values():
            m["wall_ratio_to_in_process"] = round(m["wall_median_after_first"] / base["wall_median_after_first"], 3)
            m["overhead_minus_in_process"] = round(
                m["overhead_median_after_first"] - base["overhead_median_after_first"], 3
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\n{'mode':12s} {'wall s':>8s} {'train s':>8s} {'overhead s':>10s} {'x in-proc':>9s} {'start-up s':>10s}")
    for m in results["modes"].values():
        print(f"{m['mode']:12s} {m['wall_median_after_first']:8.3f} {m['train_median_after_first']:8.3f} "
              f"{m['overhead_median_after_first']:10.3f} {m.get('wall_ratio_to_in_process', float('nan')):9.3f} "
              f"{m.get('startup_seconds', float('nan')):10.3f}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
