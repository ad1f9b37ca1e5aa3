"""Updates on standing Ray Train workers: one ``TorchTrainer`` run per raydrift run serves every update.

:class:`raydrift.update.Updater` starts a fresh ``TorchTrainer.fit()`` per update, and a fresh worker
group costs seconds (placement group, worker processes, imports, process group) before its first
gradient step. :class:`StandingTrainer` pays that once: :meth:`StandingTrainer.start` runs ``fit()``
in a driver daemon thread, and its ``train_loop_per_worker`` (:func:`serve_jobs`) sets up each worker
once (imports, harness, model on its device, torch threads, the process group Ray Train made), then
serves update *jobs* from a :class:`JobBoard` actor until a stop job. Each job runs the same per-update
training as :func:`raydrift.learning.loop.train_func` (:func:`~raydrift.learning.loop.train_update`:
the strategy's steps, gradients all-reduced over the workers), and rank 0 hands the new weights,
metrics and strategy state back by object ref.

Exactly once
------------
Every job has an id and a sequence number. A worker asks the board for the oldest job it has not yet
served that has no result (:meth:`JobBoard.next_job`), so all ranks take the same jobs in the same
order, and a worker group that Ray Train restarted after a failure (``FailureConfig(max_failures=
train.max_failures)``) re-runs the unfinished job. Rank 0 hands its result to the board by value
(never as a ref it ``ray.put`` itself: such an object dies with the worker group, and Ray 2.56 removed
``ray.put(_owner=...)``), and the board keeps it under the job's id; a second result for the same id
(a re-run whose first result did arrive) is dropped. The driver's
:meth:`StandingTrainer.run` waits for that one result. When Ray Train gives up (no failures left),
``fit()`` ends with an error, :meth:`StandingTrainer.run` raises (the caller keeps the old model), and
the next :meth:`StandingTrainer.run` starts a fresh trainer.
"""

from __future__ import annotations

import asyncio
import atexit
import dataclasses
import io
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import ray
import torch

from raydrift.config import ContinualLearningConfig, RaydriftConfig, TrainConfig
from raydrift.update import UpdateOutcome, Updater, make_ray_trainer, normalize_storage, train_poll_interval
from raydrift.weights import Weights

__all__ = [
    "BoardStatus",
    "Completion",
    "Job",
    "JobBoard",
    "JobOutput",
    "StandingTrainer",
    "Stop",
    "make_updater",
    "serve_jobs",
]

log = logging.getLogger(__name__)

#: Ray Train's controller polls its workers this often (``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S``): how
#: soon a dead worker is noticed and the group restarted. Results do not wait for a poll (they go
#: through the board), so a standing run needs no faster poll than this.
STANDING_POLL_INTERVAL_S = 1.0
#: A worker's long poll of the board for its next job (it returns at once when a job arrives).
IDLE_POLL_S = 10.0
#: The driver's wait for a result between checks that the trainer is still running.
RESULT_POLL_S = 0.5


@dataclass(frozen=True)
class Job:
    """One update for the standing workers (refs are nested, so each worker fetches them itself)."""

    id: str
    version: int
    strategy: str | None
    weights_ref: ray.ObjectRef
    data_ref: ray.ObjectRef
    strategy_state_ref: ray.ObjectRef | None
    submitted_at: float  # driver wall clock
    seq: int = 0  # set by the board: the order the workers take jobs in


@dataclass(frozen=True)
class Stop:
    """The stop job: every worker returns from :func:`serve_jobs` and ``fit()`` ends."""


@dataclass
class JobOutput:
    """What rank 0 hands back for one job (numpy weights; the strategy state as ``torch.save`` bytes,
    read with :func:`raydrift.learning.loop.load_strategy_state`)."""

    weights: Weights
    metrics: dict[str, Any]
    strategy_state: bytes
    started_at: float  # rank 0's wall clock when it took the job
    trained_at: float  # ... when the training steps were done


@dataclass
class Completion:
    """A job's accepted result, as the board keeps it (the driver gets it as the return value of
    :meth:`JobBoard.wait_result`: one copy through the object store, read zero-copy)."""

    job_id: str
    output: JobOutput
    attempts: int
    pid: int


