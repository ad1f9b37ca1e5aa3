"""Aggregating a sequence of values (batch means of an interval) into one number."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

__all__ = ["AGGREGATIONS", "aggregate"]

AGGREGATIONS = ("mean", "median", "last")


def aggregate(
    values: Sequence[float] | np.ndarray,
    how: Literal["mean", "median", "last"],
    weights: Sequence[float] | np.ndarray | None = None,
) -> float:
    """Aggregate ``values`` into one float.

    Parameters
    ----------
    values : sequence of float
        The values, in stream order (e.g. the batch means of one interval).
    how : {"mean", "median", "last"}
        ``mean``: the mean, weighted by ``weights`` when given (the engine passes batch sizes, so the
        mean of batch means is the per-sample mean); ``median``: the median (unweighted);
        ``last``: the last value.
    weights : sequence of float, optional
        Non-negative weights for ``mean``; ignored by ``median`` and ``last``. All-zero weights give NaN.

    Returns
    -------
    float

    Raises
    ------
    ValueError
        ``values`` is empty, ``how`` is unknown, or ``weights`` does not match ``values``.

    Examples
    --------
    >>> aggregate([1.0, 0.0, 0.5], "median")
    0.5
    >>> aggregate([1.0, 0.0], "mean", weights=[3, 1])
    0.75
    """
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.size == 0:
        raise ValueError("cannot aggregate an empty sequence")
    if how == "last":
        return float(arr[-1])
    if how == "median":
        return float(np.median(arr))
    if how == "mean":
        if weights is None:
            return float(arr.mean())
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
        if w.shape != arr.shape:
            raise ValueError(f"{w.size} weights for {arr.size} values")
        total = float(w.sum())
        return float(np.dot(arr, w) / total) if total > 0 else float("nan")
    raise ValueError(f"unknown aggregation '{how}': use one of {', '.join(AGGREGATIONS)}")
