"""The web interface over real sockets: page, headers, login, Origin and Host, the protocol."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from conftest import WEB_TOKEN, AppFactory, eventually, eventually_async
from fake_llm import FakeLLM, Reply
from wsclient import RawTab

import ganglion.interfaces.web_login as web_module
from ganglion.app import App
from ganglion.interfaces import web_tab
from ganglion.interfaces.web import WebInterface
from ganglion.interfaces.web_guard import SECURITY_HEADERS
from ganglion.messages import Outbound, OutKind, Role, ThreadId
from ganglion.render import MarkdownRenderer
from ganglion.storage.history import History, NewMessage, StoredMessage

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data: blob:; media-src blob:; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)


def new_thread() -> str:
    return f"web_{secrets.token_hex(16)}"


def web_of(app: App) -> WebInterface:
    assert app.web is not None
    return app.web


class Tab:
    """A raw WebSocket speaking the protocol, frame by frame."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws

    async def hello(self, token: str | None = WEB_TOKEN, thread_id: str | None = None) -> None:
        await self.ws.send_json({"type": "hello", "token": token, "thread_id": thread_id})

    async def frame(self, timeout: float = 10) -> dict[str, Any]:
        msg = await self.ws.receive(timeout=timeout)
        if msg.type is aiohttp.WSMsgType.CLOSE:
            return {"type": "_closed", "code": msg.data}  # the code the server sent
        if msg.type is not aiohttp.WSMsgType.TEXT:
            return {"type": "_closed", "code": self.ws.close_code}
        frame: dict[str, Any] = json.loads(msg.data)
        return frame

    async def until(self, pred: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        while True:
            frame = await self.frame()
            assert frame["type"] != "_closed", frame
            if pred(frame):
                return frame

    async def send(self, text: str, cid: str | None = None) -> dict[str, Any]:
        """A send frame; returns its ack or error."""
        cid = cid or secrets.token_hex(8)
        await self.ws.send_json({"type": "send", "id": cid, "text": text})
        return await self.until(lambda f: f["type"] in ("ack", "error") and f.get("id") == cid)

    async def reply(self) -> dict[str, Any]:
        return await self.until(
            lambda f: f["type"] == "message" and f["role"] in ("assistant", "system")
        )


@pytest_asyncio.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


@pytest_asyncio.fixture
async def app(app_factory: AppFactory) -> App:
    return await app_factory()


async def open_tab(
    session: aiohttp.ClientSession, app: App, *, origin: str | None = "own",
    headers: dict[str, str] | None = None,
) -> Tab:
    url = web_of(app).url
    ws = await session.ws_connect(
        f"{url}/ws", origin=url if origin == "own" else origin, headers=headers
    )
    return Tab(ws)


async def ready_tab(
    session: aiohttp.ClientSession, app: App, thread_id: str | None = None
) -> tuple[Tab, dict[str, Any]]:
    tab = await open_tab(session, app)
    await tab.hello(thread_id=thread_id)
    ready = await tab.frame()
    assert ready["type"] == "ready", ready
    return tab, ready


async def inbox_rows(app: App, thread_id: str) -> list[tuple[str, str, str]]:
    rows = await app.db.fetchall(
        "SELECT client_id, text, status FROM inbox WHERE thread_id = ? ORDER BY id", (thread_id,)
    )
    return [(r["client_id"], r["text"], r["status"]) for r in rows]


# -- HTTP ----------------------------------------------------------------------------------


async def test_page_is_served_with_csp_and_no_external_assets(
    app: App, session: aiohttp.ClientSession
) -> None:
    url = web_of(app).url
    async with session.get(f"{url}/") as r:
        assert r.status == 200
        assert r.headers["Content-Type"].startswith("text/html")
        assert r.headers["Content-Security-Policy"] == CSP
        assert r.headers["X-Content-Type-Options"] == "nosniff"
        assert r.headers["Referrer-Policy"] == "no-referrer"
        page = await r.text()
    # Every script is an external file of ours; no inline script, style or event handler.
    for attrs, body in re.findall(r"<script([^>]*)>(.*?)</script>", page, re.S):
        assert body.strip() == "" and 'src="/static/' in attrs
    assert "<style" not in page and " style=" not in page
    assert not re.search(r"\son[a-z]+\s*=", page)
    refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)["']""", page)
    assert refs and all(ref.startswith("/static/") or ref == "data:," for ref in refs), refs
    assert "http:" not in page and "https:" not in page and "//" not in page.replace("://", "")
    for name, kind in (("app.js", "text/javascript"), ("view.js", "text/javascript"),
                       ("app.css", "text/css")):
        async with session.get(f"{url}/static/{name}") as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith(kind)
            assert r.headers["Content-Security-Policy"] == CSP
            text = await r.text()
        assert "http://" not in text and "https://" not in text and "@import" not in text
    for name in ("app.js", "view.js"):
        async with session.get(f"{url}/static/{name}") as r:
            script = await r.text()
        assert "eval(" not in script and "new Function" not in script
    for path in ("/static/nope.js", "/static/..%2Fweb.py", "/static/%2e%2e/web.py", "/app.js"):
        async with session.get(f"{url}{path}") as r:
            assert r.status == 404, path