@dataclass
class BoardStatus:
    """A snapshot of the board: who serves, what runs, what was accepted or dropped."""

    worker_pids: dict[int, int]  # rank -> pid of the latest worker that said hello
    hellos: int  # worker set-ups seen (world_size per worker group started)
    pending: list[str]  # ids of submitted jobs without a result
    running: dict[str, int]  # job id -> times it was taken by rank 0
    accepted: int
    duplicates: int
    stopped: bool


@dataclass
class _JobState:
    job: Job
    attempts: int = 0  # times rank 0 took it (a re-run after a restart counts again)
    completion: Completion | None = None


class JobBoard:
    """The job queue between the driver and the standing workers (an async Ray actor, 0 CPUs).

    Plain methods with no Ray calls, so it is tested without Ray; :class:`StandingTrainer` runs it as
    an actor. Waiting methods wake on any change of the board.
    """

    def __init__(self) -> None:
        self._jobs: dict[str, _JobState] = {}
        self._seq = 0
        self._stopped = False
        self._accepted = 0
        self._duplicates = 0
        self._pids: dict[int, int] = {}
        self._hellos = 0
        self._changed_event: asyncio.Event | None = None

    # --- waiting ---------------------------------------------------------------------------------
    def _event(self) -> asyncio.Event:
        if self._changed_event is None:  # made in the actor's event loop, on first use
            self._changed_event = asyncio.Event()
        return self._changed_event

    def _changed(self) -> None:
        event = self._event()
        event.set()
        self._changed_event = asyncio.Event()

    async def _wait_change(self, deadline: float) -> bool:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        try:
            await asyncio.wait_for(self._event().wait(), left)
        except TimeoutError:
            return False
        return True

    # --- the driver's side -----------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        if job.id not in self._jobs:
            self._seq += 1
            self._jobs[job.id] = _JobState(dataclasses.replace(job, seq=self._seq))
            self._changed()

    async def wait_result(self, job_id: str, timeout: float) -> Completion | None:
        """The job's result once it is there (None after ``timeout`` seconds without one)."""
        deadline = time.monotonic() + timeout
        while True:
            state = self._jobs.get(job_id)
            if state is not None and state.completion is not None:
                return state.completion
            if not await self._wait_change(deadline):
                return None

    def forget(self, job_id: str) -> None:
        """Drop a finished job (the driver has its result)."""
        state = self._jobs.get(job_id)
        if state is not None and state.completion is not None:
            del self._jobs[job_id]

    def stop(self) -> None:
        self._stopped = True
        self._changed()

    def status(self) -> BoardStatus:
        return BoardStatus(
            worker_pids=dict(self._pids),
            hellos=self._hellos,
            pending=[i for i, s in self._jobs.items() if s.completion is None],
            running={i: s.attempts for i, s in self._jobs.items() if s.completion is None and s.attempts},
            accepted=self._accepted,
            duplicates=self._duplicates,
            stopped=self._stopped,
        )

    # --- the workers' side -----------------------------------------------------------------------
    def hello(self, rank: int, pid: int) -> None:
        self._pids[rank] = pid
        self._hellos += 1
        self._changed()

    async def next_job(self, after_seq: int, rank: int, timeout: float) -> Job | Stop | None:
        """The oldest job after ``after_seq`` without a result, :class:`Stop`, or None (timeout).

        Every rank asks with the sequence number of the job it served last (-1 after a set-up), so
        the ranks of a worker group take the same jobs in the same order.
        """
        deadline = time.monotonic() + timeout
        while True:
            if self._stopped:
                return Stop()
            for state in self._jobs.values():
                if state.job.seq > after_seq and state.completion is None:
                    if rank == 0:
                        state.attempts += 1
                    return state.job
            if not await self._wait_change(deadline):
                return None

    def complete(self, job_id: str, output: JobOutput, pid: int) -> bool:
        """Register rank 0's result for ``job_id``; False (dropped) when the job already has one."""
        state = self._jobs.get(job_id)
        if state is None or state.completion is not None:
            self._duplicates += 1
            return False
        state.completion = Completion(job_id, output, state.attempts, pid)
        self._accepted += 1
        self._changed()
        return True


# --- the workers -------------------------------------------------------------------------------


@dataclass
class _Worker:
    """A standing worker's set-up, made once per worker process (per worker group start)."""

    rank: int
    world_size: int
    train_cfg: TrainConfig
    cl_cfg: ContinualLearningConfig
    harness: Any
    model: torch.nn.Module
    seed: int
    all_reduce: Any


