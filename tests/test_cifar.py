"""The CIFAR harness (no Ray): generic harness properties on the synthetic source, every corruption,
the class-prior regimes, the models and their errors. GPU-only checks are marked ``gpu``."""

from __future__ import annotations

import pickle
from typing import Any

import numpy as np
import pytest
import torch

from harnesses.cifar import (
    CIFAR_MEAN,
    CIFAR_STD,
    CORRUPTIONS,
    NUM_CLASSES,
    CIFARHarness,
    CIFARModel,
    Regime,
    jpeg,
    parse_regime,
    synthetic_images,
)
from raydrift.config import RaydriftConfig, validate_harness_options
from raydrift.errors import ConfigError, UserError
from raydrift.harness import build_harness, resolve_harness

BATCH = 16
REGIMES = ["clean", "gaussian_blur_3", "contrast_5+classes_0-4"]
SMALL: dict[str, Any] = {
    "source": "synthetic",
    "synthetic_train": 400,
    "synthetic_test": 200,
    "test_samples": 100,
    "regimes": REGIMES,
    "regime_batches": 3,
}


def make(seed: int = 0, **overrides: Any) -> CIFARHarness:
    h = build_harness("cifar", {**SMALL, **overrides}, seed=seed, batch_size=BATCH)
    assert isinstance(h, CIFARHarness)
    return h


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """200 synthetic test images in [0, 1]."""
    return synthetic_images(0, 10, 200).test_x.float() / 255.0


# ---------------------------------------------------------------------------------------------------
# generic harness properties


def test_registered_and_options_validate_through_the_config() -> None:
    assert resolve_harness("cifar") is CIFARHarness and CIFARHarness.name == "cifar"
    assert CIFARHarness.Options.model_validate({}) == CIFARHarness.Options()
    cfg = RaydriftConfig.model_validate({"model": {"harness": "cifar"}, "data": {"regime_batchs": 3}})
    with pytest.raises(
        ConfigError, match=r"unknown key 'data.regime_batchs'.*did you mean 'data.regime_batches'"
    ):
        validate_harness_options(cfg)
    cfg = RaydriftConfig.model_validate({"model": {"harness": "cifar"}, "data": {"regimes": ["fog_3"]}})
    with pytest.raises(ConfigError, match=r"unknown regime 'fog_3'.*gaussian_noise"):
        validate_harness_options(cfg)


def test_construction_is_lazy() -> None:
    # torchvision source without files: nothing is read until data is asked for
    h = build_harness("cifar", {"root": "/nonexistent/cifar"}, seed=0, batch_size=8)
    assert isinstance(h, CIFARHarness) and h._images is None


def test_stream_shapes_dtypes_regime_order_and_determinism() -> None:
    a, b, c = list(make(1).stream()), list(make(1).stream()), list(make(2).stream())
    assert [x.regime for x in a] == [r for r in range(len(REGIMES)) for _ in range(3)]
    for x in a:
        assert x.x.dtype == torch.float32 and tuple(x.x.shape) == (BATCH, 3, 32, 32)
        assert x.y.dtype == torch.int64 and tuple(x.y.shape) == (BATCH,)
        assert torch.isfinite(x.x).all() and 0 <= int(x.y.min()) and int(x.y.max()) < NUM_CLASSES
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x.x, y.x) and torch.equal(x.y, y.y)
    assert not all(torch.equal(x.x, z.x) for x, z in zip(a, c, strict=True))


def test_test_sets_cover_every_regime_deterministically() -> None:
    h = make()
    sets = h.test_sets()
    assert set(sets) == set(range(len(REGIMES))) == set(h.regime_names())
    for x, y in sets.values():
        assert x.dtype == torch.float32 and tuple(x.shape[1:]) == (3, 32, 32) and len(x) == len(y) == 100
    # regimes without a prior share the images, so only the corruption differs
    assert torch.equal(sets[0][1], sets[1][1]) and not torch.equal(sets[0][0], sets[1][0])
    assert set(sets[2][1].tolist()) <= set(range(5))
    for r, (x, y) in make().test_sets().items():
        assert torch.equal(x, sets[r][0]) and torch.equal(y, sets[r][1])


def test_pretrain_data_is_regime_zero_with_every_class() -> None:
    x, y = make(pretrain_samples=150).pretrain_data()
    assert tuple(x.shape) == (150, 3, 32, 32) and set(y.tolist()) == set(range(NUM_CLASSES))
    # regime 0 is clean: standardised pixels are those of uint8 images (a multiple of 1/255 apart)
    raw = x * torch.tensor(CIFAR_STD).view(1, 3, 1, 1) + torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1)
    assert torch.allclose(raw * 255, (raw * 255).round(), atol=1e-3)