async def test_the_app_masks_the_web_token_it_generated(app_factory: AppFactory) -> None:
    """Generated into data/web_token at start: the App's log mask knows it from then on."""
    app = await app_factory({"web": {"token": ""}})
    token = (app.data_dir / "web_token").read_text().strip()
    assert len(token) >= 32 and web_of(app).login_url.endswith(token)
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "token %s", (token,), None)
    app.secret_mask.filter(record)
    assert record.getMessage() == "token ***"


async def test_healthz_and_addresses(app: App, session: aiohttp.ClientSession) -> None:
    web = web_of(app)
    assert web.port > 0 and web.url == f"http://127.0.0.1:{web.port}"
    assert web.login_url == f"{web.url}/#token={WEB_TOKEN}"
    async with session.get(f"{web.url}/healthz") as r:
        assert r.status == 200 and await r.text() == "ok"
        assert r.headers["X-Content-Type-Options"] == SECURITY_HEADERS["X-Content-Type-Options"]


# -- login -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "hello",
    [
        {"type": "hello", "thread_id": None},
        {"type": "hello", "token": "wrong-token-123", "thread_id": None},
        {"type": "hello", "token": 12345, "thread_id": None},
        {"type": "send", "id": "x", "text": "let me in"},
        "not json at all",
    ],
    ids=["missing", "wrong", "not-a-string", "not-a-hello", "not-json"],
)
async def test_a_socket_without_the_right_token_is_closed_4401(
    app: App, session: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture, hello: Any
) -> None:
    caplog.set_level(logging.DEBUG)
    tab = await open_tab(session, app)
    if isinstance(hello, str):
        await tab.ws.send_str(hello)
    else:
        await tab.ws.send_json(hello)
    error = await tab.frame()
    assert error["type"] == "error" and error["code"] == "unauthorized" and error["message"]
    closed = await tab.frame()
    assert closed == {"type": "_closed", "code": 4401}
    assert "refused a WebSocket" in caplog.text
    assert WEB_TOKEN not in caplog.text and "wrong-token-123" not in caplog.text


async def test_a_socket_that_never_says_hello_is_closed_4401(
    app: App, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(web_module, "HELLO_TIMEOUT", 0.2)
    tab = await open_tab(session, app)
    assert (await tab.frame())["code"] == "unauthorized"
    assert await tab.frame() == {"type": "_closed", "code": 4401}


async def test_hello_thread_ids(app: App, session: aiohttp.ClientSession) -> None:
    _, ready = await ready_tab(session, app, None)
    assert re.fullmatch(r"web_[0-9a-f]{32}", ready["thread_id"])
    assert ready["transcript"] == [] and ready["pending"] == []
    assert ready["streaming"] is None and ready["state"] == "idle"
    for bad in ("!room:example.org", "web_XYZ", "web_" + "a" * 65, "web_abc", 42):
        tab = await open_tab(session, app)
        await tab.hello(thread_id=bad)  # type: ignore[arg-type]
        error = await tab.frame()
        assert error["type"] == "error" and error["code"] == "bad_thread_id"
        assert await tab.frame() == {"type": "_closed", "code": 4400}


# -- Origin and Host -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "origin", ["http://evil.example", "null", "http://127.0.0.1:1", "https://127.0.0.1"]
)
async def test_a_foreign_origin_is_refused_before_the_upgrade(
    app: App, session: aiohttp.ClientSession, origin: str
) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await open_tab(session, app, origin=origin)
    assert refused.value.status == 403


