"""A corpus of broken configs (tests/bad_configs/), each run through `raydrift run`: a one-line
error on stderr naming what is wrong, exit code 2, and no Ray cluster started."""

from __future__ import annotations

from pathlib import Path

import pytest

from raydrift.cli import main

CORPUS = Path(__file__).parent / "bad_configs"

EXPECTED = {
    "bad_indentation.yaml": "is not valid YAML at line 4, column 12",
    "not_a_mapping.yaml": "must hold a mapping of sections, got list",
    "unknown_section.yaml": "unknown key 'monitr': did you mean 'monitor'?",
    "unknown_key.yaml": "unknown key 'monitor.num_monitor': did you mean 'monitor.num_monitors'?",
    "wrong_type.yaml": "'stream.batch_size' expects an integer, got 'big'",
    "out_of_range.yaml": "'monitor.num_monitors' expects a value >= 1, got 0",
    "unknown_harness.yaml": "unknown harness 'no_such_harness': use a registered name",
    "unimportable_harness.yaml": "cannot import module 'no_module'",
    "unknown_detector.yaml": "unknown drift_detection.detector 'adwinn': did you mean 'adwin'?",
    "bad_detector_param.yaml": "'delta' expects a number in (0, 1), got 5.0",
    "unknown_strategy.yaml": "unknown continual_learning.strategy 'magic'",
    "unknown_strategy_param.yaml": "unknown key 'continual_learning.params.alpa': did you mean "
    "'continual_learning.params.alpha'?",
    "bad_strategy_param.yaml": "'continual_learning.params.penalty' expects one of 'square', 'hinge' or 'identity'",
    "bad_choice.yaml": "'monitor.on_drift' expects one of 'continue' or 'pause', got 'sometimes'",
    "unknown_harness_option.yaml": "unknown key 'data.sorce': did you mean 'data.source'?",
    "missing_data_path.yaml": "MNIST not found in '/nonexistent/mnist' and data.download is false",
    "missing_checkpoint.yaml": "model.checkpoint '/nonexistent/model.pt' not found",
    "bad_promotion.yaml": "'promotion.holdout_batches' expects a value >= 1, got 0",
    "bad_checkpoint_interval.yaml": "'reliability.checkpoint_every_batches' expects a value >= 0, got -5",
    "bad_storage_scheme.yaml": "unsupported scheme 'ftp://'",
    "bad_name.yaml": "'name' = '../escape' is invalid",
}


def test_the_corpus_and_the_table_match() -> None:
    assert sorted(p.name for p in CORPUS.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_broken_config_is_one_line_and_exit_2(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import ray

    code = main(["run", str(CORPUS / name), "--set", f"logging.runs_dir={tmp_path}", "--set", "verbosity=0"])
    out, err = capsys.readouterr()
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("raydrift: error: "), err
    assert EXPECTED[name] in lines[0]
    assert "Traceback" not in out + err
    assert not ray.is_initialized()


def test_run_without_a_config_or_resume_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run"]) == 2
    assert "needs a CONFIG file" in capsys.readouterr().err


def test_resume_of_a_directory_without_checkpoint_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "config.yaml").write_text("name: x\n")
    assert main(["run", "--resume", str(tmp_path)]) == 2
    assert "has no checkpoint" in capsys.readouterr().err
    assert main(["run", "--resume", str(tmp_path / "missing")]) == 2
    assert "is not a directory" in capsys.readouterr().err
