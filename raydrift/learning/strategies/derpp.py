"""DER++: experience replay with stored logits (Buzzega et al., NeurIPS 2020, "Dark Experience Replay")."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, ClassVar

import torch
from pydantic import Field
from torch import Tensor, nn

from raydrift.data import StepContext, UpdateData
from raydrift.harness import Harness
from raydrift.learning.strategies.base import StrategyOptions, UpdateStrategy

__all__ = ["DERPPOptions", "DERPPUpdate", "LogitBank", "LogitReplayState", "as_rows", "logit_replay_sum"]


class DERPPOptions(StrategyOptions):
    """``continual_learning.params`` of ``der++``."""

    alpha: float = Field(0.5, ge=0, description="alpha: weight of the logit (squared-error) replay term")
    beta: float = Field(0.5, ge=0, description="beta: weight of the label (harness loss) replay term")


class LogitBank:
    """The logits a strategy replays, one row per memory sample, kept across updates by sample id.

    When logits are recorded
    ------------------------
    DER records a sample's logits when it enters the memory, with the model of that time. In raydrift
    the memory is filled by the stream reader, which has no model; so a memory sample's logits are
    recorded at the start of the first update that sees it, with the *incoming* weights (the model
    deployed while the sample was streamed, which has learned the regimes before it). Once recorded,
    a sample keeps its logits for as long as it stays in the memory: :meth:`prepare` looks them up by
    ``UpdateData.memory_ids`` in this bank's state (carried from update to update by
    ``strategy_state``) or takes them from ``UpdateData.memory_logits``.

    Without ``memory_ids`` the rows cannot be matched across updates, and every update records all
    logits afresh with the incoming model (distillation towards the previous model on the memory,
    as in LwF/iCaRL): still a function-space regulariser, but one that can drift.
    """

    def __init__(self) -> None:
        self.ids: Tensor | None = None
        self.logits: Tensor | None = None
        self.recorded = 0  # rows recorded by the last prepare()

    @torch.no_grad()
    def prepare(self, model: nn.Module, data: UpdateData, batch_size: int = 256) -> Tensor | None:
        """The logits of every memory row, ``(len(memory), C)`` (``None`` for an empty memory).

        Outputs of any shape are kept as rows: ``(n,)`` gives ``C = 1``, ``(n, k)`` gives ``C = k``,
        ``(n, a, b)`` gives ``C = a * b`` (:func:`logit_replay_sum` compares them row by row).
        """
        m = len(data.memory_y)
        self.recorded = 0
        if m == 0:
            return None
        z: Tensor | None = (
            as_rows(data.memory_logits).clone().float() if data.memory_logits is not None else None
        )
        ids = data.memory_ids
        if ids is not None and self.ids is not None and self.logits is not None:
            known = {int(v): k for k, v in enumerate(self.ids.tolist())}
            rows = [(i, known[int(v)]) for i, v in enumerate(ids.tolist()) if int(v) in known]
            if rows:
                if z is None:
                    z = torch.full((m, self.logits.shape[1]), float("nan"))
                dst = torch.tensor([r[0] for r in rows])
                src = torch.tensor([r[1] for r in rows])
                free = torch.isnan(z[dst]).any(dim=1)
                z[dst[free]] = self.logits[src[free]]
        missing = torch.arange(m) if z is None else torch.nonzero(torch.isnan(z).any(dim=1)).flatten()
        if len(missing):
            device = next((p.device for p in model.parameters()), torch.device("cpu"))
            was_training = model.training
            model.eval()
            try:
                parts = [
                    as_rows(model(data.memory_x[missing[i : i + batch_size]].to(device))).float().cpu()
                    for i in range(0, len(missing), batch_size)
                ]
            finally:
                model.train(was_training)
            new = torch.cat(parts)
            if z is None:
                z = torch.full((m, new.shape[1]), float("nan"))
            z[missing] = new
            self.recorded = len(missing)
        assert z is not None
        if ids is not None:
            self.ids, self.logits = ids.clone(), z.clone()
        else:
            self.ids = self.logits = None
        return z

    def state_dict(self) -> dict[str, Any]:
        return {"ids": self.ids, "logits": self.logits}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ids, self.logits = state.get("ids"), state.get("logits")


def as_rows(t: Tensor) -> Tensor:
    """``t`` as one row per sample, ``(n, C)``: ``(n,)`` -> ``(n, 1)``, ``(n, a, b)`` -> ``(n, a * b)``."""
    return t.reshape(len(t), -1)


def logit_replay_sum(out: Tensor, z: Tensor) -> Tensor:
    """``Σ_i mean_k (out[i, k] − z[i, k])²`` over the rows with recorded logits (NaN rows skipped).

    ``out`` is the model's output on the history batch, of any shape ``(n, ...)`` (``(n,)`` for a
    single-logit classifier or a scalar regression); ``z`` its recorded rows, ``(n, C)`` with ``C``
    the output's size per sample (see :func:`as_rows`). Divided by the global history batch size by
    the caller, so that rows without logits count as 0 and the shards of N workers sum to the
    1-worker value.
    """
    out, z = as_rows(out), as_rows(z)
    if out.shape[1] != z.shape[1]:
        raise ValueError(
            f"logit replay: the model gives {out.shape[1]} outputs per sample, the recorded logits have "
            f"{z.shape[1]} (did the model's output change between updates?)"
        )
    valid = ~torch.isnan(z).any(dim=1)
    if not bool(valid.any()):
        return out.sum() * 0.0
    diff = out[valid] - z[valid].to(out.dtype)
    return (diff * diff).mean(dim=1).sum()


class LogitReplayState:
    """State of a strategy that replays recorded logits: its :class:`LogitBank` (``self.bank``)."""

    bank: LogitBank

    def state_dict(self) -> dict[str, Any]:
        """The recorded logits by memory sample id (see :class:`LogitBank`)."""
        return {"bank": self.bank.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "bank" in state:
            self.bank.load_state_dict(state["bank"])


class DERPPUpdate(LogitReplayState, UpdateStrategy):
    """DER++: ``L_c + α · ‖f_θ(x_h) − z_h‖² + β · ℓ(f_θ(x_h), y_h)``.

    ``z_h`` are the logits recorded for the history samples (see :class:`LogitBank` for when they are
    recorded), ``α`` is ``params.alpha`` and ``β`` is ``params.beta`` (:class:`DERPPOptions`).
    Unlike the paper, which draws two independent memory batches for the two terms, one history batch
    serves both (one forward pass; the loop's history batch). The squared error is the mean over logits,
    averaged over the history batch (rows without logits count as 0).
    """

    name: ClassVar[str] = "der++"
    Options: ClassVar[type[StrategyOptions]] = DERPPOptions
    options: DERPPOptions

    def __init__(self, cfg: Any = None, options: StrategyOptions | None = None) -> None:
        super().__init__(cfg, options)
        self.bank = LogitBank()
        self._z: Tensor | None = None

    def setup(self, model: nn.Module, harness: Harness, data: UpdateData) -> None:
        self._z = self.bank.prepare(model, data)

    def teardown(self, model: nn.Module, harness: Harness) -> None:
        self._z = None

    def _terms(
        self,
        model: nn.Module,
        harness: Harness,
        x_cur: Tensor,
        y_cur: Tensor,
        x_hist: Tensor,
        y_hist: Tensor,
        z_hist: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(current loss mean, history CE *sum*, logit squared-error *sum*) from one forward pass."""
        out = model(torch.cat([x_cur, x_hist]))
        n = len(x_cur)
        lc = harness.loss(out[:n], y_cur) if n else out.sum() * 0.0
        ce_sum = harness.loss(out[n:], y_hist) * len(y_hist)
        mse_sum = logit_replay_sum(out[n:], z_hist.to(out.device)) if z_hist is not None else out.sum() * 0.0
        return lc, ce_sum, mse_sum

    def loss(
        self,
        model: nn.Module,
        harness: Harness,
        x_cur: Tensor,
        y_cur: Tensor,
        x_hist: Tensor | None,
        y_hist: Tensor | None,
    ) -> Tensor:
        """The loss without stored logits (label replay only): ``L_c + β · L_h``.

        The logit term needs to know which memory rows the history batch holds; the loop gives that to
        :meth:`backward` (``ctx.hist_index``).
        """
        if x_hist is None or y_hist is None or len(x_hist) == 0:
            return harness.loss(model(x_cur), y_cur)
        lc, ce_sum, _ = self._terms(model, harness, x_cur, y_cur, x_hist, y_hist, None)
        return lc + self.options.beta * ce_sum / len(y_hist)

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
        if x_hist is None or y_hist is None or ctx.global_hist_n == 0 or len(x_hist) == 0:
            return super().backward(model, harness, x_cur, y_cur, None, None, ctx)
        z = None
        if self._z is not None and ctx.hist_index is not None:
            z = self._z[ctx.hist_index.cpu()]
        lc, ce_sum, mse_sum = self._terms(model, harness, x_cur, y_cur, x_hist, y_hist, z)
        total = (
            lc * (len(x_cur) / max(1, ctx.global_n))
            + (self.options.beta * ce_sum + self.options.alpha * mse_sum) / ctx.global_hist_n
        )
        total.backward()
        return total.detach()

    @classmethod
    def _unit_test_params(cls) -> Iterator[dict[str, Any]]:
        yield {}
        yield {"alpha": 1.0, "beta": 0.0}
