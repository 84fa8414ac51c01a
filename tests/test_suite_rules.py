"""Rules the test suite keeps about itself: shared code lives outside the test modules."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).parent


def imported_modules(source: str) -> set[str]:
    """The top-level names of every module ``source`` imports, at any depth of the file."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_import_reader_sees_imports_inside_functions_too() -> None:
    source = "import os\ndef f():\n    from test_other import x\n    import test_more.y\n"
    assert imported_modules(source) == {"os", "test_other", "test_more"}


def test_no_test_module_imports_another_test_module() -> None:
    """A fixture imported from another test module is registered twice (a session-scoped one
    runs twice) and ties the two files together; shared code goes in conftest.py (fixtures)
    or a helper module whose name does not start with ``test_``."""
    modules = {path.stem for path in TESTS.glob("test_*.py")}
    assert len(modules) > 20  # the glob found the suite
    offenders = {
        path.name: sorted(imported_modules(path.read_text(encoding="utf-8")) & modules)
        for path in sorted(TESTS.glob("test_*.py"))}
    assert {name: found for name, found in offenders.items() if found} == {}
