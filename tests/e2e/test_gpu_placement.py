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


@ray.remote(num_gpus=0.25, num_cpus=0)
class GpuHolder:
    """Stands for a monitor holding a quarter of the GPU."""

    def ping(self) -> bool:
        return True


def test_a_standing_trainer_holds_its_fractional_gpu_between_jobs(gpu_cluster: None, tmp_path: Path) -> None:
    import time

    import numpy as np
    import torch

    from raydrift.harness import build_harness
    from raydrift.learning import UpdateData
    from raydrift.trainer import StandingTrainer, make_updater
    from raydrift.weights import to_numpy

    cfg = config(tmp_path, "train.num_workers=1", "train.use_gpu=true", "train.gpus_per_worker=0.5", "train.epochs=1")
    holders = [GpuHolder.remote() for _ in range(2)]  # 2 x 0.25 GPU, as 2 monitors would
    ray.get([h.ping.remote() for h in holders])
    harness = build_harness("synthetic", cfg.data, seed=0, batch_size=32)
    batches = list(harness.stream())[:6]
    data = UpdateData(torch.cat([b.x for b in batches]), torch.cat([b.y for b in batches]),
                      batches[0].x[:0], batches[0].y[:0])
    initial = to_numpy(harness.build_model().state_dict())
    trainer = make_updater(cfg, {"spec": "synthetic", "options": cfg.data}, tmp_path / "train")
    assert isinstance(trainer, StandingTrainer)
    try:
        trainer.start()
        weights_ref, data_ref = ray.put(initial), ray.put(data)
        for version in (1, 2):  # no deadlock: the worker's 0.5 GPU was free beside the holders
            out = trainer.run(weights_ref, data_ref, version)
            assert out.metrics["version"] == version and any(
                not np.array_equal(out.weights[k], initial[k]) for k in initial
            )
        assert ray.available_resources().get("GPU", 0.0) == pytest.approx(0.0)  # held between jobs
    finally:
        trainer.shutdown()
        for h in holders:
            ray.kill(h)
    deadline = time.monotonic() + 30
    while ray.available_resources().get("GPU", 0.0) < 0.99 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("GPU", 0.0) == pytest.approx(1.0)  # given back at shutdown
