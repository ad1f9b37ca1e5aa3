"""A synthetic harness that announces a phase of the run and holds it, for the stop tests.

``RD_STOP_PHASE`` names the phase to hold and ``RD_STOP_MARKER`` the file written on entering it; the
test sends its signal once the file exists. The harness holds the phase by sleeping, so the signal
arrives while raydrift is inside it. Phases: ``pretrain`` (the harness's pre-training data is asked
for), ``monitoring`` (the stream reader serves batch 8 and goes on: the stream is paced),``update`` (a training step of an update, in
the driver or in a Ray Train worker), ``gate`` (the promotion gate evaluates the candidate).
"""

from __future__ import annotations

import inspect
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from harnesses.synthetic import GaussianDriftHarness
from raydrift.harness import Batch

HOLD_SECONDS = 300.0


def _announce(phase: str) -> bool:
    if os.environ.get("RD_STOP_PHASE") != phase:
        return False
    Path(os.environ["RD_STOP_MARKER"]).write_text(f"{phase} {os.getpid()}\n")
    return True


def _hold(phase: str) -> None:
    if _announce(phase):
        time.sleep(HOLD_SECONDS)


def _in_update() -> bool:
    if threading.current_thread().name == "raydrift-update":
        return not _in_gate()
    try:
        import ray.train

        ray.train.get_context().get_world_rank()
        return True
    except Exception:  # noqa: BLE001 - not a Train worker
        return False


def _in_gate() -> bool:
    """Called from the promotion gate (not from the update's own training and evaluation)."""
    return any(frame.function in GATE_FUNCTIONS for frame in inspect.stack()[2:])


#: where raydrift's promotion gate evaluates the candidate model
GATE_FUNCTIONS = ("_gate", "promotion_gate")


class StopHarness(GaussianDriftHarness):
    def pretrain_data(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        _hold("pretrain")
        return super().pretrain_data()

    def stream(self) -> Iterator[Batch]:
        for i, batch in enumerate(super().stream()):
            if i == 8:  # a paced stream keeps flowing: the signal comes while batches are monitored
                _announce("monitoring")
            yield batch

    def loss(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if _in_update():
            _hold("update")
        return super().loss(outputs, y)

    def metrics(self, outputs: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
        if threading.current_thread().name == "raydrift-update" and _in_gate():
            _hold("gate")
        return super().metrics(outputs, y)
