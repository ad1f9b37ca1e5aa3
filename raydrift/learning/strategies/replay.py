"""Experience replay: train on the recent window and on samples replayed from memory."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import Tensor, nn

from raydrift.harness import Harness
from raydrift.learning.strategies.base import StrategyOptions, UpdateStrategy

__all__ = ["ReplayOptions", "ReplayUpdate"]


class ReplayOptions(StrategyOptions):
    """``continual_learning.params`` of ``replay``."""

    replay_weight: float = Field(1.0, ge=0, description="beta: weight of the replay loss")


class ReplayUpdate(UpdateStrategy):
    """Minimise ``L_c(θ) + β · L_h(θ)``: current-window loss plus weighted replay loss.

    ``L_c = ℓ(f_θ(x_c), y_c)`` on the current batch and ``L_h = ℓ(f_θ(x_h), y_h)`` on a batch of the
    same size drawn uniformly from the replay memory; ``β`` is ``params.replay_weight``.
    With an empty memory (the first update of a run with ``memory_size: 0``) it is naive fine-tuning.

    The two batches go through the model in one forward pass (concatenated), which is cheaper than two
    and gives the same result for models without batch-dependent layers. Models with BatchNorm see
    statistics of the mixed batch, the usual choice for replay.
    """

    name: ClassVar[str] = "replay"
    Options: ClassVar[type[StrategyOptions]] = ReplayOptions
    options: ReplayOptions

    def loss(
        self,
        model: nn.Module,
        harness: Harness,
        x_cur: Tensor,
        y_cur: Tensor,
        x_hist: Tensor | None,
        y_hist: Tensor | None,
    ) -> Tensor:
        if x_hist is None or y_hist is None or len(x_hist) == 0:
            return harness.loss(model(x_cur), y_cur)
        out = model(torch.cat([x_cur, x_hist]))
        n = len(x_cur)
        return harness.loss(out[:n], y_cur) + self.options.replay_weight * harness.loss(out[n:], y_hist)

    @classmethod
    def _unit_test_params(cls) -> Iterator[dict[str, Any]]:
        yield {"replay_weight": 1.0}
        yield {"replay_weight": 0.0}
