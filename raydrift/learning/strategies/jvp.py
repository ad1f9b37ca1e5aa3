"""The JVP-regularized update: replay plus a penalty on the first-order change of the history loss.

Spec: ``shared/notes/jvp-update.md``; maths, defaults and measurements: ``docs/continuous_learning.md``.

One step minimises ``J(θ) = L_c(θ) + β · L_h(θ, x_h) + λ · φ(D(θ)) [+ α · logit replay]`` with

``D(θ) = ⟨∇θ L_h(θ, x_h), v_θ⟩ + ⟨∇x L_h(θ, x_h), v_x⟩``,
``v_θ = s · g_c / ‖g_c‖`` (``g_c = ∇θ L_c``, held constant) and
``v_x = κ · (x_c − x_h) / (‖x_c‖ + ‖x_h‖)``.

``D`` and ``L_h`` come out of **one** forward-mode JVP of ``(θ, x) ↦ L_h`` (the outputs' JVP by
:func:`raydrift.learning.forward_jvp.forward_jvp`: hand-written for ``nn.Sequential`` models,
``torch.func.jvp`` otherwise; then the loss's JVP on the outputs); back-propagating through it gives ``∇θ D = H_θθ v_θ + H_θx v_x``
(a Hessian-vector product) and ``∇θ L_h`` in the same pass. ``g_c`` is the gradient the step computes
anyway: the current loss is back-propagated first and its gradient read from ``p.grad``.

``target: outputs`` (function space) penalises the first-order change of the memory *outputs* along
the same tangent instead, ``P(θ) = mean_i mean_k (J_θ f_θ(x_h,i) v_θ + J_x f_θ(x_h,i) v_x)_k²``: one
JVP of ``(θ, x) ↦ f_θ(x)`` gives the outputs (for ``L_h`` and the logit replay) and their tangent.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn
from torch.func import jvp

from raydrift.data import StepContext, UpdateData
from raydrift.harness import Harness
from raydrift.learning.forward_jvp import forward_jvp
from raydrift.learning.strategies.base import StrategyOptions, UpdateStrategy
from raydrift.learning.strategies.derpp import LogitBank, LogitReplayState, as_rows, logit_replay_sum

__all__ = [
    "JVPOptions",
    "JVPRegularizedUpdate",
    "directional_derivative",
    "input_tangent",
    "output_directional_derivative",
    "penalty",
    "penalty_derivative",
]

LossFn = Callable[[Tensor, Tensor], Tensor]


class JVPOptions(StrategyOptions):
    """``continual_learning.params`` of ``jvp``."""

    penalty_weight: float = Field(
        1.0, ge=0, description="lambda: weight of the penalty phi(D) (0: the JVP term off)"
    )
    input_scale: float = Field(
        0.0, ge=0, description="kappa: scale of the input tangent v_x (0 turns the input term off)"
    )
    sign: Literal[-1, 1] = Field(
        -1, description="s in v_theta = s*g_c/|g_c| (-1: the descent step about to be taken)"
    )
    penalty: Literal["square", "hinge", "identity"] = Field(
        "square", description="phi(D) = D^2 | max(D, 0) | D (identity with sign -1 is unbounded below)"
    )
    logit_weight: float = Field(
        0.5, ge=0, description="alpha: weight of DER-style logit replay on the history batch (0: off)"
    )
    replay_weight: float = Field(1.0, ge=0, description="beta: weight of the replay loss")
    target: Literal["outputs", "loss"] = Field(
        "outputs",
        description="what the JVP differentiates along the update: the memory 'outputs' (mean squared "
        "output change; penalty square only) or the history 'loss' (phi(D), penalty and sign apply)",
    )

    tangent: Literal["progress", "unit"] = Field(
        "progress",
        description="length of v_theta: 'progress' (s*g_c/|g_c|^2, the step that lowers the current loss "
        "by one to first order; target outputs then weighs the output change by the current batch's mean "
        "squared output gradient: a scale-free penalty) or 'unit' (s*g_c/|g_c|, the earlier form, whose "
        "size depends on the model's parametrisation)",
    )

    @model_validator(mode="after")
    def _outputs_take_square(self) -> JVPOptions:
        if self.target == "outputs" and self.penalty != "square":
            raise ValueError(
                f"penalty {self.penalty!r} applies to target 'loss' (set params.target: loss); target "
                "'outputs' penalises the squared output change (penalty 'square')"
            )
        return self


def penalty(d: Tensor, kind: str) -> Tensor:
    """``φ(D)``: ``square`` → D², ``hinge`` → max(D, 0), ``identity`` → D."""
    if kind == "square":
        return d * d
    if kind == "hinge":
        return torch.clamp(d, min=0.0)
    if kind == "identity":
        return d
    raise ValueError(f"unknown penalty {kind!r} (jvp params.penalty): use square, hinge or identity")


def penalty_derivative(d: Tensor, kind: str) -> Tensor:
    """``φ'(D)`` (the hinge's derivative at 0 is taken as 0)."""
    if kind == "square":
        return 2.0 * d
    if kind == "hinge":
        return (d > 0).to(d.dtype)
    if kind == "identity":
        return torch.ones_like(d)
    raise ValueError(f"unknown penalty {kind!r} (jvp params.penalty): use square, hinge or identity")


def _paired(x_cur: Tensor, n: int) -> Tensor:
    """``x_cur`` cycled or cut to ``n`` rows (pairs current row ``i mod len`` with history row ``i``)."""
    if len(x_cur) == n:
        return x_cur
    return x_cur[torch.arange(n, device=x_cur.device) % len(x_cur)]


def input_tangent(
    x_cur: Tensor, x_hist: Tensor, kappa: float, sq_norms: tuple[Tensor, Tensor] | None = None
) -> Tensor:
    """``v_x = κ · (x_c − x_h) / (‖x_c‖ + ‖x_h‖)``: history inputs shifted toward the current regime.

    Row ``i`` of the history batch is paired with row ``i`` of the current batch. Batches of unequal
    size pair history row ``i`` with current row ``i mod len(x_cur)`` (the loop always gives equal
    sizes). ``sq_norms`` are the squared Frobenius norms of the *global* current and history batches
    (summed over ranks); by default those of the given batches.
    """
    xc = _paired(x_cur, len(x_hist))
    if sq_norms is None:
        sq_norms = ((xc * xc).sum(), (x_hist * x_hist).sum())
    denom = sq_norms[0].sqrt() + sq_norms[1].sqrt()
    if float(denom) == 0.0:
        return torch.zeros_like(x_hist)
    return kappa * (xc - x_hist) / denom


def directional_derivative(
    model: nn.Module,
    loss_fn: LossFn,
    x_hist: Tensor,
    y_hist: Tensor,
    v_theta: dict[str, Tensor],
    v_x: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(L_h, D, f_θ(x_h))`` from one forward-mode JVP of ``(θ, x) ↦ L_h(θ, x)`` at ``(θ, x_h)``
    (:func:`~raydrift.learning.forward_jvp.forward_jvp` of the outputs, then the loss's JVP).

    Parameters
    ----------
    model : nn.Module
        The plain module; its trainable parameters named in ``v_theta`` are the primal θ (they keep
        their autograd history, so ``D.backward()`` accumulates ``∇θ D`` into ``p.grad``).
    loss_fn : callable
        ``loss_fn(outputs, y)`` -> scalar mean loss (``harness.loss``).
    x_hist, y_hist : Tensor
        The history batch.
    v_theta : dict[str, Tensor]
        Parameter tangent by parameter name (constant).
    v_x : Tensor, optional
        Input tangent (constant); ``None`` (no input term) skips the input's forward-mode work.

    Returns
    -------
    tuple of Tensor
        The history loss, its directional derivative along ``(v_θ, v_x)`` and the model's outputs
        on ``x_hist`` (for logit replay without a second forward pass).
    """
    out, dout = forward_jvp(model, x_hist, v_theta, v_x)
    result: Any = jvp(lambda o: loss_fn(o, y_hist), (out,), (dout,))  # the loss's JVP on the outputs
    return result[0], result[1], out


