"""Running one continual-learning update with Ray Train and getting versioned weights back."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import torch

from raydrift.config import RaydriftConfig
from raydrift.weights import Weights


@dataclass
class UpdateOutcome:
    weights: Weights
    metrics: dict[str, Any]
    training_seconds: float
    strategy_state: dict[str, Any] | None = None


def is_uri(path: str | os.PathLike[str]) -> bool:
    """True for ``scheme://...`` storage (``s3://``, ``gs://``, ``file://``), False for a local path."""
    return "://" in str(path)


def normalize_storage(path: str | os.PathLike[str]) -> str:
    """A URI unchanged (without a trailing ``/``), a local path made absolute."""
    text = str(path)
    return text.rstrip("/") if is_uri(text) else str(Path(text).expanduser().resolve())


def run_storage(storage_path: str | None, run_dir: Path) -> str:
    """Where a run's shared outputs live: ``<storage_path>/<run name>``, or the run directory itself
    when no ``ray.storage_path`` is configured (enough on one machine)."""
    if storage_path is None:
        return str(Path(run_dir).resolve())
    return f"{normalize_storage(storage_path)}/{Path(run_dir).name}"


def train_storage(storage_path: str | None, run_dir: Path) -> str:
    """The ``storage_path`` given to Ray Train: ``<run storage>/train`` (every update's checkpoints)."""
    return f"{run_storage(storage_path, run_dir)}/train"


