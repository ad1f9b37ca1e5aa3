"""The broadcast: a promoted update's weights reach every monitor.

One ``ray.put`` per version. Every monitor task sent from then on names the current version; the first
task to each monitor after a new version also carries the weights' ref, and the monitor loads the
weights from the object store (shared, not copied, by the monitors of one node) before it evaluates.
So a swap costs the driver one ``put``, and no monitor ever evaluates a batch with a version it was not
told about. :meth:`raydrift.pipeline.supervision.Supervisor.sync_monitors` puts every monitor on the
current version at the end of the stream.
"""

from __future__ import annotations

from typing import Any

import ray

from raydrift.weights import Weights

__all__ = ["Broadcast"]


class Broadcast:
    """The live model version, its weights (numpy, in the driver) and their object ref; also the
    strategy's state that travels with them to the next update."""

    def __init__(self, weights: Weights, version: int = 0, strategy_state: dict[str, Any] | None = None) -> None:
        self.version = version
        self.weights = weights
        self.strategy_state = strategy_state
        self.weights_ref: Any = None
        self.strategy_state_ref: Any = None

    def start(self) -> None:
        """Put the starting weights (and strategy state) in the object store."""
        self.weights_ref = ray.put(self.weights)
        if self.strategy_state is not None:
            self.strategy_state_ref = ray.put(self.strategy_state)

    def publish(self, weights: Weights, strategy_state: dict[str, Any] | None) -> int:
        """Make ``weights`` the next version; returns it. The strategy's new state (if any) replaces
        the old one."""
        self.version += 1
        self.weights = weights
        if strategy_state is not None:
            self.strategy_state = strategy_state
            self.strategy_state_ref = ray.put(strategy_state)
        self.weights_ref = ray.put(weights)
        return self.version
