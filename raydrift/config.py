"""Configuration: schema (pydantic), loading (YAML / TOML), environment and ``--set`` overrides.

Precedence, lowest first: the schema defaults, the config file, ``RAYDRIFT_<SECTION>__<KEY>=value``
environment variables, then ``--set section.key=value`` arguments. Override values are parsed as YAML
scalars (``3`` is an int, ``0.5`` a float, ``true`` a bool, ``[1, 2]`` a list).

Every mistake raises :class:`raydrift.errors.ConfigError` with a one-line message: an unknown key
names the closest valid key; a wrong type names the key, the expected type and the value given.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from raydrift.errors import ConfigError

ENV_PREFIX = "RAYDRIFT_"


#: Largest accepted ``seed``: every seed raydrift derives from it (per update, per worker) stays a valid
#: 32-bit seed for numpy's legacy generators and for River.
MAX_SEED = 2**31 - 1


class _Section(BaseModel):
    # no inf / nan anywhere: "inf CPUs" or an infinite learning rate is a typo, not a setting
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ModelConfig(_Section):
    harness: str = Field("mnist", description="harness registry name or 'package.module:ClassName'")
    checkpoint: str | None = Field(None, description="initial weights (a state_dict saved with torch.save)")
    pretrain_epochs: int = Field(
        2, ge=0, description="epochs on the harness's pretrain data before streaming"
    )
    pretrain_lr: float = Field(1e-3, gt=0)


class StreamConfig(_Section):
    batch_size: int = Field(64, ge=1)
    max_batches: int | None = Field(None, ge=1, description="stop after this many batches")
    prefetch: int = Field(
        32, ge=1, description="batches fetched from the stream reader per call (one object-store chunk of at most 64 MB)"
    )
    max_batches_per_second: float | None = Field(
        None, gt=0, description="serve at most this many batches per second (replay a recorded stream at its pace)"
    )


_BUILTIN_RESOURCES = ("CPU", "GPU", "memory", "object_store_memory")


class MonitorConfig(_Section):
    num_monitors: int = Field(1, ge=1, le=1024, description="monitor actors (each one process holding the model)")
    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    metric: str = Field("accuracy", description="the harness metric that is monitored")
    max_in_flight: int | None = Field(
        None,
        ge=1,
        description="monitor tasks dispatched and not yet evaluated, in all (default: 2 per monitor)",
    )
    batches_per_task: int = Field(
        16,
        ge=1,
        description="consecutive batches one monitor task evaluates (fewer go to an idle monitor): Ray's "
        "per-task cost (~1 ms) is paid once per group; for models that take far longer per batch use 1-2, "
        "since in-flight work is drained at a drift",
    )
    resources: dict[str, float] = Field(
        default_factory=dict,
        description="custom Ray resources each monitor needs, e.g. {monitor_node: 1} (nodes declare them)",
    )
    scheduling: Literal["default", "spread"] = Field(
        "default",
        description="'spread': place monitors on as many nodes as possible (Ray SPREAD); 'default': Ray's policy",
    )
    on_drift: Literal["continue", "pause"] = Field(
        "continue",
        description="while an update trains: 'continue' monitoring with the old weights (no downtime) or "
        "'pause' and re-evaluate the batches after the window with the new weights (deterministic)",
    )

    @field_validator("resources")
    @classmethod
    def _custom_resources(cls, v: dict[str, float]) -> dict[str, float]:
        for key, amount in v.items():
            if key in _BUILTIN_RESOURCES:
                raise ValueError(
                    f"'{key}' is not a custom resource: use monitor.num_cpus / monitor.num_gpus for CPUs and GPUs"
                )
            if amount < 0:
                raise ValueError(f"resource '{key}' needs an amount >= 0, got {amount}")
        return v


class UpdateRegimesConfig(_Section):
    fine_tuning: float | None = Field(
        None, ge=0, description="drift score from which the update is plain fine-tuning on the window (null: never)"
    )
    retrain: float | None = Field(
        None, ge=0, description="drift score from which the model is re-initialised and retrained (null: never)"
    )

    @model_validator(mode="after")
    def _ordered(self) -> UpdateRegimesConfig:
        if self.fine_tuning is not None and self.retrain is not None and self.retrain < self.fine_tuning:
            raise ValueError(
                f"regimes.retrain ({self.retrain}) must be >= regimes.fine_tuning ({self.fine_tuning})"
            )
        return self


class LabelFreeConfig(_Section):
    signal: Literal["none", "confidence", "entropy", "features"] = Field(
        "none", description="per-sample signal tested without labels (the monitors must send it)"
    )
    detector: str = Field("mmd", description="two-sample detector run on the signal: mmd | ks")
    params: dict[str, Any] = Field(default_factory=dict, description="its constructor arguments")
    use: Literal["beside", "instead"] = Field(
        "beside", description="beside the monitored metric's detector, or instead of it"
    )


class DriftDetectionConfig(_Section):
    detector: str = "adwin"
    params: dict[str, Any] = Field(default_factory=dict, description="detector constructor arguments")
    granularity: Literal["sample", "batch", "interval"] = Field(
        "sample",
        description="what the detector is fed: per-sample values, batch means or interval aggregates",
    )
    interval: int = Field(5, ge=1, description="batches per aggregation interval (metrics.csv, plots)")
    aggregation: Literal["mean", "median", "last"] = "mean"
    direction: Literal["degrade", "any"] = Field(
        "degrade", description="'degrade': only a worsening of the metric is a drift"
    )
    warmup_samples: int | None = Field(
        None,
        ge=0,
        description="no alarm before this many samples (null: as many as the detector needs, 0 for most)",
    )
    warmup_batches: int = Field(0, ge=0, description="and none before this many batches (the old warm-up)")
    cooldown_batches: int = Field(
        3, ge=0, description="no alarm for this many batches after an update (a new model version)"
    )
    reset_after_update: bool = True
    regimes: UpdateRegimesConfig = Field(
        default_factory=UpdateRegimesConfig,
        description="drift score thresholds: continual_learning below fine_tuning, fine_tuning below retrain",
    )
    label_free: LabelFreeConfig = Field(default_factory=LabelFreeConfig)


#: The strategy fields the shared schema had before each strategy owned an options model:
#: old key -> (strategy -> its key under ``continual_learning.params``). Old configs keep working: a key
#: of the chosen strategy moves to ``params`` (with a FutureWarning naming the new key); a key of
#: another strategy is dropped (saved run configs hold every old key).
LEGACY_STRATEGY_KEYS: dict[str, dict[str, str]] = {
    "replay_weight": {"replay": "replay_weight", "jvp": "replay_weight"},
    "jvp_lambda": {"jvp": "penalty_weight"},
    "jvp_input_scale": {"jvp": "input_scale"},
    "jvp_sign": {"jvp": "sign"},
    "jvp_penalty": {"jvp": "penalty"},
    "jvp_logit_weight": {"jvp": "logit_weight"},
    "der_alpha": {"der++": "alpha"},
    "der_beta": {"der++": "beta"},
    "ewc_lambda": {"ewc_online": "penalty_weight"},
    "ewc_decay": {"ewc_online": "decay"},
    "ewc_fisher_samples": {"ewc_online": "fisher_samples"},
}


#: Options an old config of a strategy implies (what the strategy did when the old keys existed).
LEGACY_IMPLIED: dict[str, dict[str, Any]] = {"jvp": {"target": "loss"}}

#: The schema default strategy when the old keys existed: an old config that names no strategy ran it.
LEGACY_DEFAULT_STRATEGY = "replay"


def _move_legacy_strategy_keys(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` (a raw ``continual_learning:`` mapping) with the old prefixed keys moved or dropped."""
    import warnings

    old = [k for k in data if k in LEGACY_STRATEGY_KEYS]
    if not old:
        return data
    out = {k: v for k, v in data.items() if k not in LEGACY_STRATEGY_KEYS}
    implied_strategy = "strategy" not in out
    if implied_strategy:  # the schema default was replay when these keys existed: keep what it ran
        out["strategy"] = LEGACY_DEFAULT_STRATEGY
    strategy = str(out["strategy"])
    params = out.get("params")
    params = dict(params) if isinstance(params, Mapping) else {}
    moved, dropped = [], []
    for key in old:
        new = LEGACY_STRATEGY_KEYS[key].get(strategy)
        if new is None:
            dropped.append(key)
            continue
        moved.append(f"'continual_learning.{key}' -> 'continual_learning.params.{new}'")
        params.setdefault(new, data[key])  # an explicit params entry wins
    if moved:
        for key, value in LEGACY_IMPLIED.get(strategy, {}).items():
            if key not in params:
                params[key] = value
                moved.append(f"(implied) 'continual_learning.params.{key}: {value}'")
    if moved or "params" in out:
        out["params"] = params
    if moved and implied_strategy:
        moved.insert(0, f"(implied: the default then) 'continual_learning.strategy: {strategy}'")
    if moved:
        msg = f"old continual_learning keys for strategy '{strategy}': write {', '.join(moved)}"
        if dropped:
            msg += f"; ignored (options of other strategies): {', '.join(dropped)}"
        warnings.warn(msg, FutureWarning, stacklevel=2)
    return out


