"""raydrift/trainer.py without Ray: the job board's order and exactly-once rules, make_updater's
choice and the train.standing option."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from raydrift.config import RaydriftConfig
from raydrift.trainer import Job, JobBoard, JobOutput, StandingTrainer, Stop, make_updater
from raydrift.update import Updater


def job(name: str, version: int = 1) -> Job:
    return Job(name, version, None, None, None, None, 0.0)  # type: ignore[arg-type]  # refs unused here


def output(value: float) -> JobOutput:
    return JobOutput({"w": np.array([value])}, {"train_loss": value}, b"", 0.0, 0.0)


def test_every_rank_takes_the_same_jobs_in_order() -> None:
    async def scenario() -> None:
        board = JobBoard()
        board.submit(job("a"))
        board.submit(job("b"))
        board.submit(job("a"))  # a resubmission of the same id is ignored
        first = [await board.next_job(-1, rank, 0.1) for rank in (0, 1)]
        assert [j.id for j in first if isinstance(j, Job)] == ["a", "a"]
        assert isinstance(first[0], Job)
        # rank 1 is done with "a" before rank 0 has handed it back: it still gets "b", not "a" again
        nxt = await board.next_job(first[0].seq, 1, 0.1)
        assert isinstance(nxt, Job) and nxt.id == "b"
        assert board.complete("a", output(1.0), pid=10)
        nxt0 = await board.next_job(first[0].seq, 0, 0.1)
        assert isinstance(nxt0, Job) and nxt0.id == "b"
        assert board.status().running == {"b": 1}

    asyncio.run(scenario())


def test_a_restarted_group_reruns_the_unfinished_job_and_a_result_is_accepted_once() -> None:
    async def scenario() -> None:
        board = JobBoard()
        board.submit(job("a"))
        await board.next_job(-1, 0, 0.1)  # rank 0 took it, then its group died
        again = await board.next_job(-1, 0, 0.1)  # the restarted group starts from -1
        assert isinstance(again, Job) and again.id == "a"
        assert board.complete("a", output(1.0), pid=11)
        assert not board.complete("a", output(2.0), pid=12)  # a re-run's late result is dropped
        done = await board.wait_result("a", 0.1)
        assert done is not None and done.attempts == 2 and done.pid == 11
        assert done.output.metrics["train_loss"] == 1.0
        s = board.status()
        assert (s.accepted, s.duplicates, s.pending) == (1, 1, [])
        assert await board.next_job(-1, 0, 0.05) is None  # nothing left: a timeout, not "a" again
        board.forget("a")
        assert await board.wait_result("a", 0.05) is None

    asyncio.run(scenario())


def test_waiters_wake_on_a_submit_a_result_and_a_stop() -> None:
    async def scenario() -> None:
        board = JobBoard()
        waiting = asyncio.ensure_future(board.next_job(-1, 0, 5.0))
        result = asyncio.ensure_future(board.wait_result("a", 5.0))
        await asyncio.sleep(0.01)
        board.submit(job("a"))
        got = await asyncio.wait_for(waiting, 1.0)
        assert isinstance(got, Job)
        board.complete("a", output(0.5), pid=1)
        assert (await asyncio.wait_for(result, 1.0)) is not None
        stopping = asyncio.ensure_future(board.next_job(got.seq, 0, 5.0))
        await asyncio.sleep(0.01)
        board.stop()
        assert isinstance(await asyncio.wait_for(stopping, 1.0), Stop)
        assert board.status().stopped

    asyncio.run(scenario())


def config(tmp_path: Path, **train: Any) -> RaydriftConfig:
    return RaydriftConfig.model_validate(
        {
            "name": "t",
            "model": {"harness": "synthetic"},
            "train": train,
            "logging": {"backend": "none", "runs_dir": str(tmp_path)},
        }
    )


@pytest.mark.parametrize(
    ("train", "kind"),
    [({}, StandingTrainer), ({"num_workers": 2}, StandingTrainer), ({"num_workers": 0}, Updater),
     ({"num_workers": 1, "standing": False}, Updater)],
)
def test_make_updater_follows_train_standing(tmp_path: Path, train: dict[str, Any], kind: type) -> None:
    cfg = config(tmp_path, **train)
    assert cfg.train.standing is ("standing" not in train)
    updater = make_updater(cfg, {"spec": "synthetic", "options": {}}, tmp_path / "train")
    assert type(updater) is kind
    updater.shutdown()  # nothing started: a no-op on both kinds


def test_standing_must_be_a_bool(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="standing"):
        config(tmp_path, standing="sometimes")
