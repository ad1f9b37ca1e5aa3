"""Held-out evaluation: the accuracy matrix (every regime's test set, after each update).

Row ``k`` is the model's test accuracy on every regime's held-out set, taken at the start (``initial``)
and after each promoted update; :func:`raydrift.pipeline.summary.cl_metrics` turns the matrix into
average accuracy, forgetting and backward transfer. A harness without an ``accuracy`` metric gets rows
of None.
"""

from __future__ import annotations

import time

import torch

from raydrift.harness import Harness
from raydrift.learning.loop import evaluate
from raydrift.pipeline.records import AccuracyRow, MetricMatrix, RunSummary
from raydrift.weights import Weights, load_into

__all__ = ["HeldOut"]


class HeldOut:
    """Evaluates ``model`` (the driver's copy, on ``device``) on the harness's test sets."""

    def __init__(
        self,
        harness: Harness,
        test_sets: dict[int, tuple[torch.Tensor, torch.Tensor]],
        model: torch.nn.Module,
        summary: RunSummary,
    ) -> None:
        self.harness, self.test_sets, self.model, self.summary = harness, test_sets, model, summary
        self.regimes = sorted(test_sets)

    def row(self, label: str, version: int, batch_id: int, weights: Weights | None = None) -> list[float | None]:
        """Append a row for the model (after loading ``weights`` into it, when given) and return it."""
        t0 = time.perf_counter()
        if weights is not None:
            load_into(self.model, weights)
        directions = self.harness.metric_directions
        scores = []
        for r in self.regimes:
            x, y = self.test_sets[r]
            scores.append(evaluate(self.model, self.harness, x, y))
        accs = [sc.get("accuracy") if "accuracy" in directions else None for sc in scores]
        self.summary.accuracy_matrix.rows.append(AccuracyRow(label=label, version=version, batch_id=batch_id, accuracy=accs))
        matrices = self.summary.metric_matrices
        for name, higher in directions.items():
            m = matrices.setdefault(name, MetricMatrix(metric=name, higher_is_better=higher))
            values = [sc.get(name) for sc in scores]
            m.rows.append(AccuracyRow(label=label, version=version, batch_id=batch_id, accuracy=values))
        prof = self.summary.profile
        prof["accuracy_matrix_seconds"] = prof.get("accuracy_matrix_seconds", 0.0) + time.perf_counter() - t0
        return accs

    def value(self, metric: str, regime: int, row: int = -1) -> float | None:
        """``metric`` on ``regime``'s test set in matrix row ``row`` (None: not measured)."""
        m = self.summary.metric_matrices.get(metric)
        if m is None or not m.rows or regime not in self.regimes:
            return None
        return m.rows[row].accuracy[self.regimes.index(regime)]
