"""benchmarks/cl.py: the standard rotated-MNIST protocol's pieces, and that recorded results are never
overwritten without --overwrite (no training beyond one tiny run)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import cl  # noqa: E402


def test_the_standard_protocol_is_the_default() -> None:
    a = cl._parser().parse_args([])
    assert (a.per_task, a.model, a.memory, a.epochs, a.batch_size, a.lr) == (None, "mlp", 200, 3, 64, 1e-3)
    jobs, labels, seeds = cl._jobs(a)
    assert seeds == 3 and "replay" in labels and "jvp λ=0 (JVP term off: replay + logits)" in labels
    assert {j["seed"] for j in jobs} == {0, 1, 2}
    harness = cl._harness(jobs[0])
    tasks = cl.task_data(harness, None, seed=0)
    assert len(tasks) == 5 and all(len(y) == 4000 for _, y in tasks)
    assert all((y == tasks[0][1]).all() for _, y in tasks)  # the same digits under every rotation
    model = harness.build_model()
    assert [tuple(p.shape) for p in model.parameters()][::2] == [(256, 784), (256, 256), (10, 256)]


def test_recorded_results_are_not_overwritten(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cl.json"
    out.write_text('{"recorded": true}', encoding="utf-8")
    with pytest.raises(SystemExit) as stop:
        cl.main(["--labels", "naive", "--seeds", "1", "--out", str(out)])
    assert stop.value.code == 2 and "pass --overwrite" in capsys.readouterr().err
    assert json.loads(out.read_text(encoding="utf-8")) == {"recorded": True}
    out.unlink()
    out.with_suffix(".partial.jsonl").write_text("", encoding="utf-8")
    with pytest.raises(SystemExit) as stop:
        cl.main(["--labels", "naive", "--seeds", "1", "--out", str(out)])
    assert stop.value.code == 2 and "pass --resume" in capsys.readouterr().err


def test_a_tiny_run_writes_its_results(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cl.json"
    argv = ["--labels", "replay", "--seeds", "1", "--per-task", "64", "--epochs", "1", "--pretrain-epochs", "1",
            "--test-samples", "32", "--out", str(out)]  # fmt: skip
    cl.main(argv)
    data = json.loads(out.read_text(encoding="utf-8"))
    (r,) = data["results"]
    assert r["label"] == "replay" and len(r["rows"]) == 5 and 0.0 <= r["final_average_accuracy"] <= 1.0
    assert "| replay | 1 |" in capsys.readouterr().out
    assert not out.with_suffix(".partial.jsonl").exists()
    with pytest.raises(SystemExit):
        cl.main(argv)  # recorded now
    cl.main([*argv, "--overwrite"])
