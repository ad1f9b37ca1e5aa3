"""The River stream harness through the real Coordinator: a short regression stream (squared error,
lower is better) with two abrupt concept switches. Its follow-ups train on every batch since the change point
(``adaptation.followup_data: since_drift``) for a fixed number of optimizer steps (``train.steps``)."""

from __future__ import annotations

import csv
from pathlib import Path

from raydrift.config import build_config
from raydrift.coordinator import Coordinator

ROOT = Path(__file__).resolve().parents[2]


def test_river_friedman_stream_detects_and_adapts(ray_cluster: Path, tmp_path: Path) -> None:
    cfg = build_config(
        ROOT / "configs" / "river-friedman.yaml",
        [
            "verbosity=0",
            "data.regime_batches=14",
            "data.test_size=300",
            "data.pretrain_size=600",
            "stream.batch_size=32",
            "model.pretrain_epochs=20",
            "train.steps=40",
            "adaptation.max_followups=2",
            "adaptation.followup_data=since_drift",
            "logging.plots=false",
            f"logging.runs_dir={tmp_path / 'runs'}",
        ],
    )
    s = Coordinator(cfg, run_dir=tmp_path / "run", console=lambda _: None).run().to_dict()
    assert s["run"]["status"] == "completed"
    with open(tmp_path / "run" / "batches.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["batch_id"]) for r in rows] == list(range(42))  # each batch once, in order
    se = {g: [float(r["value"]) for r in rows if int(r["regime"]) == g] for g in range(3)}
    # the regime-0 model is far worse on the swapped concept: the change is real and large
    assert sum(se[1][:3]) / 3 > 1.8 * (sum(se[0]) / len(se[0]))
    assert s["drift_events"], "no drift detected on a squared error that about doubled"
    assert s["updates"], s.get("rejected_updates")
    assert all(u["regime"] >= 1 for u in s["updates"])
    # regime 1's batches scored with updated weights have a far lower error than those scored with the
    # regime-0 model
    old = [float(r["value"]) for r in rows if int(r["regime"]) == 1 and int(r["version"]) == 0]
    new = [float(r["value"]) for r in rows if int(r["regime"]) == 1 and int(r["version"]) > 0]
    assert old and new, rows
    assert sum(new) / len(new) < 0.7 * (sum(old) / len(old)), (old, new)
    assert {a["metric"] for a in s["adaptations"]} == {"se"}
    assert all(a["higher_is_better"] is False for a in s["adaptations"])
    # the budget is in steps: every update ran exactly 40, whatever its data
    assert {u["train_steps"] for u in s["updates"]} == {40}, s["updates"]
    # a follow-up trains on the data since the change point: at least its drift's first window, and
    # more than a window once the post-drift batches outnumber it
    first = {u["drift_batch_id"]: u["window_samples"] for u in s["updates"] if u["followup"] == 0}
    hold = cfg.promotion.holdout_batches if cfg.promotion.enabled else 0  # the gate's batches are not trained on
    window = (cfg.continual_learning.window_batches - hold) * 32
    for u in s["updates"]:
        if u["followup"]:
            assert u["window_samples"] >= first[u["drift_batch_id"]], s["updates"]
            grown = u["window_last_batch_id"] - u["drift_batch_id"] + 1 - hold
            assert u["window_samples"] >= min(grown, 32) * 32 or u["window_samples"] >= window, s["updates"]
