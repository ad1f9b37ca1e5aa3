"""Continual-learning strategies on rotated MNIST (the bundled 5,000 digits), plus the JVP ablation.

Protocol (per seed): five regimes ``rotate_0/45/90/135/180`` of the MNIST harness; each regime gets its
own ``--per-task`` training digits (disjoint slices of the 4,000 training digits). Regime 0 is learned
by plain training (``--pretrain-epochs``), shared by every strategy. Each later regime is one update
(:func:`raydrift.learning.train_update`, ``--epochs`` epochs, global batch ``--batch-size``, Adam
``--lr``) with the strategy, on that regime's digits (the "window") plus a replay memory of 200
samples (reservoir, filled with each regime's digits after its update: history only). A strategy's
state (EWC's Fisher and anchor, DER++'s logits by memory id) goes from one update to the next through
``state_dict`` / ``load_state_dict``, as in the Ray Train pipeline. After regime 0 and after each update
the model is evaluated on every regime's held-out test digits: the accuracy matrix, from which
``final average accuracy``, ``forgetting`` and ``BWT`` are computed with
:func:`raydrift.learning.metrics.cl_summary`. ``joint`` trains one model on all five regimes' digits at
once for ``--pretrain-epochs + --epochs`` epochs (the upper bound); ``naive`` is plain fine-tuning.

Usage::

    python benchmarks/cl.py                 # every strategy + the JVP ablation, 3 seeds
    python benchmarks/cl.py --quick         # fewer digits and seeds: a smoke run (~2 min)
    python benchmarks/cl.py --only main     # strategies only (no ablation)
    python benchmarks/cl.py --closed-loop   # the full raydrift pipeline per strategy (slow)

Writes a markdown table to stdout and the raw results to ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harnesses.mnist import MNISTHarness  # noqa: E402
from raydrift.config import ContinualLearningConfig, TrainConfig  # noqa: E402
from raydrift.learning import ReplayMemory, UpdateData, evaluate, make_strategy, pretrain, train_update  # noqa: E402
from raydrift.learning.metrics import cl_summary  # noqa: E402

REGIMES = ["rotate_0", "rotate_45", "rotate_90", "rotate_135", "rotate_180"]

# name -> (strategy, continual_learning overrides)
MAIN: dict[str, tuple[str, dict[str, Any]]] = {
    "naive": ("naive", {}),
    "replay": ("replay", {}),
    "ewc_online": ("ewc_online", {}),
    "der++": ("der++", {}),
    "jvp λ=1, no logits": ("jvp", {"jvp_logit_weight": 0.0}),
    "jvp λ=1 + logits α=0.5 (default)": ("jvp", {}),
}
_NO_LOGITS = {"jvp_logit_weight": 0.0}
ABLATION: dict[str, tuple[str, dict[str, Any]]] = {
    "jvp square λ=0.1": ("jvp", {"jvp_lambda": 0.1, **_NO_LOGITS}),
    "jvp square λ=10": ("jvp", {"jvp_lambda": 10.0, **_NO_LOGITS}),
    "jvp square λ=100": ("jvp", {"jvp_lambda": 100.0, **_NO_LOGITS}),
    "jvp hinge s=-1": ("jvp", {"jvp_penalty": "hinge", "jvp_sign": -1, **_NO_LOGITS}),
    "jvp identity s=-1 (unbounded)": ("jvp", {"jvp_penalty": "identity", "jvp_sign": -1, **_NO_LOGITS}),
    "jvp identity s=+1 (apeiron)": ("jvp", {"jvp_penalty": "identity", "jvp_sign": 1, **_NO_LOGITS}),
    "jvp square + input κ=1": ("jvp", {"jvp_input_scale": 1.0, **_NO_LOGITS}),
    "jvp square + input κ=10": ("jvp", {"jvp_input_scale": 10.0, **_NO_LOGITS}),
    "jvp λ=0 + logits (= replay + logits)": ("jvp", {"jvp_lambda": 0.0, "jvp_logit_weight": 0.5}),
}


def task_data(harness: MNISTHarness, per_task: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Disjoint ``per_task`` training digits for each regime, under its transform."""
    d = harness.digits()
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(d.train_y), generator=g)
    if per_task * len(REGIMES) > len(perm):
        raise SystemExit(f"--per-task {per_task} x {len(REGIMES)} regimes > {len(perm)} training digits")
    out = []
    for r in range(len(REGIMES)):
        idx = perm[r * per_task : (r + 1) * per_task]
        out.append((harness.prepare(d.train_x[idx], r), d.train_y[idx]))
    return out