async def test_own_origin_no_origin_and_allowed_origins_are_accepted(
    app_factory: AppFactory, session: aiohttp.ClientSession
) -> None:
    app = await app_factory({"web": {"allowed_origins": ["https://chat.example.org"]}})
    web = web_of(app)
    localhost = {"Host": f"localhost:{web.port}"}
    for origin, headers in [
        (web.url, None),
        (f"http://localhost:{web.port}", localhost),  # the page opened as http://localhost
        (None, None),  # not a browser: only the token counts
        ("https://chat.example.org", None),
    ]:
        tab = await open_tab(session, app, origin=origin, headers=headers)
        await tab.hello()
        assert (await tab.frame())["type"] == "ready", origin


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8080", "10.0.0.1", "[::2]:80"])
async def test_a_foreign_host_is_refused_on_loopback(
    app: App, session: aiohttp.ClientSession, host: str
) -> None:
    """DNS rebinding: a page of evil.example resolving to 127.0.0.1 is same-origin with itself."""
    url = web_of(app).url
    for path in ("/", "/healthz", "/static/app.js"):
        async with session.get(f"{url}{path}", headers={"Host": host}) as r:
            assert r.status == 403, path
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await open_tab(session, app, origin=f"http://{host}", headers={"Host": host})
    assert refused.value.status == 403


# -- the protocol ------------------------------------------------------------------------------


async def test_send_is_acked_after_it_is_stored_then_answered(
    app: App, session: aiohttp.ClientSession, fake_llm: FakeLLM
) -> None:
    fake_llm.script(Reply(text="Hello **there**", delay=0.3))
    tid = new_thread()
    tab, _ = await ready_tab(session, app, tid)
    ack = await tab.send("hi", cid="c-1")
    assert ack == {"type": "ack", "id": "c-1", "duplicate": False}
    assert await inbox_rows(app, tid) == [("c-1", "hi", "pending")]  # stored before the ack
    reply = await tab.reply()
    assert reply["role"] == "assistant" and reply["text"] == "Hello **there**"
    assert reply["html"] == "<p>Hello <strong>there</strong></p>"
    assert reply["reply_to"] > 0 and reply["id"] > 0
    assert (await tab.until(lambda f: f["type"] == "state"))["state"] == "idle"
    assert await inbox_rows(app, tid) == [("c-1", "hi", "done")]


async def test_a_resend_with_the_same_id_is_acked_as_duplicate_and_answered_once(
    app: App, session: aiohttp.ClientSession, fake_llm: FakeLLM
) -> None:
    fake_llm.script(Reply(text="only once", delay=0.2))
    tid = new_thread()
    tab, _ = await ready_tab(session, app, tid)
    assert (await tab.send("question", cid="same"))["duplicate"] is False
    assert (await tab.send("question", cid="same"))["duplicate"] is True
    assert (await tab.reply())["text"] == "only once"
    # After a reconnect (the ack was lost), the resend is still a duplicate.
    await tab.ws.close()
    tab, _ = await ready_tab(session, app, tid)
    assert (await tab.send("question", cid="same"))["duplicate"] is True
    await app.bus.wait_idle()
    assert len(fake_llm.requests) == 1
    assert await inbox_rows(app, tid) == [("same", "question", "done")]


async def test_an_oversized_message_is_refused_and_nothing_is_stored(
    app: App, session: aiohttp.ClientSession
) -> None:
    tid = new_thread()
    tab, ready = await ready_tab(session, app, tid)
    assert ready["max_message_bytes"] == 64_000
    error = await tab.send("x" * 70_000, cid="big")
    assert error == {
        "type": "error", "id": "big", "code": "too_large",
        "message": "Message is 70,000 bytes; the limit is 64,000 (web.max_message_bytes).",
    }
    error = await tab.send("é" * 32_001, cid="big2")  # 64,002 UTF-8 bytes
    assert error["code"] == "too_large" and "64,002 bytes" in error["message"]
    assert await inbox_rows(app, tid) == []
    # Exactly at the limit, even when JSON escaping makes the frame much larger, it goes through.
    assert (await tab.send("\n" * 63_999 + "x", cid="edge"))["type"] == "ack"
    assert [r[0] for r in await inbox_rows(app, tid)] == ["edge"]


