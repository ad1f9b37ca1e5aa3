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
