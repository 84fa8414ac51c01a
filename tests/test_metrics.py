"""/metrics, /status and ``ganglion status``: real Apps and the real daemon on the fake LLM,
scraped over HTTP and read with the Prometheus client's own parser."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import (
    LLM_KEY,
    PG_PASSWORD,
    WEB_TOKEN,
    AppFactory,
    connect,
    daemon_config,
    eventually,
)
from daemon import Daemon, free_port
from fake_llm import FakeLLM, Reply
from hs_proxy import HomeserverProxy, hs_proxy  # noqa: F401  (fixture)
from matrix_rooms import matrix_section
from prometheus_client.parser import text_string_to_metric_families
from reminder_helpers import FAST, next_reminder
from synapse import Synapse
from wsclient import ChatClient

from ganglion.app import App
from ganglion.config import parse_config
from ganglion.errors import ConfigError
from ganglion.messages import ThreadId
from ganglion.storage.db import Database
from ganglion.storage.reminders import NewReminder, ReminderStore

AUTH = {"Authorization": f"Bearer {WEB_TOKEN}"}


async def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as resp:
        return resp.status, await resp.text()


async def scrape(app: App) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, parsed by prometheus_client: (name, labels) -> value."""
    assert app.web is not None
    status, body = await get(f"{app.web.url}/metrics", AUTH)
    assert status == 200, body
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(body) for s in family.samples}


async def status_of(app: App) -> dict[str, Any]:
    assert app.web is not None
    code, body = await get(f"{app.web.url}/status", AUTH)
    assert code == 200, body
    data: dict[str, Any] = json.loads(body)
    return data


async def test_metrics_count_turns_tokens_and_the_failed_endpoint(
    app_factory: AppFactory, fake_llm: FakeLLM, database_url: str
) -> None:
    app = await app_factory()
    chat = await connect(app)
    fake_llm.script(Reply("one", usage=(10, 5)), Reply("two", usage=(7, 3)),
                    Reply(status=500), Reply(status=500))  # the third turn: retried, failed
    for text in ("a", "b", "c"):
        await chat.ask(text)
    await app.bus.wait_idle()  # the last turn has returned, its time observed
    samples = await scrape(app)
    assert samples[("ganglion_turn_seconds_count", ())] == 3
    assert samples[("ganglion_llm_call_seconds_count", (("endpoint", "fake"),))] == 2
    assert samples[("ganglion_tokens_total", (("account", "web"),))] == 25
    assert samples[("ganglion_llm_errors_total", (("endpoint", "fake"),))] == 1
    assert samples[("ganglion_queue_depth", ())] == 0
    assert samples[("ganglion_turns_in_flight", ())] == 0
    assert ("ganglion_matrix_sync_lag_seconds", ()) not in samples  # Matrix is off

    status = await status_of(app)
    assert status["tokens_today"] == 25
    assert status["queue_depth"] == 0 and status["turns_in_flight"] == 0
    assert status["matrix"] is None and status["reminders_pending"] == 0
    [endpoint] = status["endpoints"]
    assert endpoint["name"] == "fake" and endpoint["state"] == "cooling"
    assert endpoint["last_failure"] and endpoint["cooling_seconds"] > 0
    raw = json.dumps(status)
    assert LLM_KEY not in raw and WEB_TOKEN not in raw
    # The database it runs on, its password masked.
    assert status["database"] == ("conversation.db" if database_url.startswith("sqlite")
                                  else database_url.replace(PG_PASSWORD, "***"))
    assert PG_PASSWORD not in raw
    await chat.close()


