"""Thin Ray shells over the plain classes: StreamReader, MonitorActor, DetectorActor.

Each actor sets torch's thread count to the CPUs it was given: oversubscribed threads make small
per-batch work orders of magnitude slower on a busy machine.
"""

from __future__ import annotations

import math
from typing import Any

import ray
import torch

from raydrift.data import UpdateData
from raydrift.detection.engine import BatchResult, DetectionEngine, DetectionOutput, IntervalRecord
from raydrift.harness import build_harness
from raydrift.metrics import MonitorMetrics
from raydrift.monitor import Monitor
from raydrift.stream import BatchMeta, StreamState, pack_batch, unpack_batch
from raydrift.weights import Weights


def set_torch_threads(num_cpus: float) -> int:
    """One torch thread per whole CPU given (at least one); returns the count."""
    n = max(1, math.floor(num_cpus))
    torch.set_num_threads(n)
    return n


def evaluate_many_args(
    group: list[tuple[int, Any, int]], version: int = 0, weights_ref: Any = None
) -> list[Any]:
    """The arguments of :meth:`MonitorActor.evaluate_many` for ``(batch id, chunk ref, index)`` triples
    in stream order: the items, the weights version to evaluate them with, that version's object ref
    when the monitor does not hold it yet (else None), then each chunk ref once (consecutive batches
    share chunks)."""
    refs: list[Any] = []
    items = []
    for batch_id, ref, j in group:
        if not refs or refs[-1] is not ref:
            refs.append(ref)
        items.append((batch_id, len(refs) - 1, j))
    # a top-level argument: Ray fetches it to the monitor's node while the task waits in the monitor's
    # queue (behind the task it is evaluating), and hands the task the arrays
    return [items, version, weights_ref, *refs]


CHUNK_MAX_BYTES = 64 * 2**20
"""A chunk of the stream holds at most this much (at least one batch): 32 MNIST batches are 6 MB, one
batch of 64 ImageNet-size images is 38 MB."""


@ray.remote
class StreamReader:
    """Owns the stream: serves batches by object ref, keeps the window and the replay memory."""

    def __init__(
        self, harness_spec: dict[str, Any], stream_cfg: dict[str, Any], cl_cfg: dict[str, Any]
    ) -> None:
        set_torch_threads(0)
        harness = build_harness(**harness_spec)
        self.state = StreamState(
            harness.stream(),
            window_batches=cl_cfg["window_batches"],
            memory_size=cl_cfg["memory_size"],
            seed=harness_spec["seed"],
            max_batches=stream_cfg["max_batches"],
            memory_policy=cl_cfg.get("memory_policy", "reservoir"),
            memory_max_bytes=cl_cfg.get("memory_max_bytes"),
            max_batches_per_second=stream_cfg.get("max_batches_per_second"),
            recent_batches=cl_cfg.get("recent_batches"),
        )

    def next_chunk(self, k: int) -> tuple[list[BatchMeta], ray.ObjectRef | None]:
        """Up to ``k`` next batches: their metadata, and one object holding them all (one ``ray.put``
        per chunk, numpy inside: the object store's per-object cost is paid once per chunk).
        ``([], None)`` at the stream's end."""
        got = self.state.next_batches(k, max_bytes=CHUNK_MAX_BYTES)
        if not got:
            return [], None
        return [meta for meta, _ in got], ray.put([pack_batch(batch) for _, batch in got])

    def rewind(self, batch_id: int) -> None:
        self.state.rewind(batch_id)

    def commit(self, upto: int, quarantined: list[int] | None = None) -> None:
        self.state.commit(upto, quarantined or ())

    def update_data(self, upto: int, holdout_batches: int = 0, since: int | None = None) -> UpdateData:
        return self.state.update_data(upto, holdout_batches, since)

    def state_dict(self) -> dict[str, Any]:
        return self.state.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> int:
        """Restore (see :meth:`StreamState.load_state_dict`); returns the committed position."""
        self.state.load_state_dict(state)
        return self.state.committed

    def regime_starts(self) -> list[tuple[int, int]]:
        return self.state.regime_starts()

    def torch_threads(self) -> int:
        return torch.get_num_threads()

    def catch_up(self, upto: int, quarantined: list[int] | None = None) -> None:
        self.state.catch_up(upto, quarantined or ())

    def ping(self) -> bool:
        return True


