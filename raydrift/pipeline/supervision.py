"""Supervision: the run's actors, their recovery, and typed calls to them.

The :class:`Supervisor` owns the handles of the StreamReader, the DetectorActor and the MonitorActors.
When a call fails because an actor died, :meth:`Supervisor.recover` finds which one and replaces it:

- a dead **monitor** gets a successor with the current weights; its in-flight batches go out again;
- a dead **detector** is rebuilt from the last snapshot and re-fed every call logged since (so the
  detector's state, and its alarms, are as if it had never died);
- a dead **stream reader** is rebuilt from its snapshot and caught up to the accepted position; the
  batches it owned are served again.

Each replacement counts against ``reliability.max_actor_restarts`` per role; beyond it the run fails.
Before a dead actor is replaced, the supervisor waits (bounded) for Ray's verdict on its node
(:mod:`raydrift.pipeline.node_verdict`): a replacement made while a lost node is not yet declared dead
could land on it and die again. A lost node therefore costs one restart of each actor it held, and a
replacement that still died with the same node is not counted a second time.
The detector and stream are called through typed methods here (never by method name), and every call
that changes the detector's state is logged for the re-feed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import ray
from ray.exceptions import RayActorError, RayTaskError

from raydrift.actors import DetectorActor, MonitorActor, StreamReader
from raydrift.config import RaydriftConfig
from raydrift.detection.engine import DetectionOutput, IntervalRecord
from raydrift.pipeline.node_verdict import Judged, NodeVerdicts, RayClusterState, Verdict, actor_id_of

if TYPE_CHECKING:
    from raydrift.pipeline.broadcast import Broadcast
    from raydrift.pipeline.dispatch import Dispatcher

__all__ = ["ACTOR_ERRORS", "ActorFactory", "Supervisor"]

ACTOR_ERRORS = (RayActorError, RayTaskError, ray.exceptions.ObjectLostError)
"""Errors a call raises when an actor (or the owner of an object) died."""

ActorHandle = Any  # a Ray actor handle (Ray gives them no static type)
ObjectRef = Any


class ActorFactory:
    """Creates the run's actors with the options the config gives them."""

    def __init__(
        self,
        cfg: RaydriftConfig,
        spec: dict[str, Any],
        metric: str,
        higher_is_better: bool,
        device: str,
        metric_domain: str,
        run: str = "",
    ) -> None:
        self.cfg, self.spec, self.metric, self.run = cfg, spec, metric, run
        self.higher_is_better, self.device, self.metric_domain = higher_is_better, device, metric_domain

    def name(self, base: str) -> str:
        """``base`` if no live actor holds that name, else ``base-r<k>`` (a dead actor's name may linger)."""
        ns = self.cfg.ray.namespace
        for k in range(100):
            name = base if k == 0 else f"{base}-r{k}"
            try:
                ray.get_actor(name, namespace=ns)
            except ValueError:
                return name
        raise RuntimeError(f"no free actor name for {base}")

    def monitor(self, i: int, weights_ref: ObjectRef, version: int) -> ActorHandle:
        mc, cfg = self.cfg.monitor, self.cfg
        label_free = cfg.drift_detection.label_free.signal
        name = self.name(f"monitor-{i}")
        return MonitorActor.options(  # type: ignore[attr-defined]
            name=name,
            namespace=cfg.ray.namespace,
            num_cpus=mc.num_cpus,
            num_gpus=mc.num_gpus,
            resources=dict(mc.resources) or None,  # custom resources: pin monitors to node types
            scheduling_strategy="SPREAD" if mc.scheduling == "spread" else "DEFAULT",
        ).remote(
            self.spec,
            self.metric,
            weights_ref,
            version,
            name,
            mc.num_cpus,
            self.device if mc.num_gpus > 0 else "cpu",
            None if label_free == "none" else label_free,
            self.run,
        )

    def stream(self) -> ActorHandle:
        cfg = self.cfg
        return StreamReader.options(  # type: ignore[attr-defined]
            name=self.name("stream"), namespace=cfg.ray.namespace, num_cpus=0
        ).remote(self.spec, cfg.stream.model_dump(), {**cfg.continual_learning.model_dump(), "recent_batches": _recent_batches(cfg)})

    def detector(self) -> ActorHandle:
        cfg = self.cfg
        return DetectorActor.options(  # type: ignore[attr-defined]
            name=self.name("detector"), namespace=cfg.ray.namespace, num_cpus=0
        ).remote(cfg.drift_detection.model_dump(), self.metric, self.higher_is_better, cfg.seed, self.metric_domain)