async def test_queue_depth_and_turns_in_flight_are_read_while_turns_are_held(
    app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    app = await app_factory({"bus": {"max_turns_in_flight": 1}})
    first, other = await connect(app), await connect(app)
    held = asyncio.Event()
    fake_llm.script(Reply("slow", held=held))
    await first.send("held")
    await other.send("waits for a slot")
    await first.send("waits behind its thread's turn")
    async with asyncio.timeout(5):
        await fake_llm.wait_until(lambda: fake_llm.in_flight == 1)
    samples = await scrape(app)
    assert samples[("ganglion_turns_in_flight", ())] == 1
    assert samples[("ganglion_queue_depth", ())] == 2
    status = await status_of(app)
    assert (status["queue_depth"], status["turns_in_flight"]) == (2, 1)
    held.set()
    await app.bus.wait_idle()
    samples = await scrape(app)
    assert (samples[("ganglion_queue_depth", ())], samples[("ganglion_turns_in_flight", ())]) \
        == (0, 0)
    assert samples[("ganglion_turn_seconds_count", ())] == 3
    await first.close()
    await other.close()


@pytest.mark.parametrize("path", ["/metrics", "/status"])
async def test_metrics_and_status_refuse_a_missing_or_wrong_token_and_another_origin(
    app_factory: AppFactory, path: str
) -> None:
    app = await app_factory()
    assert app.web is not None
    url = app.web.url + path
    assert (await get(url))[0] == 401
    assert (await get(url, {"Authorization": "Bearer wrong-token"}))[0] == 401
    assert (await get(url, {"Authorization": WEB_TOKEN}))[0] == 401  # no scheme
    # A browser on another site, even with the token (a page that learnt it): refused.
    assert (await get(url, {**AUTH, "Origin": "https://evil.example"}))[0] == 403
    assert (await get(url, {**AUTH, "Origin": app.web.url}))[0] == 200  # the page's own
    assert (await get(url, AUTH))[0] == 200
    # Guessing is throttled (after 3 wrong ones in a row), but the right token still gets
    # in at once.
    codes = []
    while 429 not in codes:
        codes.append((await get(url, {"Authorization": "Bearer guess"}))[0])
    assert codes[:3] == [401] * 3
    assert (await get(url, AUTH))[0] == 200
    assert await get(app.web.url + "/healthz") == (200, "ok")  # cheap, no token


async def test_wrong_tokens_count_alike_on_every_token_checked_endpoint(
    app_factory: AppFactory
) -> None:
    # One throttle for the page's login and the HTTP endpoints: guessing on /status gives
    # no fresh tries on /upload (nor the other way), and the right token still gets in.
    app = await app_factory()
    assert app.web is not None
    wrong = {"Authorization": "Bearer guess"}
    assert [(await get(app.web.url + "/status", wrong))[0] for _ in range(3)] == [401] * 3
    async with aiohttp.ClientSession() as http, http.post(
            app.web.url + "/upload", data=b"x", headers=wrong) as resp:
        assert resp.status == 429
    assert (await get(app.web.url + "/metrics", wrong))[0] == 429
    assert (await get(app.web.url + "/metrics", AUTH))[0] == 200


async def test_the_loopback_metrics_listener_needs_no_token_but_a_loopback_host(
    app_factory: AppFactory,
) -> None:
    app = await app_factory({"web": {"metrics_bind": "127.0.0.1:0"}})
    assert app.metrics_listener is not None
    url = f"http://127.0.0.1:{app.metrics_listener.port}"
    code, body = await get(f"{url}/metrics")
    assert code == 200
    assert "ganglion_turn_seconds" in {f.name for f in text_string_to_metric_families(body)}
    assert (await get(f"{url}/metrics", {"Host": "evil.example"}))[0] == 403  # DNS rebinding
    assert (await get(f"{url}/status"))[0] == 404  # /status stays behind the token


@pytest.mark.parametrize("bind", ["0.0.0.0:9464", "192.168.1.5:9464", "9464", "host:port"])
def test_the_config_refuses_a_metrics_bind_beyond_loopback(bind: str) -> None:
    with pytest.raises(ConfigError, match=r"web\.metrics_bind"):
        parse_config({"web": {"metrics_bind": bind}}, env={})


async def test_a_reminder_due_while_stopped_counts_as_fired_late_after_the_restart(
    app_factory: AppFactory, tmp_path: Path
) -> None:
    app = await app_factory(FAST)
    chat = await connect(app)
    thread = chat.thread_id
    await chat.close()
    await app.stop()
    db = await Database.open(tmp_path / "data" / "conversation.db")  # nothing runs now
    try:
        store = ReminderStore(db, tmp_path / "data" / "reminders.json", app.tz)
        await store.add(NewReminder(ThreadId(thread), "Was due two minutes ago",
                                    time.time() - 120))
    finally:
        await db.close()

    app = await app_factory(FAST)  # the same data folder: its start fired what came due
    samples = await scrape(app)
    assert samples[("ganglion_reminders_fired_total", ())] == 1
    assert samples[("ganglion_reminders_late_total", ())] == 1
    chat = await connect(app, thread)
    if not any(m["text"].startswith("⏰ Reminder (late") for m in chat.ready["transcript"]):
        await next_reminder(chat)
    await chat.close()


async def test_a_reminder_on_time_is_not_counted_late(
    app_factory: AppFactory,
) -> None:
    app = await app_factory(FAST)
    chat = await connect(app)
    await app.reminder_store.add(NewReminder(ThreadId(chat.thread_id), "Now", time.time()))
    await app.reminders.wake()  # fires it
    samples = await scrape(app)
    assert samples[("ganglion_reminders_fired_total", ())] == 1
    assert samples[("ganglion_reminders_late_total", ())] == 0
    await chat.close()


@pytest.mark.matrix
async def test_matrix_sync_state_and_lag_follow_the_homeserver(
    app_factory: AppFactory, synapse: Synapse, hs_proxy: HomeserverProxy,  # noqa: F811
    tmp_path: Path,
) -> None:
    bot, person = await synapse.register("bot"), await synapse.register("human")
    app = await app_factory(matrix_section(synapse, bot, [person.user_id], tmp_path / "store",
                                           homeserver=hs_proxy.url))
    assert app.matrix is not None
    matrix = app.matrix
    # Set before the first sync ends (nothing awaited since the start): short long-polls,
    # so a refused sync comes soon.
    matrix.sync_timeout_ms, matrix.backoff_max = 200, 0.2
    await asyncio.wait_for(matrix.ready.wait(), 20)
    assert (await status_of(app))["matrix"]["state"] == "syncing"
    assert ("ganglion_matrix_sync_lag_seconds", ()) in await scrape(app)

    hs_proxy.fail = re.compile(r"^GET .*/sync")
    await hs_proxy.wait_failures(2)  # the loop has seen the refusal and tried again
    await eventually(lambda: matrix.sync_state == "unreachable")
    lag = (await scrape(app))[("ganglion_matrix_sync_lag_seconds", ())]
    status = (await status_of(app))["matrix"]
    assert status["state"] == "unreachable" and status["lag_seconds"] >= round(lag, 1)
    healed = time.monotonic()
    hs_proxy.fail = None
    await eventually(lambda: matrix.sync_state == "syncing", timeout=20)
    assert matrix.sync_lag() <= time.monotonic() - healed  # counted from the new sync


def ganglion_status(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ganglion", "status", "--config", str(config),
                           *args], capture_output=True, text=True, timeout=30, check=False)


