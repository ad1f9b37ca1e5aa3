"""The CLI: bad input gives one line on stderr and exit code 2, nothing started."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from raydrift.cli import main

ROOT = Path(__file__).resolve().parents[1]


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("yaml_text", "extra", "message"),
    [
        (
            "monitor:\n  num_monitor: 2\n",
            [],
            "unknown key 'monitor.num_monitor': did you mean 'monitor.num_monitors'?",
        ),
        ("monitor:\n  num_monitors: two\n", [], "'monitor.num_monitors' expects an integer, got 'two' (str)"),
        ("model:\n  harness: mnsit\n", [], "unknown harness 'mnsit': did you mean 'mnist'?"),
        ("model:\n  harness: synthetic\n", ["--set", "drift_detection.detector=adwinn"], "adwin"),
        ("model:\n  harness: synthetic\n", ["--set", "continual_learning.strategy=replai"], "replay"),
        ("data:\n  sorce: bundled\n", [], "unknown key 'data.sorce': did you mean 'data.source'?"),
    ],
)
def test_bad_configs_exit_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], yaml_text: str, extra: list[str], message: str
) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text(yaml_text)
    for command in ("validate", "run"):
        code, out, err = cli(
            capsys, command, str(p), *extra, "--set", f"logging.runs_dir={tmp_path / 'runs'}"
        )
        assert code == 2
        assert message in err and err.count("\n") == 1 and err.startswith("raydrift: error: ")
    assert not (tmp_path / "runs").exists()  # nothing started


def test_missing_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "run", str(tmp_path / "nope.yaml"))
    assert code == 2 and "config file" in err and "not found" in err


def test_validate_ok_and_show(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "validate", str(ROOT / "configs" / "mnist.yaml"), "--show", "--set", "seed=4")
    assert code == 0 and "OK" in out and "seed: 4" in out


def test_keys_and_detectors(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "keys")
    assert code == 0 and "monitor.num_monitors = 1" in out
    # each strategy's options, from its Options model
    assert "continual_learning.params.penalty_weight = 1.0  [strategy jvp]" in out
    assert "continual_learning.params.alpha = 0.5  [strategy der++]" in out
    assert "jvp_lambda" not in out
    code, out, _ = cli(capsys, "detectors")
    assert code == 0 and all(name in out for name in ("adwin", "kswin", "page_hinkley"))


def test_report_on_a_missing_run_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = cli(capsys, "report", str(tmp_path / "nothing"))
    assert code == 2 and err.startswith("raydrift: error: ")


def test_console_script_exit_code(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("seed: [1\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "raydrift.cli", "run", str(p)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "is not valid YAML" in proc.stderr and "Traceback" not in proc.stderr