def _set_up_worker(config: dict[str, Any]) -> _Worker:
    import ray.train
    import ray.train.torch
    import torch.distributed as dist

    from raydrift.harness import resolve_harness

    ctx = ray.train.get_context()
    rank, world_size = ctx.get_world_rank(), ctx.get_world_size()
    train_cfg = TrainConfig.model_validate(config["train"])
    torch.set_num_threads(max(1, int(train_cfg.cpus_per_worker)))  # the process serves nothing else
    cls = resolve_harness(config["harness"])
    options = cls.Options.model_validate(config.get("harness_options") or {})
    seed = int(config["seed"])
    harness = cls(options, seed=seed, batch_size=int(config["batch_size"]))
    model = harness.build_model()
    if train_cfg.use_gpu and torch.cuda.is_available():  # logical GPUs without CUDA: stay on CPU
        model = model.to(ray.train.torch.get_device())
    all_reduce = dist.all_reduce if world_size > 1 and dist.is_available() and dist.is_initialized() else None
    if world_size > 1 and all_reduce is None:
        raise RuntimeError(f"{world_size} Ray Train workers but torch.distributed is not initialized")
    return _Worker(
        rank=rank,
        world_size=world_size,
        train_cfg=train_cfg,
        cl_cfg=ContinualLearningConfig.model_validate(config["continual_learning"]),
        harness=harness,
        model=model,
        seed=seed,
        all_reduce=all_reduce,
    )


def _job_cl_config(cl_cfg: ContinualLearningConfig, strategy: str | None) -> ContinualLearningConfig:
    """The configured section, or another strategy (naive fine-tuning) with its default options."""
    if not strategy or strategy == cl_cfg.strategy:
        return cl_cfg
    return ContinualLearningConfig.model_validate({**cl_cfg.model_dump(), "strategy": strategy, "params": {}})


def _accuracies(w: _Worker, data: Any) -> dict[str, float]:
    """As ``train_func``: the updated model's accuracy on the window and on the memory it trained on."""
    from raydrift.learning.loop import evaluate

    out: dict[str, float] = {}
    for name, (x, y) in (("window", (data.window_x, data.window_y)), ("memory", (data.memory_x, data.memory_y))):
        acc = evaluate(w.model, w.harness, x, y).get("accuracy") if len(y) else None
        if acc is not None:
            out[f"{name}_accuracy"] = acc
    return out


def _value(ref_or_value: Any) -> Any:
    """A job's input: an ObjectRef is fetched; a value (as ``train_func`` also takes) is used as is."""
    return ray.get(ref_or_value) if isinstance(ref_or_value, ray.ObjectRef) else ref_or_value


def _train_job(w: _Worker, job: Job) -> JobOutput | None:
    """One update on this worker: what :func:`raydrift.learning.loop.train_func` does after its
    set-up (the model is reused: the job's weights are loaded into it). Rank 0 returns the output."""
    from raydrift.learning.loop import seed_everything, train_update
    from raydrift.learning.strategies import make_strategy
    from raydrift.weights import load_into, to_numpy

    started = time.time()
    cuda = next(w.model.parameters(), torch.empty(0)).is_cuda
    # what this worker held on its GPU while it waited (model, after the previous job's clean-up)
    idle_gpu_mb = torch.cuda.memory_reserved() / 2**20 if cuda else None
    weights, data, previous = (_value(v) for v in (job.weights_ref, job.data_ref, job.strategy_state_ref))
    load_into(w.model, weights)
    cl_cfg = _job_cl_config(w.cl_cfg, job.strategy)
    strategy = make_strategy(cl_cfg.strategy, cl_cfg)
    if previous:
        strategy.load_state_dict(previous)
    seed = w.seed + job.version
    seed_everything(seed)
    metrics: dict[str, Any] = train_update(
        w.model, w.harness, strategy, data, w.train_cfg, seed, w.rank, w.world_size, w.all_reduce
    )
    trained = time.time()
    metrics.update(
        version=job.version,
        world_size=w.world_size,
        window_samples=len(data.window_y),
        memory_samples=len(data.memory_y),
        torch_threads=torch.get_num_threads(),
    )
    if idle_gpu_mb is not None:
        metrics["idle_gpu_reserved_mb"] = idle_gpu_mb
    if w.rank != 0:
        return None
    metrics.update(_accuracies(w, data))
    state = io.BytesIO()
    torch.save(strategy.state_dict(), state)
    return JobOutput(to_numpy(w.model.state_dict()), metrics, state.getvalue(), started, trained)


