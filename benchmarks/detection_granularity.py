"""Which granularity should the drift detector see: per-sample values, batch means or interval means?

Runs :class:`raydrift.detection.DetectionEngine` on synthetic Bernoulli correctness streams (1.0 where
the model is right, 0.0 where it is wrong) whose accuracy changes abruptly after ``--change`` samples,
with each detector at River's default parameters and each granularity, and prints a markdown table:
how many seeds detected the change, the mean detection delay in samples (alarm sample index minus the
change point, over the seeds that detected it), misses (no alarm within ``--after`` samples of the
change) and false alarms before the change (in all seeds together).

The engine runs with the config defaults (``direction: degrade``, ``warmup_batches: 5``,
``cooldown_batches: 3``, ``reset_after_update: true``). A false alarm is handled as the coordinator
would: the engine resumes at the next batch (with a new model version; the synthetic stream does not
change) and the run goes on.

Usage::

    python benchmarks/detection_granularity.py            # 5 seeds, about 30 s (KSWIN is most of it)
    python benchmarks/detection_granularity.py --seeds 10 --after 20000
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from raydrift.config import DriftDetectionConfig
from raydrift.detection import BatchResult, DetectionEngine

GRANULARITIES = ("sample", "batch", "interval")

# (label, registry name, params): River defaults, plus ADWIN testing after every value (clock=1) to
# show how much of its delay is the clock.
DETECTORS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("adwin (River defaults)", "adwin", {"delta": 0.002, "clock": 32}),
    ("adwin clock=1", "adwin", {"delta": 0.002, "clock": 1}),
    ("page_hinkley", "page_hinkley", {}),
    ("kswin", "kswin", {}),
)


@dataclass
class Cell:
    """Results of one (scenario, detector, granularity) over all seeds."""

    delays: list[int] = field(default_factory=list)
    misses: int = 0
    false_alarms: int = 0
    seconds: float = 0.0


def make_stream(
    acc_before: float, acc_after: float, change: int, after: int, batch_size: int, seed: int
) -> list[BatchResult]:
    """Batches of per-sample correctness; accuracy switches at sample ``change`` (0-based)."""
    rng = np.random.default_rng(seed)
    n = change + after
    p = np.where(np.arange(n) < change, acc_before, acc_after)
    values = (rng.random(n) < p).astype(np.float32)
    out = []
    for b, start in enumerate(range(0, n, batch_size)):
        v = values[start : start + batch_size]
        regime = int(start + len(v) > change)  # the regime of the batch's last sample
        out.append(BatchResult(b, regime, 0, v, {"accuracy": float(v.mean())}))
    return out


def run_one(
    cfg: DriftDetectionConfig, stream: list[BatchResult], change: int, seed: int
) -> tuple[int | None, int]:
    """(delay in samples or None, false alarms before the change) of one run."""
    engine = DetectionEngine(cfg, metric="accuracy", higher_is_better=True, seed=seed)
    false_alarms = 0
    version = 0
    b = 0
    while b < len(stream):
        r = stream[b]
        out = engine.ingest(BatchResult(r.batch_id, r.regime, version, r.values, r.metrics))
        b += 1
        for ev in out.events:
            if ev.sample_index > change:
                return ev.sample_index - change, false_alarms
            false_alarms += 1
            version += 1
            engine.resume_after_update(ev.batch_id + 1, version)
            b = ev.batch_id + 1
    return None, false_alarms


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--seeds", type=int, default=5, help="seeds per cell (default 5)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--interval", type=int, default=5, help="batches per interval (granularity 'interval')")
    ap.add_argument("--change", type=int, default=3000, help="samples before the change")
    ap.add_argument("--after", type=int, default=6000, help="samples after the change (a miss beyond)")
    ap.add_argument(
        "--scenarios",
        nargs="+",
        default=["0.97:0.6", "0.97:0.85"],
        help="accuracy before:after, e.g. 0.97:0.6",
    )
    ap.add_argument("--detectors", nargs="+", default=[d[0] for d in DETECTORS], help="labels to run")
    ap.add_argument("--progress", action="store_true", help="print each cell's time to stderr")
    args = ap.parse_args(argv)

    detectors = [d for d in DETECTORS if d[0] in args.detectors]
    for _, name, params in detectors:  # import River (and scipy) before anything is timed
        DetectionEngine(DriftDetectionConfig(detector=name, params=params), "accuracy", True)
    t_start = time.perf_counter()
    rows = []
    for scen in args.scenarios:
        a0, a1 = (float(x) for x in scen.split(":"))
        streams = [
            make_stream(a0, a1, args.change, args.after, args.batch_size, s) for s in range(args.seeds)
        ]
        for label, name, params in detectors:
            for gran in GRANULARITIES:
                cfg = DriftDetectionConfig(
                    detector=name, params=params, granularity=gran, interval=args.interval
                )
                cell = Cell()
                t0 = time.perf_counter()
                for seed, stream in enumerate(streams):
                    delay, fa = run_one(cfg, stream, args.change, seed)
                    cell.false_alarms += fa
                    if delay is None:
                        cell.misses += 1
                    else:
                        cell.delays.append(delay)
                cell.seconds = time.perf_counter() - t0
                rows.append((scen.replace(":", " -> "), label, gran, cell))
                if args.progress:
                    print(f"  {scen} {label:<14} {gran:<8} {cell.seconds:6.2f} s", file=sys.stderr)

    print(
        f"Bernoulli correctness stream, batch size {args.batch_size}, change after {args.change} samples, "
        f"{args.seeds} seeds, miss = no alarm within {args.after} samples, interval = {args.interval} batches\n"
    )
    print(
        "| accuracy | detector | granularity | detected | mean delay (samples) | delay range | misses "
        "| false alarms before change | run time (s, all seeds) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for scen, label, gran, cell in rows:
        n = len(cell.delays)
        mean = f"{np.mean(cell.delays):.0f}" if n else "-"
        rng = f"{min(cell.delays)}-{max(cell.delays)}" if n else "-"
        print(
            f"| {scen} | {label} | {gran} | {n}/{args.seeds} | {mean} | {rng} | {cell.misses} "
            f"| {cell.false_alarms} | {cell.seconds:.2f} |"
        )
    print(f"\n({time.perf_counter() - t_start:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
