"""Drift-detector benchmark on River's synthetic concept-drift streams.

Each stream is one of River's generators (SEA, Agrawal, STAGGER, RandomRBFDrift, Hyperplane) switching
concept once, abruptly (``width=1``) or gradually (``width=--width``), at sample ``--change``, built
with :class:`river.datasets.synth.ConceptDriftStream`'s mixing. A *fixed* model (a Hoeffding tree
trained on ``--train`` samples of the first concept, never updated) labels the stream; its per-sample
correctness (1 right, 0 wrong) is what raydrift monitors. Each detector runs inside
:class:`raydrift.detection.DetectionEngine` with the config defaults (``direction: degrade``,
``warmup_batches: 5``, ``cooldown_batches: 3``; batches of 64) at ``sample`` granularity and at the
``interval`` aggregation (5 batches = 320 samples per value). On an alarm the engine resumes at the
next batch as after an update (the model stays the same). The label-free detectors (``mmd``, ``ks``)
run on the raw input features (``label_free.use: instead``), on the first ``--label-free-seeds`` seeds
(they cost ~0.25 ms per sample).

Per detector, over every stream: mean detection delay (samples from the change's start to the first
alarm within the tolerance window), false alarms per 10,000 samples (alarms in the stationary stretch
before the change, over those samples), missed changes (no alarm within the tolerance window), and F1
(a true positive is the first alarm in the window; every other alarm is a false positive; a miss is a
false negative). An abrupt change starts at ``--change`` and its window is ``--tolerance`` samples. A
gradual change mixes in the new concept with probability ``sigmoid(4 (t - change) / width)``: it starts
where that reaches 1% (``change - 1.15 width``; before it the stream is stationary) and its window runs
to where it reaches 99% plus ``--tolerance``. The ``periodic`` and ``never`` baselines are printed in
every table.

The *oracle* (``--no-oracle`` skips it): for every abrupt stream, the CUSUM that knows the fixed model's
error rate before (p0) and after (p1) the change, with its threshold set so that it raises 0.2 false
alarms per 10,000 stationary samples, restarting after each. It is the optimal detector of that change
(Moustakides 1986), so its delay says what any detector can achieve at that false-alarm rate: its mean
delay and its probability of detecting within ``--horizon`` samples are computed exactly (a Markov
chain on the CUSUM statistic, started from its in-control steady state), not simulated.

``--stationary N`` adds one N-sample stream without a change per generator and seed (seeds from 100)
and counts the false alarms of every sample-level detector there: a longer false-alarm measurement.

Usage::

    python benchmarks/detectors.py --quick       # 2 generators, 2 seeds, short streams: ~2.5 minutes
    python benchmarks/detectors.py               # 5 generators x abrupt/gradual x 5 seeds
    python benchmarks/detectors.py --kinds abrupt --levels sample --only adwin --stationary 40000
    python benchmarks/detectors.py --throughput  # the engine vs the bare detector, vs an MNIST monitor

``--throughput`` feeds 200,000 per-sample 0/1 values (batches of 64, one worsening in the middle) to
each River-backed detector twice in the same process: bare (River's ``update`` and ``drift_detected``
over one Python list) and through :class:`raydrift.detection.DetectionEngine` (``ingest`` per
``BatchResult``, resuming after each event), alternated ``--reps`` times; it prints the ratio of their
times (median) and both rates, then the default config's rate against one MNIST monitor's plain
evaluation loop measured in the same process. ``--json`` never replaces a file without ``--overwrite``.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from raydrift.config import DriftDetectionConfig
from raydrift.detection import BatchResult, DetectionEngine

BS = 64
INTERVAL = 5
GENERATORS = ("sea", "agrawal", "stagger", "rbf", "hyperplane")
KINDS = ("abrupt", "gradual")
LEVELS = ("sample", "interval", "label-free")
HORIZON = 200  # the target: each abrupt change within about 200 samples ...
TARGET_FA = 0.2  # ... at no more than 0.2 false alarms per 10,000 samples
MIX_EDGE = math.log(99.0) / 4.0  # a gradual change's new-concept share is 1% at change - MIX_EDGE * width

DEFAULT = "adwin (default: delta=0.05 clock=1)"
OLD_DEFAULT = "adwin delta=0.002 clock=32 (River's defaults, the old default)"
BASELINES = ("periodic", "never")

# (label, registry name, params). Defaults everywhere, plus the settings that show a trade-off and the
# few interval-tuned settings that show what the interval aggregation needs (docs/drift_detectors.md).
SAMPLE_DETECTORS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    (DEFAULT, "adwin", {}),
    (OLD_DEFAULT, "adwin", {"delta": 0.002, "clock": 32}),
    ("adwin delta=0.002 clock=1", "adwin", {"delta": 0.002, "clock": 1}),
    ("adwin delta=0.2 clock=1", "adwin", {"delta": 0.2}),
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
    (DEFAULT, "adwin", {}),
    (OLD_DEFAULT, "adwin", {"delta": 0.002, "clock": 32}),
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
    kind: str  # abrupt | gradual | stationary
    seed: int
    start: int  # first sample of the change; everything before it is stationary
    tolerance: int  # detection window after ``start``
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
    # (generator, seed, delay or None, false alarms before the change, stationary samples)
    per_stream: list[tuple[str, int, int | None, int, int]] = field(default_factory=list)

    def fa_per_10k(self) -> float:
        return 1e4 * self.false_alarms_before / max(1, self.stationary_samples)


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
    """One stream; ``kind: stationary`` never changes concept (``change`` is ignored)."""
    from river import tree

    model = tree.HoeffdingTreeClassifier(grace_period=50)
    for x, y in _generator(generator, 0, seed + 1000).take(train):
        model.learn_one(x, y)
    # ConceptDriftStream's mixing (new concept with probability sigmoid(4 (t - position) / width)),
    # written out because River's overflows for width = 1 (an abrupt change)
    rng = np.random.default_rng(seed)
    old, new = iter(_generator(generator, 0, seed)), iter(_generator(generator, 1, seed + 500))
    t = np.arange(n)
    if kind == "abrupt":
        pick_new = t >= change
        start, end = change, change + 1
    elif kind == "gradual":
        pick_new = rng.random(n) < 1.0 / (1.0 + np.exp(np.clip(-4.0 * (t - change) / width, -50, 50)))
        edge = math.ceil(MIX_EDGE * width)  # new-concept share 1% at change - edge, 99% at change + edge
        start, end = change - edge, change + edge
    else:
        pick_new = np.zeros(n, dtype=bool)
        start, end = n, n
    correct = np.empty(n, dtype=np.float32)
    feats: list[list[float]] = []
    for i in range(n):
        x, y = next(new) if pick_new[i] else next(old)
        correct[i] = float(model.predict_one(x) == y)
        feats.append([float(v) for v in x.values()])
    features = np.asarray(feats, dtype=np.float32)
    results = []
    for b in range(n // BS):
        sl = slice(b * BS, (b + 1) * BS)
        v = correct[sl]
        results.append(
            BatchResult(
                b, int((b + 1) * BS > start), 0, v, {"accuracy": float(v.mean())}, features=features[sl]
            )
        )
    # the fixed model's error is measured outside the transition
    after = 1.0 - float(correct[end:].mean()) if end < n else float("nan")
    return Stream(
        generator, kind, seed, start, (end - start) + tol, results, 1.0 - float(correct[:start].mean()), after
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
    quiet = min(stream.start, len(stream.results) * BS)
    cell.false_alarms_before += len(before)
    cell.stationary_samples += quiet
    if stream.kind == "stationary":
        cell.per_stream.append((stream.generator, stream.seed, None, len(before), quiet))
        return
    if window:
        cell.tp += 1
        cell.delays.append(window[0] - stream.start)
        cell.fp += len(alarms) - 1
    else:
        cell.misses += 1
        cell.fp += len(alarms)
    delay = window[0] - stream.start if window else None
    cell.per_stream.append((stream.generator, stream.seed, delay, len(before), quiet))


# --- the oracle: CUSUM with the true error rates -------------------------------------------------------


def _cusum_chain(top: int, up: int, down: int, p: float) -> Any:
    """Sub-stochastic transition matrix of the discretized CUSUM on states 0..top (alarm: leaves)."""
    import scipy.sparse as sp

    i = np.arange(top + 1)
    stay = i + up <= top
    rows = np.concatenate([i[stay], i])
    cols = np.concatenate([i[stay] + up, np.maximum(0, i - down)])
    vals = np.concatenate([np.full(int(stay.sum()), p), np.full(top + 1, 1.0 - p)])
    return sp.csr_matrix((vals, (rows, cols)), shape=(top + 1, top + 1))


def oracle_cusum(
    p0: float, p1: float, fa_per_10k: float = TARGET_FA, horizon: int = HORIZON, steps_per_down: int = 50
) -> dict[str, float] | None:
    """The optimal detector of a change of the error rate from ``p0`` to ``p1`` at a false-alarm rate.

    Bernoulli CUSUM on the log-likelihood ratio (``+log(p1/p0)`` per error, ``+log((1-p1)/(1-p0))``
    per correct prediction), restarted after each alarm, threshold the smallest whose in-control
    alarm rate is at most ``fa_per_10k`` per 10,000 samples. Exact up to rounding the error step to
    a multiple of ``1 / steps_per_down`` of the correct step: the statistic is a Markov chain on a
    lattice, the alarm rate is one over the expected cycle length from 0, the change meets the
    chain in its in-control steady state.

    Returns
    -------
    dict or None
        ``mean_delay`` (samples after the first changed one, as the benchmark counts delays),
        ``p_within`` (probability of a delay <= ``horizon``), ``threshold`` (in log-likelihood
        units), ``fa_per_10k`` (its exact in-control rate); None when ``p1 <= p0`` (the error does
        not grow: not a drift under ``direction: degrade``).
    """
    import scipy.sparse as sp
    from scipy.sparse.linalg import spsolve

    if not p1 > p0:
        return None
    step_up, step_down = math.log(p1 / p0), -math.log((1.0 - p1) / (1.0 - p0))
    unit = step_down / steps_per_down
    up = max(1, round(step_up / unit))
    arl_target = 1e4 / fa_per_10k

    def visits(top: int) -> np.ndarray:  # expected visits of each state in one cycle from state 0
        a = (sp.identity(top + 1) - _cusum_chain(top, up, steps_per_down, p0)).T.tocsc()
        e0 = np.zeros(top + 1)
        e0[0] = 1.0
        return np.asarray(spsolve(a, e0))

    lo, hi = 0, max(1, up)
    while visits(hi).sum() < arl_target:
        lo, hi = hi, 2 * hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if visits(mid).sum() >= arl_target else (mid, hi)
    v = visits(hi)
    steady = v / v.sum()
    p1_chain = _cusum_chain(hi, up, steps_per_down, p1)
    run_length = spsolve((sp.identity(hi + 1) - p1_chain).tocsc(), np.ones(hi + 1))
    alive, step_t = steady.copy(), p1_chain.T.tocsr()
    for _ in range(horizon + 1):  # delay d <= horizon: alarm within the first horizon + 1 samples
        alive = step_t @ alive
    return {
        "mean_delay": float(steady @ run_length) - 1.0,
        "p_within": float(1.0 - alive.sum()),
        "threshold": hi * unit,
        "fa_per_10k": 1e4 / float(v.sum()),
    }


def _oracle_job(s: Stream) -> dict[str, Any]:
    # an error rate of 0 before the change (Agrawal) is floored at half an error in the stretch
    p0 = max(s.error_before, 0.5 / s.start)
    res = oracle_cusum(p0, s.error_after)
    return {
        "generator": s.generator,
        "seed": s.seed,
        "p0": s.error_before,
        "p1": s.error_after,
        "oracle": res,
    }


# --- running --------------------------------------------------------------------------------------------


def _config(name: str, params: dict[str, Any], level: str) -> DriftDetectionConfig:
    if level == "label-free":
        return DriftDetectionConfig(
            label_free={"signal": "features", "detector": name, "params": params, "use": "instead"}
        )
    return DriftDetectionConfig(detector=name, params=params, granularity=level, interval=INTERVAL)


def _job(args: tuple[str, str, dict[str, Any], str, str, list[Stream]]) -> tuple[str, str, str, Cell]:
    import torch

    torch.set_num_threads(1)
    label, name, params, level, kind, streams = args
    cfg = _config(name, params, level)
    cell = Cell()
    t0 = time.perf_counter()
    for s in streams:
        score(cell, s, run_engine(cfg, s))
    cell.seconds = time.perf_counter() - t0
    return label, level, kind, cell


def _stream_job(a: tuple) -> Stream:
    return make_stream(*a)


def row(label: str, level: str, kind: str, c: Cell) -> str:
    delay = f"{np.mean(c.delays):.0f}" if c.delays else "-"
    rng_ = f"{min(c.delays)}-{max(c.delays)}" if c.delays else "-"
    f1 = 2 * c.tp / max(1, 2 * c.tp + c.fp + c.misses)
    within = sum(d <= HORIZON for d in c.delays)
    return (
        f"| {label} | {level} | {kind} | {c.tp}/{len(c.per_stream)} | {within} | {delay} | {rng_} | "
        f"{c.fa_per_10k():.2f} | {c.misses} | {f1:.2f} | {c.seconds:.1f} |"
    )


def _selected(detectors: tuple[tuple[str, str, dict[str, Any]], ...], only: list[str] | None) -> list:
    if not only:
        return list(detectors)
    return [d for d in detectors if any(o in d[0] for o in only) or d[1] in BASELINES]


def _fmt(d: int | None) -> str:
    return "-" if d is None else str(d)


def print_target(
    out: list[tuple[str, str, str, Cell]], oracle: list[dict[str, Any]], generators: list[str]
) -> dict:
    """Per-generator rows of the default and the old default (abrupt, sample) and the per-stream oracle."""
    cells = {
        lab: c
        for lab, lev, k, c in out
        if lev == "sample" and k == "abrupt" and lab in (DEFAULT, OLD_DEFAULT)
    }
    if not cells:
        return {}
    print(
        "\nAbrupt changes per generator (sample level; 'within 200': detected at most 200 samples after the change):"
    )
    print(
        "| detector | generator | detected | within 200 | mean delay (samples) | delays | false alarms / 10k | misses |"
    )
    print("|---|---|---|---|---|---|---|---|")
    summary: dict[str, Any] = {}
    for lab, c in cells.items():
        for g in generators:
            per = [p for p in c.per_stream if p[0] == g]
            found = [p[2] for p in per if p[2] is not None]
            fa10k = 1e4 * sum(p[3] for p in per) / max(1, sum(p[4] for p in per))
            delay = f"{np.mean(found):.0f}" if found else "-"
            within = sum(d <= HORIZON for d in found)
            print(
                f"| {lab} | {g} | {len(found)}/{len(per)} | {within}/{len(per)} | {delay} | "
                f"{', '.join(_fmt(p[2]) for p in per)} | {fa10k:.2f} | {len(per) - len(found)} |"
            )
    if not oracle:
        return summary
    print(
        f"\nEach abrupt stream against the oracle (CUSUM knowing both error rates, {TARGET_FA} false alarms / 10k): "
        f"its mean delay and probability of a delay <= {HORIZON}; 'reachable' when that is >= 0.5."
    )
    labs = list(cells)
    print(
        f"| generator | seed | error before -> after | oracle mean delay | oracle P(<= {HORIZON}) | "
        + " | ".join(labs)
        + " |"
    )
    print("|---|---|---|---|---|" + "---|" * len(labs))
    reach = {lab: [0, 0] for lab in labs}  # within, reachable
    for o in oracle:
        r = o["oracle"]
        delays = []
        for lab in labs:
            d = next(p[2] for p in cells[lab].per_stream if (p[0], p[1]) == (o["generator"], o["seed"]))
            delays.append(d)
            if r is not None and r["p_within"] >= 0.5:
                reach[lab][1] += 1
                reach[lab][0] += int(d is not None and d <= HORIZON)
        md = "- (error does not grow)" if r is None else f"{r['mean_delay']:.0f}"
        pw = "-" if r is None else f"{r['p_within']:.2f}"
        print(
            f"| {o['generator']} | {o['seed']} | {o['p0']:.3f} -> {o['p1']:.3f} | {md} | {pw} | "
            + " | ".join(_fmt(d) for d in delays)
            + " |"
        )
    print()
    for lab in labs:
        c = cells[lab]
        within = sum(d <= HORIZON for d in c.delays)
        print(
            f"Target ({lab}): {within}/{len(c.per_stream)} abrupt changes within {HORIZON} samples, "
            f"{reach[lab][0]}/{reach[lab][1]} of those the oracle reaches within {HORIZON} with probability "
            f">= 0.5; {c.fa_per_10k():.2f} false alarms per 10k (target: <= {TARGET_FA})"
        )
        summary[lab] = {
            "within": within,
            "n": len(c.per_stream),
            "reachable_within": reach[lab][0],
            "reachable": reach[lab][1],
            "fa_per_10k": c.fa_per_10k(),
        }
    return summary


# --- throughput: the engine against the bare detector and a monitor's plain loop ------------------------

# (label, registry name, params): River-backed detectors whose bare River object can be fed directly
THROUGHPUT_DETECTORS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    (DEFAULT, "adwin", {}),
    ("adwin delta=0.002 clock=32", "adwin", {"delta": 0.002, "clock": 32}),
    ("page_hinkley", "page_hinkley", {}),
    ("hddm_a", "hddm_a", {}),
    ("hddm_w", "hddm_w", {}),
    ("ddm (warnings)", "ddm", {}),
)


@dataclass
class ThroughputRow:
    """One detector's figures: the engine and the bare River detector on the same values, same process."""

    detector: str
    samples: int
    bare_samples_per_second: float  # River's public update + drift_detected, over one Python list
    engine_samples_per_second: float  # DetectionEngine.ingest per BatchResult (default config otherwise)
    ratio: float  # engine seconds / bare seconds (median over reps; the target is <= 1.5)
    reps: list[float]
    bare_alarms: int
    engine_events: int