class ContinualLearningConfig(_Section):
    strategy: str = Field("jvp", description="update strategy: registry name or 'package.module:ClassName'")
    params: dict[str, Any] = Field(
        default_factory=dict,
        description="the strategy's options (its Options model; list them with 'raydrift keys')",
    )
    memory_size: int = Field(500, ge=0, description="replay memory capacity in samples")
    window_batches: int = Field(8, ge=1, description="recent batches trained on (ending at the window's last batch)")
    post_drift_batches: int = Field(
        4, ge=0, description="batches evaluated after a drift (old weights) to complete the window before training"
    )
    memory_policy: Literal["reservoir", "class_balanced"] = Field(
        "reservoir",
        description="replay memory policy: 'reservoir' (uniform over the stream) or 'class_balanced' (CBRS)",
    )
    memory_max_bytes: int | None = Field(
        None, ge=1, description="replay memory bound in bytes (inputs, labels, ids, logits); None: samples only"
    )

    @model_validator(mode="before")
    @classmethod
    def _legacy_keys(cls, data: Any) -> Any:
        return _move_legacy_strategy_keys(data) if isinstance(data, dict) else data


class TrainConfig(_Section):
    num_workers: int = Field(
        1, ge=0, description="Ray Train workers; 0 runs the loop in the trainer's process"
    )
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(1.0, gt=0, description="GPUs per worker when use_gpu (fractional allowed)")
    epochs: int = Field(3, ge=1, description="epochs over the window per update (unless steps is set)")
    steps: int | None = Field(
        None,
        ge=1,
        description="optimizer steps per update, whatever the window's size (the epochs over the window "
        "repeat, the last one cut short, until this many steps ran); null: train.epochs epochs",
    )
    batch_size: int = Field(64, ge=1, description="global batch size of an update step")
    lr: float = Field(1e-3, gt=0)
    max_failures: int = Field(0, ge=0, description="Ray Train FailureConfig.max_failures")
    standing: bool = Field(
        True,
        description="with num_workers >= 1: one Ray Train run per raydrift run serves every update on the "
        "same workers, set up once (false: a fresh TorchTrainer fit() per update); ignored when num_workers is 0",
    )


