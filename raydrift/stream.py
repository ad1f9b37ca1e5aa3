"""The stream's state: position, batch ids, the recent window and the replay memory.

:class:`StreamState` is a plain class; :class:`raydrift.actors.StreamReader` is a thin Ray shell over
it. It assigns batch ids 0, 1, 2, ... in stream order and keeps every batch that was served but not yet
*committed* (its result not yet accepted by the detector), so the coordinator can rewind: after an
update at batch ``b`` the batches after ``b`` are served again and re-evaluated with the new weights.

Committing batch ids (in order) moves them into the recent window and the replay memory, so what an
update trains on depends only on the stream and the drift batch id, never on scheduling.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from raydrift.data import UpdateData
from raydrift.harness import Batch
from raydrift.learning.memory import ReplayMemory
from raydrift.weights import shared_tensors


def _nbytes(batch: Any) -> int:
    """Bytes of a batch's tensors (0 for what is not a tensor)."""
    return sum(
        t.element_size() * t.nelement()
        for t in (getattr(batch, "x", None), getattr(batch, "y", None))
        if isinstance(t, torch.Tensor)
    )


@dataclass(frozen=True)
class PackedBatch:
    """A :class:`Batch` as it travels through the object store: numpy arrays, which Ray writes with one
    copy and reads without one (torch tensors are pickled in-band: about twice the CPU each way)."""

    x: np.ndarray
    y: np.ndarray
    regime: int


def pack_batch(batch: Any) -> Any:
    """``batch`` as a :class:`PackedBatch` when it is a plain :class:`Batch` of CPU tensors numpy can
    hold; anything else (a harness's Batch subclass, bfloat16, malformed input) travels as it is."""
    if type(batch) is not Batch or not isinstance(batch.x, torch.Tensor) or not isinstance(batch.y, torch.Tensor):
        return batch
    try:
        return PackedBatch(batch.x.detach().numpy(), batch.y.detach().numpy(), batch.regime)
    except (TypeError, RuntimeError):  # e.g. bfloat16 or CUDA tensors
        return batch


