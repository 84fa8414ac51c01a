"""Roles, rate limits, token quotas, the autonomous budget and /stats, end to end.

Matrix-style messages go through ``app.bus.submit`` (as the Matrix interface does) and their
replies are read from the stored history; the web UI (the owner) through its socket.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from conftest import AppFactory
from fake_llm import FakeLLM, Reply
from wsclient import ChatClient

from ganglion.app import App
from ganglion.messages import Inbound, Source, ThreadId

Factory = Callable[..., Awaitable[FakeLLM]]
OWNER = "@owner:example.org"
TRUSTED = "@trusted:example.org"
USER = "@user:example.org"
OTHER = "@other:example.org"
ROOM = "!room:example.org"
KEY = "sk-role-test-Key-77aa11bb"


class FakeClock:
    """The App's local time, moved by hand."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


def config(llm: FakeLLM, **limits: Any) -> dict[str, Any]:
    return {
        "llm": {"endpoints": [{"name": "a", "base_url": llm.base_url}], "model": "alpha"},
        "heartbeat": {"enabled": False},
        "matrix": {"owner": OWNER, "trusted_users": [TRUSTED]},
        "limits": {"messages_per_minute": None, **limits},
    }


@pytest.fixture
async def llm(fake_llm_factory: Factory) -> FakeLLM:
    return await fake_llm_factory(models=["alpha", "beta"])


async def send(app: App, text: str, sender: str, room: str = ROOM, *,
               source: Source = Source.MATRIX, system: bool = False,
               meta: dict[str, str] | None = None) -> list[str]:
    """Put a message on the bus as an interface would; the stored replies to it."""
    msg = Inbound(ThreadId(room), text, sender, source, "$" + secrets.token_hex(8),
                  system=system, meta=meta or {})
    stored, _ = await app.bus.submit(msg)
    await app.bus.wait_idle()
    rows = await app.db.fetchall(
        "SELECT content FROM messages WHERE inbox_id = ? AND role IN ('assistant', 'notice')"
        " ORDER BY id", (stored.id,))
    return [r["content"] for r in rows]


async def say(app: App, text: str, sender: str, room: str = ROOM, **kw: Any) -> str:
    replies = await send(app, text, sender, room, **kw)
    assert len(replies) == 1, replies
    return replies[0]


async def web(app: App, text: str) -> str:
    assert app.web is not None
    chat = ChatClient(app.web.url, app.web_token)
    await chat.connect()
    try:
        return str((await chat.ask(text))["text"])
    finally:
        await chat.close()


REFUSED_TRUSTED = "is for trusted users and the owner only; you are a user"


