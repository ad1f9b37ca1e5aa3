"""benchmarks/tcpd.py: TCPD's F1 on hand-computed cases, reading a checkout, the engine loop (no TCPD data)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import tcpd  # noqa: E402


def test_true_positives_use_each_prediction_once() -> None:
    # 9 and 11 both lie within the margin of 10: only one of them counts
    assert tcpd.true_positives({10}, {9, 11}) == {10}
    assert tcpd.true_positives({10, 12}, {11}) == {10}
    assert tcpd.true_positives({10, 12}, {11, 13}) == {10, 12}
    assert tcpd.true_positives(set(), {1, 2}) == set()
    assert tcpd.true_positives({1, 2}, set()) == set()


def test_the_margin_is_inclusive() -> None:
    assert tcpd.true_positives({20}, {25}) == {20}
    assert tcpd.true_positives({20}, {26}) == set()
    assert tcpd.true_positives({20}, {26}, margin=6) == {20}


def test_f1_of_a_prediction_matching_every_annotator() -> None:
    # union {0, 5, 10, 11, 20}; predictions {0, 10, 20}: 0->0, 5->10, 20->20: precision 3/3;
    # every annotator's points are all matched: recall 1
    s = tcpd.f_measure({"1": [10, 20], "2": [11, 20], "3": [10], "4": [0, 5]}, [10, 20])
    assert (s.precision, s.recall, s.f1) == (1.0, 1.0, 1.0)


def test_f1_averages_recall_over_annotators() -> None:
    # predictions {0, 10}: precision 2/2; recall (1 + 1 + 1/2) / 3 = 5/6; F1 = 2 * 5/6 / (1 + 5/6) = 10/11
    s = tcpd.f_measure({"1": [], "2": [10], "3": [50]}, [10])
    assert s.precision == 1.0
    assert s.recall == pytest.approx(5 / 6)
    assert s.f1 == pytest.approx(10 / 11)


def test_f1_of_no_prediction_counts_the_start() -> None:
    # only t=0 predicted: precision 1; recall (1 + 1/2 + 1/2) / 3 = 2/3; F1 = 0.8
    s = tcpd.f_measure({"1": [], "2": [10], "3": [50]}, [])
    assert s.f1 == pytest.approx(0.8)


def test_false_alarms_lower_precision_only() -> None:
    # one annotator, [30]; predictions {0, 30, 60, 90}: precision 2/4, recall 1, F1 = 2/3
    s = tcpd.f_measure({"a": [30]}, [30, 60, 90])
    assert (s.precision, s.recall) == (0.5, 1.0)
    assert s.f1 == pytest.approx(2 / 3)
    # two predictions around one point: one is a false positive
    s = tcpd.f_measure({"a": [10]}, [9, 11])
    assert s.precision == pytest.approx(2 / 3) and s.recall == 1.0


def test_a_duplicate_of_zero_does_not_count_twice() -> None:
    assert tcpd.f_measure({"a": [0, 40]}, [0]) == tcpd.f_measure({"a": [40]}, [])


def _write_checkout(root: Path) -> None:
    ann = {"step": {"1": [50], "2": [51]}, "quality_control_1": {"1": [5]}}
    (root / "annotations.json").write_text(json.dumps(ann))
    rng = np.random.default_rng(0)
    xs = np.concatenate([rng.normal(0, 1, 50), rng.normal(8, 1, 50)]).tolist()
    xs[3] = None
    for name, raw in (("step", xs), ("quality_control_1", [1.0] * 10)):
        d = root / "datasets" / name
        d.mkdir(parents=True)
        (d / f"{name}.json").write_text(json.dumps({"name": name, "n_obs": len(raw), "series": [{"raw": raw}]}))


def test_load_a_checkout_skips_quality_control_and_keeps_missing_values(tmp_path: Path) -> None:
    _write_checkout(tmp_path)
    data = tcpd.load_series(tcpd.TCPDSource(tmp_path))
    assert [s.name for s in data] == ["step"]
    assert data[0].n_obs == 100 and np.isnan(data[0].values[0][3])
    assert data[0].annotations == {"1": [50], "2": [51]}


def test_predictions_are_series_indices_of_the_new_segment(tmp_path: Path) -> None:
    _write_checkout(tmp_path)
    (s,) = tcpd.load_series(tcpd.TCPDSource(tmp_path))
    spec = tcpd.parse_spec("bocpd:hazard=0.01,threshold=0.99")
    assert spec.params == {"hazard": 0.01, "threshold": 0.99}
    for batch in (64, 7, 1):
        pred = tcpd.predict(s, spec, "any", batch, "first")
        # the step is at index 50 (the missing value at 3 shifts the fed stream by one; mapped back)
        assert pred == [50], (batch, pred)
    assert tcpd.predict(s, tcpd.parse_spec("never"), "any", 64, "first") == []
    # a rise of a lower-is-better metric is a worsening: found with direction degrade too
    assert tcpd.predict(s, spec, "degrade", 64, "first") == [50]


def test_json_is_not_overwritten(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _write_checkout(tmp_path)
    out = tmp_path / "r.json"
    assert tcpd.main(["--tcpd", str(tmp_path), "--detectors", "never", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["results"][0]["detector"] == "never" and doc["results"][0]["series"][0]["predicted"] == []
    assert doc["results"][0]["mean_f1"] == pytest.approx(tcpd.f_measure({"1": [50], "2": [51]}, []).f1)
    out.write_text("recorded")
    assert tcpd.main(["--tcpd", str(tmp_path), "--detectors", "never", "--json", str(out)]) == 2
    assert out.read_text() == "recorded"
    assert "--overwrite" in capsys.readouterr().err


def test_a_grid_spec_gives_every_combination() -> None:
    specs = tcpd.parse_specs("bocpd_trend:hazard=0.01|0.001,threshold=0.99,prior_kappa=0.1|1|10")
    assert len(specs) == 6 and {s.name for s in specs} == {"bocpd_trend"}
    assert {(s.params["hazard"], s.params["prior_kappa"]) for s in specs} == {
        (h, k) for h in (0.01, 0.001) for k in (0.1, 1, 10)
    }
    assert all(s.params["threshold"] == 0.99 for s in specs)
    with pytest.raises(SystemExit):
        tcpd.parse_spec("bocpd:hazard=0.01|0.02")


def test_marginals_average_over_the_other_parameters() -> None:
    def result(params: dict[str, float], f1s: list[float]) -> tcpd.DetectorResult:
        rows = [tcpd.SeriesResult(f"s{i}", 10, [], f, f, f) for i, f in enumerate(f1s)]
        return tcpd.DetectorResult("d", params, float(np.mean(f1s)), 0.0, rows)

    rs = [
        result({"a": 1, "b": 1}, [0.2, 0.9]),
        result({"a": 1, "b": 2}, [0.4, 0.9]),
        result({"a": 2, "b": 1}, [0.6, 0.1]),
        result({"a": 2, "b": 2}, [1.0, 0.1]),
    ]
    m = tcpd.marginals(rs, {"s0"})["d"]  # on series s0 only
    assert m["a"] == pytest.approx({"1": 0.3, "2": 0.8})
    assert m["b"] == pytest.approx({"1": 0.4, "2": 0.7})
    assert tcpd.subset_mean(rs[0], {"s0"}, inside=False) == pytest.approx(0.9)
    assert tcpd.marginals(rs, None)["d"]["a"] == pytest.approx({"1": 0.6, "2": 0.45})


def test_stationary_streams_have_no_change_built_in() -> None:
    st = tcpd.stationary_streams(20_000)
    assert set(st) == {"normal", "exponential", "ar1(0.5)"}
    for xs in st.values():
        assert xs.shape == (20_000,)
        halves = xs[:10_000].mean(), xs[10_000:].mean()
        assert abs(halves[0] - halves[1]) < 0.1
    ar = st["ar1(0.5)"]
    assert np.corrcoef(ar[:-1], ar[1:])[0, 1] == pytest.approx(0.5, abs=0.05)
    assert st["exponential"].min() >= 0.0


def test_two_changes_in_the_last_batch_are_both_found() -> None:
    # one batch holds the whole series: the second change is found in the rest of the alarm's batch,
    # fed on resuming (the empty batch after the last one lets it be fed)
    rng = np.random.default_rng(1)
    xs = np.concatenate([rng.normal(0, 1, 30), rng.normal(10, 1, 15), rng.normal(-10, 1, 15)])
    s = tcpd.Series("two", [xs], {"a": [30, 45]})
    spec = tcpd.parse_spec("bocpd:hazard=0.01,threshold=0.99")
    for batch in (64, 1):
        assert tcpd.predict(s, spec, "any", batch, "first") == [30, 45]
    assert tcpd.f_measure(s.annotations, [30, 45]).f1 == 1.0
