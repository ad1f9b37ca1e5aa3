"""No function or method in the project is longer than 80 lines (the project rule), checked with ``ast``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ("raydrift", "benchmarks", "harnesses", "tests")
MAX_LINES = 80


def long_functions(path: Path, root: Path = ROOT, limit: int = MAX_LINES) -> list[str]:
    """``file:function:lines`` for every function or method of ``path`` over ``limit`` lines, counted
    from its ``def`` line to its last line (decorators excluded), nested functions included."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            lines = (node.end_lineno or node.lineno) - node.lineno + 1
            if lines > limit:
                out.append(f"{path.relative_to(root)}:{node.name}:{lines}")
    return out


def test_the_check_names_each_long_function_and_only_those(tmp_path: Path) -> None:
    body = "\n".join(f"        x{i} = {i}" for i in range(MAX_LINES))  # the def line + 80: 81 lines
    short = "\n".join(f"    y{i} = {i}" for i in range(MAX_LINES - 1))  # 80 lines: allowed
    decorators = "\n".join("@staticmethod" for _ in range(10))
    (tmp_path / "m.py").write_text(
        f"{decorators}\ndef short():\n{short}\n\n\nclass A:\n    async def long(self):\n{body}\n"
    )
    assert long_functions(tmp_path / "m.py", tmp_path) == [f"m.py:long:{MAX_LINES + 1}"]


def test_every_folder_has_python_files() -> None:
    for folder in FOLDERS:
        assert next((ROOT / folder).rglob("*.py"), None) is not None, folder


@pytest.mark.parametrize("folder", FOLDERS)
def test_no_function_is_over_80_lines(folder: str) -> None:
    found = [f for p in sorted((ROOT / folder).rglob("*.py")) for f in long_functions(p)]
    assert not found, f"functions over {MAX_LINES} lines (split them): " + ", ".join(found)
