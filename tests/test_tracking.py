"""Tests of raydrift.tracking against a real MLflow sqlite store (created once per module)."""

from __future__ import annotations

import logging
import pickle
import time
from pathlib import Path
from typing import Any

import pytest

from raydrift.config import LoggingConfig
from raydrift.tracking import (
    MAX_PARAM_LENGTH,
    MLflowTracker,
    Tracker,
    default_tracking_uri,
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
    assert {"summary.json", "metrics.csv", "config.yaml", "plots"} <= top
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
