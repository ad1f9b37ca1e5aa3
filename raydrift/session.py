"""The Ray session of a run: a local cluster bound to loopback, or a connection to an existing one,
and stops (SIGINT, SIGTERM) that end the run cleanly.

A local cluster that raydrift starts listens on ``ray.node_ip_address`` (default ``127.0.0.1``): GCS,
raylet, workers, the dashboard agent, the autoscaler monitor and the metrics export are then reachable
from this machine only. Ray itself refuses to use a loopback address as a node's IP (it swaps it for
the machine's address); :func:`_loopback_node_ip` keeps the address given while the cluster starts,
and the session checks afterwards that the node really is on loopback (it stops the cluster and
refuses to run otherwise). To open a local cluster to other machines on purpose, set
``ray.node_ip_address`` to this machine's address (docs/cluster.md says what to secure then).

Ray installs its own SIGTERM handler in ``ray.init`` (``sys.exit``), which would turn ``ray job
stop``, ``timeout`` or a Kubernetes stop into a failed run. :func:`install_stop_handlers` puts
raydrift's back after the session starts: the first SIGINT or SIGTERM raises :class:`RunInterrupted`
in the main thread, the run writes what it has with status ``interrupted``, and the CLI exits with
``128 + signal`` (130 for SIGINT, 143 for SIGTERM).

Connecting to a cluster with token authentication: when this machine has a token
(``RAY_AUTH_TOKEN``, ``RAY_AUTH_TOKEN_PATH`` or ``~/.ray/auth_token``) and ``RAY_AUTH_MODE`` is not set,
the session sets ``RAY_AUTH_MODE=token`` so that Ray sends it; a cluster that refuses the connection
(no token, or a wrong one) is one :class:`UserError` line found by a quick probe of its GCS, before
``ray.init`` (which would retry for a while and end in a traceback). With ``ray.autoscaling: true``
the session checks the cluster's node types can ever hold the run (:mod:`raydrift.feasibility`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from raydrift._stderr import quiet_stderr
from raydrift.config import RaydriftConfig
from raydrift.errors import UserError

__all__ = [
    "LOOPBACK",
    "probe_auth",
    "use_token_if_found",
    "RayInfo",
    "RaySession",
    "RunInterrupted",
    "install_stop_handlers",
    "restore_handlers",
    "stopping",
]

LOOPBACK = "127.0.0.1"
_LOOPBACKS = ("127.0.0.1", "localhost", "::1")


class RunInterrupted(KeyboardInterrupt):
    """The run was asked to stop by a signal; ``exit_code`` is ``128 + signal``."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_stopping = threading.Event()


def stopping() -> None:
    """The run is closing its books: from now on a stop signal is acknowledged and not raised, so the
    summary, the CSV files and the shutdown are not cut short."""
    _stopping.set()


def install_stop_handlers() -> dict[int, Any]:
    """SIGINT and SIGTERM raise :class:`RunInterrupted` once; a repeated signal while the run stops is
    acknowledged and otherwise ignored, so the summary and the checkpoint are still written.

    Returns the previous handlers (for :func:`restore_handlers`), empty when not on the main thread
    (embedded use: the embedding program owns its signals).
    """
    if threading.current_thread() is not threading.main_thread():
        return {}
    _stopping.clear()

    def handler(signum: int, frame: object) -> None:
        if _stopping.is_set():
            print(
                f"raydrift: stopping already ({signal.Signals(signum).name} again): writing the summary",
                file=sys.stderr,
                flush=True,
            )
            return
        _stopping.set()
        raise RunInterrupted(signum)

    previous = {}
    for sig in _STOP_SIGNALS:
        previous[int(sig)] = signal.getsignal(sig)
        signal.signal(sig, handler)
    return previous


def restore_handlers(previous: dict[int, Any]) -> None:
    """Put back the handlers :func:`install_stop_handlers` replaced."""
    for sig, h in previous.items():
        with contextlib.suppress(ValueError, TypeError):
            signal.signal(sig, h)


@contextlib.contextmanager
def _loopback_node_ip(node_ip: str) -> Iterator[None]:
    """While a local cluster starts: let ``node_ip`` stand when it is a loopback address (Ray would
    replace it by the machine's reachable address, and every service would listen on all interfaces)."""
    if node_ip not in _LOOPBACKS:
        yield
        return
    from ray._private import services

    original = getattr(services, "resolve_ip_for_localhost", None)
    if original is None:  # another Ray version: the check after start-up decides
        yield
        return
    services.resolve_ip_for_localhost = lambda host: host  # type: ignore[assignment]
    try:
        yield
    finally:
        services.resolve_ip_for_localhost = original  # type: ignore[assignment]


