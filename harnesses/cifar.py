"""CIFAR-10 under CIFAR-10-C-style corruptions and class-prior shifts; a ViT or a small ResNet.

Every regime is CIFAR-10 seen through one corruption at one severity (``gaussian_noise_3``,
``contrast_5``, ...), through a shift of the class prior (``classes_0-4``, ``longtail_10``) or both
(``contrast_4+classes_5-9``). A model pre-trained on regime 0 loses accuracy at each change; the
monitors detect it and the updates repair it.

Two data sources:

- ``torchvision`` (default): CIFAR-10 (50,000 train / 10,000 test images) via
  ``torchvision.datasets.CIFAR10``, downloaded into ``root`` when ``download`` is true. Offline,
  place ``cifar-10-python.tar.gz`` or its extracted ``cifar-10-batches-py/`` folder in ``root``.
- ``synthetic``: a CIFAR-shaped data set (uint8 ``3x32x32`` images, 10 classes) generated from the
  seed in about a second, with no files: each class is a coloured low-frequency pattern plus an
  oriented grating, seen with random shifts, contrast and nuisance texture. A small model learns it
  to high accuracy in a few epochs on a CPU; for tests and offline demos.

Three models (``model``):

- ``vit_b_16``: torchvision's ViT-B/16. The 32x32 images are resized to ``image_size`` (224) and
  re-standardised with the ImageNet statistics *inside the model*, so the stream and the object store
  carry 32x32 images. Pre-trained weights come only from a local file (``pretrained_weights``);
  nothing is downloaded.
- ``small_vit``: a 4-layer ViT on 4x4 patches of the 32x32 image (about 0.2M parameters).
- ``resnet_small``: a 3-stage ResNet (16/32/64 channels, GroupNorm) of about 0.2M parameters.

``precision: bf16`` runs the forward pass under ``torch.autocast("cuda", dtype=torch.bfloat16)``
(inside the model, on CUDA inputs only; the parameters and the logits stay float32).

Examples
--------
>>> from harnesses.cifar import CIFARHarness
>>> h = CIFARHarness({"source": "synthetic", "regimes": ["clean", "contrast_5"], "regime_batches": 2,
...                   "synthetic_train": 200, "synthetic_test": 50}, seed=0, batch_size=8)
>>> [(b.regime, tuple(b.x.shape)) for b in h.stream()]
[(0, (8, 3, 32, 32)), (0, (8, 3, 32, 32)), (1, (8, 3, 32, 32)), (1, (8, 3, 32, 32))]
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from raydrift.errors import UserError
from raydrift.harness import Batch, Harness

NUM_CLASSES = 10
CLASS_NAMES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

#: corruption -> its parameter at severities 1..5. Gaussian noise (sigma), contrast (factor) and
#: JPEG (quality) use CIFAR-10-C's values; blur sigmas and brightness shifts are a little stronger
#: than CIFAR-10-C's so that severity 1 already changes the images measurably.
CORRUPTIONS: dict[str, tuple[float, ...]] = {
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
    "gaussian_blur": (0.5, 0.75, 1.0, 1.25, 1.5),
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
    "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),
    "jpeg": (80, 65, 58, 50, 40),
}

REGIME_FORMS = (
    "clean, <corruption>_<severity 1-5> (corruptions: "
    + ", ".join(CORRUPTIONS)
    + "), classes_<a>-<b> (only classes a..b), longtail_<ratio> (class k has prior ~ ratio^(-k/9)); "
    "join a corruption and a prior with '+', e.g. contrast_4+classes_0-4"
)
"""The regime names :func:`parse_regime` understands (for error messages and docs)."""

DEFAULT_REGIMES = [
    "clean",
    "gaussian_blur_3",
    "contrast_5",
    "gaussian_noise_5+classes_0-4",
    "jpeg_5+longtail_10",
]


# ---------------------------------------------------------------------------------------------------
# corruptions (images in [0, 1], shape (N, 3, H, W), float32)


def gaussian_noise(x: torch.Tensor, sigma: float, gen: torch.Generator) -> torch.Tensor:
    """Additive white Gaussian noise of standard deviation ``sigma``, clipped to [0, 1]."""
    noise = torch.randn(x.shape, generator=gen, dtype=x.dtype)
    return (x + sigma * noise).clamp_(0.0, 1.0)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """A separable Gaussian blur of standard deviation ``sigma`` pixels (reflected borders)."""
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    c = x.shape[1]
    out = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(out, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    out = F.conv2d(out, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return out.clamp_(0.0, 1.0)


def contrast(x: torch.Tensor, factor: float) -> torch.Tensor:
    """Pull every pixel towards its image's mean by ``factor`` (CIFAR-10-C's contrast)."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * factor + mean).clamp_(0.0, 1.0)