def accuracy_row(model: torch.nn.Module, harness: MNISTHarness) -> list[float]:
    return [evaluate(model, harness, x, y)["accuracy"] for _, (x, y) in sorted(harness.test_sets().items())]


def run_one(args: dict[str, Any]) -> dict[str, Any]:
    """One strategy (or ``joint``), one seed: the accuracy matrix, CL metrics and step timings."""
    torch.set_num_threads(1)
    seed, label, strategy_name, overrides = args["seed"], args["label"], args["strategy"], args["overrides"]
    harness = MNISTHarness(
        {"regimes": REGIMES, "test_samples": args["test_samples"]}, seed=seed, batch_size=args["batch_size"]
    )
    tasks = task_data(harness, args["per_task"], seed)
    torch.manual_seed(seed)
    model = harness.build_model()
    t0 = time.perf_counter()
    if strategy_name == "joint":
        x = torch.cat([t[0] for t in tasks])
        y = torch.cat([t[1] for t in tasks])
        # as many passes over the data as regime 0's digits get in the sequential runs
        epochs = args["pretrain_epochs"] + args["epochs"]
        pretrain(model, harness, x, y, epochs, args["lr"], args["batch_size"], seed)
        row = accuracy_row(model, harness)
        return {
            "label": label,
            "seed": seed,
            "rows": [row],
            "final_average_accuracy": sum(row) / len(row),
            "forgetting": None,
            "backward_transfer": None,
            "seconds_per_step": None,
            "wall_seconds": time.perf_counter() - t0,
        }
    x0, y0 = tasks[0]
    pretrain(model, harness, x0, y0, args["pretrain_epochs"], args["lr"], args["batch_size"], seed)
    rows = [accuracy_row(model, harness)]
    cl = ContinualLearningConfig.model_validate({"strategy": strategy_name, **overrides})
    memory = ReplayMemory(args["memory"], seed=seed, policy=cl.memory_policy)
    memory.add(x0, y0)
    train = TrainConfig.model_validate(
        {"epochs": args["epochs"], "batch_size": args["batch_size"], "lr": args["lr"], "num_workers": 0}
    )
    state: dict[str, Any] = {}
    step_seconds: list[float] = []
    for r in range(1, len(REGIMES)):
        xr, yr = tasks[r]
        mx, my = memory.tensors()
        data = UpdateData(xr, yr, mx, my, memory_ids=memory.ids())
        strategy = make_strategy(strategy_name, cl)
        strategy.load_state_dict(state)
        out = train_update(model, harness, strategy, data, train, seed=seed * 100 + r)
        state = strategy.state_dict()
        step_seconds.append(out["seconds"] / max(1, out["steps"]))
        memory.add(xr, yr)
        rows.append(accuracy_row(model, harness))
    seen_at = list(range(1, len(REGIMES) + 1))
    summary = cl_summary(rows, seen_at, {j: j for j in range(len(REGIMES))})
    return {
        "label": label,
        "seed": seed,
        "rows": rows,
        **summary,
        "seconds_per_step": statistics.median(step_seconds),
        "wall_seconds": time.perf_counter() - t0,
    }


def fmt(values: list[float | None], scale: float = 100.0, digits: int = 1) -> str:
    vals = [v * scale for v in values if v is not None]
    if not vals:
        return "–"
    mean = statistics.mean(vals)
    std = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def table(results: list[dict[str, Any]], labels: list[str]) -> str:
    lines = [
        "| strategy | final avg. accuracy (%) | forgetting (pts) | BWT (pts) | ms / update step |",
        "|---|---|---|---|---|",
    ]
    for label in labels:
        rs = [r for r in results if r["label"] == label]
        if not rs:
            continue
        step = [r["seconds_per_step"] for r in rs]
        lines.append(
            f"| {label} | {fmt([r['final_average_accuracy'] for r in rs])} | "
            f"{fmt([r['forgetting'] for r in rs])} | {fmt([r['backward_transfer'] for r in rs])} | "
            f"{fmt(step, 1000.0, 0) if step[0] is not None else '–'} |"
        )
    return "\n".join(lines)


