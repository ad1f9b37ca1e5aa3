"""GPU placement with logical GPUs (no hardware needed): monitors with fractional GPUs and a trainer
worker that asks for a GPU share the cluster without deadlock, and a config that asks for more GPUs
than the cluster has is refused up front."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import ray

from raydrift.config import build_config
from raydrift.coordinator import Coordinator
from raydrift.errors import UserError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gpu_cluster() -> Iterator[None]:
    ray.init(
        address="local",
        num_cpus=2,
        num_gpus=1,  # logical: Ray schedules by it, nothing runs on a GPU
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([str(ROOT)])}},
    )
    try:
        yield
    finally:
        ray.shutdown()


def config(tmp_path: Path, *extra: str):  # type: ignore[no-untyped-def]
    return build_config(
        None,
        [
            "verbosity=0",
            "model.harness=synthetic",
            "monitor.on_drift=pause",  # a replayed stream, faster than an update
            "data.regime_batches=12",
            "data.num_regimes=2",
            "stream.batch_size=32",
            "drift_detection.warmup_batches=3",
            "train.epochs=8",
            "train.lr=0.01",
            "logging.backend=none",
            "logging.plots=false",
            f"logging.runs_dir={tmp_path / 'runs'}",
            *extra,
        ],
    )


def test_monitors_and_trainer_share_the_gpus_without_deadlock(gpu_cluster: None, tmp_path: Path) -> None:
    # 2 monitors x 0.25 GPU + 1 trainer worker x 0.5 GPU = 1 GPU: the update's share is reserved
    cfg = config(
        tmp_path,
        "monitor.num_monitors=2",
        "monitor.num_cpus=0.5",
        "monitor.num_gpus=0.25",
        "train.num_workers=1",
        "train.use_gpu=true",
        "train.gpus_per_worker=0.5",
        "train.cpus_per_worker=1",
    )
    s = Coordinator(cfg, run_dir=tmp_path, console=lambda _: None).run().to_dict()
    assert s["run"]["status"] == "completed"
    assert s["updates"], "no update ran"
    assert set(s["monitoring"]["monitor_versions"].values()) == {len(s["updates"])}


def test_asking_for_more_gpus_than_the_cluster_has_is_refused(gpu_cluster: None, tmp_path: Path) -> None:
    cfg = config(
        tmp_path,
        "monitor.num_monitors=2",
        "monitor.num_cpus=0.5",
        "monitor.num_gpus=0.5",
        "train.num_workers=1",
        "train.use_gpu=true",
    )
    with pytest.raises(UserError, match=r"needs 2 GPUs but the cluster has 1"):
        Coordinator(cfg, run_dir=tmp_path, console=lambda _: None).run().to_dict()
