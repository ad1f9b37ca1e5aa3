"""Continual-learning update strategies, found by registry name or dotted path.

A new strategy is one file in this folder (a subclass of :class:`UpdateStrategy` with its
hyper-parameters in a :class:`StrategyOptions` model, its ``Options``) plus one entry in
:data:`STRATEGY_REGISTRY`; a strategy outside raydrift is named ``package.module:ClassName``. Its options
are the keys of ``continual_learning.params`` (``raydrift keys`` lists them).
"""

from __future__ import annotations

from typing import Any

from raydrift.config import ContinualLearningConfig
from raydrift.data import StepContext
from raydrift.learning.strategies.base import StrategyOptions, UpdateStrategy
from raydrift.registry import resolve

__all__ = [
    "STRATEGY_REGISTRY",
    "StepContext",
    "StrategyOptions",
    "UpdateStrategy",
    "list_strategy_options",
    "make_strategy",
    "resolve_strategy",
]

STRATEGY_REGISTRY: dict[str, str] = {
    "naive": "raydrift.learning.strategies.naive:NaiveUpdate",
    "replay": "raydrift.learning.strategies.replay:ReplayUpdate",
    "ewc_online": "raydrift.learning.strategies.ewc_online:OnlineEWCUpdate",
    "der++": "raydrift.learning.strategies.derpp:DERPPUpdate",
    "jvp": "raydrift.learning.strategies.jvp:JVPRegularizedUpdate",
}
"""Registry name -> ``module:Class``."""


def resolve_strategy(name: str) -> type[UpdateStrategy]:
    """The strategy class named by ``name``: a registry name or ``package.module:ClassName``.

    Raises
    ------
    ConfigError
        One line naming the closest registered name, or what is wrong with a dotted path.
    """
    return resolve(
        name,
        STRATEGY_REGISTRY,
        UpdateStrategy,
        "continual_learning.strategy",
        base_name="raydrift.learning.strategies.UpdateStrategy",
    )


def make_strategy(name: str, cfg: ContinualLearningConfig | None = None) -> UpdateStrategy:
    """A new strategy object named ``name``, built from the ``continual_learning:`` section ``cfg``.

    ``cfg.params`` are the options of ``cfg.strategy``: they are validated against the class's
    ``Options`` (one-line :class:`~raydrift.errors.ConfigError`) when ``name`` is that strategy; any
    other ``name`` (e.g. ``naive`` for a fine-tuning update) gets its default options.
    """
    cfg = cfg if cfg is not None else ContinualLearningConfig.model_validate({})
    cls = resolve_strategy(name)
    params = cfg.params if name == cfg.strategy else {}
    return cls(cfg, cls.options_from(params, name))


def list_strategy_options() -> list[tuple[str, str, Any, str]]:
    """Every registered strategy's options: ``(strategy, key, default, description)`` rows, from the
    strategies' ``Options`` models (``raydrift keys``, the docs)."""
    rows = []
    for name in STRATEGY_REGISTRY:
        options = resolve_strategy(name).Options
        defaults = options().model_dump(mode="json")
        for key, field in options.model_fields.items():
            rows.append((name, key, defaults[key], field.description or ""))
    return rows
