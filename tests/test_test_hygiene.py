"""The test suite's own rules: shared code lives in tests/helpers (or pdf_factory), never in a
test module another one imports (pytest would collect its tests twice and fixtures get tangled)."""

from __future__ import annotations

import ast

from conftest import REPO


def test_no_test_module_imports_another():
    offenders = []
    for path in sorted((REPO / "tests").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            offenders += [
                f"{path.relative_to(REPO)}: {name}" for name in names if name.split(".")[0].startswith("test_")
            ]
    assert not offenders, "import shared code from tests/helpers instead:\n" + "\n".join(offenders)