class AdaptationConfig(_Section):
    until_recovered: bool = Field(
        True,
        description="after a drift's update, train follow-up updates on the newest window + memory while the "
        "monitored metric stays worse than its pre-drift level by more than tolerance",
    )
    tolerance: float = Field(
        0.02, ge=0, description="recovered: the monitored metric back within this of its pre-drift level"
    )
    check_batches: int = Field(
        4, ge=1, description="batches scored with the new weights before each recovery check"
    )
    max_followups: int = Field(2, ge=0, description="follow-up updates per drift at most (the budget)")
    followup_data: Literal["window", "since_drift"] = Field(
        "window",
        description="what a follow-up trains on (+ memory): the newest continual_learning.window_batches like "
        "the first update (window), or every batch since the drift's located change point, at most "
        "max_followup_batches of the newest (since_drift: the post-drift data grows with each follow-up; "
        "for abrupt changes: a gradual one's first post-change batches still hold the old concept)",
    )
    max_followup_batches: int = Field(
        32,
        ge=1,
        description="since_drift: at most this many newest batches (the stream reader keeps them; set "
        "train.steps to bound an update's cost as its data grows)",
    )


class ReliabilityConfig(_Section):
    checkpoints: bool = Field(True, description="write <run_dir>/checkpoint/ for `raydrift run --resume`")
    checkpoint_every_batches: int = Field(
        50, ge=0, description="checkpoint every this many accepted batches (0: only after updates)"
    )
    checkpoint_min_seconds: float = Field(
        5.0,
        ge=0,
        description="and at most once per this many seconds (a fast stream would otherwise spend a "
        "noticeable share of its CPU on checkpoints; 0: every checkpoint_every_batches batches)",
    )
    max_actor_restarts: int = Field(
        3, ge=0, description="times a dead monitor, detector or stream reader is replaced before the run fails"
    )


