"""River's synthetic generators as a labelled drift stream: regimes are generator parameters.

Each regime is one River generator (``river.datasets.synth``) with its own parameters: an SEA
``variant``, an Agrawal ``classification_function``, a RandomRBF ``seed_model``, a Friedman
``concept``, ... A regime with ``width: 0`` starts abruptly; with ``width: w`` the change from the
previous regime is gradual, drawn with River's ``ConceptDriftStream`` (a sigmoid of width ``w`` samples
centred ``w / 2`` samples into the regime). The regime id of a batch is the schedule's (it switches
at the first batch of the transition).

Features are encoded for an MLP: numeric ones standardised with the mean and standard deviation of a
fixed sample of regime 0, categorical ones (Agrawal's ``elevel``, ``car``, ``zipcode``; STAGGER's
``size``, ``color``, ``shape``) one-hot. A regression target (``friedman``) is standardised the same
way; its metrics are the squared error ``se`` and the absolute error ``ae`` (lower is better).

The raw River samples stay available (:meth:`RiverStreamHarness.raw_stream`) so that a River
learner can be run prequentially on exactly the samples the stream serves (``benchmarks/closed_loop.py``).

Examples
--------
>>> from harnesses.river_stream import RiverStreamHarness
>>> h = RiverStreamHarness({"generator": "sea", "regime_batches": 2}, seed=0, batch_size=8)
>>> [(b.regime, tuple(b.x.shape)) for b in h.stream()][::2]
[(0, (8, 3)), (1, (8, 3)), (2, (8, 3))]
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from raydrift.harness import Batch, Harness

Sample = tuple[dict[Any, Any], float]
"""One raw River sample: the feature dict and the label (class id or regression target)."""

ParamValue = int | float | str | bool


# ---------------------------------------------------------------------------------------------------
# generators


def _friedman(concept: int = 0, seed: int | None = None) -> Any:
    """Friedman #1 (``concept: 0``) or one of the two feature swaps of River's ``FriedmanDrift``.

    ``FriedmanDrift(drift_type='gsg')`` with its change points at 0 and 10**9 is concept 1 from its
    first sample; with change points (0, 1) concept 2 from its second (the first sample is concept 1).
    """
    from river.datasets import synth

    if concept == 0:
        return synth.FriedmanDrift("gra", position=(10**9, 10**9 + 1), seed=seed)
    if concept == 1:
        return synth.FriedmanDrift("gsg", position=(0, 10**9), transition_window=0, seed=seed)
    if concept == 2:
        return synth.FriedmanDrift("gsg", position=(0, 1), transition_window=0, seed=seed)
    raise ValueError(f"friedman concept must be 0, 1 or 2, got {concept}")


def _synth(name: str) -> Callable[..., Any]:
    def make(**kwargs: Any) -> Any:
        from river.datasets import synth

        return getattr(synth, name)(**kwargs)

    return make


@dataclass(frozen=True)
class GeneratorSpec:
    """How to build one River generator and encode its samples."""

    factory: Callable[..., Any]
    task: Literal["classification", "regression"]
    default_regimes: list[dict[str, ParamValue]]
    """The parameters of each regime when the config gives none."""
    concept_key: str
    """The parameter that names a regime (``variant``, ``classification_function``, ...)."""
    seed_arg: str = "seed"
    """The constructor argument that seeds the sample draws."""
    categorical: dict[str, list[int]] = field(default_factory=dict)
    """Feature name -> its category values (one-hot encoded)."""
    num_classes: Callable[[dict[str, ParamValue]], int] = lambda params: 2


GENERATORS: dict[str, GeneratorSpec] = {
    "sea": GeneratorSpec(_synth("SEA"), "classification", [{"variant": 0}, {"variant": 2}, {"variant": 3}], "variant"),
    "agrawal": GeneratorSpec(
        _synth("Agrawal"),
        "classification",
        [{"classification_function": f} for f in (0, 2, 4)],
        "classification_function",
        categorical={"elevel": list(range(5)), "car": list(range(1, 21)), "zipcode": list(range(9))},
    ),
    "sine": GeneratorSpec(
        _synth("Sine"), "classification", [{"classification_function": f} for f in (0, 1, 2)], "classification_function"
    ),
    "stagger": GeneratorSpec(
        _synth("STAGGER"),
        "classification",
        [{"classification_function": f} for f in (0, 1, 2)],
        "classification_function",
        categorical={k: [0, 1, 2] for k in ("size", "color", "shape")},
    ),
    "mixed": GeneratorSpec(
        _synth("Mixed"), "classification", [{"classification_function": f} for f in (0, 1, 0)], "classification_function"
    ),
    "rbf": GeneratorSpec(
        _synth("RandomRBF"),
        "classification",
        [{"seed_model": s} for s in (1, 2, 3)],
        "seed_model",
        seed_arg="seed_sample",
        num_classes=lambda params: int(params.get("n_classes", 2)),
    ),
    "friedman": GeneratorSpec(_friedman, "regression", [{"concept": c} for c in (0, 1, 2)], "concept"),
}
"""The generators a ``data.generator`` can name."""


def derived_seed(seed: int, *keys: int) -> int:
    """A 31-bit seed for River's ``random.Random`` from ``(seed, *keys)``: one per purpose."""
    return int(np.random.default_rng([seed & 0xFFFFFFFF, *keys]).integers(0, 2**31 - 1))


