"""Bad input, property-based: config documents, WebSocket frames, command lines, tool arguments
from the model and Matrix event contents never crash the daemon; every rejection is clear.

Each property runs a fixed, small number of derandomized examples, so CI is deterministic and
the module stays within a few seconds. Raise ``FUZZ_EXAMPLES`` locally to search harder.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from conftest import LLM_KEY, WEB_TOKEN, AppFactory, base_config
from fake_llm import FakeLLM
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from nio import Event, RoomMessageText
from wsclient import ChatClient

from ganglion.app import App
from ganglion.config import Config, ConfigError, load_config, parse_config
from ganglion.config_matrix import MatrixConfig
from ganglion.interfaces.matrix.interface import MatrixInterface
from ganglion.messages import Inbound, Source, ThreadId, is_web_thread
from ganglion.render import MarkdownRenderer
from ganglion.tools.registry import ToolContext
from ganglion.worker import CRASHED

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "0"))


def fuzz(n: int) -> Any:
    """Settings for one property: ``n`` examples (or $FUZZ_EXAMPLES), derandomized."""
    return settings(
        max_examples=EXAMPLES or n,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                               HealthCheck.data_too_large],
    )


# -- strategies ------------------------------------------------------------------------------

SECTIONS = list(Config.model_fields)
KNOWN_KEYS = sorted({k for s in SECTIONS for k in Config.model_fields[s].annotation.model_fields}
                    | set(SECTIONS) | {"name", "base_url", "api_key"})

texts = st.text(max_size=40) | st.sampled_from(
    ["", "${UNSET_VAR}", "${HOME:-/x}", "on", "127.0.0.1", "0.0.0.0", "http://x", "*",
     "@a:b", "!r:b", "Europe/Berlin", "Mars/Olympus", "DEBUG", "null", "\x00", "\ud800"]
)
scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70)
           | st.floats(allow_nan=True, allow_infinity=True) | texts)
keys = st.sampled_from(KNOWN_KEYS) | st.text(max_size=12)
yaml_like = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(keys | st.integers(0, 3), inner, max_size=4),
    max_leaves=20,
)


def valid_config() -> dict[str, Any]:
    """A complete valid document, every key present (matrix enabled, so it is checked too)."""
    raw: dict[str, Any] = Config().model_dump(mode="json")
    raw["matrix"].update(enabled=True, homeserver="https://matrix.example.org",
                         user_id="@bot:example.org", access_token="syt_secret_token",
                         device_id="DEV", allowed_users=["@me:example.org"],
                         owner="@me:example.org")
    raw["web"]["token"] = WEB_TOKEN
    raw["llm"]["endpoints"][0]["api_key"] = LLM_KEY
    return raw


def paths_of(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += paths_of(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += paths_of(v, (*prefix, i))
    return out


def check_error(err: ConfigError) -> list[str]:
    """It reads 'config error: <key path or file>: what'; no secret is echoed back."""
    text = str(err)
    assert text.startswith("config error: "), text
    lines = [line for line in text.splitlines() if line.startswith("config error: ")]
    named = [line.removeprefix("config error: ").split(": ", 1)[0] for line in lines]
    assert all(n.strip() for n in named), text
    assert "syt_secret_token" not in text and LLM_KEY not in text and WEB_TOKEN not in text
    return named


# -- config ----------------------------------------------------------------------------------


@fuzz(150)
@given(raw=yaml_like | st.dictionaries(st.sampled_from(SECTIONS), yaml_like, max_size=4))
def test_any_document_is_a_config_or_a_config_error_naming_a_key(raw: Any) -> None:
    try:
        config = parse_config(raw, env={"HOME": "/home/x"})
    except ConfigError as err:
        check_error(err)
    else:
        assert isinstance(config, Config)


@fuzz(200)
@given(data=st.data())
@example(data=None)  # the unmutated document is valid
def test_a_mutated_valid_config_names_the_key_it_broke(data: st.DataObject | None) -> None:
    raw = valid_config()
    if data is None:
        assert parse_config(raw, env={}).matrix.enabled
        return
    path = data.draw(st.sampled_from(paths_of(raw)), label="path")
    *parents, last = path
    node = raw
    for p in parents:
        node = node[p]
    action = data.draw(st.sampled_from(["replace", "delete", "add"]), label="action")
    if action == "replace":
        node[last] = data.draw(yaml_like, label="value")
    elif action == "delete" and isinstance(node, dict):
        del node[last]
    elif isinstance(node, dict):
        key = data.draw(st.text(min_size=1, max_size=8), label="new key")
        node[key] = 1
        path = (*parents, key)
    try:
        parse_config(raw, env={})
    except ConfigError as err:
        named = check_error(err)
        # The section of the broken key is named, in the path or in the explanation.
        first = str(path[0]) if re.fullmatch(r"[\w-]+", str(path[0])) else repr(path[0])
        assert any(n.startswith(first) or n == "<top>" for n in named), (path, err)
        assert first in str(err), (path, err)


@fuzz(50)
@given(doc=yaml_like | st.dictionaries(st.sampled_from(SECTIONS), yaml_like, max_size=3),
       text=st.text(max_size=60))
@example(doc=None, text="llm:\n  model: 2024-13-45\n")  # a date YAML cannot build
@example(doc=None, text="a: &x [*x]\n")  # an alias inside itself
@example(doc=None, text="[" * 3000)
@example(doc=None, text="\udcff")  # not UTF-8 once written
def test_any_config_file_loads_or_fails_with_a_config_error(
    tmp_path_factory: pytest.TempPathFactory, doc: Any, text: str
) -> None:
    path = tmp_path_factory.mktemp("cfg") / "config.yaml"
    if doc is not None:
        path.write_text(yaml.safe_dump(doc, allow_unicode=True) + text, encoding="utf-8",
                        errors="surrogateescape")
    else:
        path.write_bytes(text.encode("utf-8", "surrogateescape"))
    try:
        loaded = load_config(str(path), env={})
    except ConfigError as err:
        check_error(err)
    else:
        assert isinstance(loaded.config, Config)


# -- WebSocket frames --------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=4),
    max_leaves=12,
)
send_like = st.fixed_dictionaries(
    {"type": st.sampled_from(["send", "stop", "hello", "Send", ""]) | json_values},
    optional={"id": st.text(max_size=70) | json_values, "text": st.text() | json_values,
              "token": st.just(WEB_TOKEN) | json_values, "thread_id": json_values},
)
frames = (
    json_values.map(json.dumps)
    | send_like.map(json.dumps)
    | st.text(max_size=200)
    | st.binary(max_size=200)
    | st.integers(1, 100).map(lambda n: '{"type": "send", "id": "big", "text": "'
                              + "\\u00e9" * (1000 * n) + '"}')
)


@fuzz(150)
@given(frame=frames)
async def test_any_frame_gets_an_ack_or_a_clear_error_and_the_socket_keeps_working(
    app_factory: AppFactory, fake_llm: FakeLLM, frame: str | bytes
) -> None:
    app = _shared.get("ws") or await app_factory({"web": {"max_message_bytes": 50_000},
                                                  "limits": {"messages_per_minute": None}})
    _shared["ws"] = app
    assert app.web is not None
    client = ChatClient(app.web.url, WEB_TOKEN)
    await client.connect()
    ws = client._ws
    assert ws is not None
    try:
        if isinstance(frame, bytes):
            await ws.send_bytes(frame)
        else:
            await ws.send_str(frame)
        parsed: Any = None
        if isinstance(frame, str):
            with contextlib.suppress(ValueError):
                parsed = json.loads(frame)
        silent = isinstance(parsed, dict) and parsed.get("type") == "stop"
        size = len(frame if isinstance(frame, bytes) else frame.encode("utf-8", "surrogatepass"))
        if size > app.web.config.max_message_bytes * 6 + 4096:
            # Beyond what any message within the limit can encode to: the socket is closed
            # with 1009 (message too big) before the frame is read; a new one works.
            assert (await client.next_event(5))["code"] == 1009
            await client.close()
            client = ChatClient(app.web.url, WEB_TOKEN)
            await client.connect()
        elif not silent:
            answer = await client.next_event(5)
            while answer["type"] in ("pending", "state", "delta", "message", "reset"):
                answer = await client.next_event(5)  # the turn of an accepted frame
            assert answer["type"] in ("ack", "error"), answer
            if answer["type"] == "error":
                assert answer["code"] in ("bad_frame", "too_large"), answer
                assert answer["message"], answer
        # The same socket still works, and the daemon answers.
        ack = await client.send("ping after fuzz")
        assert ack["type"] == "ack", ack
    finally:
        await client.close()


hello_like = st.fixed_dictionaries(
    {"type": st.just("hello") | json_values},
    optional={"token": st.sampled_from([WEB_TOKEN, WEB_TOKEN + "x", WEB_TOKEN[:-1],
                                        WEB_TOKEN.upper(), "", f" {WEB_TOKEN}"]) | json_values,
              "thread_id": st.none() | st.from_regex(r"web_[0-9a-fA-F]{0,70}", fullmatch=True)
              | json_values},
)
first_frames = (
    hello_like.map(json.dumps)
    | frames
    | st.just(WEB_TOKEN)
    | st.just(json.dumps({"type": "send", "token": WEB_TOKEN, "id": "x", "text": "hi"}))
)


def a_valid_hello(frame: str | bytes) -> str | None:
    """What a frame that logs in is answered with: "ready" or "bad_thread_id"; None: refused."""
    try:
        hello = json.loads(frame) if isinstance(frame, str) else None
    except ValueError:
        return None
    if not (isinstance(hello, dict) and hello.get("type") == "hello"
            and hello.get("token") == WEB_TOKEN):
        return None
    tid = hello.get("thread_id")
    return "ready" if tid is None or (isinstance(tid, str) and is_web_thread(tid)) else (
        "bad_thread_id")


@fuzz(120)
@given(frame=first_frames)
@example(frame=json.dumps({"type": "hello", "token": WEB_TOKEN, "thread_id": "web_" + "a" * 32}))
@example(frame=json.dumps({"type": "hello", "token": WEB_TOKEN, "thread_id": ["web_"]}))
@example(frame=json.dumps({"type": "hello", "token": {"$ne": None}}))
@example(frame=b"\x00" * 8)
async def test_any_first_frame_but_a_valid_hello_is_refused_and_the_daemon_keeps_serving(
    app_factory: AppFactory, frame: str | bytes
) -> None:
    app = _shared.get("hello") or await app_factory({"limits": {"messages_per_minute": None}})
    _shared["hello"] = app
    assert app.web is not None
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(f"{app.web.url}/ws", origin=app.web.url)
        if isinstance(frame, bytes):
            await ws.send_bytes(frame)
        else:
            await ws.send_str(frame)
        answers = []
        while True:  # what comes back, up to the close
            msg = await ws.receive(timeout=10)
            if msg.type is not aiohttp.WSMsgType.TEXT:
                break
            answers.append(json.loads(msg.data))
            if answers[-1]["type"] == "ready":
                break
        outcome = a_valid_hello(frame)
        size = len(frame if isinstance(frame, bytes) else frame.encode("utf-8", "surrogatepass"))
        if outcome == "ready":
            assert [a["type"] for a in answers] == ["ready"], answers
        elif size > app.web.config.max_message_bytes * 6 + 4096:
            assert ws.close_code == 1009, (ws.close_code, answers)  # too big to read at all
        elif outcome == "bad_thread_id":
            assert [a.get("code") for a in answers] == ["bad_thread_id"], answers
            assert ws.close_code == 4400
        else:
            assert [a.get("code") for a in answers] == ["unauthorized"], answers
            assert "login link" in answers[0]["message"]
            assert ws.close_code == 4401, ws.close_code
        await ws.close()
    # The daemon keeps serving, and a refusal left no slow-down behind once a login succeeds.
    client = ChatClient(app.web.url, WEB_TOKEN)
    await client.connect()
    try:
        assert (await client.send("after the first frame"))["type"] == "ack"
    finally:
        await client.close()


_shared: dict[str, App] = {}
"""One App per property across its examples (reset by the autouse fixture below)."""


@pytest.fixture(autouse=True)
def _fresh_shared() -> Any:
    _shared.clear()
    yield
    _shared.clear()


# -- command lines ---------------------------------------------------------------------------

MODEL_COMMANDS = {"ask", "compact", "heartbeat"}
"""The commands whose job is to call the model (``/heartbeat`` reviews the thread now)."""


@fuzz(80)
@given(data=st.data())
async def test_any_command_line_gets_a_reply_and_never_reaches_the_model(
    app_factory: AppFactory, fake_llm: FakeLLM, data: st.DataObject
) -> None:
    app = _shared.get("cmd") or await app_factory({"limits": {"messages_per_minute": None}})
    _shared["cmd"] = app
    names = [n for n in app.commands._commands if n not in MODEL_COMMANDS]
    name = data.draw(st.sampled_from(names) | st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,12}",
                                                           fullmatch=True), label="name")
    assume(name.lower() not in MODEL_COMMANDS)
    args = data.draw(st.text(max_size=80) | st.sampled_from(
        ["1", "default", "fake-model", "0", "-1", "99999999999999999999", "a b c", "`x`",
         "x http://127.0.0.1:1/v1 key", "@someone:example.org"]), label="args")
    prefix = data.draw(st.sampled_from("/!"), label="prefix")
    text = f"{prefix}{name} {args}".strip()
    sender, source = data.draw(st.sampled_from(
        [("web", Source.WEB), ("@stranger:example.org", Source.MATRIX)]), label="sender")
    tid = ThreadId(f"web_{secrets.token_hex(16)}" if source is Source.WEB else "!fuzz:example.org")
    before = len(fake_llm.requests)
    stored, _ = await app.bus.submit(Inbound(tid, text, sender=sender, source=source,
                                             client_id=secrets.token_hex(8)))
    await app.bus.wait_idle()
    # Immediate commands (/approve) run beside the bus; their inbox row is what shows the end.
    async with asyncio.timeout(5):
        while not await app.db.fetchall(  # noqa: ASYNC110
                "SELECT 1 FROM inbox WHERE id = ? AND status = 'done'", (stored.id,)):
            await asyncio.sleep(0.005)
    replies = await app.db.fetchall(
        "SELECT role, content FROM messages WHERE thread_id = ? ORDER BY id DESC LIMIT 1",
        (tid,))
    assert replies and replies[0]["content"].strip(), text
    # A command that raised is a bug, however politely the notice words it.
    assert not replies[0]["content"].startswith(CRASHED.split("(")[0]), (text, replies[0][1])
    assert len(fake_llm.requests) == before, text


# -- tool arguments from the model -----------------------------------------------------------

EXECUTING = {"shell", "web_fetch"}
"""Tools that would run (or fetch) what the arguments say; fuzzed with ill-typed arguments
only."""


@fuzz(150)
@given(data=st.data())
async def test_any_tool_arguments_give_a_result_string(
    app_factory: AppFactory, data: st.DataObject
) -> None:
    app = _shared.get("tools") or await app_factory()
    _shared["tools"] = app
    names = app.tools.names()
    name = data.draw(st.sampled_from(names) | st.text(max_size=10), label="tool")
    tool = app.tools._tools.get(name)
    params = (list(tool.parameters["properties"]) if tool else []) or ["path"]
    paths = st.sampled_from(["notes.txt", "../x", "/etc/passwd", "a/../../b", "web_token",
                             "conversation.db", "", ".", "~", "MEMORIES.txt", "x" * 300])
    values = json_values | paths | st.text(max_size=30)
    if name in EXECUTING:
        values = st.integers() | st.none() | st.lists(st.integers(), max_size=2) | st.booleans()
    args = data.draw(
        st.dictionaries(st.sampled_from(params) | st.text(max_size=6), values, max_size=4)
        .map(json.dumps)
        | (st.text(max_size=60) if name not in EXECUTING else st.just("{"))
        | json_values.filter(lambda v: not (isinstance(v, dict) and name in EXECUTING))
        .map(json.dumps),
        label="arguments")
    outcome = await app.tools.call(name, args, ToolContext(ThreadId("web_" + "0" * 32), "web"))
    assert isinstance(outcome.text, str)
    if not outcome.ok:
        assert outcome.text.startswith("error: "), outcome.text
        assert "the tool failed" not in outcome.text, outcome.text  # a tool bug, not input
    assert WEB_TOKEN not in outcome.text


# -- Matrix event contents -------------------------------------------------------------------

content_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                 max_size=3),
    max_leaves=10,
)
contents = st.fixed_dictionaries(
    {},
    optional={
        "msgtype": st.sampled_from(["m.text", "m.notice", "m.emote", "m.image"]) | content_values,
        "body": st.text(max_size=60) | content_values,
        "format": st.just("org.matrix.custom.html") | content_values,
        "formatted_body": st.text(max_size=40) | content_values,
        "m.relates_to": st.fixed_dictionaries({}, optional={
            "rel_type": st.sampled_from(["m.replace", "m.thread", "m.annotation"])
            | content_values,
            "event_id": content_values,
            "m.in_reply_to": content_values,
        }) | content_values,
        "m.new_content": content_values,
    },
) | st.dictionaries(st.text(max_size=10), content_values, max_size=4)


@fuzz(200)
@given(content=contents, sender=st.sampled_from(["@me:example.org", "@stranger:example.org",
                                                 "@bot:example.org"]))
@example(content={"msgtype": "m.text", "body": "hi", "m.relates_to": "not an object"},
         sender="@me:example.org")
@example(content={"msgtype": "m.text", "body": "> q\n\nhi", "m.relates_to": {
    "m.in_reply_to": "x"}}, sender="@me:example.org")
async def test_any_matrix_message_content_is_translated_or_dropped(
    app_factory: AppFactory, tmp_path: Path, content: dict[str, Any], sender: str
) -> None:
    app = _shared.get("matrix") or await app_factory({"web": {"enabled": False},
                                                      "limits": {"messages_per_minute": None}})
    _shared["matrix"] = app
    matrix = MatrixInterface(
        MatrixConfig(user_id="@bot:example.org", allowed_users=["@me:example.org"]),
        tmp_path / "store", app.bus, app.router, MarkdownRenderer())
    event_id = f"$fuzz{secrets.token_hex(8)}"
    event = Event.parse_event({
        "type": "m.room.message", "event_id": event_id, "sender": sender,
        "origin_server_ts": 1_700_000_000_000, "content": content,
    })
    before = await app.db.fetchall("SELECT id FROM inbox WHERE client_id = ?", (event_id,))
    await matrix._on_timeline_event("!fuzz:example.org", event, 0.0)
    after = await app.db.fetchall("SELECT text FROM inbox WHERE client_id = ?", (event_id,))
    assert before == []
    if after:  # only a text message of an allowed user, and never an edit, reaches the bus
        assert isinstance(event, RoomMessageText) and sender == "@me:example.org"
        assert isinstance(after[0]["text"], str)
    await app.bus.wait_idle()


def test_the_base_config_of_the_tests_is_valid(tmp_path: Path) -> None:
    class _Fake:
        base_url = "http://127.0.0.1:1/v1"

    parse_config(base_config(tmp_path, _Fake()), env={})  # type: ignore[arg-type]


async def test_a_plain_socket_session_still_works_after_garbage(
    app_factory: AppFactory
) -> None:
    """The daemon answers a new connection after one was fed a pile of junk and dropped."""
    app = await app_factory()
    assert app.web is not None
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(f"{app.web.url}/ws", origin=app.web.url)
        await ws.send_json({"type": "hello", "token": WEB_TOKEN, "thread_id": None})
        assert (await ws.receive_json(timeout=5))["type"] == "ready"
        for junk in ("{", "[]", "\x00" * 10, '{"type": "send", "id": 1}'):
            await ws.send_str(junk)
        await ws.send_bytes(b"\xff" * 100)
        await ws.close()
    client = ChatClient(app.web.url, WEB_TOKEN)
    await client.connect()
    try:
        assert (await client.ask("still there?"))["text"] == "echo: still there?"
    finally:
        await client.close()
