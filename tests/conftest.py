"""Shared fixtures. End-to-end modules each start one local Ray cluster (module scope)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

# One torch thread in the test process: on a busy 2-core machine oversubscribed threads make small
# models tens of times slower (Ray actors set their own counts).
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _calibration_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The tests' detector calibrations are cached in a session temp dir, not the user's ~/.cache
    (shared by the Ray workers the tests start, which inherit the environment)."""
    old = os.environ.get("RAYDRIFT_CACHE_DIR")
    os.environ["RAYDRIFT_CACHE_DIR"] = str(tmp_path_factory.mktemp("raydrift-cache"))
    yield
    if old is None:
        os.environ.pop("RAYDRIFT_CACHE_DIR", None)
    else:
        os.environ["RAYDRIFT_CACHE_DIR"] = old


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A real local Ray cluster with 2 CPUs for one test module; yields a module temp dir that is on
    the workers' PYTHONPATH (for harnesses written by tests)."""
    import ray

    code_dir = tmp_path_factory.mktemp("code")
    path = os.pathsep.join([str(code_dir), str(ROOT)])
    ray.init(
        address="local",  # a new cluster even if another one runs on this machine
        num_cpus=2,
        include_dashboard=False,
        namespace="raydrift",
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": path}},
    )
    try:
        yield code_dir
    finally:
        ray.shutdown()
