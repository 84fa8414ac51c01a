"""The arrows between packages point one way: checked on a fresh interpreter's sys.modules."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path


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


# -- the arrows of docs/architecture.md, read statically (imports inside functions too) ------

PACKAGE = Path(__file__).resolve().parent.parent / "ganglion"

MAY_IMPORT: dict[str, set[str]] = {
    # part: the parts of ours it may import (leaves such as messages, errors, tokens,
    # durations, untrusted, tool_names are named where used)
    "storage": {"messages", "tokens", "durations"},
    "bus": {"messages", "storage"},
    "router": {"messages", "storage"},
    "interfaces": {"messages", "bus", "router", "storage", "config", "config_matrix",
                   "config_web", "errors", "render", "untrusted"},
    "triggers": {"messages", "bus", "router", "storage", "config", "tokens", "untrusted"},
}
NEVER: dict[str, set[str]] = {
    # the worker's side never reaches back to the edges that feed it
    "worker": {"interfaces", "triggers", "app", "cli"},
    "turn": {"interfaces", "triggers", "worker", "app", "cli"},
    "tools": {"interfaces", "worker", "turn", "llm", "app", "cli"},
    "llm": {"interfaces", "triggers", "worker", "turn", "tools", "app", "cli"},
    # the settings view's verbs are handed to the web edge, which never imports them
    "assistant_state": {"interfaces", "worker", "turn", "app", "cli"},
}


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "ganglion"


def package_arrows() -> dict[str, dict[str, list[str]]]:
    """part -> part it imports -> the files that do, for every ``ganglion.*`` import."""
    arrows: dict[str, dict[str, list[str]]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        module = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        source = _part(module)
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([node.module] if isinstance(node, ast.ImportFrom) and node.module
                     else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            for name in names:
                if name.startswith("ganglion.") and (target := _part(name)) != source:
                    arrows.setdefault(source, {}).setdefault(target, []).append(str(rel))
    return arrows


def test_each_part_imports_only_what_the_architecture_allows() -> None:
    arrows = package_arrows()
    assert {"storage", "bus", "router", "interfaces", "triggers", "worker", "turn"} <= set(arrows)
    wrong = [f"{src} -> {dst} ({', '.join(sorted(set(files)))})"
             for src, targets in arrows.items() for dst, files in targets.items()
             if (src in MAY_IMPORT and dst not in MAY_IMPORT[src])
             or dst in NEVER.get(src, set())
             or (dst == "app" and src != "cli")
             or (dst == "interfaces" and src not in {"app", "cli", "doctor"})]
    assert wrong == []


def test_the_parts_form_no_cycle() -> None:
    arrows = package_arrows()

    def reachable(start: str) -> set[str]:
        seen: set[str] = set()
        todo = [start]
        while todo:
            for nxt in arrows.get(todo.pop(), {}):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    assert [part for part in arrows if part in reachable(part)] == []


def test_the_arrow_reader_sees_imports_inside_functions(tmp_path: Path) -> None:
    # The reader itself: a late import in a function body is an arrow too.
    tree = ast.parse("def f():\n    from ganglion.worker import Worker\n")
    found = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert found == ["ganglion.worker"]
    assert _part("ganglion.interfaces.matrix.login") == "interfaces"


def test_the_mcp_sdk_is_loaded_only_by_the_supervisor() -> None:
    # App imports the manager (and /tools the listing) when servers are configured; the SDK
    # itself is imported in a thread once the daemon runs (ganglion/tools/mcp/manager.py).
    code = ("import json, sys; import ganglion.tools.mcp.manager, ganglion.tools.listing; "
            "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('mcp', 'mcp_types', 'jsonschema'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert json.loads(out) == []