class _OptOutAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "RAY_AUTH_MODE=disabled" not in record.getMessage()


@contextlib.contextmanager
def _without_opt_out_advice() -> Iterator[None]:
    """Ray turns token authentication on for a new local cluster and logs how to turn it off; raydrift
    keeps it on and does not pass that advice on to its users."""
    log = logging.getLogger("ray._private.authentication.authentication_token_setup")
    f = _OptOutAdvice()
    log.addFilter(f)
    try:
        yield
    finally:
        log.removeFilter(f)


@dataclass(frozen=True)
class RayInfo:
    """Where the run's Ray session is."""

    address: str | None
    dashboard_url: str | None
    session_dir: str | None
    started_here: bool


_TOKEN_HINT = (
    "put the cluster's token in ~/.ray/auth_token (on the head: ray get-auth-token) or set RAY_AUTH_TOKEN, "
    "with RAY_AUTH_MODE=token"
)


def _token_found() -> bool:
    if os.environ.get("RAY_AUTH_TOKEN"):
        return True
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    candidates = [path] if path else [os.path.join(os.path.expanduser("~"), ".ray", "auth_token")]
    return any(os.path.isfile(p) and os.path.getsize(p) > 0 for p in candidates)


def use_token_if_found() -> bool:
    """``RAY_AUTH_MODE=token`` for this process (and the Ray CLI it starts) when a token is on this
    machine and the user set no mode; True when the mode is token after this."""
    mode = os.environ.get("RAY_AUTH_MODE")
    if mode is not None:
        return mode.lower() == "token"
    if not _token_found():
        return False
    os.environ["RAY_AUTH_MODE"] = "token"
    with contextlib.suppress(Exception):  # Ray read its config at import: read it again
        from ray._raylet import Config  # type: ignore[attr-defined]

        Config.initialize("")
    return True


_HOST_PORT = re.compile(r"^[\w.\-]+:\d+$|^\[[0-9a-fA-F:]+\]:\d+$")


def _reachable(address: str, timeout_s: float = 5.0) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            return True
    except (OSError, ValueError):
        return False


