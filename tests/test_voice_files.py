"""Voice and files over the web: a recording uploaded with the token is transcribed by the
fake OpenAI-compatible server (real multipart over HTTP), shown to the sender and answered as
text; files land in the workspace's inbox/ where the file tools read them. Real sockets,
real SQLite, real child processes (the PDF reader, the daemon killed with SIGKILL)."""

from __future__ import annotations

import asyncio
import io
import socket
import sqlite3
import wave
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import WEB_TOKEN, AppFactory, connect, daemon_config
from daemon import Daemon
from fake_llm import FakeLLM, Reply, tool_results, user_messages
from pypdf import PdfWriter
from pypdf.generic import DecodedStreamObject, DictionaryObject, NameObject

from ganglion.app import App
from ganglion.config import masked_dump, parse_config, secret_values
from ganglion.errors import ConfigError
from ganglion.toolbox import tool_workspace, workspace_dir
from ganglion.turn.inbox_files import InboxFiles

HEARD = "hello from a voice note"


def wav(seconds: float = 0.25) -> bytes:
    """A real WAV (16 kHz mono 16-bit) made with the standard library: a rising tone."""
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16_000)
        w.writeframes(b"".join(((i * 37) % 30_000).to_bytes(2, "little")
                               for i in range(int(16_000 * seconds))))
    return out.getvalue()


def pdf(*pages: str) -> bytes:
    """A real PDF with one line of text per page (Helvetica), written by pypdf."""
    writer = PdfWriter()
    font = DictionaryObject({NameObject("/Type"): NameObject("/Font"),
                             NameObject("/Subtype"): NameObject("/Type1"),
                             NameObject("/BaseFont"): NameObject("/Helvetica")})
    for text in pages:
        page = writer.add_blank_page(612, 792)
        page[NameObject("/Resources")] = DictionaryObject(
            {NameObject("/Font"): DictionaryObject({NameObject("/F1"): font})})
        content = DecodedStreamObject()
        content.set_data(f"BT /F1 14 Tf 72 720 Td ({text}) Tj ET".encode("latin-1"))
        page.replace_contents(content)
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


async def upload(app: App, data: bytes, name: str | None = None) -> tuple[int, dict[str, Any]]:
    """POST /upload: a form with the file's name, or (no name: a recording) the raw bytes."""
    assert app.web is not None
    body: Any = data
    if name is not None:
        body = aiohttp.FormData(quote_fields=False)  # the name as a browser sends it
        body.add_field("file", data, filename=name, content_type="application/octet-stream")
    async with aiohttp.ClientSession() as session, session.post(
            f"{app.web.url}/upload", data=body,
            headers={"Authorization": f"Bearer {WEB_TOKEN}"}) as resp:
        return resp.status, await resp.json()


def stt(fake_llm: FakeLLM, **more: Any) -> dict[str, Any]:
    return {"stt": {"base_url": fake_llm.base_url, "model": "whisper-test",
                    "api_key": "stt-secret-key-123", **more}}


