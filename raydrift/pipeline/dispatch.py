"""Dispatch: batch ids from the stream reader to the monitors, with backpressure and version books.

The driver never holds a batch: it keeps, per batch, its metadata and the ref of the chunk that holds
it (:data:`Item`). One ``next_chunk`` call stays pending while the queue runs low. A monitor task
evaluates up to ``monitor.batches_per_task`` consecutive batches; at most ``monitor.max_in_flight``
tasks are in flight. The books record which weights version each monitor was last sent, so a new
version's ref rides on the first task to each monitor (see :mod:`raydrift.pipeline.broadcast`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import ray

from raydrift.actors import evaluate_many_args
from raydrift.config import RaydriftConfig
from raydrift.pipeline.supervision import ACTOR_ERRORS
from raydrift.stream import BatchMeta

if TYPE_CHECKING:
    from raydrift.pipeline.broadcast import Broadcast
    from raydrift.pipeline.supervision import Supervisor

__all__ = ["Dispatcher", "Item"]

Item = tuple[BatchMeta, Any, int]
"""A batch in the books: its metadata, the ref of its chunk and its index there."""


class Dispatcher:
    """The queue of fetched batches, the tasks in flight and the versions each monitor was sent."""

    def __init__(self, cfg: RaydriftConfig, supervisor: Supervisor, broadcast: Broadcast) -> None:
        self.cfg, self.sup, self.broadcast = cfg, supervisor, broadcast
        self.queue: list[Item] = []  # fetched, not dispatched, in stream order
        self.fetch: Any = None  # the pending StreamReader.next_chunk call, if any
        self.inflight: dict[Any, tuple[list[Item], int]] = {}  # task -> (its batches, monitor index)
        n = cfg.monitor.num_monitors  # the supervisor starts them later
        self.load: list[int] = [0] * n
        # the weights version each monitor was last sent (with a task) or built with, -1 if unknown: a
        # task carries the current version's ref only to a monitor that may not have it yet
        self.sent: list[int] = [broadcast.version] * n
        self.tasks_sent = 0
        self.last_task: dict[int, int] = {}  # monitor index -> number of the last task sent to it
        self.max_in_flight = cfg.monitor.max_in_flight or 2 * max(1, n)
        self.stream_done = False

    @property
    def monitors(self) -> list[Any]:
        return self.sup.monitors

    @property
    def ended(self) -> bool:
        """The stream is exhausted and every fetched batch was dispatched."""
        return self.stream_done and not self.queue

    @property
    def chunk_size(self) -> int:
        return max(self.cfg.stream.prefetch, self.cfg.monitor.batches_per_task)

    # --- the stream side ------------------------------------------------------------------------
    def request_chunk(self) -> None:
        """Keep one ``next_chunk`` call pending while the queue runs low (the driver does not wait for
        the stream reader, which may be pacing the stream, unless it has nothing else to do)."""
        if self.fetch is None and not self.stream_done and len(self.queue) < self.chunk_size:
            self.fetch = self.sup.next_chunk(self.chunk_size)

    def take_chunk(self) -> None:
        """Wait for the pending ``next_chunk`` call and queue its batches (or note the stream's end)."""
        ref, self.fetch = self.fetch, None
        if ref is None:
            return
        try:
            metas, chunk = ray.get(ref)
        except ACTOR_ERRORS as exc:
            self.sup.recover(exc)  # the stream reader is restored and the queue is empty: fetch again
            return
        if not metas:
            self.stream_done = True
            return
        self.queue.extend((meta, chunk, j) for j, meta in enumerate(metas))

    def rewind(self, batch_id: int) -> None:
        """Serve the stream again from ``batch_id``; batches queued or requested before are dropped."""
        self.queue.clear()
        self.fetch = None
        self.sup.rewind_stream(batch_id)
        self.stream_done = False

    # --- the monitor side -----------------------------------------------------------------------
    def fill(self, upto: int | None = None) -> None:
        """Keep the pipeline full; not beyond batch ``upto`` when given (a post-drift window's end).

        A shorter group than ``batches_per_task`` goes out only to an idle monitor (or when no more
        batches can join it), so a busy pipeline runs full groups and a slow (paced) stream is not held
        back."""
        k = self.cfg.monitor.batches_per_task
        self.request_chunk()
        while self.queue and len(self.inflight) < self.max_in_flight:
            n = 0
            while n < min(k, len(self.queue)) and (upto is None or self.queue[n][0].batch_id <= upto):
                n += 1
            if n == 0:
                return
            # the least loaded monitor; among equals the one that waited longest (a slow stream's
            # single batches go round the monitors rather than all to the first)
            i = min(range(len(self.monitors)), key=lambda j: (self.load[j], self.last_task.get(j, -1), j))
            more_coming = self.fetch is not None and n == len(self.queue)
            if n < k and self.load[i] > 0 and more_coming:
                return  # every monitor is busy: let the group fill up
            group, self.queue[:n] = self.queue[:n], []
            self.dispatch(group, i)
            self.request_chunk()

    def dispatch(self, group: list[Item], i: int) -> None:
        """Send ``group`` to monitor ``i`` (with the current weights' ref if it may not have them)."""
        version = self.broadcast.version
        weights_ref = self.broadcast.weights_ref if self.sent[i] < version else None
        self.sent[i] = version
        args = evaluate_many_args([(meta.batch_id, ref, j) for meta, ref, j in group], version, weights_ref)
        task = self.monitors[i].evaluate_many.remote(*args)
        self.inflight[task] = (group, i)
        self.load[i] += 1
        self.tasks_sent += 1
        self.last_task[i] = self.tasks_sent

    def finished(self, task: Any) -> tuple[list[Item], int]:
        """Take a finished task off the books: its batches and its monitor's index."""
        items, i = self.inflight.pop(task)
        self.load[i] -= 1
        return items, i

    def waiting_refs(self) -> list[Any]:
        """What the loop may wait on: the tasks in flight and the pending ``next_chunk``."""
        return [*self.inflight, *([self.fetch] if self.fetch is not None else [])]

    # --- forgetting -------------------------------------------------------------------------------
    def drain(self) -> None:
        """Let in-flight batches finish and forget them (they are served again after a rewind)."""
        if self.inflight:
            ray.wait(list(self.inflight), num_returns=len(self.inflight))
        self.forget_in_flight()

    def requeue(self, items: list[Item]) -> None:
        """Batches to dispatch again (their monitor died), in stream order ahead of the rest."""
        self.queue[:0] = items
        self.queue.sort(key=lambda item: item[0].batch_id)

    def monitor_replaced(self, i: int, version: int) -> None:
        """Monitor ``i`` was replaced (built with ``version``): its in-flight batches go out again."""
        self.sent[i] = version
        again = [item for items, j in self.inflight.values() if j == i for item in items]
        for t in [t for t, (_, j) in self.inflight.items() if j == i]:
            del self.inflight[t]
        self.load[i] = 0
        self.requeue(again)

    def serve_again(self) -> None:
        """The batches in flight are lost (their owner died): forget them; the stream serves them again."""
        self.forget_in_flight()
        self.stream_done = False

    def forget_in_flight(self) -> None:
        """Drop the books of dispatched, queued and requested batches (they will be served again).

        A dropped task may never have run (e.g. its batches were owned by a stream reader that died), so
        whether its monitor loaded the version it carried is unknown: the next task to every monitor
        carries the current version's ref again (a monitor that holds it ignores it)."""
        self.inflight.clear()
        self.queue.clear()
        self.fetch = None
        self.load = [0] * len(self.monitors)
        self.sent = [-1] * len(self.monitors)
