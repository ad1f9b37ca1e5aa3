"""Continual-learning metrics from an accuracy matrix.

The accuracy matrix ``A`` has one row per model version and one column per regime: ``A[k][j]`` is the
accuracy of the model after update ``k`` on regime ``j``'s held-out test set (row 0 is the initial
model, before any update). Entries may be ``None`` (a regime without a test set, or a version that was
not evaluated on it); ``None`` entries are skipped everywhere.

Regime ids are assumed to be numbered in the order the stream first shows them, so "``s`` regimes
seen" means regimes ``0 .. s-1``. Regimes may recur; that does not change the count.

Inputs shared by the functions
------------------------------
rows : list[list[float | None]]
    The matrix ``A`` (row ``K = len(rows) - 1`` is the final model).
seen_at : list[int]
    ``seen_at[k]``: how many regimes the stream had shown when row ``k`` was produced (``>= 1``;
    the first regime counts at row 0).
last_row_of_regime : dict[int, int]
    ``last_row_of_regime[j]``: the index of the last row produced while regime ``j`` was the current
    regime, i.e. the model that had learned regime ``j`` as well as it ever would before moving on.

Degenerate cases: with a single regime seen there is nothing to forget or to transfer to, and
:func:`forgetting` and :func:`backward_transfer` return ``None`` (not 0.0, which would read as "no
forgetting measured"). The same holds whenever no regime qualifies (e.g. all entries ``None``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["average_accuracy", "backward_transfer", "cl_summary", "forgetting"]

Row = Sequence[float | None]


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _at(row: Row, j: int) -> float | None:
    return row[j] if j < len(row) else None


def average_accuracy(final_row: Row, seen: int) -> float | None:
    """Mean accuracy of a model over the regimes seen so far.

    ``ACC = (1 / s) Σ_{j < s} A[K][j]`` with ``s = seen``, over the non-``None`` entries of
    ``final_row[:seen]``. ``None`` if there is none.
    """
    return _mean([v for j in range(seen) if (v := _at(final_row, j)) is not None])


def forgetting(rows: Sequence[Row], seen_at: Sequence[int], clip: bool = False) -> float | None:
    """Average forgetting of the final model (Chaudhry et al., 2018, "Riemannian Walk", eq. 4-5).

    With ``K`` the final row and ``s = seen_at[K]`` regimes seen, the forgetting of regime ``j`` is
    the drop from the best accuracy it ever had to its final accuracy:

    ``f_j = max_{k < K, seen_at[k] > j} A[k][j] - A[K][j]``

    (the max runs over the earlier rows produced after regime ``j`` had been seen), and

    ``F = (1 / (s - 1)) Σ_{j < s-1} f_j``

    averages over every seen regime except the last one seen (the one being learned). As in the
    paper, ``f_j`` is not clipped: it is negative when the final accuracy on ``j`` beats every earlier
    one. ``clip=True`` uses ``max(f_j, 0)`` instead (forgetting only, no credit for improvement).
    Regimes without an earlier row (or with ``None`` entries) are left out of the mean; ``None`` when
    none is left (in particular when ``s == 1``).
    """
    _check(rows, seen_at)
    last = len(rows) - 1
    final, seen = rows[last], seen_at[last]
    values = []
    for j in range(seen - 1):
        a_final = _at(final, j)
        earlier = [v for k in range(last) if seen_at[k] > j and (v := _at(rows[k], j)) is not None]
        if a_final is None or not earlier:
            continue
        f = max(earlier) - a_final
        values.append(max(f, 0.0) if clip else f)
    return _mean(values)


def backward_transfer(rows: Sequence[Row], last_row_of_regime: Mapping[int, int], seen: int) -> float | None:
    """Backward transfer of the final model (Lopez-Paz & Ranzato, 2017, "GEM", eq. 3).

    How learning later regimes changed the accuracy on earlier ones, measured from the model that
    had just finished with each regime:

    ``BWT = (1 / (s - 1)) Σ_{j < s-1} (A[K][j] - A[last_row_of_regime[j]][j])``

    with ``K`` the final row and ``s = seen``. Negative values mean forgetting, positive values that
    later updates helped. Regimes missing from ``last_row_of_regime`` or with ``None`` entries are
    left out of the mean; ``None`` when none is left (in particular when ``s == 1``).
    """
    if not rows:
        raise ValueError("backward_transfer needs at least one row")
    final = rows[-1]
    values = []
    for j in range(seen - 1):
        k = last_row_of_regime.get(j)
        if k is None or not 0 <= k < len(rows):
            continue
        a_final, a_then = _at(final, j), _at(rows[k], j)
        if a_final is None or a_then is None:
            continue
        values.append(a_final - a_then)
    return _mean(values)


def cl_summary(
    rows: Sequence[Row], seen_at: Sequence[int], last_row_of_regime: Mapping[int, int]
) -> dict[str, float | None]:
    """``final_average_accuracy``, ``forgetting`` (unclipped) and ``backward_transfer`` of the final row.

    See :func:`average_accuracy`, :func:`forgetting` and :func:`backward_transfer`; the number of
    regimes seen is ``seen_at[-1]``.
    """
    _check(rows, seen_at)
    seen = seen_at[-1]
    return {
        "final_average_accuracy": average_accuracy(rows[-1], seen),
        "forgetting": forgetting(rows, seen_at),
        "backward_transfer": backward_transfer(rows, last_row_of_regime, seen),
    }


def _check(rows: Sequence[Row], seen_at: Sequence[int]) -> None:
    if not rows:
        raise ValueError("the accuracy matrix needs at least one row (the initial model)")
    if len(seen_at) != len(rows):
        raise ValueError(f"seen_at has {len(seen_at)} entries for {len(rows)} rows")
