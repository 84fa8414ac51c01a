"""Endpoints and models end to end: two fake servers over real HTTP, the web socket, SQLite.

Discovery and stable numbering across restarts, routing a model to the endpoint that has it,
failover and cooling, /ask parameters in the request body, endpoints added at run time.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import RUNTIME_KEY, AppFactory, connect
from fake_llm import FakeLLM, Reply
from wsclient import ChatClient

from ganglion.app import App
from ganglion.ask_params import parse_ask
from ganglion.errors import InputRejected
from ganglion.logs import SecretMask
from ganglion.messages import Inbound, Source, ThreadId

Factory = Callable[..., Awaitable[FakeLLM]]
TRUSTED = "@trusted:example.org"
ROOM = "!models:example.org"


def two_endpoints(a: FakeLLM, b: FakeLLM, **llm: Any) -> dict[str, Any]:
    return {
        "llm": {"endpoints": [{"name": "a", "base_url": a.base_url},
                              {"name": "b", "base_url": b.base_url}],
                "model": "alpha", **llm},
        "heartbeat": {"enabled": False},
        "matrix": {"trusted_users": [TRUSTED]},
    }


async def say(chat: ChatClient, text: str) -> str:
    reply = await chat.ask(text)
    return str(reply["text"])


async def matrix_say(app: App, text: str, sender: str, room: str = ROOM,
                     meta: dict[str, str] | None = None) -> tuple[str, Inbound]:
    """A Matrix-style message through the bus; returns the stored reply to it."""
    msg = Inbound(ThreadId(room), text, sender, Source.MATRIX, "$" + secrets.token_hex(8),
                  meta=meta or {})
    stored, _ = await app.bus.submit(msg)
    await app.bus.wait_idle()
    rows = await app.history.transcript(ThreadId(room))
    replies = [m.content for m in rows if m.inbox_id == stored.id]
    assert replies, f"no reply to {text!r}"
    return replies[-1], stored


@pytest.fixture
async def pair(fake_llm_factory: Factory) -> tuple[FakeLLM, FakeLLM]:
    a = await fake_llm_factory(models=["alpha", "shared"])
    b = await fake_llm_factory(models=["beta", "shared"])
    return a, b


async def test_discovery_numbering_is_stable_across_restart(
    app_factory: AppFactory, pair: tuple[FakeLLM, FakeLLM]
) -> None:
    a, b = pair
    app = await app_factory(two_endpoints(a, b))
    chat = await connect(app)
    listing = await say(chat, "/models")
    assert "1 `alpha` on a" in listing
    assert "2 `shared` on a, b" in listing
    assert "3 `beta` on b" in listing
    assert "a (config.yaml)" in listing and "healthy" in listing
    assert not a.requests and not b.requests  # no LLM call for a command
    await chat.close()
    await app.stop()

    # Same data dir; the endpoints swap places and 'a' lists a new model first.
    a.models = ["gamma", "alpha", "shared"]
    swapped = two_endpoints(a, b)
    swapped["llm"]["endpoints"].reverse()
    again = await app_factory(swapped)
    # What the last run discovered is known before this run's discovery answers.
    pool = again.endpoints
    assert (pool.model_id("alpha"), pool.model_id("shared"), pool.model_id("beta")) == (1, 2, 3)
    chat = await connect(again)
    listing = await say(chat, "/models")
    assert "1 `alpha` on a" in listing and "2 `shared` on b, a" in listing
    assert "3 `beta` on b" in listing and "4 `gamma` on a" in listing, listing
    await chat.close()


async def test_thread_model_routes_to_the_endpoint_that_has_it_and_persists(
    app_factory: AppFactory, pair: tuple[FakeLLM, FakeLLM]
) -> None:
    a, b = pair
    app = await app_factory(two_endpoints(a, b))
    chat = await connect(app)
    other = await connect(app)
    assert "`alpha` (model 1), the default" in await say(chat, "/model")
    assert "`beta` (model 3), chosen with /model" in await say(chat, "/model 3")
    assert (await say(chat, "hello b")) == "echo: hello b"
    assert b.requests[-1]["model"] == "beta" and not a.requests
    assert (await say(other, "hello a")) == "echo: hello a"  # other threads keep the default
    assert a.requests[-1]["model"] == "alpha"
    unknown = await say(chat, "/model betta")
    assert "No model or alias `betta`" in unknown and "`beta`" in unknown
    thread_id = chat.thread_id
    await chat.close()
    await other.close()
    await app.stop()

    again = await app_factory(two_endpoints(a, b))
    chat = await connect(again, thread_id)
    assert "`beta` (model 3), chosen with /model" in await say(chat, "/model")
    await say(chat, "still b?")
    assert b.requests[-1]["model"] == "beta"
    assert "the default" in await say(chat, "/model default")
    await say(chat, "back to a")
    assert a.requests[-1]["model"] == "alpha"
    await chat.close()


async def test_model_right_after_start_waits_for_the_first_discovery(
    app_factory: AppFactory, pair: tuple[FakeLLM, FakeLLM]
) -> None:
    """``/model`` sent while the start-up's model lists are still on their way answers with
    the model's number, as ``/models`` does (it answered without, by the clock's luck)."""
    a, b = pair
    a.models_held = b.models_held = asyncio.Event()
    app = await app_factory(two_endpoints(a, b))
    chat = await connect(app)
    assert (await chat.send("/model"))["type"] == "ack"
    a.models_held.set()  # the lists come only now, after the command
    assert "`alpha` (model 1), the default" in (await chat.reply())["text"]
    await chat.close()


async def test_failover_when_an_endpoint_dies_then_cooling_and_recovery(
    app_factory: AppFactory, pair: tuple[FakeLLM, FakeLLM]
) -> None:
    a, b = pair
    app = await app_factory(two_endpoints(a, b, model="shared", health_cooling_seconds=300))
    chat = await connect(app)
    await say(chat, "/models")  # discovery done: both offer 'shared'
    assert await say(chat, "one") == "echo: one"
    assert len(a.requests) == 1 and not b.requests  # the first healthy endpoint
    port = a.port
    await a.stop()
    assert await say(chat, "two") == "echo: two"  # a refused (retried), b answered
    assert len(b.requests) == 1
    listing = await say(chat, "/models")
    assert "a (config.yaml)" in listing and "unhealthy, skipped for" in listing
    assert "connection refused" in listing

    await a.start(port)  # back, but still cooling: b keeps the traffic
    assert await say(chat, "three") == "echo: three"
    assert len(a.requests) == 1 and len(b.requests) == 2

    reloaded = await say(chat, "/reload_models")  # a answers /models again: healthy
    assert "3 models on 2 endpoints" in reloaded
    assert await say(chat, "four") == "echo: four"
    assert len(a.requests) == 2
    await chat.close()


async def test_a_model_on_one_endpoint_only_is_never_sent_to_the_other(
    app_factory: AppFactory, pair: tuple[FakeLLM, FakeLLM]
) -> None:
    a, b = pair
    app = await app_factory(two_endpoints(a, b, model="beta"))
    chat = await connect(app)
    await say(chat, "/models")
    b.script(Reply(status=500), Reply(status=500))
    reply = await say(chat, "hi")
    assert "Endpoint 'b'" in reply and "500" in reply
    assert not a.requests  # 'a' does not list beta
    await chat.close()


async def test_ask_parameters_reach_the_request_body(
    app_factory: AppFactory, pair: tuple[FakeLLM, FakeLLM]
) -> None:
    a, b = pair
    app = await app_factory(two_endpoints(a, b))
    chat = await connect(app)
    reply = await say(chat, "/ask beta what is up? max_tokens=50 temp=0.3 top_p=0.9")
    assert reply.startswith("echo: what is up?") and "`beta` via b" in reply
    body = b.requests[-1]
    assert body["model"] == "beta"
    assert body["messages"] == [{"role": "user", "content": "what is up?"}]
    assert (body["max_tokens"], body["temperature"], body["top_p"]) == (50, 0.3, 0.9)

    await say(chat, "/ask 1 temperature=0 plain question")  # by number, parameter first
    # Without max_tokens= the model's own cap goes (llm.max_tokens, 4096 by default).
    assert a.requests[-1]["temperature"] == 0 and a.requests[-1]["max_tokens"] == 4096
    assert a.requests[-1]["messages"][-1]["content"] == "plain question"
    await say(chat, "hello")  # the thread's model is unchanged by /ask
    assert a.requests[-1]["model"] == "alpha"
    await chat.close()


@pytest.mark.parametrize(("command", "error"), [
    ("/ask beta hi max_tokens=0", "max_tokens must be a whole number from 1"),
    ("/ask beta hi max_tokens=12.5", "max_tokens must be a whole number"),
    ("/ask beta hi max_tokens=lots", "max_tokens must be a whole number"),
    ("/ask beta hi temp=2.5", "temp must be a number from 0 to 2"),
    ("/ask beta hi temp=nan", "temp must be a number from 0 to 2"),
    ("/ask beta hi temp=-1", "temp must be a number from 0 to 2"),
    ("/ask beta hi top_p=0", "top_p must be a number above 0 and at most 1"),
    ("/ask beta hi top_p=1.5", "top_p must be a number above 0 and at most 1"),
    ("/ask beta hi temp=1 temp=1", "`temp` is given twice"),
    ("/ask beta hi max_token=5", "did you mean `max_tokens`?"),
    ("/ask beta max_tokens=5", "What should I ask?"),
    ("/ask", "Usage: `/ask <number|name|alias> <prompt>"),
    ("/ask 99 hi", "There is no model number 99"),
    ("/ask gpt-9 hi", "No model or alias `gpt-9`"),
])
async def test_bad_ask_values_are_refused_without_a_request(
    app_factory: AppFactory, pair: tuple[FakeLLM, FakeLLM], command: str, error: str
) -> None:
    a, b = pair
    app = await app_factory(two_endpoints(a, b))
    chat = await connect(app)
    await say(chat, "/models")
    reply = await chat.ask(command)
    assert reply["role"] == "system" and error in reply["text"]
    assert not a.requests and not b.requests
    await chat.close()


def test_parse_ask_keeps_ordinary_equals_signs_in_the_prompt() -> None:
    request = parse_ask("fast is x=5 right?\nthink twice top_p=0.5")
    assert request.model_ref == "fast"
    assert request.prompt == "is x=5 right?\nthink twice"
    assert request.params == {"top_p": 0.5}
    with pytest.raises(InputRejected, match="top_p"):
        parse_ask("fast hi top_p=inf")


async def test_added_endpoint_key_never_in_logs_replies_or_stored_text(
    app_factory: AppFactory, pair: tuple[FakeLLM, FakeLLM], fake_llm_factory: Factory,
    caplog: pytest.LogCaptureFixture, tmp_path: Path,
) -> None:
    a, b = pair
    c = await fake_llm_factory(models=["gamma"])
    config = two_endpoints(a, b, model="alpha")
    config["logging"] = {"debug_llm": True}
    app = await app_factory(config)
    log_file = tmp_path / "ganglion.log"
    handler = logging.FileHandler(log_file)  # as the daemon's file log: behind the mask
    handler.addFilter(app.secret_mask)
    handler.setFormatter(logging.Formatter("%(name)s %(message)s"))
    logging.getLogger().addHandler(handler)
    replies: list[str] = []
    # As ganglion.logs.setup_logging does: libraries stay at INFO even with --debug (aiosqlite
    # would log every SQL parameter, the inbox row of the command included).
    for noisy in ("aiosqlite", "httpx", "httpcore", "openai", "asyncio"):
        caplog.set_level(logging.INFO, logger=noisy)
    try:
        with caplog.at_level(logging.DEBUG):
            chat = await connect(app)
            replies.append(await say(chat, f"/add_endpoint extra {c.base_url} {RUNTIME_KEY}"))
            assert "Added endpoint 'extra'" in replies[-1] and "`gamma`" in replies[-1]
            replies.append(await say(chat, "/ask gamma hello there"))
            assert replies[-1].startswith("echo: hello there")
            assert c.request_headers[-1]["authorization"] == f"Bearer {RUNTIME_KEY}"
            replies.append(await say(chat, f"/add_endpoint extra {c.base_url} {RUNTIME_KEY}"))
            assert "already an endpoint named 'extra'" in replies[-1]
            replies.append(await say(chat, f"/add_endpoint bad/name ftp://x {RUNTIME_KEY}x"))
            assert "Invalid name and URL" in replies[-1]
            replies.append(await say(chat, "/models"))
            assert "extra (added by web)" in replies[-1] and "`gamma` on extra" in replies[-1]
            logging.getLogger("ganglion.test").warning("a stray line with %s", RUNTIME_KEY)
            await chat.close()
            await app.stop()

            fresh_mask = SecretMask()
            again = await app_factory(config, secret_mask=fresh_mask)  # persisted
            record = logging.LogRecord("x", logging.INFO, "", 0, "key=%s", (RUNTIME_KEY,), None)
            fresh_mask.filter(record)
            assert record.getMessage() == "key=***"  # masked again from the moment it loads
            chat = await connect(again)
            replies.append(await say(chat, "/ask gamma again"))
            assert replies[-1].startswith("echo: again")
            replies.append(await say(chat, "/remove_endpoint a"))
            assert "comes from config.yaml" in replies[-1]
            replies.append(await say(chat, "/remove_endpoint extra"))
            assert "Removed endpoint 'extra'" in replies[-1]
            replies.append(await say(chat, "/ask gamma gone?"))
            logging.getLogger("ganglion.test").warning("after restart: %s", RUNTIME_KEY)
            await chat.close()
            stored = await again.db.fetchall("SELECT text FROM inbox")
            messages = await again.db.fetchall("SELECT content FROM messages")
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    assert all(RUNTIME_KEY not in r for r in replies)
    leaked = [r.getMessage() for r in caplog.records
              if RUNTIME_KEY in r.getMessage() and r.name != "ganglion.test"]
    assert leaked == []  # nothing of ours logs the key, masked or not
    text = log_file.read_text()
    assert "a stray line with ***" in text and "after restart: ***" in text
    assert RUNTIME_KEY not in text and "/add_endpoint extra" not in text
    assert any("/add_endpoint extra" in r["text"] and r["text"].endswith("***") for r in stored)
    assert all(RUNTIME_KEY not in r["text"] for r in stored)
    assert all(RUNTIME_KEY not in r["content"] for r in messages)


async def test_add_endpoint_in_matrix_needs_an_encrypted_room_and_redacts(
    app_factory: AppFactory, pair: tuple[FakeLLM, FakeLLM], fake_llm_factory: Factory
) -> None:
    a, b = pair
    c = await fake_llm_factory(models=["gamma"])
    app = await app_factory(two_endpoints(a, b))
    command = f"/add_endpoint extra {c.base_url} {RUNTIME_KEY}"

    reply, msg = await matrix_say(app, command, TRUSTED)
    assert "only in an end-to-end encrypted room" in reply and "rotate" in reply
    assert "could not remove your message" in reply  # no redaction hook is wired here
    assert app.endpoints.get("extra") is None

    redacted: list[tuple[str, str, str]] = []

    async def redact(thread_id: ThreadId, event_id: str, reason: str) -> str:
        redacted.append((thread_id, event_id, reason))
        return ""

    app.model_commands.redact = redact
    reply, msg = await matrix_say(app, command, TRUSTED, meta={"encrypted": "1"})
    assert "Added endpoint 'extra'" in reply and "could not remove" not in reply
    assert redacted == [(ROOM, msg.client_id, "contains an API key")]
    assert RUNTIME_KEY not in reply
    reply, _ = await matrix_say(app, "/remove_endpoint extra", TRUSTED)
    assert "Removed endpoint 'extra'" in reply


async def test_aliases_ignore_case_and_survive_restart_as_does_a_removed_endpoint(
    app_factory: AppFactory, pair: tuple[FakeLLM, FakeLLM], fake_llm_factory: Factory,
) -> None:
    a, b = pair
    c = await fake_llm_factory(models=["gamma"])
    config = two_endpoints(a, b)
    app = await app_factory(config)
    chat = await connect(app)
    assert "`beta` on b" in await say(chat, "/models")  # discovery done
    assert "`Fast`" in await say(chat, "/alias Fast beta")
    await say(chat, "/alias fast shared")  # the same alias, another spelling: replaces it
    await say(chat, "/alias keep alpha")
    await say(chat, f"/add_endpoint extra {c.base_url} {RUNTIME_KEY}")
    assert "Removed endpoint 'extra'" in await say(chat, "/remove_endpoint extra")
    listing = await say(chat, "/aliases")
    assert "shared" in listing and "beta" not in listing, listing
    assert "Removed alias `fast` (it named `shared`)" in await say(chat, "/rm_alias FAST")
    await chat.close()
    await app.stop()

    again = await app_factory(config)
    chat = await connect(again)
    listing = await say(chat, "/aliases")
    assert "`keep`" in listing and "alpha" in listing
    assert "fast" not in listing.lower(), listing  # removed in any case, and stays removed
    assert "extra" not in await say(chat, "/models")  # the removed endpoint stays removed
    assert (await say(chat, "/ask keep hi")).startswith("echo: hi")
    assert a.requests[-1]["model"] == "alpha"
    await chat.close()


async def test_credentials_in_an_endpoint_url_are_never_shown_in_chat(
    app_factory: AppFactory, pair: tuple[FakeLLM, FakeLLM], fake_llm_factory: Factory,
) -> None:
    a, b = pair
    c = await fake_llm_factory(models=["gamma"])
    app = await app_factory(two_endpoints(a, b))
    chat = await connect(app)
    url = c.base_url.replace("http://", "http://proxyuser:Pr0xyPass@")
    replies = [await say(chat, f"/add_endpoint creds {url} {RUNTIME_KEY}"),
               await say(chat, "/models"), await say(chat, "/remove_endpoint creds")]
    assert "Added endpoint 'creds' at http://***@127.0.0.1" in replies[0], replies[0]
    assert "creds (added by web) http://***@127.0.0.1" in replies[1], replies[1]
    assert "Removed endpoint 'creds' (http://***@127.0.0.1" in replies[2], replies[2]
    assert all("Pr0xyPass" not in r and "proxyuser" not in r for r in replies)
    await chat.close()
