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

    With ``label_free`` set, each :class:`BatchResult` also carries a per-sample label-free signal for
    ``drift_detection.label_free`` (off by default: nothing extra is computed or sent):
    ``"confidence"`` (the largest softmax probability of the model's output, which must be class
    logits), ``"entropy"`` (the entropy of that softmax, in nats) or ``"features"`` (the harness's
    ``features(model, x)`` when it defines one, e.g. an embedding; otherwise the flattened input).
    """

    LABEL_FREE_SIGNALS = ("confidence", "entropy", "features")

    def __init__(
        self,
        harness: Harness,
        metric: str,
        weights: Weights,
        version: int = 0,
        name: str = "monitor",
        device: str = "cpu",
        label_free: str | None = None,
    ) -> None:
        if label_free is not None and label_free not in self.LABEL_FREE_SIGNALS:
            raise ValueError(
                f"label_free must be one of {', '.join(self.LABEL_FREE_SIGNALS)} or None, got {label_free!r}"
            )
        self.label_free = label_free
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
        extra = self._label_free(model, x, out) if self.label_free is not None else {}
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
            **extra,
        )

    def _label_free(self, model: torch.nn.Module, x: torch.Tensor, out: torch.Tensor) -> dict[str, np.ndarray]:
        """The per-sample label-free signal named by ``self.label_free``."""
        # inference mode here too: a harness's features(model, x) runs the model again, and must not
        # record an autograd graph for it
        with torch.inference_mode():
            if self.label_free == "features":
                feats_fn = getattr(self.harness, "features", None)
                feats = feats_fn(model, x) if callable(feats_fn) else x
                return {"features": feats.detach().float().reshape(x.shape[0], -1).cpu().numpy()}
            logp = torch.log_softmax(out.detach().float().reshape(out.shape[0], -1), dim=1)
            if self.label_free == "confidence":
                return {"confidence": logp.max(dim=1).values.exp().cpu().numpy()}
            return {"entropy": (-(logp.exp() * logp).sum(dim=1)).cpu().numpy()}

    def stats(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self._version,
            "batches": self.batches_evaluated,
            "samples": self.samples_evaluated,
            "torch_threads": torch.get_num_threads(),
            "eval_seconds": self.eval_seconds,
        }
