"""A fake autoscaling Ray cluster on this machine, for the autoscaling tests.

Ray's fake multi-node provider stands in for a cloud: the head's autoscaler "launches" a worker node
by starting another raylet on this machine, with the resources of the node type it picked, and
"terminates" it by killing that raylet's processes. The head has no CPUs, so every actor of a run
needs a worker node that the autoscaler adds on demand.

``ray.cluster_utils.AutoscalingCluster`` cannot be used: the Ray 2.60 wheel lacks the example config
it reads, and its start and shutdown run ``ray stop --force``, which stops every Ray cluster on the
machine. :func:`fake_autoscaling_cluster` starts the head itself (``ray start --head --block`` on free
ports, in its own temp dir) and stops only its own processes: the head by its PID, then whatever
still names the cluster's temp dir on its command line (worker nodes' raylets and workers use the
head's temp dir for their sockets and logs).

Token authentication is on, with the default token (``~/.ray/auth_token``, made as a user would with
``ray get-auth-token --generate`` when missing): the worker nodes, started by the head's autoscaler,
read the same file, and so does the test's driver (``RAY_AUTH_MODE=token``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".venv" / "bin"
RAY = str(BIN / "ray") if (BIN / "ray").exists() else "ray"
HEAD_TYPE = "ray.head.default"


@dataclass(frozen=True)
class NodeType:
    """A worker node type of the fake cluster."""

    name: str
    cpus: float
    gpus: float = 0.0
    max_workers: int = 2
    object_store_mb: int = 100  # small: every node is a raylet on this machine

    def to_config(self) -> dict[str, object]:
        resources: dict[str, float] = {"CPU": self.cpus, "object_store_memory": self.object_store_mb * 2**20}
        if self.gpus:
            resources["GPU"] = self.gpus
        return {"resources": resources, "node_config": {}, "min_workers": 0, "max_workers": self.max_workers}


#: the node types of the issue: CPU nodes for monitors and updates, one logical-GPU node
DEFAULT_TYPES = (NodeType("cpu", cpus=1, max_workers=3), NodeType("gpu", cpus=1, gpus=1, max_workers=1))


@dataclass
class FakeCluster:
    """A started fake autoscaling cluster: where it listens and how it was configured."""

    gcs_address: str
    dashboard_url: str
    temp_dir: Path
    idle_timeout_s: float
    node_types: tuple[NodeType, ...]
    head_pid: int
    env: dict[str, str] = field(repr=False)

    def raylet_pids(self) -> list[int]:
        """PIDs of this cluster's raylets (head and workers): their sockets live under its temp dir."""
        return [p for p, cmd in own_processes(str(self.temp_dir)) if cmd.split(" ", 1)[0].endswith("/raylet")]

    def process_count(self) -> int:
        return len(own_processes(str(self.temp_dir)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def own_processes(marker: str) -> list[tuple[int, str]]:
    """(pid, command line) of every process whose command line mentions ``marker``."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmd:
            found.append((int(proc.name), cmd))
    return found


def autoscaling_config(
    gcs_address: str, types: tuple[NodeType, ...], idle_timeout_s: float
) -> dict[str, object]:
    """The cluster config the head's autoscaler reads (fake_multinode provider, no setup commands)."""
    nodes: dict[str, object] = {t.name: t.to_config() for t in types}
    nodes[HEAD_TYPE] = {"resources": {"CPU": 0}, "node_config": {}, "max_workers": 0}
    empty: list[str] = []
    return {
        "cluster_name": "raydrift-fake",
        "max_workers": sum(t.max_workers for t in types),
        "upscaling_speed": 10.0,
        "idle_timeout_minutes": idle_timeout_s / 60,
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "gcs_address": gcs_address,
        },
        "auth": {"ssh_user": "ray"},
        "available_node_types": nodes,
        "head_node_type": HEAD_TYPE,
        "file_mounts": {},
        "cluster_synced_files": empty,
        "file_mounts_sync_continuously": False,
        "rsync_exclude": empty,
        "rsync_filter": empty,
        "initialization_commands": empty,
        "setup_commands": empty,
        "head_setup_commands": empty,
        "worker_setup_commands": empty,
        "head_start_ray_commands": empty,
        "worker_start_ray_commands": empty,
    }


def cluster_env(extra_pythonpath: str = "") -> dict[str, str]:
    """The head's environment (inherited by its autoscaler and so by every worker node)."""
    subprocess.run([RAY, "get-auth-token", "--generate"], capture_output=True, check=True, timeout=60)
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "RAY_FAKE_CLUSTER": "1",
        "AUTOSCALER_UPDATE_INTERVAL_S": "1",
        "RAY_AUTH_MODE": "token",
        # workers on every node import raydrift and test harnesses from here
        "PYTHONPATH": os.pathsep.join(p for p in [extra_pythonpath, str(ROOT)] if p),
    }
    for key in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        env.pop(key, None)
    return env


