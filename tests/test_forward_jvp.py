"""The hand-written forward-mode JVP (raydrift/learning/forward_jvp.py) against torch.func.jvp."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn

import raydrift.learning.forward_jvp as fj
from harnesses.mnist import MNISTMLP, MNISTNet
from raydrift.learning.forward_jvp import forward_jvp, func_jvp, is_handwritten


class Scale(nn.Module):
    """A module forward_jvp has no rule for (a learnt per-feature scale)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.s = nn.Parameter(torch.linspace(0.5, 1.5, n))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.s


def _conv_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1, padding_mode="circular"),
        nn.Tanh(),
        nn.Conv2d(4, 6, 3, stride=2, bias=False),
        nn.LeakyReLU(0.1),
        nn.Flatten(),
        nn.Sequential(nn.Linear(6 * 6 * 6, 16), nn.Sigmoid()),
        nn.Dropout(0.5),  # eval mode below: the identity
        nn.Linear(16, 3),
    )


class _Opaque(nn.Module):
    """A model whose forward forward_jvp cannot see into (no Sequential, no jvp_layers)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 5), nn.Linear(5, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(torch.tanh(self.fc1(x)))


def _pool_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.MaxPool2d(3, stride=2, padding=1),
        nn.ReLU(),
        nn.Unflatten(1, (1, 3)),  # (n, 1, 3, 6, 6): a 3-d pool with ceil_mode
        nn.MaxPool3d(2, ceil_mode=True),
        nn.Flatten(),
        nn.Unflatten(1, (2, 9)),
        nn.MaxPool1d(2, stride=1),
        nn.Flatten(),
        nn.Linear(16, 3),
    )


def _conv1d_net() -> nn.Module:
    return nn.Sequential(
        nn.Unflatten(1, (1, 14)), nn.Conv1d(1, 3, 5), nn.ReLU(), nn.Flatten(), nn.Linear(30, 1)
    )


MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "mlp 784-256-256-10": (MNISTMLP, (6, 1, 28, 28)),
    "conv / tanh / leaky / nested / sigmoid": (_conv_net, (5, 1, 14, 14)),
    "conv1d after an unknown Unflatten, 1 output": (_conv1d_net, (5, 14)),
    "unknown Scale and LayerNorm inside": (
        lambda: nn.Sequential(nn.Linear(7, 8), Scale(8), nn.LayerNorm(8), nn.ReLU(), nn.Linear(8, 2)),
        (9, 7),
    ),
    "max-pooling 1d/2d/3d": (_pool_net, (4, 2, 12, 12)),
    "the MNIST CNN (jvp_layers)": (MNISTNet, (4, 1, 28, 28)),
    "not a Sequential (whole-model fallback)": (_Opaque, (4, 6)),
}


def _case(
    name: str, with_vx: bool, frozen: bool
) -> tuple[nn.Module, Tensor, dict[str, Tensor], Tensor | None]:
    torch.manual_seed(0)
    factory, shape = MODELS[name]
    model = factory().eval()
    named = list(model.named_parameters())
    if frozen:  # the first layer's weight is frozen: it gets no tangent
        named = named[1:]
    v = {k: torch.randn_like(p) for k, p in named}
    x = torch.randn(*shape)
    return model, x, v, torch.randn_like(x) if with_vx else None


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("with_vx", [False, True])
@pytest.mark.parametrize("frozen", [False, True])
def test_matches_torch_func_jvp_and_its_gradient(name: str, with_vx: bool, frozen: bool) -> None:
    model, x, v, v_x = _case(name, with_vx, frozen)
    y, dy = forward_jvp(model, x, v, v_x)
    y_ref, dy_ref = func_jvp(model, x, v, v_x)
    assert y.shape == y_ref.shape and dy.shape == dy_ref.shape
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dy, dy_ref, rtol=1e-4, atol=1e-5)
    assert float(dy_ref.detach().abs().max()) > 1e-3  # the tangent is not trivially zero
    params = [p for p in model.parameters()]
    # what the JVP step back-propagates: a function of the outputs and of their tangent
    grads = torch.autograd.grad((dy * dy).sum() + y.sum(), params)
    grads_ref = torch.autograd.grad((dy_ref * dy_ref).sum() + y_ref.sum(), params)
    for g, g_ref in zip(grads, grads_ref, strict=True):  # float32 sums in another order: relative
        assert float((g - g_ref).abs().max()) <= 1e-4 * float(g_ref.abs().max()) + 1e-7


def _count_fallbacks(monkeypatch: pytest.MonkeyPatch) -> list[type]:
    seen: list[type] = []
    real = fj.func_jvp

    def counting(module: nn.Module, *args: object) -> tuple[Tensor, Tensor]:
        seen.append(type(module))
        return real(module, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(fj, "func_jvp", counting)
    return seen


def test_known_layers_are_hand_written(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _count_fallbacks(monkeypatch)
    for name in ("mlp 784-256-256-10", "conv / tanh / leaky / nested / sigmoid", "the MNIST CNN (jvp_layers)"):
        model, x, v, v_x = _case(name, True, False)
        assert is_handwritten(model)
        forward_jvp(model, x, v, v_x)
    assert seen == []


def test_unknown_modules_fall_back_to_torch_func(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = _count_fallbacks(monkeypatch)
    model, x, v, v_x = _case("unknown Scale and LayerNorm inside", False, False)
    assert not is_handwritten(model)
    forward_jvp(model, x, v, v_x)
    assert seen == [Scale, nn.LayerNorm]  # only the modules without a rule
    seen.clear()
    model, x, v, v_x = _case("not a Sequential (whole-model fallback)", False, False)
    forward_jvp(model, x, v, v_x)
    assert seen == [_Opaque]


def test_the_cnn_chain_is_its_forward() -> None:
    torch.manual_seed(0)
    model = MNISTNet().eval()
    x = torch.randn(8, 1, 28, 28)
    y = x
    for _, m in model.jvp_layers():
        y = m(y)
    torch.testing.assert_close(y, model(x), rtol=0, atol=0)
    names = {n.split(".")[0] for n, _ in model.named_parameters()}
    assert names <= {n for n, _ in model.jvp_layers() if n}  # every parameter under its own prefix


def test_dropout_in_training_uses_one_mask_for_outputs_and_tangent() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 200), nn.Dropout(0.5)).train()
    v = {k: torch.randn_like(p) for k, p in model.named_parameters()}
    y, dy = forward_jvp(model, torch.randn(8, 5), v)
    dropped = y == 0
    assert 0.3 < float(dropped.float().mean()) < 0.7
    assert bool((dy[dropped] == 0).all()) and bool((dy[~dropped] != 0).all())


def test_no_tangent_gives_zeros() -> None:
    model, x, _, _ = _case("mlp 784-256-256-10", False, False)
    y, dy = forward_jvp(model, x, {})
    torch.testing.assert_close(y, model(x))
    assert dy.shape == y.shape and not bool(dy.any())


class _Attention(nn.Module):
    """One self-attention block through ``scaled_dot_product_attention`` (a ViT's core)."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(8, 24)

    def forward(self, x: Tensor) -> Tensor:
        q, k, v = self.qkv(x).unsqueeze(1).chunk(3, dim=-1)
        return torch.nn.functional.scaled_dot_product_attention(q, k, v).squeeze(1).sum(dim=1)


def test_attention_models_get_a_tangent_matching_finite_differences() -> None:
    # the fused CPU attention kernel has no forward-mode AD: the fallback must pick the math kernel
    torch.manual_seed(0)
    model = _Attention().double()
    x = torch.randn(3, 5, 8, dtype=torch.double)
    v = {k: torch.randn_like(p) for k, p in model.named_parameters()}
    out, tangent = forward_jvp(model, x, v)
    eps = 1e-6
    with torch.no_grad():
        for k, p in model.named_parameters():
            p.add_(eps * v[k])
        shifted = model(x)
    assert out.shape == shifted.shape == (3, 8)
    assert torch.allclose(tangent, (shifted - out) / eps, atol=1e-4)
