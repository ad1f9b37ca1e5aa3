"""The promotion gate: does a candidate's weights go live? A pure function of the two models' scores.

An update's candidate is promoted only if it is no worse than the current model on the holdout (the
newest window batches, never trained on) by more than ``promotion.tolerance``, and, when
``promotion.max_memory_drop`` is set, loses at most that much of the monitored metric on the replay
memory. Scores are in the monitored metric's own direction: for a lower-is-better metric (a loss, a
squared error) "worse" means higher.
"""

from __future__ import annotations

import torch

from raydrift.config import PromotionConfig
from raydrift.data import UpdateData
from raydrift.harness import Harness
from raydrift.learning.loop import evaluate
from raydrift.pipeline.records import GateDecision
from raydrift.weights import Weights, load_into

__all__ = ["decide", "promotion_gate"]


def decide(
    cfg: PromotionConfig,
    metric: str,
    higher_is_better: bool,
    holdout: tuple[float | None, float | None],
    memory: tuple[float | None, float | None],
    holdout_samples: int = 0,
) -> GateDecision:
    """The verdict from the scores ``(current, candidate)`` on the holdout and on the memory (None: no
    such data). Messages say the metric and its direction."""
    sign = 1.0 if higher_is_better else -1.0
    worse = "lower" if higher_is_better else "higher"
    (hold_cur, hold_new), (mem_cur, mem_new) = holdout, memory
    reasons = []
    if hold_cur is not None and hold_new is not None and sign * (hold_new - hold_cur) < -cfg.tolerance:
        reasons.append(
            f"holdout {metric} {hold_new:.3f} is {worse} than the current model's {hold_cur:.3f} "
            f"by more than the tolerance {cfg.tolerance}"
        )
    drop = cfg.max_memory_drop
    if drop is not None and mem_cur is not None and mem_new is not None and sign * (mem_new - mem_cur) < -drop:
        reasons.append(
            f"memory {metric} {mem_new:.3f} is {worse} than the current model's {mem_cur:.3f} "
            f"by more than max_memory_drop {drop}"
        )
    return GateDecision(
        promote=not reasons,
        reason="; ".join(reasons),
        holdout_current=hold_cur,
        holdout_new=hold_new,
        memory_current=mem_cur,
        memory_new=mem_new,
        holdout_samples=holdout_samples,
    )


def promotion_gate(
    cfg: PromotionConfig,
    harness: Harness,
    metric: str,
    higher_is_better: bool,
    data: UpdateData,
    current: Weights,
    candidate: Weights,
) -> GateDecision:
    """Score the current and the candidate weights on ``data``'s holdout and memory, then :func:`decide`."""
    models = []
    for w in (current, candidate):
        m = harness.build_model()
        load_into(m, w)
        models.append(m)

    def score(m: torch.nn.Module, x: torch.Tensor | None, y: torch.Tensor | None) -> float | None:
        if x is None or y is None or len(y) == 0:
            return None
        return evaluate(m, harness, x, y).get(metric)

    hold = (score(models[0], data.holdout_x, data.holdout_y), score(models[1], data.holdout_x, data.holdout_y))
    mem = (score(models[0], data.memory_x, data.memory_y), score(models[1], data.memory_x, data.memory_y))
    n = 0 if data.holdout_y is None else len(data.holdout_y)
    return decide(cfg, metric, higher_is_better, hold, mem, n)
