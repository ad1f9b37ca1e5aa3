"""Evaluating stream batches with the current weights (plain class; MonitorActor wraps it)."""

from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import torch

from raydrift.detection.engine import BatchResult
from raydrift.harness import Batch, Harness
from raydrift.weights import Weights, load_into


class Monitor:
    """Holds one model and evaluates batches with it.

    Weights are versioned: :meth:`set_weights` ignores a version older than (or equal to) the one
    loaded, so retried or reordered broadcasts are harmless. A new version is loaded into a fresh
    model object and swapped in under a lock, so an evaluation never sees half-loaded weights.
    """

    def __init__(
        self,
        harness: Harness,
        metric: str,
        weights: Weights,
        version: int = 0,
        name: str = "monitor",
        device: str = "cpu",
    ) -> None:
        self.harness = harness
        self.metric = metric
        self.name = name
        self.device = torch.device(device)
        self._lock = threading.Lock()
        self._model = self._build(weights)
        self._version = version
        self.batches_evaluated = 0
        self.samples_evaluated = 0
        self.eval_seconds = 0.0

    def _build(self, weights: Weights) -> torch.nn.Module:
        model = self.harness.build_model()
        load_into(model, weights)
        return model.to(self.device).eval()

    @property
    def version(self) -> int:
        return self._version

    def set_weights(self, version: int, weights: Weights) -> int:
        """Load ``weights`` as ``version`` unless a newer one is loaded; returns the version in use."""
        if version <= self._version:
            return self._version
        model = self._build(weights)  # built outside the lock: evaluation goes on meanwhile
        with self._lock:
            if version > self._version:
                self._model, self._version = model, version
        return self._version

    def evaluate(self, batch_id: int, batch: Batch) -> BatchResult:
        """Per-sample values of the monitored metric and batch means of every metric."""
        t0 = time.perf_counter()
        with self._lock:
            model, version = self._model, self._version
        with torch.inference_mode():
            x = batch.x.to(self.device, non_blocking=True)
            y = batch.y.to(self.device, non_blocking=True)
            out = model(x)
            metrics = self.harness.metrics(out, y)
        values = metrics[self.metric].detach().float().cpu().numpy().astype(np.float32)
        means = {k: float(v.float().mean()) for k, v in metrics.items()}
        self.batches_evaluated += 1
        self.samples_evaluated += len(values)
        seconds = time.perf_counter() - t0
        self.eval_seconds += seconds
        return BatchResult(
            batch_id=batch_id,
            regime=batch.regime,
            version=version,
            values=values,
            metrics=means,
            monitor=self.name,
            eval_seconds=seconds,
        )

    def stats(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self._version,
            "batches": self.batches_evaluated,
            "samples": self.samples_evaluated,
            "torch_threads": torch.get_num_threads(),
            "eval_seconds": self.eval_seconds,
        }