BAD_FRAMES: list[tuple[str | bytes, str]] = [
    ("this is not json", "not valid JSON"),
    ("[1, 2, 3]", "JSON object"),
    ('"hello"', "JSON object"),
    ('{"text": "no type"}', "unknown frame type"),
    ('{"type": "explode"}', "unknown frame type"),
    ('{"type": ["send"]}', "unknown frame type"),
    (b"\x00\x01binary", "binary"),
    ('{"type": "send"}', '"id"'),
    ('{"type": "send", "id": "m1"}', '"text"'),
    ('{"type": "send", "id": 5, "text": "x"}', '"id"'),
    ('{"type": "send", "id": "", "text": "x"}', '"id"'),
    ('{"type": "send", "id": "' + "a" * 65 + '", "text": "x"}', '"id"'),
    ('{"type": "send", "id": "has space", "text": "x"}', '"id"'),
    ('{"type": "send", "id": "m2", "text": 42}', '"text"'),
    ('{"type": "send", "id": "m3", "text": ""}', '"text"'),
    ('{"type": "send", "id": "m4", "text": "  \\n "}', '"text"'),
    ('{"type": "send", "id": "m5", "text": "\\ud800"}', "Unicode"),
    ('{"type": "hello", "token": "x", "thread_id": null}', "already"),
    ("[" * 100_000 + "]" * 100_000, "not valid JSON"),
]


async def test_malformed_frames_get_bad_frame_and_the_socket_keeps_working(
    app: App, session: aiohttp.ClientSession
) -> None:
    tid = new_thread()
    tab, _ = await ready_tab(session, app, tid)
    for data, reason in BAD_FRAMES:
        if isinstance(data, bytes):
            await tab.ws.send_bytes(data)
        else:
            await tab.ws.send_str(data)
        error = await tab.frame()
        assert error["type"] == "error" and error["code"] == "bad_frame", (data, error)
        assert reason in error["message"], (data, error)
    assert await inbox_rows(app, tid) == []
    assert (await tab.send("still here", cid="ok"))["type"] == "ack"
    assert (await tab.reply())["text"] == "echo: still here"


async def test_a_reconnecting_tab_gets_the_transcript(
    app: App, session: aiohttp.ClientSession, fake_llm: FakeLLM
) -> None:
    fake_llm.script(Reply(text="# Title\n\n<b>bold?</b>"))
    tid = new_thread()
    tab, _ = await ready_tab(session, app, tid)
    await tab.send("first <i>question</i>")
    first = await tab.reply()
    await tab.until(lambda f: f == {"type": "state", "state": "idle"})
    await tab.ws.close()
    _, ready = await ready_tab(session, app, tid)
    assert ready["thread_id"] == tid and ready["state"] == "idle" and ready["pending"] == []
    roles = [(m["role"], m["text"]) for m in ready["transcript"]]
    assert roles == [("user", "first <i>question</i>"), ("assistant", "# Title\n\n<b>bold?</b>")]
    user, answer = ready["transcript"]
    assert user["html"] == "first &lt;i&gt;question&lt;/i&gt;"
    assert answer["id"] == first["id"]
    assert answer["html"] == "<h1>Title</h1>\n<p>&lt;b&gt;bold?&lt;/b&gt;</p>"


