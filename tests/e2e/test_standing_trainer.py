"""StandingTrainer on real Ray Train workers: a job's result equals the per-fit Updater's, the same
worker processes serve job after job, and a SIGKILLed worker (during a job, while idle, during the
result hand-off) still gives each job's result exactly once; when Ray Train gives up, run() raises
and the next run() starts a fresh trainer."""

from __future__ import annotations

import os
import signal
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import ray
import torch

from raydrift.config import RaydriftConfig
from raydrift.harness import build_harness
from raydrift.learning import UpdateData
from raydrift.trainer import BoardStatus, StandingTrainer, make_updater
from raydrift.update import UpdateOutcome, Updater
from raydrift.weights import to_numpy

OPTIONS = {"num_regimes": 2, "regime_batches": 3, "hidden": 16}
SLOW_SPEC = "slow_harness:SlowHarness"

# A synthetic harness whose loss sleeps: a job lasts long enough to be killed during it.
SLOW = textwrap.dedent(
    """
    import time

    from pydantic import ConfigDict

    from harnesses.synthetic import GaussianDriftHarness, SyntheticOptions


    class SlowOptions(SyntheticOptions):
        model_config = ConfigDict(extra="forbid")
        step_sleep: float = 0.0


    class SlowHarness(GaussianDriftHarness):
        Options = SlowOptions

        def loss(self, outputs, y):
            time.sleep(self.options.step_sleep)
            return super().loss(outputs, y)
    """
)

# A job board that SIGKILLs rank 0 in the middle of its result hand-off, once per arm():
# "after_accept" registers the result first (the worker dies before the acknowledgement),
# "before_accept" drops it (the job must re-run).
FAULTY_BOARD = textwrap.dedent(
    """
    import os
    import signal

    from raydrift.trainer import JobBoard


    class FaultyBoard(JobBoard):
        def __init__(self):
            super().__init__()
            self.mode = None

        def arm(self, mode):
            self.mode = mode

        def complete(self, job_id, output, pid):
            mode, self.mode = self.mode, None
            if mode == "before_accept":
                os.kill(pid, signal.SIGKILL)
                return False
            accepted = super().complete(job_id, output, pid)
            if mode == "after_accept":
                os.kill(pid, signal.SIGKILL)
            return accepted
    """
)


@pytest.fixture(scope="module")
def code_dir(ray_cluster: Path) -> Iterator[Path]:
    (ray_cluster / "slow_harness.py").write_text(SLOW)
    (ray_cluster / "faulty_board.py").write_text(FAULTY_BOARD)
    sys.path.insert(0, str(ray_cluster))  # the config validates the harness options in this process
    try:
        yield ray_cluster
    finally:
        sys.path.remove(str(ray_cluster))


def config(
    tmp_path: Path, harness: str, options: dict[str, Any], strategy: str = "ewc_online", **train: Any
) -> RaydriftConfig:
    return RaydriftConfig.model_validate(
        {
            "name": "standing",
            "seed": 0,
            "device": "cpu",
            "model": {"harness": harness, "pretrain_epochs": 0},
            "data": options,
            "continual_learning": {"strategy": strategy},
            "train": {"num_workers": 1, "cpus_per_worker": 1, "epochs": 1, "batch_size": 32, **train},
            "logging": {"backend": "none", "plots": False, "save_weights": False, "runs_dir": str(tmp_path)},
        }
    )


def refs() -> tuple[Any, Any, dict[str, np.ndarray]]:
    harness = build_harness("synthetic", OPTIONS, seed=0, batch_size=64)
    batches = list(harness.stream())
    data = UpdateData(
        torch.cat([b.x for b in batches[3:]]),
        torch.cat([b.y for b in batches[3:]]),
        torch.cat([b.x for b in batches[:2]]),
        torch.cat([b.y for b in batches[:2]]),
    )
    initial = to_numpy(harness.build_model().state_dict())
    return ray.put(initial), ray.put(data), initial


def assert_same_weights(a: dict[str, np.ndarray], b: dict[str, np.ndarray], atol: float = 1e-6) -> None:
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=atol, err_msg=k)


