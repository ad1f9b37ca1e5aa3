"""Reliability building blocks without Ray: quarantine, stream resume, engine hold/release, the
plain detector state, checkpoint files (the fault-injection tests are in tests/e2e/test_fault_injection.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from raydrift.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint, truncate_csv
from raydrift.config import DriftDetectionConfig
from raydrift.detection.engine import BatchResult, DetectionEngine
from raydrift.detection.registry import DETECTOR_REGISTRY
from raydrift.errors import UserError
from raydrift.harness import Batch, build_harness
from raydrift.monitor import Monitor
from raydrift.stream import StreamState
from raydrift.weights import to_numpy


# --- bad input is quarantined, never raised ---------------------------------------------------------
def monitor() -> tuple[Monitor, Batch]:
    harness = build_harness("synthetic", {}, seed=0, batch_size=16)
    m = Monitor(harness, "accuracy", to_numpy(harness.build_model().state_dict()), name="m")
    return m, next(iter(harness.stream()))


@pytest.mark.parametrize(
    ("corrupt", "reason"),
    [
        (lambda b: Batch(b.x.clone().fill_(float("nan")), b.y, b.regime), "non-finite input"),
        (lambda b: Batch(torch.where(b.x > 0, float("inf"), b.x), b.y, b.regime), "non-finite input"),
        (lambda b: Batch(b.x[:, :1], b.y, b.regime), "shape"),
        (lambda b: Batch(b.x.double(), b.y, b.regime), "dtype"),
        (lambda b: Batch(b.x, b.y[:3], b.regime), "labels"),
        (lambda b: Batch(b.x[:0], b.y[:0], b.regime), "empty"),
        (lambda b: "not a batch", "expected a Batch"),
    ],
)
def test_bad_batches_are_quarantined_with_a_reason(corrupt, reason: str) -> None:  # type: ignore[no-untyped-def]
    m, good = monitor()
    assert m.evaluate(0, good).quarantined is None  # the first good batch sets the expected shape/dtype
    r = m.evaluate(1, corrupt(good))
    assert r.quarantined is not None and reason in r.quarantined
    assert r.n == 0 and r.batch_id == 1
    # the monitor keeps working
    assert m.evaluate(2, good).quarantined is None and m.stats()["quarantined"] == 1


def test_a_model_that_raises_quarantines_the_batch() -> None:
    m, good = monitor()
    m.evaluate(0, good)  # no expected spec check would catch a 3-feature input before this
    m._input_spec = None  # a monitor that has not seen a good batch yet
    r = m.evaluate(1, Batch(torch.zeros(4, 3), torch.zeros(4, dtype=torch.long), 0))
    assert r.quarantined is not None and "the model raised" in r.quarantined


def test_the_engine_skips_quarantined_results_in_order() -> None:
    eng = DetectionEngine(DriftDetectionConfig(detector="adwin", interval=2), "accuracy", True)
    ok = lambda b: BatchResult(b, 0, 0, np.ones(8, np.float32), {"accuracy": 1.0})  # noqa: E731
    bad = BatchResult(1, 0, 0, np.zeros(0, np.float32), {}, quarantined="nan")
    out = eng.ingest(ok(0))
    out.extend(eng.ingest(ok(2)))  # waits for 1
    assert out.next_batch == 1
    out.extend(eng.ingest(bad))
    assert out.next_batch == 3
    assert [(r["batch_id"], r["status"]) for r in out.batches] == [(0, "ok"), (1, "quarantined"), (2, "ok")]
    assert eng.stats["quarantined"] == 1 and eng.stats["batches"] == 2
    covered = [b for rec in out.intervals for b in range(rec.first_batch, rec.last_batch + 1)]
    assert 1 not in covered or all(rec.n_samples == 16 for rec in out.intervals)


def test_hold_feeds_no_detector_and_release_feeds_the_new_version_only() -> None:
    cfg = DriftDetectionConfig(detector="adwin", warmup_batches=0, cooldown_batches=0, granularity="batch")
    eng = DetectionEngine(cfg, "accuracy", True)
    rng = np.random.default_rng(0)

    def res(b: int, acc: float, version: int) -> BatchResult:
        v = (rng.random(64) < acc).astype(np.float32)
        return BatchResult(b, 0, version, v, {"accuracy": float(v.mean())})

    b = 0
    for _ in range(40):
        assert not eng.ingest(res(b, 0.95, 0)).events
        b += 1
    eng.hold()
    for _ in range(40):  # a collapse while held: recorded, not fed, no alarm
        out = eng.ingest(res(b, 0.1, 0))
        assert not out.events and out.batches[0]["status"] == "ok"
        b += 1
    assert eng.stats["not_fed"] == 40
    eng.release(1)
    for _ in range(5):  # stragglers of the old version: still not fed
        assert not eng.ingest(res(b, 0.1, 0)).events
        b += 1
    assert eng.stats["not_fed"] == 45
    events = []
    for i in range(100):  # the new model is good, then collapses: detected
        events += eng.ingest(res(b, 0.95 if i < 40 else 0.1, 1)).events
        b += 1
    assert events and events[0].version == 1 and events[0].batch_id >= 85


# --- the stream resumes exactly -------------------------------------------------------------------
def batches(n: int, size: int = 4) -> Iterator[Batch]:
    for i in range(n):
        yield Batch(torch.full((size, 2), float(i)), torch.full((size,), i % 3, dtype=torch.long), regime=i // 10)


def test_stream_state_round_trip_continues_identically() -> None:
    a = StreamState(batches(60), window_batches=4, memory_size=12, seed=3)
    a.next_batches(25)
    a.commit(19, quarantined=[7])
    state = a.state_dict()
    b = StreamState(batches(60), window_batches=4, memory_size=12, seed=3)
    b.load_state_dict(state)
    a.rewind(20)
    for s in (a, b):
        got = s.next_batches(15)
        assert [m.batch_id for m, _ in got] == list(range(20, 35))
        s.commit(34)
    da, db = a.update_data(34), b.update_data(34)
    for f in ("window_x", "window_y", "memory_x", "memory_y"):
        assert torch.equal(getattr(da, f), getattr(db, f)), f
    assert 7.0 not in da.memory_x[:, 0].tolist()  # the quarantined batch never joined the memory


def test_catch_up_rebuilds_the_window_and_memory_from_an_older_state() -> None:
    ref = StreamState(batches(60), window_batches=4, memory_size=12, seed=1)
    ref.next_batches(30)
    ref.commit(9)
    older = ref.state_dict()
    ref.commit(24, quarantined=[12])
    s = StreamState(batches(60), window_batches=4, memory_size=12, seed=1)
    s.load_state_dict(older)
    s.catch_up(24, quarantined=[12])
    assert s.committed == 25 and [m.batch_id for m, _ in s.next_batches(2)] == [25, 26]
    da, db = ref.update_data(24), s.update_data(24)
    assert torch.equal(da.memory_x, db.memory_x) and torch.equal(da.window_x, db.window_x)


def test_update_data_holds_out_the_newest_batches() -> None:
    s = StreamState(batches(20), window_batches=5)
    s.next_batches(10)
    d = s.update_data(9, holdout_batches=2)
    assert d.window_x[:, 0].unique().tolist() == [5.0, 6.0, 7.0]
    assert d.holdout_x is not None and d.holdout_x[:, 0].unique().tolist() == [8.0, 9.0]
    one = StreamState(batches(3), window_batches=5)
    one.next_batches(1)
    assert one.update_data(0, holdout_batches=2).holdout_x is None  # at least one batch is trained on


def test_resuming_a_different_stream_is_a_clear_error() -> None:
    a = StreamState(batches(30))
    a.next_batches(20)
    a.commit(19)
    b = StreamState(batches(10))
    with pytest.raises(ValueError, match="not the stream the checkpoint was taken from"):
        b.load_state_dict(a.state_dict())


# --- state read back from disk is plain (the hostile corpus is in tests/test_safe_state.py) ---------
@pytest.mark.parametrize("name", sorted(DETECTOR_REGISTRY))
def test_every_engine_state_is_plain_and_survives_weights_only(name: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for label_free in ("none", "features"):
        cfg = DriftDetectionConfig(detector=name, label_free={"signal": label_free})
        eng = DetectionEngine(cfg, "accuracy", True)
        for b in range(30):
            v = (rng.random(32) < (0.9 if b < 15 else 0.4)).astype(np.float32)
            feats = rng.normal(size=(32, 3)) if label_free != "none" else None
            if eng.ingest(BatchResult(b, 0, 0, v, {"accuracy": float(v.mean())}, features=feats)).events:
                eng.resume_after_update(b + 1, 0)
        eng.ingest(BatchResult(40, 0, 0, np.ones(8, np.float32), {"accuracy": 1.0}))  # buffered, out of order
        save_checkpoint(tmp_path, checkpoint_state(eng.state_dict()))
        again = DetectionEngine(cfg, "accuracy", True)
        load_checkpoint(tmp_path, engine=again)  # weights-only, every field checked, loaded into again
        assert again.next_batch == eng.next_batch and again.buffered == eng.buffered == [40]
        assert again.state_dict()["stats"] == eng.state_dict()["stats"]


def checkpoint_state(detector: dict[str, Any] | None = None, **over: Any) -> dict[str, Any]:
    """A format-2 checkpoint's fields, as the coordinator writes them."""
    state: dict[str, Any] = {
        "processed": 3,
        "version": 1,
        "weights": {"w": torch.ones(2)},
        "strategy_state": None,
        "stream": {"committed": 3},
        "detector": detector if detector is not None else {},
        "summary": "{}",
        "books": {"samples": 10, "monitor_seconds": 1.5, "last_value": 0.5},
        "metrics_rows": 1,
        "batches_rows": 3,
        "tracker": {},
    }
    return {**state, **over}