def closed_loop(strategies: list[str], quick: bool, seed: int) -> list[dict[str, Any]]:
    """Run the raydrift pipeline (Coordinator) once per strategy on the MNIST drift stream."""
    from raydrift.config import build_config
    from raydrift.coordinator import Coordinator

    out = []
    for name in strategies:
        overrides = [
            f"continual_learning.strategy={name}",
            "logging.backend=none",
            "logging.plots=false",
            "verbosity=0",
            f"seed={seed}",
            "ray.include_dashboard=false",
            "ray.num_cpus=2",
            "train.num_workers=1",
        ]
        if quick:
            overrides.append("data.regime_batches=15")
        cfg = build_config(ROOT / "configs" / "mnist.yaml", overrides)
        t0 = time.perf_counter()
        summary = Coordinator(cfg, console=lambda s: None).run().to_dict()
        out.append(
            {
                "strategy": name,
                **{
                    k: summary["cl_metrics"].get(k)
                    for k in ("final_average_accuracy", "forgetting", "backward_transfer")
                },
                "updates": len(summary["updates"]),
                "recovery_batches": [u.get("recovery_batches") for u in summary["updates"]],
                "new_regime_accuracy_after": [
                    u["test_accuracy_after"].get(u["regime"]) for u in summary["updates"]
                ],
                "wall_seconds": time.perf_counter() - t0,
            }
        )
        print(json.dumps(out[-1]), flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="400 digits per regime, 2 seeds, no extra λ points")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (default 3; quick: 2)")
    p.add_argument("--per-task", type=int, default=None, help="training digits per regime (default 800)")
    p.add_argument("--memory", type=int, default=200)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--pretrain-epochs", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--test-samples", type=int, default=1000)
    p.add_argument("--only", choices=["main", "ablation", "all"], default="all")
    p.add_argument("--jobs", type=int, default=1, help="worker processes (one torch thread each)")
    p.add_argument(
        "--ablation-seeds", type=int, default=None, help="seeds of the ablation (default: --seeds)"
    )
    p.add_argument("--resume", action="store_true", help="skip runs already in <out>.partial.jsonl")
    p.add_argument("--closed-loop", action="store_true", help="also run the full pipeline per strategy")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "cl.json")
    a = p.parse_args(argv)
    seeds = a.seeds or (2 if a.quick else 3)
    per_task = a.per_task or (400 if a.quick else 800)
    configs: dict[str, tuple[str, dict[str, Any]]] = {"joint": ("joint", {})}
    if a.only in ("main", "all"):
        configs.update(MAIN)
    if a.only in ("ablation", "all"):
        configs.update(ABLATION if not a.quick else dict(list(ABLATION.items())[3:6]))
    ablation_seeds = a.ablation_seeds or seeds
    main_labels = [k for k in configs if k == "joint" or k in MAIN]
    jobs = [
        {
            "seed": s,
            "label": label,
            "strategy": configs[label][0],
            "overrides": configs[label][1],
            "per_task": per_task,
            "memory": a.memory,
            "epochs": a.epochs,
            "pretrain_epochs": a.pretrain_epochs,
            "batch_size": a.batch_size,
            "lr": a.lr,
            "test_samples": a.test_samples,
        }
        # the strategies first (every seed), then the ablation
        for group, n_seeds in (
            (main_labels, seeds),
            ([k for k in configs if k not in main_labels], ablation_seeds),
        )
        for s in range(n_seeds)
        for label in group
    ]
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    results: list[dict[str, Any]] = []
    a.out.parent.mkdir(parents=True, exist_ok=True)
    partial = a.out.with_suffix(".partial.jsonl")
    done = {}
    if a.resume and partial.exists():
        for line in partial.read_text(encoding="utf-8").splitlines():
            r = json.loads(line)
            done[(r["label"], r["seed"])] = r
    todo = [j for j in jobs if (j["label"], j["seed"]) not in done]
    results.extend(done.values())

    def record(r: dict[str, Any]) -> None:
        results.append(r)
        with partial.open("a", encoding="utf-8") as f:
            f.write(json.dumps(r) + "\n")
        print(
            f"  {r['label']} seed {r['seed']}: {r['final_average_accuracy']:.4f} ({r['wall_seconds']:.0f}s)",
            file=sys.stderr,
            flush=True,
        )

    if a.jobs > 1:
        with ProcessPoolExecutor(a.jobs) as pool:
            for r in pool.map(run_one, todo):
                record(r)
    else:
        for job in todo:
            record(run_one(job))
    wall = time.perf_counter() - t0
    cmd = "python benchmarks/cl.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(
        f"rotated MNIST ({', '.join(REGIMES)}), {per_task} digits/regime, memory {a.memory}, "
        f"{a.epochs} epochs/update, batch {a.batch_size}, {seeds} seeds; `{cmd.strip()}` took {wall:.0f}s\n"
    )
    print(table(results, list(configs)))
    closed = (
        closed_loop([s for s, _ in MAIN.values() if s != "jvp"] + ["jvp"], a.quick, 0)
        if a.closed_loop
        else []
    )
    a.out.write_text(
        json.dumps(
            {
                "args": {k: str(v) for k, v in vars(a).items()},
                "wall_seconds": wall,
                "results": results,
                "closed_loop": closed,
            },
            indent=1,
        ),
        encoding="utf-8",
    )


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