# ---------------------------------------------------------------------------------------------------
# options


class RegimeSpec(BaseModel):
    """One regime of the schedule."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(None, description="shown in reports (default: <generator>-<concept parameter>)")
    params: dict[str, ParamValue] = Field(default_factory=dict, description="the generator's constructor arguments")
    width: int = Field(
        0, ge=0, description="samples of a gradual change from the previous regime (ConceptDriftStream); 0: abrupt"
    )


class RiverStreamOptions(BaseModel):
    """The ``data:`` section of a config with ``model.harness: river``."""

    model_config = ConfigDict(extra="forbid")

    generator: Literal["sea", "agrawal", "sine", "stagger", "mixed", "rbf", "friedman"] = Field(
        "sea", description="the river.datasets.synth generator (friedman: regression)"
    )
    regimes: list[RegimeSpec] | None = Field(
        None, min_length=1, description="the schedule, in order (default: three concepts of the generator)"
    )
    regime_batches: int = Field(25, ge=1, description="stream batches per regime")
    test_size: int = Field(1000, ge=1, description="held-out samples per regime")
    pretrain_size: int = Field(1000, ge=0, description="regime-0 samples to pre-train on (0: none)")
    stats_size: int = Field(2000, ge=2, description="regime-0 samples the standardisation is estimated on")
    hidden: int = Field(64, ge=1, description="units of each hidden layer of the MLP")
    layers: int = Field(2, ge=1, description="hidden layers of the MLP")

    @model_validator(mode="after")
    def _buildable(self) -> RiverStreamOptions:
        spec = GENERATORS[self.generator]
        for i, regime in enumerate(self.schedule()):
            if i == 0 and regime.width:
                raise ValueError("regimes[0].width must be 0: the first regime has no previous one")
            try:
                gen = spec.factory(**{**regime.params, spec.seed_arg: 0})
                next(iter(gen))
            except (TypeError, ValueError, KeyError, IndexError) as exc:
                raise ValueError(f"regimes[{i}].params {regime.params} for {self.generator}: {exc}") from None
        return self

    def schedule(self) -> list[RegimeSpec]:
        """The regimes: the configured ones or the generator's defaults."""
        if self.regimes is not None:
            return list(self.regimes)
        return [RegimeSpec(params=dict(p)) for p in GENERATORS[self.generator].default_regimes]


# ---------------------------------------------------------------------------------------------------
# encoding