async def test_the_transcript_maps_roles_and_leaves_out_internal_rows(
    app: App, session: aiohttp.ClientSession
) -> None:
    tid = ThreadId(new_thread())
    call = [{"id": "c1", "type": "function", "function": {"name": "lookup", "arguments": "{}"}}]
    await app.history.finish_turn(tid, None, [
        NewMessage("user", "look it up"),
        NewMessage("assistant", "", tool_calls=call),  # a step that only called a tool
        NewMessage("tool", "found <it>", tool_call_id="c1", name="lookup"),
        NewMessage("summary", "an old summary"),
        NewMessage("assistant", "It is *here*."),
        NewMessage("notice", "Context **compacted**.", in_context=False),
    ])
    _, ready = await ready_tab(session, app, tid)
    assert [(m["role"], m["text"], m["html"]) for m in ready["transcript"]] == [
        ("user", "look it up", "look it up"),
        ("tool", "found <it>", "found &lt;it&gt;"),
        ("assistant", "It is *here*.", "<p>It is <em>here</em>.</p>"),
        ("system", "Context **compacted**.", "<p>Context <strong>compacted</strong>.</p>"),
    ]
    assert ready["transcript"][1]["name"] == "lookup"
    ids = [m["id"] for m in ready["transcript"]]
    assert ids == sorted(ids) and all(isinstance(i, int) for i in ids)


async def test_an_answer_finished_while_no_tab_was_connected_arrives_on_reconnect(
    app: App, session: aiohttp.ClientSession, fake_llm: FakeLLM
) -> None:
    fake_llm.script(Reply(text="answered in your absence", delay=0.3))
    tid = ThreadId(new_thread())
    tab, _ = await ready_tab(session, app, tid)
    await tab.send("are you there?")
    await tab.ws.close()
    await app.bus.wait_idle()
    assert [m.content for _, m in await app.outbox.pending(tid)] == ["answered in your absence"]
    tab, ready = await ready_tab(session, app, tid)
    assert [m["text"] for m in ready["transcript"]][-1] == "answered in your absence"
    message = await tab.reply()  # also delivered from the outbox (the page dedupes by id)
    assert message["id"] == ready["transcript"][-1]["id"]

    async def delivered() -> bool:  # marked so right after the frame went out
        return await app.outbox.pending(tid) == []

    await eventually_async(delivered)


async def test_a_tab_joining_mid_answer_gets_the_partial_text_then_the_rest(
    app: App, session: aiohttp.ClientSession, fake_llm: FakeLLM
) -> None:
    text = "one two three four five six seven eight"
    fake_llm.script(Reply(text=text, chunk_delay=0.1))
    tid = new_thread()
    first, _ = await ready_tab(session, app, tid)
    await first.send("count")
    await first.until(lambda f: f["type"] == "delta")
    await first.until(lambda f: f["type"] == "delta")
    second, ready = await ready_tab(session, app, tid)
    assert ready["state"] == "streaming"
    assert ready["streaming"] and text.startswith(ready["streaming"]) and ready["streaming"] != text
    assert [m["role"] for m in ready["transcript"]] == ["user"]
    streamed = ready["streaming"]
    while True:
        frame = await second.frame()
        if frame["type"] == "delta":
            streamed += frame["text"]
        elif frame["type"] == "message":
            break
    assert streamed == text == frame["text"]
    await second.ws.close()
    # Once the answer is final, a new tab sees no partial text.
    _, ready = await ready_tab(session, app, tid)
    assert ready["streaming"] is None and ready["transcript"][-1]["text"] == text


class GatedHistory(History):
    """A History whose transcript read waits until the test opens the gate."""

    def __init__(self, history: History) -> None:
        super().__init__(history.db)
        self.reading = asyncio.Event()
        self.gate = asyncio.Event()

    async def transcript(self, thread_id: ThreadId, limit: int = 500) -> list[StoredMessage]:
        self.reading.set()
        await self.gate.wait()
        return await super().transcript(thread_id, limit)