def _release(w: _Worker) -> None:
    """Between jobs a worker keeps its model's parameters and buffers (and its CUDA context) only:
    the gradients go, and on a GPU the allocator's cached blocks (activations, optimizer state)."""
    cuda = False
    for p in w.model.parameters():
        p.grad = None
        cuda = cuda or p.is_cuda
    if cuda:
        torch.cuda.empty_cache()


def serve_jobs(config: dict[str, Any]) -> None:
    """``train_loop_per_worker`` of the standing ``TorchTrainer``: set up once, then serve the
    board's jobs (``config["board"]``) until a :class:`Stop`.

    ``config`` holds the keys of :func:`raydrift.learning.loop.train_func`'s config that do not
    change between updates (``harness``, ``harness_options``, ``seed``, ``batch_size``, ``train``,
    ``continual_learning``) and ``board`` (the :class:`JobBoard` actor).
    """
    board = config["board"]
    w = _set_up_worker(config)
    ray.get(board.hello.remote(w.rank, os.getpid()))
    after = -1
    while True:
        job = ray.get(board.next_job.remote(after, w.rank, IDLE_POLL_S))
        if isinstance(job, Stop):
            return
        if job is None:
            continue
        output = _train_job(w, job)
        after = job.seq
        if output is not None:
            ray.get(board.complete.remote(job.id, output, os.getpid()))
        _release(w)


# --- the driver --------------------------------------------------------------------------------


@dataclass
class _Run:
    """One standing Ray Train run (a fresh one replaces it when Ray Train gives up)."""

    name: str
    board: Any
    thread: threading.Thread
    started_at: float
    finished: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    def failure(self) -> str:
        if self.error is None:
            return "the standing trainer ended"
        # WorkerGroupError's first line says nothing: keep the worker errors that follow, on one line
        text = " ".join(f"{type(self.error).__name__}: {self.error}".split())
        return text if len(text) <= 800 else text[:800] + " ..."


