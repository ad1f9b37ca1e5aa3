"""Callbacks: user code called at the stages of a run (Lightning's habit).

Subclass :class:`Callback`, override the hooks you need and pass instances to
``Coordinator(cfg, callbacks=[...])``. Hooks run in the driver, in the coordinator's thread, between
two steps of the loop; they may read the coordinator (``coordinator.summary``, ``coordinator.monitors``,
``coordinator.version``) but must not change it. An exception raised by a hook fails the run (it is a
bug in the callback, not a fault of the pipeline).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from raydrift.coordinator import Coordinator


class Callback:
    """Base class: every hook does nothing."""

    def on_run_start(self, coordinator: Coordinator) -> None:
        """The actors are up; no batch was dispatched yet (also after a resume)."""

    def on_batch(self, coordinator: Coordinator, row: dict[str, Any]) -> None:
        """A batch was accepted in stream order (``row`` is its ``batches.csv`` row)."""

    def on_drift(self, coordinator: Coordinator, event: dict[str, Any]) -> None:
        """A drift alarm counted (``event`` is its ``summary.json`` record)."""

    def on_update_start(self, coordinator: Coordinator, event: dict[str, Any]) -> None:
        """The update for ``event`` is about to train."""

    def on_update_end(self, coordinator: Coordinator, record: dict[str, Any]) -> None:
        """An update ended: promoted (``record["status"] == "promoted"``), rejected or failed."""

    def on_checkpoint(self, coordinator: Coordinator, path: Path) -> None:
        """A checkpoint was written to ``path``."""

    def on_run_end(self, coordinator: Coordinator, summary: dict[str, Any]) -> None:
        """The run ended (completed, interrupted or failed); ``summary`` is final."""
