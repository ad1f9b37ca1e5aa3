"""Continual-learning update strategies, found by registry name or dotted path.

A new strategy is one file in this folder (a subclass of :class:`UpdateStrategy`) plus one entry in
:data:`STRATEGY_REGISTRY`; a strategy outside raydrift is named ``package.module:ClassName``.
"""

from __future__ import annotations

import difflib
import importlib

from raydrift.config import ContinualLearningConfig
from raydrift.errors import ConfigError
from raydrift.learning.strategies.base import StepContext, UpdateStrategy

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
    path = STRATEGY_REGISTRY.get(name, name)
    where = f"continual_learning.strategy '{name}'"
    if ":" not in path:
        close = difflib.get_close_matches(name, list(STRATEGY_REGISTRY), n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise ConfigError(
            f"unknown {where}: {hint}use a registered name ({', '.join(sorted(STRATEGY_REGISTRY))}) "
            "or a dotted path 'package.module:ClassName'"
        )
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ConfigError(
            f"{where}: cannot import module '{module_name}' ({exc.msg}); "
            "check the path and that the package is installed or on PYTHONPATH"
        ) from exc
    cls = getattr(module, attr, None)
    if cls is None:
        raise ConfigError(f"{where}: module '{module_name}' has no attribute '{attr}'")
    if not (isinstance(cls, type) and issubclass(cls, UpdateStrategy)):
        raise ConfigError(
            f"{where}: '{attr}' is not a subclass of raydrift.learning.strategies.UpdateStrategy"
        )
    return cls


def make_strategy(name: str, cfg: ContinualLearningConfig | None = None) -> UpdateStrategy:
    """A new strategy object: ``resolve_strategy(name)(cfg)``."""
    return resolve_strategy(name)(cfg if cfg is not None else ContinualLearningConfig.model_validate({}))
