"""Replay memory: a bounded subset of the labelled samples seen so far.

The memory holds the *history* that continual-learning strategies replay against forgetting. Two
policies decide what it keeps:

- ``reservoir`` (default; Vitter's Algorithm R): after ``seen`` samples have been added, every one of
  them is in the memory with the same probability ``min(1, capacity / seen)``, whatever regime it came
  from and whenever it arrived.
- ``class_balanced`` (class-balancing reservoir sampling, CBRS; Chrysakis & Moens, ICML 2020): a full
  memory replaces a sample of its largest class with a sample of a smaller class; a sample of a
  largest class replaces a random stored sample of its own class with probability
  ``stored_c / seen_c``, so each class's stored samples are a uniform sample of that class's stream.
  Class counts end up as equal as the stream allows (they differ by at most one when every class has
  been seen at least ``capacity / classes`` times).

Every stored sample keeps its *id* (its index in the order samples were added, unique for a memory)
and optionally a row of *logits* (DER++-style function-space replay; NaN rows until recorded with
:meth:`ReplayMemory.set_logits`). The memory is bounded in samples (``capacity``) and optionally in
bytes (``max_bytes``: inputs, labels, ids and logits together).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

__all__ = ["MEMORY_POLICIES", "ReplayMemory", "sample_indices"]

MEMORY_POLICIES = ("reservoir", "class_balanced")


def sample_indices(size: int, n: int, generator: torch.Generator | None = None) -> Tensor:
    """``n`` row indices into a set of ``size`` rows, drawn with ``generator``.

    Without replacement when ``n <= size`` (a prefix of a random permutation: cost O(size)), with
    replacement when more rows are asked for than exist, so the result always has ``n`` indices.
    Empty (``int64``, length 0) when ``n <= 0`` or ``size == 0``.
    """
    if n <= 0 or size <= 0:
        return torch.empty(0, dtype=torch.int64)
    if n <= size:
        return torch.randperm(size, generator=generator)[:n]
    return torch.randint(size, (n,), generator=generator)


class ReplayMemory:
    """Bounded replay memory of labelled samples (reservoir or class-balanced), with ids and logits.

    Parameters
    ----------
    capacity : int
        Maximum number of samples kept. ``0`` keeps nothing (``seen`` still counts).
    seed : int
        Seed of the numpy ``Generator`` that decides replacements. The memory's content is a
        deterministic function of ``seed`` and the sequence of samples added; with the reservoir policy
        it does not depend on how that sequence is split into batches (each sample past the first
        ``capacity`` consumes exactly one uniform draw).
    policy : {"reservoir", "class_balanced"}
        What a full memory keeps (see the module docstring).
    max_bytes : int, optional
        Bound on the bytes of the stored rows (input, label, id and, once recorded, logits). The
        effective capacity is ``min(capacity, max_bytes // row_bytes)``; it is fixed by the first
        batch and lowered (evicting by the policy) when logits are first recorded.

    Notes
    -----
    Samples are stored on the CPU, detached: ``x`` keeps the dtype and trailing shape of the first
    batch added (later batches must match); integer labels ``y`` are stored as ``int64``, float
    (regression) targets keep their dtype and trailing shape. Storage grows by doubling
    up to the capacity, so a large capacity costs nothing until it is used.

    Examples
    --------
    >>> import torch
    >>> mem = ReplayMemory(capacity=4, seed=0)
    >>> mem.add(torch.arange(10.0).reshape(10, 1), torch.arange(10))
    >>> len(mem), mem.seen
    (4, 10)
    >>> x, y = mem.tensors()
    >>> x.shape, y.dtype
    (torch.Size([4, 1]), torch.int64)
    >>> mem.set_logits(mem.ids(), torch.zeros(4, 3))
    >>> mem.logits().shape
    torch.Size([4, 3])
    """

    def __init__(
        self,
        capacity: int,
        seed: int = 0,
        policy: Literal["reservoir", "class_balanced"] = "reservoir",
        max_bytes: int | None = None,
    ) -> None:
        if capacity < 0:
            raise ValueError(f"ReplayMemory capacity must be >= 0, got {capacity}")
        if policy not in MEMORY_POLICIES:
            raise ValueError(f"ReplayMemory policy must be one of {MEMORY_POLICIES}, got {policy!r}")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError(f"ReplayMemory max_bytes must be >= 1 or None, got {max_bytes}")
        self.capacity = int(capacity)
        self.seed = int(seed)
        self.policy = policy
        self.max_bytes = None if max_bytes is None else int(max_bytes)
        self.seen = 0
        self._rng = np.random.default_rng(self.seed)
        self._x: Tensor | None = None  # storage, len >= self._size; rows past _size are unused
        self._y: Tensor | None = None
        self._ids: Tensor | None = None
        self._logits: Tensor | None = None  # (storage rows, C) float32, NaN where not recorded
        self._size = 0
        self._cap = self.capacity  # effective capacity (bytes bound applied)
        self._class_seen: dict[int, int] = {}

    # --- capacity -----------------------------------------------------------------------------------
    def _row_bytes(self) -> int:
        if self._x is None:
            return 0
        row = int(np.prod(self._x.shape[1:], dtype=np.int64)) * self._x.element_size()
        label = 8
        if self._y is not None:
            label = int(np.prod(self._y.shape[1:], dtype=np.int64)) * self._y.element_size()
        logits = self._logits.shape[1] * 4 if self._logits is not None else 0
        return row + label + 8 + logits

    def _update_cap(self) -> None:
        cap = self.capacity
        if self.max_bytes is not None and self._x is not None:
            cap = min(cap, self.max_bytes // max(1, self._row_bytes()))
        self._cap = cap
        while self._size > self._cap:
            self._remove(self._victim(None))

    @property
    def effective_capacity(self) -> int:
        """``min(capacity, max_bytes // row_bytes)`` (``capacity`` before the first add)."""
        return self._cap

    # --- adding -----------------------------------------------------------------------------------
    def add(self, x: Tensor, y: Tensor) -> None:
        """Offer a batch of samples (``x[i]``, ``y[i]``) to the memory, in order.

        ``y`` is what the harness loss takes: class labels ``(n,)`` (stored as ``int64``) or
        regression targets ``(n,)`` / ``(n, k)`` (stored with their dtype). ``class_balanced`` needs
        integer class labels ``(n,)``.
        """
        if x.ndim < 1 or y.ndim < 1 or len(x) != len(y):
            raise ValueError(
                f"ReplayMemory.add expects x of shape (n, ...) and y of shape (n,) or (n, k), got "
                f"{tuple(x.shape)} and {tuple(y.shape)}"
            )
        x = x.detach().cpu()
        y = y.detach().cpu()
        if not y.is_floating_point() and not y.is_complex():
            y = y.to(torch.int64)
        if self.policy == "class_balanced" and (y.ndim != 1 or y.is_floating_point()):
            raise ValueError(
                f"ReplayMemory policy 'class_balanced' needs integer class labels of shape (n,), got "
                f"{tuple(y.shape)} {y.dtype}: use 'reservoir' for regression targets"
            )
        if self._x is None:
            self._x = torch.empty((0, *x.shape[1:]), dtype=x.dtype)
            self._y = torch.empty((0, *y.shape[1:]), dtype=y.dtype)
            self._ids = torch.empty(0, dtype=torch.int64)
            self._update_cap()
        elif x.shape[1:] != self._x.shape[1:] or x.dtype != self._x.dtype:
            raise ValueError(
                f"ReplayMemory.add: samples of shape {tuple(x.shape[1:])} and dtype {x.dtype} do not match "
                f"the stored {tuple(self._x.shape[1:])} and {self._x.dtype}"
            )
        elif self._y is not None and (y.shape[1:] != self._y.shape[1:] or y.dtype != self._y.dtype):
            raise ValueError(
                f"ReplayMemory.add: targets of shape {tuple(y.shape[1:])} and dtype {y.dtype} do not match "
                f"the stored {tuple(self._y.shape[1:])} and {self._y.dtype}"
            )
        n = len(x)
        if n == 0:
            return
        if self.policy == "class_balanced":
            self._add_class_balanced(x, y)
            return
        first = self.seen  # stream index of x[0]
        self.seen += n
        cap = self._cap
        if cap == 0:
            return
        # Fill phase: sample i < capacity goes to slot i.
        n_fill = min(n, max(0, cap - self._size))
        if n_fill:
            self._reserve(self._size + n_fill)
            slots = torch.arange(self._size, self._size + n_fill)
            self._store(slots, x[:n_fill], y[:n_fill], torch.arange(first, first + n_fill))
            self._size += n_fill
        if n_fill == n:
            return
        # Replacement phase: sample with stream index i replaces slot j ~ U{0..i} if j < capacity.
        index = np.arange(first + n_fill, first + n, dtype=np.float64)
        u = self._rng.random(len(index))
        slots_np = np.minimum(np.floor(u * (index + 1.0)), index).astype(np.int64)
        src = np.flatnonzero(slots_np < cap) + n_fill
        slots_np = slots_np[slots_np < cap]
        if len(slots_np) == 0:
            return
        # Two samples of one batch may hit the same slot: the later one wins, as if added one by one.
        rev_slots, rev_pos = np.unique(slots_np[::-1], return_index=True)
        keep_src = src[::-1][rev_pos]
        self._store(torch.from_numpy(rev_slots), x[keep_src], y[keep_src], torch.from_numpy(keep_src + first))

    def _add_class_balanced(self, x: Tensor, y: Tensor) -> None:
        assert self._y is not None
        labels = y.tolist()
        for i, c in enumerate(labels):
            sid = self.seen
            self.seen += 1
            self._class_seen[c] = self._class_seen.get(c, 0) + 1
            if self._cap == 0:
                continue
            if self._size < self._cap:
                self._reserve(self._size + 1)
                self._store_one(self._size, x[i], c, sid)
                self._size += 1
                continue
            stored = self._y[: self._size].numpy()  # a view: kept current by _store_one
            counts = np.bincount(stored, minlength=c + 1)
            if counts[c] < counts.max():  # not a largest class: evict from a largest class
                slot = self._victim(None)
            elif self._rng.random() < counts[c] / self._class_seen[c]:
                slot = int(self._rng.choice(np.flatnonzero(stored == c)))
            else:
                continue
            self._store_one(slot, x[i], c, sid)

    def _store_one(self, slot: int, x: Tensor, y: int, sid: int) -> None:
        assert self._x is not None and self._y is not None and self._ids is not None
        self._x[slot] = x
        self._y[slot] = y
        self._ids[slot] = sid
        if self._logits is not None:
            self._logits[slot] = float("nan")

    def _victim(self, cls: int | None) -> int:
        """A slot to evict: uniform (reservoir) or uniform within a random largest class."""
        assert self._y is not None
        if self.policy == "reservoir" and cls is None:
            return int(self._rng.integers(self._size))
        stored = self._y[: self._size].numpy()
        if cls is None:
            counts = np.bincount(stored)
            cls = int(self._rng.choice(np.flatnonzero(counts == counts.max())))
        return int(self._rng.choice(np.flatnonzero(stored == cls)))

    def _remove(self, slot: int) -> None:
        """Drop ``slot`` by moving the last stored row into it."""
        assert self._x is not None and self._y is not None and self._ids is not None
        last = self._size - 1
        if slot != last:
            self._x[slot] = self._x[last]
            self._y[slot] = self._y[last]
            self._ids[slot] = self._ids[last]
            if self._logits is not None:
                self._logits[slot] = self._logits[last]
        self._size -= 1

    def _reserve(self, n: int) -> None:
        assert self._x is not None and self._y is not None and self._ids is not None
        if len(self._x) >= n:
            return
        new_len = min(self._cap, max(n, 2 * len(self._x), 16))
        x = torch.empty((new_len, *self._x.shape[1:]), dtype=self._x.dtype)
        y = torch.empty((new_len, *self._y.shape[1:]), dtype=self._y.dtype)
        ids = torch.empty(new_len, dtype=torch.int64)
        x[: self._size] = self._x[: self._size]
        y[: self._size] = self._y[: self._size]
        ids[: self._size] = self._ids[: self._size]
        self._x, self._y, self._ids = x, y, ids
        if self._logits is not None:
            logits = torch.full((new_len, self._logits.shape[1]), float("nan"))
            logits[: self._size] = self._logits[: self._size]
            self._logits = logits

    def _store(self, slots: Tensor, x: Tensor, y: Tensor, ids: Tensor) -> None:
        assert self._x is not None and self._y is not None and self._ids is not None
        self._x[slots] = x
        self._y[slots] = y
        self._ids[slots] = ids.to(torch.int64)
        if self._logits is not None:
            self._logits[slots] = float("nan")  # a new sample has no recorded logits yet

    # --- logits -----------------------------------------------------------------------------------
    def set_logits(self, ids: Tensor, logits: Tensor) -> None:
        """Record ``logits[i]`` for the stored sample with id ``ids[i]`` (ids not stored are ignored).

        The first call fixes the number of logits per row and, with ``max_bytes``, may lower the
        effective capacity (the policy evicts).
        """
        if logits.ndim != 2 or len(ids) != len(logits):
            raise ValueError(
                f"ReplayMemory.set_logits expects ids (n,) and logits (n, C), got {tuple(ids.shape)} "
                f"and {tuple(logits.shape)}"
            )
        if self._x is None or self._ids is None:
            return
        logits = logits.detach().cpu().float()
        if self._logits is None:
            self._logits = torch.full((len(self._x), logits.shape[1]), float("nan"))
            self._update_cap()
        elif logits.shape[1] != self._logits.shape[1]:
            raise ValueError(
                f"ReplayMemory.set_logits: {logits.shape[1]} logits per row, the memory stores "
                f"{self._logits.shape[1]}"
            )
        pos = {int(v): k for k, v in enumerate(self._ids[: self._size].tolist())}
        src = [i for i, v in enumerate(ids.tolist()) if int(v) in pos]
        if src:
            dst = torch.tensor([pos[int(ids[i])] for i in src])
            self._logits[dst] = logits[torch.tensor(src)]

    def logits(self) -> Tensor | None:
        """Copies of the recorded logits in slot order ``(len(self), C)``; NaN rows where none was
        recorded; ``None`` before the first :meth:`set_logits`."""
        if self._logits is None:
            return None
        return self._logits[: self._size].clone()

    def ids(self) -> Tensor:
        """The ids (order of addition) of the stored samples, in slot order (``int64``)."""
        if self._ids is None:
            return torch.empty(0, dtype=torch.int64)
        return self._ids[: self._size].clone()

    # --- reading ----------------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._size

    def tensors(self) -> tuple[Tensor, Tensor]:
        """Copies of every stored sample, in slot order: ``(x, y)`` with ``len(mem)`` rows.

        Before the first :meth:`add` the trailing shape is unknown: ``x`` is then ``torch.empty(0)``
        (shape ``(0,)``, float32) and ``y`` an empty ``int64`` tensor. After an add, an empty memory
        (capacity 0) returns ``x`` of shape ``(0, *sample_shape)``.
        """
        if self._x is None or self._y is None:
            return torch.empty(0), torch.empty(0, dtype=torch.int64)
        # clone: a view of the larger storage would serialize all of it when sent through Ray
        return self._x[: self._size].clone(), self._y[: self._size].clone()

    def sample(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """``n`` stored samples drawn with ``generator`` (see :func:`sample_indices`).

        Without replacement when ``n <= len(self)``, with replacement otherwise; empty tensors (as
        from :meth:`tensors`) when the memory is empty.
        """
        x, y = self.tensors()
        if self._size == 0:
            return x, y
        idx = sample_indices(self._size, n, generator)
        return x[idx], y[idx]

    def class_counts(self) -> dict[int, int]:
        """Stored samples per label (``{}`` for regression targets)."""
        if self._y is None or self._size == 0 or self._y.ndim != 1 or self._y.is_floating_point():
            return {}
        labels, counts = torch.unique(self._y[: self._size], return_counts=True)
        return {int(a): int(b) for a, b in zip(labels, counts, strict=True)}

    @property
    def nbytes(self) -> int:
        """Bytes held by the stored rows (input, label, id and logits; unused reserved rows excluded)."""
        if self._x is None or self._size == 0:
            return 0
        return self._size * self._row_bytes()

    # --- state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Settings, count seen, stored tensors (with ids and logits) and the generator's state."""
        x, y = self.tensors()
        return {
            "capacity": self.capacity,
            "seed": self.seed,
            "policy": self.policy,
            "max_bytes": self.max_bytes,
            "seen": self.seen,
            "x": x,
            "y": y,
            "ids": self.ids(),
            "logits": self.logits(),
            "class_seen": dict(self._class_seen),
            "initialized": self._x is not None,
            "rng": self._rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`; adding afterwards continues exactly as the original would."""
        self.capacity = int(state["capacity"])
        self.seed = int(state["seed"])
        self.policy = state.get("policy", "reservoir")
        self.max_bytes = state.get("max_bytes")
        self.seen = int(state["seen"])
        self._class_seen = {int(k): int(v) for k, v in (state.get("class_seen") or {}).items()}
        self._rng = np.random.default_rng(self.seed)
        self._rng.bit_generator.state = state["rng"]
        self._logits = None
        if state["initialized"]:
            self._x = state["x"].clone()
            y = state["y"].clone()
            self._y = y if y.is_floating_point() else y.to(torch.int64)
            self._size = len(self._x)
            ids = state.get("ids")
            # states saved before ids existed: reservoir slots filled in order carry no id; number them
            self._ids = ids.clone() if ids is not None else torch.arange(self._size, dtype=torch.int64)
            if state.get("logits") is not None:
                self._logits = state["logits"].clone().float()
        else:
            self._x = self._y = self._ids = None
            self._size = 0
        self._cap = self.capacity
        if self._x is not None:
            self._cap = self.capacity
            if self.max_bytes is not None:
                self._cap = min(self.capacity, self.max_bytes // max(1, self._row_bytes()))

    def __repr__(self) -> str:
        return (
            f"ReplayMemory(capacity={self.capacity}, seed={self.seed}, policy={self.policy!r}, "
            f"len={len(self)}, seen={self.seen})"
        )
