"""The one name resolver behind detectors, strategies and harnesses: every failure is one line."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from raydrift.detection import resolve_detector
from raydrift.errors import ConfigError
from raydrift.harness import Harness, resolve_harness
from raydrift.learning.strategies import resolve_strategy
from raydrift.registry import resolve


@pytest.fixture()
def module_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith("rd_reg_")]:
        sys.modules.pop(name)


def _one_line(exc: pytest.ExceptionInfo[ConfigError]) -> str:
    msg = str(exc.value)
    assert "\n" not in msg and msg
    return msg


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("raise RuntimeError('boom at import')\n", "raised RuntimeError: boom at import"),
        ("def broken(:\n", "has a syntax error"),
        ("import sys\nsys.exit(3)\n", "raised SystemExit"),
        ("import no_such_dependency_xyz\n", "cannot import module"),
    ],
)
def test_module_failing_at_import_is_one_line(module_dir: Path, source: str, expected: str) -> None:
    (module_dir / "rd_reg_bad.py").write_text(source)
    for resolver in (resolve_harness, resolve_strategy, resolve_detector):
        with pytest.raises(ConfigError) as info:
            resolver("rd_reg_bad:Thing")
        assert expected in _one_line(info)


@pytest.mark.parametrize("spec", [":Foo", ".rel:Foo", "pkg.:Foo", "pkg:", "pkg:Foo.Bar", "a b:C", "pkg::Foo"])
def test_malformed_dotted_paths_are_refused_before_any_import(spec: str) -> None:
    with pytest.raises(ConfigError) as info:
        resolve_harness(spec)
    assert "not a valid dotted path" in _one_line(info)


def test_registered_names_and_dotted_paths_resolve(module_dir: Path) -> None:
    (module_dir / "rd_reg_ok.py").write_text(
        "from raydrift import Harness\nclass Mine(Harness):\n    pass\nclass NotOne:\n    pass\n"
    )
    assert issubclass(resolve_harness("rd_reg_ok:Mine"), Harness)
    assert resolve_harness("mnist").__name__ == "MNISTHarness"
    with pytest.raises(ConfigError, match="is not a subclass of raydrift.Harness"):
        resolve_harness("rd_reg_ok:NotOne")
    with pytest.raises(ConfigError, match="has no attribute 'Missing'"):
        resolve_harness("rd_reg_ok:Missing")


def test_unknown_name_suggests_the_closest() -> None:
    with pytest.raises(ConfigError) as info:
        resolve("replai", {"replay": "m:C"}, object, "continual_learning.strategy")
    assert "did you mean 'replay'?" in _one_line(info)
