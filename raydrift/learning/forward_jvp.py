"""A hand-written forward-mode JVP for ``nn.Sequential`` models, with ``torch.func.jvp`` as fallback.

``forward_jvp(model, x, v_theta, v_x)`` returns ``(f_θ(x), J f_θ(x) · (v_θ, v_x))`` like
``torch.func.jvp`` over ``functional_call``, but for a ``Sequential`` it propagates the pair
``(x, dx)`` layer by layer with plain tensor operations:

- ``Linear``: ``y = x Wᵀ + b``, ``dy = dx Wᵀ + x dWᵀ + db`` (three products; stacking ``x`` and
  ``dx`` into one product with ``W`` measured slower on the MLP, by its slicing in the backward pass);
- ``Conv1d/2d/3d``: the same with the convolution (linear in its input and in its weight);
- ``ReLU`` / ``LeakyReLU``: ``dx`` masked by the slope at ``x``; ``Tanh``, ``Sigmoid``: ``dx`` times
  the derivative written from ``y``; ``Flatten``, ``Identity``, ``Dropout`` (one mask for both);
- ``MaxPool1d/2d/3d``: ``dx`` gathered at the pooled maxima (the indices of the forward pass);
- nested ``Sequential``: recursively; any other module: ``torch.func.jvp`` of that module alone.

A model that is not a ``Sequential`` but whose forward is a chain of modules can say so with a
method ``jvp_layers()`` returning ``[(name, module), ...]`` in the order its forward applies them:
its own submodules under their attribute names (``("conv1", self.conv1)``: the prefix of their
parameters in ``v_θ``) and parameter-free modules for the functional calls (``("", nn.MaxPool2d(2))``
for ``F.max_pool2d(x, 2)``). The chain must compute exactly what ``forward`` does
(``tests/test_forward_jvp.py`` checks the MNIST harness's CNN). Any other model goes to
``torch.func.jvp`` as a whole. Both outputs keep their
autograd history in the parameters (the tangents are constants), so back-propagating a function of
the tangent gives its gradient in θ, as with ``torch.func.jvp``. Why: on a small MLP the functorch
dual-tensor machinery costs more than the arithmetic (``docs/continuous_learning.md``, "Cost of a
step"); plain operations run at the cost of their matrix products.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, jvp
from torch.nn.attention import SDPBackend, sdpa_kernel

__all__ = ["forward_jvp", "func_jvp", "is_handwritten"]

Pair = tuple[Tensor, Tensor | None]
"""``(x, dx)``; ``dx is None`` stands for a zero tangent (skips its arithmetic)."""

_ELEMENTWISE = (nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid)
_SHAPE_ONLY = (nn.Flatten, nn.Identity, nn.Dropout)
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_POOL = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d)
_POOL_FN: dict[type, Any] = {nn.MaxPool1d: F.max_pool1d, nn.MaxPool2d: F.max_pool2d, nn.MaxPool3d: F.max_pool3d}


def forward_jvp(
    model: nn.Module, x: Tensor, v_theta: dict[str, Tensor], v_x: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """``(f_θ(x), J_θ f · v_θ + J_x f · v_x)`` for the parameters named in ``v_theta``.

    Parameters missing from ``v_theta`` (frozen ones) get a zero tangent; ``v_x = None`` is a zero
    input tangent.
    """
    chain = _chain(model)
    if chain is None:
        return func_jvp(model, x, v_theta, v_x)
    y, dy = x, v_x
    for name, child in chain:
        y, dy = _layer(child, f"{name}." if name else "", y, dy, v_theta)
    return y, torch.zeros_like(y) if dy is None else dy


def _chain(model: nn.Module) -> list[tuple[str, nn.Module]] | None:
    """The modules ``model``'s forward applies in order, or None (not known: ``torch.func.jvp``)."""
    if isinstance(model, nn.Sequential):
        return list(model.named_children())
    layers = getattr(model, "jvp_layers", None)
    return list(layers()) if callable(layers) else None


def is_handwritten(module: nn.Module) -> bool:
    """Whether :func:`forward_jvp` propagates ``module`` by its own rule (not ``torch.func.jvp``)."""
    chain = _chain(module)
    if chain is not None:
        return all(is_handwritten(m) for _, m in chain)
    return isinstance(module, (nn.Linear, *_CONV, *_POOL, *_ELEMENTWISE, *_SHAPE_ONLY))


