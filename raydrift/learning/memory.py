"""Replay memory: a fixed-size, uniformly sampled subset of every labelled sample seen so far.

The memory holds the *history* that continual-learning strategies replay against forgetting. It is
filled by reservoir sampling (Vitter's Algorithm R): after ``seen`` samples have been added, every one
of them is in the memory with the same probability ``min(1, capacity / seen)``, whatever regime it came
from and whenever it arrived.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["ReplayMemory", "sample_indices"]


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
    """Reservoir-sampled replay memory of labelled samples.

    Parameters
    ----------
    capacity : int
        Maximum number of samples kept. ``0`` keeps nothing (``seen`` still counts).
    seed : int
        Seed of the numpy ``Generator`` that decides replacements. The memory's content is a
        deterministic function of ``seed`` and the sequence of samples added; it does not depend on
        how that sequence is split into batches (each sample past the first ``capacity`` consumes
        exactly one uniform draw).

    Notes
    -----
    Samples are stored on the CPU, detached: ``x`` keeps the dtype and trailing shape of the first
    batch added (later batches must match), ``y`` is stored as ``int64``. Storage grows by doubling
    up to ``capacity``, so a large capacity costs nothing until it is used.

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
    """

    def __init__(self, capacity: int, seed: int = 0) -> None:
        if capacity < 0:
            raise ValueError(f"ReplayMemory capacity must be >= 0, got {capacity}")
        self.capacity = int(capacity)
        self.seed = int(seed)
        self.seen = 0
        self._rng = np.random.default_rng(self.seed)
        self._x: Tensor | None = None  # storage, len >= self._size; rows past _size are unused
        self._y: Tensor | None = None
        self._size = 0

    # --- adding -----------------------------------------------------------------------------------
    def add(self, x: Tensor, y: Tensor) -> None:
        """Offer a batch of samples (``x[i]``, ``y[i]``) to the memory, in order."""
        if x.ndim < 1 or y.ndim != 1 or len(x) != len(y):
            raise ValueError(
                f"ReplayMemory.add expects x of shape (n, ...) and y of shape (n,), got "
                f"{tuple(x.shape)} and {tuple(y.shape)}"
            )
        x = x.detach().cpu()
        y = y.detach().cpu().to(torch.int64)
        if self._x is None:
            self._x = torch.empty((0, *x.shape[1:]), dtype=x.dtype)
            self._y = torch.empty(0, dtype=torch.int64)
        elif x.shape[1:] != self._x.shape[1:] or x.dtype != self._x.dtype:
            raise ValueError(
                f"ReplayMemory.add: samples of shape {tuple(x.shape[1:])} and dtype {x.dtype} do not match "
                f"the stored {tuple(self._x.shape[1:])} and {self._x.dtype}"
            )
        n = len(x)
        if n == 0:
            return
        first = self.seen  # stream index of x[0]
        self.seen += n
        if self.capacity == 0:
            return
        # Fill phase: sample i < capacity goes to slot i.
        n_fill = min(n, max(0, self.capacity - first))
        if n_fill:
            self._reserve(first + n_fill)
            self._store(torch.arange(first, first + n_fill), x[:n_fill], y[:n_fill])
            self._size = first + n_fill
        if n_fill == n:
            return
        # Replacement phase: sample with stream index i replaces slot j ~ U{0..i} if j < capacity.
        index = np.arange(first + n_fill, first + n, dtype=np.float64)
        u = self._rng.random(len(index))
        slots = np.minimum(np.floor(u * (index + 1.0)), index).astype(np.int64)
        src = np.flatnonzero(slots < self.capacity) + n_fill
        slots = slots[slots < self.capacity]
        if len(slots) == 0:
            return
        # Two samples of one batch may hit the same slot: the later one wins, as if added one by one.
        rev_slots, rev_pos = np.unique(slots[::-1], return_index=True)
        keep_src = src[::-1][rev_pos]
        self._store(torch.from_numpy(rev_slots), x[keep_src], y[keep_src])

    def _reserve(self, n: int) -> None:
        assert self._x is not None and self._y is not None
        if len(self._x) >= n:
            return
        new_len = min(self.capacity, max(n, 2 * len(self._x), 16))
        x = torch.empty((new_len, *self._x.shape[1:]), dtype=self._x.dtype)
        y = torch.empty(new_len, dtype=torch.int64)
        x[: self._size] = self._x[: self._size]
        y[: self._size] = self._y[: self._size]
        self._x, self._y = x, y

    def _store(self, slots: Tensor, x: Tensor, y: Tensor) -> None:
        assert self._x is not None and self._y is not None
        self._x[slots] = x
        self._y[slots] = y

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

    @property
    def nbytes(self) -> int:
        """Bytes held by the stored samples (``x`` and ``y`` rows; unused reserved rows excluded)."""
        if self._x is None or self._size == 0:
            return 0
        row = self._x[0].numel() * self._x.element_size() + 8
        return self._size * row

    # --- state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Capacity, seed, count seen, stored tensors and the generator's state."""
        x, y = self.tensors()
        return {
            "capacity": self.capacity,
            "seed": self.seed,
            "seen": self.seen,
            "x": x,
            "y": y,
            "initialized": self._x is not None,
            "rng": self._rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`; adding afterwards continues exactly as the original would."""
        self.capacity = int(state["capacity"])
        self.seed = int(state["seed"])
        self.seen = int(state["seen"])
        self._rng = np.random.default_rng(self.seed)
        self._rng.bit_generator.state = state["rng"]
        if state["initialized"]:
            self._x = state["x"].clone()
            self._y = state["y"].clone().to(torch.int64)
            self._size = len(self._x)
        else:
            self._x = self._y = None
            self._size = 0

    def __repr__(self) -> str:
        return f"ReplayMemory(capacity={self.capacity}, seed={self.seed}, len={len(self)}, seen={self.seen})"
