"""The one training loop: pre-training, drift updates (1 or N workers) and evaluation.

Every update runs :func:`train_update`, whatever the strategy and however many workers: under Ray
Train through :func:`train_func` (the per-worker function of a ``TorchTrainer``), in a test or in a
single process by calling it directly.

Distributed semantics
---------------------
All randomness that decides *which samples* a step sees is derived from ``(seed, epoch, step)`` and is
identical on every rank: the per-epoch permutation of the window, and the history batch drawn from
the replay memory. Each global step of ``batch_size`` samples is split ``chunk[rank::world_size]``;
each rank back-propagates its shard's loss scaled by ``local_n / global_n`` and the gradients are
summed over ranks before ``optimizer.step()``. For losses that are means over samples, N workers
therefore take the same steps as one worker on the same global batches (up to floating-point
summation order), provided the model has no batch-dependent layers (BatchNorm statistics are per
shard) and no per-rank randomness (dropout masks differ between shards).

The model is kept as a plain ``nn.Module`` (no DDP wrapper): strategies may call
``torch.func.functional_call`` on it, and gradients are all-reduced here, once per step, in one
flattened buffer per dtype.
"""

from __future__ import annotations

import io
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from raydrift.config import ContinualLearningConfig, TrainConfig
from raydrift.data import StepContext, UpdateData
from raydrift.harness import Harness
from raydrift.learning.memory import sample_indices
from raydrift.learning.strategies.base import UpdateStrategy
from raydrift.weights import load_weights

__all__ = [
    "StepContext",
    "UpdateData",
    "all_reduce_gradients",
    "compute_step_gradients",
    "evaluate",
    "load_strategy_state",
    "pretrain",
    "seed_everything",
    "train_func",
    "train_update",
]

AllReduce = Callable[[Tensor], Any]

# Stream tags of the derived seeds, so the permutation and history draws never share a stream.
_PERMUTATION = 1
_HISTORY = 2


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, numpy's global generator and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _derived_seed(seed: int, tag: int, epoch: int, step: int) -> int:
    # Fixed-length entropy: SeedSequence maps [a, b] and [a, b, 0] to the same state.
    entropy = [int(v) % 2**64 for v in (seed, tag, epoch, step)]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0] >> 1)


def _generator(seed: int, tag: int, epoch: int, step: int = 0) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(_derived_seed(seed, tag, epoch, step))
    return g


def _device_of(model: nn.Module) -> torch.device:
    return next((p.device for p in model.parameters()), torch.device("cpu"))


