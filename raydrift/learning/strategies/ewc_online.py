"""Online EWC: a diagonal-Fisher quadratic penalty towards the last update's weights (Schwarz et al., 2018)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from raydrift.data import UpdateData
from raydrift.harness import Harness
from raydrift.learning.strategies.base import StrategyOptions, UpdateStrategy

__all__ = ["OnlineEWCOptions", "OnlineEWCUpdate", "diagonal_fisher"]


class OnlineEWCOptions(StrategyOptions):
    """``continual_learning.params`` of ``ewc_online``."""

    penalty_weight: float = Field(100.0, ge=0, description="lambda: weight of the quadratic penalty")
    decay: float = Field(0.9, ge=0, le=1, description="gamma: Fisher decay per update (F <- gamma*F + F_new)")
    fisher_samples: int = Field(
        512, ge=1, description="samples the diagonal Fisher is estimated on after an update"
    )


def diagonal_fisher(
    model: nn.Module, harness: Harness, x: Tensor, y: Tensor, chunk: int = 64
) -> dict[str, Tensor]:
    """Empirical diagonal Fisher ``F_i = mean_n (∂ℓ(f_θ(x_n), y_n) / ∂θ_i)²`` (eval mode, per-sample
    gradients with ``torch.func.vmap``), by trainable parameter name, on the model's device."""
    params = {k: p.detach() for k, p in model.named_parameters() if p.requires_grad}
    fisher = {k: torch.zeros_like(p) for k, p in params.items()}
    if len(y) == 0:
        return fisher
    device = next(iter(params.values())).device

    def sample_loss(p: dict[str, Tensor], xs: Tensor, ys: Tensor) -> Tensor:
        out = functional_call(model, p, (xs.unsqueeze(0),))
        return harness.loss(out, ys.unsqueeze(0))

    per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0))
    was_training = model.training
    model.eval()
    try:
        for i in range(0, len(y), chunk):
            g = per_sample(params, x[i : i + chunk].to(device), y[i : i + chunk].to(device))
            for k in fisher:
                fisher[k] += (g[k] * g[k]).sum(dim=0)
    finally:
        model.train(was_training)
    return {k: f / len(y) for k, f in fisher.items()}


class OnlineEWCUpdate(UpdateStrategy):
    """``L_c(θ) + (λ / 2) · Σ_i F_i (θ_i − θ*_i)²``: train on the window, stay near what mattered.

    ``θ*`` (the anchor) is the model at the end of the previous update; ``F`` is a running diagonal
    Fisher, ``F ← γ · F + F_new``, where ``F_new`` is the empirical Fisher of the model at the end of
    an update on (at most ``params.fisher_samples`` of) the window it was trained on. ``λ`` is
    ``params.penalty_weight``, ``γ`` is ``params.decay`` (:class:`OnlineEWCOptions`). No replay: the memory is not trained on.

    Where the state lives
    ---------------------
    The Fisher and the anchor are computed in :meth:`teardown` (the end of an update, identically on
    every rank) and leave through :meth:`state_dict`, which the Ray Train ``train_func`` returns
    (rank 0) with the new weights; the next update receives it as ``strategy_state``
    and :meth:`load_state_dict` restores it before :meth:`setup`. Without a previous state (the first
    update, or a caller that does not pass it on) :meth:`setup` estimates ``F`` on the replay memory
    with the incoming weights as anchor: the Fisher of every regime seen so far, without decay.
    """

    name: ClassVar[str] = "ewc_online"
    Options: ClassVar[type[StrategyOptions]] = OnlineEWCOptions
    options: OnlineEWCOptions

    def __init__(self, cfg: Any = None, options: StrategyOptions | None = None) -> None:
        super().__init__(cfg, options)
        self.fisher: dict[str, Tensor] | None = None
        self.anchor: dict[str, Tensor] | None = None
        self.updates = 0  # Fisher terms accumulated
        self._data: UpdateData | None = None

    def history_batch_size(self, current_n: int) -> int:
        return 0

    def _subset(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        k = self.options.fisher_samples
        if len(y) <= k:
            return x, y
        g = torch.Generator().manual_seed(len(y))
        idx = torch.randperm(len(y), generator=g)[:k]
        return x[idx], y[idx]

    def setup(self, model: nn.Module, harness: Harness, data: UpdateData) -> None:
        self._data = data
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        if self.fisher is None and len(data.memory_y) > 0:
            self.fisher = diagonal_fisher(model, harness, *self._subset(data.memory_x, data.memory_y))
            self.anchor = {k: p.detach().clone() for k, p in model.named_parameters() if p.requires_grad}
            self.updates = 1
        if self.fisher is not None and self.anchor is not None:
            self.fisher = {k: v.to(device) for k, v in self.fisher.items()}
            self.anchor = {k: v.to(device) for k, v in self.anchor.items()}

    def teardown(self, model: nn.Module, harness: Harness) -> None:
        data, self._data = self._data, None
        if data is None or len(data.window_y) == 0:
            return
        new = diagonal_fisher(model, harness, *self._subset(data.window_x, data.window_y))
        gamma = self.options.decay
        if self.fisher is None:
            self.fisher = new
        else:
            self.fisher = {k: gamma * self.fisher[k].to(v.device) + v for k, v in new.items()}
        self.anchor = {k: p.detach().clone() for k, p in model.named_parameters() if p.requires_grad}
        self.updates += 1

    def penalty(self, model: nn.Module) -> Tensor:
        """``(λ / 2) · Σ_i F_i (θ_i − θ*_i)²`` (0 without a Fisher)."""
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        total = torch.zeros((), device=device)
        if self.fisher is None or self.anchor is None:
            return total
        for k, p in model.named_parameters():
            if k in self.fisher:
                total = total + (self.fisher[k] * (p - self.anchor[k]) ** 2).sum()
        return 0.5 * self.options.penalty_weight * total

    def loss(
        self,
        model: nn.Module,
        harness: Harness,
        x_cur: Tensor,
        y_cur: Tensor,
        x_hist: Tensor | None,
        y_hist: Tensor | None,
    ) -> Tensor:
        # The penalty is a property of θ, not a mean over samples: the loop's per-rank scaling by
        # local_n / global_n sums it back to exactly one copy over the ranks.
        return harness.loss(model(x_cur), y_cur) + self.penalty(model)

    def state_dict(self) -> dict[str, Any]:
        """Fisher, anchor (CPU tensors by parameter name) and how many Fisher terms they hold."""

        def cpu(d: dict[str, Tensor] | None) -> dict[str, Tensor] | None:
            return None if d is None else {k: v.detach().cpu() for k, v in d.items()}

        return {"fisher": cpu(self.fisher), "anchor": cpu(self.anchor), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.fisher = state.get("fisher")
        self.anchor = state.get("anchor")
        self.updates = int(state.get("updates", 0))

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_data"] = None  # the update's data is not part of the strategy
        return state

    @classmethod
    def _unit_test_params(cls) -> Iterator[dict[str, Any]]:
        yield {}
        yield {"penalty_weight": 0.0, "decay": 1.0}
