"""raydrift in the closed loop against River's online learners, on the same River drift streams.

For each stream (a config in ``configs/``, harness ``river``) and seed, three learners see exactly the
same sample sequence (the pre-training samples of regime 0, then the stream):

- **raydrift**: the real ``Coordinator`` (``monitor.on_drift: pause``, ``train.num_workers: 0``, so the
  run is deterministic), one run per strategy. Its score is the *stream* metric: each batch is scored by
  a monitor before any update trains on it (the ``value`` column of ``batches.csv``), averaged per regime
  over the batches of that regime (weighted by their samples).
- **River ARF** (``forest.ARFClassifier``, ``forest.ARFRegressor`` for regression), prequentially:
  ``predict_one`` then ``learn_one`` on every stream sample, after ``learn_one`` on the pre-training
  samples. It reads River's raw feature dicts (its own input format); a regression target is the
  harness's standardised one, so errors are in the same units.
- **online fine-tuning**: the harness's MLP pre-trained as raydrift pre-trains it, then each batch is
  scored and then trained on for ``--online-steps`` steps of the harness's optimizer (Adam) at
  ``train.lr``: plain PyTorch, no drift detection, no memory.

Accuracy (classification) is higher-better; squared error of the standardised target (regression) is
lower-better. Results go to ``benchmarks/results/closed_loop.json`` (``--out``), never over an existing
file unless ``--overwrite``; each finished run is also appended to ``<out>.partial.jsonl`` as it ends.

    python benchmarks/closed_loop.py --streams sea agrawal friedman --seeds 0 1 2 \\
        --strategies replay der++ jvp naive
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

STREAMS: dict[str, str] = {
    "sea": "configs/river-sea.yaml",
    "agrawal": "configs/river-agrawal.yaml",
    "friedman": "configs/river-friedman.yaml",
}
"""Stream name -> its config (relative to the repository root)."""

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "closed_loop.json"


@dataclass
class RunResult:
    """One learner on one stream and seed: the stream metric per regime and its mean over regimes."""

    stream: str
    seed: int
    learner: str
    """``raydrift/<strategy>``, ``river-arf`` or ``online``."""
    metric: str
    higher_is_better: bool
    per_regime: dict[str, float]
    """Regime name -> the mean of the metric over that regime's stream samples."""
    mean: float
    """Unweighted mean over the regimes."""
    wall_seconds: float
    updates: int = 0
    """raydrift only: updates trained (first updates plus follow-ups)."""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Accumulator:
    totals: dict[int, float] = field(default_factory=lambda: defaultdict(float))
    counts: dict[int, int] = field(default_factory=lambda: defaultdict(int))

    def add(self, regime: int, total: float, n: int) -> None:
        self.totals[regime] += total
        self.counts[regime] += n

    def per_regime(self, names: dict[int, str]) -> dict[str, float]:
        return {names.get(r, str(r)): self.totals[r] / self.counts[r] for r in sorted(self.counts)}


def _result(
    stream: str, seed: int, learner: str, harness: Any, acc: _Accumulator, t0: float, **kw: Any
) -> RunResult:
    metric = "se" if harness.regression else "accuracy"
    per = acc.per_regime(harness.regime_names())
    return RunResult(
        stream, seed, learner, metric, not harness.regression, per, statistics.fmean(per.values()),
        time.perf_counter() - t0, **kw,
    )


def load_config(stream: str, seed: int, overrides: Sequence[str] = ()) -> Any:
    """The stream's config with the benchmark's fixed settings and ``overrides`` on top."""
    from raydrift.config import build_config

    fixed = [
        f"seed={seed}",
        "verbosity=0",
        "monitor.on_drift=pause",
        "train.num_workers=0",
        "logging.backend=none",
        "logging.plots=false",
        "logging.save_weights=false",
        "reliability.checkpoints=false",
        "ray.include_dashboard=false",
    ]
    return build_config(ROOT / STREAMS[stream], [*fixed, *overrides])


def harness_of(cfg: Any) -> Any:
    from raydrift.harness import build_harness

    return build_harness(cfg.model.harness, cfg.data, cfg.seed, cfg.stream.batch_size)


# ---------------------------------------------------------------------------------------------------
# the three learners