@pytest.mark.parametrize("model", ["resnet_small", "small_vit"])
def test_models_are_deterministic_and_classify(model: str) -> None:
    rng_before = torch.random.get_rng_state()
    m1, m2, m3 = (
        make(3, model=model).build_model(),
        make(3, model=model).build_model(),
        make(4, model=model).build_model(),
    )
    assert torch.equal(torch.random.get_rng_state(), rng_before), "build_model must not move the global RNG"
    s1, s2, s3 = m1.state_dict(), m2.state_dict(), m3.state_dict()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert not all(torch.equal(s1[k], s3[k]) for k in s1)
    h = make(model=model)
    batch = next(iter(h.stream()))
    with torch.no_grad():
        out = m1.eval()(batch.x)
        metrics, loss = h.metrics(out, batch.y), h.loss(out, batch.y)
    assert out.shape == (BATCH, NUM_CLASSES) and out.dtype == torch.float32
    assert set(metrics) == set(h.metric_directions)
    assert all(v.shape == (BATCH,) for v in metrics.values())
    assert torch.allclose(metrics["loss"].mean(), loss)


def test_pickles_and_streams_the_same_after() -> None:
    h = make(seed=5)
    first = next(iter(h.stream()))
    h.test_sets()
    blob = pickle.dumps(h)
    assert len(blob) < 100_000, "cached images must not travel in the pickle"
    clone = pickle.loads(blob)
    again = next(iter(clone.stream()))
    assert torch.equal(first.x, again.x) and torch.equal(first.y, again.y)
    assert clone.regime_names() == h.regime_names()


# ---------------------------------------------------------------------------------------------------
# corruptions and class priors


def _stats(x: torch.Tensor) -> dict[str, float]:
    """Mean brightness, per-image contrast and high-frequency energy (mean squared Laplacian)."""
    lap = 4 * x[..., 1:-1, 1:-1] - x[..., :-2, 1:-1] - x[..., 2:, 1:-1] - x[..., 1:-1, :-2] - x[..., 1:-1, 2:]
    return {
        "mean": float(x.mean()),
        "contrast": float(x.std(dim=(1, 2, 3)).mean()),
        "highfreq": float(lap.pow(2).mean()),
    }


# corruption -> (statistic, +1 if the corruption raises it / -1 if it lowers it)
EFFECT = {
    "gaussian_noise": ("highfreq", +1),
    "gaussian_blur": ("highfreq", -1),
    "contrast": ("contrast", -1),
    "brightness": ("mean", +1),
    "jpeg": ("highfreq", -1),
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_each_corruption_changes_the_distribution_measurably_and_deterministically(
    corruption: str, images: torch.Tensor
) -> None:
    stat, sign = EFFECT[corruption]
    base = _stats(images)[stat]
    diffs, shifts = [], []
    for severity in range(1, 6):
        regime = parse_regime(f"{corruption}_{severity}")
        g = torch.Generator().manual_seed(7)
        out = regime.corrupt(images.clone(), g)
        again = regime.corrupt(images.clone(), torch.Generator().manual_seed(7))
        assert torch.equal(out, again), "the same seed must give the same corruption"
        assert out.shape == images.shape and out.dtype == images.dtype
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
        diffs.append(float((out - images).abs().mean()))
        shifts.append(sign * (_stats(out)[stat] - base) / base)
    # measurable at every severity: mean |change| >= 0.5 of a uint8 level... in [0, 1] units
    assert min(diffs) > 0.01, f"{corruption}: mean |change| per severity {diffs}"
    # the statistic moves the expected way by >= 5% at severity 5, and more than at severity 1
    assert shifts[-1] > 0.05 and shifts[-1] > shifts[0], f"{corruption}: relative {stat} shift {shifts}"
    assert diffs[-1] > diffs[0]


def test_noise_depends_on_the_seed_and_the_stream_is_reproducible(images: torch.Tensor) -> None:
    r = parse_regime("gaussian_noise_3")
    a = r.corrupt(images.clone(), torch.Generator().manual_seed(1))
    b = r.corrupt(images.clone(), torch.Generator().manual_seed(2))
    assert not torch.equal(a, b)
    # through the harness: same seed, same noisy batches; another seed, other noise
    opts = {"regimes": ["gaussian_noise_5"], "regime_batches": 2}
    x1 = [b.x for b in make(0, **opts).stream()]
    x2 = [b.x for b in make(0, **opts).stream()]
    assert all(torch.equal(p, q) for p, q in zip(x1, x2, strict=True))
    assert not torch.equal(x1[0], x1[1])


def test_jpeg_quality_orders_the_loss(images: torch.Tensor) -> None:
    # quality 100 is nearly lossless; measured here: 0.001, 0.012, 0.025, 0.030, 0.042 (libjpeg with
    # 4:2:0 chroma subsampling: 0.024, 0.025, 0.031, 0.037, 0.050)
    errs = [float((jpeg(images, q) - images).abs().mean()) for q in (100, 95, 80, 50, 20)]
    assert errs == sorted(errs) and errs[0] < 0.005 and errs[-1] > 0.02, errs
    with pytest.raises(ValueError, match="multiple of 8"):
        jpeg(images[..., :30, :30], 50)


def test_class_prior_regimes_shape_the_label_distribution() -> None:
    h = make(regimes=["classes_5-9", "longtail_10"], regime_batches=40, synthetic_train=2000)
    by_regime: dict[int, list[int]] = {0: [], 1: []}
    for b in h.stream():
        by_regime[b.regime].extend(b.y.tolist())
    assert set(by_regime[0]) == set(range(5, 10))
    counts = np.bincount(by_regime[1], minlength=NUM_CLASSES)
    # class k has prior ~ 10^(-k/9): class 0 is ~10x as frequent as class 9 (640 draws)
    assert counts[0] > 4 * counts[9] and counts[:5].sum() > 2 * counts[5:].sum(), counts
    p = parse_regime("longtail_10").prior
    assert p is not None and abs(sum(p) - 1) < 1e-9 and abs(p[0] / p[9] - 10) < 1e-6


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("clean", Regime("clean")),
        ("jpeg_2", Regime("jpeg_2", "jpeg", 2)),
        (
            "brightness_5+classes_0-1",
            Regime("brightness_5+classes_0-1", "brightness", 5, (0.5, 0.5) + (0.0,) * 8),
        ),
    ],
)
def test_parse_regime_forms(name: str, expected: Regime) -> None:
    assert parse_regime(name) == expected


