"""A new weights version reaching a monitor on another node: does the transfer hold up the stream?

Two Ray nodes on this machine (``ray.cluster_utils.Cluster``: a head, and a worker node holding the
actor); the weights are ``ray.put`` in the driver, on the head, so the worker node has to pull them.
The actor has the monitor's concurrency groups. It runs a busy task (a sleep: a GPU evaluation leaves
the CPU free, and on this 2-core machine a CPU-bound one would compete with the pull for the same
cores), and the next task, queued behind it, carries a new version's weights. Two designs, per rep:

- ``argument`` (raydrift's): the weights' ref is a top-level argument of the task, as in
  :func:`raydrift.actors.evaluate_many_args`. Ray resolves it while the task is queued, so the node
  pulls the weights while the busy task runs;
- ``fetch at start``: the ref travels inside a list and the task fetches it with ``ray.get`` when it
  starts, so the stream waits for the pull.

The figure is the gap between the end of the busy task and the moment the next task holds the
weights. Weights: :class:`pipeline.WideHarness` (67 MB), fresh for every rep (not on the node yet).

Usage::

    .venv/bin/python benchmarks/broadcast_multinode.py [--reps 5] [--busy-seconds 1.0]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import ray

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _p in (str(ROOT), str(HERE)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

from pipeline import harness_spec  # noqa: E402

from raydrift.harness import build_harness  # noqa: E402
from raydrift.weights import to_numpy  # noqa: E402


@ray.remote(num_cpus=0, resources={"far": 1}, concurrency_groups={"control": 1, "eval": 1})
class Far:
    """The monitor's shape: evaluation tasks run one at a time, in order, in the ``eval`` group."""

    @ray.method(concurrency_group="eval")
    def busy(self, seconds: float) -> float:
        time.sleep(seconds)
        return time.time()

    @ray.method(concurrency_group="eval")
    def with_argument(self, weights: dict[str, Any]) -> float:
        return time.time()  # Ray resolved the weights before the task started

    @ray.method(concurrency_group="eval")
    def fetch_at_start(self, refs: list[ray.ObjectRef]) -> float:
        ray.get(refs[0])
        return time.time()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--busy-seconds", type=float, default=1.0)
    args = p.parse_args()
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1, resources={"far": 1})
    ray.init(address=cluster.address, logging_level="ERROR")
    try:
        harness = build_harness(**harness_spec("wide", 1))
        weights = to_numpy(harness.build_model().state_dict())
        mb = sum(v.nbytes for v in weights.values()) / 2**20
        far = Far.remote()
        ray.get(far.busy.remote(0.0))
        gaps: dict[str, list[float]] = {"argument": [], "fetch_at_start": []}
        for rep in range(args.reps + 1):
            for design in gaps:
                ref = ray.put({k: v + rep for k, v in weights.items()})  # fresh: not on the node yet
                busy = far.busy.remote(args.busy_seconds)
                if design == "argument":
                    held = far.with_argument.remote(ref)
                else:
                    held = far.fetch_at_start.remote([ref])
                end, got = ray.get([busy, held])
                if rep:  # the first round is a warm-up
                    gaps[design].append(got - end)
        med = statistics.median
        out = {
            "weights_mb": round(mb, 1),
            "busy_seconds": args.busy_seconds,
            "reps": args.reps,
            "gap_argument_ms": round(1000 * med(gaps["argument"]), 1),
            "gap_fetch_at_start_ms": round(1000 * med(gaps["fetch_at_start"]), 1),
        }
        print(json.dumps(out))
        print(
            f"{out['weights_mb']} MB to an actor on another node, behind a {args.busy_seconds} s task: the next "
            f"task holds them {out['gap_argument_ms']} ms after the busy one ends as an argument, "
            f"{out['gap_fetch_at_start_ms']} ms when fetched at its start"
        )
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main()
