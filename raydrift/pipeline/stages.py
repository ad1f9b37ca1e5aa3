"""The loop's stages, bundled: what the on-drift policy and the update lifecycle act on."""

from __future__ import annotations

from dataclasses import dataclass

from raydrift.pipeline.books import Books
from raydrift.pipeline.broadcast import Broadcast
from raydrift.pipeline.dispatch import Dispatcher
from raydrift.pipeline.supervision import Supervisor

__all__ = ["Stages"]


@dataclass
class Stages:
    supervisor: Supervisor
    dispatcher: Dispatcher
    broadcast: Broadcast
    books: Books

    def resume_at(self, batch_id: int, version: int, accept_from_there: bool = True) -> None:
        """Serve the stream again from ``batch_id`` and have the detector continue there with results
        of ``version``; with ``accept_from_there``, the books accept from ``batch_id`` on (results the
        detector dropped are evaluated again)."""
        self.dispatcher.rewind(batch_id)
        self.supervisor.resume_detection(batch_id, version)
        if accept_from_there:
            self.books.processed = batch_id
