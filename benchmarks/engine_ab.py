"""The detection engine's own cost per batch: this checkout's ``DetectionEngine`` against another git
revision's, alternated in one process on the throughput stream of ``benchmarks/detectors.py``.

The other revision's ``raydrift/detection/engine.py`` (``git show REF:...``, this repository's own source)
is loaded as a second module; everything else (detectors, config) is this checkout's, so the ratio
measures the engine's per-batch work alone. Each repetition runs the old then the new engine over the
same 200,000 per-sample 0/1 values (batches of 64, error 0.05 then 0.3), resuming after each event as
``--throughput`` does; the events and the counters of the two must be identical (else it stops). It
prints, per detector, after one untimed run of each, the median time per batch of each, the median of the per-repetition ratios
new / old (measured in alternation, it moves less with the load of a shared machine than the rates
do) and the ratio of the two engines' fastest repetitions (the least disturbed by other jobs).

Usage::

    python benchmarks/engine_ab.py --against 5c9a942 --reps 7
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from detectors import THROUGHPUT_DETECTORS, _throughput_stream  # noqa: E402

import raydrift.detection.engine as current  # noqa: E402
from raydrift.config import DriftDetectionConfig  # noqa: E402
from raydrift.detection import make_detector  # noqa: E402

ENGINE = "raydrift/detection/engine.py"


def load_engine(ref: str) -> ModuleType:
    """``raydrift/detection/engine.py`` at git revision ``ref`` of this repository, as a module."""
    root = Path(__file__).resolve().parents[1]
    source = subprocess.run(
        ["git", "-C", str(root), "show", f"{ref}:{ENGINE}"], check=True, capture_output=True, text=True
    ).stdout
    name = "raydrift.detection._engine_at_ref"
    spec = importlib.util.spec_from_loader(name, loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    exec(compile(source, f"{ref}:{ENGINE}", "exec"), module.__dict__)  # noqa: S102 - the repo's own source
    return module


def run(module: ModuleType, cfg: DriftDetectionConfig, results: list[Any]) -> tuple[float, list[str], dict[str, int]]:
    """Seconds of ``ingest`` over ``results`` (resuming after each event), the events, the counters."""
    engine = module.DetectionEngine(cfg, metric="accuracy", higher_is_better=True)
    events = []
    t0 = time.perf_counter()
    for r in results:
        out = engine.ingest(r)
        if out.events:
            events.append(repr(out.events[0]))
            engine.resume_after_update(out.events[0].batch_id + 1, 0)
    return time.perf_counter() - t0, events, engine.stats


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--against", required=True, help="the git revision whose engine is the baseline")
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--samples", type=int, default=200_000)
    args = ap.parse_args(argv)
    old = load_engine(args.against)
    results, _ = _throughput_stream(args.samples, seed=0)
    print(f"engine at {args.against} (old) against this checkout's (new); {len(results)} batches of 64, "
          f"alternated {args.reps} times; medians")
    print("| detector | old (us/batch) | new (us/batch) | new / old | new / old, fastest reps | events |")
    print("|---|---|---|---|---|---|")
    for label, name, params in THROUGHPUT_DETECTORS:
        direction = "any" if make_detector(name, params).two_sided else "degrade"
        cfg = DriftDetectionConfig(detector=name, params=params, direction=direction)
        t_old, t_new = [], []
        run(old, cfg, results), run(current, cfg, results)  # warm-up, not timed
        for _ in range(args.reps):
            a, ev_old, st_old = run(old, cfg, results)
            b, ev_new, st_new = run(current, cfg, results)
            if ev_old != ev_new or st_old != st_new:
                print(f"{label}: the two engines differ:\n{ev_old}\n{ev_new}\n{st_old}\n{st_new}", file=sys.stderr)
                return 1
            t_old.append(a)
            t_new.append(b)
        per = 1e6 / len(results)
        ratio = float(np.median(np.array(t_new) / np.array(t_old)))
        fastest = min(t_new) / min(t_old)
        print(
            f"| {label} | {np.median(t_old) * per:.1f} | {np.median(t_new) * per:.1f} | {ratio:.2f} | "
            f"{fastest:.2f} | {len(ev_new)} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
