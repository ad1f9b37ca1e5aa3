"""Continual learning: replay memory, the one training loop, update strategies and CL metrics."""

from raydrift.learning.loop import UpdateData, evaluate, pretrain, seed_everything, train_update
from raydrift.learning.memory import ReplayMemory
from raydrift.learning.metrics import average_accuracy, backward_transfer, cl_summary, forgetting
from raydrift.learning.strategies import STRATEGY_REGISTRY, UpdateStrategy, make_strategy

__all__ = [
    "STRATEGY_REGISTRY",
    "ReplayMemory",
    "UpdateData",
    "UpdateStrategy",
    "average_accuracy",
    "backward_transfer",
    "cl_summary",
    "evaluate",
    "forgetting",
    "make_strategy",
    "pretrain",
    "seed_everything",
    "train_update",
]