@dataclass
class FeatureEncoder:
    """River feature dicts -> float32 rows: numeric standardised, categorical one-hot."""

    keys: list[Any]
    categorical: dict[str, list[int]]
    mean: np.ndarray
    std: np.ndarray
    """Mean and std of each numeric key (in ``keys`` order, categorical keys skipped)."""

    @classmethod
    def fit(cls, samples: list[Sample], categorical: dict[str, list[int]]) -> FeatureEncoder:
        keys = list(samples[0][0])
        numeric = [k for k in keys if k not in categorical]
        values = np.array([[float(x[k]) for k in numeric] for x, _ in samples], dtype=np.float64)
        std = values.std(axis=0)
        return cls(keys, categorical, values.mean(axis=0), np.where(std > 1e-12, std, 1.0))

    @property
    def width(self) -> int:
        return sum(len(self.categorical[k]) if k in self.categorical else 1 for k in self.keys)

    def __call__(self, samples: list[Sample]) -> torch.Tensor:
        out = np.zeros((len(samples), self.width), dtype=np.float32)
        for row, (x, _) in enumerate(samples):
            col, num = 0, 0
            for k in self.keys:
                if k in self.categorical:
                    cats = self.categorical[k]
                    out[row, col + cats.index(int(x[k]))] = 1.0
                    col += len(cats)
                else:
                    out[row, col] = (float(x[k]) - self.mean[num]) / self.std[num]
                    col, num = col + 1, num + 1
        return torch.from_numpy(out)


# ---------------------------------------------------------------------------------------------------
# harness