def _sync(device: torch.device) -> None:
    # CUDA kernels are asynchronous: without this the timings below would measure kernel launches.
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def all_reduce_gradients(model: nn.Module, all_reduce: AllReduce) -> None:
    """SUM-all-reduce the gradients of every trainable parameter, in place.

    Gradients are flattened into one buffer per (dtype, device), so a step costs one collective per
    dtype rather than one per parameter. A trainable parameter without a gradient on this rank gets a
    zero gradient first: every rank must take part in the same collectives in the same order.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    groups: dict[tuple[torch.dtype, torch.device], list[Tensor]] = {}
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        groups.setdefault((p.grad.dtype, p.grad.device), []).append(p.grad)
    for grads in groups.values():
        flat = torch.cat([g.reshape(-1) for g in grads])
        all_reduce(flat)
        offset = 0
        for g in grads:
            g.copy_(flat[offset : offset + g.numel()].view_as(g))
            offset += g.numel()


@dataclass
class _Step:
    """The global batch of one step (indices into the window and the memory; same on every rank)."""

    epoch: int
    step: int
    current: Tensor
    history: Tensor


def _global_steps(
    n: int, mem_n: int, strategy: UpdateStrategy, batch_size: int, epoch: int, seed: int
) -> Iterator[_Step]:
    perm = torch.randperm(n, generator=_generator(seed, _PERMUTATION, epoch))
    for step in range(math.ceil(n / batch_size)):
        current = perm[step * batch_size : (step + 1) * batch_size]
        h = strategy.history_batch_size(len(current)) if mem_n > 0 else 0
        history = sample_indices(mem_n, h, _generator(seed, _HISTORY, epoch, step))
        yield _Step(epoch, step, current, history)


def compute_step_gradients(
    model: nn.Module,
    harness: Harness,
    strategy: UpdateStrategy,
    x: Tensor,
    y: Tensor,
    x_hist: Tensor | None,
    y_hist: Tensor | None,
    rank: int = 0,
    world_size: int = 1,
    all_reduce: AllReduce | None = None,
    epoch: int = 0,
    step: int = 0,
    hist_index: Tensor | None = None,
) -> Tensor:
    """Zero the gradients and accumulate this rank's share of one global step's gradient.

    ``x, y`` (and ``x_hist, y_hist``) are the *global* batches; this rank takes ``[rank::world_size]``
    of each, moves it to the model's device and calls :meth:`UpdateStrategy.backward`. Summing the
    resulting gradients over ranks (:func:`all_reduce_gradients`) gives the 1-worker gradient.
    ``hist_index`` (optional) is the global history batch's row indices into the memory; the strategy
    sees this rank's ``[rank::world_size]`` of it as ``ctx.hist_index``.

    Returns
    -------
    Tensor
        The detached scaled loss of this rank's shard (sums over ranks to the global step loss).
    """
    device = _device_of(model)
    has_hist = x_hist is not None and y_hist is not None and len(x_hist) > 0
    ctx = StepContext(
        rank=rank,
        world_size=world_size,
        global_n=len(x),
        global_hist_n=len(x_hist) if has_hist and x_hist is not None else 0,
        epoch=epoch,
        step=step,
        all_reduce=all_reduce if world_size > 1 else None,
        hist_index=hist_index[rank::world_size] if hist_index is not None and has_hist else None,
    )
    xc = x[rank::world_size].to(device, non_blocking=True)
    yc = y[rank::world_size].to(device, non_blocking=True)
    xh = yh = None
    if has_hist and x_hist is not None and y_hist is not None:
        xh = x_hist[rank::world_size].to(device, non_blocking=True)
        yh = y_hist[rank::world_size].to(device, non_blocking=True)
    for p in model.parameters():
        p.grad = None
    return strategy.backward(model, harness, xc, yc, xh, yh, ctx)


def _one_step(
    model: nn.Module,
    harness: Harness,
    strategy: UpdateStrategy,
    data: UpdateData,
    s: _Step,
    optimizer: torch.optim.Optimizer,
    epoch: int,
    rank: int,
    world_size: int,
    all_reduce: AllReduce | None,
    device: torch.device,
) -> tuple[torch.Tensor, float, float, float]:
    """One optimizer step of :func:`_fit` on the step plan ``s``: its scaled loss and the seconds of
    forward/backward, gradient all-reduce and optimizer step."""
    t0 = time.perf_counter()
    hist = len(s.history) > 0
    loss = compute_step_gradients(
        model,
        harness,
        strategy,
        data.window_x[s.current],
        data.window_y[s.current],
        data.memory_x[s.history] if hist else None,
        data.memory_y[s.history] if hist else None,
        rank=rank,
        world_size=world_size,
        all_reduce=all_reduce,
        epoch=epoch,
        step=s.step,
        hist_index=s.history if hist else None,
    )
    _sync(device)
    t1 = time.perf_counter()
    if world_size > 1 and all_reduce is not None:
        all_reduce_gradients(model, all_reduce)
        _sync(device)
    t2 = time.perf_counter()
    optimizer.step()
    _sync(device)
    t3 = time.perf_counter()
    return loss, t1 - t0, t2 - t1, t3 - t2


def _fit(
    model: nn.Module,
    harness: Harness,
    strategy: UpdateStrategy,
    data: UpdateData,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    rank: int,
    world_size: int,
    all_reduce: AllReduce | None,
    max_steps: int | None = None,
) -> dict[str, Any]:
    """The update's loop: ``epochs`` epochs over the window, or with ``max_steps`` exactly that many
    optimizer steps (as many epochs as that takes, the last one cut short; none for an empty window)."""
    if world_size > 1 and all_reduce is None:
        raise ValueError("train_update with world_size > 1 needs an all_reduce function")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, {world_size})")
    device = _device_of(model)
    n, mem_n = len(data.window_y), len(data.memory_y)
    optimizer = harness.build_optimizer(model.parameters(), lr)
    was_training = model.training
    model.train()
    strategy.setup(model, harness, data)
    epoch_losses: list[float] = []
    steps = 0
    t_fb = t_ar = t_opt = 0.0
    t_start = time.perf_counter()
    if max_steps is not None:
        epochs = math.ceil(max_steps / math.ceil(n / batch_size)) if n > 0 else 0
    samples = 0
    for epoch in range(epochs):
        loss_sum = torch.zeros((), device=device)
        epoch_steps = 0
        for s in _global_steps(n, mem_n, strategy, batch_size, epoch, seed):
            if max_steps is not None and steps >= max_steps:
                break
            samples += len(s.current)
            loss, fb, ar, opt = _one_step(
                model, harness, strategy, data, s, optimizer, s.epoch, rank, world_size, all_reduce, device
            )
            loss_sum += loss
            t_fb += fb
            t_ar += ar
            t_opt += opt
            steps += 1
            epoch_steps += 1
        # one scalar collective per epoch: the per-rank scaled losses sum to the global step losses
        if world_size > 1 and all_reduce is not None:
            all_reduce(loss_sum)
        epoch_losses.append(float(loss_sum) / epoch_steps if epoch_steps else float("nan"))
    strategy.teardown(model, harness)
    model.train(was_training)
    return {
        "epoch_losses": epoch_losses,
        "steps": steps,
        "samples": samples,
        "seconds": time.perf_counter() - t_start,
        "forward_backward_seconds": t_fb,
        "all_reduce_seconds": t_ar,
        "optimizer_seconds": t_opt,
    }


def train_update(
    model: nn.Module,
    harness: Harness,
    strategy: UpdateStrategy,
    data: UpdateData,
    cfg: TrainConfig,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    all_reduce: AllReduce | None = None,
) -> dict[str, float]:
    """Update ``model`` in place: ``cfg.epochs`` epochs over the window with ``strategy`` (or
    ``cfg.steps`` optimizer steps when set, whatever the window's size).

    Parameters
    ----------
    model : nn.Module
        The plain module (not DDP-wrapped), already on its device; trained in place.
    harness : Harness
        Supplies the loss and the optimizer (``harness.build_optimizer(model.parameters(), cfg.lr)``).
    strategy : UpdateStrategy
        What each step minimises; its ``setup`` / ``teardown`` hooks run around the epochs.
    data : UpdateData
        Window and memory (CPU tensors). Every rank receives the whole of it.
    cfg : TrainConfig
        ``epochs`` (or ``steps``), ``batch_size`` (global, all ranks together) and ``lr`` are used.
    seed : int
        Decides the window permutation of each epoch and the history batch of each step; must be the
        same on every rank.
    rank, world_size : int
        This worker and the number of workers (see the module docstring for the semantics).
    all_reduce : callable, optional
        In-place SUM all-reduce over ranks; required when ``world_size > 1``.

    Returns
    -------
    dict[str, float]
        ``train_loss`` (mean global step loss over the last epoch, identical on every rank; NaN for an
        empty window), ``steps``
        (optimizer steps), ``samples`` (window samples trained on, all epochs and ranks), ``seconds``
        (wall time of the epochs), ``forward_backward_seconds``, ``all_reduce_seconds`` and
        ``optimizer_seconds`` (their parts, summed over steps; on CUDA the device is synchronised at
        each boundary so the split is real).
    """
    out = _fit(
        model, harness, strategy, data, cfg.epochs, cfg.lr, cfg.batch_size, seed, rank, world_size, all_reduce,
        max_steps=cfg.steps,
    )
    losses = out.pop("epoch_losses")
    return {"train_loss": losses[-1] if losses else float("nan"), **{k: float(v) for k, v in out.items()}}


def pretrain(
    model: nn.Module,
    harness: Harness,
    x: Tensor,
    y: Tensor,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
) -> list[float]:
    """Plain single-process training of the initial model on ``(x, y)``; returns the loss of each epoch.

    Runs the same loop as :func:`train_update` with the naive strategy and no memory; the loss of an
    epoch is the mean of its step losses.
    """
    from raydrift.learning.strategies.naive import NaiveUpdate

    if epochs <= 0:
        return []
    data = UpdateData(x, y, x[:0], y[:0])
    out = _fit(model, harness, NaiveUpdate(), data, epochs, lr, batch_size, seed, 0, 1, None)
    return list(out["epoch_losses"])


@torch.no_grad()
def evaluate(
    model: nn.Module, harness: Harness, x: Tensor, y: Tensor, batch_size: int = 512
) -> dict[str, float]:
    """Mean of each of ``harness.metrics`` over all samples of ``(x, y)`` (eval mode, no gradients).

    Computed in batches of ``batch_size``; the result is the mean over samples (not over batches), so
    it does not depend on ``batch_size``. The model's train/eval mode is restored afterwards. An empty
    set gives ``{}``.
    """
    n = len(y)
    if n == 0:
        return {}
    device = _device_of(model)
    was_training = model.training
    model.eval()
    sums: dict[str, Tensor] = {}
    try:
        for start in range(0, n, batch_size):
            xb = x[start : start + batch_size].to(device, non_blocking=True)
            yb = y[start : start + batch_size].to(device, non_blocking=True)
            for name, values in harness.metrics(model(xb), yb).items():
                total = values.detach().float().sum()
                sums[name] = sums[name] + total if name in sums else total
    finally:
        model.train(was_training)
    return {name: float(total) / n for name, total in sums.items()}


def _data_accuracies(model: nn.Module, harness: Harness, data: UpdateData) -> dict[str, float]:
    """Accuracy of the updated model on the window and on the memory it trained on (if defined)."""
    out: dict[str, float] = {}
    for name, (x, y) in (("window", (data.window_x, data.window_y)), ("memory", (data.memory_x, data.memory_y))):
        acc = evaluate(model, harness, x, y).get("accuracy") if len(y) else None
        if acc is not None:
            out[f"{name}_accuracy"] = acc
    return out


def _update_inputs(config: dict[str, Any], train_cfg: TrainConfig, cl_cfg: ContinualLearningConfig) -> tuple[Any, ...]:
    """:func:`train_func`'s harness, model (with the start weights, on its device), data and strategy
    (with the previous update's state); refs in ``config`` are fetched."""
    import ray
    import ray.train.torch

    from raydrift.harness import resolve_harness
    from raydrift.learning.strategies import make_strategy
    from raydrift.weights import load_into

    def fetch(value: Any) -> Any:
        return ray.get(value) if isinstance(value, ray.ObjectRef) else value

    cls = resolve_harness(config["harness"])
    options = cls.Options.model_validate(config.get("harness_options") or {})
    harness = cls(options, seed=int(config["seed"]), batch_size=int(config["batch_size"]))
    model = harness.build_model()
    load_into(model, fetch(config["weights_ref"]))
    if train_cfg.use_gpu and torch.cuda.is_available():  # logical GPUs without CUDA: stay on CPU
        model = model.to(ray.train.torch.get_device())
    strategy = make_strategy(cl_cfg.strategy, cl_cfg)
    previous = fetch(config.get("strategy_state"))
    if previous:
        strategy.load_state_dict(previous)
    return harness, model, fetch(config["data_ref"]), strategy


def train_func(config: dict[str, Any]) -> dict[str, Any] | None:
    """Per-worker function of the Ray Train ``TorchTrainer`` that runs one drift update.

    ``config`` keys: ``harness`` (spec), ``harness_options`` (dict), ``seed``, ``batch_size`` (stream
    batch size, for the harness constructor), ``train`` (:class:`TrainConfig` as a dict),
    ``continual_learning`` (:class:`ContinualLearningConfig` as a dict), ``weights_ref`` (ObjectRef of
    numpy weights, or the weights themselves), ``data_ref`` (ObjectRef of an :class:`UpdateData`, or
    the data itself), ``version`` (the version the update produces) and, optionally,
    ``strategy_state`` (an ObjectRef of, or the dict returned by, the previous update's
    ``strategy.state_dict()``: how EWC's Fisher and DER++'s recorded logits persist across updates).

    Every rank trains the plain module (moved to ``ray.train.torch.get_device()`` when
    ``train.use_gpu``) with gradients all-reduced through ``torch.distributed`` when there is more
    than one worker.

    Returns
    -------
    dict or None
        On rank 0 (Ray Train hands it to the driver as ``Result.return_value``; other ranks return
        None): ``weights`` (the updated CPU ``state_dict`` as numpy arrays, see
        :func:`raydrift.weights.to_numpy`), ``metrics`` (those of :func:`train_update` plus
        ``version``, ``world_size``, ``window_samples``, ``memory_samples``, ``torch_threads`` and,
        when the harness has an ``accuracy`` metric, ``window_accuracy`` and ``memory_accuracy``: the
        updated model on the window and the memory it trained on) and ``strategy_state`` (the
        strategy's ``state_dict()`` after the update, as the bytes of ``torch.save``: read them with
        :func:`load_strategy_state`, i.e. ``torch.load(..., weights_only=True)``; pass the dict as the
        next update's ``strategy_state``).

    Nothing is reported with ``ray.train.report`` and no checkpoint is written. The weights come
    back with the function's return value, which is faster: a report is handed to the controller at
    one poll of the workers and the end of the function seen at the next one (2 s apart by default),
    and a checkpoint goes through a temporary directory, the run's storage and back to the driver.
    Ray Train refuses torch tensors in a return value, hence numpy weights and the strategy state as
    bytes.
    """
    import ray.train
    import torch.distributed as dist

    from raydrift.weights import to_numpy

    ctx = ray.train.get_context()
    rank, world_size = ctx.get_world_rank(), ctx.get_world_size()
    train_cfg = TrainConfig.model_validate(config["train"])
    cl_cfg = ContinualLearningConfig.model_validate(config["continual_learning"])
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, int(train_cfg.cpus_per_worker)))
    try:
        harness, model, data, strategy = _update_inputs(config, train_cfg, cl_cfg)
        seed, version = int(config["seed"]), int(config["version"])
        seed_everything(seed + version)
        all_reduce = (
            dist.all_reduce if world_size > 1 and dist.is_available() and dist.is_initialized() else None
        )
        if world_size > 1 and all_reduce is None:
            raise RuntimeError(f"{world_size} Ray Train workers but torch.distributed is not initialized")
        metrics: dict[str, Any] = train_update(
            model, harness, strategy, data, train_cfg, seed + version, rank, world_size, all_reduce
        )
        metrics.update(
            version=version,
            world_size=world_size,
            window_samples=len(data.window_y),
            memory_samples=len(data.memory_y),
            torch_threads=torch.get_num_threads(),
        )
        if rank == 0:
            metrics.update(_data_accuracies(model, harness, data))
    finally:
        torch.set_num_threads(threads)
    if rank != 0:
        return None
    strategy_state = io.BytesIO()
    torch.save(strategy.state_dict(), strategy_state)
    return {"weights": to_numpy(model.state_dict()), "metrics": metrics, "strategy_state": strategy_state.getvalue()}


def load_strategy_state(data: bytes) -> dict[str, Any]:
    """The strategy state :func:`train_func` returns as bytes, loaded on the CPU with
    ``weights_only=True`` (plain containers of tensors only, as the run's checkpoint needs)."""
    return load_weights(io.BytesIO(data))
