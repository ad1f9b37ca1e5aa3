"""The stream's state: position, batch ids, the recent window and the replay memory.

:class:`StreamState` is a plain class; :class:`raydrift.actors.StreamReader` is a thin Ray shell over
it. It assigns batch ids 0, 1, 2, ... in stream order and keeps every batch that was served but not yet
*committed* (its result not yet accepted by the detector), so the coordinator can rewind: after an
update at batch ``b`` the batches after ``b`` are served again and re-evaluated with the new weights.

Committing batch ids (in order) moves them into the recent window and the replay memory, so what an
update trains on depends only on the stream and the drift batch id, never on scheduling.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from raydrift.harness import Batch
from raydrift.learning.loop import UpdateData
from raydrift.learning.memory import ReplayMemory


@dataclass(frozen=True)
class BatchMeta:
    """What the coordinator learns about a served batch (the batch itself travels by object ref)."""

    batch_id: int
    regime: int
    n: int


class StreamState:
    """Owns the harness stream: ids, rewind buffer, recent window, replay memory.

    Parameters
    ----------
    batches:
        The harness's batch iterator.
    window_batches:
        How many committed batches the recent window keeps.
    memory_size, seed:
        Replay memory capacity (samples) and its seed.
    max_batches:
        Stop after this many batches (None: at the iterator's end).
    """

    def __init__(
        self,
        batches: Iterator[Batch],
        window_batches: int = 8,
        memory_size: int = 500,
        seed: int = 0,
        max_batches: int | None = None,
        memory_policy: str = "reservoir",
        memory_max_bytes: int | None = None,
    ) -> None:
        self.window_batches = window_batches
        self.memory_size = memory_size
        self.seed = seed
        self.max_batches = max_batches
        self._iter = batches
        self._exhausted = False
        self._produced = 0  # batches taken from the iterator
        self._cursor = 0  # next batch id to serve
        self._committed = 0  # batch ids < this are committed
        self._pending: dict[int, Batch] = {}  # served (or produced) but not committed
        self._window: deque[Batch] = deque(maxlen=window_batches)
        self._memory = ReplayMemory(
            memory_size, seed=seed, policy=memory_policy, max_bytes=memory_max_bytes  # type: ignore[arg-type]
        )
        self._regime_starts: list[tuple[int, int]] = []  # (regime, first batch id)

    # --- serving -------------------------------------------------------------------------------
    def _produce(self) -> bool:
        if self._exhausted or (self.max_batches is not None and self._produced >= self.max_batches):
            self._exhausted = True
            return False
        try:
            batch = next(self._iter)
        except StopIteration:
            self._exhausted = True
            return False
        bid = self._produced
        if not self._regime_starts or self._regime_starts[-1][0] != batch.regime:
            self._regime_starts.append((batch.regime, bid))
        self._pending[bid] = batch
        self._produced += 1
        return True

    def next_batches(self, k: int) -> list[tuple[BatchMeta, Batch]]:
        """Up to ``k`` next batches with their ids; an empty list at the stream's end."""
        out = []
        for _ in range(k):
            if self._cursor >= self._produced and not self._produce():
                break
            batch = self._pending[self._cursor]
            out.append((BatchMeta(self._cursor, batch.regime, len(batch.y)), batch))
            self._cursor += 1
        return out

    def rewind(self, batch_id: int) -> None:
        """Serve again from ``batch_id`` (which must not be committed yet)."""
        if batch_id < self._committed or batch_id > self._produced:
            raise ValueError(
                f"cannot rewind to batch {batch_id}: committed up to {self._committed - 1}, "
                f"produced {self._produced}"
            )
        self._cursor = batch_id

    @property
    def exhausted(self) -> bool:
        return self._exhausted and self._cursor >= self._produced

    # --- committing ----------------------------------------------------------------------------
    def commit(self, upto: int) -> None:
        """Accept batches with id <= ``upto`` (their results were taken by the detector), in order.

        A committed batch joins the recent window; a batch pushed out of the window joins the replay
        memory. So the memory holds history *older* than the window an update trains on.
        """
        while self._committed <= upto and self._committed in self._pending:
            batch = self._pending.pop(self._committed)
            if len(self._window) == self._window.maxlen:
                old = self._window[0]
                self._memory.add(old.x, old.y)
            self._window.append(batch)
            self._committed += 1

    def update_data(self, upto: int) -> UpdateData:
        """Commit up to the drift batch ``upto``; the recent window and the replay memory to train on."""
        self.commit(upto)
        window = list(self._window)
        mem_x, mem_y = self._memory.tensors()
        return UpdateData(
            window_x=torch.cat([b.x for b in window]),
            window_y=torch.cat([b.y for b in window]),
            memory_x=mem_x,
            memory_y=mem_y,
            memory_ids=self._memory.ids(),
            memory_logits=self._memory.logits(),
        )

    # --- reporting / state -----------------------------------------------------------------------
    def regime_starts(self) -> list[tuple[int, int]]:
        return list(self._regime_starts)

    def memory_size_now(self) -> int:
        return len(self._memory)

    def state_dict(self) -> dict[str, Any]:
        return {
            "produced": self._produced,
            "cursor": self._cursor,
            "committed": self._committed,
            "memory": self._memory.state_dict(),
            "regime_starts": list(self._regime_starts),
        }