def func_jvp(
    module: nn.Module, x: Tensor, v_theta: dict[str, Tensor], v_x: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """``torch.func.jvp`` of ``(θ, x) ↦ module(x)`` over the parameters named in ``v_theta``."""
    named = dict(module.named_parameters())
    params = {k: named[k] for k in v_theta}
    result: Any
    # attention's fused kernels (flash, memory-efficient) have no forward-mode AD; the math kernel is
    # plain matmuls and softmax, which do (a ViT's update would fail with NotImplementedError otherwise)
    with sdpa_kernel([SDPBackend.MATH]):
        if v_x is None:
            result = jvp(lambda p: functional_call(module, p, (x,)), (params,), (v_theta,))
        else:
            result = jvp(lambda p, xx: functional_call(module, p, (xx,)), (params, x), (v_theta, v_x))
    return result[0], result[1]


def _sequential(seq: nn.Sequential, prefix: str, x: Tensor, dx: Tensor | None, v: dict[str, Tensor]) -> Pair:
    for name, child in seq.named_children():
        x, dx = _layer(child, f"{prefix}{name}.", x, dx, v)
    return x, dx


def _layer(m: nn.Module, prefix: str, x: Tensor, dx: Tensor | None, v: dict[str, Tensor]) -> Pair:
    if isinstance(m, nn.Sequential):
        return _sequential(m, prefix, x, dx, v)
    if isinstance(m, nn.Linear):
        return _affine(x, dx, m.weight, m.bias, v.get(prefix + "weight"), v.get(prefix + "bias"), F.linear)
    if isinstance(m, _CONV):
        conv = m._conv_forward  # padding mode, stride, dilation and groups of the module

        def op(inp: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
            return conv(inp, w, b)

        return _affine(x, dx, m.weight, m.bias, v.get(prefix + "weight"), v.get(prefix + "bias"), op)
    if isinstance(m, _ELEMENTWISE):
        return _elementwise(m, x, dx)
    if isinstance(m, _POOL):
        return _max_pool(m, x, dx)
    if isinstance(m, nn.Dropout) and m.training and m.p > 0:
        mask = F.dropout(torch.ones_like(x), m.p, True)
        return x * mask, None if dx is None else dx * mask
    if isinstance(m, _SHAPE_ONLY):
        return m(x), None if dx is None else m(dx)
    return _fallback(m, prefix, x, dx, v)


def _affine(
    x: Tensor,
    dx: Tensor | None,
    w: Tensor,
    b: Tensor | None,
    dw: Tensor | None,
    db: Tensor | None,
    op: Any,
) -> Pair:
    """``y = op(x, w) + b``, ``dy = op(dx, w) + op(x, dw) + db`` for an ``op`` bilinear in (input, w)."""
    y = op(x, w, b)
    dy = None if dx is None else op(dx, w, None)  # separate products: faster than one on [x; dx]
    if dw is not None:
        term = op(x, dw, db)
        dy = term if dy is None else dy + term
    elif db is not None:
        term = _bias_view(db, y).expand_as(y)
        dy = term if dy is None else dy + term
    return y, dy


def _bias_view(b: Tensor, y: Tensor) -> Tensor:
    """``b`` shaped to broadcast over ``y``'s channel dimension (dim 1; last dim for a linear)."""
    if y.dim() <= 2:
        return b
    return b.view(1, -1, *([1] * (y.dim() - 2)))


def _elementwise(m: nn.Module, x: Tensor, dx: Tensor | None) -> Pair:
    if isinstance(m, nn.ReLU):
        y = F.relu(x)
        return y, None if dx is None else torch.where(x > 0, dx, 0.0)
    if isinstance(m, nn.LeakyReLU):
        y = F.leaky_relu(x, m.negative_slope)
        if dx is None:
            return y, None
        return y, dx * torch.where(x > 0, 1.0, m.negative_slope).to(dx.dtype)
    y = torch.tanh(x) if isinstance(m, nn.Tanh) else torch.sigmoid(x)
    if dx is None:
        return y, None
    slope = 1 - y * y if isinstance(m, nn.Tanh) else y * (1 - y)
    return y, dx * slope


def _max_pool(m: Any, x: Tensor, dx: Tensor | None) -> Pair:
    """Max-pooling: ``dy`` is ``dx`` at the positions the forward pass took the maxima from."""
    if dx is None:
        return m(x), None
    pool = _POOL_FN[type(m)]
    y, idx = pool(x, m.kernel_size, m.stride, m.padding, m.dilation, ceil_mode=m.ceil_mode, return_indices=True)
    dy = dx.flatten(2).gather(2, idx.flatten(2)).view_as(y)
    return y, dy


def _fallback(m: nn.Module, prefix: str, x: Tensor, dx: Tensor | None, v: dict[str, Tensor]) -> Pair:
    """Any other module: ``torch.func.jvp`` of that module alone (or a plain call without tangents)."""
    tangents = {k: v[prefix + k] for k, _ in m.named_parameters() if prefix + k in v}
    if dx is None and not tangents:
        return m(x), None
    return func_jvp(m, x, tangents, dx)
