"""Tests of raydrift.tracking against real stores: MLflow sqlite (created once per module), a real
unreachable HTTP port, a sqlite store deleted mid-run, and offline W&B runs read back from disk."""

from __future__ import annotations

import json
import logging
import pickle
import shutil
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from raydrift.config import LoggingConfig
from raydrift.tracking import (
    FALLBACK_DB,
    JOURNAL_DIR,
    MAX_PARAM_LENGTH,
    WANDB_STEP_METRIC,
    MLflowTracker,
    Tracker,
    WandbTracker,
    default_tracking_uri,
    fallback_tracking_uri,
    flatten_params,
    make_tracker,
)

PARAMS: dict[str, Any] = {
    "name": "mnist",
    "seed": 3,
    "train": {"lr": 0.001, "epochs": 2},
    "drift_detection": {"detector": "adwin", "params": {"delta": 0.002}},
    "data": {},
    "notes": "x" * 800,
}


@pytest.fixture(autouse=True)
def fast_http(monkeypatch: pytest.MonkeyPatch) -> None:
    # no retries / short timeouts: an unreachable server must fail in milliseconds, not minutes
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")


@pytest.fixture(scope="module")
def store_uri(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One sqlite store for the module: creating its tables takes seconds."""
    return default_tracking_uri(tmp_path_factory.mktemp("runs"))


def make_run_dir(root: Path) -> Path:
    run_dir = root / "mnist-20250101-100000"
    (run_dir / "plots").mkdir(parents=True)
    (run_dir / "summary.json").write_text('{"run": {"status": "completed"}}\n')
    (run_dir / "metrics.csv").write_text("interval,value\n0,0.9\n")
    (run_dir / "config.yaml").write_text("name: mnist\n")
    (run_dir / "updates.csv").write_text("version,drift_batch_id\n1,23\n")
    (run_dir / "weights.pt").write_bytes(b"not uploaded")
    (run_dir / "plots" / "monitored_metric.png").write_bytes(b"\x89PNG fake")
    return run_dir


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "raydrift.tracking" and r.levelno >= logging.WARNING
    ]


def test_flatten_params_dotted_and_truncated() -> None:
    flat = flatten_params(PARAMS)
    assert flat["train.lr"] == "0.001"
    assert flat["drift_detection.params.delta"] == "0.002"
    assert flat["data"] == "{}"
    assert len(flat["notes"]) == MAX_PARAM_LENGTH
    # characters MLflow rejects (or that are not portable, like ':') become '_'
    assert flatten_params({"a b": {"c:d!": None}, "../x": 1}) == {"a b.c_d_": "None", "_/x": "1"}


def test_mlflow_round_trip(tmp_path: Path, store_uri: str, caplog: pytest.LogCaptureFixture) -> None:
    from mlflow.tracking import MlflowClient

    tracker = MLflowTracker(store_uri, experiment="round-trip")
    assert tracker.ui_hint == f"mlflow ui --backend-store-uri {store_uri}"
    tracker.start("mnist-20250101-100000", PARAMS)
    assert tracker.active and tracker.run_id is not None
    for step in (4, 9, 14):
        tracker.log_metrics({"accuracy": 1.0 - step / 100, "loss": step / 10, "skipped": None}, step=step)  # type: ignore[dict-item]
    tracker.log_metrics({"update/train_loss": 0.5}, step=9)
    tracker.set_tags({"raydrift.harness": "mnist"})
    tracker.log_artifacts(make_run_dir(tmp_path))
    tracker.finish("completed")

    client = MlflowClient(tracking_uri=store_uri)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "mnist-20250101-100000"
    assert run.data.params["train.lr"] == "0.001"
    assert run.data.params["drift_detection.params.delta"] == "0.002"
    assert len(run.data.params["notes"]) == MAX_PARAM_LENGTH
    assert run.data.tags["raydrift.harness"] == "mnist"
    history = client.get_metric_history(tracker.run_id, "accuracy")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [
        (4, 0.96),
        (9, 0.91),
        (14, 0.86),
    ]
    assert [m.step for m in client.get_metric_history(tracker.run_id, "update/train_loss")] == [9]
    assert "skipped" not in run.data.metrics
    top = {a.path for a in client.list_artifacts(tracker.run_id)}
    assert {"summary.json", "metrics.csv", "updates.csv", "config.yaml", "plots"} <= top
    assert "weights.pt" not in top
    assert [a.path for a in client.list_artifacts(tracker.run_id, "plots")] == ["plots/monitored_metric.png"]
    # artifacts live next to the database, not in the working directory
    db_dir = Path(store_uri.removeprefix("sqlite:///")).parent
    assert list((db_dir / "mlartifacts").rglob("summary.json"))
    assert warnings_of(caplog) == []
    # after finish, calls are harmless
    tracker.log_metrics({"accuracy": 0.1}, step=99)


def test_finish_status_interrupted_and_resume(store_uri: str) -> None:
    from mlflow.tracking import MlflowClient

    first = MLflowTracker(store_uri, experiment="resume")
    first.start("run", {"seed": 1})
    run_id = first.run_id
    assert run_id is not None
    first.log_metrics({"accuracy": 0.5}, step=1)
    copy = pickle.loads(pickle.dumps(first))  # the client is dropped, the ids kept
    assert copy.run_id == first.run_id and copy._client is None
    first.finish("interrupted")
    client = MlflowClient(tracking_uri=store_uri)
    assert client.get_run(run_id).info.status == "KILLED"

    resumed = MLflowTracker(store_uri, experiment="resume")
    resumed.load_state_dict(first.state_dict())
    resumed.start("run", {"seed": 1})
    assert resumed.run_id == run_id
    resumed.log_metrics({"accuracy": 0.75}, step=2)
    resumed.finish("failed")
    run = client.get_run(run_id)
    assert run.info.status == "FAILED"
    assert [m.step for m in client.get_metric_history(run_id, "accuracy")] == [1, 2]


def test_unreachable_server_warns_once_and_goes_on(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    tracker = MLflowTracker("http://127.0.0.1:1", experiment="x")
    t0 = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="raydrift.tracking"):
        tracker.start("run", PARAMS)
        tracker.log_metrics({"accuracy": 0.5}, step=0)
        tracker.set_tags({"a": 1})
        tracker.log_artifacts(make_run_dir(tmp_path))
        tracker.finish("completed")
    assert time.perf_counter() - t0 < 10
    assert not tracker.active
    msgs = warnings_of(caplog)
    assert len(msgs) == 1, msgs
    assert "127.0.0.1:1" in msgs[0] and "\n" not in msgs[0]


def test_uncreatable_sqlite_store_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("a file where a directory should be")
    tracker = MLflowTracker(f"sqlite:///{blocker}/sub/mlflow.db", experiment="x")
    with caplog.at_level(logging.WARNING, logger="raydrift.tracking"):
        tracker.start("run", {})
        tracker.log_metrics({"accuracy": 0.5}, step=0)
        tracker.finish("failed")
    assert len(warnings_of(caplog)) == 1
    assert tracker.run_id is None


def test_failure_mid_run_disables_tracking(store_uri: str, caplog: pytest.LogCaptureFixture) -> None:
    tracker = MLflowTracker(store_uri, experiment="mid-run")
    tracker.start("run", {})
    assert tracker.active
    calls = []

    def broken(*args: Any, **kwargs: Any) -> None:
        calls.append(1)
        raise ConnectionError("store went away")

    tracker._client.log_batch = broken
    with caplog.at_level(logging.WARNING, logger="raydrift.tracking"):
        tracker.log_metrics({"accuracy": 0.5}, step=0)
        tracker.log_metrics({"accuracy": 0.6}, step=1)  # no-op now: no second call, no second warning
        tracker.finish("completed")
    assert calls == [1]
    msgs = warnings_of(caplog)
    assert len(msgs) == 1 and "store went away" in msgs[0]
    assert not tracker.active


def test_none_backend_does_nothing(tmp_path: Path) -> None:
    tracker = make_tracker(LoggingConfig.model_validate({"backend": "none"}), tmp_path / "runs")
    assert type(tracker) is Tracker
    tracker.start("run", PARAMS)
    tracker.log_metrics({"accuracy": 1.0}, step=0)
    tracker.set_tags({"a": "b"})
    tracker.log_artifacts(tmp_path / "missing")
    tracker.finish("failed")
    assert tracker.run_id is None and tracker.ui_hint is None and not tracker.active
    assert tracker.info() == {"backend": "none", "run_id": None, "ui_hint": None}
    assert not (tmp_path / "runs").exists()
    assert pickle.loads(pickle.dumps(tracker)).state_dict() == tracker.state_dict()


def test_make_tracker_mlflow_default_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    tracker = make_tracker(
        LoggingConfig.model_validate({"backend": "mlflow", "experiment": "e"}), Path("runs")
    )
    assert isinstance(tracker, MLflowTracker)
    expected = f"sqlite:///{tmp_path.resolve() / 'runs' / 'mlflow.db'}"
    assert tracker.tracking_uri == expected
    assert tracker.experiment == "e"
    assert tracker.ui_hint == f"mlflow ui --backend-store-uri {expected}"
    custom = make_tracker(
        LoggingConfig.model_validate({"tracking_uri": "http://127.0.0.1:5000"}), Path("runs")
    )
    assert isinstance(custom, MLflowTracker)
    assert custom.tracking_uri == "http://127.0.0.1:5000" and custom.ui_hint == "http://127.0.0.1:5000"
    assert custom.fallback_uri == f"sqlite:///{tmp_path.resolve() / 'runs' / FALLBACK_DB}"
    # a store is never its own fallback
    same = MLflowTracker(fallback_tracking_uri(tmp_path), fallback_dir=tmp_path)
    assert same.fallback_uri is None and same.journal_path is None


def test_import_does_not_import_tracking_libraries() -> None:
    code = "import sys, raydrift.tracking; print(sorted(m for m in ('mlflow', 'wandb') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- MLflow: a failing store falls back to a local one, no metric lost ----------------------------


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The runs directory holding the fallback store, shared by the module (its tables take seconds)."""
    return tmp_path_factory.mktemp("fallback-runs")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def history(client: Any, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_unreachable_server_at_start_falls_back_to_local_store(
    tmp_path: Path, runs_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"http://127.0.0.1:{closed_port()}"
    tracker = make_tracker(LoggingConfig.model_validate({"tracking_uri": uri, "experiment": "fb"}), runs_dir)
    assert isinstance(tracker, MLflowTracker)
    with caplog.at_level(logging.WARNING, logger="raydrift.tracking"):
        tracker.start("start-failure", PARAMS)
        assert tracker.active and tracker.using_fallback
        t0 = time.perf_counter()
        for step in range(10):
            tracker.log_metrics({"accuracy": step / 10, "loss": 1 - step / 10}, step=step)
        tracker.set_tags({"raydrift.harness": "mnist"})
        tracker.log_artifacts(make_run_dir(tmp_path))
        tracker.finish("completed")
        logging_s = time.perf_counter() - t0
    assert logging_s < 10, logging_s  # no HTTP retries once on the fallback

    msgs = warnings_of(caplog)
    assert len(msgs) == 1, msgs
    fallback = fallback_tracking_uri(runs_dir)
    assert uri in msgs[0] and "ConnectionRefusedError" in msgs[0] and fallback in msgs[0]
    assert "\n" not in msgs[0]
    info = tracker.info()
    assert info["fallback_uri"] == fallback and info["run_id"] == tracker.run_id
    assert info["ui_hint"] == f"mlflow ui --backend-store-uri {fallback}" and info["primary_run_id"] is None

    client = MlflowClient(tracking_uri=fallback)
    run = client.get_run(tracker.run_id)
    assert run.info.run_name == "start-failure" and run.info.status == "FINISHED"
    assert run.data.params["train.lr"] == "0.001"
    assert run.data.tags["raydrift.harness"] == "mnist"
    assert run.data.tags["raydrift.primary_tracking_uri"] == uri
    assert history(client, tracker.run_id, "accuracy") == [(s, s / 10) for s in range(10)]
    assert history(client, tracker.run_id, "loss") == [(s, 1 - s / 10) for s in range(10)]
    assert {"summary.json", "updates.csv", "plots"} <= {a.path for a in client.list_artifacts(tracker.run_id)}
    assert not (runs_dir / JOURNAL_DIR / "start-failure.jsonl").exists()


def test_store_failing_mid_run_replays_every_metric_into_fallback(
    tmp_path: Path, runs_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The store is deleted mid-run, after an interruption and a resume: the fallback run holds
    every step from the first one, including the values of the call that failed."""
    from mlflow.tracking import MlflowClient

    store = tmp_path / "store"
    uri = f"sqlite:///{store / 'mlflow.db'}"
    first = MLflowTracker(uri, experiment="fb", fallback_dir=runs_dir)
    first.start("mid-run-failure", PARAMS)
    assert first.active and not first.using_fallback
    primary_run_id = first.run_id
    for step in range(5):
        first.log_metrics({"accuracy": step / 10, "monitored": step / 20}, step=step)
    first.set_tags({"raydrift.harness": "mnist"})
    # one call over MLflow's 1,000-values-per-request limit: replayed in several requests
    wide = {f"class/{i}": i / 1000 for i in range(1100)}
    first.log_metrics(wide, step=4)
    first.finish("interrupted")  # the journal stays for a resumed run
    journal = runs_dir / JOURNAL_DIR / "mid-run-failure.jsonl"
    assert journal.is_file()

    resumed = MLflowTracker(uri, experiment="fb", fallback_dir=runs_dir)
    resumed.load_state_dict(pickle.loads(pickle.dumps(first)).state_dict())
    resumed.start("mid-run-failure", PARAMS)
    assert resumed.run_id == primary_run_id and not resumed.using_fallback
    resumed.log_metrics({"accuracy": 0.5, "monitored": 0.25}, step=5)
    shutil.rmtree(store)  # the store goes away mid-run
    with caplog.at_level(logging.WARNING, logger="raydrift.tracking"):
        t0 = time.perf_counter()
        for step in range(6, 10):
            resumed.log_metrics({"accuracy": step / 10, "monitored": step / 20}, step=step)
        resumed.finish("completed")
        switch_s = time.perf_counter() - t0
    print(f"fall back with replay of 1,114 values: {switch_s:.2f} s")

    msgs = warnings_of(caplog)
    assert len(msgs) == 1, msgs
    assert uri in msgs[0] and "log_metrics" in msgs[0] and fallback_tracking_uri(runs_dir) in msgs[0]
    # 5x2 + 1,100 before the interruption, 2 after the resume, 2 of the failing call
    assert "1114 metric values" in msgs[0]
    assert "sqlite3.OperationalError" in msgs[0]  # the root cause, not only MLflow's wrapper
    assert resumed.using_fallback and resumed.primary_run_id == primary_run_id
    assert resumed.run_id != primary_run_id and not journal.exists()

    client = MlflowClient(tracking_uri=fallback_tracking_uri(runs_dir))
    run = client.get_run(resumed.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "mid-run-failure"
    assert run.data.tags["raydrift.primary_run_id"] == primary_run_id
    assert run.data.tags["raydrift.harness"] == "mnist"
    assert run.data.params["drift_detection.params.delta"] == "0.002"
    assert history(client, resumed.run_id, "accuracy") == [(s, s / 10) for s in range(10)]
    assert history(client, resumed.run_id, "monitored") == [(s, s / 20) for s in range(10)]
    assert history(client, resumed.run_id, "class/1099") == [(4, 1.099)]
    assert len([k for k in run.data.metrics if k.startswith("class/")]) == 1100


def test_resume_after_fall_back_stays_in_fallback(runs_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    from mlflow.tracking import MlflowClient

    uri = f"http://127.0.0.1:{closed_port()}"
    first = MLflowTracker(uri, experiment="fb", fallback_dir=runs_dir)
    with caplog.at_level(logging.WARNING, logger="raydrift.tracking"):
        first.start("resume-in-fallback", {"seed": 1})
    first.log_metrics({"accuracy": 0.5}, step=1)
    first.finish("interrupted")
    resumed = MLflowTracker(uri, experiment="fb", fallback_dir=runs_dir)
    resumed.load_state_dict(first.state_dict())
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="raydrift.tracking"):
        resumed.start("resume-in-fallback", {"seed": 1})  # the server is not tried again
        resumed.log_metrics({"accuracy": 0.75}, step=2)
        resumed.finish("completed")
    assert warnings_of(caplog) == []
    assert resumed.run_id == first.run_id and resumed.using_fallback
    client = MlflowClient(tracking_uri=fallback_tracking_uri(runs_dir))
    assert history(client, resumed.run_id, "accuracy") == [(1, 0.5), (2, 0.75)]
    assert client.get_run(resumed.run_id).info.status == "FINISHED"


def test_fallback_failing_too_disables_with_one_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the runs directory should be")
    uri = f"http://127.0.0.1:{closed_port()}"
    tracker = MLflowTracker(uri, experiment="x", fallback_dir=blocker)
    with caplog.at_level(logging.WARNING, logger="raydrift.tracking"):
        tracker.start("run", PARAMS)
        tracker.log_metrics({"accuracy": 0.5}, step=0)
        tracker.set_tags({"a": 1})
        tracker.log_artifacts(make_run_dir(tmp_path))
        tracker.finish("completed")
    msgs = warnings_of(caplog)
    assert len(msgs) == 1, msgs
    assert uri in msgs[0] and "fallback store" in msgs[0] and "failed too" in msgs[0]
    assert not tracker.active and not tracker.using_fallback


def test_journal_write_failure_still_replays_the_failing_call(
    tmp_path: Path, store_uri: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Unit test: the journal cannot be written and the store then fails (both simulated); the
    values of the failing call still reach the fallback store, with one warning for each problem."""
    from mlflow.tracking import MlflowClient

    fallback_dir = tmp_path / "runs"
    tracker = MLflowTracker(store_uri, experiment="journal", fallback_dir=fallback_dir)
    tracker.start("no-journal", {"seed": 2})
    (fallback_dir / JOURNAL_DIR).mkdir(parents=True, exist_ok=True)
    (fallback_dir / JOURNAL_DIR / "no-journal.jsonl").mkdir()  # a directory: open(..., "a") fails
    with caplog.at_level(logging.WARNING, logger="raydrift.tracking"):
        tracker.log_metrics({"accuracy": 0.5}, step=0)
        assert not tracker.using_fallback

        def broken(*args: Any, **kwargs: Any) -> None:
            raise ConnectionError("store went away")

        tracker._client.log_batch = broken
        tracker.log_metrics({"accuracy": 0.75}, step=1)
        tracker.set_tags({"after": "failure"})
        tracker.finish("completed")
    msgs = warnings_of(caplog)
    assert len(msgs) == 2 and "journal" in msgs[0] and "store went away" in msgs[1], msgs
    client = MlflowClient(tracking_uri=fallback_tracking_uri(fallback_dir))
    # step 0 reached only the failed store (the journal was broken); step 1 is not lost
    assert history(client, tracker.run_id, "accuracy") == [(1, 0.75)]
    assert client.get_run(tracker.run_id).data.tags["after"] == "failure"


# --- Weights & Biases ---------------------------------------------------------------------------


def wandb_records(path: Path) -> Iterator[Any]:
    """The protobuf records of a ``.wandb`` file: a 7-byte header, then LevelDB-log records in
    32 KiB blocks (7-byte record header: CRC32, length, type FULL/FIRST/MIDDLE/LAST)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B", data[:7]
    pos, block, chunk = 7, 32768, b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer padding
            pos += block - pos % block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0:
            break
        chunk += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL, LAST
            record = pb.Record()
            record.ParseFromString(chunk)
            chunk = b""
            yield record


def read_offline_run(run_path: Path, timeout_s: float = 20.0) -> dict[str, Any]:
    """What an offline run folder holds: run info, config, history rows, saved files, exit code.

    ``run.finish()`` returns before the W&B service has flushed the file: wait for its exit record.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        got = _read_offline_run(run_path)
        if got["exit_code"] is not None or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def _read_offline_run(run_path: Path) -> dict[str, Any]:
    files = list(run_path.glob("run-*.wandb"))
    assert len(files) == 1, files
    out: dict[str, Any] = {"history": [], "files": [], "config": {}, "exit_code": None}
    for r in wandb_records(files[0]):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            out.update(run_id=r.run.run_id, name=r.run.display_name, project=r.run.project)
            out["config"].update({i.key: json.loads(i.value_json) for i in r.run.config.update})
        elif kind == "config":
            out["config"].update({i.key: json.loads(i.value_json) for i in r.config.update})
        elif kind == "history":
            out["history"].append(
                {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
            )
        elif kind == "files":
            out["files"] += [f.path for f in r.files.files]
        elif kind == "exit":
            out["exit_code"] = r.exit.exit_code
    return out


@pytest.fixture
def wandb_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """W&B offline, with every W&B directory inside tmp_path and no credentials; returns WANDB_DIR."""
    pytest.importorskip("wandb", reason="the wandb extra: pip install 'raydrift[wandb]'")
    for var in ("WANDB_API_KEY", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_BASE_URL", "WANDB_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    for var, sub in (("WANDB_DIR", "wandb-dir"), ("WANDB_DATA_DIR", "wandb-data"),
                     ("WANDB_CACHE_DIR", "wandb-cache"), ("WANDB_CONFIG_DIR", "wandb-config")):  # fmt: skip
        (tmp_path / sub).mkdir()
        monkeypatch.setenv(var, str(tmp_path / sub))
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc credentials of the machine
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))
    return tmp_path / "wandb-dir"


def test_wandb_offline_run_records_metrics_config_and_files(
    tmp_path: Path, wandb_offline: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = LoggingConfig.model_validate({"backend": "wandb", "wandb_project": "raydrift-test"})
    tracker = make_tracker(cfg, tmp_path / "runs")
    assert isinstance(tracker, WandbTracker) and tracker.dir == str(wandb_offline)  # WANDB_DIR wins
    with caplog.at_level(logging.WARNING, logger="raydrift.tracking"):
        tracker.start("mnist-20250101-100000", PARAMS)
        assert tracker.active and tracker.run_id
        for step in (4, 9):
            tracker.log_metrics({"monitored": 1 - step / 100, "accuracy": 1 - step / 100}, step=step)
        # a drift alarm is logged at its batch after a later interval: kept, not dropped by W&B
        tracker.log_metrics({"drift": 1.0, "nan": float("nan"), "none": None}, step=6)  # type: ignore[dict-item]
        tracker.log_metrics({"update/train_loss": 0.5}, step=14)
        tracker.set_tags({"raydrift.harness": "mnist"})
        tracker.log_artifacts(make_run_dir(tmp_path))
        tracker.finish("completed")
    assert warnings_of(caplog) == []
    assert not tracker.active

    run_paths = list((wandb_offline / "wandb").glob("offline-run-*"))
    assert len(run_paths) == 1 and str(run_paths[0]) == tracker.run_path
    assert tracker.ui_hint == f"wandb sync {run_paths[0]}"
    assert tracker.info()["run_path"] == tracker.run_path and tracker.info()["backend"] == "wandb"
    got = read_offline_run(run_paths[0])
    assert got["run_id"] == tracker.run_id and got["name"] == "mnist-20250101-100000"
    assert got["project"] == "raydrift-test"
    assert got["config"]["train"] == {"lr": 0.001, "epochs": 2}
    assert got["config"]["raydrift.harness"] == "mnist"
    rows = [{k: v for k, v in h.items() if not k.startswith("_")} for h in got["history"]]
    assert rows == [
        {"monitored": 0.96, "accuracy": 0.96, WANDB_STEP_METRIC: 4},
        {"monitored": 0.91, "accuracy": 0.91, WANDB_STEP_METRIC: 9},
        {"drift": 1.0, WANDB_STEP_METRIC: 6},
        {"update/train_loss": 0.5, WANDB_STEP_METRIC: 14},
    ]
    saved = {"summary.json", "metrics.csv", "updates.csv", "config.yaml", "plots/monitored_metric.png"}
    assert saved <= set(got["files"])
    assert "weights.pt" not in got["files"]
    for name in saved:  # copies in the run folder: `wandb sync` needs nothing else
        assert (run_paths[0] / "files" / name).read_bytes() == (
            tmp_path / "mnist-20250101-100000" / name
        ).read_bytes()
    assert got["exit_code"] == 0


def test_wandb_resume_continues_the_same_run(wandb_offline: Path) -> None:
    first = WandbTracker(project="raydrift-test")
    first.start("run", {"seed": 1})
    first.log_metrics({"accuracy": 0.5}, step=1)
    first.finish("interrupted")
    # W&B names a run folder by the second it started: a resume in the same second would share it
    time.sleep(1.05 - time.time() % 1)
    resumed = WandbTracker(project="raydrift-test")
    resumed.load_state_dict(pickle.loads(pickle.dumps(first)).state_dict())
    resumed.start("run", {"seed": 1})
    resumed.log_metrics({"accuracy": 0.75}, step=2)
    resumed.finish("completed")
    assert resumed.run_id == first.run_id
    runs = sorted((wandb_offline / "wandb").glob("offline-run-*"))
    got = [read_offline_run(p) for p in runs]
    assert [g["run_id"] for g in got] == [first.run_id] * 2  # `wandb sync` of both: one run
    assert [g["exit_code"] for g in got] == [1, 0]
    assert [h["accuracy"] for g in got for h in g["history"]] == [0.5, 0.75]


def test_wandb_start_failure_warns_once_and_goes_on(
    tmp_path: Path, wandb_offline: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # online, and no API key anywhere: wandb.init fails
    tracker = WandbTracker(project="raydrift-test", mode="online", dir=tmp_path / "runs")
    t0 = time.perf_counter()
    with caplog.at_level(logging.WARNING, logger="raydrift.tracking"):
        tracker.start("run", PARAMS)
        tracker.log_metrics({"accuracy": 0.5}, step=0)
        tracker.set_tags({"a": 1})
        tracker.log_artifacts(make_run_dir(tmp_path))
        tracker.finish("completed")
    assert time.perf_counter() - t0 < 30
    msgs = warnings_of(caplog)
    assert len(msgs) == 1, msgs
    assert "W&B tracking disabled" in msgs[0] and "raydrift-test" in msgs[0] and "\n" not in msgs[0]
    assert not tracker.active and tracker.run_id is None
    assert tracker.state_dict()["failed"] is True


def test_wandb_failure_mid_run_disables(
    tmp_path: Path, wandb_offline: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Unit test: the run's ``log`` raises (simulated): one warning, the run is closed as failed,
    every later call is a no-op."""
    tracker = WandbTracker(project="raydrift-test")
    tracker.start("run", {})
    tracker.log_metrics({"accuracy": 0.5}, step=0)
    calls = []

    def broken(*args: Any, **kwargs: Any) -> None:
        calls.append(1)
        raise ConnectionError("wandb service went away")

    tracker._run.log = broken
    with caplog.at_level(logging.WARNING, logger="raydrift.tracking"):
        tracker.log_metrics({"accuracy": 0.6}, step=1)
        tracker.log_metrics({"accuracy": 0.7}, step=2)
        tracker.log_artifacts(make_run_dir(tmp_path))
        tracker.finish("completed")
    assert calls == [1]
    msgs = warnings_of(caplog)
    assert len(msgs) == 1 and "wandb service went away" in msgs[0]
    assert not tracker.active
    got = read_offline_run(Path(str(tracker.run_path)))
    assert [h["accuracy"] for h in got["history"]] == [0.5]
    assert got["exit_code"] == 1 and "summary.json" not in got["files"]


def test_make_tracker_wandb_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb", reason="the wandb extra: pip install 'raydrift[wandb]'")
    for var in ("WANDB_DIR", "WANDB_PROJECT"):
        monkeypatch.delenv(var, raising=False)
    cfg = LoggingConfig.model_validate({"backend": "wandb", "experiment": "exp", "wandb_mode": "offline"})
    tracker = make_tracker(cfg, tmp_path / "runs")
    assert isinstance(tracker, WandbTracker)
    assert tracker.project == "exp" and tracker.mode == "offline"
    assert tracker.dir == str((tmp_path / "runs").resolve())  # offline runs land in runs/wandb/
    monkeypatch.setenv("WANDB_PROJECT", "from-env")
    assert make_tracker(cfg, tmp_path).project == "from-env"  # type: ignore[attr-defined]
    cfg = LoggingConfig.model_validate({"backend": "wandb", "wandb_project": "p", "wandb_entity": "team"})
    tracker = make_tracker(cfg, tmp_path)
    assert isinstance(tracker, WandbTracker) and (tracker.project, tracker.entity) == ("p", "team")
    assert pickle.loads(pickle.dumps(tracker)).project == "p"
    with pytest.raises(ValueError):
        LoggingConfig.model_validate({"backend": "wandb", "wandb_mode": "sometimes"})


def test_make_tracker_without_the_package_warns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Unit test: find_spec says wandb is not installed (simulated)."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    with caplog.at_level(logging.WARNING, logger="raydrift.tracking"):
        tracker = make_tracker(LoggingConfig.model_validate({"backend": "wandb"}), tmp_path)
    assert type(tracker) is Tracker
    msgs = warnings_of(caplog)
    assert len(msgs) == 1 and "raydrift[wandb]" in msgs[0]


def test_wandb_disabled_mode_writes_nothing(
    tmp_path: Path, wandb_offline: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = LoggingConfig.model_validate({"backend": "wandb", "wandb_mode": "disabled"})
    tracker = make_tracker(cfg, tmp_path / "runs")
    run_dir = make_run_dir(tmp_path)
    with caplog.at_level(logging.WARNING, logger="raydrift.tracking"):
        tracker.start("run", PARAMS)
        tracker.log_metrics({"accuracy": 0.5}, step=0)
        tracker.log_artifacts(run_dir)
        tracker.finish("completed")
    assert warnings_of(caplog) == []
    assert tracker.ui_hint is None and tracker.info()["run_path"] is None
    assert not any(wandb_offline.rglob("*")) and not any(tmp_path.rglob("offline-run-*"))
