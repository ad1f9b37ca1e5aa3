"""Where did the monitored values change? The split a drift event's value and score are measured on.

A detector says *that* the values changed, usually a few samples after the change (ADWIN with
``clock: 1`` alarms ~15 samples into a drop of accuracy from 0.97 to 0.4). A fixed "recent window"
(say the last batch) then still holds mostly values from before the change, and the drop it shows is a
fraction of the real one (0.97 -> 0.85 instead of 0.97 -> 0.4). :func:`split_at_change` instead
locates the change among the values since the detector's last reset, so the event reports the mean
since the change.
"""

from __future__ import annotations

import numpy as np

__all__ = ["MIN_CHANGE_SAMPLES", "SUPPORT", "split_at_change"]

#: The part after the change covers at least this many samples: a handful of unlucky values right at
#: the end would otherwise pass for a change.
MIN_CHANGE_SAMPLES = 8.0

#: Log-likelihood units below the best split within which the earliest split is taken (a ~95% support
#: interval of the change point). The best split alone tends to cut off a short run of the worst values
#: (a drop 0.8 -> 0.6 read as 0.8 -> 0.49 on average); the earliest plausible one does not (0.57).
SUPPORT = 2.0


def split_at_change(
    values: np.ndarray,
    weights: np.ndarray,
    prior_sum: float = 0.0,
    prior_weight: float = 0.0,
    min_after: float = MIN_CHANGE_SAMPLES,
    support: float = SUPPORT,
) -> tuple[int, float, float] | None:
    """Where the mean of ``values`` changed: ``(values after the change, mean before, mean after)``.

    A split into before / after has the log-likelihood ratio (one mean shift, Gaussian values whose
    variance is ``sigma^2 / weight``) ``D^2 w_a w_b / (2 sigma^2 (w_a + w_b))``, with ``D`` the
    difference of the two means and ``w`` the summed weights of each side; ``sigma^2`` is estimated
    from the residuals around the best split's two means. Of the splits within ``support`` log-likelihood units of the best one, the
    earliest is taken. The part after the change is a suffix of ``values`` covering at least
    ``min_after`` weight; the part before it also holds the older values that are only kept as a sum
    (``prior_sum`` of ``prior_weight``).

    Parameters
    ----------
    values, weights : np.ndarray
        The newest values in order and the samples each stands for (1 per sample, ``n`` for a batch
        mean).
    prior_sum, prior_weight : float
        Weighted sum and total weight of the values before ``values``.
    min_after : float
        Smallest weight of the part after the change.
    support : float
        Log-likelihood units below the best split within which the earliest split is taken (0: the
        best split).

    Returns
    -------
    tuple or None
        ``(n_after, mean_before, mean_after)``, or None when no split leaves weight on both sides.

    Examples
    --------
    >>> v = np.array([0.0] * 50 + [1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0])
    >>> n, before, after = split_at_change(v, np.ones_like(v))
    >>> n, before, round(after, 2)
    (10, 0.0, 0.8)
    """
    x = np.asarray(values, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    if x.size == 0:
        return None
    after_sum = np.cumsum((x * w)[::-1])[::-1]  # [k]: sum of x[k:]
    after_w = np.cumsum(w[::-1])[::-1]
    before_sum = prior_sum + float(np.dot(x, w)) - after_sum
    before_w = prior_weight + float(w.sum()) - after_w
    ok = (before_w > 1e-12) & (after_w >= min_after)
    if not ok.any():
        return None
    safe_a, safe_b = np.where(ok, after_w, 1.0), np.where(ok, before_w, 1.0)
    diff = after_sum / safe_a - before_sum / safe_b
    stat = np.where(ok, diff * diff * safe_a * safe_b / (safe_a + safe_b), -1.0)  # 2 sigma^2 loglik ratio
    best = int(np.argmax(stat))
    # sigma^2 from the residuals around the best split's two means (var(x_i) = sigma^2 / w_i)
    fitted = np.where(
        np.arange(x.size) < best, before_sum[best] / before_w[best], after_sum[best] / after_w[best]
    )
    sigma2 = max(float(np.dot(w, (x - fitted) ** 2)) / x.size, 1e-12)
    plausible = np.flatnonzero(ok & (stat >= stat[best] - 2.0 * support * sigma2))
    k = int(plausible[0])
    return x.size - k, float(before_sum[k] / before_w[k]), float(after_sum[k] / after_w[k])
