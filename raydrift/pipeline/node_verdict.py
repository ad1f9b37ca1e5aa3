"""Ray's verdict on the node of an actor that died: did the node die, or the actor alone?

When a node is lost, its actors' calls fail at once, but the GCS declares the node dead only after
its health checks time out (seconds to tens of seconds). A replacement created in between can be
placed on the dying node and die with it: one node loss would then cost two restarts. So before a
dead actor is replaced, :class:`NodeVerdicts` polls the cluster state until one of these is known:

- ``NODE_DEAD``: the actor's node is dead (the scheduler will place the replacement elsewhere);
- ``ACTOR_ALONE``: the GCS marked the actor dead while its node stays alive (the actor's process died,
  the node is healthy);
- ``UNKNOWN``: no answer within ``timeout_s`` (or Ray keeps no record): replace it anyway.

The state comes from a :class:`ClusterState` (Ray's GCS tables in :class:`RayClusterState`; a fake
in the unit tests).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = ["ActorPlace", "ClusterState", "Judged", "NodeVerdicts", "RayClusterState", "Verdict", "actor_id_of"]


class Verdict(enum.Enum):
    NODE_DEAD = "node dead"
    ACTOR_ALONE = "actor died alone"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class ActorPlace:
    """An actor's state in the GCS (``ALIVE``, ``RESTARTING``, ``DEAD``, ...) and its node's id."""

    state: str
    node_id: str


class ClusterState(Protocol):
    def actor(self, actor_id: str) -> ActorPlace | None:
        """The actor's record, None when the GCS has none."""

    def node_alive(self, node_id: str) -> bool | None:
        """Whether the node is alive; None when the GCS does not know the node."""


class RayClusterState:
    """:class:`ClusterState` read from the connected Ray cluster's GCS tables."""

    def actor(self, actor_id: str) -> ActorPlace | None:
        from ray._private import state

        info: dict[str, Any] = state.actors(actor_id=actor_id) or {}
        if not info:
            return None
        return ActorPlace(str(info.get("State", "")), str((info.get("Address") or {}).get("NodeID", "")))

    def node_alive(self, node_id: str) -> bool | None:
        import ray

        for node in ray.nodes():
            if node.get("NodeID") == node_id:
                return bool(node.get("Alive"))
        return None


def actor_id_of(handle: Any) -> str | None:
    """The hex id of a Ray actor handle (None for anything else)."""
    aid = getattr(handle, "_actor_id", None)
    return aid.hex() if aid is not None else None


_NO_NODE = {"", "0" * 56, "f" * 56}  # an actor never placed has an empty (nil) node id


@dataclass(frozen=True)
class Judged:
    """The verdict on one actor and the node it ran on ('' when unknown)."""

    verdict: Verdict
    node_id: str


class NodeVerdicts:
    """Wait (bounded) for Ray's verdict on the nodes of actors that died."""

    def __init__(
        self,
        state: ClusterState,
        timeout_s: float = 30.0,
        poll_s: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.state, self.timeout_s, self.poll_s = state, timeout_s, poll_s
        self.clock, self.sleep = clock, sleep

    def judge(self, actor_id: str | None) -> Judged | None:
        """The verdict now, or None while it is not known yet."""
        if actor_id is None:
            return Judged(Verdict.UNKNOWN, "")
        place = self.state.actor(actor_id)
        if place is None or place.node_id in _NO_NODE:
            return Judged(Verdict.UNKNOWN, "")
        alive = self.state.node_alive(place.node_id)
        if alive is False:
            return Judged(Verdict.NODE_DEAD, place.node_id)
        if alive is None:
            return Judged(Verdict.UNKNOWN, place.node_id)
        if place.state == "DEAD":
            return Judged(Verdict.ACTOR_ALONE, place.node_id)
        return None  # the actor's calls fail but neither it nor its node is declared dead yet

    def wait(self, actor_ids: Sequence[str | None]) -> list[Judged]:
        """Each actor's verdict, polled until all are known or ``timeout_s`` passed (then UNKNOWN)."""
        deadline = self.clock() + self.timeout_s
        found: dict[int, Judged] = {}
        while True:
            for k, aid in enumerate(actor_ids):
                if k not in found:
                    j = self._judge_safely(aid)
                    if j is not None:
                        found[k] = j
            if len(found) == len(actor_ids) or self.clock() >= deadline:
                break
            self.sleep(self.poll_s)
        return [found.get(k, Judged(Verdict.UNKNOWN, "")) for k in range(len(actor_ids))]

    def _judge_safely(self, actor_id: str | None) -> Judged | None:
        try:
            return self.judge(actor_id)
        except Exception:  # noqa: BLE001 - the GCS may not answer while a node goes: ask again
            return None