async def test_a_delta_published_while_a_tab_joins_reaches_it_exactly_once(
    app_factory: AppFactory, session: aiohttp.ClientSession
) -> None:
    """The race behind a tab joining mid-answer: a delta arrives while ``ready`` is being
    built (the transcript is read). The tab's text must be the answer, nothing twice."""
    app = await app_factory({"web": {"enabled": False}})
    history = GatedHistory(app.history)
    web = WebInterface(app.config.web, WEB_TOKEN, app.bus, app.router, history, app.inbox,
                       MarkdownRenderer())
    app.router.register(web)
    await web.start()
    try:
        tid = ThreadId(new_thread())
        await app.router.publish(Outbound(tid, OutKind.STATE, "streaming"))
        await app.router.publish(Outbound(tid, OutKind.DELTA, "one "))
        ws = await session.ws_connect(f"{web.url}/ws", origin=web.url)
        tab = Tab(ws)
        await tab.hello(thread_id=tid)
        await asyncio.wait_for(history.reading.wait(), 10)  # the tab is being joined
        during = asyncio.create_task(app.router.publish(Outbound(tid, OutKind.DELTA, "two ")))
        await asyncio.sleep(0)  # the task has run: the delta is in, its frame waits on the tab
        history.gate.set()
        ready = await tab.frame()
        assert ready["type"] == "ready" and ready["state"] == "streaming"
        await during
        await app.router.publish(Outbound(tid, OutKind.DELTA, "three"))
        await web.send(Outbound(tid, OutKind.MESSAGE, "one two three", role=Role.ASSISTANT,
                                message_id=1))
        shown = ready["streaming"]
        while (frame := await tab.frame())["type"] == "delta":
            shown += frame["text"]
        assert frame["type"] == "message"
        assert shown == "one two three" == frame["text"], ready
    finally:
        await web.stop()


async def test_pending_questions_stop_and_tabs_sharing_a_thread(
    app: App, session: aiohttp.ClientSession, fake_llm: FakeLLM
) -> None:
    fake_llm.script(Reply(hang=True), Reply(text="second answer"))
    tid = new_thread()
    a, _ = await ready_tab(session, app, tid)
    b, _ = await ready_tab(session, app, tid)
    await a.send("first", cid="q1")
    assert await b.until(lambda f: f["type"] == "pending") == {
        "type": "pending", "id": "q1", "text": "first"}
    await a.until(lambda f: f.get("state") == "thinking")
    await a.send("second", cid="q2")
    # A reload now: the running question is in the transcript, the queued one is pending.
    c, ready = await ready_tab(session, app, tid)
    assert [m["text"] for m in ready["transcript"]] == ["first"]
    assert ready["pending"] == [{"id": "q2", "text": "second"}]
    assert ready["state"] == "thinking"
    await c.ws.send_json({"type": "stop"})
    for tab in (a, b, c):
        assert (await tab.reply())["text"] == "Stopped."
        assert (await tab.reply())["text"] == "second answer"


