"""The harness: the one interface a user implements for their model and stream.

A harness tells raydrift how to build the model, its loss, its per-sample metrics, the optimizer used
for updates, the labelled stream (batches tagged with a regime id) and a held-out test set per regime.
It is named in the config by registry name (``mnist``) or by dotted path (``mypkg.module:MyHarness``).
See ``docs/model_harness.md``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from raydrift.registry import resolve


@dataclass
class Batch:
    """One labelled batch of the stream.

    ``regime`` is the id of the distribution the batch was drawn from. It is ground truth used for
    reporting only (regime boundaries on plots, the accuracy matrix); detection never reads it.
    """

    x: torch.Tensor
    y: torch.Tensor
    regime: int


class NoOptions(BaseModel):
    """Options model of a harness that takes no ``data:`` options."""

    model_config = ConfigDict(extra="forbid")


class Harness:
    """Base class of every harness.

    Subclasses set ``name`` (their registry name), optionally ``Options`` (a pydantic model of the
    config's ``data:`` section, validated with the same error messages as the rest of the config),
    and implement :meth:`build_model`, :meth:`stream` and :meth:`test_sets`. Everything else has a
    default for classification.

    A harness must be deterministic given ``seed``: the same seed gives the same stream, the same
    initial model and the same test sets. It is constructed once in every process that needs it
    (driver, stream reader, each monitor, each trainer worker), so keep ``__init__`` cheap and load
    data lazily.
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type[BaseModel]] = NoOptions
    #: metric name -> True if higher is better. Every name here is produced by :meth:`metrics`.
    metric_directions: ClassVar[dict[str, bool]] = {"accuracy": True, "loss": False}
    #: metric name -> the values it takes: ``binary`` (0/1, e.g. per-sample correctness),
    #: ``probability`` (in [0, 1]) or ``real`` (any real number, e.g. a loss). Drift detectors declare
    #: what they can take (``raydrift detectors``); a mismatch is a config error. A metric not listed
    #: here counts as ``real``; the built-in ``accuracy`` and ``loss`` as ``binary`` and ``real``.
    metric_domains: ClassVar[dict[str, str]] = {"accuracy": "binary", "loss": "real"}

    def __init__(self, options: BaseModel | None = None, seed: int = 0, batch_size: int = 64) -> None:
        self.options = options if options is not None else self.Options()
        self.seed = seed
        self.batch_size = batch_size

    @classmethod
    def metric_domain(cls, metric: str) -> str:
        """The domain of ``metric``: :attr:`metric_domains`, else the built-in default (``real``)."""
        from raydrift.detection.domains import default_metric_domain

        return cls.metric_domains.get(metric, default_metric_domain(metric))

    # --- model -------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        """A fresh model, initialised deterministically from ``self.seed``."""
        raise NotImplementedError

    def loss(self, outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Mean training loss of a batch (a scalar). Default: cross-entropy."""
        return nn.functional.cross_entropy(outputs, y)

    def metrics(self, outputs: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-sample metric values, one 1-D tensor of length ``len(y)`` per name.

        Default for classification: ``accuracy`` (1.0 if the argmax is right) and ``loss``
        (per-sample cross-entropy).
        """
        return {
            "accuracy": (outputs.argmax(dim=1) == y).float(),
            "loss": nn.functional.cross_entropy(outputs, y, reduction="none"),
        }

    def build_optimizer(self, params: Any, lr: float) -> torch.optim.Optimizer:
        """Optimizer for updates and pre-training. Default: Adam."""
        return torch.optim.Adam(params, lr=lr)

    # --- data --------------------------------------------------------------------------------
    def pretrain_data(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Labelled data the initial model is trained on before the stream starts.

        Return ``None`` when the model comes trained (``model.checkpoint``) or needs no training.
        """
        return None

    def stream(self) -> Iterator[Batch]:
        """The labelled stream, batch by batch, in order (``self.batch_size`` samples per batch).

        Must be deterministic given ``self.seed``. The stream ends when the iterator does (or at
        ``stream.max_batches``).
        """
        raise NotImplementedError

    def test_sets(self) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """Held-out test set per regime id: ``{regime: (x, y)}``. Used for reporting only."""
        raise NotImplementedError

    def regime_names(self) -> dict[int, str]:
        """Human-readable regime names for reports. Default: ``regime-<id>``."""
        return {}


HARNESS_REGISTRY: dict[str, str] = {
    "cifar": "harnesses.cifar:CIFARHarness",
    "mnist": "harnesses.mnist:MNISTHarness",
    "river": "harnesses.river_stream:RiverStreamHarness",
    "synthetic": "harnesses.synthetic:GaussianDriftHarness",
}
"""Registry name -> dotted path. A new harness is one file plus one entry here."""


def resolve_harness(spec: str) -> type[Harness]:
    """The harness class named by ``spec``: a registry name or ``package.module:ClassName``."""
    return resolve(spec, HARNESS_REGISTRY, Harness, "harness", base_name="raydrift.Harness")


def build_harness(spec: str, options: dict[str, Any] | None, seed: int, batch_size: int) -> Harness:
    """Resolve ``spec``, validate its options and construct it (used in every Ray process)."""
    cls = resolve_harness(spec)
    return cls(cls.Options.model_validate(options or {}), seed=seed, batch_size=batch_size)