async def test_ganglion_status_asks_the_running_daemon(
    tmp_path: Path, fake_llm: FakeLLM
) -> None:
    config = daemon_config(fake_llm)
    del config["web"]["token"]  # the one the daemon generates, read from data/web_token
    async with Daemon(tmp_path, config) as daemon:
        token = (tmp_path / "data" / "web_token").read_text().strip()
        chat = ChatClient(daemon.url, token)
        await chat.connect()
        await chat.ask("hello")
        await chat.close()
        done = await asyncio.to_thread(ganglion_status, daemon.config_path, "--json")
        assert done.returncode == 0, done.stderr
        status = json.loads(done.stdout)
        assert status["endpoints"][0]["state"] == "healthy"
        assert status["tokens_today"] > 0 and status["uptime_seconds"] >= 0
        shown = await asyncio.to_thread(ganglion_status, daemon.config_path)
        assert shown.returncode == 0, shown.stderr
        assert "fake (http://127.0.0.1:" in shown.stdout and "tokens today:" in shown.stdout
        assert token not in shown.stdout + done.stdout and LLM_KEY not in shown.stdout


async def test_ganglion_status_says_so_when_no_daemon_answers(
    tmp_path: Path, fake_llm: FakeLLM
) -> None:
    config = daemon_config(fake_llm)
    config["web"]["port"] = free_port()  # nothing listens there
    path = tmp_path / "config.yaml"
    path.write_text(json.dumps(config))
    done = await asyncio.to_thread(ganglion_status, path)
    assert done.returncode == 1
    assert "no Ganglion daemon answers at http://127.0.0.1:" in done.stderr
    assert done.stdout == ""


def test_prometheus_client_is_imported_at_the_first_scrape_not_at_start() -> None:
    # A daemon nobody scrapes does not pay the library's memory (idle RSS is measured).
    code = ("import sys, ganglion.app, ganglion.cli; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'prometheus_client'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