async def test_the_other_tabs_never_see_an_add_endpoint_key(
    app: App, session: aiohttp.ClientSession, fake_llm: FakeLLM
) -> None:
    """Shown to the thread's other tabs (and to a reload, while it waits) as it is stored."""
    key = "sk-tab-echo-" + secrets.token_hex(8)
    fake_llm.script(Reply(hang=True))  # the command waits behind a running turn
    tid = new_thread()
    a, _ = await ready_tab(session, app, tid)
    b, _ = await ready_tab(session, app, tid)
    await a.send("hold the thread", cid="q1")
    await a.until(lambda f: f.get("state") == "thinking")
    await a.send(f"/add_endpoint extra {fake_llm.base_url} {key}", cid="q2")
    masked = f"/add_endpoint extra {fake_llm.base_url} ***"
    seen: list[dict[str, Any]] = []  # every frame the other tab gets

    async def other_tab_until(pred: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        return await b.until(lambda f: bool(seen.append(f)) or pred(f))

    assert (await other_tab_until(lambda f: f["type"] == "pending" and f["id"] == "q2")
            )["text"] == masked
    c, ready = await ready_tab(session, app, tid)  # a reload while it waits
    assert ready["pending"] == [{"id": "q2", "text": masked}]
    await c.ws.send_json({"type": "stop"})
    await other_tab_until(lambda f: f["type"] == "message" and "Added endpoint" in f["text"])
    _, reloaded = await ready_tab(session, app, tid)  # and a reload once it ran
    assert key not in json.dumps([seen, ready, reloaded])
    assert any(text == masked for _, text, _ in await inbox_rows(app, tid))


async def test_stop_closes_sockets_with_1001_quickly(
    app: App, session: aiohttp.ClientSession
) -> None:
    tabs = [(await ready_tab(session, app))[0] for _ in range(3)]
    started = time.monotonic()
    await web_of(app).stop()
    assert time.monotonic() - started < 0.5
    for tab in tabs:
        assert await tab.frame() == {"type": "_closed", "code": 1001}
    with pytest.raises(aiohttp.ClientConnectionError):
        await session.get(f"{web_of(app).url}/healthz")


async def test_many_tabs_at_once(app: App, session: aiohttp.ClientSession) -> None:
    tabs = [(await ready_tab(session, app))[0] for _ in range(20)]
    acks = await asyncio.gather(*(t.send(f"n{i}") for i, t in enumerate(tabs)))
    assert all(a["type"] == "ack" for a in acks)
    replies = await asyncio.gather(*(t.reply() for t in tabs))
    assert [r["text"] for r in replies] == [f"echo: n{i}" for i in range(20)]


async def test_a_slow_tab_is_closed_and_never_holds_the_stream(
    app: App, fake_llm: FakeLLM, session: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two tabs of one thread; one stops reading its socket (a small receive buffer, so the
    server's writes to it fill every buffer). A long streamed answer reaches the other tab
    in full and the turn ends before the slow one has read a byte; the slow tab is closed,
    and on reconnect it gets the answer."""
    web = web_of(app)
    tid = new_thread()
    fast = await big_tab(session, app)
    await fast.hello(thread_id=tid)
    assert (await fast.frame())["type"] == "ready"
    slow = await RawTab.connect(web.url, WEB_TOKEN, tid)
    await eventually(lambda: len(web._tabs.get(ThreadId(tid), ())) == 2)  # both joined
    # More than every buffer on the way to the slow tab holds: the kernel's largest send
    # buffer, aiohttp's, and the tab's queue; in deltas of 2 kB.
    size = send_buffer_max() + 2**16 + web_tab.SEND_QUEUE_FRAMES * 2100 + 2**20
    # Filler that does not repeat a short cycle (a run of one letter would be stopped as a
    # looping answer: llm/repetition.py).
    filler = secrets.token_hex(1000)
    words = [f"w{i:05d}" + filler for i in range(size // 2000)]
    text = " ".join(words)
    fake_llm.script(Reply(text=text))
    ack = await fast.send("a long answer, please")
    assert ack["type"] == "ack"
    deltas = 0
    while (frame := await fast.frame())["type"] != "message":
        assert frame["type"] != "_closed", frame
        deltas += frame["type"] == "delta"
    assert frame["role"] == "assistant" and frame["text"] == text
    assert deltas >= len(words)  # it was streamed to this tab, not only sent at the end
    await eventually_async(lambda: done(app, tid))  # the turn is over, answered and stored
    assert any("cannot keep up" in r.getMessage() for r in caplog.records)
    # Only now does the slow tab read: what reached it, then the end of its connection.
    seen = []
    while (got := await slow.frame()) is not None and got[0] != 0x8:
        seen.append(json.loads(got[1]))
    slow.close()
    if got is not None:  # it took the close frame in time: "try again later"
        assert int.from_bytes(got[1][:2], "big") == web_tab.CLOSE_TOO_SLOW
    assert not any(f["type"] == "message" and f["text"] == text for f in seen)
    assert len(web._tabs[ThreadId(tid)]) == 1  # the fast tab only
    # The slow tab reconnects as a page does and resumes with the answer.
    again = await big_tab(session, app)
    await again.hello(thread_id=tid)
    ready = await again.frame()
    assert [m["text"] for m in ready["transcript"]] == ["a long answer, please", text]
    assert ready["streaming"] is None and ready["state"] == "idle"
    await again.ws.close()
    await fast.ws.close()


async def big_tab(session: aiohttp.ClientSession, app: App) -> Tab:
    """A tab that takes frames of any size (a whole long answer is one frame)."""
    url = web_of(app).url
    return Tab(await session.ws_connect(f"{url}/ws", origin=url, max_msg_size=0))


def send_buffer_max() -> int:
    """The largest send buffer the kernel gives a TCP socket (Linux), else a generous 4 MB."""
    try:
        return int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    except (OSError, ValueError, IndexError):
        return 4 * 2**20


async def done(app: App, tid: str) -> bool:
    return [s for _, _, s in await inbox_rows(app, tid)] == ["done"]
