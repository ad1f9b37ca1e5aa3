"""Running one continual-learning update with Ray Train and getting versioned weights back."""

from __future__ import annotations

import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
import torch

from raydrift.config import RaydriftConfig
from raydrift.weights import Weights, load_weights, to_numpy


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
    credentials Ray Train uses. Files already there (the Train checkpoints) are kept.
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


class Updater:
    """Runs the training loop (:func:`raydrift.learning.loop.train_func`) in a ``TorchTrainer``.

    Each update is its own Ray Train run with a unique name under ``storage_path``: reusing a name
    would make Train V2 resume that run. The new weights come back through the result's checkpoint
    (a ``state_dict`` loaded with ``weights_only=True``).
    """

    def __init__(
        self, cfg: RaydriftConfig, harness_spec: dict[str, Any], storage_path: str | os.PathLike[str]
    ) -> None:
        self.cfg = cfg
        self.harness_spec = harness_spec
        # a URI (s3://, gs://, file://) is handed to Ray Train as is; a local path is made absolute
        self.storage_path = normalize_storage(storage_path)

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
        from ray.train import FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchConfig, TorchTrainer

        from raydrift.learning.loop import train_func

        tc = self.cfg.train
        resources: dict[str, float] = {"CPU": tc.cpus_per_worker}
        if tc.use_gpu:
            resources["GPU"] = tc.gpus_per_worker
        config = {
            "harness": self.harness_spec["spec"],
            "harness_options": self.harness_spec["options"],
            "seed": self.cfg.seed,
            "batch_size": self.cfg.stream.batch_size,
            "train": tc.model_dump(),
            "continual_learning": {
                **self.cfg.continual_learning.model_dump(),
                **({"strategy": strategy} if strategy else {}),
            },
            "weights_ref": weights_ref,
            "data_ref": data_ref,
            "version": version,
            "strategy_state": strategy_state_ref,  # e.g. EWC's Fisher, DER++'s recorded logits
        }
        trainer = TorchTrainer(
            train_loop_per_worker=train_func,
            train_loop_config=config,
            # NCCL needs CUDA; logical GPUs on a CPU machine (tests, scheduling dry runs) use gloo
            torch_config=TorchConfig(backend="nccl" if torch.cuda.is_available() and tc.use_gpu else "gloo"),
            scaling_config=ScalingConfig(
                num_workers=tc.num_workers, use_gpu=tc.use_gpu, resources_per_worker=resources
            ),
            run_config=RunConfig(
                name=f"update-{version:04d}-{uuid.uuid4().hex[:8]}",
                storage_path=self.storage_path,
                failure_config=FailureConfig(max_failures=tc.max_failures),
            ),
        )
        t0 = time.perf_counter()
        result = trainer.fit()
        seconds = time.perf_counter() - t0
        if result.checkpoint is None:
            raise RuntimeError(f"update {version}: the training loop reported no checkpoint")
        strategy_state = None
        with result.checkpoint.as_directory() as d:
            state = load_weights(Path(d) / "model.pt")
            if (Path(d) / "strategy.pt").is_file():
                strategy_state = load_weights(Path(d) / "strategy.pt")
        if tc.num_workers == 0:  # local mode leaves the checkpoint in a temp dir for us to remove
            shutil.rmtree(result.checkpoint.path, ignore_errors=True)
        return UpdateOutcome(
            weights=to_numpy(state),
            metrics=dict(result.metrics or {}),
            training_seconds=seconds,
            strategy_state=strategy_state,
        )
