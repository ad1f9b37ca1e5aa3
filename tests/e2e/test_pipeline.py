"""End to end on a real local Ray cluster: real River detector, real Ray Train, real MLflow store."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from pipeline_runs import run_pipeline

from raydrift.config import ContinualLearningConfig

# A short synthetic stream: 3 regimes x 16 batches of 32 samples; the model pre-trained on regime 0
# falls sharply on regimes 1 and 2.
BASE = [
    "name=e2e",
    "seed=0",
    "verbosity=0",
    "model.harness=synthetic",
    "data.regime_batches=16",
    "data.num_regimes=3",
    "stream.batch_size=32",
    "monitor.num_cpus=0.5",
    "drift_detection.warmup_batches=3",
    "drift_detection.cooldown_batches=2",
    "drift_detection.interval=4",
    "continual_learning.memory_size=200",
    "continual_learning.window_batches=6",
    "train.epochs=10",
    "train.batch_size=32",
    "train.lr=0.01",
]


def run(tmp_path: Path, *overrides: str) -> dict[str, Any]:
    return run_pipeline(tmp_path, [*BASE, *overrides])


def events(summary: dict[str, Any]) -> list[tuple[int, int, str]]:
    return [(e["batch_id"], e["sample_index"], e["detector"]) for e in summary["drift_events"]]


@pytest.fixture(scope="module")
def trained_run(ray_cluster: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One run with a real Ray Train worker and MLflow logging."""
    tmp = tmp_path_factory.mktemp("trained")
    # on_drift pause: the stream is faster than a Ray Train start-up, so with `continue` the stream
    # would end before the new weights go live (tests/e2e/test_fault_injection.py covers `continue`)
    return run(
        tmp, "monitor.num_monitors=1", "train.num_workers=1", "logging.backend=mlflow", "monitor.on_drift=pause"
    )


def test_drift_is_detected_after_a_regime_change(trained_run: dict[str, Any]) -> None:
    s = trained_run
    assert s["run"]["status"] == "completed"
    starts = {r["regime"]: r["batch_id"] for r in s["stream"]["regime_starts"]}
    assert sorted(starts) == [0, 1, 2] and starts[1] == 16
    assert len(s["drift_events"]) >= 1
    first = s["drift_events"][0]["batch_id"]
    assert starts[1] <= first < starts[1] + 8, f"first drift at batch {first}, regime 1 starts at {starts[1]}"


def test_update_raises_the_new_regime_accuracy(trained_run: dict[str, Any]) -> None:
    s = trained_run
    assert s["updates"], "no update ran"
    for upd in s["updates"]:
        r = upd["regime"]
        before, after = upd["test_accuracy_before"][r], upd["test_accuracy_after"][r]
        # a drift's first update lifts its regime; a follow-up (the stream window still under the
        # reference) starts from a recovered model, so it is held to the gate below, not to a lift
        assert upd["followup"] > 0 or after > before + 0.1, (
            f"update v{upd['version']}: regime {r} accuracy {before:.3f} -> {after:.3f}"
        )
        assert (
            upd["training_seconds"] > 0 and upd["broadcasting_seconds"] >= 0 and upd["waiting_seconds"] >= 0
        )
        assert upd["total_seconds"] >= upd["training_seconds"]
        # the newest window batch is held out of training for the promotion gate
        assert upd["status"] == "promoted" and upd["gate"]["promote"]
        assert upd["window_samples"] == 5 * 32 and upd["gate"]["holdout_samples"] == 32
        assert upd["gate"]["holdout_new"] >= upd["gate"]["holdout_current"]


def test_every_monitor_ends_on_the_new_version(trained_run: dict[str, Any]) -> None:
    s = trained_run
    version = len(s["updates"])
    assert s["model_version"] == version >= 1
    assert set(s["monitoring"]["monitor_versions"].values()) == {version}
    assert [u["version"] for u in s["updates"]] == list(range(1, version + 1))
    # the monitor fetched and loaded each new version (timed in the profile), the driver only put it
    assert s["profile"]["monitor_swap_seconds"] > 0 and s["profile"]["broadcast_seconds"] >= 0


