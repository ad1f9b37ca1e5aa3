"""The loop: dispatch with backpressure, ordered detection, drift -> update -> broadcast.

The coordinator runs in the driver process. Batches travel from the StreamReader to a MonitorActor
and results from the monitor to the DetectorActor by object ref; the driver only waits on refs and
keeps the books. On a drift at batch ``b`` it lets the in-flight batches finish (their results are
discarded), trains the update with Ray Train, ``ray.put``s the new weights once, sends the ref to
every monitor with the new version, then rewinds the stream to ``b + 1``: every batch after the
drift is evaluated with the new weights. So the drift events depend only on the stream, the config
and the seed, never on the number of monitors or on scheduling.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray
import torch

from raydrift.actors import DetectorActor, MonitorActor, StreamReader
from raydrift.config import RaydriftConfig, save_config
from raydrift.detection.engine import DetectionOutput, DriftEvent, IntervalRecord
from raydrift.errors import UserError
from raydrift.harness import Harness, build_harness
from raydrift.learning.loop import evaluate, pretrain
from raydrift.learning.metrics import cl_summary
from raydrift.metrics import RunMetrics
from raydrift.report import MetricsWriter, format_summary, make_plots, write_summary
from raydrift.tracking import Tracker, make_tracker
from raydrift.update import Updater, copy_run_outputs, train_storage
from raydrift.weights import Weights, load_into, load_weights, save_weights, to_numpy

Console = Callable[[str], None]

RECOVERY_TOLERANCE = 0.02
"""An update has recovered when an interval's metric is back within this of the pre-drift level."""


def make_run_dir(cfg: RaydriftConfig) -> Path:
    """``<runs_dir>/<name>-<timestamp>/`` (a suffix is added if it exists)."""
    root = Path(cfg.logging.runs_dir).resolve()
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = root / f"{cfg.name}-{stamp}"
    i = 1
    while run_dir.exists():
        run_dir = root / f"{cfg.name}-{stamp}-{i}"
        i += 1
    run_dir.mkdir(parents=True)
    return run_dir


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("device: cuda was asked for but CUDA is not available here; use device: auto or cpu")
    return device


