"""Small records that travel between the stream, the trainer workers and the strategies.

They live here, with no raydrift imports, so that the stream reader (``raydrift.stream``), the Ray
actors (``raydrift.actors``), the training loop (``raydrift.learning.loop``) and the strategies
(``raydrift.learning.strategies``) can all import them without importing one another.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor

__all__ = ["StepContext", "UpdateData"]


@dataclass
class UpdateData:
    """What an update trains on (CPU tensors; sent to every trainer worker through the object store).

    Attributes
    ----------
    window_x, window_y : Tensor
        The recent window of the stream (current regime), ``(n, ...)`` and ``(n,)`` (or ``(n, k)``
        targets of a regression harness).
    memory_x, memory_y : Tensor
        The replay memory's contents (:meth:`ReplayMemory.tensors`); may be empty (length 0).
    memory_ids : Tensor, optional
        The memory samples' ids (:meth:`ReplayMemory.ids`): stable keys that let a strategy's state
        (e.g. DER++'s recorded logits) follow a sample across updates.
    memory_logits : Tensor, optional
        Recorded logits of the memory samples (:meth:`ReplayMemory.logits`; NaN rows: none recorded).
    holdout_x, holdout_y : Tensor, optional
        The newest window batches, held out of training for the promotion gate (not trained on).
    """

    window_x: Tensor
    window_y: Tensor
    memory_x: Tensor
    memory_y: Tensor
    memory_ids: Tensor | None = None
    memory_logits: Tensor | None = None
    holdout_x: Tensor | None = None
    holdout_y: Tensor | None = None


@dataclass(frozen=True)
class StepContext:
    """Where one step's shard sits in the global step (what a strategy needs to be distribution-aware).

    Attributes
    ----------
    rank, world_size : int
        This worker and the number of workers. Every rank runs the same step in lockstep.
    global_n : int
        Current-window samples in the global batch (all ranks together); this rank holds
        ``x_cur[rank::world_size]`` of it.
    global_hist_n : int
        History samples in the global step (0 when there is no history batch).
    epoch, step : int
        Position of the step (``step`` counts from 0 within the epoch).
    all_reduce : callable or None
        In-place SUM all-reduce over ranks (``torch.distributed.all_reduce`` under Ray Train); ``None``
        when ``world_size == 1``. A strategy whose loss is not a mean over samples (a penalty on a
        quantity of the whole global batch, e.g. a directional derivative) uses it to combine
        per-rank partial results before the nonlinearity.
    hist_index : Tensor or None
        Row indices into ``UpdateData.memory_*`` of this rank's history samples (``x_hist[i]`` is
        memory row ``hist_index[i]``), for strategies that keep per-sample memory state (DER++'s
        logits). ``None`` when there is no history batch or the caller did not give them.
    """

    rank: int
    world_size: int
    global_n: int
    global_hist_n: int
    epoch: int
    step: int
    all_reduce: Callable[[Tensor], Any] | None = None
    hist_index: Tensor | None = None
