"""Callbacks: user code called at the stages of a run (Lightning's habit, Ray Train's manager).

Subclass :class:`Callback`, override the hooks you need and pass instances to
``Coordinator(cfg, callbacks=[...])``. Hooks run in the driver, in the loop's thread, between two steps
of the loop. Each receives a :class:`RunContext`: a read-only view of the run (its config, directory,
live model version, a copy of the summary so far, the actors' handles), never the loop itself. An
exception raised by a hook fails the run with a :class:`CallbackError` that names the callback and the
hook (it is a bug in the callback, not a fault of the pipeline).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from raydrift.config import RaydriftConfig
    from raydrift.pipeline.records import DriftEvent, NotPromotedRecord, RunSummary, UpdateRecord

__all__ = ["Callback", "CallbackError", "CallbackManager", "RunContext"]

HOOKS = ("on_run_start", "on_batch", "on_drift", "on_update_start", "on_update_end", "on_checkpoint", "on_run_end")


@dataclass(frozen=True)
class RunContext:
    """What a callback may see of the run. Properties read the run's state when called: ``version``
    is the live model version at that moment, ``summary`` a copy of the summary so far."""

    cfg: RaydriftConfig
    run_dir: Path
    _version: Callable[[], int]
    _summary: Callable[[], RunSummary]
    _actors: Callable[[], tuple[Any, Any, list[Any]]]

    @property
    def version(self) -> int:
        return self._version()

    @property
    def summary(self) -> RunSummary:
        """A copy: changing it changes nothing in the run."""
        return copy.deepcopy(self._summary())

    @property
    def monitors(self) -> tuple[Any, ...]:
        """The MonitorActor handles (e.g. for fault injection in tests)."""
        return tuple(self._actors()[2])

    @property
    def detector(self) -> Any:
        """The DetectorActor handle."""
        return self._actors()[1]

    @property
    def stream(self) -> Any:
        """The StreamReader handle."""
        return self._actors()[0]


class Callback:
    """Base class: every hook does nothing."""

    def on_run_start(self, ctx: RunContext) -> None:
        """The actors are up; no batch was dispatched yet (also after a resume)."""

    def on_batch(self, ctx: RunContext, row: dict[str, Any]) -> None:
        """A batch was accepted in stream order (``row`` is its ``batches.csv`` row)."""

    def on_drift(self, ctx: RunContext, event: DriftEvent) -> None:
        """A drift alarm counted."""

    def on_update_start(self, ctx: RunContext, event: DriftEvent) -> None:
        """The update for ``event`` is about to train."""

    def on_update_end(self, ctx: RunContext, record: UpdateRecord | NotPromotedRecord) -> None:
        """An update ended: promoted (an :class:`UpdateRecord`), rejected or failed (a
        :class:`NotPromotedRecord`, ``record.status`` says which)."""

    def on_checkpoint(self, ctx: RunContext, path: Path) -> None:
        """A checkpoint was written to ``path``."""

    def on_run_end(self, ctx: RunContext, summary: RunSummary) -> None:
        """The run ended (completed, interrupted or failed); ``summary`` is final."""


class CallbackError(RuntimeError):
    """A callback's hook raised (the message names the callback and the hook)."""


class CallbackManager:
    """Calls one hook on every callback, in order, with the run's context."""

    def __init__(self, callbacks: Sequence[Callback], ctx: RunContext | None = None) -> None:
        self.callbacks = list(callbacks)
        self.ctx = ctx

    def __bool__(self) -> bool:
        return bool(self.callbacks)

    def invoke(self, hook: str, *args: Any) -> None:
        """``callback.<hook>(ctx, *args)`` for each callback; a failure is re-raised as a
        :class:`CallbackError` naming both (a stop, KeyboardInterrupt, passes through)."""
        if hook not in HOOKS:
            raise ValueError(f"unknown callback hook {hook!r}")
        for cb in self.callbacks:
            try:
                getattr(cb, hook)(self.ctx, *args)
            except Exception as exc:
                raise CallbackError(f"callback {type(cb).__name__}.{hook} failed: {type(exc).__name__}: {exc}") from exc
