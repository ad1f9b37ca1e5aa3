"""benchmarks/during_update.py: the during-update rate from update records, and the overwrite guard."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import during_update  # noqa: E402


def test_during_rate_is_samples_over_training_and_gating_seconds() -> None:
    summary = {
        "updates": [
            {"samples_during_update": 640, "training_seconds": 1.5, "gating_seconds": 0.5},
            {"samples_during_update": 1280, "training_seconds": 3.0, "gating_seconds": 1.0},
        ]
    }
    out = during_update.during_rate(summary)
    assert out["updates"] == 2
    assert out["samples_during_updates"] == 1920
    assert out["samples_per_second"] == pytest.approx(1920 / 6.0, rel=1e-3)
    assert out["update_seconds"] == [2.0, 4.0]
    assert not out["first_update_left_out"]


def test_a_standing_trainers_first_update_is_left_out() -> None:
    first = {"samples_during_update": 9000, "training_seconds": 30.0, "gating_seconds": 0.5, "train_queue_seconds": 28.0}
    later = {"samples_during_update": 640, "training_seconds": 1.5, "gating_seconds": 0.5, "train_queue_seconds": 0.01}
    out = during_update.during_rate({"updates": [first, later]})
    assert out["first_update_left_out"]
    assert out["samples_during_updates"] == 640
    assert out["samples_per_second"] == pytest.approx(320.0)


def test_no_updates_gives_no_rate() -> None:
    assert during_update.during_rate({"updates": []})["samples_per_second"] is None


def test_an_existing_out_file_is_kept_without_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.json"
    out.write_text("recorded\n")
    assert during_update.main(["--out", str(out)]) == 2
    assert out.read_text() == "recorded\n"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--overwrite" in err[0]
