"""The page reads its files back: GET /media/<id> with the token (refused without it, from
another site, for a file that is not the owner's), served so that nothing in it runs; the
transcript and the queued messages carry their attachments. Real sockets, real SQLite."""

from __future__ import annotations

import asyncio
import time

import aiohttp
from conftest import WEB_TOKEN, AppFactory, connect, eventually
from fake_llm import FakeLLM, Reply
from media_page import VISION, photo, upload
from wsclient import until

from ganglion.app import App
from ganglion.interfaces.web_media import MEDIA_CSP
from ganglion.messages import ThreadId
from ganglion.storage.retention import Retention


async def get_media(app: App, media_id: str, *, token: str | None = WEB_TOKEN,
                    origin: str | None = None) -> tuple[int, bytes, dict[str, str]]:
    assert app.web is not None
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    if origin is not None:
        headers["Origin"] = origin
    async with aiohttp.ClientSession() as session, session.get(
            f"{app.web.url}/media/{media_id}", headers=headers) as resp:
        return resp.status, await resp.read(), dict(resp.headers)


async def test_get_media_serves_the_owners_file_with_headers_that_run_nothing(
    app_factory: AppFactory,
) -> None:
    app = await app_factory()
    png = photo(8, 8)
    status, info = await upload(app, png, name="cat.png")
    assert status == 200, info
    status, body, headers = await get_media(app, info["id"])
    assert status == 200 and body == png
    assert headers["Content-Type"] == "image/png"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Content-Security-Policy"] == MEDIA_CSP and "sandbox" in MEDIA_CSP
    assert headers["Content-Disposition"].startswith("inline; filename=")
    assert "immutable" in headers["Cache-Control"] and "private" in headers["Cache-Control"]


async def test_get_media_needs_the_token_the_pages_origin_and_a_file_the_owner_may_see(
    app_factory: AppFactory,
) -> None:
    app = await app_factory()
    _, info = await upload(app, photo(8, 8))
    assert (await get_media(app, info["id"], token=None))[0] == 401
    status, body, _ = await get_media(app, info["id"], origin="https://evil.example")
    assert status == 403 and b"web.allowed_origins" in body
    assert (await get_media(app, "0" * 64))[0] == 404  # unknown
    assert (await get_media(app, "../../conversation.db"))[0] == 404
    # The same file known only as another interface's upload, attached to no message.
    await app.db.write("DELETE FROM media_owners WHERE media_id = ?", (info["id"],))
    await app.db.write("INSERT INTO media_owners (media_id, owner) VALUES (?, 'matrix:@x:y')",
                       (info["id"],))
    assert (await get_media(app, info["id"]))[0] == 404
    # Attached to a stored message (a Matrix room's, say): the page's person may read it.
    await app.db.write("INSERT INTO inbox (thread_id, client_id, source, sender, text,"
                       " created_at) VALUES ('!room:y', 'e1', 'matrix', '@x:y', 'hi', 0)")
    await app.db.write("INSERT INTO media_refs (inbox_id, seq, media_id) SELECT id, 0, ?"
                       " FROM inbox WHERE client_id = 'e1'", (info["id"],))
    assert (await get_media(app, info["id"]))[0] == 200
    # Removed by retention: said so.
    await app.db.write("UPDATE media SET removed_at = 1 WHERE id = ?", (info["id"],))
    assert (await get_media(app, info["id"]))[0] == 410