@ray.remote(concurrency_groups={"control": 1, "eval": 1})  # type: ignore[call-overload]
class MonitorActor:
    """Evaluates batches with the current weights; swaps weights atomically by version."""

    def __init__(
        self,
        harness_spec: dict[str, Any],
        metric: str,
        weights: Weights,
        version: int,
        name: str,
        num_cpus: float,
        device: str = "cpu",
        label_free: str | None = None,
        run: str = "",
    ) -> None:
        set_torch_threads(num_cpus)
        harness = build_harness(**harness_spec)
        self.monitor = Monitor(harness, metric, weights, version, name, device, label_free=label_free)
        self.metrics = MonitorMetrics(name, run)  # dashboard: raydrift_* metrics tagged monitor=<name>, run=<run>
        self.metrics.version(version)

    @ray.method(concurrency_group="eval")
    def evaluate(self, batch_id: int, batch: Any) -> BatchResult:
        result = self.monitor.evaluate(batch_id, unpack_batch(batch))
        self.metrics.batch(len(result.values), result.eval_seconds, result.version)
        return result

    @ray.method(concurrency_group="eval")
    def evaluate_many(
        self,
        items: list[tuple[int, int, int]],
        version: int,
        weights: Weights | None,
        *chunks: list[Any],
    ) -> list[BatchResult]:
        """Evaluate several batches in one task: ``items`` are ``(batch id, chunk, index)``, the batch
        being ``chunks[chunk][index]`` (chunks from :meth:`StreamReader.next_chunk`, resolved by Ray).
        One task per group rather than per batch: Ray's per-task cost is paid once per group.

        The batches are evaluated with weights ``version``; when this monitor holds an older one,
        ``weights`` are that version's (sent by object ref, resolved by Ray: the node pulls them while
        the task is queued) and are loaded first. This is how new weights reach the monitors: one
        ``ray.put`` in the driver, no call of its own per monitor."""
        if version > self.monitor.version:
            fetch = None if weights is None else (lambda: weights)
            self.metrics.version(self.monitor.ensure_version(version, fetch))
        results = [self.monitor.evaluate(bid, unpack_batch(chunks[c][j])) for bid, c, j in items]
        self.metrics.batches(results)
        return results

    @ray.method(concurrency_group="control")
    def set_weights(self, version: int, weights: Weights) -> int:
        in_use = self.monitor.set_weights(version, weights)
        self.metrics.version(in_use)
        return in_use

    @ray.method(concurrency_group="control")
    def ping(self) -> bool:
        return True

    @ray.method(concurrency_group="control")
    def stats(self) -> dict[str, Any]:
        return {**self.monitor.stats(), "node_id": ray.get_runtime_context().get_node_id()}


@ray.remote
class DetectorActor:
    """Consumes per-batch results in stream order by batch id and runs the drift detector."""

    def __init__(
        self, cfg: dict[str, Any], metric: str, higher_is_better: bool, seed: int, domain: str | None = None
    ) -> None:
        from raydrift.config import DriftDetectionConfig

        set_torch_threads(0)
        # domain: the harness's metric_domain(metric); None: the default for the metric's name
        self.engine = DetectionEngine(
            DriftDetectionConfig(**cfg), metric, higher_is_better, seed=seed, domain=domain
        )

    def ingest_many(self, results: list[BatchResult]) -> DetectionOutput:
        """The results of one :meth:`MonitorActor.evaluate_many` task (passed by ref, resolved by Ray)."""
        return self.engine.ingest_many(results)

    def resume_after_update(self, next_batch: int, version: int) -> None:
        self.engine.resume_after_update(next_batch, version)

    def hold(self) -> None:
        self.engine.hold()

    def release(self, version: int) -> None:
        self.engine.release(version)

    def finish(self) -> list[IntervalRecord]:
        return self.engine.finish()

    def state_dict(self) -> dict[str, Any]:
        """The engine's state as plain values (:mod:`raydrift.plain_state`: no pickle when it is read back)."""
        return self.engine.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> int:
        """Restore :meth:`state_dict`'s output; every field is checked first (a one-line
        :class:`raydrift.plain_state.StateError` otherwise)."""
        self.engine.load_state_dict(state)
        return self.engine.next_batch

    def stats(self) -> dict[str, int]:
        return self.engine.stats

    def ping(self) -> bool:
        return True
