"""Shared fixtures: the fake OpenAI-compatible server, a Ganglion app built on real parts, the
session's Synapse and Chromium, and the per-test scan for secrets in logs."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import os
import re
import shutil
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest
import pytest_asyncio
from fake_llm import FakeLLM, fake_llm, fake_llm_factory  # noqa: F401  (fixtures)
from playwright.async_api import Browser, async_playwright
from synapse import Human, HumanFactory, MatrixUser, Synapse, SynapseUnavailable, install

from ganglion.app import App
from ganglion.config import LoadedConfig, parse_config
from ganglion.logs import NOISY, SecretMask, file_handler, set_levels

WEB_TOKEN = "test-web-token-5a1f0c9e7d"
LLM_KEY = "sk-test-llm-key-93c1b7e2"
RUNTIME_KEY = "sk-runtime-Key-4f9a2c7e1b"
"""The key test_endpoints adds with /add_endpoint."""
TEST_SECRETS = (WEB_TOKEN, LLM_KEY, RUNTIME_KEY)
SYNAPSE_TOKEN = re.compile(r"syt_[A-Za-z0-9]+_[A-Za-z0-9]{10,}_[A-Za-z0-9]{4,}")
"""Any access token the test Synapse issues (tests/synapse.py logs its users in)."""


CONSOLE_FILES = ("daemon-output.txt",)
"""The daemon's console (stdout and stderr), as tests/daemon.py keeps it."""
LOGIN_LINE = re.compile(r"\s*Open the chat: http://\S+/#token=\S+\s*")
"""The one console line that carries the web token, by design (ganglion/cli.py)."""


def leaked_secrets(root: Path) -> list[str]:
    """``file: secret`` for every secret found under ``root`` in a log file (ganglion.log*) or
    in the daemon's console output outside its login line. Secrets: the test secrets, Synapse
    access tokens, and every web token a daemon generated (``web_token`` files)."""
    secrets = list(TEST_SECRETS)
    for path in root.rglob("web_token"):
        with contextlib.suppress(OSError):
            token = path.read_text(encoding="utf-8", errors="replace").strip()
            if len(token) >= 16:
                secrets.append(token)
    files = [*root.rglob("ganglion.log*"), *(p for n in CONSOLE_FILES for p in root.rglob(n))]
    found = []
    for path in sorted(files):
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        if path.name in CONSOLE_FILES:
            text = "\n".join(line for line in text.splitlines()
                              if not LOGIN_LINE.fullmatch(line))
        hits = [s for s in secrets if s in text] + SYNAPSE_TOKEN.findall(text)
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


async def eventually(condition: Callable[[], bool], timeout: float = 5) -> None:
    """Until ``condition()`` holds, else TimeoutError after ``timeout`` seconds: for what offers
    nothing to await (processes, files, log records, another process's database)."""
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.02)


async def eventually_async(condition: Callable[[], Awaitable[bool]], timeout: float = 5) -> None:
    """``eventually`` for a condition that must be awaited (a query on the App's database)."""
    async with asyncio.timeout(timeout):
        while not await condition():  # noqa: ASYNC110
            await asyncio.sleep(0.02)


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


def daemon_config(llm: FakeLLM, **sections: Any) -> dict[str, Any]:
    """The config of the real daemon (tests/daemon.py) on the fake LLM, plus ``sections``."""
    return {
        "llm": {"endpoints": [{"name": "fake", "base_url": llm.base_url, "api_key": LLM_KEY,
                               "timeout_seconds": 30}],
                "model": "fake-model", "retries": 0, "backoff_seconds": 0.01},
        "web": {"token": WEB_TOKEN},
        "paths": {"data_dir": "data", "log_dir": "logs"},  # next to the config file
        **sections,
    }


class _EveryMask(logging.Filter):
    """The masks of every App a test started (one process logs for all of them)."""

    def __init__(self) -> None:
        super().__init__()
        self.masks: list[SecretMask] = []

    def filter(self, record: logging.LogRecord) -> bool:
        for mask in self.masks:
            mask.filter(record)
        return True