def _throughput_stream(n: int, seed: int) -> tuple[list[BatchResult], list[float]]:
    """Per-sample accuracy 0/1 values in batches of BS (error 0.05, 0.3 from the middle on) and the
    error indicators the detector is fed, as one list."""
    rng = np.random.default_rng(seed)
    err = (rng.random(n) < np.where(np.arange(n) < n // 2, 0.05, 0.3)).astype(np.float32)
    acc = 1.0 - err
    results = [
        BatchResult(b, 0, 0, acc[i : i + BS], {"accuracy": float(acc[i : i + BS].mean())})
        for b, i in enumerate(range(0, n - n % BS, BS))
    ]
    fed = [x for r in results for x in (1.0 - r.values.astype(np.float64)).tolist()]
    return results, fed


def _bare_seconds(river: Any, fed: list[float]) -> tuple[float, int]:
    alarms = 0
    t0 = time.perf_counter()
    for x in fed:
        river.update(x)
        if river.drift_detected:
            alarms += 1
    return time.perf_counter() - t0, alarms


def _engine_seconds(cfg: DriftDetectionConfig, results: list[BatchResult]) -> tuple[float, int]:
    engine = DetectionEngine(cfg, metric="accuracy", higher_is_better=True)
    events = 0
    t0 = time.perf_counter()
    for r in results:
        out = engine.ingest(r)
        if out.events:  # monitoring goes on with the same model: detection continues from the change
            events += 1
            engine.resume_after_update(out.events[0].batch_id + 1, 0)
    return time.perf_counter() - t0, events


def throughput_row(label: str, name: str, params: dict[str, Any], n: int, reps: int) -> ThroughputRow:
    """The engine and the bare detector alternated ``reps`` times on the same ``n`` values."""
    from raydrift.detection import make_detector

    results, fed = _throughput_stream(n, seed=0)
    # every alarm counts, as every alarm of the bare detector does; a one-sided detector keeps
    # ``degrade`` (``any`` would pair it with a twin: twice the work of the bare detector)
    direction = "any" if make_detector(name, params).two_sided else "degrade"
    cfg = DriftDetectionConfig(detector=name, params=params, direction=direction)
    ratios, bare_t, eng_t = [], [], []
    bare_alarms = events = 0
    for _ in range(reps):
        river = make_detector(name, params).river  # type: ignore[attr-defined]
        b, bare_alarms = _bare_seconds(river, fed)
        e, events = _engine_seconds(cfg, results)
        ratios.append(e / b)
        bare_t.append(b)
        eng_t.append(e)
    samples = len(fed)
    return ThroughputRow(
        detector=label,
        samples=samples,
        bare_samples_per_second=round(samples / float(np.median(bare_t))),
        engine_samples_per_second=round(samples / float(np.median(eng_t))),
        ratio=round(float(np.median(ratios)), 3),
        reps=[round(x, 3) for x in ratios],
        bare_alarms=bare_alarms,
        engine_events=events,
    )


def default_engine_rate(n: int, reps: int) -> float:
    """Samples/s of the engine with the default config (``direction: degrade``), median of ``reps``."""
    results, fed = _throughput_stream(n, seed=1)
    secs = [_engine_seconds(DriftDetectionConfig(), results)[0] for _ in range(reps)]
    return len(fed) / float(np.median(secs))


def mnist_plain_rate(batches: int, reps: int) -> float:
    """Samples/s of one MNIST monitor's plain evaluation loop (forward, metrics, per-sample values as
    numpy, batch means; one torch thread), median of ``reps`` passes after one warm-up pass."""
    import torch

    from raydrift.harness import build_harness

    torch.set_num_threads(1)
    harness = build_harness(
        "mnist", {"regimes": ["identity"], "regime_batches": batches}, seed=0, batch_size=BS
    )
    data = list(harness.stream())
    model = harness.build_model().eval()
    rates = []
    with torch.inference_mode():
        for rep in range(reps + 1):
            t0 = time.perf_counter()
            for b in data:
                m = harness.metrics(model(b.x), b.y)
                m["accuracy"].detach().float().cpu().numpy().astype(np.float32)
                {k: float(v.float().mean()) for k, v in m.items()}
            if rep:
                rates.append(sum(len(b.y) for b in data) / (time.perf_counter() - t0))
    return float(np.median(rates))


def run_throughput(args: argparse.Namespace) -> dict[str, Any]:
    """The throughput section (``--throughput``): printed as a table, returned for ``--json``, with the
    load average (1, 5, 15 min) before and after: the machine is shared, the rates move with it."""
    load_before = [round(x, 2) for x in os.getloadavg()]
    rows = [
        throughput_row(lab, name, params, args.throughput_samples, args.reps)
        for lab, name, params in _selected(THROUGHPUT_DETECTORS, args.only)
    ]
    print(
        f"\nEngine against the bare River detector ({rows[0].samples:,} per-sample values, batches of {BS}, "
        f"same process, alternated {args.reps} times; ratio = engine time / bare time, median):"
    )
    print("| detector | bare River (samples/s) | engine (samples/s) | ratio | bare alarms | engine events |")
    print("|---|---|---|---|---|---|")
    for t in rows:
        print(
            f"| {t.detector} | {t.bare_samples_per_second:,.0f} | {t.engine_samples_per_second:,.0f} | "
            f"{t.ratio:.2f} | {t.bare_alarms} | {t.engine_events} |"
        )
    engine = default_engine_rate(args.throughput_samples, args.reps)
    mnist = mnist_plain_rate(args.mnist_batches, args.reps) if args.mnist_batches else float("nan")
    print(
        f"\nDefault config: {engine:,.0f} samples/s on one core; one MNIST monitor's plain loop "
        f"{mnist:,.0f} samples/s (1 thread): {engine / mnist:.1f}x (target >= 10x)"
    )
    load_after = [round(x, 2) for x in os.getloadavg()]
    print(f"load average (1, 5, 15 min): {load_before} before, {load_after} after")
    return {
        "load_average_before": load_before,
        "load_average_after": load_after,
        "rows": [asdict(t) for t in rows],
        "default_engine_samples_per_second": round(engine),
        "mnist_plain_samples_per_second": round(mnist) if math.isfinite(mnist) else None,
        "default_vs_mnist_plain": round(engine / mnist, 2) if math.isfinite(mnist) else None,
    }


# --- bocpd's ert: the measured run length on stationary streams against the requested one -------------


@dataclass
class RunLengthRow:
    """``bocpd`` with ``threshold: null`` (set from ``ert``) on one stationary stream."""

    model: str
    ert: float
    values: int
    alarms: int
    threshold: float
    mean_run_length: float  # (values to each alarm + the unfinished last run) / alarms
    ratio: float  # mean_run_length / ert
    standard_error: float  # of the ratio
    within_20_percent: bool
    calibration_seconds: float  # the simulation that set the threshold (nan: none ran)
    simulated_mean_run_length: float  # the simulation's mean at that threshold


def bocpd_run_length(model: str, ert: float, n: int, seed: int = 7) -> RunLengthRow:
    """Feed ``n`` stationary values (``bernoulli``: 0/1 with p = 0.1; ``normal``: standard normal)."""
    from raydrift.detection import make_detector

    det = make_detector("bocpd", {"model": model, "ert": ert})
    rng = np.random.default_rng(seed)
    xs = (rng.random(n) < 0.1).astype(float) if model == "bernoulli" else rng.standard_normal(n)
    runs, last = [], 0
    for i, x in enumerate(xs.tolist()):
        det.update(x)
        if det.drift_detected:
            runs.append(i + 1 - last)
            last = i + 1
    r = np.array(runs, dtype=float)
    cal = det.calibration  # type: ignore[attr-defined]
    mean = (float(r.sum()) + n - last) / max(1, r.size)
    se = float(r.std() / np.sqrt(r.size)) / ert if r.size > 1 else float("nan")
    return RunLengthRow(
        model,
        ert,
        n,
        int(r.size),
        float(det._threshold),
        round(mean, 1),  # type: ignore[attr-defined]
        round(mean / ert, 3),
        round(se, 3),
        abs(mean / ert - 1.0) <= 0.2,
        float(cal[5]) if cal is not None else math.nan,
        round(float(cal[1]), 1) if cal is not None else math.nan,
    )


def _run_length_specs(specs: list[str]) -> list[tuple[str, float, int]] | None:
    out = []
    for spec in specs:
        parts = spec.split(":")
        if len(parts) != 3 or parts[0] not in ("bernoulli", "normal"):
            return None
        try:
            out.append((parts[0], float(parts[1]), int(parts[2])))
        except ValueError:
            return None
    return out


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 generators, 2 seeds, 8,000-sample streams")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--generators", nargs="+", default=list(GENERATORS), choices=GENERATORS)
    ap.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    ap.add_argument("--levels", nargs="+", default=list(LEVELS), choices=LEVELS)
    ap.add_argument(
        "--only",
        nargs="+",
        default=None,
        metavar="TEXT",
        help="run only detectors whose label contains one of these (the baselines always run)",
    )
    ap.add_argument("--n", type=int, default=15000, help="samples per stream")
    ap.add_argument("--change", type=int, default=10000, help="sample where the change is centred")
    ap.add_argument("--width", type=int, default=2000, help="width of a gradual change")
    ap.add_argument("--train", type=int, default=3000, help="training samples of the fixed model")
    ap.add_argument("--tolerance", type=int, default=1000, help="detection window after the change (samples)")
    ap.add_argument("--stationary", type=int, default=0, metavar="N", help="N-sample streams without change")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--no-label-free", action="store_true", help="same as leaving label-free out of --levels")
    ap.add_argument("--no-oracle", action="store_true")
    ap.add_argument(
        "--label-free-seeds", type=int, default=2, help="seeds for the (slow) label-free detectors"
    )
    ap.add_argument("--json", type=Path, default=None, help="write every number to this JSON file")
    ap.add_argument("--overwrite", action="store_true", help="let --json replace an existing file")
    ap.add_argument(
        "--throughput",
        action="store_true",
        help="only the throughput section: the engine against the bare River detector and one MNIST "
        "monitor's plain loop, in this process",
    )
    ap.add_argument("--throughput-samples", type=int, default=200_000, help="per-sample values fed")
    ap.add_argument("--reps", type=int, default=5, help="throughput repetitions (the median is kept)")
    ap.add_argument(
        "--mnist-batches", type=int, default=300, help="batches of the MNIST plain loop (0: skip it)"
    )
    ap.add_argument(
        "--bocpd-ert",
        nargs="+",
        default=None,
        metavar="MODEL:ERT:VALUES",
        help="only bocpd's measured run length on stationary streams against ert, e.g. bernoulli:1000:300000",
    )
    return ap


def _stream_specs(args: argparse.Namespace) -> list[tuple]:
    """``make_stream`` arguments of every stream: changes, then the stationary ones (``--stationary``)."""
    specs = [
        (g, k, s, args.n, args.change, args.width, args.train, args.tolerance)
        for g in args.generators
        for k in args.kinds
        for s in range(args.seeds)
    ]
    if args.stationary:
        specs += [
            (g, "stationary", 100 + s, args.stationary, 0, 1, args.train, 0)
            for g in args.generators
            for s in range(args.seeds)
        ]
    return specs


def print_stream_errors(args: argparse.Namespace, streams: list[Stream]) -> None:
    print("| generator | change | seeds | fixed model's error before -> after |\n|---|---|---|---|")
    for g in args.generators:
        for k in args.kinds:
            ss = [s for s in streams if s.generator == g and s.kind == k]
            eb = np.mean([s.error_before for s in ss])
            ea = np.mean([s.error_after for s in ss])
            print(f"| {g} | {k} | {len(ss)} | {eb:.3f} -> {ea:.3f} |")


def _detector_jobs(
    args: argparse.Namespace, levels: list[str], streams: list[Stream], stationary: list[Stream]
) -> list[tuple[str, str, dict[str, Any], str, str, list[Stream]]]:
    """One ``_job`` per detector, level and change kind (and per sample detector on the stationary streams)."""
    jobs = []
    for kind in args.kinds:
        ss = [s for s in streams if s.kind == kind]
        if "sample" in levels:
            jobs += [(lab, n, p, "sample", kind, ss) for lab, n, p in _selected(SAMPLE_DETECTORS, args.only)]
        if "interval" in levels:
            jobs += [
                (lab, n, p, "interval", kind, ss) for lab, n, p in _selected(INTERVAL_DETECTORS, args.only)
            ]
        if "label-free" in levels:
            lf = [s for s in ss if s.seed < args.label_free_seeds]
            jobs += [
                (lab, n, p, "label-free", kind, lf)
                for lab, n, p in _selected(LABEL_FREE_DETECTORS, args.only)
            ]
    if stationary:
        jobs += [
            (lab, n, p, "sample", "stationary", stationary)
            for lab, n, p in _selected(SAMPLE_DETECTORS, args.only)
        ]
    return jobs


def run_all(
    args: argparse.Namespace, levels: list[str], t0: float
) -> tuple[list[Stream], list[tuple[str, str, str, Cell]], list[dict[str, Any]]]:
    """Every stream, every detector job and the oracle, in ``--workers`` processes: (streams, cells, oracle)."""
    with mp.get_context("fork").Pool(args.workers) as pool:
        all_streams = pool.map(_stream_job, _stream_specs(args))
        streams = [s for s in all_streams if s.kind != "stationary"]
        stationary = [s for s in all_streams if s.kind == "stationary"]
        print(f"# {len(all_streams)} streams in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
        print_stream_errors(args, streams)
        jobs = _detector_jobs(args, levels, streams, stationary)
        oracle_jobs = [s for s in streams if s.kind == "abrupt"] if not args.no_oracle else []
        async_oracle = pool.map_async(_oracle_job, oracle_jobs, chunksize=1)
        out = pool.map(_job, jobs, chunksize=1)
        oracle = async_oracle.get()
    return all_streams, out, oracle


def print_runs(runs: list[tuple[str, str, str, Cell]]) -> None:
    print()
    print(
        "| detector | level | change | detected | within 200 | mean delay (samples) | delay range | "
        "false alarms / 10k | misses | F1 | run time (s) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for label, level, kind, cell in runs:
        print(row(label, level, kind, cell))


def print_label_free(args: argparse.Namespace, runs: list[tuple[str, str, str, Cell]]) -> None:
    print()
    print("Label-free detectors per generator (every change kind):")
    print("| detector | generator | detected | mean delay (samples) |\n|---|---|---|---|")
    for lab, _, _ in _selected(LABEL_FREE_DETECTORS, args.only):
        for g in args.generators:
            per = [
                p[2]
                for label, lev, _, c in runs
                if label == lab and lev == "label-free"
                for p in c.per_stream
                if p[0] == g
            ]
            found = [d for d in per if d is not None]
            delay = f"{np.mean(found):.0f}" if found else "-"
            print(f"| {lab} | {g} | {len(found)}/{len(per)} | {delay} |")


def print_stationary(args: argparse.Namespace, out: list[tuple[str, str, str, Cell]], n_streams: int) -> None:
    stat_rows = [(lab, c) for lab, _, k, c in out if k == "stationary"]
    if not stat_rows:
        return
    print(
        f"\nFalse alarms on {n_streams} stationary streams of {args.stationary:,} samples "
        f"({n_streams * args.stationary:,} samples; sample level):"
    )
    print("| detector | false alarms | per 10k | streams with one or more |\n|---|---|---|---|")
    for lab, c in stat_rows:
        hit = sum(1 for p in c.per_stream if p[3])
        print(f"| {lab} | {c.false_alarms_before} | {c.fa_per_10k():.3f} | {hit}/{len(c.per_stream)} |")


def results_doc(
    argv: list[str] | None,
    args: argparse.Namespace,
    wall: float,
    all_streams: list[Stream],
    out: list[tuple[str, str, str, Cell]],
    oracle: list[dict[str, Any]],
    target: dict[str, Any],
) -> dict[str, Any]:
    """What ``--json`` writes: the command, the arguments, every stream and every cell."""
    return {
        "command": _command(argv),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "wall_seconds": round(wall, 1),
        "streams": [
            {
                "generator": s.generator,
                "kind": s.kind,
                "seed": s.seed,
                "start": s.start,
                "error_before": s.error_before,
                "error_after": s.error_after,
            }
            for s in all_streams
        ],
        "results": [
            {
                "detector": lab,
                "level": lev,
                "kind": k,
                **{f: v for f, v in asdict(c).items()},
                "fa_per_10k": c.fa_per_10k(),
            }
            for lab, lev, k, c in out
        ],
        "oracle": oracle,
        "target": target,
    }


def main_throughput(args: argparse.Namespace, argv: list[str] | None) -> int:
    t0 = time.perf_counter()
    doc: dict[str, Any] = {"command": _command(argv), "throughput": run_throughput(args)}
    doc["wall_seconds"] = round(time.perf_counter() - t0, 1)
    if args.json is not None:
        _write_json(args.json, doc)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.json is not None and args.json.exists() and not args.overwrite:
        print(f"error: {args.json} exists: pass --overwrite to replace recorded results", file=sys.stderr)
        return 2
    if args.bocpd_ert is not None:
        return _main_bocpd_ert(args, argv)
    if args.throughput:
        return main_throughput(args, argv)
    if args.quick:
        args.seeds, args.generators, args.n, args.change = 2, ["sea", "rbf"], 8000, 5000
    levels = [lv for lv in args.levels if not (lv == "label-free" and args.no_label_free)]
    t0 = time.perf_counter()
    all_streams, out, oracle = run_all(args, levels, t0)
    runs = [o for o in out if o[2] != "stationary"]
    print_runs(runs)
    if "label-free" in levels:
        print_label_free(args, runs)
    print_stationary(args, out, sum(1 for s in all_streams if s.kind == "stationary"))
    target = (
        print_target(runs, oracle, args.generators) if "abrupt" in args.kinds and "sample" in levels else {}
    )
    wall = time.perf_counter() - t0
    print(f"# total {wall:.1f}s", file=sys.stderr)
    if args.json is not None:
        _write_json(args.json, results_doc(argv, args, wall, all_streams, out, oracle, target))
    return 0


def _main_bocpd_ert(args: argparse.Namespace, argv: list[str] | None) -> int:
    specs = _run_length_specs(args.bocpd_ert)
    if specs is None:
        print(
            "error: --bocpd-ert takes MODEL:ERT:VALUES with MODEL bernoulli or normal, e.g. normal:1000:300000",
            file=sys.stderr,
        )
        return 2
    print(
        "| model | ert | values | alarms | threshold | mean run length | / ert | standard error | within 20% "
        "| calibration (s) | simulated mean |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for model, ert, n in specs:
        t = bocpd_run_length(model, ert, n)
        rows.append(t)
        print(
            f"| {t.model} | {t.ert:,.0f} | {t.values:,} | {t.alarms} | {t.threshold:.4f} | {t.mean_run_length:,.0f} | "
            f"{t.ratio:.2f} | {t.standard_error:.2f} | {'yes' if t.within_20_percent else 'no'} | "
            f"{t.calibration_seconds:.1f} | {t.simulated_mean_run_length:,.0f} |",
            flush=True,
        )
    if args.json is not None:
        _write_json(args.json, {"command": _command(argv), "bocpd_ert": [asdict(t) for t in rows]})
    return 0


def _command(argv: list[str] | None) -> str:
    return "python benchmarks/detectors.py " + " ".join(sys.argv[1:] if argv is None else argv)


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=1, default=float) + "\n", encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