def output_directional_derivative(
    model: nn.Module, x_hist: Tensor, v_theta: dict[str, Tensor], v_x: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """``(f_θ(x_h), J f_θ(x_h) · (v_θ, v_x))`` from one forward-mode JVP of ``(θ, x) ↦ f_θ(x)``.

    The outputs keep their shape; the tangent has the outputs' shape (differentiable in θ, like
    :func:`directional_derivative`'s ``D``).
    """
    return forward_jvp(model, x_hist, v_theta, v_x)


def output_change_sum(dout: Tensor) -> Tensor:
    """``Σ_i mean_k dout[i, k]²``: the squared first-order output change, summed over samples."""
    rows = as_rows(dout)
    return (rows * rows).mean(dim=1).sum()


@dataclass
class _Tangent:
    """``v_θ = scale · grads`` (``grads``: the global ``g_c``; ``held``: the ``p.grad`` taken out)."""

    grads: list[Tensor]
    scale: float
    held: list[Tensor] | None
    norm: float = 0.0

    def restore(self, plist: list[Tensor]) -> None:
        """Add the taken-out ``g_c`` share back into ``p.grad`` (``p.grad = g_c + the history's``)."""
        if self.held is None:
            return
        for p, g in zip(plist, self.held, strict=True):
            if p.grad is None:
                p.grad = g
            else:
                p.grad.add_(g)
        self.held = None


class JVPRegularizedUpdate(LogitReplayState, UpdateStrategy):  # state: recorded logits (logit_weight > 0)
    """Replay with a penalty on the predicted first-order rise of the history loss (the JVP update).

    ``J(θ) = L_c(θ) + β · L_h(θ, x_h) + λ · φ(D(θ)) + α · ‖f_θ(x_h) − z_h‖²`` (module docstring).
    Options (``continual_learning.params``, :class:`JVPOptions`): ``penalty_weight`` (λ),
    ``input_scale`` (κ), ``replay_weight`` (β), ``sign`` (s), ``penalty`` (φ: ``square`` | ``hinge`` |
    ``identity``) and ``logit_weight`` (α; logits recorded as for DER++, see
    :class:`~raydrift.learning.strategies.derpp.LogitBank`).

    Cost of a step: a forward and backward pass on the current batch (giving ``g_c``), one JVP on the
    history batch and one backward pass through it; compared with a replay step (one forward and
    backward pass on both batches) it is measured in ``benchmarks/jvp_cost.py``.

    With N workers
    --------------
    Exact (N workers = 1 worker on the same global batch, up to float summation order): ``g_c`` is
    all-reduced before it is normalised, the batch norms in ``v_x`` are all-reduced, each rank's
    ``D`` share (its history shard's part, weighted by its share of the history batch) is
    all-reduced into the global ``D`` before the nonlinearity φ, and each rank back-propagates
    ``λ · φ'(D_global) · D_rank``, whose sum over ranks is ``∇θ λ φ(D_global)``. This costs two small
    collectives and one of the size of the gradient per step, on top of the loop's gradient
    all-reduce. What stays approximate: models with batch-dependent layers (BatchNorm statistics are
    per shard) or per-rank randomness (dropout masks), as for every strategy; and the pairing of
    ``x_c`` with ``x_h`` in ``v_x`` when a step's current and history batches differ in size.
    """

    name: ClassVar[str] = "jvp"
    Options: ClassVar[type[StrategyOptions]] = JVPOptions
    options: JVPOptions

    def __init__(self, cfg: Any = None, options: StrategyOptions | None = None) -> None:
        super().__init__(cfg, options)
        self.bank = LogitBank()
        self._z: Tensor | None = None

    # --- hooks ------------------------------------------------------------------------------------
    def setup(self, model: nn.Module, harness: Harness, data: UpdateData) -> None:
        self._z = self.bank.prepare(model, data) if self.options.logit_weight > 0 else None

    def teardown(self, model: nn.Module, harness: Harness) -> None:
        self._z = None

    # --- pieces -----------------------------------------------------------------------------------
    def _trainable(self, model: nn.Module) -> dict[str, Tensor]:
        return {k: p for k, p in model.named_parameters() if p.requires_grad}

    def _v_theta(self, params: dict[str, Tensor], grads: list[Tensor]) -> dict[str, Tensor]:
        if not grads:
            return {}
        norm = float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))))  # one pass
        scale = float(self.options.sign) / norm if norm > 0 else 0.0
        scaled = torch._foreach_mul([g.detach() for g in grads], scale)  # new tensors: p.grad may grow
        return dict(zip(params, scaled, strict=True))

    def _logit_term(self, out: Tensor, hist_index: Tensor | None) -> Tensor:
        if self.options.logit_weight <= 0 or self._z is None or hist_index is None:
            return out.sum() * 0.0
        return logit_replay_sum(out, self._z[hist_index.cpu()].to(out.device))

    # --- the reference loss (one process) -----------------------------------------------------------
    def loss(
        self,
        model: nn.Module,
        harness: Harness,
        x_cur: Tensor,
        y_cur: Tensor,
        x_hist: Tensor | None,
        y_hist: Tensor | None,
    ) -> Tensor:
        """``J(θ)`` on one process, as a differentiable scalar (the reference :meth:`backward` matches).

        ``g_c`` is taken with a separate ``autograd.grad``; the logit term is left out (it needs the
        memory rows of the history batch, which only :meth:`backward` receives).
        """
        out_c = model(x_cur)
        lc = harness.loss(out_c, y_cur)
        if x_hist is None or y_hist is None or len(x_hist) == 0:
            return lc
        params = self._trainable(model)
        grads = torch.autograd.grad(lc, [out_c, *params.values()], retain_graph=True, allow_unused=True)
        grads_t = [
            torch.zeros_like(p) if g is None else g for g, p in zip(grads[1:], params.values(), strict=True)
        ]
        v = self._v_theta(params, grads_t)
        g_norm = float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads_t])))
        r = as_rows(grads[0] * len(x_cur))  # per-sample output gradients of the current loss
        rel = self._relative(g_norm, float((r * r).sum(dim=1).mean()) * r.shape[1])
        kappa = self.options.input_scale
        v_x = input_tangent(x_cur, x_hist, kappa).detach() if kappa > 0 else None
        if self.options.target == "outputs":
            out, dout = output_directional_derivative(model, x_hist, v, v_x)
            pen = output_change_sum(dout) * rel * rel / len(x_hist)
            pen = torch.log1p(pen) if self._bounded() else pen
            return (
                lc
                + self.options.replay_weight * harness.loss(out, y_hist)
                + self.options.penalty_weight * pen
            )
        lh, d, _ = directional_derivative(model, harness.loss, x_hist, y_hist, v, v_x)
        return (
            lc
            + self.options.replay_weight * lh
            + self.options.penalty_weight * penalty(d * rel, self.options.penalty)
        )

    def _relative(self, g_norm: float, r_sq_mean: float) -> float:
        """What turns the unit-tangent quantity into the penalised one (1 with ``tangent: unit``).

        ``tangent: progress``: ``1/‖g_c‖`` (``v_θ = s g_c/‖g_c‖²``); for target ``outputs`` also
        ``sqrt(C · mean_j ‖∂ℓ_j/∂f_j‖²)`` over the current batch (``r_sq_mean``, ``C`` outputs per
        sample), which measures an output change in units of the loss and turns the penalty's mean
        over outputs into a sum. 0 when ``g_c = 0`` (no step, nothing to penalise).
        """
        if self.options.tangent == "unit":
            return 1.0
        if g_norm <= 0:
            return 0.0
        rel = 1.0 / g_norm
        return rel * r_sq_mean**0.5 if self.options.target == "outputs" else rel

    # --- the step the loop takes ----------------------------------------------------------------------
    def backward(
        self,
        model: nn.Module,
        harness: Harness,
        x_cur: Tensor,
        y_cur: Tensor,
        x_hist: Tensor | None,
        y_hist: Tensor | None,
        ctx: StepContext,
    ) -> Tensor:
        params = self._trainable(model)
        plist = list(params.values())
        device = plist[0].device if plist else torch.device("cpu")
        # 1. current loss: forward + backward; its gradient (this rank's share) is g_c's share.
        lc, r_sq = self._current_step(model, harness, x_cur, y_cur, ctx, device)
        if ctx.global_hist_n == 0:  # no history anywhere: a naive step (same branch on every rank)
            return lc.detach()
        tangent = self._global_tangent(plist, ctx.all_reduce)
        # what multiplies the JVP along (g_c, v_x / scale) to give the penalised quantity
        r_mean = self._global_mean(r_sq, ctx) if self._needs_r() else 0.0
        factor = tangent.scale * self._relative(tangent.norm, r_mean)
        v = dict(zip(params, tangent.grads, strict=True))
        local = x_hist is not None and y_hist is not None and len(x_hist) > 0
        hist = (x_hist, y_hist) if local and x_hist is not None and y_hist is not None else None
        # 2. input tangent, with the global batch norms (divided by the scale put back on the result)
        v_x = self._global_input_tangent(x_cur, x_hist if local else None, ctx, device)
        v_x = None if v_x is None else v_x / tangent.scale
        # 3. one JVP on the history shard, and one backward pass through it
        step = self._outputs_step if self.options.target == "outputs" else self._loss_step
        try:
            extra = step(model, harness, hist, v, v_x, factor, ctx, device)
        finally:
            tangent.restore(plist)
        return (lc + extra).detach()

    def _current_step(
        self, model: nn.Module, harness: Harness, x_cur: Tensor, y_cur: Tensor, ctx: StepContext, device: torch.device
    ) -> tuple[Tensor, Tensor]:
        """Forward + backward of this rank's share of ``L_c`` (its gradient lands in ``p.grad``); also
        ``Σ_j ‖∂ℓ_j/∂f_j‖²`` over this rank's current rows when the penalty needs it (else 0)."""
        lc = torch.zeros((), device=device)
        r_sq = torch.zeros((), device=device)
        if len(x_cur) == 0 or ctx.global_n == 0:
            return lc, r_sq
        out = model(x_cur)
        want_r = self._needs_r()
        if want_r:
            out.retain_grad()
        lc = harness.loss(out, y_cur) * (len(x_cur) / ctx.global_n)
        lc.backward()
        if want_r and out.grad is not None:  # out.grad_j = (∂ℓ_j/∂f_j) / global_n
            r = as_rows(out.grad.detach()) * ctx.global_n
            r_sq = (r * r).sum() * r.shape[1]  # times C: the penalty's mean over outputs becomes a sum
        return lc, r_sq

    def _bounded(self) -> bool:
        """``tangent: progress`` with target ``outputs`` penalises ``log(1 + P)``: ``P`` grows without
        bound on a step that makes no progress on the current batch (``‖g_c‖ → 0`` while its outputs are
        still wrong), and ``∇ log(1 + P) = ∇P / (1 + P)`` stays bounded there."""
        return self._needs_r()

    def _needs_r(self) -> bool:
        return self.options.tangent == "progress" and self.options.target == "outputs"

    @staticmethod
    def _global_mean(r_sq: Tensor, ctx: StepContext) -> float:
        """``mean_j ‖∂ℓ_j/∂f_j‖²`` over the global current batch (one scalar collective)."""
        total = r_sq.detach().clone().reshape(1).to(torch.float64)
        if ctx.all_reduce is not None:
            ctx.all_reduce(total)
        return float(total[0]) / ctx.global_n if ctx.global_n > 0 else 0.0

    def _global_tangent(self, plist: list[Tensor], reduce: Callable[[Tensor], Any] | None) -> _Tangent:
        """The global ``g_c`` (this rank's share is in ``p.grad``; summed over ranks) and ``s/‖g_c‖``.

        ``v_θ = scale · g_c`` is never formed: a JVP is linear in its tangent, so the steps take the
        JVP along ``g_c`` (and ``v_x / scale``) and multiply its result by ``scale``, which saves a
        pass over the parameters. With one process the tangent *is* ``p.grad``: it is taken out of
        the parameters for the history backward pass and added back after (:meth:`_Tangent.restore`).
        """
        for p in plist:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        grads = [p.grad.detach() for p in plist]  # type: ignore[union-attr]
        held: list[Tensor] | None = None
        if reduce is not None:  # the global g_c (a copy), so that v_θ is the same on every rank
            flat = torch.cat([g.reshape(-1) for g in grads])
            reduce(flat)
            grads = [
                c.view_as(g)
                for c, g in zip(torch.split(flat, [g.numel() for g in grads]), grads, strict=True)
            ]
        else:
            held = grads
            for p in plist:
                p.grad = None
        norm = float(torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))) if grads else 0.0
        scale = float(self.options.sign) / norm if norm > 0 else 1.0  # g_c = 0: any scale, v_θ = 0
        return _Tangent(grads, scale, held, norm)

    def _global_input_tangent(
        self, x_cur: Tensor, x_hist: Tensor | None, ctx: StepContext, device: torch.device
    ) -> Tensor | None:
        """``v_x`` for this rank's history shard with the global batch norms (``None``: κ = 0)."""
        kappa = self.options.input_scale
        if kappa <= 0:
            return None
        if x_hist is not None and len(x_cur) > 0:
            xc = _paired(x_cur, len(x_hist))
            sq = torch.stack([(xc * xc).sum(), (x_hist * x_hist).sum()])
        else:
            sq = torch.zeros(2, device=device, dtype=x_cur.dtype)
        if ctx.all_reduce is not None:
            ctx.all_reduce(sq)
        if x_hist is None:
            return None
        if len(x_cur) == 0:
            return torch.zeros_like(x_hist)
        return input_tangent(x_cur, x_hist, kappa, (sq[0], sq[1])).detach()

    def _loss_step(
        self,
        model: nn.Module,
        harness: Harness,
        hist: tuple[Tensor, Tensor] | None,
        v: dict[str, Tensor],
        v_x: Tensor | None,
        factor: float,
        ctx: StepContext,
        device: torch.device,
    ) -> Tensor:
        """``β L_h + λ φ(D) + α logits`` (target ``loss``): back-propagated; returns this rank's share.

        ``factor`` times the JVP along ``(g_c, v_x / scale)`` is ``D`` (see :meth:`backward`)."""
        o = self.options
        lh_share = d_share = logit_share = torch.zeros((), device=device)
        if hist is not None:
            w = len(hist[0]) / ctx.global_hist_n
            lh, d, out = directional_derivative(model, harness.loss, hist[0], hist[1], v, v_x)
            lh_share, d_share = lh * w, d * (w * factor)
            logit_share = self._logit_term(out, ctx.hist_index) / ctx.global_hist_n
        d_global = d_share.detach().clone().reshape(1)
        if ctx.all_reduce is not None:  # φ sees the global D (the same on every rank)
            ctx.all_reduce(d_global)
        d_all = d_global[0]
        if hist is not None:
            surrogate = (
                o.replay_weight * lh_share
                + o.penalty_weight * penalty_derivative(d_all, o.penalty) * d_share
                + o.logit_weight * logit_share
            )
            surrogate.backward()
        pen = o.penalty_weight * penalty(d_all, o.penalty) / ctx.world_size
        return o.replay_weight * lh_share + o.logit_weight * logit_share + pen

    def _outputs_step(
        self,
        model: nn.Module,
        harness: Harness,
        hist: tuple[Tensor, Tensor] | None,
        v: dict[str, Tensor],
        v_x: Tensor | None,
        factor: float,
        ctx: StepContext,
        device: torch.device,
    ) -> Tensor:
        """``β L_h + λ ψ(P) + α logits`` (target ``outputs``); returns this rank's share.

        ``P`` is a mean over history samples: each rank back-propagates its shard's share. With
        ``tangent: progress`` ``ψ(P) = log(1 + P)`` (:meth:`_bounded`) needs the global ``P`` first
        (one scalar collective); with ``unit`` ``ψ(P) = P`` and no collective is needed."""
        o = self.options
        zero = torch.zeros((), device=device)
        lh_share = pen_share = logit_share = zero
        if hist is not None:
            out, dout = output_directional_derivative(model, hist[0], v, v_x)
            lh_share = harness.loss(out, hist[1]) * (len(hist[0]) / ctx.global_hist_n)
            pen_share = output_change_sum(dout) * (factor * factor / ctx.global_hist_n)
            logit_share = self._logit_term(out, ctx.hist_index) / ctx.global_hist_n
        weight, pen_value = 1.0, pen_share.detach()
        if self._bounded():
            p_global = pen_share.detach().clone().reshape(1).to(torch.float64)
            if ctx.all_reduce is not None:
                ctx.all_reduce(p_global)
            weight = 1.0 / (1.0 + float(p_global[0]))  # d log(1 + P) / dP
            pen_value = torch.log1p(p_global[0]).to(pen_share.dtype) / ctx.world_size
        if hist is None:
            return o.penalty_weight * pen_value
        surrogate = o.replay_weight * lh_share + o.penalty_weight * weight * pen_share + o.logit_weight * logit_share
        surrogate.backward()
        return (o.replay_weight * lh_share + o.logit_weight * logit_share).detach() + o.penalty_weight * pen_value

    @classmethod
    def _unit_test_params(cls) -> Iterator[dict[str, Any]]:
        yield {}
        yield {"target": "loss", "penalty": "hinge", "input_scale": 1.0}
        yield {"target": "loss", "penalty": "identity", "sign": 1, "logit_weight": 0.5}
        yield {"input_scale": 0.5, "logit_weight": 0.0}
        yield {"tangent": "unit", "input_scale": 0.5}
        yield {"target": "loss", "tangent": "unit"}
