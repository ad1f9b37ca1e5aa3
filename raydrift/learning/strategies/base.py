"""The interface of a continual-learning update strategy.

A strategy decides *what* an update step minimises (the loss on the current window, plus whatever it
does with the replay memory); the one training loop (:func:`raydrift.learning.loop.train_update`)
decides everything else: batches, sharding over workers, gradient all-reduce, optimizer steps.

Hooks are concrete no-ops, called by name, so a new hook never breaks an existing strategy.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict, ValidationError
from torch import Tensor, nn

from raydrift.config import ContinualLearningConfig, _schema_keys, format_validation_error
from raydrift.data import StepContext, UpdateData
from raydrift.harness import Harness

__all__ = ["StepContext", "StrategyOptions", "UpdateStrategy"]


class StrategyOptions(BaseModel):
    """Base of a strategy's options model: the keys of ``continual_learning.params``.

    A strategy with hyper-parameters subclasses it (every field with a default and a ``description``:
    ``raydrift keys`` and the docs list them from the model) and names it as its ``Options``.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class UpdateStrategy:
    """Base class of continual-learning update strategies.

    Subclasses set ``name`` (their registry name), ``Options`` (a :class:`StrategyOptions` model of
    their hyper-parameters, the keys of ``continual_learning.params``) and implement :meth:`loss`. A
    new strategy is one file under ``raydrift/learning/strategies/`` plus one entry in
    ``STRATEGY_REGISTRY``.

    Parameters
    ----------
    cfg : ContinualLearningConfig, optional
        The ``continual_learning:`` section.
    options : StrategyOptions, optional
        The strategy's options; default: ``cfg.params`` validated against :attr:`Options`.

    Notes
    -----
    A strategy object lives for one update (it is built in every trainer worker). Anything it learns
    in :meth:`setup` or :meth:`teardown` (e.g. an EWC Fisher matrix) is computed identically on every
    rank from the full, unsharded :class:`~raydrift.data.UpdateData`. State that should
    outlive one update goes through :meth:`state_dict` / :meth:`load_state_dict`: the Ray Train
    ``train_func`` loads the previous update's state (config key ``strategy_state``) before
    :meth:`setup` and returns the new one (rank 0) with the updated weights.

    Strategies receive the plain (unwrapped) module: ``torch.func.functional_call(model, params, x)``
    works on it, and gradients are all-reduced by the loop, not by a DDP wrapper.
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type[StrategyOptions]] = StrategyOptions
    options: StrategyOptions

    def __init__(
        self, cfg: ContinualLearningConfig | None = None, options: StrategyOptions | None = None
    ) -> None:
        self.cfg = cfg if cfg is not None else ContinualLearningConfig.model_validate({})
        if options is not None and not isinstance(options, self.Options):
            raise TypeError(
                f"{type(self).__name__} takes {self.Options.__name__}, got {type(options).__name__}"
            )
        self.options = options if options is not None else self.options_from(self.cfg.params)

    @classmethod
    def options_from(cls, params: dict[str, Any], name: str | None = None) -> StrategyOptions:
        """``params`` (``continual_learning.params``) validated against :attr:`Options`.

        Raises
        ------
        ConfigError
            One line naming the key (``continual_learning.params.<key>``) and what is wrong, an unknown
            key with the closest valid one.
        """
        from raydrift.errors import ConfigError

        try:
            return cls.Options.model_validate(params)
        except ValidationError as exc:
            prefix = "continual_learning.params"
            valid = [f"{prefix}.{k}" for k in _schema_keys(cls.Options)]
            where = f"strategy '{name or cls.name or cls.__name__}'"
            msg = format_validation_error(exc, valid, where, loc_prefix=tuple(prefix.split(".")))
            if not valid:
                msg += " (this strategy takes no params)"
            raise ConfigError(msg) from None

    # --- hooks (no-ops by default) ---------------------------------------------------------------
    def setup(self, model: nn.Module, harness: Harness, data: UpdateData) -> None:
        """Called once before the first step of an update, with the whole update data."""

    def teardown(self, model: nn.Module, harness: Harness) -> None:
        """Called once after the last optimizer step of an update."""

    # --- what a step minimises -------------------------------------------------------------------
    def history_batch_size(self, current_n: int) -> int:
        """History samples to draw from memory for a global step of ``current_n`` current samples.

        Default: ``current_n`` (equal-size batches; the loop then gives every rank as many history as
        current samples, which keeps the N-worker update equal to the 1-worker one). Return 0 for
        strategies that do not use the memory.
        """
        return current_n

    def loss(
        self,
        model: nn.Module,
        harness: Harness,
        x_cur: Tensor,
        y_cur: Tensor,
        x_hist: Tensor | None,
        y_hist: Tensor | None,
    ) -> Tensor:
        """The scalar loss of one (shard of a) step: a mean over the given samples.

        ``x_hist`` / ``y_hist`` are ``None`` when there is no history batch (empty memory, or
        :meth:`history_batch_size` returned 0).
        """
        raise NotImplementedError

    def backward(
        self,
        model: nn.Module,
        harness: Harness,
        x_cur: Tensor,
        y_cur: Tensor,
        x_hist: Tensor | None,
        y_hist: Tensor | None,
        ctx: StepContext,
    ) -> Tensor:
        """Accumulate this rank's share of the global step gradient into ``p.grad``.

        The default computes :meth:`loss` on the shard, scales it by ``len(x_cur) / ctx.global_n`` and
        back-propagates, so that summing the gradients over ranks (the loop's all-reduce) gives the
        gradient of the mean loss over the global batch. A rank whose shard is empty contributes
        nothing. Override this (not :meth:`loss`) when a step needs more than one backward pass, or a
        quantity reduced across ranks before it is used (``ctx.all_reduce``).

        Returns
        -------
        Tensor
            The detached scaled loss (a 0-d tensor on the model's device). Summed over ranks it is the
            global step's loss; the loop reports its mean over the last epoch.
        """
        if len(x_cur) == 0 or ctx.global_n == 0:
            device = next((p.device for p in model.parameters()), torch.device("cpu"))
            return torch.zeros((), device=device)
        scaled = self.loss(model, harness, x_cur, y_cur, x_hist, y_hist) * (len(x_cur) / ctx.global_n)
        scaled.backward()
        return scaled.detach()

    # --- state ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """State that outlives one update (none by default)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict`."""

    @classmethod
    def _unit_test_params(cls) -> Iterator[dict[str, Any]]:
        """``continual_learning.params`` the generic strategy checks construct this class with."""
        yield {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"