def brightness(x: torch.Tensor, shift: float) -> torch.Tensor:
    """Raise the HSV value (the max over channels) of every pixel by ``shift``, keeping hue and
    saturation (CIFAR-10-C's brightness, in closed form)."""
    v = x.amax(dim=1, keepdim=True)
    scale = (v + shift).clamp(max=1.0) / v.clamp(min=1e-6)
    return torch.where(v > 1e-6, x * scale, x + shift).clamp_(0.0, 1.0)


def _dct_matrix(n: int = 8) -> torch.Tensor:
    k = torch.arange(n, dtype=torch.float64)
    m = torch.cos(math.pi * (2 * k[None, :] + 1) * k[:, None] / (2 * n)) * math.sqrt(2.0 / n)
    m[0] /= math.sqrt(2.0)
    return m.float()


_DCT8 = _dct_matrix(8)
# The JPEG standard's (Annex K) luminance and chrominance quantisation tables.
_Q_LUMA = torch.tensor(
    [
        [16, 11, 10, 16, 24, 40, 51, 61],
        [12, 12, 14, 19, 26, 58, 60, 55],
        [14, 13, 16, 24, 40, 57, 69, 56],
        [14, 17, 22, 29, 51, 87, 80, 62],
        [18, 22, 37, 56, 68, 109, 103, 77],
        [24, 35, 55, 64, 81, 104, 113, 92],
        [49, 64, 78, 87, 103, 121, 120, 101],
        [72, 92, 95, 98, 112, 100, 103, 99],
    ],
    dtype=torch.float32,
)
_Q_CHROMA = torch.full((8, 8), 99.0)
_Q_CHROMA[:4, :4] = torch.tensor(
    [[17, 18, 24, 47], [18, 21, 26, 66], [24, 26, 56, 99], [47, 66, 99, 99]], dtype=torch.float32
)
_RGB_TO_YCBCR = torch.tensor(
    [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]]
)


