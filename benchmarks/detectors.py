"""Drift-detector benchmark on River's synthetic concept-drift streams.

Each stream is one of River's generators (SEA, Agrawal, STAGGER, RandomRBFDrift, Hyperplane) switching
concept once, abruptly (``width=1``) or gradually (``width=--width``), at sample ``--change``, built
with :class:`river.datasets.synth.ConceptDriftStream`. A *fixed* model (a Hoeffding tree trained on
``--train`` samples of the first concept, never updated) labels the stream; its per-sample correctness
(1 right, 0 wrong) is what raydrift monitors. Each detector runs inside
:class:`raydrift.detection.DetectionEngine` with the config defaults (``direction: degrade``,
``warmup_batches: 5``, ``cooldown_batches: 3``; batches of 64) at ``sample`` granularity and at the
``interval`` aggregation (5 batches = 320 samples per value). On an alarm the engine resumes at the
next batch as after an update (the model stays the same). The label-free detectors (``mmd``, ``ks``)
run on the raw input features (``label_free.use: instead``), on the first ``--label-free-seeds`` seeds
(they cost ~0.25 ms per sample).

Per detector, over every stream: mean detection delay (samples from the change's start to the first
alarm within the tolerance window), false alarms per 10,000 samples (alarms before the change, over the
stationary samples), missed changes (no alarm within the tolerance window: ``--tolerance`` samples for
abrupt changes, ``width + --tolerance`` for gradual ones, whose start is ``change - width / 2``), and
F1 (a true positive is the first alarm in the window; every other alarm is a false positive; a miss is
a false negative). The ``periodic`` and ``never`` baselines are printed in every table.

Usage::

    python benchmarks/detectors.py --quick       # 2 generators, 2 seeds, short streams: ~2.5 minutes
    python benchmarks/detectors.py               # 5 generators x abrupt/gradual x 5 seeds
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from raydrift.config import DriftDetectionConfig
from raydrift.detection import BatchResult, DetectionEngine

BS = 64
INTERVAL = 5
GENERATORS = ("sea", "agrawal", "stagger", "rbf", "hyperplane")

# (label, registry name, params, granularities). Defaults everywhere, plus the few interval-tuned
# settings that show what the interval aggregation needs (documented in docs/drift_detectors.md).
SAMPLE_DETECTORS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("adwin (default)", "adwin", {}),
    ("adwin clock=1", "adwin", {"clock": 1}),
    ("page_hinkley", "page_hinkley", {}),
    ("ddm", "ddm", {}),
    ("eddm", "eddm", {}),
    ("fhddm", "fhddm", {}),
    ("hddm_a", "hddm_a", {}),
    ("hddm_w", "hddm_w", {}),
    ("cusum", "cusum", {}),
    ("ewma", "ewma", {}),
    ("ensemble majority(adwin, page_hinkley, hddm_a)", "ensemble", {}),
    ("ensemble any(adwin, hddm_a)", "ensemble", {"members": ["adwin", "hddm_a"], "voting": "any"}),
    ("periodic (every 5000)", "periodic", {"period": 5000}),
    ("never", "never", {}),
)
INTERVAL_DETECTORS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("adwin (default)", "adwin", {}),
    ("adwin clock=1", "adwin", {"clock": 1}),
    ("page_hinkley", "page_hinkley", {}),
    ("page_hinkley threshold=0.3 min_instances=5", "page_hinkley", {"threshold": 0.3, "min_instances": 5}),
    ("hddm_a", "hddm_a", {}),
    ("kswin", "kswin", {}),
    ("cusum", "cusum", {}),
    (
        "cusum min_instances=10 threshold=5",
        "cusum",
        {"min_instances": 10, "threshold": 5.0, "warning_threshold": 3.0},
    ),
    ("ewma", "ewma", {}),
    (
        "ewma min_instances=10 smoothing=0.2 threshold=3.5",
        "ewma",
        {"min_instances": 10, "smoothing": 0.2, "threshold": 3.5, "warning_threshold": 2.5},
    ),
    ("periodic (every 16 intervals)", "periodic", {"period": 16}),
    ("never", "never", {}),
)
LABEL_FREE_DETECTORS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("mmd (features)", "mmd", {}),
    ("ks (features, bonferroni)", "ks", {}),
)


@dataclass
class Stream:
    generator: str
    kind: str  # abrupt | gradual
    seed: int
    start: int  # first sample of the change
    tolerance: int
    results: list[BatchResult]
    error_before: float
    error_after: float


@dataclass
class Cell:
    delays: list[int] = field(default_factory=list)
    misses: int = 0
    tp: int = 0
    fp: int = 0
    false_alarms_before: int = 0
    stationary_samples: int = 0
    seconds: float = 0.0
    per_stream: list[tuple[str, int | None]] = field(default_factory=list)  # (generator, delay or None)


def _generator(name: str, concept: int, seed: int) -> Any:
    from river.datasets import synth

    if name == "sea":
        return synth.SEA(variant=(0, 3)[concept], seed=seed)
    if name == "agrawal":
        return synth.Agrawal(classification_function=(0, 2)[concept], seed=seed)
    if name == "stagger":
        return synth.STAGGER(classification_function=(0, 1)[concept], seed=seed)
    if name == "rbf":
        return synth.RandomRBFDrift(
            seed_model=100 * seed + concept, seed_sample=seed, n_centroids=20, n_drift_centroids=0
        )
    if name == "hyperplane":
        return synth.Hyperplane(seed=100 * seed + concept, n_features=10, mag_change=0.0)
    raise ValueError(name)


def make_stream(
    generator: str, kind: str, seed: int, n: int, change: int, width: int, train: int, tol: int
) -> Stream:
    from river import tree

    model = tree.HoeffdingTreeClassifier(grace_period=50)
    for x, y in _generator(generator, 0, seed + 1000).take(train):
        model.learn_one(x, y)
    # ConceptDriftStream's mixing (new concept with probability sigmoid(4 (t - position) / width)),
    # written out because River's overflows for width = 1 (an abrupt change)
    w = 1 if kind == "abrupt" else width
    rng = np.random.default_rng(seed)
    old, new = iter(_generator(generator, 0, seed)), iter(_generator(generator, 1, seed + 500))
    pick_new = rng.random(n) < 1.0 / (1.0 + np.exp(np.clip(-4.0 * (np.arange(n) - change) / w, -50, 50)))
    if kind == "abrupt":
        pick_new = np.arange(n) >= change
    correct = np.empty(n, dtype=np.float32)
    feats: list[list[float]] = []
    for i in range(n):
        x, y = next(new) if pick_new[i] else next(old)
        correct[i] = float(model.predict_one(x) == y)
        feats.append([float(v) for v in x.values()])
    features = np.asarray(feats, dtype=np.float32)
    start = change if kind == "abrupt" else change - width // 2
    # the fixed model's error is measured outside the transition
    results = []
    for b in range(n // BS):
        sl = slice(b * BS, (b + 1) * BS)
        v = correct[sl]
        results.append(
            BatchResult(
                b, int((b + 1) * BS > start), 0, v, {"accuracy": float(v.mean())}, features=features[sl]
            )
        )
    return Stream(
        generator,
        kind,
        seed,
        start,
        tol + (0 if kind == "abrupt" else width),
        results,
        1.0 - float(correct[:start].mean()),
        1.0 - float(correct[start + w :].mean()),
    )


def run_engine(cfg: DriftDetectionConfig, stream: Stream) -> list[int]:
    """0-based sample positions of every alarm, the engine resuming after each as after an update."""
    engine = DetectionEngine(cfg, metric="accuracy", higher_is_better=True, seed=stream.seed)
    alarms: list[int] = []
    version, b, results = 0, 0, stream.results
    while b < len(results):
        out = engine.ingest(results[b])
        b += 1
        if out.events:
            ev = out.events[0]
            alarms.append(ev.sample_index - 1)
            version += 1
            engine.resume_after_update(ev.batch_id + 1, version)
            results = [
                BatchResult(r.batch_id, r.regime, version, r.values, r.metrics, features=r.features)
                if i >= b
                else r
                for i, r in enumerate(results)
            ]
            b = ev.batch_id + 1
    return alarms


def score(cell: Cell, stream: Stream, alarms: list[int]) -> None:
    before = [a for a in alarms if a < stream.start]
    window = [a for a in alarms if stream.start <= a <= stream.start + stream.tolerance]
    cell.false_alarms_before += len(before)
    cell.stationary_samples += stream.start
    if window:
        cell.tp += 1
        cell.delays.append(window[0] - stream.start)
        cell.fp += len(alarms) - 1
    else:
        cell.misses += 1
        cell.fp += len(alarms)
    cell.per_stream.append((stream.generator, window[0] - stream.start if window else None))


def _job(args: tuple[str, str, dict[str, Any], str, str, list[Stream]]) -> tuple[str, str, str, Cell]:
    import torch

    torch.set_num_threads(1)
    label, name, params, granularity, kind, streams = args
    if granularity == "label-free":
        cfg = DriftDetectionConfig(
            label_free={"signal": "features", "detector": name, "params": params, "use": "instead"}
        )
    else:
        cfg = DriftDetectionConfig(detector=name, params=params, granularity=granularity, interval=INTERVAL)
    cell = Cell()
    t0 = time.perf_counter()
    for s in streams:
        score(cell, s, run_engine(cfg, s))
    cell.seconds = time.perf_counter() - t0
    return label, granularity, kind, cell


def _stream_job(a: tuple) -> Stream:
    return make_stream(*a)


def row(label: str, granularity: str, kind: str, c: Cell, n_streams: int) -> str:
    delay = f"{np.mean(c.delays):.0f}" if c.delays else "-"
    rng_ = f"{min(c.delays)}-{max(c.delays)}" if c.delays else "-"
    fa = 1e4 * c.false_alarms_before / max(1, c.stationary_samples)
    f1 = 2 * c.tp / max(1, 2 * c.tp + c.fp + c.misses)
    return (
        f"| {label} | {granularity} | {kind} | {c.tp}/{n_streams} | {delay} | {rng_} | {fa:.2f} | {c.misses} | "
        f"{f1:.2f} | {c.seconds:.1f} |"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 generators, 2 seeds, 8,000-sample streams")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--generators", nargs="+", default=list(GENERATORS), choices=GENERATORS)
    ap.add_argument("--n", type=int, default=15000, help="samples per stream")
    ap.add_argument("--change", type=int, default=10000, help="sample where the change is centred")
    ap.add_argument("--width", type=int, default=2000, help="width of a gradual change")
    ap.add_argument("--train", type=int, default=3000, help="training samples of the fixed model")
    ap.add_argument("--tolerance", type=int, default=1000, help="detection window after the change (samples)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--no-label-free", action="store_true")
    ap.add_argument(
        "--label-free-seeds", type=int, default=2, help="seeds for the (slow) label-free detectors"
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.generators, args.n, args.change = 2, ["sea", "rbf"], 8000, 5000
    t0 = time.perf_counter()
    specs = [
        (g, k, s, args.n, args.change, args.width, args.train, args.tolerance)
        for g in args.generators
        for k in ("abrupt", "gradual")
        for s in range(args.seeds)
    ]
    with mp.get_context("fork").Pool(args.workers) as pool:
        streams = pool.map(_stream_job, specs)
        print(f"# {len(streams)} streams in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
        print("| generator | change | seeds | fixed model's error before -> after |\n|---|---|---|---|")
        for g in args.generators:
            for k in ("abrupt", "gradual"):
                ss = [s for s in streams if s.generator == g and s.kind == k]
                eb = np.mean([s.error_before for s in ss])
                ea = np.mean([s.error_after for s in ss])
                print(f"| {g} | {k} | {len(ss)} | {eb:.3f} -> {ea:.3f} |")
        jobs = []
        for kind in ("abrupt", "gradual"):
            ss = [s for s in streams if s.kind == kind]
            jobs += [(lab, n, p, "sample", kind, ss) for lab, n, p in SAMPLE_DETECTORS]
            jobs += [(lab, n, p, "interval", kind, ss) for lab, n, p in INTERVAL_DETECTORS]
            if not args.no_label_free:
                lf = [s for s in ss if s.seed < args.label_free_seeds]
                jobs += [(lab, n, p, "label-free", kind, lf) for lab, n, p in LABEL_FREE_DETECTORS]
        out = pool.map(_job, jobs, chunksize=1)
    print()
    print(
        "| detector | level | change | detected | mean delay (samples) | delay range | false alarms / 10k | "
        "misses | F1 | run time (s) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    n_per_kind = len(streams) // 2
    for label, gran, kind, cell in out:
        print(row(label, gran, kind, cell, len(cell.per_stream)))
    if not args.no_label_free:
        print()
        print("Label-free detectors per generator (abrupt + gradual):")
        print("| detector | generator | detected | mean delay (samples) |\n|---|---|---|---|")
        for lab, _, _ in LABEL_FREE_DETECTORS:
            for g in args.generators:
                per = [
                    d
                    for label, gran, _, c in out
                    if label == lab and gran == "label-free"
                    for gg, d in c.per_stream
                    if gg == g
                ]
                found = [d for d in per if d is not None]
                delay = f"{np.mean(found):.0f}" if found else "-"
                print(f"| {lab} | {g} | {len(found)}/{len(per)} | {delay} |")
    default = next(c for lab, g, k, c in out if lab == "adwin (default)" and g == "sample" and k == "abrupt")
    fa = 1e4 * default.false_alarms_before / max(1, default.stationary_samples)
    mean_delay = float(np.mean(default.delays)) if default.delays else float("inf")
    within = sum(d <= 200 for d in default.delays)
    print(
        f"\nTarget (default setting: adwin at sample granularity, abrupt changes): mean delay {mean_delay:.0f} "
        f"samples, {within}/{n_per_kind} detected within 200 samples, {fa:.2f} false alarms per 10k "
        f"(target: ~200 samples, <= 0.2 per 10k)"
    )
    print(f"# total {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
