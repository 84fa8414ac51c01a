"""Ganglion uses only the public API of its dependencies: no ``_private`` module, name,
attribute or overridden method of a third-party package (a release may change them silently).

The standard library is left out: its underscored names that Ganglion uses (``os._exit``)
are documented.
"""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path
from types import ModuleType

PACKAGE = Path(__file__).resolve().parent.parent / "ganglion"


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _third_party(module: str) -> bool:
    top = module.split(".", maxsplit=1)[0]
    return top not in sys.stdlib_module_names and top not in ("ganglion", "__future__")


def private_uses(source: str) -> list[str]:
    """Each use of a third-party private name in ``source``, as ``line: what``."""
    tree = ast.parse(source)
    foreign: set[str] = set()  # local names bound to third-party modules and classes
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _third_party(alias.name):
                    foreign.add((alias.asname or alias.name).split(".")[0])
                    if any(_private(p) for p in alias.name.split(".")):
                        found.append(f"{node.lineno}: import {alias.name}")
        elif (isinstance(node, ast.ImportFrom) and node.module and node.level == 0
              and _third_party(node.module)):
            for alias in node.names:
                foreign.add(alias.asname or alias.name)
                if _private(alias.name) or any(_private(p) for p in node.module.split(".")):
                    found.append(f"{node.lineno}: from {node.module} import {alias.name}")
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and _private(node.attr)
                and isinstance(node.value, ast.Name) and node.value.id in foreign):
            found.append(f"{node.lineno}: {node.value.id}.{node.attr}")
    return sorted(found, key=lambda use: int(use.split(":")[0]))


def test_the_checker_finds_each_kind_of_private_use() -> None:
    source = (
        "import os\nimport openai\nfrom openai import _httpx2\nimport nio._store\n"
        "from nio import DefaultStore\nfrom aiohttp.web import _helpers\n"
        "openai._client\nos._exit(0)\n"
    )
    assert private_uses(source) == [
        "3: from openai import _httpx2", "4: import nio._store",
        "6: from aiohttp.web import _helpers", "7: openai._client"]


def private_overrides(module: ModuleType) -> list[str]:
    """Private methods of a third-party class that ``module``'s classes override."""
    found: list[str] = []
    for cls in vars(module).values():
        if not isinstance(cls, type) or cls.__module__ != module.__name__:
            continue
        foreign = [b for b in cls.__mro__[1:] if _third_party(b.__module__)]
        for name in vars(cls):
            # _abc_impl is ABCMeta's own bookkeeping in every abstract class's subclasses.
            if _private(name) and name != "_abc_impl" and any(name in vars(b) for b in foreign):
                found.append(f"{cls.__name__} overrides {name}")
    return found


def test_the_checker_finds_an_overridden_private_method() -> None:
    import aiohttp.web

    module = ModuleType("example")
    exec("class Site(TCPSite):\n"  # aiohttp's TCPSite keeps its server in a private _server
         "    _server = None\n    def _own(self): ...\n    def __repr__(self): ...\n",
         {"TCPSite": aiohttp.web.TCPSite, "__name__": "example"}, vars(module))
    assert private_overrides(module) == ["Site overrides _server"]


def test_ganglion_uses_no_private_api_of_its_dependencies() -> None:
    files = sorted(PACKAGE.rglob("*.py"))
    assert len(files) > 30  # the package was found
    found = [f"{path.relative_to(PACKAGE.parent)}:{use}" for path in files
             for use in private_uses(path.read_text(encoding="utf-8"))]
    for path in files:
        if path.name == "__main__.py":
            continue  # importing it runs the daemon; it defines no class
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        found += [f"{name}: {use}" for use in private_overrides(importlib.import_module(name))]
    assert found == []


async def test_the_matrix_key_store_keeps_its_pragmas_through_public_api(tmp_path: Path) -> None:
    """WalStore sets WAL and synchronous=NORMAL with peewee's public pragma() now that it no
    longer overrides nio's private _create_database: also on a connection opened later."""
    from ganglion.config_matrix import MatrixConfig
    from ganglion.interfaces.matrix.session import make_client

    config = MatrixConfig(homeserver="http://127.0.0.1:9", user_id="@bot:example.org",
                          access_token="syt_Ym90_notarealtoken0000_0000", device_id="TESTDEV",
                          allowed_users=["@me:example.org"])
    client = make_client(config, tmp_path / "matrix-store")
    try:
        database = client.store.database
        for reconnect in (False, True):
            if reconnect:
                database.close()
                database.connect()
            pragmas = {key: database.execute_sql(f"PRAGMA {key}").fetchone()[0]
                       for key in ("journal_mode", "synchronous", "foreign_keys")}
            assert pragmas == {"journal_mode": "wal", "synchronous": 1, "foreign_keys": 1}
    finally:
        await client.close()