def closed_port() -> int:
    """A port nothing listens on (bound, then closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_a_recording_is_transcribed_shown_to_the_sender_and_answered_as_text(
    app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    app = await app_factory(stt(fake_llm, language="en"))
    audio = wav()
    status, info = await upload(app, audio)
    assert status == 200 and info["type"] == "audio/wav", info
    fake_llm.script(Reply(text="hello to you"))
    chat = await connect(app)
    await chat.send_raw({"type": "send", "id": "m1", "attachments": [info["id"]]})
    told = await chat.reply()
    assert told["role"] == "system" and told["text"] == f"🎤 “{HEARD}”"
    assert (await chat.reply())["text"] == "hello to you"
    (sent,) = fake_llm.transcriptions
    assert (sent.model, sent.filename, sent.language) == ("whisper-test", "voice.wav", "en")
    assert sent.data == audio and sent.content_type == "audio/wav"
    assert user_messages(fake_llm.requests[-1])[-1]["content"] == f"[voice message] {HEARD}"
    # History keeps the words: the next turn (and a summary) reads them, not a file id.
    fake_llm.script(Reply(text="yes"))
    await chat.send_raw({"type": "send", "id": "m2", "text": "did you hear me?"})
    assert (await chat.reply())["text"] == "yes"
    said = [m["content"] for m in user_messages(fake_llm.requests[-1])]
    assert said == [f"[voice message] {HEARD}", "did you hear me?"]
    assert len(fake_llm.transcriptions) == 1
    await chat.close()


async def test_without_stt_the_sender_is_told_plainly_and_the_text_is_answered(
    app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    app = await app_factory()
    _, info = await upload(app, wav())
    fake_llm.script(Reply(text="about the text"))
    chat = await connect(app)
    await chat.send_raw({"type": "send", "id": "m1", "text": "and this?",
                         "attachments": [info["id"]]})
    told = await chat.reply()
    assert told["role"] == "system" and "Voice messages need stt.base_url" in told["text"]
    assert "The rest of your message was answered." in told["text"]
    assert (await chat.reply())["text"] == "about the text"
    assert user_messages(fake_llm.requests[-1])[-1]["content"] == (
        "and this?\n[voice message: not transcribed]")
    # A voice message alone: told, and nothing for the model to answer.
    await chat.send_raw({"type": "send", "id": "m2", "attachments": [info["id"]]})
    told = await chat.reply()
    assert "nothing to answer" in told["text"]
    fake_llm.script(Reply(text="next"))
    await chat.send_raw({"type": "send", "id": "m3", "text": "next"})
    assert (await chat.reply())["text"] == "next"  # the turn before it ran, and asked nothing
    assert len(fake_llm.requests) == 2 and fake_llm.transcriptions == []
    await chat.close()


async def test_an_stt_server_down_or_failing_is_a_clear_notice_and_the_text_is_answered(
    app_factory: AppFactory, fake_llm: FakeLLM, tmp_path: Path
) -> None:
    down = await app_factory({"stt": {"base_url": f"http://127.0.0.1:{closed_port()}/v1"}})
    _, info = await upload(down, wav())
    fake_llm.script(Reply(text="answered anyway"))
    chat = await connect(down)
    await chat.send_raw({"type": "send", "id": "m1", "text": "see attached",
                         "attachments": [info["id"]]})
    told = await chat.reply()
    assert "could not transcribe" in told["text"] and "cannot be reached" in told["text"]
    assert (await chat.reply())["text"] == "answered anyway"
    await chat.close()

    failing = await app_factory({**stt(fake_llm), "paths": {
        "data_dir": str(tmp_path / "data2"), "log_dir": str(tmp_path / "logs2")}})
    fake_llm.transcription_error = 500
    _, info = await upload(failing, wav(0.3))
    fake_llm.script(Reply(text="still here"))
    chat = await connect(failing)
    await chat.send_raw({"type": "send", "id": "m1", "text": "again",
                         "attachments": [info["id"]]})
    told = await chat.reply()
    assert "could not transcribe" in told["text"] and "500" in told["text"]
    assert (await chat.reply())["text"] == "still here"
    assert len(fake_llm.transcriptions) == 2  # the SDK's one retry, then the notice
    await chat.close()


async def test_convert_without_ffmpeg_says_so_and_a_wav_needs_no_conversion(
    app_factory: AppFactory, fake_llm: FakeLLM, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))  # no ffmpeg, wherever this runs
    app = await app_factory(stt(fake_llm, convert=True))
    ogg = b"OggS\x00\x02" + bytes(20) + b"\x01\x13OpusHead\x01\x01" + bytes(400)
    _, voice = await upload(app, ogg)
    _, recorded = await upload(app, wav())
    assert (voice["type"], recorded["type"]) == ("audio/ogg", "audio/wav")
    fake_llm.script(Reply(text="one of two"))
    chat = await connect(app)
    await chat.send_raw({"type": "send", "id": "m1",
                         "attachments": [voice["id"], recorded["id"]]})
    heard = await chat.reply()
    assert heard["text"] == f"🎤 “{HEARD}”"  # the WAV went as it was
    told = await chat.reply()
    assert "stt.convert is on but ffmpeg is not on PATH" in told["text"]
    assert (await chat.reply())["text"] == "one of two"
    (sent,) = fake_llm.transcriptions
    assert sent.filename == "voice.wav" and sent.data == wav()
    assert user_messages(fake_llm.requests[-1])[-1]["content"] == (
        f"[voice message: not transcribed]\n[voice message] {HEARD}")
    await chat.close()


async def test_a_pdf_lands_in_the_workspace_inbox_with_its_text_for_the_file_tools(
    app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    app = await app_factory()
    status, info = await upload(app, pdf("Quarterly revenue grew", "Costs fell"),
                                "../Q3 report.pdf")
    assert status == 200 and (info["type"], info["name"]) == ("application/pdf",
                                                              "Q3 report.pdf")
    fake_llm.script(Reply(tool_calls=[("read_file", {"path": "inbox/Q3 report.pdf.txt"})]),
                    Reply(text="revenue grew, costs fell"))
    chat = await connect(app)
    await chat.send_raw({"type": "send", "id": "m1", "text": "summarise",
                         "attachments": [info["id"]]})
    assert (await chat.reply())["text"] == "revenue grew, costs fell"
    said = user_messages(fake_llm.requests[0])[-1]["content"]
    assert said.startswith("summarise\n[file: inbox/Q3 report.pdf, ")
    assert said.endswith(", 2 pages, text: inbox/Q3 report.pdf.txt]")
    (read,) = tool_results(fake_llm.requests[1])
    assert "Quarterly revenue grew" in read and "Costs fell" in read
    inbox = workspace_dir(app.loaded) / "inbox"
    assert (inbox / "Q3 report.pdf").read_bytes() == pdf("Quarterly revenue grew",
                                                          "Costs fell")
    # Another file of the same name does not replace it.
    _, other = await upload(app, pdf("Other"), "Q3 report.pdf")
    fake_llm.script(Reply(text="ok"))
    await chat.send_raw({"type": "send", "id": "m2", "text": "and this",
                         "attachments": [other["id"]]})
    assert (await chat.reply())["text"] == "ok"
    assert "[file: inbox/Q3 report (2).pdf, " in user_messages(fake_llm.requests[-1])[-1][
        "content"]
    assert sorted(p.name for p in inbox.iterdir()) == [
        "Q3 report (2).pdf", "Q3 report (2).pdf.txt", "Q3 report.pdf", "Q3 report.pdf.txt"]
    await chat.close()


async def test_a_csv_is_saved_and_a_broken_pdf_is_one_clear_line(
    app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    app = await app_factory()
    _, table = await upload(app, b"name,qty\ntea,2\n", "stock.csv")
    bad = b"%PDF-1.4\n1 0 obj << /Kids [9 0 R] >>\nxref\nnonsense"  # a bad xref, no pages
    _, broken = await upload(app, bad, "broken.pdf")
    assert (table["type"], broken["type"]) == ("text/csv", "application/pdf")
    fake_llm.script(Reply(text="noted"))
    chat = await connect(app)
    await chat.send_raw({"type": "send", "id": "m1", "attachments": [table["id"],
                                                                     broken["id"]]})
    assert (await chat.reply())["text"] == "noted"
    lines = user_messages(fake_llm.requests[-1])[-1]["content"].splitlines()
    assert lines[0] == "[file: inbox/stock.csv, 15 bytes, CSV]"
    assert lines[1].startswith(
        f"[file: inbox/broken.pdf, {len(bad)} bytes, its text could not be read: ")
    inbox = workspace_dir(app.loaded) / "inbox"
    assert (inbox / "stock.csv").read_bytes() == b"name,qty\ntea,2\n"
    assert not (inbox / "broken.pdf.txt").exists()
    await chat.close()


async def test_an_oversized_recording_is_refused_413(app_factory: AppFactory,
                                                     fake_llm: FakeLLM) -> None:
    app = await app_factory({**stt(fake_llm), "media": {"max_bytes": 4096}})
    status, answer = await upload(app, wav(1.0))  # 32 kB
    assert status == 413 and "media.max_bytes" in answer["error"]
    status, _ = await upload(app, wav(0.1))  # 3.2 kB: the route works
    assert status == 200


async def test_sigkill_after_the_transcript_reruns_with_it_and_transcribes_once(
    tmp_path: Path, fake_llm: FakeLLM
) -> None:
    held = asyncio.Event()
    fake_llm.script(Reply(text="never seen", held=held), Reply(text="heard you"))
    config = daemon_config(fake_llm, stt={"base_url": fake_llm.base_url})
    d = Daemon(tmp_path, config)
    async with d:
        async with aiohttp.ClientSession() as session, session.post(
                f"{d.url}/upload", data=wav(),
                headers={"Authorization": f"Bearer {WEB_TOKEN}"}) as resp:
            info = await resp.json()
        chat = await d.connect()
        await chat.send_raw({"type": "send", "id": "m1", "text": "listen",
                             "attachments": [info["id"]]})
        async with asyncio.timeout(20):
            await fake_llm.wait_until(lambda: fake_llm.in_flight > 0)
        assert len(fake_llm.transcriptions) == 1
        d.kill()  # SIGKILL while the model answers: no cleanup at all
        held.set()
        await chat.close()
        d.start()
        await d.wait_ready()
        chat = await d.connect(chat.thread_id)
        answer = await chat.reply(20)
        while answer["role"] == "system":  # the transcript's notice, kept from the first run
            answer = await chat.reply(20)
        assert answer["text"] == "heard you"
        rerun = user_messages(fake_llm.requests[-1])
        assert [m["content"] for m in rerun] == [f"listen\n[voice message] {HEARD}"]
        assert len(fake_llm.transcriptions) == 1  # kept in history: not transcribed again
        assert await d.stop() == 0
    db = sqlite3.connect(tmp_path / "data" / "conversation.db")
    answers = db.execute("SELECT content FROM messages WHERE role = 'assistant'").fetchall()
    assert answers == [("heard you",)]
    notices = db.execute("SELECT content FROM messages WHERE role = 'notice'").fetchall()
    assert notices == [(f"🎤 “{HEARD}”",)]
    db.close()


async def test_a_pdf_reader_past_its_deadline_is_killed_and_the_file_still_saved(
    app_factory: AppFactory
) -> None:
    app = await app_factory()
    # A deadline no child process can meet (Python alone takes longer to start): the path a
    # hostile PDF that keeps pypdf busy takes, without needing such a PDF.
    files = InboxFiles(app.media, tool_workspace(app.loaded), pdf_seconds=0.001)
    _, info = await upload(app, pdf("slow"), "slow.pdf")
    (media,) = await app.media.attachable([info["id"]], "web")
    line = await files.save(media)
    assert line.startswith("[file: inbox/slow.pdf, ")
    assert line.endswith("its text could not be read within 0.001 s]")
    inbox = workspace_dir(app.loaded) / "inbox"
    assert sorted(p.name for p in inbox.iterdir()) == ["slow.pdf"]


def test_the_stt_key_is_a_secret_and_unknown_stt_keys_are_refused() -> None:
    config = parse_config({"stt": {"base_url": "http://127.0.0.1:9/v1",
                                   "api_key": "sk-stt-0123456789"}}, env={})
    assert masked_dump(config)["stt"]["api_key"] == "***"
    assert "sk-stt-0123456789" in secret_values(config)
    with pytest.raises(ConfigError, match=r"stt\.timeout"):
        parse_config({"stt": {"timeout": 5}}, env={})