def unpack_batch(item: Any) -> Any:
    """The :class:`Batch` behind :func:`pack_batch`'s output. The arrays are copied: read-only object
    store memory is shared by every reader, and a model may write to its input in place."""
    if isinstance(item, PackedBatch):
        # from_numpy + clone: one torch copy, several times faster than numpy's for a batch
        x, y = shared_tensors((item.x, item.y))
        return Batch(x.clone(), y.clone(), item.regime)
    return item


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
    recent_batches:
        How many committed batches are kept for an update that asks for every batch since a batch id
        (:meth:`update_data`'s ``since``: adaptation's follow-ups after a drift); at least
        ``window_batches``. They are references to the same batches, not copies.
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
        max_batches_per_second: float | None = None,
        recent_batches: int | None = None,
    ) -> None:
        self.window_batches = window_batches
        self.recent_batches = max(window_batches, recent_batches or 0)
        self.max_batches_per_second = max_batches_per_second
        self._next_serve_time = 0.0
        self._skip: set[int] = set()  # quarantined batch ids: never trained on
        self.memory_size = memory_size
        self.seed = seed
        self.max_batches = max_batches
        self._iter = batches
        self._exhausted = False
        self._produced = 0  # batches taken from the iterator
        self._cursor = 0  # next batch id to serve
        self._committed = 0  # batch ids < this are committed
        self._pending: dict[int, Batch] = {}  # served (or produced) but not committed
        # the committed batches kept, with their ids, newest last: the window is the newest
        # window_batches of them, the rest is kept for update_data's ``since``
        self._recent: deque[tuple[int, Batch]] = deque(maxlen=self.recent_batches)
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

    def next_batches(self, k: int, max_bytes: int | None = None) -> list[tuple[BatchMeta, Batch]]:
        """Up to ``k`` next batches with their ids; an empty list at the stream's end. With
        ``max_bytes``, no more once their tensors hold that many bytes (always at least one batch)."""
        out: list[tuple[BatchMeta, Batch]] = []
        size = 0
        for _ in range(k):
            if max_bytes is not None and out and size >= max_bytes:
                break
            if self._cursor >= self._produced and not self._produce():
                break
            if self.max_batches_per_second:  # pace: at most this many batches per second
                now = time.monotonic()
                if self._next_serve_time > now:
                    if out:
                        break  # hand out what is ready rather than hold it back
                    time.sleep(self._next_serve_time - now)
                self._next_serve_time = max(now, self._next_serve_time) + 1.0 / self.max_batches_per_second
            batch = self._pending[self._cursor]
            out.append((BatchMeta(self._cursor, batch.regime, len(batch.y)), batch))
            if max_bytes is not None:
                size += _nbytes(batch)
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
    def quarantine(self, batch_ids: Iterable[int]) -> None:
        """Mark batches a monitor could not evaluate: committing them skips the window and the memory."""
        self._skip.update(int(b) for b in batch_ids if int(b) >= self._committed)

    def commit(self, upto: int, quarantined: Iterable[int] = ()) -> None:
        """Accept batches with id <= ``upto`` (their results were taken by the detector), in order.

        A committed batch joins the recent window; a batch pushed out of the window joins the replay
        memory. So the memory holds history *older* than the window an update trains on. Quarantined
        batches (``quarantined`` or :meth:`quarantine`) are committed without joining either.
        """
        self.quarantine(quarantined)
        while self._committed <= upto and self._committed in self._pending:
            batch = self._pending.pop(self._committed)
            if self._committed in self._skip:
                self._skip.discard(self._committed)
                self._committed += 1
                continue
            if len(self._recent) >= self.window_batches:  # the window's oldest batch leaves it
                old = self._recent[-self.window_batches][1]
                self._memory.add(old.x, old.y)
            self._recent.append((self._committed, batch))
            self._committed += 1

    def _window(self) -> list[Batch]:
        """The recent window: the newest ``window_batches`` committed batches kept."""
        return [b for _, b in list(self._recent)[-self.window_batches :]]

    def catch_up(self, upto: int, quarantined: Iterable[int] = ()) -> None:
        """Produce and commit every batch up to ``upto`` (after a restore from an older state, for
        batches that were accepted since), then serve from ``upto + 1``."""
        while self._produced <= upto and self._produce():
            pass
        self.commit(upto, quarantined)
        self._cursor = max(self._cursor, self._committed)

    def update_data(self, upto: int, holdout_batches: int = 0, since: int | None = None) -> UpdateData:
        """Commit up to the drift batch ``upto``; the recent window and the replay memory to train on.

        With ``since``, the window is every kept batch from batch id ``since`` on (at most
        ``recent_batches``, the newest), or the recent window when that is longer. With
        ``holdout_batches`` the newest batches of the window are returned apart (``holdout_x``,
        ``holdout_y``) for the promotion gate, as long as at least one batch is left to train on.
        """
        self.commit(upto)
        window = self._window()
        if since is not None:
            grown = [b for bid, b in self._recent if since <= bid <= upto]
            if len(grown) > len(window):
                window = grown
        if not window:
            raise ValueError("no committed batch to train on: the window is empty")
        h = min(holdout_batches, len(window) - 1)
        train, held = (window[:-h], window[-h:]) if h > 0 else (window, [])
        mem_x, mem_y = self._memory.tensors()
        return UpdateData(
            window_x=torch.cat([b.x for b in train]),
            window_y=torch.cat([b.y for b in train]),
            memory_x=mem_x,
            memory_y=mem_y,
            memory_ids=self._memory.ids(),
            memory_logits=self._memory.logits(),
            holdout_x=torch.cat([b.x for b in held]) if held else None,
            holdout_y=torch.cat([b.y for b in held]) if held else None,
        )

    # --- reporting / state -----------------------------------------------------------------------
    def regime_starts(self) -> list[tuple[int, int]]:
        return list(self._regime_starts)

    def memory_size_now(self) -> int:
        return len(self._memory)

    @property
    def committed(self) -> int:
        """Batch ids below this are committed."""
        return self._committed

    def state_dict(self) -> dict[str, Any]:
        """The committed state (tensors and plain values: ``torch.save`` / ``weights_only`` safe).

        Batches served but not committed are not part of it: after :meth:`load_state_dict` they are
        produced again from the stream and served from ``committed`` on.
        """
        return {
            "committed": self._committed,
            "window": [{"x": b.x, "y": b.y, "regime": int(b.regime)} for b in self._window()],
            # the same tensors as the window's where they overlap (torch.save stores a storage once)
            "recent": [{"id": int(bid), "x": b.x, "y": b.y, "regime": int(b.regime)} for bid, b in self._recent],
            "memory": self._memory.state_dict(),
            "regime_starts": [[int(r), int(b)] for r, b in self._regime_starts],
            "skip": sorted(self._skip),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` on a fresh stream of the same harness, seed and options.

        The stream's first ``committed`` batches are produced again and skipped (a harness stream is
        a function of its options and seed), so this costs producing them, not evaluating them.
        """
        if self._produced:
            raise RuntimeError("load_state_dict needs a fresh StreamState (no batch produced yet)")
        committed = int(state["committed"])
        for _ in range(committed):
            try:
                next(self._iter)
            except StopIteration:
                raise ValueError(
                    f"the stream ended after {self._produced} batches while resuming at batch {committed}: "
                    "it is not the stream the checkpoint was taken from"
                ) from None
            self._produced += 1
        self._cursor = self._committed = committed
        self._recent.clear()
        if "recent" in state:  # holds the window as its newest batches
            for b in state["recent"]:
                self._recent.append((int(b["id"]), Batch(b["x"], b["y"], int(b["regime"]))))
        else:  # a checkpoint of an older version: the window only, ids counted back from committed
            first = committed - len(state["window"])
            for i, b in enumerate(state["window"]):
                self._recent.append((first + i, Batch(b["x"], b["y"], int(b["regime"]))))
        self._memory.load_state_dict(state["memory"])
        self._regime_starts = [(int(r), int(b)) for r, b in state["regime_starts"]]
        self._skip = {int(b) for b in state.get("skip", [])}
