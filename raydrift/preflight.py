"""Every check a run makes before it starts anything, shared by ``raydrift validate`` and ``run``.

:func:`check_config` needs no Ray: the detector, the strategy, the harness (imported, constructed,
its model built), the monitored metric, the device and ``model.checkpoint``. :func:`check_resources`
compares what the config asks for with what a cluster has: the machine's own cores and GPUs for a
local cluster (before it starts), the cluster's totals once connected. Each mistake is one
:class:`~raydrift.errors.UserError` line.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from raydrift.config import RaydriftConfig, validate_harness_options
from raydrift.errors import UserError
from raydrift.harness import Harness, build_harness

__all__ = ["Preflight", "check_config", "check_resources", "harness_call", "local_resources", "resolve_device"]

T = TypeVar("T")


class HarnessError(UserError):
    """The user's harness code raised (or called ``sys.exit``) while raydrift called it."""


def harness_call(spec: str, what: str, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)``: harness code, where an exception (or ``sys.exit``) is the harness's bug and is
    reported as one line naming the harness and the method."""
    try:
        return fn(*args)
    except UserError:
        raise
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - the user's code may raise anything
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        kind = f"called sys.exit({exc.code!r})" if isinstance(exc, SystemExit) else f"raised {type(exc).__name__}"
        raise HarnessError(f"harness '{spec}': {what} {kind}{': ' + detail if detail else ''}; fix the harness") from exc


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("device: cuda was asked for but CUDA is not available here; use device: auto or cpu")
    return device


@dataclass
class Preflight:
    """What the checks found, reused by the run."""

    harness: Harness
    metric: str
    higher_is_better: bool
    device: str
    test_sets: dict[int, tuple[torch.Tensor, torch.Tensor]]
    regime_names: dict[int, str]


def check_config(cfg: RaydriftConfig) -> Preflight:
    """Everything about ``cfg`` that can be checked without Ray (raises a one-line UserError)."""
    from raydrift.detection import check_detector_domain, make_detector
    from raydrift.learning.strategies import make_strategy

    validate_harness_options(cfg)
    make_detector(cfg.drift_detection.detector, cfg.drift_detection.params, seed=cfg.seed)
    make_strategy(cfg.continual_learning.strategy, cfg.continual_learning)
    spec = cfg.model.harness
    harness = harness_call(
        spec, "construction", build_harness, spec, dict(cfg.data), cfg.seed, cfg.stream.batch_size
    )
    metric = cfg.monitor.metric
    directions = harness.metric_directions
    if metric not in directions:
        raise UserError(
            f"monitor.metric '{metric}' is not a metric of harness '{spec}': choose one of {sorted(directions)}"
        )
    check_detector_domain(cfg, harness)  # the detector can take what the monitored metric gives
    device = resolve_device(cfg.device)
    if cfg.model.checkpoint:
        check_model_checkpoint(cfg, harness)
    # the data the run reads first: a missing dataset or path is a mistake found before Ray starts
    test_sets = harness_call(spec, "test_sets()", harness.test_sets)
    names = harness_call(spec, "regime_names()", harness.regime_names)
    return Preflight(harness, metric, bool(directions[metric]), device, test_sets, dict(names))


def check_model_checkpoint(cfg: RaydriftConfig, harness: Harness) -> None:
    """``model.checkpoint`` exists, holds tensors only and fits the harness's model."""
    from raydrift.weights import check_weights_file, load_into

    path = Path(cfg.model.checkpoint or "")
    weights = check_weights_file(path)  # one line: missing, not weights-only, damaged, not tensors
    model = harness_call(cfg.model.harness, "build_model()", harness.build_model)
    try:
        load_into(model, weights)
    except Exception as exc:  # noqa: BLE001 - any mismatch is the user's file
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise UserError(f"model.checkpoint '{path}' does not fit the harness's model: {first}") from None


def local_resources(cfg: RaydriftConfig) -> dict[str, float]:
    """What a local cluster started for ``cfg`` will have (``ray.num_cpus`` / ``ray.num_gpus``, else the
    machine's cores and visible GPUs, as Ray counts them)."""
    try:
        from ray._private.utils import get_num_cpus

        cores = float(get_num_cpus())
    except Exception:  # noqa: BLE001 - another Ray version
        cores = float(os.cpu_count() or 1)
    cpus = float(cfg.ray.num_cpus) if cfg.ray.num_cpus is not None else cores
    gpus = float(cfg.ray.num_gpus) if cfg.ray.num_gpus is not None else float(torch.cuda.device_count())
    return {"CPU": cpus, "GPU": gpus}


def check_resources(cfg: RaydriftConfig, resources: Mapping[str, float], where: str = "the cluster") -> None:
    """Monitors and trainer workers must fit in ``resources`` at the same time.

    Capacity for the update is reserved up front: monitors keep their resources during an update, so
    if they could take what the trainer needs, ``fit()`` would wait forever.
    """
    cpus, gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    mc, tc = cfg.monitor, cfg.train
    need_cpu = mc.num_monitors * mc.num_cpus + tc.num_workers * tc.cpus_per_worker
    need_gpu = mc.num_monitors * mc.num_gpus + (tc.num_workers * tc.gpus_per_worker if tc.use_gpu else 0)
    if need_cpu > cpus + 1e-9:
        raise UserError(
            f"the config needs {need_cpu:g} CPUs ({mc.num_monitors} monitors x {mc.num_cpus:g} + "
            f"{tc.num_workers} train workers x {tc.cpus_per_worker:g}) but {where} has {cpus:g}: "
            "lower monitor.num_cpus, monitor.num_monitors or train.num_workers"
        )
    for key, amount in mc.resources.items():
        have = resources.get(key, 0.0)
        if mc.num_monitors * amount > have + 1e-9:
            raise UserError(
                f"monitor.resources needs {mc.num_monitors * amount:g} '{key}' but {where} offers "
                f"{have:g}: declare it on nodes (ray start --resources) or change monitor.resources"
            )
    if need_gpu > gpus + 1e-9:
        raise UserError(
            f"the config needs {need_gpu:g} GPUs but {where} has {gpus:g}: lower monitor.num_gpus "
            "or set train.use_gpu: false (ray.autoscaling: true if the cluster adds GPU nodes on demand)"
        )
