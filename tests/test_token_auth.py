"""The README's cluster commands, verbatim apart from ports and temp dir, on a fresh machine (an empty
HOME): the token is generated, the head enforces it, `ray job submit` sends it, and `raydrift` finds
it without RAY_AUTH_MODE, or says in one line what to set when this machine has none.

The head runs on free ports with its own temp dir and is stopped by its process group id.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS", "RAYDRIFT_"))}
    # as in an activated virtualenv with raydrift installed: `python`, `ray`, `raydrift` are this venv's
    path = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(HOME=str(home), PYTHONPATH=str(REPO), PATH=path, **extra)
    return env


@dataclass(frozen=True)
class Head:
    home: Path
    gcs: str
    dashboard: str


def _run(cmd: list[str], env: dict[str, str], timeout: float = 240, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _wait_for_jobs_api(head: Head, env: dict[str, str], limit_s: float = 180) -> None:
    deadline = time.monotonic() + limit_s
    while True:
        out = _run([RAY, "job", "list", "--address", head.dashboard], env, timeout=60)
        if out.returncode == 0:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"the head's job API never answered: {out.stderr[-500:]}")
        time.sleep(2)


@pytest.fixture(scope="module")
def head(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Head]:
    home = tmp_path_factory.mktemp("home")
    temp = Path("/tmp") / f"rdtok{os.getpid()}"  # Ray's socket paths must stay short
    env = _env(home)
    # README: `ray get-auth-token --generate` once per machine
    gen = _run([RAY, "get-auth-token", "--generate"], env, timeout=60)
    assert gen.returncode == 0, gen.stderr
    assert (home / ".ray" / "auth_token").stat().st_size > 0
    gcs, dash, client, agent = _free_ports(4)
    # README: `RAY_AUTH_MODE=token ray start --head --dashboard-host=127.0.0.1` (+ ports, temp dir, --block)
    cmd = [
        RAY, "start", "--head", "--dashboard-host=127.0.0.1", f"--port={gcs}", f"--dashboard-port={dash}",
        f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}", "--num-cpus=1",
        "--node-ip-address=127.0.0.1", f"--temp-dir={temp}", "--block",
    ]
    log = open(home / "head.log", "w")  # noqa: SIM115 - closed at teardown
    proc = subprocess.Popen(cmd, env=_env(home, RAY_AUTH_MODE="token"), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    h = Head(home, f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dash}")
    try:
        _wait_for_jobs_api(h, _env(home, RAY_AUTH_MODE="token"))
        yield h
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the group this test started, nothing else
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        log.close()


@pytest.mark.e2e
def test_the_head_enforces_the_token(head: Head) -> None:
    out = _run([RAY, "job", "list", "--address", head.dashboard], _env(Path("/nonexistent"), RAY_AUTH_MODE="token"))
    assert out.returncode != 0


@pytest.mark.e2e
def test_ray_job_submit_as_in_the_readme(head: Head, tmp_path: Path) -> None:
    (tmp_path / "job.py").write_text("import ray\nray.init()\nprint('cpus', int(ray.cluster_resources()['CPU']))\n")
    cmd = [RAY, "job", "submit", "--address", head.dashboard, "--working-dir", ".", "--", "python", "job.py"]
    out = _run(cmd, _env(head.home, RAY_AUTH_MODE="token"), cwd=tmp_path)
    assert out.returncode == 0, (out.stdout + out.stderr)[-2000:]
    assert "cpus 1" in out.stdout


@pytest.mark.e2e
def test_raydrift_finds_the_token_without_ray_auth_mode(head: Head) -> None:
    cmd = [sys.executable, "-m", "raydrift.cli", "validate", "configs/river-sea.yaml", "--address", head.gcs,
           "--set", "monitor.num_monitors=1", "--set", "train.num_workers=0"]
    out = _run(cmd, _env(head.home))
    assert out.returncode == 0, out.stderr[-2000:]
    assert ": OK" in out.stdout


@pytest.mark.e2e
def test_no_token_here_is_one_line_saying_what_to_set(head: Head, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "raydrift.cli", "validate", "configs/river-sea.yaml", "--address", head.gcs]
    out = _run(cmd, _env(tmp_path))  # an empty HOME: no token on this "machine"
    assert out.returncode == 2
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in out.stderr
    assert "requires token authentication" in lines[0] and "RAY_AUTH_TOKEN" in lines[0]


def test_a_token_on_this_machine_sets_token_mode(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from raydrift.session import use_token_if_found

    for var in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.setenv(var, "")  # recorded: whatever the code sets is undone after the test
        monkeypatch.delenv(var)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert use_token_if_found() is False and "RAY_AUTH_MODE" not in os.environ
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("t" * 32)
    assert use_token_if_found() is True and os.environ["RAY_AUTH_MODE"] == "token"
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # the user's own choice stands
    assert use_token_if_found() is False and os.environ["RAY_AUTH_MODE"] == "disabled"


def test_an_address_where_nothing_listens_is_one_line() -> None:
    from raydrift.errors import UserError
    from raydrift.session import probe_auth

    [port] = _free_ports(1)
    with pytest.raises(UserError, match=f"nothing answers at the Ray cluster address '127.0.0.1:{port}'"):
        probe_auth(f"127.0.0.1:{port}")
    probe_auth("auto")  # not host:port: left to ray.init
