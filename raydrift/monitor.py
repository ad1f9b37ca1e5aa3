"""Evaluating stream batches with the current weights (plain class; MonitorActor wraps it)."""

from __future__ import annotations

import collections
import copy
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from raydrift.detection.engine import BatchResult
from raydrift.harness import Batch, Harness
from raydrift.weights import Weights, load_into, shared_tensors

_Slot = tuple[dict[str, Any], str, bool | None, torch.Size, torch.dtype]
_SLOTS: weakref.WeakKeyDictionary[torch.nn.Module, dict[str, _Slot] | None] = weakref.WeakKeyDictionary()


def _state_slots(model: torch.nn.Module) -> dict[str, _Slot] | None:
    """Where each state-dict entry of ``model`` lives: ``key -> (the module's parameter or buffer
    table, attribute, requires_grad for a parameter or None for a buffer, shape, dtype)``, cached per
    model object. None when ``load_state_dict`` must do the work: a module with its own loading logic
    (outside ``torch.nn``), load hooks, or extra state."""
    if model in _SLOTS:
        return _SLOTS[model]
    slots: dict[str, _Slot] | None = {}
    for _, mod in model.named_modules():
        custom = type(mod)._load_from_state_dict is not torch.nn.Module._load_from_state_dict
        if (custom and not type(mod).__module__.startswith("torch.nn.")) or (
            mod._load_state_dict_pre_hooks or mod._load_state_dict_post_hooks
        ):
            slots = None
            break
    if slots is not None:
        for key, value in model.state_dict(keep_vars=True).items():
            prefix, _, attr = key.rpartition(".")
            mod = model.get_submodule(prefix) if prefix else model
            if attr in mod._parameters and mod._parameters[attr] is not None:
                slots[key] = (mod._parameters, attr, value.requires_grad, value.shape, value.dtype)
            elif attr in mod._buffers and mod._buffers[attr] is not None:
                slots[key] = (mod._buffers, attr, None, value.shape, value.dtype)
            else:
                slots = None
                break
    _SLOTS[model] = slots
    return slots


