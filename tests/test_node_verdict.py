"""The verdict on a dead actor's node, from a scripted cluster state (no Ray)."""

from __future__ import annotations

from dataclasses import dataclass, field

from raydrift.pipeline.node_verdict import ActorPlace, Judged, NodeVerdicts, Verdict

NODE_A, NODE_B = "a" * 56, "b" * 56


@dataclass
class ScriptedState:
    """Cluster state that changes over (fake) time: ``actors[id]`` / ``nodes[id]`` are lists of
    ``(from_time, value)``; the value in force is the last one whose time has come."""

    actors: dict[str, list[tuple[float, ActorPlace | None]]]
    nodes: dict[str, list[tuple[float, bool]]]
    now: list[float] = field(default_factory=lambda: [0.0])
    calls: int = 0

    @staticmethod
    def _at(timeline: list[tuple[float, object]], t: float) -> object:
        value = None
        for since, v in timeline:
            if since <= t:
                value = v
        return value

    def actor(self, actor_id: str) -> ActorPlace | None:
        self.calls += 1
        return self._at(self.actors.get(actor_id, []), self.now[0])  # type: ignore[return-value]

    def node_alive(self, node_id: str) -> bool | None:
        return self._at(self.nodes.get(node_id, []), self.now[0])  # type: ignore[return-value]


def verdicts(state: ScriptedState, timeout_s: float = 30.0) -> NodeVerdicts:
    def sleep(dt: float) -> None:
        state.now[0] += dt

    return NodeVerdicts(state, timeout_s=timeout_s, poll_s=0.5, clock=lambda: state.now[0], sleep=sleep)


def test_a_lost_node_is_waited_for_until_ray_declares_it_dead() -> None:
    # the actor's calls fail at t=0, but the GCS still shows it and its node alive until t=12
    state = ScriptedState(
        actors={"m0": [(0.0, ActorPlace("ALIVE", NODE_A)), (12.5, ActorPlace("DEAD", NODE_A))]},
        nodes={NODE_A: [(0.0, True), (12.0, False)]},
    )
    [judged] = verdicts(state).wait(["m0"])
    assert judged == Judged(Verdict.NODE_DEAD, NODE_A)
    assert 12.0 <= state.now[0] < 12.5  # waited for the node's death, not for the timeout


def test_an_actor_that_died_on_a_live_node_died_alone() -> None:
    state = ScriptedState(
        actors={"m1": [(0.0, ActorPlace("ALIVE", NODE_B)), (1.0, ActorPlace("DEAD", NODE_B))]},
        nodes={NODE_B: [(0.0, True)]},
    )
    [judged] = verdicts(state).wait(["m1"])
    assert judged == Judged(Verdict.ACTOR_ALONE, NODE_B)
    assert state.now[0] < 2.0


def test_no_verdict_within_the_timeout_is_unknown_and_bounded() -> None:
    state = ScriptedState(actors={"m0": [(0.0, ActorPlace("ALIVE", NODE_A))]}, nodes={NODE_A: [(0.0, True)]})
    [judged] = verdicts(state, timeout_s=5.0).wait(["m0"])
    assert judged.verdict is Verdict.UNKNOWN
    assert 5.0 <= state.now[0] <= 5.5


def test_several_actors_are_judged_in_one_wait() -> None:
    state = ScriptedState(
        actors={
            "m0": [(0.0, ActorPlace("ALIVE", NODE_A))],
            "m1": [(0.0, ActorPlace("DEAD", NODE_B))],
            "gone": [(0.0, None)],
        },
        nodes={NODE_A: [(0.0, True), (8.0, False)], NODE_B: [(0.0, True)]},
    )
    out = verdicts(state).wait(["m0", "m1", "gone", None])
    assert [j.verdict for j in out] == [Verdict.NODE_DEAD, Verdict.ACTOR_ALONE, Verdict.UNKNOWN, Verdict.UNKNOWN]
    assert 8.0 <= state.now[0] < 9.0  # one wait for all of them, as long as the slowest


def test_a_gcs_that_does_not_answer_is_asked_again() -> None:
    class Flaky(ScriptedState):
        def actor(self, actor_id: str) -> ActorPlace | None:
            if self.now[0] < 2.0:
                raise ConnectionError("GCS unavailable")
            return super().actor(actor_id)

    state = Flaky(actors={"m0": [(0.0, ActorPlace("DEAD", NODE_A))]}, nodes={NODE_A: [(0.0, False)]})
    [judged] = verdicts(state).wait(["m0"])
    assert judged == Judged(Verdict.NODE_DEAD, NODE_A)


def test_a_replacement_lost_with_the_same_node_is_not_counted_again() -> None:
    from raydrift.config import RaydriftConfig
    from raydrift.pipeline.supervision import Supervisor

    restarts: list[str] = []
    sup = Supervisor(RaydriftConfig(), None, None, lambda role, d: restarts.append(d), lambda: 0, lambda m: None)  # type: ignore[arg-type]
    # monitor-0 died while its node still looked alive; its replacement landed on that node, which then died
    sup._count("monitor", "monitor 0 died", "monitor-0", Judged(Verdict.ACTOR_ALONE, NODE_A))
    sup._count("monitor", "monitor 0 died", "monitor-0", Judged(Verdict.NODE_DEAD, NODE_A))
    # monitor-1 on the same node: its own restart
    sup._count("monitor", "monitor 1 died", "monitor-1", Judged(Verdict.NODE_DEAD, NODE_A))
    # and a later, unrelated death of monitor-0 elsewhere counts
    sup._count("monitor", "monitor 0 died", "monitor-0", Judged(Verdict.NODE_DEAD, NODE_B))
    assert sup.restarts["monitor"] == 3
    assert len(restarts) == 3 and "with its node" in restarts[1]