def test_summary_and_outputs_are_complete(trained_run: dict[str, Any]) -> None:
    s = trained_run
    run_dir = Path(s["run"]["run_dir"])
    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert on_disk["drift_events"] == json.loads(json.dumps(s["drift_events"]))
    assert s["monitoring"]["samples_per_second"] > 0
    assert s["stream"]["batches"] == 48 and s["stream"]["samples"] == 48 * 32
    rows = s["accuracy_matrix"]["rows"]
    assert len(rows) == 1 + len(s["updates"]) and all(len(r["accuracy"]) == 3 for r in rows)
    cl = s["cl_metrics"]
    assert 0.0 <= cl["final_average_accuracy"] <= 1.0
    assert "forgetting" in cl and "backward_transfer" in cl
    assert (run_dir / "config.yaml").is_file()
    state = torch.load(run_dir / "weights.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    # metrics.csv: every batch id in exactly one interval row
    with open(run_dir / "metrics.csv") as f:
        recs = list(csv.DictReader(f))
    covered = [b for r in recs for b in range(int(r["first_batch"]), int(r["last_batch"]) + 1)]
    assert sorted(covered) == list(range(48))
    # batches.csv: every batch id exactly once, in order
    with open(run_dir / "batches.csv") as f:
        batch_rows = list(csv.DictReader(f))
    assert [int(r["batch_id"]) for r in batch_rows] == list(range(48))
    assert {r["status"] for r in batch_rows} == {"ok"}
    assert sum(int(r["n_samples"]) for r in recs) == 48 * 32
    assert (run_dir / "plots" / "monitored_metric.png").stat().st_size > 1000


def test_mlflow_has_the_run(trained_run: dict[str, Any]) -> None:
    from mlflow.tracking import MlflowClient

    run_dir = Path(trained_run["run"]["run_dir"])
    uri = f"sqlite:///{run_dir.parent / 'runs' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("raydrift")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1
    history = client.get_metric_history(runs[0].info.run_id, "monitored")
    assert len(history) >= 10


def test_trainer_worker_uses_its_cpus(trained_run: dict[str, Any]) -> None:
    assert trained_run["updates"][0]["train_torch_threads"] == 1


@pytest.fixture(scope="module")
def in_process_runs(ray_cluster: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """The same config with 1 and 3 monitors, and the 1-monitor run again (TorchTrainer in local mode)."""
    tmp = tmp_path_factory.mktemp("inproc")
    # on_drift pause: the batches after each update's window are evaluated with the new weights only,
    # so the run does not depend on timing
    common = ("train.num_workers=0", "logging.backend=none", "logging.plots=false", "monitor.on_drift=pause")
    return {
        "one": run(tmp, "monitor.num_monitors=1", "monitor.num_cpus=2", *common),
        "three": run(tmp, "monitor.num_monitors=3", "monitor.num_cpus=0.5", *common),
        # the same run again, with its outputs also copied to a storage path
        "again": run(
            tmp, "monitor.num_monitors=1", "monitor.num_cpus=2", f"ray.storage_path={tmp / 'store'}", *common
        ),
    }


def test_one_and_three_monitors_give_identical_drift_events(
    in_process_runs: dict[str, dict[str, Any]],
) -> None:
    one, three = in_process_runs["one"], in_process_runs["three"]
    assert events(one) and events(one) == events(three)
    assert len(one["updates"]) == len(three["updates"])
    assert len(three["monitoring"]["monitor_versions"]) == 3
    # all three monitors did work
    assert all(n > 0 for n in three["monitoring"]["monitor_batches"].values())


def test_every_batch_after_an_update_is_evaluated_with_the_new_weights(
    in_process_runs: dict[str, dict[str, Any]],
) -> None:
    # a new version reaches each of the three monitors with its next task: with on_drift pause, the
    # version that evaluated a batch is exactly the number of updates live at that batch
    s = in_process_runs["three"]
    assert len(s["updates"]) >= 1
    live = [u["live_batch_id"] for u in s["updates"]]
    with open(Path(s["run"]["run_dir"]) / "batches.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 48
    wrong = [
        (int(r["batch_id"]), int(r["version"]))
        for r in rows
        if int(r["version"]) != sum(b <= int(r["batch_id"]) for b in live)
    ]
    assert not wrong, f"(batch, version) evaluated with the wrong weights: {wrong}; updates live at {live}"
    assert len({r["monitor"] for r in rows if int(r["version"]) >= 1}) >= 2  # new weights on several monitors


def test_same_config_and_seed_give_the_same_run(in_process_runs: dict[str, dict[str, Any]]) -> None:
    a, b = in_process_runs["one"], in_process_runs["again"]
    assert events(a) == events(b)
    assert len(a["updates"]) == len(b["updates"])
    # accuracies equal within 1e-6 (same process, same thread counts: bitwise in practice)
    for ra, rb in zip(a["accuracy_matrix"]["rows"], b["accuracy_matrix"]["rows"], strict=True):
        assert ra["accuracy"] == pytest.approx(rb["accuracy"], abs=1e-6)


def test_monitor_torch_threads_match_their_cpus(in_process_runs: dict[str, dict[str, Any]]) -> None:
    assert set(in_process_runs["one"]["monitoring"]["monitor_torch_threads"].values()) == {2}
    assert set(in_process_runs["three"]["monitoring"]["monitor_torch_threads"].values()) == {1}


def test_helper_actors_run_one_torch_thread(ray_cluster: Path) -> None:
    import ray

    from raydrift.actors import StreamReader

    spec = {"spec": "synthetic", "options": {}, "seed": 0, "batch_size": 8}
    reader = StreamReader.options(num_cpus=0).remote(
        spec, {"max_batches": 2}, {"window_batches": 2, "memory_size": 10}
    )
    assert ray.get(reader.torch_threads.remote()) == 1
    ray.kill(reader)


def test_a_config_larger_than_the_cluster_is_a_clear_error(ray_cluster: Path, tmp_path: Path) -> None:
    from raydrift.errors import UserError

    with pytest.raises(UserError, match=r"needs 1 GPUs but the cluster has 0: lower monitor.num_gpus"):
        run(tmp_path, "monitor.num_gpus=1", "logging.backend=none")
    with pytest.raises(UserError, match=r"needs 4 CPUs .* but the cluster has 2"):
        run(
            tmp_path,
            "monitor.num_monitors=3",
            "monitor.num_cpus=1",
            "train.num_workers=1",
            "logging.backend=none",
        )


def test_drift_score_picks_the_kind_of_update(ray_cluster: Path, tmp_path: Path) -> None:
    # score = how far accuracy fell; every drift here falls by more than 0.2 -> retrain, none by less than 0
    s = run(
        tmp_path,
        "train.num_workers=0",
        "logging.backend=none",
        "logging.plots=false",
        "drift_detection.regimes.fine_tuning=0.0",
        "drift_detection.regimes.retrain=0.2",
    )
    assert s["updates"]
    for upd, ev in zip(s["updates"], s["drift_events"], strict=False):
        expected = "retrain" if ev["score"] >= 0.2 else "fine_tuning"
        assert upd["update_kind"] == expected and upd["score"] == ev["score"]
        default = ContinualLearningConfig().strategy  # retrain: the configured (here the default) strategy
        assert upd["strategy"] == ("naive" if expected == "fine_tuning" else default)
        r = upd["regime"]
        assert upd["test_accuracy_after"][r] > upd["test_accuracy_before"][r]


def test_outputs_are_copied_to_the_storage_path(in_process_runs: dict[str, dict[str, Any]]) -> None:
    s = in_process_runs["again"]
    run_dir = Path(s["run"]["run_dir"])
    copied = run_dir.parent / "store" / run_dir.name
    assert json.loads((copied / "summary.json").read_text())["drift_events"] == s["drift_events"]
    assert (copied / "metrics.csv").read_text() == (run_dir / "metrics.csv").read_text()


def test_recovery_time_is_recorded(trained_run: dict[str, Any]) -> None:
    updates = trained_run["updates"]
    assert any(u["recovery_batches"] is not None for u in updates)
    for u in updates:
        assert u["pre_drift_value"] > 0.9  # the pre-trained model was accurate before the drift
        if u["recovery_batches"] is not None:
            # not before the new weights are live
            assert u["recovery_batches"] > u["window_last_batch_id"] - u["drift_batch_id"]
