"""Images, files and voice messages from Matrix against the real Synapse: encrypted and plain
rooms, sizes checked before and while downloading, hashes, strangers, retries, restarts.

The person's nio client uploads (encrypted with nio's helper in encrypted rooms) and sends
the media event as Element does; the bot's path to the homeserver goes through a proxy
(tests/hs_proxy.py) where a test must count, fail or hold its downloads.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import AppFactory, eventually, eventually_async, merge
from fake_llm import FakeLLM, image_parts, user_messages
from hs_proxy import HomeserverProxy, hs_proxy  # noqa: F401  (fixture)
from matrix_rooms import joined_room, matrix_section, send_content, start_bot
from nio import Event, UploadResponse
from PIL import Image
from synapse import Human, HumanFactory, MatrixUser, Synapse

from ganglion.app import App
from ganglion.interfaces.matrix.attachments import Attachment, attachment_of, caption_of
from ganglion.interfaces.matrix.outbound import reply_contents
from ganglion.messages import Outbound, OutKind, Role, ThreadId
from ganglion.render import MarkdownRenderer
from ganglion.turn.attachments import HEARD, NOTHING_HEARD

VISION = {"llm": {"vision_models": ["fake-model"]}}
OGG_OPUS = b"OggS\x00\x02" + bytes(20) + b"\x01\x13OpusHead\x01\x01"
"""The head of an Ogg Opus file (the rest may be noise: the store reads the head)."""
PDF = b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n"
DOWNLOADS = re.compile(r"^GET /_matrix/(client/v1/)?media/(v3/)?download/")


def photo(width: int, height: int) -> bytes:
    """A PNG of noise (it does not compress: its size is known)."""
    out = io.BytesIO()
    Image.frombytes("RGB", (width, height), os.urandom(width * height * 3)).save(out, "PNG")
    return out.getvalue()


async def send_file(human: Human, room: str, data: bytes, *, name: str = "photo.png",
                    mimetype: str = "image/png", msgtype: str = "m.image",
                    encrypt: bool = True, caption: str | None = None,
                    info: dict[str, Any] | None = None,
                    keys: dict[str, Any] | None = None, extra: dict[str, Any] | None = None,
                    hold: HomeserverProxy | None = None) -> str:
    """Upload ``data`` (encrypted with nio's helper when ``encrypt``) and send the media
    event as Element does; ``keys`` replaces parts of the decryption info (a wrong hash);
    ``hold``: the proxy holds the downloads of this file."""
    resp, decryption = await human.client.upload(io.BytesIO(data), content_type=mimetype,
                                                 filename=name, encrypt=encrypt,
                                                 filesize=len(data))
    assert isinstance(resp, UploadResponse), resp
    if hold is not None:
        hold.hang = re.compile(re.escape(media_id_of(resp.content_uri)))
    content: dict[str, Any] = {
        "msgtype": msgtype, "body": caption if caption is not None else name,
        "filename": name, "info": {"size": len(data), "mimetype": mimetype, **(info or {})},
        **(extra or {})}
    if encrypt:
        assert decryption is not None
        content["file"] = {"url": resp.content_uri, **decryption, **(keys or {})}
    else:
        content["url"] = resp.content_uri
    return await send_content(human, room, content)


def media_id_of(mxc: str) -> str:
    return mxc.rsplit("/", 1)[-1]


async def media_rows(app: App) -> list[dict[str, Any]]:
    rows = await app.db.fetchall(
        "SELECT m.id, m.type, m.bytes, m.name, o.owner FROM media m"
        " JOIN media_owners o ON o.media_id = m.id ORDER BY m.created_at")
    return [dict(r) for r in rows]


async def attached(app: App, event_id: str) -> list[str]:
    rows = await app.db.fetchall(
        "SELECT r.media_id FROM media_refs r JOIN inbox i ON i.id = r.inbox_id"
        " WHERE i.client_id = ? ORDER BY r.seq", (event_id,))
    return [r["media_id"] for r in rows]


async def vision_bot(app_factory: AppFactory, synapse: Synapse, bot: MatrixUser,
                     allowed: list[str], store: Path, **extra: Any) -> App:
    """A started bot whose model sees images."""
    app = await app_factory(merge(matrix_section(synapse, bot, allowed, store, **extra),
                                  VISION))
    assert app.matrix is not None
    await asyncio.wait_for(app.matrix.ready.wait(), 20)
    return app


async def bot_behind(proxy: HomeserverProxy, synapse: Synapse, app_factory: AppFactory,
                     humans: HumanFactory, tmp_path: Path, **media: Any,
                     ) -> tuple[App, Human, str, MatrixUser]:
    """A bot whose homeserver is the proxy, a person, and an encrypted room of theirs."""
    bot, person = await synapse.register("bot"), await synapse.register("human")
    app = await vision_bot(app_factory, synapse, bot, [person.user_id], tmp_path / "store",
                           homeserver=proxy.url)
    assert app.matrix is not None and app.matrix.intake is not None
    app.matrix.intake.fetcher.backoff = 0.05
    for key, value in media.items():
        setattr(app.matrix.intake.fetcher.store, key, value)
    human = await humans(person)
    return app, human, await joined_room(human, bot), bot


@pytest.mark.matrix
async def test_images_in_encrypted_and_plain_rooms_reach_a_vision_model(
    synapse: Synapse, app_factory: AppFactory, fake_llm: FakeLLM,
    humans: HumanFactory, tmp_path: Path,
) -> None:
    bot, person = await synapse.register("bot"), await synapse.register("human")
    app = await vision_bot(app_factory, synapse, bot, [person.user_id], tmp_path / "store")
    human = await humans(person)
    secret_room = await joined_room(human, bot)
    plain_room = await joined_room(human, bot, encrypted=False)

    data = photo(64, 48)
    image = await send_file(human, secret_room, data, caption="what is on this photo?")
    answer = await human.next_message(secret_room, bot.user_id, 0)
    assert answer.body == "echo: what is on this photo?"  # the caption is the message text
    last = user_messages(fake_llm.requests[-1])[-1]
    [(kind, sent)] = image_parts(last)
    with Image.open(io.BytesIO(sent)) as seen:
        assert (kind, seen.size) == ("image/jpeg", (64, 48))
    media_id = hashlib.sha256(data).hexdigest()  # decrypted: the bytes the person sent
    assert await attached(app, image) == [media_id]
    assert await media_rows(app) == [{"id": media_id, "type": "image/png", "bytes": len(data),
                                      "name": "photo.png", "owner": f"matrix:{person.user_id}"}]

    other = photo(32, 32)
    plain = await send_file(human, plain_room, other, name="screenshot.png", encrypt=False)
    await human.next_message(plain_room, bot.user_id, 0)
    [(_, sent)] = image_parts(user_messages(fake_llm.requests[-1])[-1])
    with Image.open(io.BytesIO(sent)) as seen:
        assert seen.size == (32, 32)
    assert await attached(app, plain) == [hashlib.sha256(other).hexdigest()]
    rows = await app.db.fetchall("SELECT client_id, text, meta FROM inbox ORDER BY id")
    assert [(r["client_id"], r["text"], json.loads(r["meta"])["encrypted"]) for r in rows] == [
        (image, "what is on this photo?", "1"), (plain, "", "0")]


@pytest.mark.matrix
async def test_sizes_are_checked_before_and_while_downloading_and_failures_retried(
    hs_proxy: HomeserverProxy,  # noqa: F811
    synapse: Synapse, app_factory: AppFactory, fake_llm: FakeLLM,
    humans: HumanFactory, tmp_path: Path,
) -> None:
    app, human, room, bot = await bot_behind(hs_proxy, synapse, app_factory, humans, tmp_path,
                                             max_bytes=4096)
    big = photo(64, 64)  # 12 kB of noise

    await send_file(human, room, big, name="big.png")  # says its size: never downloaded
    told = await human.next_message(room, bot.user_id, 0)
    assert type(told).__name__ == "RoomMessageNotice"
    assert told.body == ("big.png is too large (12 kB; the limit is 4 kB, media.max_bytes), "
                         "so I did not download it.")
    assert not [r for r in hs_proxy.seen if DOWNLOADS.search(r)]

    await send_file(human, room, big, name="liar.png", info={"size": 1000})
    told = await human.next_message(room, bot.user_id, 1)
    assert told.body.startswith("liar.png is too large (more than 4 kB"), told.body
    assert [r for r in hs_proxy.seen if DOWNLOADS.search(r)]  # refused as it came

    hs_proxy.fail, hs_proxy.fail_times = DOWNLOADS, 2
    small = photo(8, 8)
    await send_file(human, room, small, caption="third time lucky")
    answer = await human.next_message(room, bot.user_id, 2)
    assert answer.body == "echo: third time lucky"
    assert len(hs_proxy.failed) == 2
    assert image_parts(user_messages(fake_llm.requests[-1])[-1])

    hs_proxy.fail, hs_proxy.fail_times = DOWNLOADS, None  # the homeserver keeps failing
    await send_file(human, room, photo(9, 9), name="never.png")
    told = await human.next_message(room, bot.user_id, 3)
    assert told.body.startswith("I could not download never.png after 3 tries: the "
                                "homeserver answered 502"), told.body
    assert [r["id"] for r in await media_rows(app)] == [hashlib.sha256(small).hexdigest()]


@pytest.mark.matrix
async def test_a_file_that_fails_its_hash_and_a_strangers_image_are_not_kept(
    synapse: Synapse, app_factory: AppFactory, fake_llm: FakeLLM,
    humans: HumanFactory, tmp_path: Path,
) -> None:
    bot, person = await synapse.register("bot"), await synapse.register("human")
    stranger_user = await synapse.register("stranger")
    app = await start_bot(app_factory, synapse, bot, [person.user_id], tmp_path / "store")
    human, stranger = await humans(person), await humans(stranger_user)
    room = await joined_room(human, bot)
    await human.invite(room, stranger_user.user_id)
    await stranger.join(room)

    await send_file(stranger, room, photo(16, 16), caption="look at this")
    wrong = base64.b64encode(hashlib.sha256(b"something else").digest()).decode().rstrip("=")
    await send_file(human, room, photo(16, 16), name="tampered.png",
                    keys={"hashes": {"sha256": wrong}})
    told = await human.next_message(room, bot.user_id, 0)
    assert told.body.startswith("I did not keep tampered.png: its content does not match "
                                "the hash"), told.body
    await human.send(room, "still there?")
    assert (await human.next_message(room, bot.user_id, 1)).body == "echo: still there?"
    assert await media_rows(app) == []
    # The stranger's image came first, and nothing of it was stored, answered or told.
    assert len(human.messages_from(room, bot.user_id)) == 2
    rows = await app.db.fetchall("SELECT sender FROM inbox")
    assert [r["sender"] for r in rows] == [person.user_id]

    # This model cannot see images: the person is told, and the caption is answered.
    data = photo(16, 16)
    await send_file(human, room, data, caption="what is it?")
    told = await human.next_message(room, bot.user_id, 2)
    assert told.body.startswith("The current model (fake-model) cannot see images"), told.body
    answer = await human.next_message(room, bot.user_id, 3)
    assert answer.body == "echo: what is it?\n[image: 16x16 PNG image, not shown]"
    assert not image_parts(user_messages(fake_llm.requests[-1])[-1])
    assert [r["owner"] for r in await media_rows(app)] == [f"matrix:{person.user_id}"]


@pytest.mark.matrix
async def test_downloads_leave_other_rooms_going_keep_the_order_and_survive_a_restart(
    hs_proxy: HomeserverProxy,  # noqa: F811
    synapse: Synapse, app_factory: AppFactory, fake_llm: FakeLLM,
    humans: HumanFactory, tmp_path: Path,
) -> None:
    first, human, room, bot = await bot_behind(hs_proxy, synapse, app_factory, humans,
                                               tmp_path)
    other = await joined_room(human, bot)
    data = photo(20, 10)  # the homeserver takes its download and never answers
    image = await send_file(human, room, data, caption="look", hold=hs_proxy)
    question = await human.send(room, "what is it?")
    meanwhile = await send_file(human, other, photo(10, 20), caption="meanwhile")
    assert (await human.next_message(other, bot.user_id, 0)).body == "echo: meanwhile"
    await eventually(lambda: len(hs_proxy.hung) == 1)
    held = hs_proxy.hung[0]
    # The room's question waits behind its photo (never answered before it).
    assert human.messages_from(room, bot.user_id) == []
    rows = await first.db.fetchall("SELECT client_id FROM inbox")
    assert image not in {r["client_id"] for r in rows}  # not on the bus when it stops
    await first.stop()
    hs_proxy.release()

    second = await vision_bot(app_factory, synapse, bot, [human.user.user_id],
                              tmp_path / "store", homeserver=hs_proxy.url)
    assert (await human.next_message(room, bot.user_id, 0)).body == "echo: look"
    assert (await human.next_message(room, bot.user_id, 1)).body == "echo: what is it?"
    assert image_parts(user_messages(fake_llm.requests[-1])[0])
    rows = await second.db.fetchall("SELECT client_id FROM inbox WHERE thread_id = ?"
                                    " ORDER BY id", (room,))
    assert [r["client_id"] for r in rows] == [image, question]
    assert await attached(second, image) == [hashlib.sha256(data).hexdigest()]
    await human.send(other, "and now?")
    assert (await human.next_message(other, bot.user_id, 1)).body == "echo: and now?"
    assert len(human.messages_from(room, bot.user_id)) == 2  # each answered once
    # Read again from before the held photo, the other room's (on the bus already) was
    # not downloaded again, nor answered again; the held one was, once.
    downloads = [r for r in hs_proxy.seen if DOWNLOADS.search(r)]
    assert (downloads.count(held), len(downloads)) == (2, 3)
    assert len(human.messages_from(other, bot.user_id)) == 2
    assert len(await attached(second, meanwhile)) == 1


@pytest.mark.matrix
async def test_a_voice_message_and_a_pdf_reach_the_store_with_their_names(
    synapse: Synapse, app_factory: AppFactory, fake_llm: FakeLLM,
    humans: HumanFactory, tmp_path: Path,
) -> None:
    """Needs the voice branch (audio and PDF by content, names, transcription): merged here."""
    bot, person = await synapse.register("bot"), await synapse.register("human")
    app = await app_factory(merge(
        matrix_section(synapse, bot, [person.user_id], tmp_path / "store"),
        {"stt": {"base_url": fake_llm.base_url, "model": "whisper-test"}}))
    assert app.matrix is not None
    await asyncio.wait_for(app.matrix.ready.wait(), 20)
    human = await humans(person)
    room = await joined_room(human, bot)

    voice = OGG_OPUS + os.urandom(2000)
    # As Element sends a voice message: m.audio marked MSC3245, its body a label, no filename.
    said = await send_file(human, room, voice, msgtype="m.audio", mimetype="audio/ogg",
                           name="Voice message.ogg", info={"duration": 1200},
                           extra={"org.matrix.msc3245.voice": {},
                                  "org.matrix.msc1767.audio": {"duration": 1200}})
    pdf = PDF + os.urandom(500)
    filed = await send_file(human, room, pdf, msgtype="m.file", mimetype="application/pdf",
                            name="report.pdf", caption="summarise this please")
    await eventually_async(lambda: _attached_both(app, said, filed), timeout=30)
    owner = f"matrix:{person.user_id}"
    assert await media_rows(app) == [
        {"id": hashlib.sha256(voice).hexdigest(), "type": "audio/ogg", "bytes": len(voice),
         "name": "Voice message.ogg", "owner": owner},
        {"id": hashlib.sha256(pdf).hexdigest(), "type": "application/pdf", "bytes": len(pdf),
         "name": "report.pdf", "owner": owner}]
    rows = await app.db.fetchall("SELECT client_id, text FROM inbox ORDER BY id")
    assert [(r["client_id"], r["text"]) for r in rows] == [
        (said, ""), (filed, "summarise this please")]
    # The transcript is shown as a quote before the answer, which answers the words.
    heard = await human.next_message(room, bot.user_id, 0)
    assert type(heard).__name__ == "RoomMessageNotice"
    assert heard.body == "> 🎤 “hello from a voice note”"
    assert heard.formatted_body.startswith("<blockquote>")
    answer = await human.next_message(room, bot.user_id, 1)
    assert answer.body == "echo: [voice message] hello from a voice note"
    assert [t.model for t in fake_llm.transcriptions] == ["whisper-test"]


async def _attached_both(app: App, *events: str) -> bool:
    return all([await attached(app, e) for e in events])


def test_a_transcript_notice_shows_as_a_quote_in_matrix() -> None:
    """The worker tells a voice message's transcript as a notice (turn/attachments.HEARD):
    Matrix clients show it as a quote, an m.notice (it never pings); other notices as they
    are."""
    heard = HEARD.format("buy milk <and> eggs")
    [content] = reply_contents(Outbound(ThreadId("!room:localhost"), OutKind.MESSAGE, heard,
                                        role=Role.SYSTEM), MarkdownRenderer())
    assert content["msgtype"] == "m.notice"
    assert content["body"] == f"> {heard}"
    assert content["formatted_body"].startswith("<blockquote>"), content["formatted_body"]
    assert "buy milk &lt;and&gt; eggs" in content["formatted_body"]
    for other in (NOTHING_HEARD, "The current model (x) cannot see images."):
        [content] = reply_contents(Outbound(ThreadId("!room:localhost"), OutKind.MESSAGE,
                                            other, role=Role.SYSTEM), MarkdownRenderer())
        assert content["body"] == other


@pytest.mark.matrix
async def test_a_homeserver_without_authenticated_media_is_asked_on_the_legacy_api(
    hs_proxy: HomeserverProxy,  # noqa: F811
    synapse: Synapse, app_factory: AppFactory, fake_llm: FakeLLM,
    humans: HumanFactory, tmp_path: Path,
) -> None:
    app, human, room, bot = await bot_behind(hs_proxy, synapse, app_factory, humans, tmp_path)
    # What a homeserver older than Matrix 1.11 answers on the authenticated media API.
    hs_proxy.fail = re.compile(r"^GET /_matrix/client/v1/media/download/")
    hs_proxy.fail_status, hs_proxy.fail_errcode = 404, "M_UNRECOGNIZED"
    await send_file(human, room, photo(12, 12), caption="old server")
    told = await human.next_message(room, bot.user_id, 0)
    downloads = [r for r in hs_proxy.seen if DOWNLOADS.search(r)]
    assert [r.split("/download/")[0] for r in downloads] == [
        "GET /_matrix/client/v1/media", "GET /_matrix/media/v3"], told.body
    # This Synapse serves media uploaded since authenticated media came in only on the new
    # API (enable_authenticated_media), so the legacy one has it not: the person is told.
    assert told.body == ("I could not download photo.png: the file is not on the homeserver "
                         "(deleted, or never uploaded). Please send it again.")
    assert await media_rows(app) == []


def media_event(content: dict[str, Any]) -> Any:
    return Event.parse_event({"type": "m.room.message", "event_id": "$e", "sender": "@a:b",
                              "origin_server_ts": 1, "content": content})


def test_what_a_media_event_says_of_its_file() -> None:
    plain = media_event({"msgtype": "m.image", "body": "cat.png", "url": "mxc://b/abc",
                         "info": {"size": 1234}})
    assert attachment_of(plain) == Attachment(msgtype="m.image", url="mxc://b/abc",
                                              filename="cat.png", name="cat.png", caption="",
                                              size=1234)
    # MSC2530: a body that differs from the filename is the caption.
    captioned = media_event({"msgtype": "m.file", "body": "read this\nplease",
                             "filename": "a.pdf", "url": "mxc://b/x", "info": {"size": True}})
    att = attachment_of(captioned)
    assert isinstance(att, Attachment)
    assert (att.filename, att.caption, att.size) == ("a.pdf", "read this\nplease", None)
    assert caption_of(plain) == ""
    voice = media_event({"msgtype": "m.audio", "body": "Voice message", "url": "mxc://b/v",
                         "org.matrix.msc3245.voice": {}})
    att = attachment_of(voice)
    assert isinstance(att, Attachment) and att.voice and att.filename == "Voice message"
    video = media_event({"msgtype": "m.video", "body": "clip.mp4", "url": "mxc://b/c"})
    assert attachment_of(video) == ("I cannot take videos (clip.mp4): send an image, a voice "
                                    "message or a file (PDF, text, CSV).")
    unnamed = media_event({"msgtype": "m.image", "body": "", "url": "mxc://b/d"})
    att = attachment_of(unnamed)
    assert isinstance(att, Attachment) and (att.filename, att.name) == (None, "the file")