class PromotionConfig(_Section):
    enabled: bool = Field(True, description="gate new weights on a held-out slice of the window and the memory")
    holdout_batches: int = Field(1, ge=1, description="newest window batches held out of training for the gate")
    tolerance: float = Field(
        0.0, ge=0, description="the new weights may be worse than the current ones on the holdout by this much"
    )
    max_memory_drop: float | None = Field(
        None,
        ge=0,
        description="the new weights may lose at most this much of the monitored metric on the replay memory "
        "(null: not checked; set it when old regimes must keep working, leave it off for concept drift "
        "where old labels are obsolete)",
    )


class LoggingConfig(_Section):
    backend: Literal["mlflow", "wandb", "none"] = Field(
        "mlflow", description="experiment tracking (see docs/tracking.md); 'wandb' needs raydrift[wandb]"
    )
    tracking_uri: str | None = Field(
        None,
        description="MLflow store; default: sqlite:///<runs_dir>/mlflow.db. If it fails, the run goes on "
        "in sqlite:///<runs_dir>/mlflow-fallback.db",
    )
    experiment: str = Field("raydrift", description="MLflow experiment; also the default W&B project")
    wandb_project: str | None = Field(
        None, description="W&B project; default: WANDB_PROJECT, else experiment"
    )
    wandb_entity: str | None = Field(
        None, description="W&B user or team; default: WANDB_ENTITY or your default"
    )
    wandb_mode: Literal["online", "offline", "disabled"] | None = Field(
        None,
        description="default: WANDB_MODE, else online; offline needs no network and writes "
        "<runs_dir>/wandb/offline-run-*/ for a later `wandb sync`",
    )
    runs_dir: str = "runs"
    save_weights: bool = True
    plots: bool = True


_STORAGE_SCHEMES = ("s3", "gs", "file")


