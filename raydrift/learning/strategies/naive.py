"""Naive fine-tuning: train on the recent window only (the forgetting baseline)."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor, nn

from raydrift.harness import Harness
from raydrift.learning.strategies.base import UpdateStrategy


class NaiveUpdate(UpdateStrategy):
    """Minimise the harness loss on the current window, ignoring the replay memory.

    ``L(θ) = ℓ(f_θ(x_c), y_c)``. Adapts fastest to the new regime and forgets earlier ones freely;
    it is the lower baseline every other strategy is compared with.
    """

    name: ClassVar[str] = "naive"

    def history_batch_size(self, current_n: int) -> int:
        return 0

    def loss(
        self,
        model: nn.Module,
        harness: Harness,
        x_cur: Tensor,
        y_cur: Tensor,
        x_hist: Tensor | None,
        y_hist: Tensor | None,
    ) -> Tensor:
        return harness.loss(model(x_cur), y_cur)
