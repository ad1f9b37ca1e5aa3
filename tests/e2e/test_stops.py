"""Every stop is clean: SIGINT or SIGTERM in each phase of a run started from the CLI.

For each phase (pre-training, monitoring, an update in local mode, an update on a Ray Train worker,
the promotion gate, a checkpoint write) a real ``raydrift run`` is held in that phase by a test
harness (tests/e2e/helpers/stop_harness.py) or a held checkpoint write (helpers/stop_runner.py) and
signalled. It must end with status ``interrupted`` naming the signal, exit ``128 + signal``, a
summary whose batch count matches ``batches.csv``, no process left of the Ray cluster it started, and
``raydrift run --resume`` must finish the run with every batch id exactly once. While an update runs
on a Ray Train worker, every socket the run's processes listen on is on loopback.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]
HELPERS = Path(__file__).resolve().parent / "helpers"
BATCHES = 48  # 3 regimes x 16

CONFIG = """
name: stops
seed: 0
verbosity: 1
model: {{harness: "stop_harness:StopHarness", pretrain_epochs: 2}}
data: {{regime_batches: 16, num_regimes: 3, hidden: 32, test_size: 200, pretrain_size: 500}}
stream: {{batch_size: 32, prefetch: 2, max_batches_per_second: {pace}}}
monitor: {{num_monitors: 1, num_cpus: 1, on_drift: pause, batches_per_task: 2}}
drift_detection: {{warmup_batches: 3, cooldown_batches: 2}}
continual_learning: {{window_batches: 4, post_drift_batches: 1, memory_size: 100}}
train: {{num_workers: {workers}, epochs: 2, batch_size: 32}}
reliability: {{checkpoint_every_batches: 4, checkpoint_min_seconds: 0}}
logging: {{backend: none, plots: true, runs_dir: "{runs}"}}
ray: {{num_cpus: 2, include_dashboard: {dashboard}}}
"""

LOOPBACK = ("127.0.0.1", "::1", "::ffff:127.0.0.1")


def _env(phase: str | None, marker: Path) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    env["PYTHONPATH"] = os.pathsep.join([str(HELPERS), str(ROOT), env.get("PYTHONPATH", "")])
    env.pop("RD_STOP_PHASE", None)
    if phase is not None:
        env["RD_STOP_PHASE"] = phase
        env["RD_STOP_MARKER"] = str(marker)
    return env


def _start(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(HELPERS / "stop_runner.py"), *args],
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _listening(procs: list[psutil.Process]) -> list[tuple[str, int, str]]:
    out = []
    for p in procs:
        try:
            for c in p.net_connections(kind="inet"):
                if c.status == psutil.CONN_LISTEN:
                    out.append((c.laddr.ip, c.laddr.port, p.name()))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return out


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    left = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                left.append(p)
        except psutil.NoSuchProcess:
            continue
    return left


def _batch_ids(run_dir: Path) -> list[int]:
    path = run_dir / "batches.csv"
    if not path.is_file():
        return []
    with open(path) as f:
        return [int(r["batch_id"]) for r in csv.DictReader(f)]


PHASES = [
    # (phase, signal, Ray Train workers, pace in batches/s)
    ("pretrain", signal.SIGTERM, 0, 50),
    ("monitoring", signal.SIGINT, 0, 6),
    ("update", signal.SIGINT, 0, 50),
    ("update", signal.SIGTERM, 1, 50),
    ("gate", signal.SIGTERM, 0, 50),
    ("checkpoint", signal.SIGINT, 0, 50),
]


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("phase", "sig", "workers", "pace"),
    PHASES,
    ids=[f"{p}-{s.name}-{w}workers" for p, s, w, _ in PHASES],
)
def test_a_signal_in_each_phase_stops_the_run_cleanly(
    tmp_path: Path, phase: str, sig: signal.Signals, workers: int, pace: int
) -> None:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(
        CONFIG.format(
            pace=pace, workers=workers, runs=tmp_path / "runs", dashboard="true" if workers else "false"
        )
    )
    run_dir, marker = tmp_path / "run", tmp_path / "marker"
    proc = _start(["run", str(cfg), "--run-dir", str(run_dir)], _env(phase, marker), tmp_path)
    try:
        deadline = time.monotonic() + 240
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert marker.exists(), f"phase {phase} never reached:\n{proc.communicate(timeout=60)[0]}"
        ray_procs = _descendants(proc.pid)
        assert ray_procs, "the run's local Ray cluster is not a child of the driver"
        if workers:
            # an update on a Ray Train worker: the most processes and ports a local run ever has (one
            # worker runs without torch.distributed: no TCPStore, see raydrift.update.make_ray_trainer)
            open_ports = [s for s in _listening([psutil.Process(proc.pid), *ray_procs]) if s[0] not in LOOPBACK]
            assert not open_ports, f"listening beyond loopback: {open_ports}"
            assert len(_listening(ray_procs)) >= 4  # GCS, raylet, workers, agents: the check saw them
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 128 + sig, out
    assert "Traceback" not in out, out
    deadline = time.monotonic() + 30
    while _alive(ray_procs) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _alive(ray_procs), f"left running: {[p.name() for p in _alive(ray_procs)]}"

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["run"]["status"] == "interrupted"
    assert summary["run"]["signal"] == sig.name
    ids = _batch_ids(run_dir)
    assert summary["stream"]["batches"] == len(ids) and ids == list(range(len(ids)))
    assert not list((run_dir / "checkpoint").glob("*.tmp*")) if (run_dir / "checkpoint").is_dir() else True

    resumed = _start(["run", "--resume", str(run_dir)], _env(None, marker), tmp_path)
    out2, _ = resumed.communicate(timeout=400)
    if phase == "pretrain":  # stopped before its first checkpoint: nothing to continue
        assert resumed.returncode == 2 and "start it again without --resume" in out2, out2
        return
    assert resumed.returncode == 0, out2
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["run"]["status"] == "completed"
    assert _batch_ids(run_dir) == list(range(BATCHES)), "every batch id exactly once"
    assert summary["stream"]["batches"] == BATCHES
