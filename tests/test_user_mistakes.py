"""Every mistake is one line and exit 2 before anything starts (issue 14): fixed cases and a
property-based test that throws random files and overrides at ``raydrift validate``."""

from __future__ import annotations

import os
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raydrift.cli import main
from raydrift.config import all_keys


def _validate(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(["validate", *args])
    out, err = capsys.readouterr()
    return code, out + err


@pytest.mark.parametrize(
    ("content", "overrides", "expected"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\xff\xfe", [], "is not a text file"),
        (b"", [], "is empty"),
        (b"# only a comment\n", [], "is empty"),
        (b"seed: 1\n", ["monitor.num_cpus=inf"], "'monitor.num_cpus'"),
        (b"seed: 1\n", ["train.lr=.nan"], "'train.lr'"),
        (b"seed: 99999999999999999999999\n", [], "'seed' expects a value <= 2147483647"),
        (b"seed: 1\n", ["monitor.metric=acc"], "monitor.metric 'acc' is not a metric of harness 'mnist'"),
        (b"seed: 1\n", ["monitor.num_monitors=100000"], "'monitor.num_monitors'"),
        (b"seed: 1\n", ["monitor.num_monitors=64"], "CPUs"),
        (b"seed: 1\n", ["model.harness=:Foo"], "not a valid dotted path"),
        (b"seed: 1\n", ["model.harness=.rel:Foo"], "not a valid dotted path"),
        (b"seed: 1\n", ["ray.node_ip_address=everywhere"], "'ray.node_ip_address'"),
    ],
)
def test_mistakes_are_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, overrides: list[str], expected: str
) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_bytes(content)
    args = [str(cfg)]
    for o in overrides:
        args += ["--set", o]
    code, text = _validate(capsys, *args)
    assert code == 2, text
    lines = text.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("raydrift: error: "), text
    assert expected in lines[0]


def test_the_environment_seed_above_int64_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("seed: 1\n")
    with mock.patch.dict(os.environ, {"RAYDRIFT_SEED": str(2**70)}):
        code, text = _validate(capsys, str(cfg))
    assert code == 2 and "'seed'" in text and "Traceback" not in text


@pytest.mark.parametrize(
    ("cls", "expected"),
    [("Exits", "test_sets() called sys.exit(3)"), ("Raises", "test_sets() raised RuntimeError: no data")],
)
def test_a_harness_that_exits_or_raises_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, cls: str, expected: str
) -> None:
    (tmp_path / f"rd_bad_harness_{cls}.py").write_text(
        "import sys\nfrom harnesses.synthetic import GaussianDriftHarness\n"
        "class Exits(GaussianDriftHarness):\n    def test_sets(self):\n        sys.exit(3)\n"
        "class Raises(GaussianDriftHarness):\n    def test_sets(self):\n        raise RuntimeError('no data')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {{harness: 'rd_bad_harness_{cls}:{cls}'}}\n")
    code, text = _validate(capsys, str(cfg))
    assert code == 2 and expected in text and len(text.strip().splitlines()) == 1, text


_KEYS = [k for k in all_keys() if not k.startswith("ray.address")]
_SCALARS = st.one_of(
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.text(max_size=12),
    st.sampled_from(["inf", "-1", "0", "1e9", "[1, 2]", "{a: 1}", "mnist", "synthetic", "adwin", "pause", ":X"]),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=st.one_of(
        st.binary(max_size=200),
        st.text(max_size=200).map(str.encode),
        st.dictionaries(st.sampled_from(["seed", "model", "monitor", "train", "stream", "data"]), _SCALARS).map(
            lambda d: "\n".join(f"{k}: {v!r}" for k, v in d.items()).encode()
        ),
    ),
    suffix=st.sampled_from([".yaml", ".toml"]),
    sets=st.lists(st.tuples(st.sampled_from(_KEYS), _SCALARS), max_size=4),
    env=st.dictionaries(
        st.sampled_from(["RAYDRIFT_SEED", "RAYDRIFT_MONITOR__NUM_CPUS", "RAYDRIFT_TRAIN__LR", "RAYDRIFT_NOPE__X"]),
        st.text(max_size=10).filter(lambda s: "\x00" not in s),
        max_size=2,
    ),
)
def test_validate_never_gives_a_traceback(
    tmp_path_factory: pytest.TempPathFactory,
    capsys: pytest.CaptureFixture[str],
    body: bytes,
    suffix: str,
    sets: list[tuple[str, object]],
    env: dict[str, str],
) -> None:
    cfg = tmp_path_factory.mktemp("cfg") / f"c{suffix}"
    cfg.write_bytes(body)
    args = [str(cfg)]
    for key, value in sets:
        args += ["--set", f"{key}={value}"]
    environ = {k: v for k, v in os.environ.items() if not k.startswith("RAYDRIFT_") and k != "RAY_ADDRESS"}
    with mock.patch.dict(os.environ, {**environ, **env}, clear=True):
        try:
            code = main(["validate", *args])
        except SystemExit as exc:  # argparse's own usage errors
            code = exc.code  # type: ignore[assignment]
    out, err = capsys.readouterr()
    assert code in (0, 2), out + err
    assert "Traceback" not in out + err
