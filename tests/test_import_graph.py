"""The arrows between packages point one way: checked on a fresh interpreter's sys.modules."""

from __future__ import annotations

import json
import subprocess
import sys


def imported_by(module: str) -> list[str]:
    """The ganglion modules a fresh interpreter holds after importing ``module``."""
    code = (f"import json, sys; import {module}; "
            "print(json.dumps(sorted(m for m in sys.modules if m.startswith('ganglion'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    loaded: list[str] = json.loads(out)
    return loaded


def test_the_config_imports_nothing_of_the_tools() -> None:
    # The tools import the config's types; the config checks tools.policy against
    # ganglion.tool_names, a leaf, so the arrow between the two packages points one way.
    loaded = imported_by("ganglion.config")
    assert "ganglion.config" in loaded and "ganglion.tool_names" in loaded
    assert [m for m in loaded if m == "ganglion.tools" or m.startswith("ganglion.tools.")] == []


def test_the_tool_names_import_nothing() -> None:
    assert imported_by("ganglion.tool_names") == ["ganglion", "ganglion.tool_names"]