async def test_every_command_by_role(app_factory: AppFactory, llm: FakeLLM) -> None:
    app = await app_factory(config(llm))
    await app.endpoints.discovered.wait()

    # A user: the commands for everyone work...
    assert "1 `alpha` on a" in await say(app, "/models", USER)
    assert "`beta` (model 2), chosen with /model" in await say(app, "!model 2", USER)
    assert "`beta`" in await say(app, "/model", USER)
    assert "No aliases yet" in await say(app, "/aliases", USER)
    assert "No usage recorded yet" in await say(app, "/stats", USER)
    assert (await say(app, "/ask alpha hi there", USER)).startswith("echo: hi there")
    assert (await say(app, "hello", USER)) == "echo: hello"
    assert "Usage since" in await say(app, "/stats", USER)
    assert llm.requests[-1]["model"] == "beta"
    help_text = await say(app, "/help", USER)
    assert "as a user" in help_text and "/models" in help_text and "/ask" in help_text
    assert "/alias " not in help_text and "/reload_models" not in help_text
    assert "more for trusted users and the owner" in help_text
    # ...the others are refused, with no change.
    requests = len(llm.requests)
    for command in ("/alias fast alpha", "/rm_alias fast", "/remove_endpoint a",
                    f"/add_endpoint x {llm.base_url} {KEY}"):
        reply = await say(app, command, USER, meta={"encrypted": "1"})
        assert REFUSED_TRUSTED in reply and KEY not in reply
    assert "is for the owner only; you are a user" in await say(app, "/reload_models", USER)
    assert app.endpoints.aliases() == [] and app.endpoints.get("x") is None
    assert len(llm.requests) == requests
    stored = await app.db.fetchall("SELECT text FROM inbox WHERE text LIKE '/add_endpoint%'")
    assert [r["text"] for r in stored] == [f"/add_endpoint x {llm.base_url} ***"]

    # A trusted user: aliases and endpoints, not the owner's commands.
    assert "Alias `fast` → `alpha`" in await say(app, "/alias fast alpha", TRUSTED)
    assert "already a model's name" in await say(app, "/alias beta alpha", TRUSTED)
    assert "`fast` → `alpha`" in await say(app, "/aliases", USER)
    assert "aliases: fast" in await say(app, "/models", USER)
    assert "`alpha` (model 1)" in await say(app, "/model fast", USER)
    await say(app, "/ask FAST via alias", USER)
    assert llm.requests[-1]["model"] == "alpha"
    assert "Removed alias `fast`" in await say(app, "/rm_alias fast", TRUSTED)
    assert "no alias `fast`" in await say(app, "/rm_alias fast", TRUSTED)
    assert "for the owner only; you are a trusted user" in await say(
        app, "/reload_models", TRUSTED)
    help_text = await say(app, "/help", TRUSTED)
    assert "/alias " in help_text and "/reload_models" not in help_text
    assert "more for the owner" in help_text
    added = await say(app, f"/add_endpoint second {llm.base_url} {KEY}", TRUSTED,
                      meta={"encrypted": "1"})
    assert "Added endpoint 'second'" in added and KEY not in added
    assert "Removed endpoint 'second'" in await say(app, "/remove_endpoint second", TRUSTED)

    # The owner, in Matrix and on the web.
    assert "2 models on 1 endpoints" in await say(app, "/reload_models", OWNER)
    assert "/reload_models" in await say(app, "/help", OWNER)
    web_help = await web(app, "/help")
    assert "as the owner" in web_help and "The owner:" in web_help
    assert "/reload_models" in web_help and "/add_endpoint" in web_help
    assert "2 models on 1 endpoints" in await web(app, "/reload_models")

    # Autonomous turns have the least rank.
    assert "you are a user" in await say(app, "/reload_models", "reminder",
                                         source=Source.REMINDER)


async def test_rate_limit_says_when_to_try_again(app_factory: AppFactory, llm: FakeLLM) -> None:
    clock = FakeClock(datetime(2026, 3, 10, 12, 0, 0, tzinfo=UTC))
    app = await app_factory(config(llm, messages_per_minute=2), clock=clock)
    assert await say(app, "one", USER) == "echo: one"
    clock.advance(seconds=10)
    assert await say(app, "two", USER) == "echo: two"
    clock.advance(seconds=5)
    requests = len(llm.requests)
    refused = await say(app, "three", USER)
    assert "at most 2 messages a minute" in refused
    assert "try again in 45 s, at 12:01:00" in refused
    assert "at most 2" in await say(app, "/ask alpha sneaky", USER)
    assert len(llm.requests) == requests  # refused before any LLM call
    assert "Your limits: 2 messages a minute" in await say(app, "/stats", USER)  # commands pass

    # Per user: the others are not held back; the owner and the web UI are not limited.
    assert await say(app, "mine", OTHER) == "echo: mine"
    for i in range(3):
        assert await say(app, f"boss {i}", OWNER) == f"echo: boss {i}"
        assert await web(app, f"tab {i}") == f"echo: tab {i}"

    clock.advance(seconds=46)  # "one" left the window
    assert await say(app, "four", USER) == "echo: four"
    assert "try again in 9 s, at 12:01:10" in await say(app, "five", USER)