def probe_auth(address: str, timeout_s: float = 15.0) -> None:
    """A token-auth cluster that refuses this machine's (missing or wrong) token: one line saying what
    to set; a ``host:port`` where nothing listens is one line too (Ray's GCS client would wait for it
    for minutes). Only ``host:port`` addresses are probed, for at most ``timeout_s``; anything else is
    left to ``ray.init``."""
    if not _HOST_PORT.match(address):
        return
    if not _reachable(address):
        raise UserError(
            f"nothing answers at the Ray cluster address '{address}': check the address (the GCS port, "
            "6379 by default) and that the cluster is up (ray status)"
        )
    try:
        from ray._raylet import GcsClient  # type: ignore[attr-defined]
        from ray.exceptions import AuthenticationError
    except ImportError:  # another Ray version
        return
    refused: list[BaseException] = []

    def probe() -> None:
        try:
            GcsClient(address=address)
        except AuthenticationError as exc:
            refused.append(exc)
        except Exception:  # noqa: BLE001 - anything else: ray.init says it
            pass

    with quiet_stderr():  # Ray's C++ client logs the refusal too: the UserError says it once
        t = threading.Thread(target=probe, name="raydrift-auth-probe", daemon=True)
        t.start()
        t.join(timeout_s)
    if refused:
        why = "no token was found here" if not _token_found() else "it refused this machine's token"
        raise UserError(f"the Ray cluster at '{address}' requires token authentication and {why}: {_TOKEN_HINT}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:300]


class RaySession:
    """Starts or connects to Ray for one run and shuts down what it started.

    An already initialised Ray (a program that embeds the :class:`~raydrift.coordinator.Coordinator`)
    is used as it is and left running.
    """

    def __init__(self, cfg: RaydriftConfig, address: str | None) -> None:
        self.cfg = cfg
        self.address = address
        self.started = False
        self.connected = False

    def _kwargs(self) -> dict[str, Any]:
        return {
            "namespace": self.cfg.ray.namespace,
            "log_to_driver": self.cfg.verbosity >= 2,
            "logging_level": logging.INFO if self.cfg.verbosity >= 3 else logging.WARNING,
        }

    def start(self) -> RayInfo:
        """Start (or connect); a failure is one :class:`UserError` line, and nothing is left running."""
        import ray

        if ray.is_initialized():
            return self.info(None)
        try:
            ctx = self._connect() if self.address else self._start_local()
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - Ray's start-up errors are many and untyped
            self._shutdown_quietly()
            if self.address:
                raise UserError(
                    f"cannot connect to the Ray cluster at '{self.address}' ({_first_line(exc)}): check the "
                    "address, that the cluster is up (ray status), and its token (RAY_AUTH_MODE=token)"
                ) from None
            raise UserError(
                f"Ray could not start a local cluster ({_first_line(exc)}): check free memory and disk "
                "(/tmp/ray), or connect to a running cluster with --address"
            ) from None
        self.connected = True
        # after a stop nothing may start a second cluster behind the run's back (a training thread
        # that outlives ray.shutdown() would otherwise auto-initialise a new one)
        with contextlib.suppress(Exception):
            from ray._private import auto_init_hook

            auto_init_hook.enable_auto_connect = False
        self._check_loopback()
        if self.cfg.ray.autoscaling and not self.started:
            self._check_node_types()
        url = getattr(ctx, "dashboard_url", None)
        return self.info(f"http://{url}" if url and not str(url).startswith("http") else url)

    def _connect(self) -> Any:
        import ray

        assert self.address is not None
        use_token_if_found()
        probe_auth(self.address)
        return ray.init(address=self.address, **self._kwargs())

    def _check_node_types(self) -> None:
        """``ray.autoscaling``: refuse a request no node type of the cluster can ever satisfy."""
        import ray

        from raydrift.feasibility import check_feasible, discover_node_types

        address = ray.get_runtime_context().gcs_address
        types, source = discover_node_types(address)
        if types is None:
            if self.cfg.verbosity >= 1:
                print(f"raydrift: ray.autoscaling: requests not checked against node types: {source}", file=sys.stderr)
            return
        try:
            check_feasible(self.cfg, types, f"the cluster at {address} ({source})")
        except UserError:
            self.shutdown()
            raise

    def _start_local(self) -> Any:
        import ray

        rc = self.cfg.ray
        # workers of a local cluster import user harnesses from the current directory too
        path = os.pathsep.join(p for p in [os.getcwd(), os.environ.get("PYTHONPATH", "")] if p)
        node_ip = rc.node_ip_address
        extra: dict[str, Any] = {} if node_ip == "auto" else {"_node_ip_address": node_ip}
        with _loopback_node_ip(node_ip), _without_opt_out_advice():
            ctx = ray.init(
                address="local",  # a new cluster, even if another one runs on this machine
                num_cpus=rc.num_cpus,
                num_gpus=rc.num_gpus,
                include_dashboard=rc.include_dashboard,
                dashboard_host=rc.dashboard_host,
                dashboard_port=rc.dashboard_port,
                runtime_env={"env_vars": {"PYTHONPATH": path}},
                **extra,
                **self._kwargs(),
            )
        self.started = True
        return ctx

    def _check_loopback(self) -> None:
        """Refuse to run on a local cluster that listens beyond the machine when loopback was asked."""
        if not self.started or self.cfg.ray.node_ip_address not in _LOOPBACKS:
            return
        import ray

        node_ip = ray.util.get_node_ip_address()
        if node_ip not in _LOOPBACKS:
            self.shutdown()
            raise UserError(
                f"the local Ray cluster came up on {node_ip}, not on loopback as ray.node_ip_address asks: "
                "refusing to run it open to the network (set ray.node_ip_address: auto to accept that)"
            )

    def info(self, dashboard_url: str | None) -> RayInfo:
        import ray

        node = getattr(ray._private.worker, "_global_node", None)  # type: ignore[attr-defined]
        session_dir = node.get_session_dir_path() if node is not None else None
        return RayInfo(ray.get_runtime_context().gcs_address, dashboard_url, session_dir, self.started)

    def shutdown(self) -> None:
        """Disconnect; a cluster this session started is stopped with all its processes."""
        import ray

        if self.connected and ray.is_initialized():
            ray.shutdown()
        self.connected = False

    def _shutdown_quietly(self) -> None:
        import ray

        with contextlib.suppress(Exception):
            if ray.is_initialized():
                ray.shutdown()