class Coordinator:
    """Runs one raydrift job end to end and returns its summary (also written to summary.json)."""

    def __init__(
        self,
        cfg: RaydriftConfig,
        address: str | None = None,
        console: Console = print,
        run_dir: Path | None = None,
    ) -> None:
        self.cfg = cfg
        self.address = address or cfg.ray.address or os.environ.get("RAY_ADDRESS") or None
        self.console = console
        self.run_dir = run_dir
        self.harness_spec: dict[str, Any] = {
            "spec": cfg.model.harness,
            "options": dict(cfg.data),
            "seed": cfg.seed,
            "batch_size": cfg.stream.batch_size,
        }
        self._started_ray = False
        self.summary: dict[str, Any] = {}

    # ------------------------------------------------------------------------------------------
    def log(self, msg: str, level: int = 1) -> None:
        if self.cfg.verbosity >= level:
            self.console(msg)

    def _actor_spec(self) -> dict[str, Any]:
        s = self.harness_spec
        return {"spec": s["spec"], "options": s["options"], "seed": s["seed"], "batch_size": s["batch_size"]}

    # --- setup ---------------------------------------------------------------------------------
    def _initial_model(self, harness: Harness, device: str = "cpu") -> torch.nn.Module:
        """Build the model, load ``model.checkpoint`` or pre-train it; it stays on ``device`` (the driver
        pre-trains and evaluates the test sets there)."""
        torch.manual_seed(self.cfg.seed)
        model = harness.build_model()
        mc = self.cfg.model
        if mc.checkpoint:
            path = Path(mc.checkpoint)
            if not path.is_file():
                raise UserError(f"model.checkpoint '{path}' not found: give the path of a saved state_dict")
            try:
                load_into(model, load_weights(path))
            except Exception as exc:  # noqa: BLE001 - any load failure is the user's file
                raise UserError(
                    f"model.checkpoint '{path}' could not be loaded into the model: {exc}"
                ) from exc
            self.log(f"initial weights from {path}")
        model.to(device)
        if not mc.checkpoint and mc.pretrain_epochs > 0:
            data = harness.pretrain_data()
            if data is not None:
                t0 = time.perf_counter()
                losses = pretrain(
                    model,
                    harness,
                    data[0],
                    data[1],
                    mc.pretrain_epochs,
                    mc.pretrain_lr,
                    self.cfg.train.batch_size,
                    self.cfg.seed,
                )
                self.log(
                    f"pre-trained the initial model on {len(data[1])} samples for {mc.pretrain_epochs} "
                    f"epoch(s) in {time.perf_counter() - t0:.1f}s (loss {losses[-1]:.3f})"
                )
        return model

    def _init_ray(self) -> str | None:
        rc = self.cfg.ray
        kwargs: dict[str, Any] = {"namespace": rc.namespace, "log_to_driver": self.cfg.verbosity >= 2}
        import logging

        kwargs["logging_level"] = logging.INFO if self.cfg.verbosity >= 3 else logging.WARNING
        if ray.is_initialized():
            return None
        if self.address:
            ctx = ray.init(address=self.address, **kwargs)
        else:
            # Workers of a local cluster import user harnesses from the current directory too.
            path = os.pathsep.join(p for p in [os.getcwd(), os.environ.get("PYTHONPATH", "")] if p)
            ctx = ray.init(
                address="local",  # a new cluster, even if another one runs on this machine
                num_cpus=rc.num_cpus,
                num_gpus=rc.num_gpus,
                include_dashboard=rc.include_dashboard,
                dashboard_host=rc.dashboard_host,
                dashboard_port=rc.dashboard_port,
                runtime_env={"env_vars": {"PYTHONPATH": path}},
                **kwargs,
            )
            self._started_ray = True
        url = getattr(ctx, "dashboard_url", None)
        return f"http://{url}" if url and not str(url).startswith("http") else url

    def _check_resources(self) -> None:
        """Monitors and trainer workers must fit in the cluster at the same time.

        Capacity for the update is reserved up front: monitors keep their resources during an update,
        so if they could take what the trainer needs, ``fit()`` would wait forever.
        """
        if self.cfg.ray.autoscaling:
            return
        res = ray.cluster_resources()
        cpus, gpus = res.get("CPU", 0.0), res.get("GPU", 0.0)
        mc, tc = self.cfg.monitor, self.cfg.train
        need_cpu = mc.num_monitors * mc.num_cpus + tc.num_workers * tc.cpus_per_worker
        need_gpu = mc.num_monitors * mc.num_gpus + (tc.num_workers * tc.gpus_per_worker if tc.use_gpu else 0)
        if need_cpu > cpus + 1e-9:
            raise UserError(
                f"the config needs {need_cpu:g} CPUs ({mc.num_monitors} monitors x {mc.num_cpus:g} + "
                f"{tc.num_workers} train workers x {tc.cpus_per_worker:g}) but the cluster has {cpus:g}: "
                "lower monitor.num_cpus, monitor.num_monitors or train.num_workers"
            )
        for key, amount in mc.resources.items():
            have = res.get(key, 0.0)
            if mc.num_monitors * amount > have + 1e-9:
                raise UserError(
                    f"monitor.resources needs {mc.num_monitors * amount:g} '{key}' but the cluster offers "
                    f"{have:g}: declare it on nodes (ray start --resources) or change monitor.resources"
                )
        if need_gpu > gpus + 1e-9:
            raise UserError(
                f"the config needs {need_gpu:g} GPUs but the cluster has {gpus:g}: lower monitor.num_gpus "
                "or set train.use_gpu: false (ray.autoscaling: true if the cluster adds GPU nodes on demand)"
            )

    # --- the run -------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        started = dt.datetime.now()
        t_start = time.perf_counter()
        device = resolve_device(cfg.device)
        # The driver's own work (pre-training, the accuracy matrix) is small; the cores belong to the
        # actors. More threads here slow everything down on a small, busy machine.
        torch.set_num_threads(1)
        harness = build_harness(**self._actor_spec())
        metric = cfg.monitor.metric
        if metric not in harness.metric_directions:
            raise UserError(
                f"monitor.metric '{metric}' is not a metric of harness '{cfg.model.harness}': "
                f"choose one of {sorted(harness.metric_directions)}"
            )
        higher_is_better = harness.metric_directions[metric]
        if self.run_dir is None:
            self.run_dir = make_run_dir(cfg)
        run_dir = self.run_dir
        save_config(cfg, run_dir / "config.yaml")
        self.log(f"run directory: {run_dir}")

        model = self._initial_model(harness, device)
        test_sets = harness.test_sets()
        regimes = sorted(test_sets)
        names = harness.regime_names()

        summary: dict[str, Any] = {  # the schema is in raydrift/report.py
            "run": {
                "name": cfg.name,
                "run_dir": str(run_dir),
                "status": "running",
                "started": started.isoformat(timespec="seconds"),
                "finished": None,
                "wall_seconds": None,
                "ray_address": None,
                "dashboard_url": None,
                "harness": cfg.model.harness,
                "seed": cfg.seed,
                "error": None,
            },
            "stream": {
                "batches": 0,
                "samples": 0,
                "regimes_seen": [],
                "regime_names": {r: names.get(r, f"regime-{r}") for r in regimes},
                "regime_starts": [],
            },
            "monitoring": {"num_monitors": cfg.monitor.num_monitors},
            "detection": {
                "detector": cfg.drift_detection.detector,
                "granularity": cfg.drift_detection.granularity,
                "metric": metric,
                "higher_is_better": higher_is_better,
            },
            "drift_events": [],
            "updates": [],
            "accuracy_matrix": {"regimes": regimes, "rows": []},
            "cl_metrics": {},
        }
        self.summary = summary

        def test_row(label: str, version: int, batch_id: int, m: torch.nn.Module) -> list[float | None]:
            accs: list[float | None] = []
            for r in regimes:
                x, y = test_sets[r]
                accs.append(
                    evaluate(m, harness, x, y)["accuracy"]
                    if "accuracy" in harness.metric_directions
                    else None
                )
            summary["accuracy_matrix"]["rows"].append(
                {"label": label, "version": version, "batch_id": batch_id, "accuracy": accs}
            )
            return accs

        test_row("initial", 0, -1, model)
        weights: Weights = to_numpy(model.state_dict())

        tracker: Tracker = make_tracker(cfg.logging, Path(cfg.logging.runs_dir).resolve())
        tracker.start(run_dir.name, cfg.to_dict())
        summary["tracking"] = tracker.info()
        metrics_writer = MetricsWriter(run_dir)
        interrupted = False
        error: BaseException | None = None
        try:
            dashboard = self._init_ray()
            summary["run"]["ray_address"] = ray.get_runtime_context().gcs_address
            summary["run"]["dashboard_url"] = dashboard
            if dashboard:
                self.log(f"Ray dashboard: {dashboard}")
            self._check_resources()
            self._loop(
                harness, model, weights, metric, higher_is_better, device, metrics_writer, tracker, test_row
            )
        except KeyboardInterrupt:
            interrupted = True
            self.log("interrupted: shutting down and keeping what was written")
        except BaseException as exc:
            error = exc
            raise
        finally:
            metrics_writer.close()
            status = "interrupted" if interrupted else ("failed" if error is not None else "completed")
            summary["run"]["status"] = status
            summary["run"]["error"] = None if error is None else f"{type(error).__name__}: {error}"
            summary["run"]["finished"] = dt.datetime.now().isoformat(timespec="seconds")
            summary["run"]["wall_seconds"] = round(time.perf_counter() - t_start, 3)
            self._finish_cl_metrics()
            cl = {k: v for k, v in summary["cl_metrics"].items() if isinstance(v, int | float)}
            if cl:
                tracker.log_metrics(cl, step=summary["stream"]["batches"])
            write_summary(run_dir, summary)
            if cfg.logging.plots:
                try:
                    make_plots(run_dir, summary)
                except Exception as exc:  # noqa: BLE001 - plots must never lose a run
                    self.log(f"warning: plots failed: {exc}")
            tracker.log_artifacts(run_dir)
            try:
                dest = copy_run_outputs(run_dir, cfg.ray.storage_path)
                if dest:
                    self.log(f"outputs copied to {dest}")
            except Exception as exc:  # noqa: BLE001 - a failed copy must not lose the run
                self.log(f"warning: copying outputs to ray.storage_path failed: {exc}")
            tracker.finish(status)
            self._shutdown()
        self.log(format_summary(summary))
        return summary

    def _finish_cl_metrics(self) -> None:
        """Average accuracy, forgetting and BWT from the accuracy matrix (see docs/continuous_learning.md).

        Row k was taken at stream position p_k (its drift batch; -1 for the initial model). A regime
        counts as seen at row k if it started at or before p_k; the row that closes regime j is the
        last row taken before the next regime started (the model as it was when regime j ended).
        """
        am = self.summary["accuracy_matrix"]
        rows = [r["accuracy"] for r in am["rows"]]
        starts = self.summary["stream"]["regime_starts"]
        if not rows or not starts or any(a is None for a in rows[-1]):
            return
        col = {r: i for i, r in enumerate(am["regimes"])}
        pos = [r["batch_id"] for r in am["rows"]]
        seen_at = [max(1, len({s["regime"] for s in starts if s["batch_id"] <= max(p, 0)})) for p in pos]
        last_row: dict[int, int] = {}
        for i, s in enumerate(starts):
            end = starts[i + 1]["batch_id"] if i + 1 < len(starts) else float("inf")
            ks = [k for k, p in enumerate(pos) if p < end]
            if s["regime"] in col and ks:
                last_row[col[s["regime"]]] = max(ks)
        try:
            self.summary["cl_metrics"] = cl_summary(rows, seen_at, last_row)
        except Exception as exc:  # noqa: BLE001 - reporting must not fail the run
            self.summary["cl_metrics"] = {"error": f"{type(exc).__name__}: {exc}"}

    def _shutdown(self) -> None:
        if not ray.is_initialized():
            return
        handles = [
            getattr(self, "_stream", None),
            getattr(self, "_detector", None),
            *getattr(self, "_monitors", []),
        ]
        for h in handles:
            if h is not None:
                try:
                    ray.kill(h)
                except Exception:  # noqa: BLE001 - best effort at shutdown
                    pass
        if self._started_ray:
            if ray.is_initialized():
                ray.shutdown()
            return
        # On a cluster that outlives the run, wait until the actor names are free for the next run.
        names = ["stream", "detector", *(f"monitor-{i}" for i in range(self.cfg.monitor.num_monitors))]
        deadline = time.monotonic() + 10
        while names and time.monotonic() < deadline:
            try:
                ray.get_actor(names[0], namespace=self.cfg.ray.namespace)
                time.sleep(0.05)
            except ValueError:
                names.pop(0)

    # --- main loop -----------------------------------------------------------------------------
    def _loop(
        self,
        harness: Harness,
        model: torch.nn.Module,
        weights: Weights,
        metric: str,
        higher_is_better: bool,
        device: str,
        metrics_writer: MetricsWriter,
        tracker: Tracker,
        test_row: Callable[..., list[float | None]],
    ) -> None:
        cfg, summary = self.cfg, self.summary
        ns = cfg.ray.namespace
        spec = self._actor_spec()
        mc = cfg.monitor
        label_free = cfg.drift_detection.label_free.signal
        version = 0
        weights_ref = ray.put(weights)
        strategy_state_ref: ray.ObjectRef | None = None  # carried from update to update
        self._stream = StreamReader.options(  # type: ignore[attr-defined]
            name="stream", namespace=ns, num_cpus=0
        ).remote(spec, cfg.stream.model_dump(), cfg.continual_learning.model_dump())
        self._monitors = [
            MonitorActor.options(  # type: ignore[attr-defined]
                name=f"monitor-{i}",
                namespace=ns,
                num_cpus=mc.num_cpus,
                num_gpus=mc.num_gpus,
                resources=dict(mc.resources) or None,  # custom resources: pin monitors to node types
                scheduling_strategy="SPREAD" if mc.scheduling == "spread" else "DEFAULT",
            ).remote(
                spec,
                metric,
                weights_ref,
                version,
                f"monitor-{i}",
                mc.num_cpus,
                device if mc.num_gpus > 0 else "cpu",
                None if label_free == "none" else label_free,
            )
            for i in range(mc.num_monitors)
        ]
        self._detector = DetectorActor.options(  # type: ignore[attr-defined]
            name="detector", namespace=ns, num_cpus=0
        ).remote(cfg.drift_detection.model_dump(), metric, higher_is_better, cfg.seed)
        updater = Updater(cfg, spec, train_storage(cfg.ray.storage_path, self.run_dir))  # type: ignore[arg-type]
        run_metrics = RunMetrics(self.run_dir.name, metric)  # type: ignore[union-attr]
        ray.get([m.stats.remote() for m in self._monitors])  # actors are up
        self.log(
            f"{mc.num_monitors} monitor(s), detector '{cfg.drift_detection.detector}' on {metric} "
            f"({cfg.drift_detection.granularity} granularity), strategy '{cfg.continual_learning.strategy}'"
        )

        queue: list[tuple[Any, ray.ObjectRef]] = []  # (meta, batch ref) fetched, not dispatched
        inflight: dict[ray.ObjectRef, tuple[int, int]] = {}  # task -> (batch id, monitor index)
        load = [0] * mc.num_monitors
        stream_done = False
        processed = 0  # batches accepted by the detector: ids < processed
        samples = 0
        pending_after: list[dict[str, Any]] = []  # updates waiting for their post-update interval
        awaiting_recovery: list[dict[str, Any]] = []  # updates whose metric is not back yet
        tolerance = RECOVERY_TOLERANCE if higher_is_better else -RECOVERY_TOLERANCE
        t_mon = time.perf_counter()
        monitor_seconds = 0.0
        regimes_seen: list[int] = summary["stream"]["regimes_seen"]
        batch_regime: dict[int, int] = {}
        last_progress = 0.0
        last_value = float("nan")
        # a drift waiting for its post-drift window: (event, alarm time, last batch id of the window)
        collecting: tuple[DriftEvent, float, int] | None = None
        post = cfg.continual_learning.post_drift_batches

        def on_interval(rec: IntervalRecord) -> None:
            nonlocal samples, last_value
            samples += rec.n_samples
            last_value = rec.value
            run_metrics.interval(rec.value)
            metrics_writer.write(rec.to_dict())
            tracker.log_metrics({"monitored": rec.value, **rec.metrics}, step=rec.last_batch)
            for upd in pending_after:
                if rec.version >= upd["version"]:
                    upd["accuracy_after"] = rec.value
            pending_after[:] = [u for u in pending_after if u.get("accuracy_after") is None]
            for upd in awaiting_recovery:
                ref = upd["pre_drift_value"]
                back = rec.value >= ref - tolerance if higher_is_better else rec.value <= ref - tolerance
                if rec.version >= upd["version"] and back:
                    upd["recovery_batches"] = rec.last_batch - upd["drift_batch_id"]
            awaiting_recovery[:] = [u for u in awaiting_recovery if u["recovery_batches"] is None]

        def drain() -> None:
            """Let in-flight batches finish and forget them (they are served again after a rewind)."""
            nonlocal load
            if inflight:
                ray.wait(list(inflight), num_returns=len(inflight))
            inflight.clear()
            queue.clear()
            load = [0] * mc.num_monitors
            for b in [b for b in batch_regime if b >= processed]:
                batch_regime.pop(b)

        def progress(force: bool = False) -> None:
            nonlocal last_progress
            now = time.perf_counter()
            if (force or now - last_progress > 2.0) and not math.isnan(last_value):
                last_progress = now
                total = f"/{cfg.stream.max_batches}" if cfg.stream.max_batches else ""
                rate = samples / max(1e-9, monitor_seconds + now - t_mon)
                run_metrics.throughput(rate)
                self.log(
                    f"[batch {processed}{total}] {metric} {last_value:.3f}  model v{version}  "
                    f"drifts {len(summary['drift_events'])}  updates {len(summary['updates'])}  "
                    f"{rate:,.0f} samples/s"
                )

        def update(event: DriftEvent, t_alarm: float, upto: int) -> None:
            """Train on the window ending at ``upto``, broadcast, resume the stream at ``upto + 1``."""
            nonlocal version, weights, weights_ref, monitor_seconds, t_mon, stream_done, processed
            nonlocal strategy_state_ref
            monitor_seconds += time.perf_counter() - t_mon
            t0 = time.perf_counter()
            drain()
            data_ref = self._stream.update_data.remote(upto)
            ray.wait([data_ref])
            t1 = time.perf_counter()
            # the drift's score picks the kind of update (drift_detection.regimes)
            kind = getattr(event, "update_kind", "continual_learning") or "continual_learning"
            start_ref, strategy = weights_ref, cfg.continual_learning.strategy
            if kind == "fine_tuning":
                strategy = "naive"  # plain fine-tuning on the window
            elif kind == "retrain":
                torch.manual_seed(cfg.seed + version + 1)  # re-initialise, then memory + window
                start_ref = ray.put(to_numpy(harness.build_model().state_dict()))
            outcome = updater.run(
                start_ref, data_ref, version + 1, strategy=strategy, strategy_state_ref=strategy_state_ref
            )
            if outcome.strategy_state is not None:
                strategy_state_ref = ray.put(outcome.strategy_state)
            t2 = time.perf_counter()
            version += 1
            weights = outcome.weights
            weights_ref = ray.put(weights)  # once; every monitor reads the same object
            acks = ray.get([m.set_weights.remote(version, weights_ref) for m in self._monitors])
            t3 = time.perf_counter()
            if any(a != version for a in acks):
                raise RuntimeError(f"monitors did not load version {version}: {acks}")
            ray.get(self._stream.rewind.remote(upto + 1))
            self._detector.resume_after_update.remote(upto + 1, version)
            processed = upto + 1
            stream_done = False
            prev = summary["accuracy_matrix"]["rows"][-1]["accuracy"]
            load_into(model, weights)
            after = test_row(f"update-{version}", version, upto, model)
            regimes = summary["accuracy_matrix"]["regimes"]
            upd: dict[str, Any] = {
                "version": version,
                "drift_batch_id": event.batch_id,
                "window_last_batch_id": upto,
                "live_batch_id": upto + 1,
                "strategy": strategy,
                "update_kind": kind,
                "score": getattr(event, "score", None),
                "collecting_seconds": round(t0 - t_alarm, 4),
                "waiting_seconds": round(t1 - t0, 4),
                "training_seconds": round(t2 - t1, 4),
                "broadcasting_seconds": round(t3 - t2, 4),
                "total_seconds": round(t3 - t0, 4),
                "window_samples": int(outcome.metrics.get("window_samples", 0)),
                "memory_samples": int(outcome.metrics.get("memory_samples", 0)),
                "train_loss": outcome.metrics.get("train_loss"),
                "train_steps": outcome.metrics.get("steps"),
                "train_loop_seconds": outcome.metrics.get("seconds"),  # the gradient steps alone
                "train_torch_threads": outcome.metrics.get("torch_threads"),
                "window_accuracy_after_training": outcome.metrics.get("window_accuracy"),
                "memory_accuracy_after_training": outcome.metrics.get("memory_accuracy"),
                "regime": event.regime,
                "accuracy_before": event.value,
                "pre_drift_value": event.reference,
                # batches from the drift until the monitored metric is back within RECOVERY_TOLERANCE
                # of its pre-drift level (None: not within this regime)
                "recovery_batches": None,
                "accuracy_after": None,
                "test_accuracy_before": dict(zip(regimes, prev, strict=True)),
                "test_accuracy_after": dict(zip(regimes, after, strict=True)),
            }
            summary["updates"].append(upd)
            awaiting_recovery.clear()  # a new drift ends the wait of earlier updates (recovery: None)
            awaiting_recovery.append(upd)
            run_metrics.update(upd)
            pending_after.append(upd)
            tracker.log_metrics(
                {
                    "update_total_seconds": upd["total_seconds"],
                    "update_training_seconds": upd["training_seconds"],
                    "model_version": float(version),
                },
                step=upto,
            )
            cur = regimes.index(event.regime) if event.regime in regimes else None
            before_s = f"{prev[cur]:.3f}" if cur is not None and prev[cur] is not None else "n/a"
            after_s = f"{after[cur]:.3f}" if cur is not None and after[cur] is not None else "n/a"
            self.log(
                f"update v{version} on batches {max(0, upto + 1 - cfg.continual_learning.window_batches)}-{upto}"
                f" + memory: waiting {t1 - t0:.2f}s, training {t2 - t1:.2f}s, broadcasting {t3 - t2:.2f}s; "
                f"regime {event.regime} test accuracy {before_s} -> {after_s}"
            )
            t_mon = time.perf_counter()

        while True:
            # keep the pipeline full; while collecting a post-drift window, not beyond its end
            while not stream_done and len(inflight) < mc.max_in_flight:
                if not queue:
                    got = ray.get(self._stream.next_batches.remote(cfg.stream.prefetch))
                    if not got:
                        stream_done = True
                        break
                    queue.extend(got)
                if collecting is not None and queue[0][0].batch_id > collecting[2]:
                    break
                meta, bref = queue.pop(0)
                batch_regime[meta.batch_id] = meta.regime
                i = min(range(mc.num_monitors), key=lambda j: (load[j], j))
                task = self._monitors[i].evaluate.remote(meta.batch_id, bref)
                inflight[task] = (meta.batch_id, i)
                load[i] += 1
            if not inflight:
                if collecting is not None and processed - 1 >= collecting[0].batch_id:
                    update(collecting[0], collecting[1], processed - 1)  # the stream ended first
                    collecting = None
                    continue
                break
            ready, _ = ray.wait(list(inflight), num_returns=1, fetch_local=False)
            task = ready[0]
            _, i = inflight.pop(task)
            load[i] -= 1
            out: DetectionOutput = ray.get(self._detector.ingest.remote(task))
            if out.next_batch > processed:
                starts = summary["stream"]["regime_starts"]
                for b in range(processed, out.next_batch):
                    r = batch_regime.pop(b, None)
                    if r is not None and (not starts or starts[-1]["regime"] != r):
                        starts.append({"regime": r, "batch_id": b})
                        if r not in regimes_seen:
                            regimes_seen.append(r)
                # accepted batches may join the window and the replay memory
                self._stream.commit.remote(out.next_batch - 1)
                processed = out.next_batch
            for rec in out.intervals:
                on_interval(rec)
            progress(force=bool(out.events))

            if out.events:
                event: DriftEvent = out.events[0]
                summary["drift_events"].append(event.to_dict())
                run_metrics.drift(event.detector)
                tracker.log_metrics({"drift": 1.0}, step=event.batch_id)
                self.log(
                    f"drift at batch {event.batch_id} (regime {event.regime}): {metric} {event.value:.3f} "
                    f"vs {event.reference:.3f} before, detector {event.detector}"
                )
                if collecting is not None:  # a second alarm while collecting: train on what we have
                    update(collecting[0], collecting[1], event.batch_id)
                    collecting = None
                elif post == 0:
                    update(event, time.perf_counter(), event.batch_id)
                else:
                    # keep monitoring with the current weights until the post-drift window is complete
                    collecting = (event, time.perf_counter(), event.batch_id + post)
                    drain()
                    ray.get(self._stream.rewind.remote(event.batch_id + 1))
                    self._detector.resume_after_update.remote(event.batch_id + 1, version)
                    stream_done = False
                    self.log(f"collecting {post} post-drift batch(es) before the update", level=2)
            elif collecting is not None and processed > collecting[2]:
                update(collecting[0], collecting[1], collecting[2])
                collecting = None

        monitor_seconds += time.perf_counter() - t_mon
        for rec in ray.get(self._detector.finish.remote()):
            on_interval(rec)
        stats = ray.get([m.stats.remote() for m in self._monitors])
        summary["stream"]["batches"] = processed
        summary["stream"]["samples"] = samples
        summary["monitoring"].update(
            {
                "samples_per_second": round(samples / max(monitor_seconds, 1e-9), 2),
                "batches_per_second": round(processed / max(monitor_seconds, 1e-9), 3),
                "monitoring_seconds": round(monitor_seconds, 3),
                "monitor_versions": {s["name"]: s["version"] for s in stats},
                "monitor_batches": {s["name"]: s["batches"] for s in stats},
                "monitor_torch_threads": {s["name"]: s["torch_threads"] for s in stats},
                "monitor_nodes": {s["name"]: s.get("node_id") for s in stats},
                "eval_seconds_total": round(sum(s["eval_seconds"] for s in stats), 3),
            }
        )
        summary["model_version"] = version
        if cfg.logging.save_weights:
            save_weights(weights, self.run_dir / "weights.pt")  # type: ignore[operator]
