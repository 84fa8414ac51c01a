"""Shared fixtures: the fake OpenAI-compatible server, and a Ganglion app built on real parts."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest_asyncio
from fake_llm import FakeLLM, fake_llm, fake_llm_factory  # noqa: F401  (fixtures)

from ganglion.app import App
from ganglion.config import LoadedConfig, parse_config

WEB_TOKEN = "test-web-token-5a1f0c9e7d"
LLM_KEY = "sk-test-llm-key-93c1b7e2"

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