def _shown(resources: dict[str, float]) -> dict[str, float]:
    """CPU, GPU and custom resources (not memory, nor Ray's per-node ``node:<ip>`` markers)."""
    return {k: v for k, v in resources.items() if k not in ("memory", "object_store_memory") and not k.startswith("node:")}


def _kill(handle: ActorHandle) -> None:
    try:
        ray.kill(handle)
    except Exception:  # noqa: BLE001 - it is dead already
        pass


def _alive(handle: ActorHandle) -> bool:
    try:
        ray.get(handle.ping.remote(), timeout=60)
        return True
    except RayActorError:
        return False
    except ray.exceptions.GetTimeoutError:
        return True  # busy, not dead


class Supervisor:
    """The actors' handles, their snapshots and their recovery.

    ``on_restart(role, detail)`` is called for each replacement (the loop records it in the summary),
    ``log`` says it on the console; ``position()`` gives the first batch id not yet accepted (where a restored stream catches up to).
    """

    def __init__(
        self,
        cfg: RaydriftConfig,
        factory: ActorFactory,
        broadcast: Broadcast,
        on_restart: Callable[[str, str], None],
        position: Callable[[], int],
        log: Callable[[str], None],
    ) -> None:
        self.cfg, self.factory, self.broadcast = cfg, factory, broadcast
        self.on_restart, self.position, self.log = on_restart, position, log
        self.stream: ActorHandle = None
        self.detector: ActorHandle = None
        self.monitors: list[ActorHandle] = []
        self.dispatch: Dispatcher | None = None  # set by the loop once the dispatcher exists
        self.restarts = {"monitor": 0, "detector": 0, "stream": 0}
        self.det_log: list[tuple[Any, ...]] = []  # detector calls since the snapshot, to re-feed
        self.det_snapshot: Any = None
        self.stream_snapshot: dict[str, Any] | None = None
        self.quarantined: set[int] = set()
        self.verdicts = NodeVerdicts(RayClusterState())
        self.node_losses: set[tuple[str, str]] = set()  # (actor slot, node id) already counted

    # --- start and stop -------------------------------------------------------------------------
    def start(self, stream_state: dict[str, Any] | None = None, detector_state: Any = None) -> None:
        """Create every actor (restoring the stream's and the detector's state when resuming) and
        wait until they are up."""
        b = self.broadcast
        self.stream = self.factory.stream()
        self.monitors = [self.factory.monitor(i, b.weights_ref, b.version) for i in range(self.cfg.monitor.num_monitors)]
        self.detector = self.factory.detector()
        if stream_state is not None:
            ray.get(self.stream.load_state_dict.remote(stream_state))
            ray.get(self.detector.load_state_dict.remote(detector_state))
        self.wait_until_up()

    def wait_until_up(self, say_every: float | None = None) -> None:
        """Wait for every monitor to answer; every ``say_every`` s (5 s on an autoscaling cluster, else
        30 s) say which are still waiting, what they ask for and what the autoscaler is doing, and fail
        after ``ray.actor_start_timeout_s`` (an autoscaling cluster may take minutes to add a node)."""
        from raydrift.feasibility import autoscaler_status

        names = {m.stats.remote(): f"monitor-{i}" for i, m in enumerate(self.monitors)}
        pending = list(names)
        mc, limit = self.cfg.monitor, self.cfg.ray.actor_start_timeout_s
        if say_every is None:
            say_every = 5.0 if self.cfg.ray.autoscaling else 30.0
        ask = {"CPU": mc.num_cpus, **({"GPU": mc.num_gpus} if mc.num_gpus else {}), **dict(mc.resources)}
        t0 = time.monotonic()
        while pending:
            left = limit - (time.monotonic() - t0)
            if left <= 0:
                raise RuntimeError(
                    f"{len(pending)} monitor(s) did not start within ray.actor_start_timeout_s={limit:g} s: each "
                    f"asks for {ask} and the cluster has {ray.cluster_resources()}; lower monitor.num_cpus/num_gpus/"
                    "resources or add a node type that has them"
                )
            ready, pending = ray.wait(pending, num_returns=len(pending), timeout=min(say_every, left))
            ray.get(ready)  # a monitor that failed to start raises here
            if pending:
                waiting = ", ".join(names[r] for r in pending)
                scaler = autoscaler_status()
                self.log(
                    f"waiting for {waiting} to start ({time.monotonic() - t0:.0f} s): each asks for {ask}, "
                    f"available now {_shown(ray.available_resources())}"
                    + (f"; autoscaler: {scaler}" if scaler else "")
                )

    def handles(self) -> list[ActorHandle]:
        return [h for h in [self.stream, self.detector, *self.monitors] if h is not None]

    def names(self) -> list[str]:
        return ["stream", "detector", *(f"monitor-{i}" for i in range(len(self.monitors)))]

    # --- typed calls ------------------------------------------------------------------------------
    def with_recovery(self, what: str, call: Callable[[], Any]) -> Any:
        """``call()``, recovering a dead actor and retrying when it fails for that reason."""
        for _ in range(self.cfg.reliability.max_actor_restarts + 2):
            try:
                return call()
            except ACTOR_ERRORS as exc:
                self.recover(exc)
        raise RuntimeError(f"{what} failed repeatedly")

    def _det(self, method: str, *args: Any) -> ObjectRef:
        self.det_log.append((method, *args))
        return getattr(self.detector, method).remote(*args)

    def resume_detection(self, next_batch: int, version: int) -> ObjectRef:
        """The detector continues at ``next_batch`` with results of ``version`` (after a rewind)."""
        return self._det("resume_after_update", next_batch, version)

    def hold_detection(self) -> ObjectRef:
        """The detector records results but feeds none until :meth:`release_detection` (an update trains)."""
        return self._det("hold")

    def release_detection(self, version: int) -> ObjectRef:
        """``version`` is live: the detector feeds its results (and skips the older version's)."""
        return self._det("release", version)

    def ingest(self, task: ObjectRef) -> DetectionOutput:
        """The detector's output for a finished monitor task (raises if the detector or the task's
        monitor died)."""
        out: DetectionOutput = ray.get(self.detector.ingest_many.remote(task))
        self.det_log.append(("ingest_many", task))
        return out

    def finish_detection(self) -> list[IntervalRecord]:
        """The last (partial) interval of the stream."""
        recs: list[IntervalRecord] = ray.get(self.detector.finish.remote())
        return recs

    def rewind_stream(self, batch_id: int) -> None:
        self.with_recovery("stream reader call rewind", lambda: ray.get(self.stream.rewind.remote(batch_id)))

    def commit(self, upto: int, quarantined: list[int]) -> None:
        """Accepted batches join the window and the replay memory (fire and forget)."""
        self.stream.commit.remote(upto, quarantined)

    def next_chunk(self, k: int) -> ObjectRef:
        return self.stream.next_chunk.remote(k)

    def update_data(self, upto: int, holdout_batches: int, since: int | None = None) -> ObjectRef:
        """The ref of the update's :class:`~raydrift.learning.loop.UpdateData` (window ending at ``upto``,
        or every kept batch from ``since`` on, + memory), checked to exist (a dead stream reader is
        restored and asked again)."""

        def fetch() -> ObjectRef:
            ref = self.stream.update_data.remote(upto, holdout_batches, since)
            ray.get(ref)  # raise here if the stream reader died
            return ref

        ref: ObjectRef = self.with_recovery("update data", fetch)
        return ref

    def monitor_stats(self) -> list[dict[str, Any]]:
        stats: list[dict[str, Any]] = ray.get([m.stats.remote() for m in self.monitors])
        return stats

    def sync_monitors(self) -> None:
        """Every monitor on the current version now, waited for (a dead one is replaced, already with
        it). During the run a new version reaches each monitor with its next task instead; this is
        for the end, so that no monitor is left on an older version (and its weights)."""
        version, ref = self.broadcast.version, self.broadcast.weights_ref
        acks = self.with_recovery(
            f"loading version {version} on the monitors",
            lambda: ray.get([m.set_weights.remote(version, ref) for m in self.monitors]),
        )
        if any(a != version for a in acks):
            raise RuntimeError(f"monitors did not load version {version}: {acks}")
        if self.dispatch is not None:
            self.dispatch.sent = [version] * len(self.monitors)

    # --- snapshots --------------------------------------------------------------------------------
    def snapshot(self) -> tuple[Any, dict[str, Any]]:
        """Snapshot the detector's and the stream reader's state; the re-feed log starts again."""
        self.det_snapshot, self.stream_snapshot = self.with_recovery(
            "snapshot", lambda: ray.get([self.detector.state_dict.remote(), self.stream.state_dict.remote()])
        )
        self.det_log.clear()
        assert self.stream_snapshot is not None
        return self.det_snapshot, self.stream_snapshot

    # --- recovery ---------------------------------------------------------------------------------
    def _judge(self, handles: list[ActorHandle]) -> list[Judged]:
        """Ray's verdict on each dead actor's node (waited for, bounded), before it is replaced."""
        t0 = time.monotonic()
        judged = self.verdicts.wait([actor_id_of(h) for h in handles])
        if time.monotonic() - t0 > 1.0:
            self.log(f"waited {time.monotonic() - t0:.0f} s for Ray's verdict on the dead actors' nodes")
        return judged

    def _count(self, role: str, detail: str, slot: str = "", judged: Judged | None = None) -> None:
        """One restart of ``role``, unless ``slot``'s actor already died (and was counted) on the same
        lost node: a replacement placed on a node that was dying is the same loss."""
        if judged is not None and judged.node_id:
            where = f"node {judged.node_id}"
            detail += f" (with its {where})" if judged.verdict is Verdict.NODE_DEAD else f" ({where} alive)"
            key = (slot, judged.node_id)
            if judged.verdict is Verdict.NODE_DEAD and key in self.node_losses:
                self.log(f"warning: {detail}; recovered (the same node loss: not counted again)")
                return
            self.node_losses.add(key)
        self.restarts[role] += 1
        limit = self.cfg.reliability.max_actor_restarts
        self.on_restart(role, detail)
        if self.restarts[role] > limit:
            raise RuntimeError(
                f"the {role} actor died {self.restarts[role]} times (reliability.max_actor_restarts={limit})"
            )
        self.log(f"warning: {detail}; recovered (restart {self.restarts[role]}/{limit})")

    def replace_monitor(self, i: int, judged: Judged | None = None) -> None:
        """A dead monitor: a new one with the current weights; its in-flight batches go out again."""
        self._count("monitor", f"monitor {i} died", f"monitor-{i}", judged)
        _kill(self.monitors[i])
        self.monitors[i] = self.factory.monitor(i, self.broadcast.weights_ref, self.broadcast.version)
        if self.dispatch is not None:
            self.dispatch.monitor_replaced(i, self.broadcast.version)

    def restore_detector(self, judged: Judged | None = None) -> None:
        """A dead detector: a new one from the snapshot, re-fed every call made since."""
        self._count("detector", "the detector died", "detector", judged)
        _kill(self.detector)
        det = self.factory.detector()
        if self.det_snapshot is not None:
            ray.get(det.load_state_dict.remote(self.det_snapshot))
        last = None
        for call in self.det_log:
            last = getattr(det, call[0]).remote(*call[1:])
        if last is not None:
            ray.get(last)
        self.detector = det

    def restore_stream(self, judged: Judged | None = None) -> None:
        """A dead stream reader: a new one from the snapshot, caught up to the accepted position."""
        self._count("stream", "the stream reader died", "stream", judged)
        _kill(self.stream)
        st = self.factory.stream()
        if self.stream_snapshot is not None:
            ray.get(st.load_state_dict.remote(self.stream_snapshot))
        ray.get(st.catch_up.remote(self.position() - 1, sorted(self.quarantined)))
        self.stream = st
        if self.dispatch is not None:  # batches in flight were owned by the dead reader: serve them again
            self.dispatch.serve_again()

    def recover(self, exc: BaseException, monitor: int | None = None) -> str:
        """Which actor died (restored now), or re-raise ``exc`` when none did."""
        if not _alive(self.detector):
            self.restore_detector(self._judge([self.detector])[0])
            return "detector"
        if not _alive(self.stream):
            self.restore_stream(self._judge([self.stream])[0])
            return "stream"
        candidates = [monitor] if monitor is not None else range(len(self.monitors))
        dead = [i for i in candidates if not _alive(self.monitors[i])]
        for i, judged in zip(dead, self._judge([self.monitors[i] for i in dead]), strict=True):
            self.replace_monitor(i, judged)
        if dead:
            return "monitor"
        if monitor is not None and isinstance(exc, RayTaskError) and not isinstance(exc, RayActorError):
            raise exc
        # an object owned by a dead process (e.g. a batch of an earlier stream reader)
        if isinstance(exc, ray.exceptions.ObjectLostError | ray.exceptions.OwnerDiedError):
            if self.dispatch is not None:
                self.dispatch.serve_again()
            ray.get(self.stream.rewind.remote(self.position()))
            return "objects"
        raise exc

    def shutdown(self, wait_for_names: bool) -> None:
        """Kill every actor; on a cluster that outlives the run, wait until their names are free."""
        for h in self.handles():
            _kill(h)
        if not wait_for_names:
            return
        names = self.names()
        deadline = time.monotonic() + 10
        while names and time.monotonic() < deadline:
            try:
                ray.get_actor(names[0], namespace=self.cfg.ray.namespace)
                time.sleep(0.05)
            except ValueError:
                names.pop(0)


def _recent_batches(cfg: RaydriftConfig) -> int:
    """Batches the stream reader keeps for follow-up updates (``adaptation.followup_data``)."""
    a = cfg.adaptation
    grows = a.until_recovered and a.max_followups > 0 and a.followup_data == "since_drift"
    return a.max_followup_batches if grows else cfg.continual_learning.window_batches