def run_raydrift(stream: str, seed: int, strategy: str, overrides: Sequence[str], work: Path) -> RunResult:
    """The real Coordinator on the stream; the per-regime mean of ``batches.csv``'s monitored values."""
    from raydrift.coordinator import Coordinator

    run_dir = work / f"{stream}-{seed}-{strategy}"
    cfg = load_config(
        stream, seed, [f"continual_learning.strategy={strategy}", f"logging.runs_dir={work}", *overrides]
    )
    harness = harness_of(cfg)
    t0 = time.perf_counter()
    summary = Coordinator(cfg, run_dir=run_dir, console=lambda _: None).run().to_dict()
    acc = _Accumulator()
    with open(run_dir / "batches.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["status"] == "ok":
                acc.add(int(row["regime"]), float(row["value"]) * int(row["n"]), int(row["n"]))
    adaptations = [
        {k: a.get(k) for k in ("regime", "updates", "recovered", "recovery_batches")}
        for a in summary.get("adaptations", [])
    ]
    return _result(
        stream, seed, f"raydrift/{strategy}", harness, acc, t0, updates=len(summary["updates"]),
        extra={"status": summary["run"]["status"], "drifts": len(summary["drift_events"]), "adaptations": adaptations},
    )


def run_arf(stream: str, seed: int, overrides: Sequence[str] = ()) -> RunResult:
    """River's adaptive random forest, prequential (predict_one, then learn_one) on the same samples."""
    from river import forest

    cfg = load_config(stream, seed, overrides)
    h = harness_of(cfg)
    t0 = time.perf_counter()
    model = forest.ARFRegressor(seed=seed) if h.regression else forest.ARFClassifier(seed=seed)
    for x, y in h.raw_pretrain():
        model.learn_one(x, h.target(y))
    acc = _Accumulator()
    for regime, samples in h.raw_stream():
        total = 0.0
        for x, y in samples:
            target = h.target(y)
            pred = model.predict_one(x)
            if h.regression:
                total += (float(pred or 0.0) - target) ** 2
            else:
                total += float(pred == target)
            model.learn_one(x, target)
        acc.add(regime, total, len(samples))
    return _result(stream, seed, "river-arf", h, acc, t0)


def run_online(stream: str, seed: int, steps: int, overrides: Sequence[str] = ()) -> RunResult:
    """The harness's MLP, pre-trained as raydrift does, then score-then-train on every batch."""
    import torch

    from raydrift.learning.loop import pretrain

    cfg = load_config(stream, seed, overrides)
    h = harness_of(cfg)
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    model = h.build_model()
    data = h.pretrain_data()
    if data is not None and cfg.model.pretrain_epochs > 0:
        pretrain(model, h, data[0], data[1], cfg.model.pretrain_epochs, cfg.model.pretrain_lr,
                 cfg.train.batch_size, cfg.seed)
    opt = h.build_optimizer(model.parameters(), cfg.train.lr)
    metric = "se" if h.regression else "accuracy"
    acc = _Accumulator()
    for batch in h.stream():
        model.eval()
        with torch.no_grad():
            values = h.metrics(model(batch.x), batch.y)[metric]
        acc.add(batch.regime, float(values.sum()), len(values))
        model.train()
        for _ in range(steps):
            opt.zero_grad()
            h.loss(model(batch.x), batch.y).backward()
            opt.step()
    return _result(stream, seed, "online", h, acc, t0, extra={"steps_per_batch": steps})


# ---------------------------------------------------------------------------------------------------
# the table


def _fmt(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}"


def table(results: Iterable[RunResult]) -> str:
    """A markdown table per stream: one row per learner, the regimes and the mean (mean ± std over seeds)."""
    by_stream: dict[str, list[RunResult]] = defaultdict(list)
    for r in results:
        by_stream[r.stream].append(r)
    lines: list[str] = []
    for stream, rs in by_stream.items():
        regimes = list(rs[0].per_regime)
        arrow = "higher is better" if rs[0].higher_is_better else "lower is better"
        seeds = sorted({r.seed for r in rs})
        lines += [f"**{stream}** (stream {rs[0].metric}, {arrow}; seeds {', '.join(map(str, seeds))})", ""]
        lines += ["| learner | " + " | ".join(regimes) + " | mean |", "|---" * (len(regimes) + 2) + "|"]
        by_learner: dict[str, list[RunResult]] = defaultdict(list)
        for r in rs:
            by_learner[r.learner].append(r)
        for learner, lr in by_learner.items():
            cells = [_fmt([r.per_regime[g] for r in lr]) for g in regimes]
            lines.append(f"| {learner} | " + " | ".join(cells) + f" | {_fmt([r.mean for r in lr])} |")
        lines.append("")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# main


def _plan(a: argparse.Namespace) -> list[tuple[str, int, str]]:
    plan = []
    for stream in a.streams:
        for seed in a.seeds:
            if not a.no_baselines:
                plan += [(stream, seed, "river-arf"), (stream, seed, "online")]
            plan += [(stream, seed, f"raydrift/{s}") for s in a.strategies]
    return plan


def _run_one(stream: str, seed: int, learner: str, a: argparse.Namespace, work: Path) -> RunResult:
    if learner == "river-arf":
        return run_arf(stream, seed, a.set)
    if learner == "online":
        return run_online(stream, seed, a.online_steps, a.set)
    return run_raydrift(stream, seed, learner.split("/", 1)[1], a.set, work)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--streams", nargs="+", choices=sorted(STREAMS), default=["sea", "agrawal", "friedman"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--strategies", nargs="+", default=["replay", "der++", "jvp", "naive"])
    p.add_argument("--no-baselines", action="store_true", help="raydrift only (no ARF, no online baseline)")
    p.add_argument("--online-steps", type=int, default=1, help="optimizer steps per batch of the online baseline")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every learner (raydrift's keys; data.* changes the stream)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--resume", action="store_true", help="skip the runs already in <out>.partial.jsonl")
    p.add_argument("--table", nargs="+", type=Path, metavar="JSON",
                   help="print the table of these result files (.json, or a .partial.jsonl) and run nothing")
    return p.parse_args(argv)


def load_results(paths: Iterable[Path]) -> list[RunResult]:
    """The runs recorded in result files (``--out`` files), in order."""
    out = []
    for p in paths:
        text = p.read_text()
        rows = [json.loads(line) for line in text.splitlines()] if p.suffix == ".jsonl" else json.loads(text)["results"]
        out += [RunResult(**r) for r in rows]
    return out


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.table:
        print(table(load_results(a.table)))
        return 0
    if a.out.exists() and not a.overwrite:
        print(f"error: {a.out} exists: pass --overwrite to replace it, or --out another file", file=sys.stderr)
        return 2
    partial = a.out.with_suffix(".partial.jsonl")
    done = [RunResult(**json.loads(line)) for line in partial.read_text().splitlines()] if (
        a.resume and partial.exists()) else []
    if not a.resume:
        partial.unlink(missing_ok=True)
    keys = {(r.stream, r.seed, r.learner) for r in done}
    import ray

    # one local cluster for every run (the Coordinator joins it); its workers import harnesses/ from here
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, configure_logging=False,
             runtime_env={"env_vars": {"PYTHONPATH": path}})
    a.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="closed-loop-") as tmp:
        for stream, seed, learner in _plan(a):
            if (stream, seed, learner) in keys:
                continue
            r = _run_one(stream, seed, learner, a, Path(tmp))
            done.append(r)
            with open(partial, "a") as f:
                f.write(json.dumps(asdict(r)) + "\n")
            print(f"{stream} seed {seed} {learner}: mean {r.mean:.4f} {r.per_regime} ({r.wall_seconds:.0f} s)",
                  flush=True)
    ray.shutdown()
    meta = {"command": " ".join(["python", "benchmarks/closed_loop.py", *(argv or sys.argv[1:])]),
            "overrides": a.set, "online_steps": a.online_steps,
            "configs": {s: load_config(s, 0, a.set).to_dict() for s in a.streams}}
    a.out.write_text(json.dumps({"meta": meta, "results": [asdict(r) for r in done]}, indent=1) + "\n")
    partial.unlink(missing_ok=True)  # everything it held is in --out now
    print(table(done))
    return 0


if __name__ == "__main__":
    sys.exit(main())
