"""Exit codes and the visibility of failed updates (docs/reliability.md, "Exit codes")."""

from __future__ import annotations

from typing import Any

import pytest

from raydrift.cli import exit_code
from raydrift.report import format_summary


def _summary(status: str = "completed", signal: str | None = None, rejected: list[dict[str, Any]] | None = None):
    return {
        "run": {"name": "x", "status": status, "signal": signal},
        "stream": {"batches": 3},
        "rejected_updates": rejected or [],
    }


FAILED = {"status": "failed", "reason": "IndexError: tuple index out of range", "drift_batch_id": 7, "version_kept": 0}
REJECTED = {"status": "rejected", "reason": "holdout accuracy 0.1 < current 0.2", "drift_batch_id": 9, "version_kept": 1}


@pytest.mark.parametrize(
    ("summary", "code"),
    [
        (_summary(), 0),
        (_summary(rejected=[REJECTED]), 0),  # a gate rejection is a decision, not a failure
        (_summary(rejected=[REJECTED, FAILED]), 3),
        (_summary("failed"), 1),
        (_summary("interrupted", "SIGINT"), 130),
        (_summary("interrupted", "SIGTERM"), 143),
        (_summary("interrupted"), 130),
    ],
)
def test_exit_code_of_a_summary(summary: dict[str, Any], code: int) -> None:
    assert exit_code(summary) == code


def test_failed_and_rejected_updates_are_in_the_text_summary() -> None:
    text = format_summary(_summary(rejected=[FAILED, REJECTED]))
    title = text.splitlines()[0]
    assert "COMPLETED" in title and "1 update(s) FAILED" in title
    assert "updates not promoted: 2 (1 failed, 1 rejected by the gate)" in text
    assert "IndexError: tuple index out of range" in text and "rejected" in text


def test_an_interrupted_run_names_its_signal() -> None:
    assert "INTERRUPTED by SIGTERM" in format_summary(_summary("interrupted", "SIGTERM")).splitlines()[0]
