"""Smoke tests of benchmarks/pipeline.py's pieces that need no Ray cluster: the plain-loop baseline,
the steady-state rate, the /proc readers and the figure table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import pipeline  # noqa: E402

linux_only = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")


def test_plain_eval_measures_the_batches_after_warmup() -> None:
    spec = pipeline.harness_spec("trivial", 50)
    harness = pipeline.build_harness(**spec)
    batches = list(harness.stream())
    model = harness.build_model()
    out = pipeline.plain_eval(model, harness, batches, threads=1, reps=2)
    assert out["batches"] == 40  # the first 20% are warm-up
    assert out["samples_per_second"] > 0
    assert len(out["reps"]) == 2
    assert out["ms_per_batch"] == pytest.approx(1000 * 64 / out["samples_per_second"], rel=0.5)


def test_steady_rate_skips_the_warmup() -> None:
    # 10 units at t=1 (slow start), then 10 units per second
    points = [(0.0, 0.0), (1.0, 10.0), (2.0, 20.0), (3.0, 30.0)]
    assert pipeline.steady_rate(points, 30) == pytest.approx(10.0)
    slow_start = [(0.0, 1.0), (5.0, 10.0), (6.0, 20.0), (7.0, 30.0)]
    assert pipeline.steady_rate(slow_start, 30) == pytest.approx(10.0)
    assert pipeline.steady_rate([(0.0, 1.0)], 1) is None


@linux_only
def test_proc_readers_see_a_child_process_and_peak_memory() -> None:
    child = subprocess.Popen(["sleep", "30"])
    try:
        assert child.pid in pipeline.descendants()
        assert pipeline.proc_title(child.pid).startswith("sleep")
    finally:
        child.kill()
        child.wait()
    # in a fresh process: a long test session's freed-but-resident memory would absorb the allocation
    script = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import pipeline\n"
        "mem = pipeline.proc_memory()\n"
        "big = b'\\x01' * (64 * 2**20)\n"  # 64 MiB written (a zeroed bytearray may stay untouched)
        "peak = pipeline.proc_memory()['peak_mb']\n"
        "del big\n"
        "reset = pipeline.reset_peak()\n"
        "print(json.dumps([mem, peak, reset, pipeline.proc_memory()['peak_mb']]))\n"
    )
    out = subprocess.run([sys.executable, "-c", script, str(BENCH)], capture_output=True, text=True, check=True)
    mem, peak, reset, after = json.loads(out.stdout.strip().splitlines()[-1])
    assert mem["peak_mb"] >= mem["rss_mb"] > 0
    assert mem["private_mb"] > 0
    assert peak >= mem["rss_mb"] + 60
    if reset:
        assert after < peak - 30


def test_figures_judge_each_target() -> None:
    res = {
        "throughput": {
            "models": {
                "m": {
                    "plain": {"samples_per_second": 1000.0},
                    "pipeline": [
                        {"monitors": 1, "samples_per_second": 950.0, "ratio_vs_plain": 0.95, "target": 0.9},
                        {"monitors": 2, "samples_per_second": 1500.0, "ratio_vs_plain": 1.5, "target": 1.6},
                    ],
                    "monitors_only": [],
                }
            }
        },
        "memory": {
            "peaks": {
                "monitor": {"L": 600.0, "10L": 605.0, "ratio": 1.01, "within_noise": True},
                "driver": {"L": 800.0, "10L": 1000.0, "ratio": 1.25, "within_noise": False},
            },
            "update_cost_ratio_last_vs_first_third": 1.5,
            "accuracy_matrix_ratio_10L_vs_L": 10.0,
            "L": {"regimes": 5, "accuracy_matrix_seconds_median": 0.01},
            "10L": {
                "regimes": 50,
                "accuracy_matrix_seconds_median": 0.1,
                "update_total_seconds_last_third": 1.5,
                "update_total_seconds_first_third": 1.0,
            },
        },
    }
    met = {row["figure"]: row["met"] for row in pipeline.figures(res, 2)}
    assert met["monitoring throughput, m, 1 monitor(s)"] is True
    assert met["monitoring throughput, m, 2 monitor(s)"] is False
    assert met["peak RSS, monitor"] is True
    assert met["peak RSS, driver"] is False
    assert met["update cost, last vs first third of updates (10L)"] is False
    assert pipeline.within_noise(600.0, 610.0)
    assert not pipeline.within_noise(600.0, 700.0)


@pytest.mark.parametrize("script", ["pipeline", "scaling"])
def test_an_existing_out_file_is_not_replaced(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], script: str
) -> None:
    import scaling

    main = {"pipeline": pipeline.main, "scaling": scaling.main}[script]
    out = tmp_path / "recorded.json"
    out.write_text('{"recorded": true}')
    assert main(["--out", str(out)]) == 2  # refused before any Ray cluster starts
    err = capsys.readouterr().err
    assert "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert json.loads(out.read_text()) == {"recorded": True}
