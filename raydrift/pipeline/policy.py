"""What the loop does with the stream while an update trains (``monitor.on_drift``).

- :class:`KeepMonitoring` (``continue``, the default): the monitors keep evaluating the stream with the
  old weights, so there is no downtime; the detector records those results but is not fed until the new
  weights are live (their results would say nothing about the new model).
- :class:`PauseMonitoring` (``pause``): dispatch stops while the update trains, then the stream rewinds
  to the batch after the update's window: every later batch is evaluated with the new weights, so the
  drift events depend only on the stream, the config and the seed, never on the number of monitors or
  on scheduling.
"""

from __future__ import annotations

from typing import ClassVar

from raydrift.pipeline.stages import Stages

__all__ = ["KeepMonitoring", "OnDriftPolicy", "PauseMonitoring", "make_policy"]


class OnDriftPolicy:
    """The base: each hook is called by the update lifecycle at its point."""

    name: ClassVar[str]
    monitors_during_update: ClassVar[bool]
    """True: the loop keeps dispatching and ingesting while an update trains."""

    def before_training(self, stages: Stages, upto: int, after_alarm: bool) -> None:
        """An update on the window ending at ``upto`` is about to train. ``after_alarm``: it was
        started on the alarm itself, so the detector stopped at ``upto`` and dropped what came after."""
        raise NotImplementedError

    def after_update(self, stages: Stages, upto: int, version: int) -> None:
        """The update ended; ``version`` is live (the new one, or the old one if it was not promoted)."""
        raise NotImplementedError

    def update_done(self, stages: Stages) -> None:
        """The update's books are closed (its records written, the held-out sets evaluated)."""


class KeepMonitoring(OnDriftPolicy):
    name = "continue"
    monitors_during_update = True

    def before_training(self, stages: Stages, upto: int, after_alarm: bool) -> None:
        if after_alarm:  # results after the alarm were dropped: serve them again
            stages.dispatcher.drain()
            stages.resume_at(upto + 1, stages.broadcast.version)
        stages.supervisor.hold_detection()

    def after_update(self, stages: Stages, upto: int, version: int) -> None:
        stages.supervisor.release_detection(version)


class PauseMonitoring(OnDriftPolicy):
    name = "pause"
    monitors_during_update = False

    def before_training(self, stages: Stages, upto: int, after_alarm: bool) -> None:
        stages.books.stop_clock()
        stages.dispatcher.drain()

    def after_update(self, stages: Stages, upto: int, version: int) -> None:
        stages.resume_at(upto + 1, version)

    def update_done(self, stages: Stages) -> None:
        stages.books.start_clock()


POLICIES: dict[str, type[OnDriftPolicy]] = {p.name: p for p in (KeepMonitoring, PauseMonitoring)}


def make_policy(on_drift: str) -> OnDriftPolicy:
    return POLICIES[on_drift]()