def test_checkpoint_round_trip_and_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no checkpoint"):
        load_checkpoint(tmp_path)
    save_checkpoint(tmp_path, checkpoint_state())
    state = load_checkpoint(tmp_path)
    assert state["processed"] == 3 and torch.equal(state["weights"]["w"], torch.ones(2))
    checkpoint_path(tmp_path).write_bytes(b"garbage")
    with pytest.raises(UserError, match="damaged"):
        load_checkpoint(tmp_path)
    # format 1: the detector state was pickled bytes; refused whatever the bytes are
    torch.save({**checkpoint_state(), "format": 1, "detector": b"\x80\x04N."}, checkpoint_path(tmp_path))
    with pytest.raises(UserError, match="format 1 .*start a new run"):
        load_checkpoint(tmp_path)
    for bad, match in [
        ({"processed": -1}, "'processed' is negative"),
        ({"processed": True}, "'processed' is a bool"),
        ({"weights": {"w": [1.0]}}, "named tensors"),
        ({"books": {"samples": 1}}, "'books'"),
        ({"detector": {"x": (1, 2)}}, "detector state"),
        ({"extra": 1}, "unexpected fields"),
    ]:
        save_checkpoint(tmp_path, checkpoint_state(**bad))
        with pytest.raises(UserError, match=match) as err:
            load_checkpoint(tmp_path)
        assert "\n" not in str(err.value)
    state = checkpoint_state()
    del state["books"]
    save_checkpoint(tmp_path, state)
    with pytest.raises(UserError, match="misses"):
        load_checkpoint(tmp_path)


def test_truncate_csv_keeps_the_header_and_first_rows(tmp_path: Path) -> None:
    p = tmp_path / "m.csv"
    p.write_text("a,b\n1,2\n3,4\n5,6\n")
    truncate_csv(p, 2)
    assert p.read_text().splitlines() == ["a,b", "1,2", "3,4"]
    truncate_csv(tmp_path / "missing.csv", 1)  # no error
