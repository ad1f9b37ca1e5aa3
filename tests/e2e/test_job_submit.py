"""``ray job submit`` against a running cluster: ``ray start --head`` on free local ports, submit
``raydrift run configs/mnist.yaml`` with the repository as working dir, wait for SUCCEEDED, find the
run's summary.json. The head is started with ``--block`` and stopped by terminating that process,
which stops exactly this cluster's processes (``ray stop`` would stop every Ray cluster of the user).

Ray 2.60 enforces token authentication on ``ray start --head``; the ``ray job`` CLI needs
``RAY_AUTH_MODE=token`` to send the token. The test uses its own token (``RAY_AUTH_TOKEN``).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_cluster import own_processes

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".venv" / "bin"
RAY = str(BIN / "ray") if (BIN / "ray").exists() else "ray"

# A short run of the demo config: the synthetic harness instead of MNIST (seconds, not minutes),
# one monitor, the update in-process.
OVERRIDES = [
    "name=jobsubmit",
    "verbosity=1",
    "model.harness=synthetic",
    "monitor.on_drift=pause",  # a replayed stream, faster than an update
    "data={num_regimes: 2, regime_batches: 12}",
    "stream.batch_size=32",
    "monitor.num_monitors=1",
    "drift_detection.warmup_batches=3",
    "train.num_workers=0",
    "train.epochs=5",
    "logging.backend=none",
    "logging.plots=false",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def head() -> Iterator[dict[str, str]]:
    """A Ray head on free ports in its own temp dir; yields the job CLI's environment and address."""
    temp = tempfile.mkdtemp(prefix="rdjob", dir="/tmp")  # short: Ray's socket paths have a length limit
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(16),
    }
    env.pop("RAY_ADDRESS", None)
    dash, gcs = free_port(), free_port()
    cmd = [
        RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
        "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
        f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}", f"--metrics-export-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}", "--num-cpus=2", f"--temp-dir={temp}",
        "--disable-usage-stats",
    ]  # fmt: skip
    log = open(Path(temp) / "start.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    address = f"http://127.0.0.1:{dash}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (Path(temp) / "start.log").read_text()[-2000:]
            try:
                urllib.request.urlopen(f"{address}/api/version", timeout=2)
                break
            except urllib.error.HTTPError:  # it answers (401 without the token): it is up
                break
            except OSError:
                assert time.monotonic() < deadline, "the head's dashboard did not come up in 60 s"
                time.sleep(0.5)
        yield {"address": address, "gcs_port": str(gcs), "temp": temp, **{f"env:{k}": v for k, v in env.items()}}
    finally:
        proc.send_signal(signal.SIGTERM)  # `ray start --block` stops its own processes on SIGTERM
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        deadline = time.monotonic() + 30
        while own_processes(temp) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = [pid for pid, _ in own_processes(temp)]
        for pid in left:  # only processes of this cluster (their command line names its temp dir)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(temp, ignore_errors=True)
        assert not left, f"processes of the test cluster outlived it: {left}"


def job_cli(head: dict[str, str], *args: str, timeout: float = 60) -> str:
    env = {k.removeprefix("env:"): v for k, v in head.items() if k.startswith("env:")}
    out = subprocess.run(
        [RAY, "job", *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    assert out.returncode == 0, f"ray job {args[0]} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout + out.stderr


def job_status(text: str, job: str) -> str:
    """The status in ``ray job status`` output (final states are printed as sentences)."""
    for phrase, status in (("succeeded", "SUCCEEDED"), ("failed", "FAILED"), ("was stopped", "STOPPED")):
        if f"Job '{job}' {phrase}" in text:
            return status
    found = re.findall(r"(PENDING|RUNNING)", text)  # 'Status for job ...: RUNNING' (may be coloured)
    return found[-1] if found else "UNKNOWN"


def test_ray_job_submit_runs_raydrift_on_the_cluster(head: dict[str, str], tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    sets = [a for o in [*OVERRIDES, f"logging.runs_dir={runs}"] for a in ("--set", o)]
    out = job_cli(
        head,
        "submit", "--address", head["address"], "--working-dir", ".", "--no-wait", "--",
        "raydrift", "run", "configs/mnist.yaml", *sets,
    )  # fmt: skip
    match = re.search(r"Job '(raysubmit_\w+)' submitted successfully", out)
    assert match, out[-3000:]
    job = match.group(1)

    status = ""
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        text = job_cli(head, "status", "--address", head["address"], job)
        status = job_status(text, job)
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            break
        time.sleep(1)
    logs = job_cli(head, "logs", "--address", head["address"], job)
    assert status == "SUCCEEDED", f"job {job} ended {status or 'never'}:\n{logs[-3000:]}"

    (summary_path,) = runs.glob("jobsubmit-*/summary.json")
    summary = json.loads(summary_path.read_text())
    assert summary["run"]["status"] == "completed"
    # the driver connected to this cluster (its GCS port) rather than starting its own
    assert str(summary["run"]["ray_address"]).endswith(f":{head['gcs_port']}")
    assert summary["stream"]["batches"] == 24 and summary["drift_events"] and summary["updates"]
    assert "run dir" in logs and str(summary_path.parent) in logs
