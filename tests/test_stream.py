"""StreamState: ids in order, rewind, commit into window and memory (no Ray)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from raydrift.harness import Batch
from raydrift.stream import StreamState


def batches(n: int, size: int = 4, regime_len: int = 5) -> Iterator[Batch]:
    for i in range(n):
        # the value of x encodes the batch index, so tests can tell batches apart
        yield Batch(
            torch.full((size, 2), float(i)),
            torch.full((size,), i % 3, dtype=torch.long),
            regime=i // regime_len,
        )


def test_ids_are_assigned_in_order_and_the_stream_ends() -> None:
    s = StreamState(batches(7), window_batches=3, memory_size=10)
    got = s.next_batches(5) + s.next_batches(5)
    assert [m.batch_id for m, _ in got] == list(range(7))
    assert [m.regime for m, _ in got] == [0, 0, 0, 0, 0, 1, 1]
    assert all(float(b.x[0, 0]) == m.batch_id for m, b in got)
    assert s.next_batches(3) == [] and s.exhausted


def test_max_batches_stops_the_stream() -> None:
    s = StreamState(batches(100), max_batches=4)
    assert len(s.next_batches(10)) == 4 and s.next_batches(1) == []


def test_rewind_serves_the_same_batches_again() -> None:
    s = StreamState(batches(10), window_batches=3)
    first = s.next_batches(6)
    s.commit(2)
    s.rewind(3)
    again = s.next_batches(3)
    assert [m.batch_id for m, _ in again] == [3, 4, 5]
    assert all(torch.equal(a.x, b.x) for (_, a), (_, b) in zip(first[3:], again, strict=True))
    assert [m.batch_id for m, _ in s.next_batches(2)] == [6, 7]
    with pytest.raises(ValueError, match="cannot rewind"):
        s.rewind(1)  # committed


def test_window_and_memory_take_committed_batches_in_order() -> None:
    s = StreamState(batches(20), window_batches=3, memory_size=1000)
    s.next_batches(12)
    s.commit(9)
    data = s.update_data(9)
    # the window is the last 3 committed batches up to the drift batch
    assert sorted({float(v) for v in data.window_x[:, 0]}) == [7.0, 8.0, 9.0]
    # the memory holds what left the window: batches 0..6, nothing newer
    assert sorted({float(v) for v in data.memory_x[:, 0]}) == [float(i) for i in range(7)]
    assert len(data.window_y) == 12


def test_update_data_commits_up_to_the_drift_and_not_beyond() -> None:
    s = StreamState(batches(20), window_batches=2, memory_size=1000)
    s.next_batches(10)
    data = s.update_data(5)
    assert sorted({float(v) for v in data.window_x[:, 0]}) == [4.0, 5.0]
    s.rewind(6)  # batches after the drift are still servable
    assert [m.batch_id for m, _ in s.next_batches(2)] == [6, 7]


def test_memory_is_bounded_and_deterministic() -> None:
    def run() -> torch.Tensor:
        s = StreamState(batches(50), window_batches=2, memory_size=16, seed=3)
        s.next_batches(50)
        return s.update_data(49).memory_x

    a, b = run(), run()
    assert len(a) == 16 and torch.equal(a, b)
    assert len({float(v) for v in a[:, 0]}) > 4  # a sample over many batches, not the last few


def test_regime_starts() -> None:
    s = StreamState(batches(12, regime_len=5))
    s.next_batches(12)
    assert s.regime_starts() == [(0, 0), (1, 5), (2, 10)]


def test_batches_travel_as_numpy_and_come_back_as_writable_copies() -> None:
    from dataclasses import dataclass

    from raydrift.stream import PackedBatch, pack_batch, unpack_batch

    b = Batch(torch.randn(4, 3), torch.tensor([0, 1, 2, 1]), regime=2)
    packed = pack_batch(b)
    assert isinstance(packed, PackedBatch) and isinstance(packed.x, np.ndarray)
    packed.x.flags.writeable = False  # as read from the object store
    back = unpack_batch(packed)
    assert type(back) is Batch and back.regime == 2
    assert torch.equal(back.x, b.x) and torch.equal(back.y, b.y) and back.y.dtype == torch.int64
    back.x.add_(1.0)  # a model writing to its input changes neither the shared arrays nor the source
    assert torch.equal(torch.from_numpy(packed.x.copy()), b.x)

    @dataclass
    class Tagged(Batch):
        source: str = "camera-1"

    tagged = Tagged(b.x, b.y, 0)
    assert pack_batch(tagged) is tagged and unpack_batch(tagged) is tagged  # subclasses keep their fields
    half = Batch(b.x.to(torch.bfloat16), b.y, 0)
    assert pack_batch(half) is half  # numpy has no bfloat16
    broken = Batch([1.0, 2.0], b.y, 0)  # type: ignore[arg-type]
    assert pack_batch(broken) is broken  # malformed input reaches the monitor, which quarantines it


def test_next_batches_stops_at_max_bytes_but_serves_at_least_one() -> None:
    s = StreamState(batches(10, size=4), window_batches=3, memory_size=10)
    one = 4 * 2 * 4 + 4 * 8  # x: 4 x 2 float32, y: 4 int64
    assert [m.batch_id for m, _ in s.next_batches(10, max_bytes=2 * one)] == [0, 1]
    assert [m.batch_id for m, _ in s.next_batches(10, max_bytes=1)] == [2]  # one batch even if larger
    assert len(s.next_batches(10)) == 7


def window_ids(data: object) -> list[float]:
    return sorted({float(v) for v in data.window_x[:, 0]})  # type: ignore[attr-defined]


def test_update_data_since_grows_the_window_up_to_recent_batches() -> None:
    s = StreamState(batches(30), window_batches=3, memory_size=1000, recent_batches=6)
    s.next_batches(20)
    s.quarantine([8])
    s.commit(12)
    assert window_ids(s.update_data(12)) == [10.0, 11.0, 12.0]
    # since batch 7: 7..12 without the quarantined 8, within the 6 kept
    assert window_ids(s.update_data(12, since=7)) == [7.0, 9.0, 10.0, 11.0, 12.0]
    # since an older batch than is kept: the 6 newest
    assert window_ids(s.update_data(12, since=0)) == [float(i) for i in (6, 7, 9, 10, 11, 12)]
    s.commit(14)
    assert window_ids(s.update_data(14, since=0)) == [float(i) for i in (9, 10, 11, 12, 13, 14)]
    # since a batch inside the window: the window (never less than it)
    assert window_ids(s.update_data(14, since=14)) == [12.0, 13.0, 14.0]
    # the held-out batch is the newest, also of a grown window
    d = s.update_data(14, holdout_batches=1, since=10)
    assert window_ids(d) == [10.0, 11.0, 12.0, 13.0] and {float(v) for v in d.holdout_x[:, 0]} == {14.0}
    # the memory is unchanged by it: what left the 3-batch window
    assert sorted({float(v) for v in d.memory_x[:, 0]}) == [float(i) for i in range(12) if i != 8]


def test_recent_batches_survive_a_state_round_trip() -> None:
    s = StreamState(batches(30), window_batches=2, memory_size=100, recent_batches=5)
    s.next_batches(10)
    s.commit(8)
    t = StreamState(batches(30), window_batches=2, memory_size=100, recent_batches=5)
    t.load_state_dict(s.state_dict())
    assert window_ids(t.update_data(8, since=0)) == [4.0, 5.0, 6.0, 7.0, 8.0]
    # a checkpoint of an older version (no "recent"): the window is what there is
    old = s.state_dict()
    del old["recent"]
    u = StreamState(batches(30), window_batches=2, memory_size=100, recent_batches=5)
    u.load_state_dict(old)
    assert window_ids(u.update_data(8, since=0)) == [7.0, 8.0]