def _start_head(
    temp: Path, gcs: int, dash: int, env: dict[str, str], config: Path
) -> subprocess.Popen[bytes]:
    cmd = [
        RAY, "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
        "--num-cpus=0", f"--autoscaling-config={config}",
        "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
        f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}", f"--metrics-export-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}", f"--temp-dir={temp}", "--object-store-memory=100000000",
        "--disable-usage-stats",
    ]  # fmt: skip
    log = open(temp / "start.log", "wb")  # noqa: SIM115 - the child holds it; closed when we return
    try:
        return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    finally:
        log.close()


def _wait_for_head(proc: subprocess.Popen[bytes], temp: Path, gcs: int, timeout: float = 120) -> None:
    """Until the head's raylet runs and its GCS port answers."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"the fake cluster's head exited:\n{(temp / 'start.log').read_text()[-3000:]}")
        raylets = [cmd for _, cmd in own_processes(str(temp)) if cmd.split(" ", 1)[0].endswith("/raylet")]
        if raylets:
            try:
                socket.create_connection(("127.0.0.1", gcs), timeout=2).close()
                return
            except OSError:
                pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"the fake cluster's head did not come up in {timeout:.0f} s")
        time.sleep(0.5)


def stop_cluster(proc: subprocess.Popen[bytes], temp: Path, timeout: float = 60) -> list[int]:
    """Stop the head (SIGTERM to ``ray start --block`` stops the processes it started), then kill
    what is left of this cluster (worker nodes: their command lines name its temp dir). Returns the
    PIDs still alive after that (none expected)."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)
    deadline = time.monotonic() + 15
    while own_processes(str(temp)) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = [pid for pid, _ in own_processes(str(temp))]
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    while own_processes(str(temp)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return [pid for pid, _ in own_processes(str(temp))]


@contextmanager
def fake_autoscaling_cluster(
    types: tuple[NodeType, ...] = DEFAULT_TYPES, idle_timeout_s: float = 6.0, extra_pythonpath: str = ""
) -> Iterator[FakeCluster]:
    """Start a fake autoscaling cluster (head with 0 CPUs, no worker node yet), yield it, stop it."""
    temp = Path(tempfile.mkdtemp(prefix="rdas", dir="/tmp"))  # short: Ray's socket paths have a length limit
    gcs, dash = free_port(), free_port()
    config = temp / "autoscaling.json"
    config.write_text(json.dumps(autoscaling_config(f"127.0.0.1:{gcs}", types, idle_timeout_s)))
    env = cluster_env(extra_pythonpath)
    proc = _start_head(temp, gcs, dash, env, config)
    try:
        _wait_for_head(proc, temp, gcs)
        yield FakeCluster(
            gcs_address=f"127.0.0.1:{gcs}",
            dashboard_url=f"http://127.0.0.1:{dash}",
            temp_dir=temp,
            idle_timeout_s=idle_timeout_s,
            node_types=types,
            head_pid=proc.pid,
            env=env,
        )
    finally:
        survivors = stop_cluster(proc, temp)
        shutil.rmtree(temp, ignore_errors=True)
    assert not survivors, f"processes of the fake cluster outlived it: {survivors}"
