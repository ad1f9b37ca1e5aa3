"""The loop's stages, one module each (docs/architecture.md):

- :mod:`~raydrift.pipeline.loop`: the loop itself (phases: start, advance, end);
- :mod:`~raydrift.pipeline.dispatch`: batches to monitors, backpressure, version books;
- :mod:`~raydrift.pipeline.supervision`: actor handles, recovery, snapshots, typed actor calls;
- :mod:`~raydrift.pipeline.books`: accepted batches and intervals, recovery of the metric;
- :mod:`~raydrift.pipeline.update`: the update lifecycle (window, training, gate, promotion);
- :mod:`~raydrift.pipeline.gate`: the promotion gate (a pure function);
- :mod:`~raydrift.pipeline.broadcast`: new weights to every monitor;
- :mod:`~raydrift.pipeline.policy`: what the stream does while an update trains (``monitor.on_drift``);
- :mod:`~raydrift.pipeline.heldout`: the accuracy matrix on the regimes' test sets;
- :mod:`~raydrift.pipeline.records` and :mod:`~raydrift.pipeline.summary`: the typed run records.
"""

from raydrift.pipeline.records import DriftEvent, NotPromotedRecord, RunSummary, UpdateRecord

__all__ = ["DriftEvent", "NotPromotedRecord", "RunSummary", "UpdateRecord"]
