"""Running the real Coordinator quietly from end-to-end tests (imported by the test modules here)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from raydrift.callbacks import Callback
from raydrift.config import build_config
from raydrift.coordinator import Coordinator


def run_pipeline(tmp_path: Path, overrides: Sequence[str], callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """One run of ``overrides`` (config overrides, no file) with its outputs under ``tmp_path``: runs
    in ``tmp_path/runs``, the run directory ``tmp_path/run-<n>`` (a new one per call); the summary."""
    cfg = build_config(None, [*overrides, f"logging.runs_dir={tmp_path / 'runs'}"])
    run_dir = tmp_path / f"run-{len(list(tmp_path.glob('run-*')))}"
    run_dir.mkdir()
    return Coordinator(cfg, run_dir=run_dir, console=lambda _: None, callbacks=callbacks).run().to_dict()
