"""Smoke tests of benchmarks/trainer.py's pieces that need no Ray cluster: the configs of its modes
and the update it times."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import trainer as bench  # noqa: E402


@pytest.mark.parametrize("mode", bench.MODES)
def test_every_mode_has_a_valid_config(tmp_path: Path, mode: str) -> None:
    workers = 0 if mode == "in-process" else int(mode.rsplit("-", 1)[1])
    cfg = bench.config(tmp_path, workers, epochs=5, standing=mode.startswith("standing"))
    assert cfg.train.num_workers == workers and cfg.train.epochs == 5
    assert cfg.continual_learning.strategy == "replay"


def test_the_update_is_8_window_batches_and_500_memory_samples() -> None:
    weights, data = bench.update_inputs()
    assert len(data.window_y) == 8 * 64 and len(data.memory_y) == 500
    assert data.window_x.shape[1:] == data.memory_x.shape[1:]
    assert weights and all(hasattr(v, "shape") for v in weights.values())


def test_an_existing_out_file_is_not_replaced(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "trainer.json"
    out.write_text("{}")
    assert bench.main(["--out", str(out)]) == 2  # refused before the Ray cluster starts
    assert "--overwrite" in capsys.readouterr().err
    assert out.read_text() == "{}"
