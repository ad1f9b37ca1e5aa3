"""Tests of raydrift.report: summary.json / metrics.csv I/O, plots and the text summary."""

from __future__ import annotations

import copy
import csv
import json
import pickle
from pathlib import Path
from typing import Any

import pytest

from raydrift.errors import UserError
from raydrift.report import (
    METRICS_COLUMNS,
    UPDATES_COLUMNS,
    MetricsWriter,
    export_csv,
    format_summary,
    load_summary,
    make_plots,
    read_metrics,
    report,
    write_summary,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _updates() -> list[dict[str, Any]]:
    """The two updates of :func:`make_summary`'s run (after the drifts at batches 23 and 44)."""
    return [
        {
            "version": 1,
            "drift_batch_id": 23,
            "live_batch_id": 26,
            "strategy": "replay",
            "waiting_seconds": 0.25,
            "training_seconds": 4.5,
            "broadcasting_seconds": 0.125,
            "total_seconds": 4.875,
            "window_samples": 512,
            "memory_samples": 300,
            "train_loss": 0.41,
            "regime": 1,
            "accuracy_before": 0.512,
            "accuracy_after": 0.903,
            "test_accuracy_before": {0: 0.97, 1: 0.448, 2: 0.3},
            "test_accuracy_after": {0: 0.93, 1: 0.917, 2: 0.31},
        },
        {
            "version": 2,
            "drift_batch_id": 44,
            "strategy": "replay",
            "waiting_seconds": 0.5,
            "training_seconds": 5.25,
            "broadcasting_seconds": 0.25,
            "total_seconds": 6.0,
            "window_samples": 512,
            "memory_samples": 500,
            "train_loss": 0.52,
            "regime": 2,
            "accuracy_before": 0.387,
            "accuracy_after": 0.881,
            "test_accuracy_before": {0: 0.93, 1: 0.917, 2: 0.352},
            "test_accuracy_after": {0: 0.9, 1: 0.88, 2: 0.874},
        },
    ]


def _drift_events() -> list[dict[str, Any]]:
    return [
        {
            "batch_id": 23,
            "sample_index": 1490,
            "detector": "adwin",
            "value": 0.4375,
            "reference": 0.96,
            "regime": 1,
            "version": 0,
        },
        {
            "batch_id": 44,
            "sample_index": 2830,
            "detector": "adwin",
            "value": 0.3125,
            "reference": 0.9,
            "regime": 2,
            "version": 1,
        },
    ]


def _run_section(run_dir: Path) -> dict[str, Any]:
    return {
        "name": "mnist",
        "run_dir": str(run_dir),
        "status": "completed",
        "started": "2025-01-01T10:00:00",
        "finished": "2025-01-01T10:01:00",
        "wall_seconds": 60.5,
        "ray_address": "127.0.0.1:6379",
        "dashboard_url": "http://127.0.0.1:8265",
        "harness": "mnist",
        "seed": 7,
        "error": None,
    }


def make_summary(run_dir: Path, with_updates: bool = True) -> dict[str, Any]:
    """A complete summary of a 3-regime run: 60 batches, regime changes at 20 and 40."""
    updates = _updates() if with_updates else []
    rows = [{"label": "initial", "version": 0, "batch_id": 0, "accuracy": [0.97, 0.448, 0.3]}]
    if with_updates:
        rows += [
            {"label": "update-1", "version": 1, "batch_id": 26, "accuracy": [0.93, 0.917, 0.31]},
            {"label": "update-2", "version": 2, "batch_id": 47, "accuracy": [0.9, 0.88, 0.874]},
        ]
    return {
        "run": _run_section(run_dir),
        "stream": {
            "batches": 60,
            "samples": 3840,
            "regimes_seen": [0, 1, 2],
            "regime_names": {0: "clean", 1: "rotated-90", 2: "inverted"},
            "regime_starts": [
                {"regime": 0, "batch_id": 0},
                {"regime": 1, "batch_id": 20},
                {"regime": 2, "batch_id": 40},
            ],
        },
        "monitoring": {
            "num_monitors": 2,
            "samples_per_second": 1234.5,
            "batches_per_second": 19.3,
            "eval_seconds_total": 3.1,
            "monitor_versions": {"monitor-0": 2, "monitor-1": 2},
        },
        "detection": {
            "detector": "adwin",
            "granularity": "sample",
            "metric": "accuracy",
            "higher_is_better": True,
        },
        "drift_events": _drift_events()[: 2 if with_updates else 1],
        "updates": updates,
        "accuracy_matrix": {"regimes": [0, 1, 2], "rows": rows},
        "cl_metrics": {
            "final_average_accuracy": 0.8847 if with_updates else 0.5727,
            "forgetting": 0.055 if with_updates else None,
            "backward_transfer": -0.055 if with_updates else None,
        },
    }


def make_metrics(n_intervals: int = 12, interval: int = 5) -> list[dict[str, Any]]:
    rows = []
    for i in range(n_intervals):
        first = i * interval
        regime = first // 20
        acc = [0.95, 0.55, 0.45][regime] if first % 20 < 5 and regime else 0.92
        rows.append(
            {"interval": i, "first_batch": first, "last_batch": first + interval - 1, "n_samples": 64 * interval,
             "value": acc, "regime": regime, "version": min(regime, 2), "accuracy": acc, "loss": 1.0 - acc}
        )  # fmt: skip
    return rows


def interrupted_summary(run_dir: Path) -> dict[str, Any]:
    """What an interrupted run may leave: no updates, no matrix rows, missing sections and nulls."""
    return {
        "run": {
            "name": "mnist",
            "run_dir": str(run_dir),
            "status": "interrupted",
            "started": "2025-01-01T10:00:00",
            "finished": None,
            "wall_seconds": None,
            "error": "KeyboardInterrupt",
        },  # fmt: skip
        "stream": {
            "batches": 7,
            "samples": 448,
            "regimes_seen": [0],
            "regime_starts": [{"regime": 0, "batch_id": 0}],
        },
        "drift_events": [],
        "updates": [],
        "accuracy_matrix": {"regimes": [0, 1], "rows": []},
    }


# --- summary.json -------------------------------------------------------------------------------------


def test_summary_round_trip_restores_int_keys(tmp_path: Path) -> None:
    summary = make_summary(tmp_path)
    path = write_summary(tmp_path, summary)
    assert path == tmp_path / "summary.json"
    raw = json.loads(path.read_text())
    assert raw["stream"]["regime_names"] == {"0": "clean", "1": "rotated-90", "2": "inverted"}
    loaded = load_summary(tmp_path)
    assert loaded == summary
    assert loaded["stream"]["regime_names"][1] == "rotated-90"
    assert loaded["updates"][0]["test_accuracy_after"][1] == pytest.approx(0.917)
    # non-integer keys stay strings
    assert loaded["monitoring"]["monitor_versions"] == {"monitor-0": 2, "monitor-1": 2}
    assert not list(tmp_path.glob(".summary.json.*")), "temporary file left behind"


def test_write_summary_makes_values_json_safe_and_replaces_atomically(tmp_path: Path) -> None:
    import numpy as np

    write_summary(tmp_path, {"cl_metrics": {"forgetting": 1.0}})
    write_summary(
        tmp_path,
        {"cl_metrics": {"forgetting": float("nan"), "final_average_accuracy": np.float32(0.5)},
         "run": {"run_dir": tmp_path, "seed": np.int64(3)}, "stream": {"regimes_seen": (0, 1)}},
    )  # fmt: skip
    text = (tmp_path / "summary.json").read_text()
    assert "NaN" not in text
    loaded = load_summary(tmp_path)
    assert loaded["cl_metrics"] == {"forgetting": None, "final_average_accuracy": 0.5}
    assert loaded["run"] == {"run_dir": str(tmp_path), "seed": 3}
    assert loaded["stream"]["regimes_seen"] == [0, 1]


def test_load_summary_errors_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        load_summary(tmp_path / "nope")
    with pytest.raises(UserError, match="no summary.json"):
        load_summary(tmp_path)
    (tmp_path / "summary.json").write_text('{"run": {"name": ')
    with pytest.raises(UserError, match="cannot be read") as info:
        load_summary(tmp_path)
    assert "\n" not in str(info.value)


# --- metrics.csv --------------------------------------------------------------------------------------


def test_metrics_writer_flushes_each_row(tmp_path: Path) -> None:
    columns = [*METRICS_COLUMNS, "accuracy", "loss"]
    rows = make_metrics(3)
    w = MetricsWriter(tmp_path, columns=columns)
    w.write(rows[0])
    # read while the writer is still open: the row must already be on disk
    assert read_metrics(tmp_path) == [rows[0]]
    w.write(rows[1])
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines[0] == ",".join(columns)
    assert len(lines) == 3
    w.close()
    w.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        w.write(rows[2])
    assert read_metrics(tmp_path) == rows[:2]


def test_metrics_writer_header_from_first_row_and_new_columns(tmp_path: Path) -> None:
    with MetricsWriter(tmp_path) as w:
        w.write({"interval": 0, "value": 0.5})
        w.write({"interval": 1, "value": 0.25, "loss": 1.5})  # a new key extends the header
        w.write({"interval": 2, "value": None})  # missing / None -> empty cell
    assert w.closed
    assert (tmp_path / "metrics.csv").read_text().splitlines()[0] == "interval,value,loss"
    assert read_metrics(tmp_path) == [
        {"interval": 0, "value": 0.5, "loss": None},
        {"interval": 1, "value": 0.25, "loss": 1.5},
        {"interval": 2, "value": None, "loss": None},
    ]


def test_metrics_writer_append_and_pickle_resume(tmp_path: Path) -> None:
    rows = make_metrics(4)
    w = MetricsWriter(tmp_path, columns=METRICS_COLUMNS)
    w.write(rows[0])
    w.write(rows[1])
    state = w.state_dict()
    assert state["rows_written"] == 2
    clone = pickle.loads(pickle.dumps(w))  # reopens the same file for appending
    w.close()
    clone.write(rows[2])
    clone.close()
    resumed = MetricsWriter(tmp_path, append=True)
    resumed.load_state_dict({"columns": [], "rows_written": 3})
    assert resumed.rows_written == 3
    resumed.write(rows[3])
    resumed.close()
    assert read_metrics(tmp_path) == rows
    assert read_metrics(tmp_path / "missing") == []


# --- plots --------------------------------------------------------------------------------------------


def _assert_png(path: Path) -> None:
    assert path.is_file(), f"{path.name} not written"
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 2000


def test_make_plots_full_run(tmp_path: Path) -> None:
    paths = make_plots(tmp_path, make_summary(tmp_path), make_metrics())
    names = sorted(p.name for p in paths)
    assert names == ["accuracy_matrix.png", "monitored_metric.png", "update_timing.png"]
    for p in paths:
        assert p.parent == tmp_path / "plots"
        _assert_png(p)


def test_make_plots_without_updates_skips_timing(tmp_path: Path) -> None:
    paths = make_plots(tmp_path, make_summary(tmp_path, with_updates=False), make_metrics())
    assert sorted(p.name for p in paths) == ["accuracy_matrix.png", "monitored_metric.png"]
    assert not (tmp_path / "plots" / "update_timing.png").exists()
    for p in paths:
        _assert_png(p)


def test_make_plots_partial_and_empty_inputs_do_not_crash(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    summary = interrupted_summary(tmp_path)
    paths = make_plots(tmp_path, summary, make_metrics(1))
    assert [p.name for p in paths] == ["monitored_metric.png"]
    _assert_png(paths[0])
    assert make_plots(tmp_path / "empty", {}, []) == []
    # garbage values are skipped, not fatal
    weird = copy.deepcopy(make_summary(tmp_path))
    weird["updates"][0]["training_seconds"] = None
    weird["accuracy_matrix"]["rows"][1]["accuracy"] = [None, "n/a"]
    weird["drift_events"].append({"batch_id": None})
    paths = make_plots(tmp_path / "weird", weird, [{"value": "x"}, *make_metrics()])
    assert len(paths) == 3
    assert "skipped" not in caplog.text


def test_make_plots_reads_files_by_default(tmp_path: Path) -> None:
    write_summary(tmp_path, make_summary(tmp_path))
    with MetricsWriter(tmp_path) as w:
        for row in make_metrics():
            w.write(row)
    assert len(make_plots(tmp_path)) == 3


# --- text summary -------------------------------------------------------------------------------------


def test_format_summary_contains_key_numbers(tmp_path: Path) -> None:
    text = format_summary(make_summary(tmp_path))
    for needle in [
        "COMPLETED",
        "60 batches",
        "3,840 samples",
        "1,234 samples/s",  # throughput (rounded)
        "drift events: 2",
        "adwin",
        "rotated-90",
        "updates: 2",
        "v1",
        "replay",
        "4.50",  # training seconds
        "0.512 -> 0.903",  # window accuracy before -> after
        "0.448 -> 0.917",  # test accuracy of the current regime (1) before -> after
        "0.352 -> 0.874",
        "update-2",
        "0.885",  # final average accuracy
        "0.055",  # forgetting
        "-0.055",  # backward transfer
        str(tmp_path),
    ]:
        assert needle in text, f"{needle!r} missing from:\n{text}"
    assert max(len(line) for line in text.splitlines()) <= 120


def test_format_summary_partial(tmp_path: Path) -> None:
    text = format_summary(interrupted_summary(tmp_path))
    assert "INTERRUPTED" in text
    assert "KeyboardInterrupt" in text
    assert "updates: 0" in text
    assert "drift events: 0" in text
    assert format_summary({}).startswith("raydrift run")


def test_report_regenerates_plots_and_lists_files(tmp_path: Path) -> None:
    run_dir = tmp_path / "mnist-20250101-100000"
    summary = make_summary(tmp_path / "elsewhere")  # run dir moved since the run
    write_summary(run_dir, summary)
    with MetricsWriter(run_dir, columns=[*METRICS_COLUMNS, "accuracy", "loss"]) as w:
        for row in make_metrics():
            w.write(row)
    text = report(run_dir)
    for name in ("monitored_metric.png", "accuracy_matrix.png", "update_timing.png"):
        _assert_png(run_dir / "plots" / name)
        assert name in text
    assert str(run_dir) in text
    assert "metrics.csv" in text


def test_report_missing_or_corrupt_dir_raises_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError):
        report(tmp_path / "does-not-exist")
    (tmp_path / "summary.json").write_text("not json")
    with pytest.raises(UserError):
        report(tmp_path)


# --- CSV exports ------------------------------------------------------------------------------------


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def test_export_csv_full_run(tmp_path: Path) -> None:
    summary = make_summary(tmp_path)
    summary["updates"][0]["recovery_batches"] = 9  # a field outside UPDATES_COLUMNS
    summary["updates"][1]["recovery_batches"] = None
    summary["profile"] = {
        "inference": {"seconds": 3.1, "count": 60},
        "detection": {"seconds": 0.02, "count": 60},
        "broadcast": 0.375,
    }
    written = export_csv(tmp_path, summary)
    assert sorted(p.name for p in written) == [
        "accuracy_matrix.csv",
        "cl_metrics.csv",
        "drift_events.csv",
        "profile.csv",
        "updates.csv",
    ]

    header, rows = read_csv(tmp_path / "updates.csv")
    assert header[: len(UPDATES_COLUMNS)] == list(UPDATES_COLUMNS)
    assert "recovery_batches" in header
    assert [r["version"] for r in rows] == ["1", "2"]
    assert rows[0]["live_batch_id"] == "26" and rows[1]["live_batch_id"] == ""  # missing -> empty
    assert rows[0]["recovery_batches"] == "9" and rows[1]["recovery_batches"] == ""
    assert float(rows[0]["training_seconds"]) == 4.5 and rows[1]["strategy"] == "replay"
    # the per-regime dicts: one column per regime, named after it
    assert float(rows[0]["test_accuracy_after.rotated-90"]) == 0.917
    assert float(rows[1]["test_accuracy_before.inverted"]) == 0.352
    assert not any(h in ("test_accuracy_before", "test_accuracy_after") for h in header)

    header, rows = read_csv(tmp_path / "drift_events.csv")
    assert header == ["batch_id", "sample_index", "detector", "value", "reference", "regime", "version"]
    assert [(r["batch_id"], r["detector"], float(r["value"])) for r in rows] == [
        ("23", "adwin", 0.4375),
        ("44", "adwin", 0.3125),
    ]

    header, rows = read_csv(tmp_path / "accuracy_matrix.csv")
    assert header == ["label", "version", "batch_id", "clean", "rotated-90", "inverted"]
    assert [r["label"] for r in rows] == ["initial", "update-1", "update-2"]
    matrix = [[float(r[c]) for c in header[3:]] for r in rows]
    assert matrix == [row["accuracy"] for row in summary["accuracy_matrix"]["rows"]]

    header, rows = read_csv(tmp_path / "cl_metrics.csv")
    assert header == ["final_average_accuracy", "forgetting", "backward_transfer"]
    assert [float(rows[0][h]) for h in header] == [0.8847, 0.055, -0.055]

    header, rows = read_csv(tmp_path / "profile.csv")
    assert header == ["stage", "seconds", "count", "value"]
    assert rows == [
        {"stage": "inference", "seconds": "3.1", "count": "60", "value": ""},
        {"stage": "detection", "seconds": "0.02", "count": "60", "value": ""},
        {"stage": "broadcast", "seconds": "", "count": "", "value": "0.375"},
    ]


def test_export_csv_interrupted_run_writes_headers(tmp_path: Path) -> None:
    summary = interrupted_summary(tmp_path)
    summary["accuracy_matrix"]["rows"] = [
        {"label": "initial", "version": 0, "batch_id": -1, "accuracy": [0.9]}
    ]
    export_csv(tmp_path, summary)
    header, rows = read_csv(tmp_path / "updates.csv")
    assert header == list(UPDATES_COLUMNS) and rows == []
    header, rows = read_csv(tmp_path / "drift_events.csv")
    assert header[0] == "batch_id" and rows == []
    # no regime names: regime-<id>; a short accuracy list leaves the later regimes empty
    header, rows = read_csv(tmp_path / "accuracy_matrix.csv")
    assert header == ["label", "version", "batch_id", "regime-0", "regime-1"]
    assert rows == [{"label": "initial", "version": "0", "batch_id": "-1", "regime-0": "0.9", "regime-1": ""}]
    assert read_csv(tmp_path / "cl_metrics.csv")[1] == []
    assert not (tmp_path / "profile.csv").exists()
    # a summary with nothing in it still gives the files, never an exception
    empty = tmp_path / "empty"
    assert len(export_csv(empty, {})) == 4


def test_export_csv_numpy_values_and_duplicate_regime_names(tmp_path: Path) -> None:
    import numpy as np

    summary = make_summary(tmp_path)
    summary["stream"]["regime_names"] = {0: "same", 1: "same", 2: "other"}
    summary["updates"][0]["train_loss"] = np.float32(0.25)
    summary["updates"][0]["window_samples"] = np.int64(512)
    summary["updates"][0]["accuracy_after"] = float("nan")
    export_csv(tmp_path, summary)
    header, rows = read_csv(tmp_path / "accuracy_matrix.csv")
    assert header[3:] == ["same (0)", "same (1)", "other"]
    _, rows = read_csv(tmp_path / "updates.csv")
    assert rows[0]["train_loss"] == "0.25" and rows[0]["window_samples"] == "512"
    assert rows[0]["accuracy_after"] == ""  # NaN: no value, like null in summary.json


def test_report_command_regenerates_csv_exports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from raydrift.cli import main

    run_dir = tmp_path / "mnist-20250101-100000"
    write_summary(run_dir, make_summary(tmp_path / "elsewhere"))  # JSON: regime keys become text
    with MetricsWriter(run_dir, columns=[*METRICS_COLUMNS, "accuracy", "loss"]) as w:
        for row in make_metrics():
            w.write(row)
    (run_dir / "updates.csv").write_text("stale\n")
    assert main(["report", str(run_dir)]) == 0
    out = capsys.readouterr().out
    for name in ("updates.csv", "drift_events.csv", "accuracy_matrix.csv", "cl_metrics.csv"):
        assert name in out
    _, rows = read_csv(run_dir / "updates.csv")
    assert [r["drift_batch_id"] for r in rows] == ["23", "44"]
    assert float(rows[0]["test_accuracy_before.clean"]) == 0.97  # int keys restored by load_summary
    _, rows = read_csv(run_dir / "accuracy_matrix.csv")
    assert len(rows) == 3
    assert len(read_metrics(run_dir)) == 12  # metrics.csv is left as the run wrote it