async def test_daily_token_quota_until_midnight(app_factory: AppFactory, llm: FakeLLM) -> None:
    clock = FakeClock(datetime(2026, 3, 10, 23, 58, 0, tzinfo=UTC))
    app = await app_factory(config(llm, daily_tokens=100), clock=clock)
    llm.script(Reply(text="big answer", usage=(80, 30)))
    assert await say(app, "one", USER) == "big answer"
    refused = await say(app, "two", USER)
    assert "110 of 100 tokens used today" in refused
    assert "try again in 2 min, at 00:00:00" in refused
    assert "110 of 100" in await say(app, "/ask beta sneaky", USER)
    assert len(llm.requests) == 1
    assert await say(app, "hi", OTHER) == "echo: hi"  # someone else's quota is their own
    stats = await say(app, "/stats", USER)
    assert "100 tokens a day (110 used today)" in stats

    clock.advance(minutes=2, seconds=1)  # a new day
    assert await say(app, "three", USER) == "echo: three"


async def test_autonomous_turns_have_their_own_budget(
    app_factory: AppFactory, llm: FakeLLM
) -> None:
    clock = FakeClock(datetime(2026, 3, 10, 9, 0, 0, tzinfo=UTC))
    app = await app_factory(config(llm, daily_tokens=1000, autonomous_daily_tokens=100),
                            clock=clock)
    llm.script(Reply(text="reviewed", usage=(80, 30)))
    # A background task (as a system reminder) uses the model: charged to "autonomous".
    assert await send(app, "check the backups", USER, source=Source.REMINDER,
                      system=True) == ["reviewed"]
    stats = await say(app, "/stats", USER)
    assert f"you ({USER}): 0 messages, 0 tokens" in stats
    assert "autonomous: 1 message, 110 tokens" in stats

    # Its budget is spent: the next one is skipped without a model call, and says nothing.
    requests = len(llm.requests)
    assert await send(app, "check again", USER, source=Source.REMINDER, system=True) == []
    assert len(llm.requests) == requests
    # A reminder a person asked for is still delivered word for word; the user still talks.
    assert await say(app, "Call the dentist", USER, source=Source.REMINDER) == "Call the dentist"
    assert await say(app, "hello", USER) == "echo: hello"
    clock.advance(days=1)
    assert await send(app, "next day", USER, source=Source.REMINDER, system=True) == [
        "echo: next day"]


async def test_stats_are_per_user_and_thread_and_survive_restart(
    app_factory: AppFactory, llm: FakeLLM
) -> None:
    clock = FakeClock(datetime(2026, 3, 10, 8, 30, 0, tzinfo=UTC))
    app = await app_factory(config(llm), clock=clock)
    llm.script(*[Reply(text="ok", usage=(10, 5)) for _ in range(5)])
    await say(app, "a1", USER)
    clock.advance(minutes=5)
    await say(app, "a2", USER)
    await say(app, "b1", OTHER, room="!other:example.org")
    await say(app, "/ask beta q", OTHER, room="!other:example.org")
    await web(app, "w1")
    before = await say(app, "/stats", TRUSTED)
    assert "Usage since 2026-03-10 08:30" in before
    assert "- everyone: 5 messages, 75 tokens" in before
    assert f"- you ({TRUSTED}): 0 messages, 0 tokens" in before
    top_users = before.split("Top users:")[1].split("Top threads:")[0]
    assert f"1. {OTHER}: 2 messages, 30 tokens" in top_users
    assert f"2. {USER}: 2 messages, 30 tokens" in top_users
    assert "3. web: 1 message, 15 tokens" in top_users
    assert "!other:example.org: 2 messages, 30 tokens" in before.split("Top threads:")[1]
    await app.stop()

    again = await app_factory(config(llm), clock=clock)
    after = await say(again, "/stats", TRUSTED)
    assert after.split("Your limits")[0] == before.split("Your limits")[0]