class StandingTrainer:
    """Serves every update of a run on one standing ``TorchTrainer`` (same interface as
    :class:`raydrift.update.Updater`, plus :meth:`start` and :meth:`shutdown`).

    Parameters
    ----------
    cfg, harness_spec, storage_path
        As for :class:`~raydrift.update.Updater`; each standing run is a Ray Train run named
        ``standing-<8 hex>`` under ``storage_path``.
    board_cls
        The job board's class (tests pass a subclass that injects faults).
    """

    def __init__(
        self,
        cfg: RaydriftConfig,
        harness_spec: dict[str, Any],
        storage_path: str | os.PathLike[str],
        board_cls: type[JobBoard] = JobBoard,
    ) -> None:
        self.cfg = cfg
        self.harness_spec = harness_spec
        self.storage_path = normalize_storage(storage_path)
        self.board_cls = board_cls
        self.runs_started = 0
        self.last_error: BaseException | None = None  # why the last standing run ended, if it failed
        self._run: _Run | None = None
        self._lock = threading.Lock()
        self._atexit = False

    # --- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the standing run (returns at once; the workers come up in the background)."""
        with self._lock:
            if self._run is not None and not self._run.finished.is_set():
                return
            if self._run is not None:
                self._retire(self._run)
            self._run = self._launch()
        if not self._atexit:
            atexit.register(self.shutdown, 10.0)  # after ray.init's own hook: runs before it
            self._atexit = True

    def _launch(self) -> _Run:
        name = f"standing-{uuid.uuid4().hex[:8]}"
        # named, so it shows in the dashboard beside the Train run of the same name
        board = ray.remote(self.board_cls).options(num_cpus=0, max_concurrency=1000, name=f"{name}-jobs").remote()
        run = _Run(name, board, threading.Thread(), time.perf_counter())
        run.thread = threading.Thread(target=self._fit, args=(run,), name=f"raydrift-{name}", daemon=True)
        run.thread.start()
        self.runs_started += 1
        return run

    def _trainer(self, run: _Run) -> Any:
        from ray.train import FailureConfig, RunConfig

        tc = self.cfg.train
        config = {
            "harness": self.harness_spec["spec"],
            "harness_options": self.harness_spec["options"],
            "seed": self.cfg.seed,
            "batch_size": self.cfg.stream.batch_size,
            "train": tc.model_dump(),
            "continual_learning": self.cfg.continual_learning.model_dump(),
            "board": run.board,
        }
        run_config = RunConfig(
            name=run.name, storage_path=self.storage_path, failure_config=FailureConfig(max_failures=tc.max_failures)
        )
        return make_ray_trainer(serve_jobs, config, self.cfg, run_config)

    def _fit(self, run: _Run) -> None:
        try:
            with train_poll_interval(STANDING_POLL_INTERVAL_S):
                self._trainer(run).fit()
        except BaseException as exc:  # noqa: BLE001 - reported by run(); the thread must not die loudly
            run.error = exc
        finally:
            run.finished.set()

    def _retire(self, run: _Run) -> None:
        try:
            ray.kill(run.board)
        except Exception:  # noqa: BLE001 - already gone, or Ray is down
            pass

    def shutdown(self, timeout: float = 60.0) -> None:
        """Stop the workers (a stop job: a job in progress finishes first) and wait up to ``timeout``
        seconds for ``fit()`` to return. Safe to call twice, after a failure, or when Ray is down."""
        with self._lock:
            run, self._run = self._run, None
        if run is None:
            return
        if ray.is_initialized():
            try:
                ray.get(run.board.stop.remote(), timeout=5)
            except Exception:  # noqa: BLE001 - the board or the cluster is gone: nothing to stop
                pass
        run.thread.join(timeout)
        if run.thread.is_alive():
            log.warning("standing trainer %s did not stop within %.0f s", run.name, timeout)
        if ray.is_initialized():
            self._retire(run)

    # --- updates ---------------------------------------------------------------------------------
    def status(self) -> BoardStatus | None:
        """The current run's board (None before :meth:`start` or after :meth:`shutdown`)."""
        run = self._run
        return None if run is None else ray.get(run.board.status.remote())

    def run(
        self,
        weights_ref: ray.ObjectRef,
        data_ref: ray.ObjectRef,
        version: int,
        strategy: str | None = None,
        strategy_state_ref: ray.ObjectRef | None = None,
    ) -> UpdateOutcome:
        """Train from ``weights_ref`` on ``data_ref`` on the standing workers (starting them first
        if they are not running); blocks until the new weights are back. Raises when the trainer
        stopped (Ray Train ran out of ``max_failures``): the next call starts a fresh one."""
        from raydrift.learning.loop import load_strategy_state

        self.start()
        run = self._run
        assert run is not None
        t0 = time.perf_counter()
        try:
            job = Job(uuid.uuid4().hex, version, strategy, weights_ref, data_ref, strategy_state_ref, time.time())
            ray.get(run.board.submit.remote(job))
            done = self._wait(run, job)
            output = done.output
        except ray.exceptions.RayError as exc:
            self._give_up(run)
            raise RuntimeError(f"update {version}: the standing trainer failed: {exc}".splitlines()[0][:500]) from exc
        received = time.time()
        run.board.forget.remote(job.id)
        metrics = dict(output.metrics)
        metrics.update(
            queue_seconds=max(0.0, output.started_at - job.submitted_at),
            handoff_seconds=max(0.0, received - output.trained_at),
            job_attempts=done.attempts,
            standing_runs=self.runs_started,
        )
        return UpdateOutcome(
            weights=output.weights,
            metrics=metrics,
            training_seconds=time.perf_counter() - t0,
            strategy_state=load_strategy_state(output.strategy_state),
        )

    def _wait(self, run: _Run, job: Job) -> Completion:
        while True:
            done: Completion | None = ray.get(run.board.wait_result.remote(job.id, RESULT_POLL_S))
            if done is not None:
                return done
            if run.finished.is_set():
                self.last_error = run.error
                self._give_up(run)
                raise RuntimeError(f"update {job.version}: {run.failure()}")

    def _give_up(self, run: _Run) -> None:
        with self._lock:
            if self._run is run:
                self._run = None
        self._retire(run)


def make_updater(
    cfg: RaydriftConfig, harness_spec: dict[str, Any], storage_path: str | os.PathLike[str]
) -> Updater | StandingTrainer:
    """A :class:`StandingTrainer` when ``train.standing`` and ``train.num_workers >= 1``, else the
    per-update :class:`~raydrift.update.Updater` (``num_workers: 0`` runs in-process)."""
    if cfg.train.standing and cfg.train.num_workers >= 1:
        return StandingTrainer(cfg, harness_spec, storage_path)
    return Updater(cfg, harness_spec, storage_path)
