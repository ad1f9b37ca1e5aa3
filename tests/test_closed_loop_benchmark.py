"""benchmarks/closed_loop.py without Ray: the baselines on a tiny stream, the table, no silent overwrite."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import closed_loop as cl  # noqa: E402

TINY = ["data.regime_batches=2", "data.pretrain_size=64", "data.test_size=10", "model.pretrain_epochs=1"]


@pytest.mark.parametrize("stream", ["sea", "friedman"])
def test_baselines_score_every_regime(stream: str) -> None:
    arf = cl.run_arf(stream, 0, TINY)
    online = cl.run_online(stream, 0, 1, TINY)
    for r in (arf, online):
        assert len(r.per_regime) == 3
        assert r.higher_is_better is (stream == "sea")
        assert r.metric == ("accuracy" if stream == "sea" else "se")
        if stream == "sea":
            assert all(0.0 <= v <= 1.0 for v in r.per_regime.values())
        else:
            assert all(v >= 0.0 for v in r.per_regime.values())
    assert cl.run_arf(stream, 0, TINY).per_regime == arf.per_regime  # deterministic by seed


def test_table_has_mean_and_std_over_seeds() -> None:
    rs = [
        cl.RunResult("sea", s, "river-arf", "accuracy", True, {"a": 0.5 + s / 10, "b": 0.7}, 0.6 + s / 20, 1.0)
        for s in (0, 2)
    ]
    text = cl.table(rs)
    assert "| learner | a | b | mean |" in text
    assert "| river-arf | 0.600 ± 0.141 | 0.700 ± 0.000 | 0.650 ± 0.071 |" in text
    assert "higher is better; seeds 0, 2" in text


def test_existing_results_are_not_overwritten(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "r.json"
    out.write_text(json.dumps({"results": []}))
    assert cl.main(["--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert json.loads(out.read_text()) == {"results": []}