async def test_a_user_sees_the_others_counted_not_named(
    app_factory: AppFactory, llm: FakeLLM
) -> None:
    app = await app_factory(config(llm))
    llm.script(*[Reply(text="ok", usage=(10, 5)) for _ in range(6)])
    await say(app, "a1", USER)
    await say(app, "a2", USER)
    await say(app, "b1", OTHER, room="!other:example.org")
    await say(app, "t1", TRUSTED, room="!trusted:example.org")
    await web(app, "w1")
    await send(app, "check the backups", USER, source=Source.REMINDER, system=True)
    others_names = (OTHER, TRUSTED, OWNER, "!other:example.org", "!trusted:example.org",
                    "web", "Top users", "Top threads")

    # A user, in Matrix: their own figures and the totals; everyone else counted.
    mine = await say(app, "/stats", USER)
    assert "- everyone: 6 messages, 90 tokens" in mine
    assert f"- you ({USER}): 2 messages, 30 tokens" in mine
    assert "- this thread: 3 messages, 45 tokens" in mine  # the reminder ran here too
    assert "- autonomous: 1 message, 15 tokens (reminders and heartbeats)" in mine
    # OTHER, TRUSTED and the web UI (the owner): 3 people; their 3 threads.
    assert "- 3 other users: 3 messages, 45 tokens" in mine
    assert "- 3 other threads: 3 messages, 45 tokens" in mine
    assert "shown to trusted users and the owner only" in mine
    assert not [name for name in others_names if name in mine], mine

    # The same data names them for a trusted user, the owner in Matrix and the web UI.
    for reader in (TRUSTED, OWNER):
        named = await say(app, "/stats", reader, room="!trusted:example.org")
        assert f"{OTHER}: 1 message, 15 tokens" in named.split("Top users:")[1]
        assert f"{USER}: 2 messages, 30 tokens" in named
        assert "!other:example.org: 1 message, 15 tokens" in named.split("Top threads:")[1]
        assert "other users" not in named
    on_the_web = await web(app, "/stats")
    assert "- you (web): 1 message, 15 tokens" in on_the_web
    assert f"{USER}: 2 messages, 30 tokens" in on_the_web.split("Top users:")[1]
    assert f"{ROOM}: 3 messages, 45 tokens" in on_the_web.split("Top threads:")[1]


async def test_stats_show_the_top_five_users_and_threads_only(
    app_factory: AppFactory, llm: FakeLLM
) -> None:
    app = await app_factory(config(llm))
    senders = [f"@u{i}:example.org" for i in range(7)]
    # u0 writes 7 times, u1 6 times, ... u6 once, each in a room of their own.
    llm.script(*[Reply(text="ok", usage=(1, 1)) for _ in range(28)])
    for i, sender in enumerate(senders):
        for n in range(7 - i):
            await say(app, f"m{n}", sender, room=f"!r{i}:example.org")
    stats = await say(app, "/stats", OWNER, room="!r6:example.org")
    top_users = stats.split("Top users:")[1].split("Top threads:")[0]
    top_threads = stats.split("Top threads:")[1].split("Your limits")[0]
    for rank, i in enumerate(range(5), start=1):
        assert f"{rank}. {senders[i]}: {7 - i} messages" in top_users, top_users
        assert f"{rank}. !r{i}:example.org: {7 - i} messages" in top_threads, top_threads
    for i in (5, 6):
        assert senders[i] not in top_users and f"!r{i}:" not in top_threads
    assert "6." not in top_users and "6." not in top_threads


async def test_a_heartbeat_review_is_charged_to_the_autonomous_account(
    app_factory: AppFactory, llm: FakeLLM
) -> None:
    app = await app_factory(config(llm, daily_tokens=50))
    (app.data_dir / "HEARTBEATS.txt").write_text("- follow up on the backups\n")
    llm.script(Reply(text="Backups: all fine?", usage=(70, 20)))
    # Asked for by the user, but the review itself is a background turn of its own.
    assert await send(app, "/heartbeat", USER) == ["Reviewing this conversation now."]
    await app.bus.wait_idle()
    stats = await say(app, "/stats", USER)
    assert f"you ({USER}): 0 messages, 0 tokens" in stats, stats
    assert "autonomous: 1 message, 90 tokens" in stats
    # The user's own 50-token quota is untouched by the review's 90 tokens.
    assert await say(app, "hello", USER) == "echo: hello"
