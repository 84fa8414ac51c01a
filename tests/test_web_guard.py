"""The web edge's guards: the failed-login throttle (on its own and over real sockets, a storm
of wrong tokens included) and loopback Host names (the Host and Origin refusals over real
sockets are in test_web.py and test_attack.py)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import pytest
from conftest import WEB_TOKEN, AppFactory

from ganglion.app import App
from ganglion.interfaces.web import WebInterface
from ganglion.interfaces.web_guard import Throttle, is_loopback_host


class Clock:
    """A clock the test moves: a throttle window lasts exactly as long as the test says."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_throttle_windows_grow_to_the_cap_and_a_success_starts_over() -> None:
    clock = Clock()
    throttle = Throttle(free=3, cap=10.0, clock=clock)
    windows = []
    for _ in range(10):
        throttle.failed("a")
        windows.append(throttle.retry_after("a"))
    assert windows == [0, 0, 1, 2, 4, 8, 10, 10, 10, 10]
    clock.now += 9.5
    assert throttle.retry_after("a") == 0.5
    clock.now += 0.5
    assert throttle.retry_after("a") == 0
    throttle.failed("a")
    throttle.succeeded("a")
    assert throttle.retry_after("a") == 0 and len(throttle) == 0
    for _ in range(2):
        throttle.failed("b")
    assert throttle.retry_after("b") == 0  # two failures are free
    throttle.failed("b")
    assert throttle.retry_after("b") == 1


def test_throttle_memory_is_bounded_and_forgets_the_least_recent_failure_first() -> None:
    throttle = Throttle(free=1, cap=10.0, max_addresses=100, clock=Clock())
    addrs = [f"10.0.{i // 256}.{i % 256}" for i in range(10_000)]
    for addr in addrs:
        throttle.failed(addr)
        assert len(throttle) <= 100
    assert len(throttle) == 100 and throttle.retry_after(addrs[-101]) == 0
    oldest, next_oldest = addrs[-100], addrs[-99]
    throttle.failed(oldest)  # failed again: now the most recent
    throttle.failed("192.0.2.1")  # one more address pushes out the least recent
    assert throttle.retry_after(oldest) > 0 and throttle.retry_after(next_oldest) == 0
    assert len(throttle) == 100


def test_loopback_host_names() -> None:
    for ok in ("127.0.0.1", "127.0.0.1:8080", "localhost", "LOCALHOST:80", "[::1]:8080",
               "::1", "app.localhost:1", "127.1.2.3", "localhost."):
        assert is_loopback_host(ok), ok
    for bad in ("evil.example", "localhost.evil.example", "10.0.0.1:80", "[::2]", "0.0.0.0",
                "", "127.0.0.1.nip.io"):
        assert not is_loopback_host(bad), bad


# -- over real sockets -------------------------------------------------------------------------


def web_of(app: App) -> WebInterface:
    assert app.web is not None
    return app.web


WRONG = {"type": "hello", "token": "guess-0001", "thread_id": None}
RIGHT = {"type": "hello", "token": WEB_TOKEN, "thread_id": None}


async def hello(session: aiohttp.ClientSession, url: str, frame: Any) -> dict[str, Any]:
    """One login: the first frame the server answers, and the close code if it closed."""
    async with session.ws_connect(f"{url}/ws", origin=url) as ws:
        await (ws.send_str(frame) if isinstance(frame, str) else ws.send_json(frame))
        answer: dict[str, Any] = await ws.receive_json(timeout=10)
        if answer.get("type") == "error":
            closing = await ws.receive(timeout=10)
            answer["close_code"] = closing.data
        return answer


async def test_a_storm_of_wrong_tokens_does_not_keep_the_owner_out(
    app_factory: AppFactory,
) -> None:
    """100 parallel wrong hellos from one address (as behind a reverse proxy), 50 more whose
    sockets are abandoned without reading the answer, and 20 sockets that never say hello:
    the right token is accepted at once, and every wrong one was answered without a wait."""
    app = await app_factory()
    url = web_of(app).url
    async with aiohttp.ClientSession() as session:
        silent = [await session.ws_connect(f"{url}/ws", origin=url) for _ in range(20)]
        abandoned = []
        for _ in range(50):
            ws = await session.ws_connect(f"{url}/ws", origin=url)
            await ws.send_json(WRONG)
            abandoned.append(ws)
        for ws in abandoned:
            await ws.close()
        storm = [asyncio.create_task(hello(session, url, WRONG)) for _ in range(100)]
        owner = await hello(session, url, RIGHT)
        assert owner["type"] == "ready"
        answers = await asyncio.gather(*storm)
        codes = {(a["code"], a["close_code"]) for a in answers}
        assert codes <= {("unauthorized", 4401), ("throttled", 4429)}, codes
        assert ("throttled", 4429) in codes
        assert all(1 <= a["retry_after"] <= 10 for a in answers if a["code"] == "throttled")
        for ws in silent:
            await ws.close()


async def test_wrong_logins_while_throttled_are_refused_at_once_with_the_time_to_wait(
    app_factory: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Every kind of failed hello counts; once throttled, a wrong one is refused at once with
    retry_after and not counted; the right one gets in during the window; the window ends."""
    caplog.set_level(logging.DEBUG)
    app = await app_factory()
    web = web_of(app)
    clock = Clock()  # frozen: the window lasts until the test moves the clock
    web._throttle = Throttle(free=3, cap=10.0, clock=clock)
    url = web.url
    async with aiohttp.ClientSession() as session:
        for frame in ({"type": "hello", "thread_id": None}, "not a hello",
                      {"type": "hello", "token": ["x"]}):
            answer = await hello(session, url, frame)
            assert (answer["code"], answer["close_code"]) == ("unauthorized", 4401), answer
        assert web._throttle.retry_after("127.0.0.1") == 1
        for _ in range(5):  # refused at once, not counted: the window stays 1 s
            answer = await hello(session, url, WRONG)
            assert (answer["code"], answer["close_code"], answer["retry_after"]) == (
                "throttled", 4429, 1), answer
            assert "retry in 1 s" in answer["message"]
        assert (await hello(session, url, RIGHT))["type"] == "ready"  # in the window
        for _ in range(3):  # the success started the count over: three free failures
            answer = await hello(session, url, WRONG)
            assert answer["code"] == "unauthorized", answer
        assert web._throttle.retry_after("127.0.0.1") == 1
        clock.now += 1  # the window is over: the next wrong one is checked and counted
        assert (await hello(session, url, WRONG))["code"] == "unauthorized"
        assert web._throttle.retry_after("127.0.0.1") == 2  # the 4th failure in a row
        assert (await hello(session, url, WRONG))["retry_after"] == 2
        clock.now += 2
        assert (await hello(session, url, WRONG))["code"] == "unauthorized"
        assert web._throttle.retry_after("127.0.0.1") == 4
    assert WEB_TOKEN not in caplog.text and "guess-0001" not in caplog.text