def wait_for(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def status(trainer: StandingTrainer) -> BoardStatus:
    s = trainer.status()
    assert s is not None
    return s


# --- one worker: equality with the per-fit Updater, worker reuse, overhead ----------------------


@pytest.fixture(scope="module")
def one_worker(code_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    tmp = tmp_path_factory.mktemp("one")
    cfg = config(tmp, "synthetic", OPTIONS)
    spec = {"spec": "synthetic", "options": OPTIONS}
    trainer = make_updater(cfg, spec, tmp / "train")
    assert isinstance(trainer, StandingTrainer)
    trainer.start()
    weights_ref, data_ref, initial = refs()
    outcomes: list[UpdateOutcome] = []
    pids: list[dict[int, int]] = []
    state_ref = None
    for version in (1, 2, 3):  # each job trains from the previous one's weights and EWC state
        start_ref = weights_ref if not outcomes else ray.put(outcomes[-1].weights)
        outcomes.append(trainer.run(start_ref, data_ref, version, strategy_state_ref=state_ref))
        state_ref = ray.put(outcomes[-1].strategy_state)
        pids.append(status(trainer).worker_pids)
    try:
        yield {"cfg": cfg, "spec": spec, "tmp": tmp, "trainer": trainer, "outcomes": outcomes, "pids": pids,
               "refs": (weights_ref, data_ref, initial)}
    finally:
        trainer.shutdown()


def test_a_job_equals_the_per_fit_updater(one_worker: dict[str, Any]) -> None:
    cfg, spec, tmp = one_worker["cfg"], one_worker["spec"], one_worker["tmp"]
    weights_ref, data_ref, initial = one_worker["refs"]
    outcomes: list[UpdateOutcome] = one_worker["outcomes"]
    first = Updater(cfg, spec, tmp / "per-fit").run(weights_ref, data_ref, version=1)  # 1 fresh worker
    assert any(not np.array_equal(first.weights[k], initial[k]) for k in initial)  # it trained
    assert_same_weights(outcomes[0].weights, first.weights)
    assert outcomes[0].metrics["train_loss"] == pytest.approx(first.metrics["train_loss"], rel=1e-5)
    # the 3rd job (reused model object, EWC state from job 2) equals a fresh in-process update
    local = config(tmp, "synthetic", OPTIONS, num_workers=0)
    third = Updater(local, spec, tmp / "local").run(
        ray.put(outcomes[1].weights), data_ref, version=3, strategy_state_ref=ray.put(outcomes[1].strategy_state)
    )
    assert_same_weights(outcomes[2].weights, third.weights)
    assert outcomes[2].strategy_state is not None and third.strategy_state is not None
    assert outcomes[2].strategy_state["updates"] == third.strategy_state["updates"] > 1
    for k, v in third.strategy_state["fisher"].items():
        torch.testing.assert_close(outcomes[2].strategy_state["fisher"][k], v, rtol=1e-5, atol=1e-7)


def test_three_jobs_reuse_the_workers(one_worker: dict[str, Any]) -> None:
    outcomes: list[UpdateOutcome] = one_worker["outcomes"]
    pids: list[dict[int, int]] = one_worker["pids"]
    trainer: StandingTrainer = one_worker["trainer"]
    assert pids[0] == pids[1] == pids[2] and set(pids[0]) == {0}
    assert pids[0][0] != os.getpid()  # a Ray Train worker, not the driver
    s = status(trainer)
    assert s.hellos == 1 and s.accepted == 3 and s.duplicates == 0 and not s.pending
    assert trainer.runs_started == 1
    assert [o.metrics["version"] for o in outcomes] == [1, 2, 3]
    assert all(o.metrics["job_attempts"] == 1 for o in outcomes)
    for o in outcomes[1:]:  # no start-up: the job's wall time is its training plus a little
        overhead = o.training_seconds - o.metrics["seconds"]
        assert overhead < 1.0, (overhead, o.metrics)


def test_when_train_gives_up_run_raises_and_the_next_run_starts_fresh(one_worker: dict[str, Any]) -> None:
    trainer: StandingTrainer = one_worker["trainer"]  # max_failures: 0
    weights_ref, data_ref, initial = one_worker["refs"]
    os.kill(status(trainer).worker_pids[0], signal.SIGKILL)
    with pytest.raises(RuntimeError, match="update 7"):
        trainer.run(weights_ref, data_ref, version=7)
    outcome = trainer.run(weights_ref, data_ref, version=1)  # a fresh standing run
    assert trainer.runs_started == 2 and outcome.metrics["standing_runs"] == 2
    assert_same_weights(outcome.weights, one_worker["outcomes"][0].weights)
    run, pid = trainer._run, status(trainer).worker_pids[0]
    assert run is not None
    trainer.shutdown()  # the stop job (this also frees its CPU for the 2-worker tests)
    assert trainer.status() is None
    assert run.finished.is_set() and run.error is None  # fit() returned: the workers stopped cleanly
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), 30, "the worker process to exit")


