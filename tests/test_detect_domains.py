"""Input domains: detectors declare what they take, configs that feed them something else are refused,
and at run time no value can kill the detector (issue 14, item 5)."""

from __future__ import annotations

import numpy as np
import pytest

from raydrift.cli import main
from raydrift.config import DriftDetectionConfig, RaydriftConfig
from raydrift.detection import DETECTOR_REGISTRY, BatchResult, DetectionEngine, make_detector
from raydrift.detection.domains import (
    DOMAINS,
    check_detector_domain,
    check_input_domain,
    contains,
    fed_domain,
    sanitize,
)
from raydrift.errors import ConfigError
from raydrift.harness import Harness


def test_every_detector_declares_a_domain() -> None:
    for name in DETECTOR_REGISTRY:
        assert make_detector(name, {}).input_domain in DOMAINS, name
    assert make_detector("ddm", {}).input_domain == "binary"
    assert make_detector("hddm_a", {}).input_domain == "probability"
    assert make_detector("cusum", {}).input_domain == "real"
    # an ensemble takes what all its members take
    assert make_detector("ensemble", {"members": ["cusum", "ddm"]}).input_domain == "binary"
    assert make_detector("ensemble", {"members": ["cusum", "ewma"]}).input_domain == "real"


def test_fed_domain() -> None:
    assert fed_domain("binary", "sample") == "binary"
    assert fed_domain("binary", "batch") == "probability"  # means of 0/1 values
    assert fed_domain("real", "interval") == "real"
    assert contains("real", "binary") and not contains("probability", "real")


def test_harness_metric_domains() -> None:
    assert Harness.metric_domain("accuracy") == "binary"
    assert Harness.metric_domain("loss") == "real"
    assert Harness.metric_domain("f1") == "real"  # undeclared: no assumption


@pytest.mark.parametrize("detector", ["ddm", "eddm", "fhddm", "hddm_a", "hddm_w", "adwin"])
def test_a_01_detector_on_a_loss_is_a_config_error(detector: str) -> None:
    cfg = DriftDetectionConfig(detector=detector)
    with pytest.raises(ConfigError) as err:
        check_input_domain(cfg, "loss", "real")
    msg = str(err.value)
    assert "\n" not in msg and f"'{detector}'" in msg and "'loss'" in msg and "real" in msg


def test_binary_detector_on_batch_means_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="batch granularity"):
        check_input_domain(DriftDetectionConfig(detector="ddm", granularity="batch"), "accuracy", "binary")
    check_input_domain(DriftDetectionConfig(detector="hddm_a", granularity="batch"), "accuracy", "binary")


def test_matching_configs_pass() -> None:
    for det in ("ddm", "adwin", "cusum", "page_hinkley"):
        check_input_domain(DriftDetectionConfig(detector=det), "accuracy", "binary")
    for det in ("cusum", "ewma", "page_hinkley", "kswin"):
        check_input_domain(DriftDetectionConfig(detector=det), "loss", "real")
    lf = {"signal": "entropy", "detector": "ks", "use": "instead"}
    check_input_domain(DriftDetectionConfig(detector="ddm", label_free=lf), "loss", "real")  # metric unused
    with pytest.raises(ConfigError, match="label_free.signal 'entropy'"):
        check_input_domain(DriftDetectionConfig(label_free={**lf, "detector": "adwin"}), "loss", "real")


def test_check_detector_domain_reads_the_harness() -> None:
    cfg = RaydriftConfig(monitor={"metric": "loss"}, drift_detection={"detector": "ddm"})
    with pytest.raises(ConfigError, match="'ddm'.*'loss'"):
        check_detector_domain(cfg)
    check_detector_domain(RaydriftConfig(monitor={"metric": "loss"}, drift_detection={"detector": "cusum"}))
    check_detector_domain(RaydriftConfig(monitor={"metric": "nope"}))  # left to the metric-name check


def test_validate_refuses_ddm_on_loss(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {harness: synthetic}\nmonitor: {metric: loss}\ndrift_detection: {detector: ddm}\n")
    assert main(["validate", str(cfg)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "'ddm'" in err and "'loss'" in err


def test_sanitize() -> None:
    v, bad, clipped = sanitize(np.array([0.2, np.nan, 3.0, -1.0, np.inf]), "probability")
    assert v.tolist() == [0.2, 1.0, 0.0] and bad == 2 and clipped == 2
    v, bad, clipped = sanitize(np.array([0.2, 3.0]), "real")
    assert v.tolist() == [0.2, 3.0] and bad == 0 and clipped == 0


@pytest.mark.parametrize("detector", sorted(DETECTOR_REGISTRY))
def test_no_value_kills_a_detector_in_the_engine(detector: str) -> None:
    """Losses above 1, NaN and inf fed to every detector (even where the config check would refuse
    it): the engine goes on and counts what it dropped or clipped."""
    rng = np.random.default_rng(0)
    eng = DetectionEngine(DriftDetectionConfig(detector=detector), "loss", higher_is_better=False)
    for b in range(40):
        v = rng.exponential(0.3 if b < 20 else 3.0, 64).astype(np.float32)
        v[::17] = np.nan
        v[5] = np.inf
        out = eng.ingest(BatchResult(b, 0, 0, v, {"loss": float(np.nanmean(v))}))
        if out.events:
            eng.resume_after_update(out.events[0].batch_id + 1, 0)
    stats = eng.stats
    assert stats["non_finite"] > 0
    if eng.detector.input_domain != "real":
        assert stats["clipped"] > 0


def test_a_metric_the_built_harness_declares_is_checked(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    # the River stream's regression metrics exist per instance (they depend on the generator): the
    # check reads the harness built from the config, so adwin on squared errors is refused, not clipped
    cfg = tmp_path / "c.yaml"
    body = "model: {harness: river}\ndata: {generator: friedman}\nmonitor: {metric: se}\n"
    cfg.write_text(body + "drift_detection: {detector: adwin}\n")
    assert main(["validate", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "'adwin'" in err and "'se'" in err and len(err.strip().splitlines()) == 1
    cfg.write_text(body + "drift_detection: {detector: page_hinkley}\n")
    assert main(["validate", str(cfg)]) == 0