def jpeg(x: torch.Tensor, quality: float) -> torch.Tensor:
    """JPEG-like lossy compression at ``quality`` (1-100), in pure torch (deterministic everywhere).

    The JPEG pipeline without entropy coding: RGB -> YCbCr, 8x8 block DCT, quantisation with the
    standard tables scaled by ``quality`` (libjpeg's formula), dequantisation, inverse DCT, back to
    RGB, rounded to 8 bits. No chroma subsampling, so it loses a little less than libjpeg at the same
    quality. Height and width must be multiples of 8.
    """
    n, c, h, w = x.shape
    if h % 8 or w % 8:
        raise ValueError(f"jpeg: image size {h}x{w} is not a multiple of 8")
    q = max(1.0, min(100.0, float(quality)))
    scale = 5000.0 / q if q < 50 else 200.0 - 2.0 * q
    tables = torch.stack([_Q_LUMA, _Q_CHROMA, _Q_CHROMA])
    tables = ((tables * scale + 50.0) / 100.0).floor().clamp(min=1.0)  # (3, 8, 8)
    ycc = torch.einsum("ij,njhw->nihw", _RGB_TO_YCBCR, x * 255.0)
    ycc[:, 0] -= 128.0
    blocks = ycc.reshape(n, c, h // 8, 8, w // 8, 8).permute(0, 1, 2, 4, 3, 5)  # n c bh bw 8 8
    d = _DCT8
    coef = d @ blocks @ d.T
    coef = torch.round(coef / tables[None, :, None, None]) * tables[None, :, None, None]
    rec = d.T @ coef @ d
    ycc = rec.permute(0, 1, 2, 4, 3, 5).reshape(n, c, h, w)
    ycc[:, 0] += 128.0
    rgb = torch.einsum("ij,njhw->nihw", torch.linalg.inv(_RGB_TO_YCBCR), ycc)
    return (rgb.round() / 255.0).clamp_(0.0, 1.0)


# ---------------------------------------------------------------------------------------------------
# regimes


@dataclass(frozen=True)
class Regime:
    """One distribution of the stream: an optional corruption and an optional class prior.

    Built from a name by :func:`parse_regime`. ``prior`` is the probability of each class (``None``:
    the data set's own class balance).
    """

    name: str
    corruption: str | None = None
    severity: int = 0
    prior: tuple[float, ...] | None = None

    def corrupt(self, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Apply the corruption to images in [0, 1]; ``gen`` seeds the random ones (noise)."""
        if self.corruption is None:
            return x
        p = CORRUPTIONS[self.corruption][self.severity - 1]
        if self.corruption == "gaussian_noise":
            return gaussian_noise(x, p, gen)
        if self.corruption == "gaussian_blur":
            return gaussian_blur(x, p)
        if self.corruption == "contrast":
            return contrast(x, p)
        if self.corruption == "brightness":
            return brightness(x, p)
        return jpeg(x, p)


def _parse_prior(part: str) -> tuple[float, ...] | None:
    m = re.fullmatch(r"classes_(\d)-(\d)", part)
    if m:
        a, b = int(m.group(1)), int(m.group(2))
        if a > b:
            raise UserError(f"regime part '{part}': the first class must not exceed the last")
        p = [1.0 if a <= k <= b else 0.0 for k in range(NUM_CLASSES)]
        return tuple(v / sum(p) for v in p)
    m = re.fullmatch(r"longtail_(\d+(?:\.\d+)?)", part)
    if m:
        ratio = float(m.group(1))
        if ratio < 1:
            raise UserError(f"regime part '{part}': the imbalance ratio must be >= 1")
        p = [ratio ** (-k / (NUM_CLASSES - 1)) for k in range(NUM_CLASSES)]
        return tuple(v / sum(p) for v in p)
    return None


def parse_regime(name: str) -> Regime:
    """The regime a name stands for.

    Parameters
    ----------
    name
        One of :data:`REGIME_FORMS`: ``clean``; ``<corruption>_<severity>`` with a corruption of
        :data:`CORRUPTIONS` and a severity 1-5; ``classes_<a>-<b>`` (uniform over classes a..b);
        ``longtail_<ratio>`` (class ``k`` has prior proportional to ``ratio ** (-k / 9)``); a
        corruption and a prior joined by ``+``.

    Raises
    ------
    UserError
        The name matches none of the forms.

    Examples
    --------
    >>> r = parse_regime("contrast_4+classes_0-4")
    >>> r.corruption, r.severity, r.prior[:6]
    ('contrast', 4, (0.2, 0.2, 0.2, 0.2, 0.2, 0.0))
    """
    if name == "clean":
        return Regime(name)
    corruption: str | None = None
    severity = 0
    prior: tuple[float, ...] | None = None
    for part in name.split("+"):
        p = _parse_prior(part)
        if p is not None and prior is None:
            prior = p
            continue
        m = re.fullmatch(r"([a-z_]+)_(\d+)", part)
        if p is None and m and m.group(1) in CORRUPTIONS and corruption is None:
            severity = int(m.group(2))
            if not 1 <= severity <= len(CORRUPTIONS[m.group(1)]):
                raise UserError(f"regime '{name}': severity {severity} is not in 1-5")
            corruption = m.group(1)
            continue
        raise UserError(f"unknown regime '{name}': use one of the forms {REGIME_FORMS}")
    return Regime(name, corruption, severity, prior)


# ---------------------------------------------------------------------------------------------------
# models


class ResNetSmall(nn.Module):
    """A small ResNet for 32x32 images: a 3x3 stem and three stages of one basic block each
    (16, 32, 64 channels; strides 1, 2, 2), global average pooling and a linear head.

    GroupNorm instead of BatchNorm: the output does not depend on the batch, so replay batches,
    sharded update batches and single-sample evaluation all see the same function.
    """

    def __init__(self, num_classes: int = NUM_CLASSES, width: int = 16) -> None:
        super().__init__()
        w = width
        self.stem = nn.Sequential(nn.Conv2d(3, w, 3, padding=1, bias=False), nn.GroupNorm(4, w), nn.ReLU())
        self.stages = nn.Sequential(_Block(w, w, 1), _Block(w, 2 * w, 2), _Block(2 * w, 4 * w, 2))
        self.head = nn.Linear(4 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return self.head(x.mean(dim=(2, 3)))


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.norm1 = nn.GroupNorm(4, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(4, cout)
        self.skip: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.skip = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.GroupNorm(4, cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return F.relu(out + self.skip(x))


def small_vit(num_classes: int = NUM_CLASSES) -> nn.Module:
    """torchvision's ``VisionTransformer`` sized for 32x32 inputs on a CPU: 4x4 patches (64 tokens),
    4 layers, 4 heads, width 64, MLP 128."""
    from torchvision.models import VisionTransformer

    return VisionTransformer(
        image_size=32,
        patch_size=4,
        num_layers=4,
        num_heads=4,
        hidden_dim=64,
        mlp_dim=128,
        num_classes=num_classes,
    )


class CIFARModel(nn.Module):
    """Wraps a network so that it takes CIFAR-standardised 32x32 batches, whatever it was built for.

    Parameters
    ----------
    net
        The network (its parameters are under ``net.`` in the state_dict).
    image_size
        Inputs are resized (bilinear) to this size first when it is not 32 (ViT-B/16: 224).
    imagenet_norm
        Re-standardise inputs from CIFAR's to ImageNet's channel statistics (for ImageNet weights).
    precision
        ``"bf16"``: run the forward pass under ``torch.autocast("cuda", dtype=torch.bfloat16)`` when
        the input is on CUDA. The logits are returned as float32 either way, so losses and metrics are
        computed in float32; the parameters (and so the weights that travel) stay float32.
    """

    _scale: torch.Tensor
    _shift: torch.Tensor

    def __init__(
        self,
        net: nn.Module,
        image_size: int = 32,
        imagenet_norm: bool = False,
        precision: Literal["fp32", "bf16"] = "fp32",
    ) -> None:
        super().__init__()
        self.net = net
        self.image_size = image_size
        self.precision = precision
        cm, cs = torch.tensor(CIFAR_MEAN), torch.tensor(CIFAR_STD)
        im, ist = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        # x_imagenet = x_cifar * scale + shift; buffers are not persistent: no weights to ship
        scale = (cs / ist) if imagenet_norm else torch.ones(3)
        shift = ((cm - im) / ist) if imagenet_norm else torch.zeros(3)
        self.imagenet_norm = imagenet_norm
        self.register_buffer("_scale", scale.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_shift", shift.view(1, 3, 1, 1), persistent=False)

    def autocast(self, x: torch.Tensor) -> contextlib.AbstractContextManager[Any]:
        """The autocast context of a forward pass on ``x`` (a no-op off CUDA or in fp32)."""
        if self.precision == "bf16" and x.is_cuda:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self.autocast(x):
            if self.imagenet_norm:
                x = x * self._scale + self._shift
            if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
                x = F.interpolate(
                    x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False
                )
            out = self.net(x)
        return out.float()


def load_pretrained(net: nn.Module, path: str) -> tuple[int, list[str]]:
    """Load a local state_dict into ``net``, keeping ``net``'s own tensors where shapes differ (the
    classification head of ImageNet weights). Returns (tensors loaded, names kept from ``net``).

    Accepts a plain state_dict (as torchvision publishes ``vit_b_16-c867db91.pth``), one under a
    ``"state_dict"`` or ``"model"`` key, or a raydrift ``weights.pt`` (keys prefixed ``net.``).
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise UserError(
            f"data.pretrained_weights '{p}' not found: give the local path of a state_dict file "
            "(e.g. torchvision's vit_b_16-c867db91.pth); nothing is downloaded"
        )
    try:
        state = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # noqa: BLE001 - any load failure is the user's file
        raise UserError(f"data.pretrained_weights '{p}' could not be read as a state_dict: {exc}") from exc
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise UserError(f"data.pretrained_weights '{p}' holds a {type(state).__name__}, not a state_dict")
    state = {k.removeprefix("net."): v for k, v in state.items()}
    own = net.state_dict()
    usable = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    if not usable:
        raise UserError(
            f"data.pretrained_weights '{p}': no tensor matches the model's names and shapes; "
            "is it a checkpoint of the same architecture (data.model)?"
        )
    kept = sorted(set(own) - set(usable))
    net.load_state_dict({**own, **usable})
    return len(usable), kept


# ---------------------------------------------------------------------------------------------------
# data


class CIFAROptions(BaseModel):
    """The ``data:`` section of a config with ``model.harness: cifar``."""

    model_config = ConfigDict(extra="forbid")

    source: Literal["torchvision", "synthetic"] = Field(
        "torchvision",
        description="'torchvision': CIFAR-10 in root; 'synthetic': CIFAR-shaped images generated from the seed",
    )
    root: str = Field("data", description="folder holding (or receiving) cifar-10-batches-py/")
    download: bool = Field(True, description="torchvision: download into root when missing")
    synthetic_train: int = Field(10000, ge=10, description="synthetic: training images")
    synthetic_test: int = Field(2000, ge=10, description="synthetic: test images")
    regimes: list[str] = Field(
        default_factory=lambda: list(DEFAULT_REGIMES),
        min_length=1,
        description=f"in order; forms: {REGIME_FORMS}",
    )
    regime_batches: int = Field(40, ge=1, description="stream batches per regime")
    test_samples: int = Field(1000, ge=1, description="test images per regime (a cap, for speed)")
    pretrain_samples: int | None = Field(
        None, ge=1, description="training images to pre-train on (default: all)"
    )
    model: Literal["vit_b_16", "small_vit", "resnet_small"] = Field(
        "small_vit", description="vit_b_16 (GPU), small_vit or resnet_small (CPU demos)"
    )
    pretrained_weights: str | None = Field(
        None, description="local state_dict loaded into the model (ImageNet head dropped); never downloaded"
    )
    image_size: int = Field(224, ge=32, description="vit_b_16: input size the 32x32 images are resized to")
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="bf16: forward under torch.autocast(cuda, bfloat16) on CUDA inputs"
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

    @field_validator("image_size")
    @classmethod
    def _patch_multiple(cls, v: int) -> int:
        if v % 16:
            raise ValueError("image_size must be a multiple of 16 (ViT-B/16 patches)")
        return v


@dataclass
class _Images:
    """Images as uint8 ``(N, 3, 32, 32)`` and int64 labels."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


def seed_sequence(seed: int, *keys: int) -> np.random.Generator:
    """An independent numpy generator for ``(seed, *keys)``: one stream of draws per purpose."""
    return np.random.default_rng([seed & 0xFFFFFFFF, *keys])


def torch_generator(seed: int, *keys: int) -> torch.Generator:
    """A torch generator seeded from ``(seed, *keys)`` (for the random corruptions)."""
    g = torch.Generator()
    g.manual_seed(int(seed_sequence(seed, *keys).integers(0, 2**63 - 1)))
    return g


def cycled_indices(rng: np.random.Generator, n: int, count: int) -> np.ndarray:
    """``count`` indices into ``range(n)``: fresh permutations back to back."""
    reps = max(1, math.ceil(count / n))
    return np.concatenate([rng.permutation(n) for _ in range(reps)])[:count]


def prior_indices(
    rng: np.random.Generator, labels: np.ndarray, prior: tuple[float, ...] | None, count: int
) -> np.ndarray:
    """``count`` indices into ``labels``: their classes drawn from ``prior`` (``None``: the data's own
    balance), the images of each class in fresh permutations (every one used before any repeats)."""
    if prior is None:
        return cycled_indices(rng, len(labels), count)
    classes = rng.choice(NUM_CLASSES, size=count, p=np.asarray(prior))
    out = np.empty(count, dtype=np.int64)
    for c in range(NUM_CLASSES):
        where = np.flatnonzero(classes == c)
        if len(where):
            members = np.flatnonzero(labels == c)
            if len(members) == 0:
                raise UserError(f"the data set has no image of class {c} that the regime asks for")
            out[where] = members[cycled_indices(rng, len(members), len(where))]
    return out


def synthetic_images(seed: int, n_train: int, n_test: int) -> _Images:
    """A CIFAR-shaped data set generated from ``seed`` (see the module docstring).

    Classes come in five pairs ``(c, c + 5)``. A pair shares a coloured low-frequency pattern (a 4x4
    random field upsampled to 32x32); within a pair, class ``c`` carries a fine grating (period 3
    pixels) at 0 degrees and class ``c + 5`` the same grating at 90 degrees. So coarse corruptions
    (contrast, brightness) confuse the pairs with each other, and corruptions that remove or mask fine
    detail (blur, JPEG, noise) confuse the two classes of a pair. A sample is its class's prototype
    with a random grating phase, shifted by up to 3 pixels, with random contrast (0.6-1.4) and offset,
    a random nuisance pattern and pixel noise. Classes are balanced; train and test images are
    independent draws.
    """
    rng = seed_sequence(seed, 100)
    pairs = NUM_CLASSES // 2
    field = torch.from_numpy(rng.normal(size=(pairs, 3, 4, 4))).float()
    coarse = F.interpolate(field, size=(32, 32), mode="bicubic", align_corners=False) * 0.15
    color = torch.from_numpy(rng.uniform(0.5, 1.0, size=(NUM_CLASSES, 3, 1, 1))).float()
    coords = torch.arange(32.0)
    freq = 2 * math.pi / 3.0

    def draw(n: int, key: int) -> tuple[torch.Tensor, torch.Tensor]:
        r = seed_sequence(seed, 101, key)
        y = torch.from_numpy(r.permutation(np.arange(n) % NUM_CLASSES)).long()
        phase = torch.from_numpy(r.uniform(0, 2 * math.pi, size=(n, 1, 1, 1))).float()
        wave = torch.sin(freq * coords.view(1, 1, 1, 32) + phase)  # varies along x: 0 degrees
        vertical = (y >= pairs).view(n, 1, 1, 1)
        wave = torch.where(vertical, wave.transpose(2, 3), wave).expand(n, 1, 32, 32)
        x = coarse[y % pairs] + 0.09 * wave * color[y]
        shifts = r.integers(-3, 4, size=(n, 2))
        for dy, dx in {(int(a), int(b)) for a, b in shifts}:
            sel = torch.from_numpy((shifts[:, 0] == dy) & (shifts[:, 1] == dx))
            x[sel] = torch.roll(x[sel], (dy, dx), dims=(2, 3))
        gain = torch.from_numpy(r.uniform(0.6, 1.4, size=(n, 1, 1, 1))).float()
        offset = torch.from_numpy(r.uniform(0.35, 0.65, size=(n, 1, 1, 1))).float()
        nuisance = torch.from_numpy(r.normal(size=(n, 3, 4, 4))).float()
        nuisance = F.interpolate(nuisance, size=(32, 32), mode="bilinear", align_corners=False) * 0.08
        noise = torch.from_numpy(r.normal(scale=0.03, size=(n, 3, 32, 32))).float()
        x = (offset + gain * x + nuisance + noise).clamp(0.0, 1.0)
        return (x * 255.0).round().to(torch.uint8), y

    train_x, train_y = draw(n_train, 0)
    test_x, test_y = draw(n_test, 1)
    return _Images(train_x, train_y, test_x, test_y)


def _load_torchvision(root: str, download: bool) -> _Images:
    """CIFAR-10 from ``torchvision.datasets`` (downloaded into ``root`` when allowed)."""
    from torchvision.datasets import CIFAR10

    folder = Path(root).expanduser().resolve()
    try:
        train = CIFAR10(str(folder), train=True, download=download)
        test = CIFAR10(str(folder), train=False, download=download)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError; "Dataset not found" a RuntimeError
        how = (
            "could not download CIFAR-10 (offline?)"
            if download
            else "CIFAR-10 not found and data.download is false"
        )
        raise UserError(
            f"{how}: place cifar-10-python.tar.gz or its extracted cifar-10-batches-py/ folder in "
            f"'{folder}', or set data.source: synthetic"
        ) from exc

    def images(ds: Any) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.from_numpy(np.ascontiguousarray(ds.data)).permute(0, 3, 1, 2).contiguous()
        return x, torch.tensor(ds.targets, dtype=torch.long)

    (trx, try_), (tex, tey) = images(train), images(test)
    return _Images(trx, try_, tex, tey)


# ---------------------------------------------------------------------------------------------------
# harness


def seeded_init(seed: int, factory: Callable[[], nn.Module]) -> nn.Module:
    """``factory()`` with its parameters initialised from ``seed``, leaving the global RNG as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return factory()


# Purposes of the seeded generators (one independent stream of draws each).
_PRETRAIN, _STREAM, _TEST, _STREAM_NOISE, _TEST_NOISE, _PRETRAIN_NOISE = 1, 2, 3, 4, 5, 6


class CIFARHarness(Harness):
    """CIFAR-10 (or a synthetic stand-in) through a sequence of corruption and class-prior regimes.

    Parameters
    ----------
    options
        :class:`CIFAROptions` (or a mapping validated into one); default options when None.
    seed
        Fixes the synthetic images, the stream order, the corruption noise and the initial weights.
    batch_size
        Samples per stream batch.
    """

    name: ClassVar[str] = "cifar"
    Options: ClassVar[type[BaseModel]] = CIFAROptions

    def __init__(
        self, options: BaseModel | Mapping[str, Any] | None = None, seed: int = 0, batch_size: int = 64
    ) -> None:
        opts = _coerce_options(options)
        super().__init__(opts, seed=seed, batch_size=batch_size)
        self.opts: CIFAROptions = opts
        self.regimes = [parse_regime(r) for r in opts.regimes]
        self._images: _Images | None = None
        self._test_sets: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Data is reloaded (or regenerated) lazily in the receiving process: cheaper than pickling it.
        state = self.__dict__.copy()
        state["_images"] = None
        state["_test_sets"] = None
        return state

    # --- model -----------------------------------------------------------------------------------
    def build_model(self) -> nn.Module:
        """A fresh :class:`CIFARModel` around ``data.model``, initialised from ``self.seed`` (then
        loaded from ``data.pretrained_weights`` when given: every tensor but the classifier head
        must match)."""
        o = self.opts
        if o.model == "vit_b_16":
            from torchvision.models import vit_b_16

            size = o.image_size
            net = seeded_init(
                self.seed, lambda: vit_b_16(weights=None, num_classes=NUM_CLASSES, image_size=size)
            )
            imagenet, head = True, "heads."
        elif o.model == "small_vit":
            net, size, imagenet, head = seeded_init(self.seed, small_vit), 32, False, "heads."
        else:
            net, size, imagenet, head = seeded_init(self.seed, ResNetSmall), 32, False, "head."
        if o.pretrained_weights:
            _, kept = load_pretrained(net, o.pretrained_weights)
            missing = [k for k in kept if not k.startswith(head)]
            if missing:
                raise UserError(
                    f"data.pretrained_weights '{o.pretrained_weights}' does not fit data.model "
                    f"'{o.model}' (image_size {size}): no matching tensor for {missing[0]}"
                    + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
                )
        return CIFARModel(net, image_size=size, imagenet_norm=imagenet, precision=o.precision)

    def build_optimizer(self, params: Any, lr: float) -> torch.optim.Optimizer:
        """AdamW (weight decay 0.05 for the ViTs, 5e-4 for the ResNet)."""
        wd = 5e-4 if self.opts.model == "resnet_small" else 0.05
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)

    # --- data ------------------------------------------------------------------------------------
    def regime_names(self) -> dict[int, str]:
        return dict(enumerate(self.opts.regimes))

    def pretrain_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Training images under regime 0 (its prior and corruption), ``pretrain_samples`` of them."""
        d = self.images()
        n = len(d.train_y)
        count = n if self.opts.pretrain_samples is None else self.opts.pretrain_samples
        r0 = self.regimes[0]
        if r0.prior is None:
            idx = seed_sequence(self.seed, _PRETRAIN).permutation(n)[: min(n, count)]
        else:
            idx = prior_indices(seed_sequence(self.seed, _PRETRAIN), d.train_y.numpy(), r0.prior, count)
        t = torch.from_numpy(idx)
        return self.prepare(d.train_x[t], 0, torch_generator(self.seed, _PRETRAIN_NOISE)), d.train_y[t]

    def stream(self) -> Iterator[Batch]:
        """``regime_batches`` batches per regime, in order; each regime draws training images in a
        fresh seeded order (under its class prior) and corrupts them batch by batch."""
        d = self.images()
        labels = d.train_y.numpy()
        per_regime = self.opts.regime_batches * self.batch_size
        for r, regime in enumerate(self.regimes):
            idx = torch.from_numpy(
                prior_indices(seed_sequence(self.seed, _STREAM, r), labels, regime.prior, per_regime)
            )
            for k, start in enumerate(range(0, per_regime, self.batch_size)):
                b = idx[start : start + self.batch_size]
                gen = torch_generator(self.seed, _STREAM_NOISE, r, k)
                yield Batch(self.prepare(d.train_x[b], r, gen), d.train_y[b], r)

    def test_sets(self) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """Test images under every regime: its class prior (at most ``test_samples`` images) and its
        corruption. Regimes without a prior share the same images."""
        if self._test_sets is None:
            d = self.images()
            labels = d.test_y.numpy()
            n = len(labels)
            count = min(n, self.opts.test_samples)
            base = np.sort(seed_sequence(self.seed, _TEST).permutation(n)[:count])
            sets = {}
            for r, regime in enumerate(self.regimes):
                if regime.prior is None:
                    idx = base
                else:
                    idx = np.sort(
                        prior_indices(seed_sequence(self.seed, _TEST, r), labels, regime.prior, count)
                    )
                t = torch.from_numpy(idx)
                x = self.prepare(d.test_x[t], r, torch_generator(self.seed, _TEST_NOISE, r))
                sets[r] = (x, d.test_y[t])
            self._test_sets = sets
        return self._test_sets

    def prepare(self, images: torch.Tensor, regime: int, gen: torch.Generator) -> torch.Tensor:
        """uint8 images ``(N, 3, 32, 32)`` -> float32, corrupted by ``regime`` (random parts from
        ``gen``) and standardised with CIFAR-10's channel mean and std."""
        x = self.regimes[regime].corrupt(images.float().div_(255.0), gen)
        mean = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
        return ((x - mean) / std).contiguous()

    def images(self) -> _Images:
        """The train / test images, loaded (or generated) on first use and cached."""
        if self._images is None:
            o = self.opts
            if o.source == "synthetic":
                self._images = synthetic_images(self.seed, o.synthetic_train, o.synthetic_test)
            else:
                self._images = _load_torchvision(o.root, o.download)
        return self._images


def _coerce_options(options: BaseModel | Mapping[str, Any] | None) -> CIFAROptions:
    if options is None:
        return CIFAROptions()
    if isinstance(options, CIFAROptions):
        return options
    data = options.model_dump() if isinstance(options, BaseModel) else dict(options)
    return CIFAROptions.model_validate(data)
