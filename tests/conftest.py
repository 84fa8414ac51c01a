"""Shared fixtures: the fake OpenAI-compatible server, a Ganglion app built on real parts, the
session's Synapse and Chromium, and the per-test scan for secrets in logs."""

from __future__ import annotations

import asyncio
import copy
import logging
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest
import pytest_asyncio
from browser_page import Problems
from fake_llm import FakeLLM, fake_llm, fake_llm_factory  # noqa: F401  (fixtures)
from pg_cluster import PASSWORD as PG_PASSWORD
from pg_cluster import Cluster, PostgresUnavailable, start_cluster
from playwright.async_api import Browser, BrowserContext, async_playwright
from secret_scan import SecretScan
from synapse import Human, HumanFactory, MatrixUser, Synapse, SynapseUnavailable, install
from wsclient import ChatClient

from ganglion.app import App
from ganglion.config import LoadedConfig, parse_config, secret_values
from ganglion.logs import NOISY, SecretMask, file_handler, set_levels
from ganglion.storage.backend import Backend
from ganglion.storage.connect import open_database

WEB_TOKEN = "test-web-token-5a1f0c9e7d"
LLM_KEY = "sk-test-llm-key-93c1b7e2"
RUNTIME_KEY = "sk-runtime-Key-4f9a2c7e1b"
"""The key test_endpoints adds with /add_endpoint."""
TEST_SECRETS = (WEB_TOKEN, LLM_KEY, RUNTIME_KEY, PG_PASSWORD)


@pytest.fixture(autouse=True)
def secret_scan(request: pytest.FixtureRequest) -> Iterator[SecretScan]:
    """Fails the test, at its teardown, if its logs (log files and daemon console under its
    ``tmp_path`` and its Apps' log folders) hold one of its own secrets: TEST_SECRETS, what
    it registered with ``add`` (``app_factory`` adds each App's config secrets and web
    token), the tokens and passwords of the Synapse users it registered, the web tokens
    generated and the config secrets written in its folders, any Synapse access token."""
    scan = SecretScan(TEST_SECRETS)
    if "tmp_path" in request.fixturenames:
        scan.watch(request.getfixturevalue("tmp_path"))
    server = request.getfixturevalue("synapse") if "synapse" in request.fixturenames else None
    known_users = len(server.users) if server is not None else 0
    yield scan
    if server is not None:
        for user in server.users[known_users:]:
            scan.add(user.access_token, user.password)
    leaks = scan.leaks()
    if leaks:
        pytest.fail("secrets of this test in its logs:\n" + "\n".join(leaks), pytrace=False)


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
        # No title requests: tests script the model's replies in order (test_conversations
        # turns them on).
        "web": {"port": 0, "token": WEB_TOKEN, "titles": "words"},
        "paths": {"data_dir": str(tmp_path / "data"), "log_dir": str(tmp_path / "logs")},
    }


def daemon_config(llm: FakeLLM, **sections: Any) -> dict[str, Any]:
    """The config of the real daemon (tests/daemon.py) on the fake LLM, plus ``sections``."""
    return {
        "llm": {"endpoints": [{"name": "fake", "base_url": llm.base_url, "api_key": LLM_KEY,
                               "timeout_seconds": 30}],
                "model": "fake-model", "retries": 0, "backoff_seconds": 0.01},
        "web": {"token": WEB_TOKEN, "titles": "words"},  # no title requests (see above)
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
    too), into the App's ``log_dir/ganglion.log``, so the test's secret scan covers them."""

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
async def app_factory(
    tmp_path: Path, fake_llm: FakeLLM, secret_scan: SecretScan,  # noqa: F811
    request: pytest.FixtureRequest,
) -> AsyncIterator[AppFactory]:
    """``await app_factory({...overrides})``: a started App on the fake LLM; stopped after.
    It logs as the daemon does (see DaemonLog); its secrets and log folder join the test's
    secret scan. A test that asks for ``database_url`` runs its Apps on that database."""
    apps: list[App] = []
    logs = DaemonLog()
    database = ({"database": {"url": request.getfixturevalue("database_url")}}
                if "database_url" in request.fixturenames else {})

    async def make(overrides: dict[str, Any] | None = None, **kwargs: Any) -> App:
        raw = merge(merge(base_config(tmp_path, fake_llm), database), overrides or {})
        app = App(LoadedConfig(parse_config(raw, env={}), None, tmp_path), **kwargs)
        logs.add(app)
        secret_scan.add(*secret_values(app.config))
        secret_scan.watch(app.loaded.log_dir)
        await app.start()
        if app.web is not None:  # web.enabled: false leaves the App without a token
            secret_scan.add(app.web_token)  # a generated one too
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


async def connect(app: App, thread_id: str | None = None) -> ChatClient:
    """A tab on ``app``'s web interface (a new conversation, or ``thread_id``'s), connected."""
    assert app.web is not None
    chat = ChatClient(app.web.url, app.web_token, thread_id)
    await chat.connect()
    return chat


@pytest_asyncio.fixture
async def context(chromium: Browser) -> AsyncIterator[BrowserContext]:
    ctx = await chromium.new_context(viewport={"width": 900, "height": 700})
    ctx.set_default_timeout(10_000)
    yield ctx
    await ctx.close()


@pytest_asyncio.fixture
async def problems() -> AsyncIterator[Problems]:
    found = Problems()
    yield found
    assert found.items == []


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Cluster]:
    """One PostgreSQL cluster for the session (tests/pg_cluster.py), started at the first
    test that needs it; each test takes a database of its own (``database_url``)."""
    try:
        cluster = start_cluster()
    except (PostgresUnavailable, OSError, subprocess.SubprocessError) as err:
        skip_or_fail(f"PostgreSQL is not available: {err}")
    try:
        yield cluster
    finally:
        cluster.close()


BACKENDS = ("sqlite", "postgres")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Which database the test runs on: it runs once on each."""
    name: str = request.param
    return name


@pytest.fixture
def database_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """``database.url`` for this test: a file in its data folder, or a fresh database."""
    if backend == "sqlite":
        return f"sqlite:///{tmp_path / 'data' / 'conversation.db'}"
    cluster: Cluster = request.getfixturevalue("pg_cluster")
    return cluster.new_database()


OpenDb = Callable[..., Awaitable[Backend]]


@pytest.fixture
def open_db(database_url: str, tmp_path: Path) -> OpenDb:
    """``await open_db()``: this test's database, migrated (``migrations=`` to stop early)."""

    async def open_(**kwargs: Any) -> Backend:
        return await open_database(database_url, tmp_path / "data", "the test database",
                                   **kwargs)

    return open_