# --- two workers under faults ------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_workers(code_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from faulty_board import FaultyBoard  # type: ignore[import-not-found]

    tmp = tmp_path_factory.mktemp("two")
    options = {**OPTIONS, "step_sleep": 0.2}  # 6 steps: a job trains for over a second
    cfg = config(tmp, SLOW_SPEC, options, "replay", num_workers=2, max_failures=4)
    trainer = StandingTrainer(cfg, {"spec": SLOW_SPEC, "options": options}, tmp / "train", board_cls=FaultyBoard)
    trainer.start()
    weights_ref, data_ref, _ = refs()
    # the reference: the same job on one worker, per-fit
    one = config(tmp, SLOW_SPEC, {**OPTIONS, "step_sleep": 0.0}, "replay", num_workers=0)
    reference = Updater(one, {"spec": SLOW_SPEC, "options": {**OPTIONS, "step_sleep": 0.0}}, tmp / "ref").run(
        weights_ref, data_ref, version=1
    )
    try:
        yield {"trainer": trainer, "refs": (weights_ref, data_ref), "reference": reference}
    finally:
        trainer.shutdown()


def run_job(two: dict[str, Any]) -> UpdateOutcome:
    weights_ref, data_ref = two["refs"]
    outcome: UpdateOutcome = two["trainer"].run(weights_ref, data_ref, version=1)
    assert_same_weights(outcome.weights, two["reference"].weights, atol=1e-5)  # 2 workers == 1 worker
    assert outcome.metrics["world_size"] == 2
    return outcome


def restarted(trainer: StandingTrainer, hellos: int) -> Callable[[], bool]:
    return lambda: status(trainer).hellos >= hellos + 2


def test_two_workers_equal_one(two_workers: dict[str, Any]) -> None:
    outcome = run_job(two_workers)
    assert outcome.metrics["job_attempts"] == 1


def test_a_worker_killed_while_idle(two_workers: dict[str, Any]) -> None:
    trainer: StandingTrainer = two_workers["trainer"]
    before = status(trainer)
    os.kill(before.worker_pids[0], signal.SIGKILL)
    wait_for(restarted(trainer, before.hellos), 120, "the worker group's restart")
    after = status(trainer)
    assert set(after.worker_pids.values()).isdisjoint(before.worker_pids.values())  # a new group
    outcome = run_job(two_workers)
    # on a loaded machine the new group can be restarted again mid-job (a missed health check): the job
    # then runs again, and its result is still accepted exactly once
    assert outcome.metrics["job_attempts"] >= 1 and outcome.weights
    assert status(trainer).accepted == before.accepted + 1


def test_a_worker_killed_during_a_job(two_workers: dict[str, Any]) -> None:
    trainer: StandingTrainer = two_workers["trainer"]
    before = status(trainer)
    with ThreadPoolExecutor(1) as pool:
        future: Future[UpdateOutcome] = pool.submit(run_job, two_workers)
        wait_for(lambda: bool(status(trainer).running), 30, "the job to start")
        time.sleep(0.3)  # into the training steps (the job takes ~1 s)
        assert status(trainer).running and not future.done()
        os.kill(before.worker_pids[1], signal.SIGKILL)  # rank 1: rank 0 is left in an all-reduce
        outcome = future.result(timeout=180)
    assert outcome.metrics["job_attempts"] == 2  # it re-ran on the restarted group
    after = status(trainer)
    assert after.accepted == before.accepted + 1 and after.duplicates == before.duplicates
    assert after.hellos == before.hellos + 2


@pytest.mark.parametrize(("mode", "attempts"), [("after_accept", 1), ("before_accept", 2)])
def test_rank_0_killed_during_the_hand_off(two_workers: dict[str, Any], mode: str, attempts: int) -> None:
    trainer: StandingTrainer = two_workers["trainer"]
    before = status(trainer)
    run = trainer._run
    assert run is not None
    ray.get(run.board.arm.remote(mode))
    outcome = run_job(two_workers)
    assert outcome.metrics["job_attempts"] == attempts
    wait_for(restarted(trainer, before.hellos), 120, "the worker group's restart")
    after = status(trainer)
    assert after.accepted == before.accepted + 1 and after.duplicates == before.duplicates
    assert not after.pending and not after.running  # a result once: the restarted group did not re-run it
    assert trainer.runs_started == 1
