"""Continual-learning update strategies, found by registry name or dotted path.

A new strategy is one file in this folder (a subclass of :class:`UpdateStrategy`) plus one entry in
:data:`STRATEGY_REGISTRY`; a strategy outside raydrift is named ``package.module:ClassName``.
"""

from __future__ import annotations

from raydrift.config import ContinualLearningConfig
from raydrift.data import StepContext
from raydrift.learning.strategies.base import UpdateStrategy
from raydrift.registry import resolve

__all__ = ["STRATEGY_REGISTRY", "StepContext", "UpdateStrategy", "make_strategy", "resolve_strategy"]

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
    """A new strategy object: ``resolve_strategy(name)(cfg)``."""
    return resolve_strategy(name)(cfg if cfg is not None else ContinualLearningConfig.model_validate({}))
