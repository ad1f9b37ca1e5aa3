"""Config loading, precedence and every error message (no Ray)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from raydrift.config import (
    ConfigError,
    RaydriftConfig,
    all_keys,
    build_config,
    env_overrides,
    parse_scalar,
    save_config,
    validate_harness_options,
    validate_strategy_options,
)


def write(tmp_path: Path, text: str, name: str = "c.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


def test_defaults_have_every_section() -> None:
    cfg = RaydriftConfig()
    for section in (
        "model",
        "stream",
        "monitor",
        "drift_detection",
        "continual_learning",
        "train",
        "logging",
        "ray",
    ):
        assert hasattr(cfg, section)
    assert cfg.seed == 0 and cfg.device == "auto" and cfg.verbosity == 1


def test_precedence_file_env_set(tmp_path: Path) -> None:
    p = write(tmp_path, "seed: 1\nmonitor:\n  num_monitors: 2\n  num_cpus: 0.25\n")
    env = {"RAYDRIFT_SEED": "2", "RAYDRIFT_MONITOR__NUM_MONITORS": "3"}
    cfg = build_config(p, [], env)
    assert cfg.seed == 2 and cfg.monitor.num_monitors == 3 and cfg.monitor.num_cpus == 0.25
    cfg = build_config(p, ["seed=7", "monitor.num_monitors=4"], env)
    assert cfg.seed == 7 and cfg.monitor.num_monitors == 4
    # the last --set wins
    assert build_config(p, ["seed=7", "seed=8"], env).seed == 8


def test_set_values_are_yaml_scalars() -> None:
    assert parse_scalar("3") == 3 and parse_scalar("0.5") == 0.5 and parse_scalar("true") is True
    assert parse_scalar("[1, 2]") == [1, 2] and parse_scalar("adwin") == "adwin"
    cfg = build_config(
        None, ["drift_detection.params.delta=0.01", "logging.backend=none", "stream.max_batches=null"]
    )
    assert cfg.drift_detection.params == {"delta": 0.01}
    assert cfg.logging.backend == "none" and cfg.stream.max_batches is None


def test_toml_is_accepted(tmp_path: Path) -> None:
    p = write(tmp_path, 'seed = 4\n[monitor]\nnum_monitors = 2\n[data]\nsource = "bundled"\n', "c.toml")
    cfg = build_config(p)
    assert cfg.seed == 4 and cfg.monitor.num_monitors == 2 and cfg.data == {"source": "bundled"}


def test_env_vars_for_other_things_are_ignored() -> None:
    assert env_overrides({"RAYDRIFT_HOME": "/x", "PATH": "/bin"}) == []


@pytest.mark.parametrize(
    ("text", "overrides", "env", "message"),
    [
        (
            "monitor:\n  num_monitor: 3\n",
            [],
            {},
            "unknown key 'monitor.num_monitor': did you mean 'monitor.num_monitors'?",
        ),
        ("sede: 3\n", [], {}, "unknown key 'sede': did you mean 'seed'?"),
        (
            "train:\n  num_monitors: 3\n",
            [],
            {},
            "unknown key 'train.num_monitors': did you mean 'monitor.num_monitors'?",
        ),
        (
            "",
            ["drift_detection.detecter=kswin"],
            {},
            "unknown key 'drift_detection.detecter': did you mean 'drift_detection.detector'?",
        ),
        (
            "",
            [],
            {"RAYDRIFT_MONITOR__NUM_MONITOR": "2"},
            "unknown key 'RAYDRIFT_MONITOR__NUM_MONITOR': did you mean 'monitor.num_monitors'?",
        ),
        (
            "monitor:\n  num_monitors: three\n",
            [],
            {},
            "'monitor.num_monitors' expects an integer, got 'three' (str)",
        ),
        ("", ["monitor.num_cpus=lots"], {}, "'monitor.num_cpus' expects a number, got 'lots' (str)"),
        (
            "",
            ["train.use_gpu=maybe"],
            {},
            "'train.use_gpu' expects a boolean (true/false), got 'maybe' (str)",
        ),
        (
            "",
            ["drift_detection.granularity=pixel"],
            {},
            "'drift_detection.granularity' expects one of 'sample', 'batch' or 'interval', got 'pixel' (str)",
        ),
        ("", ["train.epochs=0"], {}, "'train.epochs' expects a value >= 1, got 0 (int)"),
        ("model: 3\n", [], {}, "'model' expects a mapping (section), got 3 (int)"),
        ("", ["seed"], {}, "--set 'seed' is not of the form section.key=value"),
        ("", ["seed.x=1"], {}, "unknown key 'seed.x'"),
        ("- a\n- b\n", [], {}, "must hold a mapping of sections, got list"),
        ("monitor: [\n", [], {}, "is not valid YAML at line"),
    ],
)
def test_error_messages(
    tmp_path: Path, text: str, overrides: list[str], env: dict[str, str], message: str
) -> None:
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        build_config(p, overrides, env)
    msg = str(info.value)
    assert message in msg
    assert "\n" not in msg


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        build_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="is a directory"):
        build_config(tmp_path)


def test_harness_options_are_validated_with_the_same_messages(tmp_path: Path) -> None:
    cfg = build_config(None, ["model.harness=synthetic", "data.num_clases=3"])
    with pytest.raises(
        ConfigError, match=r"unknown key 'data.num_clases': did you mean 'data.num_classes'\?"
    ):
        validate_harness_options(cfg)
    cfg = build_config(None, ["model.harness=synthetic", "data.num_classes=many"])
    with pytest.raises(ConfigError, match=r"'data.num_classes' expects an integer, got 'many'"):
        validate_harness_options(cfg)


def test_unknown_harness_names_the_closest() -> None:
    cfg = build_config(None, ["model.harness=mnsit"])
    with pytest.raises(ConfigError, match="unknown harness 'mnsit': did you mean 'mnist'"):
        validate_harness_options(cfg)
    cfg = build_config(None, ["model.harness=nosuchpkg.mod:Cls"])
    with pytest.raises(ConfigError, match="cannot import module 'nosuchpkg.mod'"):
        validate_harness_options(cfg)


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    cfg = build_config(None, ["seed=3", "data.source=bundled"])
    save_config(cfg, tmp_path / "config.yaml")
    again = build_config(tmp_path / "config.yaml")
    assert again == cfg
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["seed"] == 3


def test_shipped_configs_validate() -> None:
    root = Path(__file__).resolve().parents[1] / "configs"
    for p in sorted(root.glob("*.yaml")):
        cfg = build_config(p)
        validate_harness_options(cfg)


def test_all_keys_lists_nested_keys() -> None:
    keys = all_keys()
    assert "monitor.num_monitors" in keys and "drift_detection.granularity" in keys and "seed" in keys


# ---------------------------------------------------------------------------------------------------
# continual_learning.params: the strategy's own options


def test_strategy_params_are_validated_against_the_strategys_model() -> None:
    cfg = build_config(
        None, ["continual_learning.strategy=jvp", "continual_learning.params.penalty_weight=0"]
    )
    options = validate_strategy_options(cfg)
    assert options.penalty_weight == 0.0 and options.logit_weight == 0.5
    cases = [
        (
            ["continual_learning.strategy=der++", "continual_learning.params.alpa=1"],
            "unknown key 'continual_learning.params.alpa': did you mean 'continual_learning.params.alpha'?",
        ),
        (
            ["continual_learning.strategy=ewc_online", "continual_learning.params.decay=2"],
            "'continual_learning.params.decay' expects a value <= 1.0, got 2",
        ),
        (
            ["continual_learning.strategy=jvp", "continual_learning.params.sign=0"],
            "'continual_learning.params.sign' expects one of -1 or 1",
        ),
        (
            ["continual_learning.strategy=naive", "continual_learning.params.replay_weight=1"],
            "strategy 'naive': unknown key 'continual_learning.params.replay_weight'",
        ),
    ]
    for overrides, message in cases:
        with pytest.raises(ConfigError) as info:
            validate_strategy_options(build_config(None, overrides))
        assert message in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_an_old_config_without_a_strategy_keeps_the_default_it_ran(tmp_path: Path) -> None:
    # the schema default is jvp now; an old config (its prefixed keys say so) that names no strategy
    # ran replay, the default then, and keeps it; a new config that names none gets jvp
    with pytest.warns(FutureWarning, match="implied: the default then"):
        cfg = build_config(write(tmp_path, "continual_learning:\n  replay_weight: 0.5\n"))
    assert cfg.continual_learning.strategy == "replay"
    assert cfg.continual_learning.params == {"replay_weight": 0.5}
    assert build_config(write(tmp_path, "continual_learning:\n  memory_size: 100\n")).continual_learning.strategy == "jvp"


def test_old_prefixed_strategy_keys_are_mapped_with_a_warning(tmp_path: Path) -> None:
    # An old config: the chosen strategy's prefixed keys move under params (the warning names the new
    # key); the other strategies' keys (a saved run config holds all of them) are dropped.
    text = (
        "continual_learning:\n  strategy: jvp\n  jvp_lambda: 0.0\n  replay_weight: 0.5\n"
        "  der_alpha: 0.9\n  ewc_lambda: 5.0\n"
    )
    with pytest.warns(FutureWarning) as record:
        cfg = build_config(write(tmp_path, text))
    msg = str(record[0].message)
    assert "'continual_learning.jvp_lambda' -> 'continual_learning.params.penalty_weight'" in msg
    assert (
        "der_alpha" in msg
        and "ignored" in msg
        and "(implied) 'continual_learning.params.target: loss'" in msg
    )
    assert cfg.continual_learning.params == {"penalty_weight": 0.0, "replay_weight": 0.5, "target": "loss"}
    assert validate_strategy_options(cfg).penalty_weight == 0.0
    # --set and the environment take the old keys too; an explicit params entry wins
    with pytest.warns(FutureWarning, match="params.alpha"):
        cfg = build_config(
            None,
            ["continual_learning.strategy=der++", "continual_learning.der_alpha=0.1"],
            {"RAYDRIFT_CONTINUAL_LEARNING__PARAMS__BETA": "0.2"},
        )
    assert cfg.continual_learning.params == {"alpha": 0.1, "beta": 0.2}
    with pytest.warns(FutureWarning):
        cfg = build_config(
            None,
            [
                "continual_learning.params.alpha=0.3",
                "continual_learning.der_alpha=0.1",
                "continual_learning.strategy=der++",
            ],
        )
    assert cfg.continual_learning.params == {"alpha": 0.3}


def test_a_saved_old_run_config_still_loads(tmp_path: Path) -> None:
    # What save_config wrote before the options models: every old key at its default.
    old = {
        "strategy": "replay",
        "memory_size": 500,
        "window_batches": 8,
        "post_drift_batches": 4,
        "replay_weight": 1.0,
        "memory_policy": "reservoir",
        "memory_max_bytes": None,
        "jvp_lambda": 1.0,
        "jvp_input_scale": 0.0,
        "jvp_sign": -1,
        "jvp_penalty": "square",
        "jvp_logit_weight": 0.5,
        "der_alpha": 0.5,
        "der_beta": 0.5,
        "ewc_lambda": 100.0,
        "ewc_decay": 0.9,
        "ewc_fisher_samples": 512,
    }
    p = tmp_path / "config.yaml"
    p.write_text(yaml.safe_dump({"continual_learning": old}), encoding="utf-8")
    with pytest.warns(FutureWarning):
        cfg = build_config(p)
    assert cfg.continual_learning.params == {"replay_weight": 1.0}
    validate_strategy_options(cfg)
    save_config(cfg, tmp_path / "again.yaml")  # the new form has no old keys
    saved = yaml.safe_load((tmp_path / "again.yaml").read_text())["continual_learning"]
    assert "jvp_lambda" not in saved and saved["params"] == {"replay_weight": 1.0}