async def test_the_transcript_and_the_queue_carry_each_messages_attachments(
    app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    app = await app_factory(VISION)
    _, info = await upload(app, photo(8, 6))
    fake_llm.script(Reply(text="a dot"))
    chat = await connect(app)
    other = await connect(app, chat.thread_id)  # the thread's other tab sees it queued
    # No text: an attachment alone is a message (a voice note, a photo).
    await chat.send_raw({"type": "send", "id": "m1", "text": "", "attachments": [info["id"]]})
    queued = await until(other, lambda e: e["type"] == "pending")
    shown = {"id": info["id"], "type": "image/png", "bytes": info["bytes"], "width": 8,
             "height": 6, "name": "photo.png"}
    assert queued["attachments"] == [shown]
    assert (await chat.reply())["text"] == "a dot"
    await chat.close()
    await other.close()
    again = await connect(app, chat.thread_id)
    user, = [m for m in again.ready["transcript"] if m["role"] == "user"]
    assert user["attachments"] == [shown]
    await again.close()
    # Retention drops the answered inbox row (and its media_refs): the history message
    # keeps what it attached.
    pruned = await Retention(app.db, 1).prune(now=time.time() + 2 * 86_400)
    assert pruned.inbox == 1
    assert await app.db.fetchone("SELECT 1 FROM media_refs") is None
    later = await connect(app, chat.thread_id)
    user, = [m for m in later.ready["transcript"] if m["role"] == "user"]
    assert user["attachments"] == [shown]
    await later.close()
    # Deleted with its conversation.
    assert app.web is not None
    await app.web.conversations.conversations.delete(ThreadId(chat.thread_id))
    assert await app.db.fetchone("SELECT 1 FROM message_media") is None


async def test_a_matrix_rooms_read_view_carries_its_attachments_and_the_page_may_fetch_them(
    app_factory: AppFactory,
) -> None:
    app = await app_factory()
    _, info = await upload(app, photo(8, 6))
    await app.db.write("UPDATE media_owners SET owner = 'matrix:@x:y' WHERE media_id = ?",
                       (info["id"],))  # as the Matrix edge would have stored it
    await app.db.write("INSERT INTO inbox (thread_id, client_id, source, sender, text,"
                       " status, created_at, done_at) VALUES ('!room:y', 'e1', 'matrix',"
                       " '@x:y', 'look', 'done', 0, 0)")
    await app.db.write("INSERT INTO media_refs (inbox_id, seq, media_id) SELECT id, 0, ?"
                       " FROM inbox WHERE client_id = 'e1'", (info["id"],))
    await app.db.write("INSERT INTO messages (thread_id, role, content, inbox_id, created_at)"
                       " SELECT '!room:y', 'user', 'look', id, 0 FROM inbox WHERE client_id"
                       " = 'e1'")
    chat = await connect(app)
    await chat.send_raw({"type": "read", "thread_id": "!room:y"})
    room = await until(chat, lambda e: e["type"] == "room")
    user, = room["transcript"]
    assert [a["id"] for a in user["attachments"]] == [info["id"]]
    assert (await get_media(app, info["id"]))[0] == 200
    # Still after retention pruned the room's inbox row: the history message attaches it.
    assert (await Retention(app.db, 1).prune(now=time.time() + 2 * 86_400)).inbox == 1
    assert await app.db.fetchone("SELECT 1 FROM media_refs") is None
    assert (await get_media(app, info["id"]))[0] == 200
    await chat.close()


async def test_a_file_that_is_not_shown_inline_downloads_under_its_quoted_name(
    app_factory: AppFactory,
) -> None:
    app = await app_factory()
    name = 'tab"le; ré.csv'
    status, info = await upload(app, b"a,b\n1,2\n", name=name, raw=True)
    assert status == 200, info
    status, body, headers = await get_media(app, info["id"])
    assert status == 200 and body == b"a,b\n1,2\n"
    disposition = headers["Content-Disposition"]
    assert disposition.startswith('attachment; filename="tab_le_ r_.csv"'), disposition
    assert disposition.endswith("filename*=UTF-8''tab%22le%3B%20r%C3%A9.csv")


async def test_a_tab_joining_sees_a_queued_messages_attachments(
    app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    app = await app_factory(VISION)
    _, info = await upload(app, photo(8, 6))
    held = asyncio.Event()
    fake_llm.script(Reply(text="first", held=held), Reply(text="second"))
    chat = await connect(app)
    assert (await chat.send("hold on"))["type"] == "ack"
    await eventually(lambda: len(fake_llm.requests) == 1)  # the first turn is running
    await chat.send_raw({"type": "send", "id": "m2", "text": "and this",
                         "attachments": [info["id"]]})
    await until(chat, lambda e: e["type"] == "ack" and e["id"] == "m2")
    joined = await connect(app, chat.thread_id)
    queued, = joined.ready["pending"]
    assert queued["id"] == "m2" and [a["id"] for a in queued["attachments"]] == [info["id"]]
    held.set()
    await joined.close()
    await chat.close()