@pytest.mark.parametrize(
    ("bad", "says"),
    [
        ("fog_3", "unknown regime"),
        ("contrast_6", "severity 6"),
        ("contrast_0", "severity 0"),
        ("classes_5-2", "must not exceed"),
        ("contrast_2+jpeg_3", "unknown regime"),
        ("longtail_0.5", ">= 1"),
    ],
)
def test_bad_regimes_are_user_errors(bad: str, says: str) -> None:
    with pytest.raises(UserError, match=says):
        parse_regime(bad)


# ---------------------------------------------------------------------------------------------------
# data sources, weights, precision


def test_torchvision_missing_offline_names_the_folder(tmp_path: Any) -> None:
    h = CIFARHarness({"root": str(tmp_path / "cifar"), "download": False})
    with pytest.raises(UserError) as err:
        h.stream().__next__()
    msg = str(err.value)
    assert str(tmp_path / "cifar") in msg and "cifar-10-batches-py" in msg and "synthetic" in msg
    assert "\n" not in msg


def test_pretrained_weights_load_all_but_the_head(tmp_path: Any) -> None:
    donor = make(seed=9, model="small_vit").build_model()
    state = {k.removeprefix("net."): v for k, v in donor.state_dict().items()}
    state["heads.head.weight"] = torch.zeros(1000, 64)  # an ImageNet-sized head is replaced
    state["heads.head.bias"] = torch.zeros(1000)
    path = tmp_path / "w.pt"
    torch.save(state, path)
    model = make(seed=0, model="small_vit", pretrained_weights=str(path)).build_model()
    own = model.state_dict()
    fresh = make(seed=0, model="small_vit").build_model().state_dict()
    assert torch.equal(own["net.encoder.pos_embedding"], donor.state_dict()["net.encoder.pos_embedding"])
    assert torch.equal(own["net.heads.head.weight"], fresh["net.heads.head.weight"])  # seeded head kept
    with pytest.raises(UserError, match="not found.*nothing is downloaded"):
        make(model="small_vit", pretrained_weights=str(tmp_path / "missing.pt")).build_model()
    with pytest.raises(UserError, match="does not fit data.model 'resnet_small'|no tensor matches"):
        make(model="resnet_small", pretrained_weights=str(path)).build_model()


def test_vit_b_16_resizes_inside_the_model() -> None:
    # image_size 32 keeps this CPU test small; the default 224 works the same way
    h = make(model="vit_b_16", image_size=48)
    model = h.build_model().eval()
    assert isinstance(model, CIFARModel) and model.image_size == 48 and model.imagenet_norm
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, NUM_CLASSES) and out.dtype == torch.float32


def test_bf16_is_a_no_op_on_cpu() -> None:
    x = next(iter(make().stream())).x
    fp32 = make(precision="fp32").build_model().eval()
    bf16 = make(precision="bf16").build_model().eval()
    with torch.no_grad():
        assert torch.equal(fp32(x), bf16(x))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("model", ["small_vit", "vit_b_16"])
def test_bf16_autocast_on_cuda(model: str) -> None:
    h = make(model=model, precision="bf16")
    m32 = make(model=model).build_model().cuda().eval()
    m16 = h.build_model().cuda().eval()
    x = next(iter(h.stream())).x.cuda()
    with torch.no_grad():
        a, b = m32(x), m16(x)
    assert b.dtype == torch.float32 and all(p.dtype == torch.float32 for p in m16.parameters())
    assert (a.argmax(1) == b.argmax(1)).float().mean() > 0.8
    assert torch.allclose(a, b, atol=0.1, rtol=0.05)
    # a training step under autocast gives float32 gradients
    m16.train()
    h.loss(m16(x), next(iter(h.stream())).y.cuda()).backward()
    assert all(p.grad is None or p.grad.dtype == torch.float32 for p in m16.parameters())
