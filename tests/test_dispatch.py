"""The dispatcher's weights bookkeeping when it sends monitor tasks (no Ray: fake monitor handles).

A new version's ref rides on the first task to each monitor after the version is published; a task
whose fate is unknown (dropped with the in-flight books) makes the next task carry it again."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from raydrift.config import RaydriftConfig
from raydrift.pipeline.broadcast import Broadcast
from raydrift.pipeline.dispatch import Dispatcher
from raydrift.stream import BatchMeta


class FakeMonitor:
    """Records the arguments of every ``evaluate_many.remote`` call."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.evaluate_many = SimpleNamespace(remote=self._remote)

    def _remote(self, *args: Any) -> object:
        self.calls.append(args)
        return object()  # a task ref

    def last_weights(self) -> tuple[int, Any]:
        _, version, weights, *_ = self.calls[-1]
        return version, weights


def make_loop(monitors: int = 2) -> Dispatcher:
    cfg = RaydriftConfig.model_validate({"monitor": {"num_monitors": monitors}})
    broadcast = Broadcast({})
    broadcast.weights_ref = "weights-v0"
    sup = SimpleNamespace(monitors=[FakeMonitor() for _ in range(monitors)])
    return Dispatcher(cfg, sup, broadcast)  # type: ignore[arg-type]


def publish(d: Dispatcher, version: int) -> None:
    d.broadcast.version, d.broadcast.weights_ref = version, f"weights-v{version}"


def group(first: int, n: int = 2) -> list[tuple[BatchMeta, str, int]]:
    return [(BatchMeta(b, 0, 8), "chunk", b - first) for b in range(first, first + n)]


def test_a_new_version_rides_on_the_first_task_to_each_monitor() -> None:
    loop = make_loop()
    m0, m1 = loop.monitors
    loop.dispatch(group(0), 0)
    assert m0.last_weights() == (0, None)  # built with version 0: nothing to carry
    publish(loop, 1)  # an update was published
    loop.dispatch(group(2), 0)
    assert m0.last_weights() == (1, "weights-v1")
    loop.dispatch(group(4), 0)
    assert m0.last_weights() == (1, None)  # it has had it
    loop.dispatch(group(6), 1)
    assert m1.last_weights() == (1, "weights-v1")  # the other monitor gets it with its own first task
    assert loop.tasks_sent == 4 and loop.load == [3, 1]


def test_tasks_dropped_from_the_books_make_the_next_ones_carry_the_version_again() -> None:
    loop = make_loop()
    publish(loop, 1)
    loop.dispatch(group(0), 0)  # carries v1, but may never run (e.g. its chunk's owner died)
    loop.dispatch(group(2), 1)
    loop.forget_in_flight()
    assert loop.inflight == {} and loop.load == [0, 0]
    loop.dispatch(group(0), 0)
    loop.dispatch(group(2), 1)
    assert [m.last_weights() for m in loop.monitors] == [(1, "weights-v1"), (1, "weights-v1")]