class RayConfig(_Section):
    address: str | None = Field(None, description="existing cluster; default: RAY_ADDRESS or a new local one")
    namespace: str = "raydrift"
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a new local cluster (default: all)")
    num_gpus: int | None = Field(None, ge=0)
    autoscaling: bool = Field(
        False, description="the cluster adds nodes on demand: check the request against its node types and their maximum counts (raydrift/feasibility.py) instead of the resources it has now"
    )
    node_ip_address: str = Field(
        "127.0.0.1",
        description="address a local cluster started by raydrift listens on: 127.0.0.1 keeps every Ray "
        "service and the metrics export on this machine; this machine's IP (or 'auto': Ray's choice) opens "
        "it to the network on purpose (docs/cluster.md). Ignored when connecting to a cluster",
    )
    actor_start_timeout_s: float = Field(
        600.0,
        gt=0,
        description="the run fails if its actors are not all up after this many seconds (a request no node "
        "can satisfy would otherwise wait forever); what is still waiting is printed every 30 s (every 5 s, with what the autoscaler reports, when ray.autoscaling is true)",
    )
    include_dashboard: bool = True
    dashboard_host: str = "127.0.0.1"
    dashboard_port: int = Field(8265, ge=1, le=65535)
    storage_path: str | None = Field(
        None,
        description="storage every node reaches, for Train checkpoints and a copy of the run outputs: "
        "a local or NFS path, s3://bucket/prefix or gs://bucket/prefix; default: the run directory",
    )

    @field_validator("node_ip_address")
    @classmethod
    def _node_ip(cls, v: str) -> str:
        import ipaddress

        if v in ("auto", "localhost"):
            return "127.0.0.1" if v == "localhost" else v
        try:
            ipaddress.ip_address(v)
        except ValueError:
            raise ValueError("an IP address (127.0.0.1 for this machine only) or 'auto'") from None
        return v

    @field_validator("storage_path")
    @classmethod
    def _storage_scheme(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if not v.strip():
            raise ValueError("an empty path: give a directory, s3://bucket/prefix or gs://bucket/prefix")
        scheme, sep, _ = v.partition("://")
        if sep and scheme.lower() not in _STORAGE_SCHEMES:
            raise ValueError(
                f"unsupported scheme '{scheme}://': use a local path, {', '.join(s + '://' for s in _STORAGE_SCHEMES)}"
            )
        return v


class RaydriftConfig(BaseModel):
    """The whole configuration of a run."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    name: str = Field("raydrift", description="run name: runs/<name>-<timestamp>/")
    seed: int = Field(0, ge=0, le=MAX_SEED, description=f"base seed of every random choice (0 to {MAX_SEED})")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    verbosity: int = Field(1, ge=0, le=3)
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: dict[str, Any] = Field(default_factory=dict, description="harness options (its Options model)")
    stream: StreamConfig = Field(default_factory=StreamConfig)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    drift_detection: DriftDetectionConfig = Field(default_factory=DriftDetectionConfig)
    continual_learning: ContinualLearningConfig = Field(default_factory=ContinualLearningConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    promotion: PromotionConfig = Field(default_factory=PromotionConfig)
    adaptation: AdaptationConfig = Field(default_factory=AdaptationConfig)
    reliability: ReliabilityConfig = Field(default_factory=ReliabilityConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    ray: RayConfig = Field(default_factory=RayConfig)

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not v or any(c in v for c in "/\\") or v.startswith("."):
            raise ValueError("a name without '/' or a leading '.'")
        return v

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# Sections whose values are free-form dicts: keys below them are not checked against the schema here.
_FREE_FORM = {
    ("data",),
    ("drift_detection", "params"),
    ("drift_detection", "label_free", "params"),
    ("continual_learning", "params"),
}


def _is_legacy(key: str) -> bool:
    section, _, leaf = key.partition(".")
    return section == "continual_learning" and leaf in LEGACY_STRATEGY_KEYS


def _is_free_form(key: str) -> bool:
    parts = tuple(key.split("."))
    return any(parts[: len(prefix)] == prefix and len(parts) > len(prefix) for prefix in _FREE_FORM)


# ---------------------------------------------------------------------------------------------------
# loading


def parse_scalar(text: str) -> Any:
    """Parse an override value as a YAML scalar (``3`` -> 3, ``true`` -> True, ``a`` -> 'a')."""
    try:
        return yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text


def read_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The raw mapping in a YAML (``.yaml``/``.yml``) or TOML (``.toml``) config file."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config file '{p}' not found: check the path (examples are in configs/)")
    if p.is_dir():
        raise ConfigError(f"config path '{p}' is a directory: give a .yaml or .toml file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file '{p}' is not a text file (byte {exc.start} is not UTF-8): give a YAML or TOML file"
        ) from None
    except OSError as exc:
        raise ConfigError(f"config file '{p}' cannot be read ({exc.strerror or exc}): check its permissions") from None
    if "\x00" in text:
        raise ConfigError(f"config file '{p}' is not a text file (it holds NUL bytes): give a YAML or TOML file")
    try:
        if p.suffix.lower() == ".toml":
            data = tomllib.loads(text)
        else:
            data = yaml.safe_load(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file '{p}' is not valid TOML: {exc}") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "syntax error"
        raise ConfigError(f"config file '{p}' is not valid YAML{where}: {problem}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{p}' must hold a mapping of sections, got {type(data).__name__}")
    return data


def env_overrides(environ: Mapping[str, str] | None = None) -> list[tuple[str, Any]]:
    """``(dotted_key, value)`` pairs from ``RAYDRIFT_<SECTION>__<KEY>=value`` variables.

    ``RAYDRIFT_SEED=3`` sets a top-level key. Variables whose first part names no config key are
    ignored (they may be meant for something else); a known section with an unknown key is an error.
    """
    environ = os.environ if environ is None else environ
    top = set(RaydriftConfig.model_fields)
    out = []
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX):
            continue
        parts = name[len(ENV_PREFIX) :].lower().split("__")
        if parts[0] not in top:
            continue
        out.append((".".join(parts), parse_scalar(environ[name])))
    return out


def set_overrides(items: Sequence[str]) -> list[tuple[str, Any]]:
    """``(dotted_key, value)`` pairs from ``--set section.key=value`` arguments."""
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set '{item}' is not of the form section.key=value (e.g. --set seed=1)")
        out.append((key.strip(), parse_scalar(value)))
    return out


def _apply(data: dict[str, Any], dotted: str, value: Any, source: str) -> None:
    parts = dotted.split(".")
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        elif not isinstance(child, dict):
            raise ConfigError(
                f"{source}: '{'.'.join(parts[: i + 1])}' is a value, not a section; cannot set '{dotted}'"
            )
        node = child
    node[parts[-1]] = value


def _schema_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        full = f"{prefix}{name}"
        keys.append(full)
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys.extend(_schema_keys(ann, f"{full}."))
    return keys


def closest_key(key: str, valid: Sequence[str]) -> str | None:
    """The valid key closest to ``key`` (same section preferred), or None."""
    section, _, leaf = key.rpartition(".")
    # the same leaf in another section first (e.g. 'num_monitors' put under 'train' or at the top)
    for k in valid:
        if k != key and k.rpartition(".")[2] == leaf:
            return k
    siblings = [k for k in valid if k.rpartition(".")[0] == section]
    for pool in (siblings, list(valid)):
        match = difflib.get_close_matches(key, pool, n=1, cutoff=0.6)
        if match:
            return match[0]
    return None


_TYPE_WORDS = {
    "int": "an integer",
    "float": "a number",
    "bool": "a boolean (true/false)",
    "string": "a string",
    "str": "a string",
    "dict": "a mapping",
    "list": "a list",
}


def _expected(err: Mapping[str, Any]) -> str:
    etype = str(err.get("type", ""))
    ctx = err.get("ctx") or {}
    if etype == "literal_error":
        return f"one of {ctx.get('expected', '')}"
    for word, text in _TYPE_WORDS.items():
        if etype.startswith(word):
            return text
    if etype.startswith("model") or etype == "dict_type":
        return "a mapping (section)"
    if "ge" in ctx:
        return f"a value >= {ctx['ge']}"
    if "gt" in ctx:
        return f"a value > {ctx['gt']}"
    if "le" in ctx:
        return f"a value <= {ctx['le']}"
    return str(err.get("msg", "a valid value"))


def format_validation_error(
    exc: ValidationError, valid_keys: Sequence[str], origin: str = "config", loc_prefix: tuple[str, ...] = ()
) -> str:
    """One line for the first error of a pydantic ``ValidationError``."""
    errors = exc.errors()
    err = errors[0]
    loc = ".".join(str(p) for p in (*loc_prefix, *err["loc"]))
    more = f" (and {len(errors) - 1} more error(s))" if len(errors) > 1 else ""
    if err["type"] == "extra_forbidden":
        close = closest_key(loc, valid_keys)
        hint = f"did you mean '{close}'?" if close else "list the valid keys with 'raydrift keys'"
        return f"{origin}: unknown key '{loc}': {hint}{more}"
    value = err.get("input")
    if err["type"] in ("value_error", "assertion_error"):
        return f"{origin}: '{loc}' = {value!r} is invalid: {err['msg'].removeprefix('Value error, ')}{more}"
    return f"{origin}: '{loc}' expects {_expected(err)}, got {value!r} ({type(value).__name__}){more}"


def build_config(
    path: str | os.PathLike[str] | None = None,
    overrides: Sequence[str] = (),
    environ: Mapping[str, str] | None = None,
) -> RaydriftConfig:
    """Load, merge and validate: defaults < file < environment < ``--set`` overrides."""
    data: dict[str, Any] = read_config_file(path) if path is not None else {}
    origin = str(path) if path is not None else "config"
    empty_file = path is not None and not data
    valid = _schema_keys(RaydriftConfig)
    for source, pairs in (("environment", env_overrides(environ)), ("--set", set_overrides(overrides))):
        for key, value in pairs:
            if key not in valid and not _is_free_form(key) and not _is_legacy(key):
                close = closest_key(key, valid)
                hint = f"did you mean '{close}'?" if close else "list the valid keys with 'raydrift keys'"
                name = f"{ENV_PREFIX}{key.upper().replace('.', '__')}" if source == "environment" else key
                raise ConfigError(f"{source}: unknown key '{name}': {hint}")
            _apply(data, key, value, source)
    if empty_file and not data:
        raise ConfigError(
            f"config file '{path}' is empty: write the sections to change (e.g. copy configs/mnist.yaml); "
            "an empty file would silently run the whole default job"
        )
    try:
        cfg = RaydriftConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, valid, origin)) from None
    return cfg


def validate_harness_options(cfg: RaydriftConfig) -> Any:
    """Validate ``data:`` against the harness's ``Options`` model; returns the options object."""
    from raydrift.harness import resolve_harness

    cls = resolve_harness(cfg.model.harness)
    try:
        return cls.Options.model_validate(cfg.data)
    except ValidationError as exc:
        valid = [f"data.{k}" for k in _schema_keys(cls.Options)]
        msg = format_validation_error(exc, valid, f"harness '{cfg.model.harness}'", loc_prefix=("data",))
        raise ConfigError(msg) from None


def validate_strategy_options(cfg: RaydriftConfig) -> Any:
    """Validate ``continual_learning.params`` against the strategy's ``Options`` model; returns the
    options object (raises a one-line :class:`ConfigError`)."""
    from raydrift.learning.strategies import resolve_strategy

    cl = cfg.continual_learning
    return resolve_strategy(cl.strategy).options_from(cl.params, cl.strategy)


def all_keys() -> list[str]:
    """Every valid dotted key of the schema (for ``raydrift validate --keys``)."""
    return _schema_keys(RaydriftConfig)


def save_config(cfg: RaydriftConfig, path: str | os.PathLike[str]) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")
