"""Kill the driver (SIGKILL to its whole process group, its local Ray cluster included) mid-run, then
``raydrift run --resume RUN_DIR``: the finished run holds every batch id exactly once."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

CONFIG = """
name: resume
seed: 0
verbosity: 1
model: {harness: synthetic}
data: {regime_batches: 20, num_regimes: 3}
stream: {batch_size: 32, max_batches_per_second: 8}
monitor: {num_monitors: 1, num_cpus: 1}
drift_detection: {warmup_batches: 3, cooldown_batches: 2, interval: 4}
continual_learning: {memory_size: 200, window_batches: 6}
train: {num_workers: 0, epochs: 10, batch_size: 32, lr: 0.01}
reliability: {checkpoint_every_batches: 5, checkpoint_min_seconds: 0}
ray: {include_dashboard: false, num_cpus: 2}
"""
BATCHES = 60


def raydrift(*args: str, **kw) -> subprocess.Popen:  # type: ignore[no-untyped-def, type-arg]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen(
        [sys.executable, "-m", "raydrift.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: the kill takes its Ray cluster too
        **kw,
    )


def checkpointed_batches(run_dir: Path) -> int:
    path = run_dir / "checkpoint" / "state.pt"
    if not path.is_file():
        return 0
    try:
        return int(torch.load(path, weights_only=True)["processed"])
    except Exception:  # noqa: BLE001 - being replaced right now
        return 0


def test_a_killed_driver_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(CONFIG + f"\nlogging: {{backend: mlflow, plots: false, runs_dir: '{tmp_path / 'runs'}'}}\n")
    run_dir = tmp_path / "run"
    first = raydrift("run", str(cfg), "--run-dir", str(run_dir), cwd=tmp_path)
    try:
        deadline = time.monotonic() + 240
        while checkpointed_batches(run_dir) < 25 and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.5)
        assert first.poll() is None, first.stdout.read() if first.stdout else ""  # type: ignore[union-attr]
        at = checkpointed_batches(run_dir)
        assert 25 <= at < BATCHES
        os.killpg(first.pid, signal.SIGKILL)  # the driver and the Ray cluster it started
        first.wait(timeout=30)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    # the killed run wrote rows past its checkpoint: the resume must not repeat them
    with open(run_dir / "batches.csv") as f:
        assert len(list(csv.DictReader(f))) >= at

    second = raydrift("run", "--resume", str(run_dir), cwd=tmp_path)
    out, _ = second.communicate(timeout=600)
    assert second.returncode == 0, out
    assert f"resuming at batch {at}" in out or "resuming at batch" in out

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["run"]["status"] == "completed"
    assert summary["run"]["resumed"] and summary["run"]["resumed"][0]["batch_id"] >= 25
    with open(run_dir / "batches.csv") as f:
        ids = [int(r["batch_id"]) for r in csv.DictReader(f)]
    assert ids == list(range(BATCHES)), "every batch id exactly once"
    with open(run_dir / "metrics.csv") as f:
        covered = [b for r in csv.DictReader(f) for b in range(int(r["first_batch"]), int(r["last_batch"]) + 1)]
    assert sorted(covered) == list(range(BATCHES))
    assert summary["stream"]["batches"] == BATCHES and summary["stream"]["samples"] == BATCHES * 32
    # on_drift: continue guarantees at least the first drift is alarmed; a regime that begins while an
    # update trains is adapted to by follow-up updates rather than alarmed (docs/continuous_learning.md)
    assert len(summary["drift_events"]) >= 1 and summary["updates"]
    assert len(summary["adaptations"]) == len(summary["drift_events"])
    assert len(summary["accuracy_matrix"]["rows"]) == 1 + len(summary["updates"])
    # the same MLflow run continued: one run, metrics from before and after the kill
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("raydrift")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1 and runs[0].info.run_id == summary["tracking"]["run_id"]
    steps = {m.step for m in client.get_metric_history(runs[0].info.run_id, "monitored")}
    assert min(steps) < at <= max(steps)

    # resuming a completed run is a clear error
    third = raydrift("run", "--resume", str(run_dir), cwd=tmp_path)
    out3, _ = third.communicate(timeout=120)
    assert third.returncode == 2 and "already completed" in out3