class _CopyTo(logging.Handler):
    """Hands a copy of each record to ``inner``: the mask rewrites the records it masks, and
    pytest's caplog must still see them as they were logged."""

    def __init__(self, inner: logging.Handler) -> None:
        super().__init__()
        self.inner = inner

    def emit(self, record: logging.LogRecord) -> None:
        self.inner.handle(copy.copy(record))

    def close(self) -> None:
        self.inner.close()
        super().close()


class DaemonLog:
    """In-process Apps log as the daemon does (ganglion/cli.py): the daemon's own file handler
    and levels, behind each App's own mask (the App adds its web token to it, a generated one
    too), into the App's ``log_dir/ganglion.log``, so the session-end scan covers these tests
    too."""

    def __init__(self) -> None:
        self.masks = _EveryMask()
        self.handlers: dict[Path, logging.Handler] = {}
        names = ["", *NOISY, "aiohttp.access"]
        self._levels = {name: logging.getLogger(name).level for name in names}

    def add(self, app: App) -> None:
        """Before ``app.start()``, as the CLI sets up logging before it builds the App."""
        if not self.masks.masks:
            set_levels(app.config.logging.level)
        self.masks.masks.append(app.secret_mask)
        log_dir = app.loaded.log_dir
        if log_dir not in self.handlers:
            handler = _CopyTo(file_handler(log_dir, self.masks))
            logging.getLogger().addHandler(handler)
            self.handlers[log_dir] = handler

    def close(self) -> None:
        for handler in self.handlers.values():
            logging.getLogger().removeHandler(handler)
            handler.close()
        for name, level in self._levels.items():
            logging.getLogger(name).setLevel(level)


@pytest_asyncio.fixture
async def app_factory(tmp_path: Path, fake_llm: FakeLLM) -> AsyncIterator[AppFactory]:  # noqa: F811
    """``await app_factory({...overrides})``: a started App on the fake LLM; stopped after.
    It logs as the daemon does (see DaemonLog)."""
    apps: list[App] = []
    logs = DaemonLog()

    async def make(overrides: dict[str, Any] | None = None, **kwargs: Any) -> App:
        raw = merge(base_config(tmp_path, fake_llm), overrides or {})
        app = App(LoadedConfig(parse_config(raw, env={}), None, tmp_path), **kwargs)
        logs.add(app)
        await app.start()
        apps.append(app)
        return app

    try:
        yield make
    finally:
        for app in reversed(apps):
            await app.stop()
        logs.close()


def skip_or_fail(reason: str) -> NoReturn:
    """A missing browser or homeserver skips the test, except in CI, where it fails it."""
    if os.environ.get("CI") == "true":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


def chromium_path() -> str:
    path = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium")
    if not path:
        skip_or_fail("Chromium not found: install Debian's chromium "
                     "(apt-get install --no-install-recommends chromium) or set CHROMIUM_PATH")
    return path


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def chromium() -> AsyncIterator[Browser]:
    """One browser for the whole session; each test opens its own contexts."""
    path = chromium_path()
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=path, args=["--disable-gpu", "--disable-quic"]
        )
        yield browser
        await browser.close()


@pytest.fixture(scope="session")
def synapse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Synapse]:
    """One Synapse for the whole session; tests register their own users on it."""
    try:
        python = install()
        server = Synapse(python, tmp_path_factory.mktemp("synapse"))
        server.start_blocking()
    except (SynapseUnavailable, OSError, subprocess.SubprocessError) as err:
        skip_or_fail(f"Synapse is not available: {err}")
    try:
        yield server
    finally:
        server.stop_blocking()


@pytest_asyncio.fixture
async def humans(synapse: Synapse, tmp_path: Path) -> AsyncIterator[HumanFactory]:
    """``await humans(user)``: a synced Human client for ``user``; closed after the test."""
    made: list[Human] = []

    async def make(user: MatrixUser) -> Human:
        human = Human(user, synapse.url, tmp_path / f"human-store-{len(made)}")
        made.append(human)
        await human.sync()
        return human

    yield make
    for human in made:
        await human.close()
