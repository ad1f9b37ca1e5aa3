"""benchmarks/detectors.py --throughput: the engine against the bare River detector in one process."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import detectors  # noqa: E402


def test_throughput_row_compares_like_with_like() -> None:
    row = detectors.throughput_row("adwin", "adwin", {}, n=20_000, reps=1)
    assert row.samples == 20_000 - 20_000 % detectors.BS
    assert row.engine_events == row.bare_alarms >= 1  # the same alarms: direction any, warm-up 0
    assert row.ratio > 0 and row.bare_samples_per_second > 0 and row.engine_samples_per_second > 0


def test_recorded_results_are_not_overwritten_without_the_flag(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "throughput.json"
    out.write_text("{}")
    args = ["--throughput", "--throughput-samples", "2000", "--reps", "1", "--mnist-batches", "0"]
    assert detectors.main([*args, "--json", str(out)]) == 2
    assert out.read_text() == "{}" and "--overwrite" in capsys.readouterr().err
    assert detectors.main([*args, "--only", "adwin", "--json", str(out), "--overwrite"]) == 0
    assert '"throughput"' in out.read_text()


def test_bocpd_run_length_row_counts_the_runs() -> None:
    """The ``--bocpd-ert`` measurement: alarms on a stationary stream, the run lengths' mean."""
    row = detectors.bocpd_run_length("bernoulli", 200.0, 3000)
    assert row.alarms >= 1 and row.values == 3000
    assert row.mean_run_length == round(3000 / row.alarms, 1)  # the runs and the unfinished one cover the stream
    assert row.ratio == pytest.approx(row.mean_run_length / 200.0, abs=1e-3)
    assert row.within_20_percent == (abs(row.ratio - 1.0) <= 0.2)


def test_bocpd_ert_spec_mistake_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert detectors.main(["--bocpd-ert", "poisson:1000:10"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "MODEL:ERT:VALUES" in err


def test_engine_ab_runs_the_two_engines_on_the_same_stream(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """benchmarks/engine_ab.py: HEAD's engine against the checkout's gives one row per detector, and
    stops (1) when the two engines' events differ."""
    import engine_ab

    assert engine_ab.main(["--against", "HEAD", "--reps", "1", "--samples", "3000"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "us/batch" not in line]
    assert len(rows) == len(detectors.THROUGHPUT_DETECTORS)
    old = engine_ab.load_engine("HEAD")
    monkeypatch.setattr(old.DetectionEngine, "_emit", lambda self, event, out: None)  # reports no event
    monkeypatch.setattr(engine_ab, "load_engine", lambda ref: old)
    assert engine_ab.main(["--against", "HEAD", "--reps", "1", "--samples", "3000"]) == 1
