"""`raydrift run` as a user runs it: a separate driver process that connects to an existing cluster."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import ray

ROOT = Path(__file__).resolve().parents[2]

CONFIG = """
name: cli
verbosity: 1
model: {harness: synthetic}
data: {regime_batches: REGIME_BATCHES, num_regimes: 3}
stream: {batch_size: 32}
monitor: {num_monitors: 1, num_cpus: 0.5, on_drift: pause}
drift_detection: {warmup_batches: 3, cooldown_batches: 2}
continual_learning: {memory_size: 200, window_batches: 6}
train: {num_workers: 0, epochs: 10, batch_size: 32, lr: 0.01}
logging: {backend: none}
"""


def driver(tmp_path: Path, regime_batches: int, *extra: str) -> subprocess.Popen[str]:
    cfg = tmp_path / "cli.yaml"
    cfg.write_text(CONFIG.replace("REGIME_BATCHES", str(regime_batches)))
    address = ray.get_runtime_context().gcs_address
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable,
        "-m",
        "raydrift.cli",
        "run",
        str(cfg),
        "--address",
        address,
        "--set",
        f"logging.runs_dir={tmp_path / 'runs'}",
        *extra,
    ]
    return subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=tmp_path,
        # a shell's background jobs inherit SIGINT ignored: give the driver the default, as in a terminal
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def test_run_connects_to_an_existing_cluster(ray_cluster: Path, tmp_path: Path) -> None:
    proc = driver(tmp_path, 12)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert "run directory:" in out and "drift at batch" in out and "COMPLETED" in out
    (run_dir,) = (tmp_path / "runs").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["run"]["status"] == "completed"
    assert summary["run"]["ray_address"] == ray.get_runtime_context().gcs_address
    assert summary["stream"]["batches"] == 36 and summary["updates"]
    # the driver did not start a second cluster: the named actors were created in this one, then removed
    assert summary["monitoring"]["monitor_versions"] == {"monitor-0": len(summary["updates"])}


def test_ctrl_c_stops_cleanly_and_keeps_what_was_written(ray_cluster: Path, tmp_path: Path) -> None:
    # a long stream (3 x 4000 batches) that would run for minutes
    proc = driver(tmp_path, 4000, "--set", "drift_detection.interval=2")
    assert proc.stdout is not None
    lines = []
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        if line.startswith("[batch") or not line:
            break
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    rest, _ = proc.communicate(timeout=120)
    out = "".join(lines) + rest
    assert proc.returncode == 130, out
    assert "Traceback" not in out
    (run_dir,) = (tmp_path / "runs").iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["run"]["status"] == "interrupted"
    rows = (run_dir / "metrics.csv").read_text().splitlines()
    assert len(rows) >= 2  # header + at least one interval that was written before the interrupt
    assert (run_dir / "config.yaml").is_file()
