"""The README's custom harness, run exactly as printed, on a real Ray cluster with Ray Train."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from raydrift.config import build_config
from raydrift.coordinator import Coordinator

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_blocks() -> tuple[str, str]:
    text = README.read_text()
    section = text.split("<!-- harness-example:start -->")[1].split("<!-- harness-example:end -->")[0]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    after = text.split("<!-- harness-example:end -->")[1]
    config = re.search(r"```yaml\n(.*?)```", after, re.S)
    assert code and config
    return code.group(1), config.group(1)


def test_readme_harness_runs_end_to_end(ray_cluster: Path, tmp_path: Path) -> None:
    code, config = readme_blocks()
    assert 20 <= len(code.strip().splitlines()) <= 45  # "about 30 lines"
    (ray_cluster / "my_harness.py").write_text(code)  # on the workers' PYTHONPATH
    import sys

    sys.path.insert(0, str(ray_cluster))
    try:
        cfg_path = tmp_path / "my_config.yaml"
        cfg_path.write_text(config)
        assert yaml.safe_load(config)["model"]["harness"] == "my_harness:RotatingLine"
        cfg = build_config(
            cfg_path, ["verbosity=0", f"logging.runs_dir={tmp_path / 'runs'}", "logging.backend=none"]
        )
        summary = Coordinator(cfg, console=lambda _: None).run().to_dict()
    finally:
        sys.path.remove(str(ray_cluster))
    assert summary["run"]["status"] == "completed"
    assert summary["stream"]["batches"] == 90
    assert len(summary["drift_events"]) >= 2  # one drift per regime change
    assert len(summary["updates"]) >= 2
    for upd in summary["updates"]:
        r = upd["regime"]
        assert upd["test_accuracy_after"][r] > upd["test_accuracy_before"][r]
    assert Path(summary["run"]["run_dir"], "summary.json").is_file()