def copy_run_outputs(run_dir: Path, storage_path: str | None) -> str | None:
    """Copy the run directory's files (summary, metrics, plots, weights) to ``<storage_path>/<run>/``.

    Returns the destination, or None when there is nothing to do (no ``storage_path``, or it is the
    run directory). Uses ``pyarrow.fs`` like Ray Train, so ``s3://`` and ``gs://`` need the same
    credentials Ray Train uses. Files already there (Ray Train's run files) are kept.
    """
    if storage_path is None:
        return None
    dest = run_storage(storage_path, run_dir)
    src = str(Path(run_dir).resolve())
    if not is_uri(dest) and Path(dest) == Path(src):
        return None
    import pyarrow.fs as pafs

    if is_uri(dest):
        fs, base = pafs.FileSystem.from_uri(dest)
    else:
        fs, base = pafs.LocalFileSystem(), dest
    fs.create_dir(base, recursive=True)
    pafs.copy_files(src, base, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
    return dest


#: Ray Train's controller polls its workers every ``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S`` seconds (2 by
#: default) and only sees that the training function has returned at the next poll: up to that long
#: added to every update, for nothing. A poll is one small actor call per worker.
TRAIN_POLL_INTERVAL_S = 0.2
_POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"


@contextmanager
def train_poll_interval(seconds: float) -> Iterator[None]:
    """Sets ``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S`` while a ``fit()`` starts its controller (Ray Train
    reads it from the driver's environment then), unless the user has set it: theirs wins."""
    if _POLL_ENV in os.environ:
        yield
        return
    os.environ[_POLL_ENV] = str(seconds)
    try:
        yield
    finally:
        os.environ.pop(_POLL_ENV, None)


def make_ray_trainer(train_loop: Any, config: dict[str, Any], cfg: RaydriftConfig, run_config: Any) -> Any:
    """The Ray Train trainer for ``train_loop``: a ``TorchTrainer`` for several workers (its process
    group all-reduces the gradients). One worker needs no torch.distributed, so it runs in Ray Train's
    plain ``DataParallelTrainer``: no process group to set up and no torch TCPStore, which listens on
    every interface, not only the node's address (a local run stays on loopback)."""
    from ray.train import ScalingConfig

    tc = cfg.train
    resources: dict[str, float] = {"CPU": tc.cpus_per_worker}
    if tc.use_gpu:
        resources["GPU"] = tc.gpus_per_worker
    scaling = ScalingConfig(num_workers=tc.num_workers, use_gpu=tc.use_gpu, resources_per_worker=resources)
    if tc.num_workers == 1:
        from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

        return DataParallelTrainer(
            train_loop, train_loop_config=config, scaling_config=scaling, run_config=run_config
        )
    from ray.train.torch import TorchConfig, TorchTrainer

    return TorchTrainer(
        train_loop_per_worker=train_loop,
        train_loop_config=config,
        # NCCL needs CUDA; logical GPUs on a CPU machine (tests, scheduling dry runs) use gloo
        torch_config=TorchConfig(backend="nccl" if torch.cuda.is_available() and tc.use_gpu else "gloo"),
        scaling_config=scaling,
        run_config=run_config,
    )


class Updater:
    """Runs the training loop (:func:`raydrift.learning.loop.train_func`) in a ``TorchTrainer``.

    Each update is its own Ray Train run with a unique name under ``storage_path``: reusing a name
    would make Train V2 resume that run. The new weights come back as the training function's return
    value on rank 0 (``Result.return_value``: numpy weights, the metrics and the strategy state, read
    with ``weights_only=True``), not through a checkpoint: nothing of an update is written to storage
    but Ray Train's own run files.
    """

    def __init__(
        self, cfg: RaydriftConfig, harness_spec: dict[str, Any], storage_path: str | os.PathLike[str]
    ) -> None:
        self.cfg = cfg
        self.harness_spec = harness_spec
        # a URI (s3://, gs://, file://) is handed to Ray Train as is; a local path is made absolute
        self.storage_path = normalize_storage(storage_path)

    def start(self) -> None:
        """Nothing to start: each update is its own ``fit()`` (the interface of
        :class:`raydrift.trainer.StandingTrainer`)."""

    def shutdown(self, timeout: float = 60.0) -> None:
        """Nothing runs between updates."""

    def run(
        self,
        weights_ref: ray.ObjectRef,
        data_ref: ray.ObjectRef,
        version: int,
        strategy: str | None = None,
        strategy_state_ref: ray.ObjectRef | None = None,
    ) -> UpdateOutcome:
        """Train from the weights behind ``weights_ref`` on ``data_ref`` (an UpdateData) with
        ``strategy`` (default: ``continual_learning.strategy``); returns the new weights."""
        from ray.train import FailureConfig, RunConfig

        from raydrift.learning.loop import load_strategy_state, train_func

        tc = self.cfg.train
        config = {
            "harness": self.harness_spec["spec"],
            "harness_options": self.harness_spec["options"],
            "seed": self.cfg.seed,
            "batch_size": self.cfg.stream.batch_size,
            "train": tc.model_dump(),
            "continual_learning": {
                **self.cfg.continual_learning.model_dump(),
                # another strategy than the configured one (naive fine-tuning) takes its default options
                **({"strategy": strategy, "params": {}} if strategy and strategy != self.cfg.continual_learning.strategy else {}),
            },
            "weights_ref": weights_ref,
            "data_ref": data_ref,
            "version": version,
            "strategy_state": strategy_state_ref,  # e.g. EWC's Fisher, DER++'s recorded logits
        }
        run_config = RunConfig(
            name=f"update-{version:04d}-{uuid.uuid4().hex[:8]}",
            storage_path=self.storage_path,
            failure_config=FailureConfig(max_failures=tc.max_failures),
        )
        trainer = make_ray_trainer(train_func, config, self.cfg, run_config)
        t0 = time.perf_counter()
        with train_poll_interval(TRAIN_POLL_INTERVAL_S):
            result = trainer.fit()  # raises when training failed (after max_failures retries)
        seconds = time.perf_counter() - t0
        out = result.return_value  # type: ignore[attr-defined]  # Train V2's Result; the stubs are V1's
        if not isinstance(out, dict) or "weights" not in out:
            raise RuntimeError(f"update {version}: the training loop returned no weights")
        state = out.get("strategy_state")
        return UpdateOutcome(
            weights=out["weights"],
            metrics=dict(out.get("metrics") or {}),
            training_seconds=seconds,
            strategy_state=load_strategy_state(state) if state is not None else None,
        )