class Monitor:
    """Holds one model and evaluates batches with it.

    Weights are versioned: :meth:`set_weights` ignores a version older than (or equal to) the one
    loaded, so retried or reordered broadcasts are harmless. A new version is loaded into a fresh
    model object and swapped in under a lock, so an evaluation never sees half-loaded weights.
    :meth:`ensure_version` is how a new version arrives in a run: with the first evaluation task that
    needs it (the coordinator sends the version's object ref along), loaded only when it is newer.

    With ``label_free`` set, each :class:`BatchResult` also carries a per-sample label-free signal for
    ``drift_detection.label_free`` (off by default: nothing extra is computed or sent):
    ``"confidence"`` (the largest softmax probability of the model's output, which must be class
    logits), ``"entropy"`` (the entropy of that softmax, in nats) or ``"features"`` (the harness's
    ``features(model, x)`` when it defines one, e.g. an embedding; otherwise the flattened input).

    Bad input never raises: a batch whose inputs hold NaN/inf, whose per-sample shape or dtype differs
    from the batches this monitor evaluated before, whose labels do not match its inputs in number, on
    which the model raises, or whose metric comes out non-finite is *quarantined*: the result carries
    the reason in :attr:`BatchResult.quarantined` and no values (see :meth:`check_batch`).
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
        self._spare: torch.nn.Module | None = None  # the previous model, reused by the next zero-copy swap
        self._busy: collections.Counter[int] = collections.Counter()  # id(model) -> evaluations using it
        self._model = self._build(weights)
        self._version = version
        self.batches_evaluated = 0
        self.samples_evaluated = 0
        self.eval_seconds = 0.0
        self.quarantined = 0
        self.swaps = 0  # versions loaded after the first
        self.swap_seconds = 0.0  # fetching and loading them
        self.last_swap: tuple[int, float, float] | None = None  # (version, start, end), time.monotonic()
        self._input_spec: tuple[tuple[int, ...], torch.dtype] | None = None  # of the first good batch

    def _build(self, weights: Weights) -> torch.nn.Module:
        """A new model object holding ``weights``: a copy of the current model's structure (no fresh
        random initialisation, which costs more than the copy), or the harness's model the first time.

        On the CPU, read-only numpy weights (what a monitor actor gets from Ray's object store) become
        the model's tensors without a copy (see :meth:`_assign`)."""
        current = getattr(self, "_model", None)
        if current is not None and self._assignable(weights):
            with self._lock:  # the previous model, unless an evaluation still uses it
                spare, self._spare = self._spare, None
                if spare is not None and self._busy[id(spare)]:
                    spare = None
            return self._assign(spare if spare is not None else copy.deepcopy(current), weights)
        model = copy.deepcopy(current) if current is not None else self.harness.build_model()
        load_into(model, weights)
        return model.to(self.device).eval()

    def _assignable(self, weights: Weights) -> bool:
        """True on the CPU when every array is read-only (shared object-store memory nobody writes
        to): such weights become the model's tensors. Arrays a caller may still change are copied."""
        return self.device.type == "cpu" and all(
            isinstance(v, np.ndarray) and not v.flags.writeable for v in weights.values()
        )

    @staticmethod
    def _assign(model: torch.nn.Module, weights: Weights) -> torch.nn.Module:
        """``model`` (no evaluation uses it) with ``weights``' arrays as its tensors, not copied.

        The arrays go in as the modules' parameters and buffers (what ``load_state_dict(assign=True)``
        does, which is the fallback: see :func:`_state_slots`). The broadcast costs one ``ray.put`` in
        the driver and, per monitor, no copy of the weights: monitors on one node share the object
        store's single copy. The model only reads them (an evaluation in inference mode writes no
        parameter or buffer). The model object is the one replaced by the swap before (double
        buffering), so a swap builds nothing either."""
        state = dict(zip(weights, shared_tensors(weights.values()), strict=True))
        slots = _state_slots(model)
        if slots is not None and slots.keys() == state.keys() and all(
            slots[k][3] == t.shape and slots[k][4] == t.dtype for k, t in state.items()
        ):
            for k, t in state.items():
                table, attr, requires_grad, _, _ = slots[k]
                table[attr] = torch.nn.Parameter(t, requires_grad=requires_grad) if requires_grad is not None else t
            return model
        model.load_state_dict(state, assign=True)  # raises on missing, unexpected or mis-shaped keys
        _SLOTS.pop(model, None)
        return model.eval()

    @property
    def version(self) -> int:
        return self._version

    def set_weights(self, version: int, weights: Weights, t0: float | None = None) -> int:
        """Load ``weights`` as ``version`` unless a newer one is loaded; returns the version in use.

        ``t0`` (``time.monotonic()``): when loading began, if it began before this call (a fetch)."""
        if version <= self._version:
            return self._version
        t0 = time.monotonic() if t0 is None else t0
        model = self._build(weights)  # built outside the lock: evaluation goes on meanwhile
        with self._lock:
            if version > self._version:
                old, self._model, self._version = self._model, model, version
                if self._assignable(weights):
                    self._spare = old
                t1 = time.monotonic()
                self.swaps += 1
                self.swap_seconds += t1 - t0
                self.last_swap = (version, t0, t1)
        return self._version

    def ensure_version(self, version: int, fetch: Callable[[], Weights] | None) -> int:
        """At least ``version`` in use before the next evaluation: when it is newer than the one loaded,
        ``fetch()`` gives its weights (in a monitor actor, the arrays Ray resolved from the object store
        for the task) and they are loaded. Returns the version in use.

        Raises
        ------
        RuntimeError
            when ``version`` is newer and no ``fetch`` came with it (the sender's books are wrong).
        """
        if version <= self._version:
            return self._version
        if fetch is None:
            raise RuntimeError(
                f"{self.name} holds weights version {self._version}; a task needs version {version} "
                "and brought no weights"
            )
        t0 = time.monotonic()
        return self.set_weights(version, fetch(), t0=t0)

    def check_batch(self, batch: Any) -> str | None:
        """Why ``batch`` cannot be evaluated, or None if it looks sound (cheap checks, no model call)."""
        x, y = getattr(batch, "x", None), getattr(batch, "y", None)
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            return f"expected a Batch with tensors x and y, got {type(batch).__name__}"
        if x.ndim == 0 or len(x) == 0:
            return f"empty input (shape {tuple(x.shape)})"
        if len(y) != len(x):
            return f"{len(x)} inputs but {len(y)} labels"
        # a NaN or inf anywhere makes the sum non-finite: one cheap pass, the full check only then
        # (a sum can also overflow to inf with finite values)
        if x.is_floating_point() and not bool(torch.isfinite(x.sum())) and not bool(torch.isfinite(x).all()):
            return f"{int((~torch.isfinite(x)).sum())} non-finite input values (NaN/inf)"
        if self._input_spec is not None:
            shape, dtype = self._input_spec
            if tuple(x.shape[1:]) != shape:
                return f"per-sample input shape {tuple(x.shape[1:])} differs from {shape} of earlier batches"
            if x.dtype != dtype:
                return f"input dtype {x.dtype} differs from {dtype} of earlier batches"
        return None

    def _quarantine(self, batch_id: int, batch: Any, version: int, reason: str, t0: float) -> BatchResult:
        self.quarantined += 1
        return BatchResult(
            batch_id=batch_id,
            regime=int(getattr(batch, "regime", -1)),
            version=version,
            values=np.zeros(0, dtype=np.float32),
            metrics={},
            monitor=self.name,
            eval_seconds=time.perf_counter() - t0,
            quarantined=reason,
        )

    def evaluate(self, batch_id: int, batch: Batch) -> BatchResult:
        """Per-sample values of the monitored metric and batch means of every metric (or a quarantined
        result saying why the batch could not be evaluated)."""
        t0 = time.perf_counter()
        with self._lock:
            model, version = self._model, self._version
            self._busy[id(model)] += 1  # a swap must not reuse this model object meanwhile
        try:
            return self._evaluate(batch_id, batch, model, version, t0)
        finally:
            with self._lock:
                self._busy[id(model)] -= 1
                if not self._busy[id(model)]:
                    del self._busy[id(model)]

    def _evaluate(
        self, batch_id: int, batch: Batch, model: torch.nn.Module, version: int, t0: float
    ) -> BatchResult:
        reason = self.check_batch(batch)
        if reason is not None:
            return self._quarantine(batch_id, batch, version, reason, t0)
        try:
            with torch.inference_mode():
                x = batch.x.to(self.device, non_blocking=True)
                y = batch.y.to(self.device, non_blocking=True)
                out = model(x)
                metrics = self.harness.metrics(out, y)
            values = metrics[self.metric].detach().float().cpu().numpy().astype(np.float32)
        except Exception as exc:  # noqa: BLE001 - bad input must never crash a monitor
            return self._quarantine(batch_id, batch, version, f"the model raised {type(exc).__name__}: {exc}", t0)
        if values.shape != (len(batch.y),) or not np.isfinite(values).all():
            return self._quarantine(
                batch_id, batch, version, f"non-finite or mis-shaped '{self.metric}' values {values.shape}", t0
            )
        try:
            extra = self._label_free(model, x, out) if self.label_free is not None else {}
            means = {k: float(v.float().mean()) for k, v in metrics.items()}
        except Exception as exc:  # noqa: BLE001 - e.g. a harness's features() failing on this batch
            return self._quarantine(
                batch_id, batch, version, f"the label-free signal raised {type(exc).__name__}: {exc}", t0
            )
        if self._input_spec is None:
            self._input_spec = (tuple(batch.x.shape[1:]), batch.x.dtype)
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
            **extra,  # type: ignore[arg-type]
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
            "quarantined": self.quarantined,
            "swaps": self.swaps,
            "swap_seconds": self.swap_seconds,
            "last_swap": self.last_swap,
        }
