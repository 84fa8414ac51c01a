"""Shared fixtures: the fake OpenAI-compatible server, and a Ganglion app built on real parts."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from fake_llm import FakeLLM, fake_llm, fake_llm_factory  # noqa: F401  (fixtures)

from ganglion.app import App
from ganglion.config import LoadedConfig, parse_config

WEB_TOKEN = "test-web-token-5a1f0c9e7d"
LLM_KEY = "sk-test-llm-key-93c1b7e2"
RUNTIME_KEY = "sk-runtime-Key-4f9a2c7e1b"
"""The key test_endpoints adds with /add_endpoint (test_attack checks they stay equal)."""
TEST_SECRETS = (WEB_TOKEN, LLM_KEY, RUNTIME_KEY)
SYNAPSE_TOKEN = re.compile(r"syt_[A-Za-z0-9]+_[A-Za-z0-9]{10,}_[A-Za-z0-9]{4,}")
"""Any access token the test Synapse issues (tests/synapse.py logs its users in)."""


def leaked_secrets(root: Path) -> list[str]:
    """``file: secret`` for every test secret found in a ganglion.log* file under ``root``."""
    found = []
    for path in sorted(root.rglob("ganglion.log*")):
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        hits = [s for s in TEST_SECRETS if s in text] + SYNAPSE_TOKEN.findall(text)
        found += [f"{path}: {hit[:12]}…" for hit in hits]
    return found


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """After the whole suite: no test secret may appear in any log file the daemon wrote."""
    factory = getattr(session.config, "_tmp_path_factory", None)
    if factory is None or session.config.option.collectonly:
        return
    try:
        root = factory.getbasetemp()
    except (OSError, ValueError):
        return
    leaks = leaked_secrets(root)
    if leaks:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        lines = ["A test secret appears in a log file:", *leaks]
        if reporter is not None:
            reporter.write_sep("=", "secrets in logs", red=True)
            reporter.write_line("\n".join(lines))
        else:
            print("\n".join(lines))
        session.exitstatus = pytest.ExitCode.TESTS_FAILED

AppFactory = Callable[..., Awaitable[App]]


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def base_config(tmp_path: Path, llm: FakeLLM) -> dict[str, Any]:
    return {
        "llm": {
            "endpoints": [{"name": "fake", "base_url": llm.base_url, "api_key": LLM_KEY,
                           "max_concurrency": 4, "timeout_seconds": 10}],
            "model": "fake-model",
            "retries": 1,
            "backoff_seconds": 0.01,
        },
        "web": {"port": 0, "token": WEB_TOKEN},
        "paths": {"data_dir": str(tmp_path / "data"), "log_dir": str(tmp_path / "logs")},
    }


@pytest_asyncio.fixture
async def app_factory(tmp_path: Path, fake_llm: FakeLLM) -> AsyncIterator[AppFactory]:  # noqa: F811
    """``await app_factory({...overrides})``: a started App on the fake LLM; stopped after."""
    apps: list[App] = []

    async def make(overrides: dict[str, Any] | None = None, **kwargs: Any) -> App:
        raw = merge(base_config(tmp_path, fake_llm), overrides or {})
        app = App(LoadedConfig(parse_config(raw, env={}), None, tmp_path), **kwargs)
        await app.start()
        apps.append(app)
        return app

    yield make
    for app in reversed(apps):
        await app.stop()