class RiverStreamHarness(Harness):
    """A River generator under a drift schedule; an MLP sized from the encoded features.

    Parameters
    ----------
    options
        :class:`RiverStreamOptions` (or a mapping validated into one); default options when None.
    seed
        Fixes every draw (stream, test sets, pre-training data, standardisation) and the initial weights.
    batch_size
        Samples per stream batch.
    """

    name: ClassVar[str] = "river"
    Options: ClassVar[type[BaseModel]] = RiverStreamOptions

    def __init__(
        self, options: BaseModel | Mapping[str, Any] | None = None, seed: int = 0, batch_size: int = 64
    ) -> None:
        if options is None:
            opts = RiverStreamOptions()
        elif isinstance(options, RiverStreamOptions):
            opts = options
        else:
            data = options.model_dump() if isinstance(options, BaseModel) else dict(options)
            opts = RiverStreamOptions.model_validate(data)
        super().__init__(opts, seed=seed, batch_size=batch_size)
        self.opts: RiverStreamOptions = opts
        self.regimes = opts.schedule()
        self.regression = self.spec.task == "regression"
        if self.regression:
            # per instance: which metrics exist depends on the generator (the domains of se and ae are
            # the default, real)
            self.metric_directions = {"se": False, "ae": False}  # type: ignore[misc]
        self._encoder: FeatureEncoder | None = None
        self._target: tuple[float, float] = (0.0, 1.0)

    @property
    def spec(self) -> GeneratorSpec:
        """The generator's entry in :data:`GENERATORS` (looked up, not stored: the harness pickles)."""
        return GENERATORS[self.opts.generator]

    # --- generators ------------------------------------------------------------------------------
    def generator(self, regime: int, *keys: int) -> Any:
        """Regime ``regime``'s River generator, its draws seeded from ``(seed, *keys)``."""
        params = {**self.regimes[regime].params, self.spec.seed_arg: derived_seed(self.seed, *keys)}
        return self.spec.factory(**params)

    def draw(self, regime: int, n: int, *keys: int) -> list[Sample]:
        """``n`` raw samples of ``regime``'s pure concept."""
        return _take(self.generator(regime, *keys), n)

    def regime_samples(self, regime: int) -> list[Sample]:
        """The stream's raw samples of ``regime``, in order (a gradual start mixes in the previous one)."""
        n = self.opts.regime_batches * self.batch_size
        width = self.regimes[regime].width
        if regime == 0 or width == 0:
            return self.draw(regime, n, 2, regime)
        from river.datasets.synth import ConceptDriftStream

        mixed = ConceptDriftStream(
            stream=self.generator(regime - 1, 2, regime, 0),
            drift_stream=self.generator(regime, 2, regime, 1),
            position=max(1, width // 2),
            width=width,
            seed=derived_seed(self.seed, 2, regime, 2),
        )
        return _take(mixed, n)

    def raw_stream(self) -> Iterator[tuple[int, list[Sample]]]:
        """``(regime, raw samples)`` per stream batch: exactly the samples :meth:`stream` serves."""
        for regime in range(len(self.regimes)):
            samples = self.regime_samples(regime)
            for start in range(0, len(samples), self.batch_size):
                yield regime, samples[start : start + self.batch_size]

    def raw_pretrain(self) -> list[Sample]:
        """The raw samples :meth:`pretrain_data` encodes."""
        return self.draw(0, self.opts.pretrain_size, 1)

    # --- encoding --------------------------------------------------------------------------------
    def encoder(self) -> FeatureEncoder:
        """The feature encoder, fitted on ``stats_size`` samples of regime 0 (cached)."""
        if self._encoder is None:
            stats = self.draw(0, self.opts.stats_size, 4)
            self._encoder = FeatureEncoder.fit(stats, self.spec.categorical)
            if self.regression:
                ys = np.array([y for _, y in stats], dtype=np.float64)
                self._target = (float(ys.mean()), float(ys.std()) or 1.0)
        return self._encoder

    def target(self, y: float) -> float:
        """The label as the model sees it: a class id, or the standardised regression target."""
        self.encoder()
        if self.regression:
            mu, sd = self._target
            return (float(y) - mu) / sd
        return y

    def encode(self, samples: list[Sample]) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw samples -> ``(x float32, y)``: ``y`` int64 class ids, or float32 standardised targets."""
        x = self.encoder()(samples)
        if self.regression:
            return x, torch.tensor([self.target(y) for _, y in samples], dtype=torch.float32)
        return x, torch.tensor([int(y) for _, y in samples], dtype=torch.int64)

    # --- model -----------------------------------------------------------------------------------
    @property
    def num_outputs(self) -> int:
        """Output units: the classes (the largest over the regimes), or 1 for regression."""
        if self.regression:
            return 1
        return max(self.spec.num_classes(r.params) for r in self.regimes)

    def build_model(self) -> nn.Module:
        """A fresh MLP ``features -> hidden x layers -> outputs`` (ReLU) initialised from ``self.seed``."""
        width, h = self.encoder().width, self.opts.hidden
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            mods: list[nn.Module] = []
            for i in range(self.opts.layers):
                mods += [nn.Linear(width if i == 0 else h, h), nn.ReLU()]
            return nn.Sequential(*mods, nn.Linear(h, self.num_outputs))

    def loss(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.regression:
            return nn.functional.mse_loss(outputs.reshape(-1), y.reshape(-1).to(outputs.dtype))
        return super().loss(outputs, y)

    def metrics(self, outputs: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.regression:
            err = outputs.reshape(-1) - y.reshape(-1).to(outputs.dtype)
            return {"se": err.square(), "ae": err.abs()}
        return super().metrics(outputs, y)

    # --- data ------------------------------------------------------------------------------------
    def regime_names(self) -> dict[int, str]:
        key = self.spec.concept_key
        names = {}
        for i, r in enumerate(self.regimes):
            default = f"{self.opts.generator}-{r.params.get(key, i)}" + (f"-gradual{r.width}" if r.width else "")
            names[i] = r.name or default
        return names

    def pretrain_data(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``pretrain_size`` samples of regime 0 (None when it is 0)."""
        if self.opts.pretrain_size == 0:
            return None
        return self.encode(self.raw_pretrain())

    def stream(self) -> Iterator[Batch]:
        """``regime_batches`` batches of ``batch_size`` samples per regime, regimes in order."""
        for regime, samples in self.raw_stream():
            x, y = self.encode(samples)
            yield Batch(x, y, regime)

    def test_sets(self) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """``test_size`` fresh samples of each regime's pure concept."""
        return {r: self.encode(self.draw(r, self.opts.test_size, 3, r)) for r in range(len(self.regimes))}


def _take(gen: Any, n: int) -> list[Sample]:
    out: list[Sample] = []
    for x, y in gen:
        if len(out) >= n:
            break
        out.append((x, y))
    return out


__all__ = ["GENERATORS", "FeatureEncoder", "RegimeSpec", "RiverStreamHarness", "RiverStreamOptions"]
