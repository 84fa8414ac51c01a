"""Files in the chat page, in a real Chromium (issue 15, item 6): attached with the button,
pasted, dropped; the thumbnail fetched from GET /media/<id> with the token (a blob: URL);
refused files said on their chip and nothing sent; a message whose file was still uploading
sent once after a reload; a hostile name shown as text; the microphone."""

from __future__ import annotations

import asyncio
import base64
import re

import pytest
from browser_page import Problems, answers, open_page, say, web_of
from conftest import AppFactory, chromium_path, eventually_async
from fake_llm import FakeLLM, Reply, image_parts, user_messages
from media_page import VISION, photo
from playwright.async_api import Browser, BrowserContext, Page, WebSocketRoute, expect

from ganglion.app import App

pytestmark = pytest.mark.browser

BLOB = re.compile(r"^blob:")
THUMBS = '#log .msg[data-role="user"] .attachments img'
KEPT_FILES = """() => new Promise((resolve) => {
  const req = indexedDB.open("ganglion", 1);
  req.onupgradeneeded = () => req.result.createObjectStore("files");
  req.onsuccess = () => {
    const count = req.result.transaction("files").objectStore("files").count();
    count.onsuccess = () => { req.result.close(); resolve(count.result); };
  };
})"""
"""How many files the page keeps in IndexedDB for unsent messages."""
DROP_OR_PASTE = """async ([kind, b64, name]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const data = new DataTransfer();
  data.items.add(new File([bytes], name, { type: "image/png" }));
  if (kind === "paste") {
    document.getElementById("message").dispatchEvent(
      new ClipboardEvent("paste", { clipboardData: data, bubbles: true, cancelable: true }));
    return;
  }
  const log = document.getElementById("log");
  log.dispatchEvent(new DragEvent("dragenter", { dataTransfer: data, bubbles: true }));
  const zone = document.querySelector(".drop-zone");
  const shown = !zone.hidden && getComputedStyle(zone).display !== "none";
  const init = { dataTransfer: data, bubbles: true, cancelable: true };
  log.dispatchEvent(new DragEvent("dragover", init));
  log.dispatchEvent(new DragEvent("drop", init));
  return shown;
}"""


def png_file(name: str = "dot.png", width: int = 8, height: int = 6) -> dict[str, object]:
    return {"name": name, "mimeType": "image/png", "buffer": photo(width, height)}


async def inbox_texts(app: App) -> list[str]:
    return [r["text"] for r in await app.db.fetchall("SELECT text FROM inbox ORDER BY id")]


async def sent_with_image(page: Page, fake_llm: FakeLLM, text: str) -> None:
    """Send ``text`` with the composer's files; the model got the image, the page shows it."""
    await expect(page.locator('#attachments .chip[data-state="ready"]')).to_have_count(1)
    await say(page, text)
    await expect(answers(page)).to_have_count(1)
    last = user_messages(fake_llm.requests[-1])[-1]
    assert last["content"][0] == {"type": "text", "text": text}
    assert len(image_parts(last)) == 1
    await expect(page.locator("#attachments")).to_be_hidden()  # the chips left with it
    thumb = page.locator(THUMBS)
    await expect(thumb).to_have_count(1)
    await expect(thumb).to_have_attribute("src", BLOB)


async def test_a_png_attached_with_the_button_reaches_the_model_and_shows_as_a_thumbnail(
    app_factory: AppFactory, fake_llm: FakeLLM, context: BrowserContext, problems: Problems
) -> None:
    app = await app_factory(VISION)
    fake_llm.script(Reply(text="a small picture"))
    page = await open_page(context, app, problems)
    async with page.expect_file_chooser() as chooser:  # from the keyboard: Enter on Attach
        await page.get_by_role("button", name="Attach").press("Enter")
    assert (await chooser.value).is_multiple()
    await (await chooser.value).set_files([png_file()])
    chip = page.locator("#attachments .chip")
    await expect(chip).to_contain_text("dot.png")
    await sent_with_image(page, fake_llm, "what is this?")
    # After a reload the transcript draws it again, fetched with the token.
    await page.reload()
    await expect(answers(page)).to_have_count(1)
    await expect(page.locator(THUMBS)).to_have_attribute("src", BLOB)
    assert await page.locator(THUMBS).evaluate("img => img.naturalWidth") == 8
    await page.get_by_role("button", name="Open image").click()  # the larger view
    viewer = page.locator("dialog.viewer")
    await expect(viewer).to_be_visible()
    await page.keyboard.press("Escape")
    await expect(viewer).to_be_hidden()


@pytest.mark.parametrize("kind", ["paste", "drop"])
async def test_an_image_pasted_or_dropped_is_attached_and_sent(
    kind: str, app_factory: AppFactory, fake_llm: FakeLLM, context: BrowserContext,
    problems: Problems
) -> None:
    app = await app_factory(VISION)
    fake_llm.script(Reply(text="seen"))
    page = await open_page(context, app, problems)
    b64 = base64.b64encode(photo(8, 6)).decode()
    zone_shown = await page.evaluate(DROP_OR_PASTE, [kind, b64, f"{kind}d.png"])
    if kind == "drop":
        assert zone_shown is True  # the drop zone showed while the file was over the chat
        await expect(page.locator(".drop-zone")).to_be_hidden()
    await expect(page.locator("#attachments .chip")).to_contain_text(f"{kind}d.png")
    await sent_with_image(page, fake_llm, f"{kind} it")


async def test_an_oversized_file_says_413_on_its_chip_and_nothing_is_sent(
    app_factory: AppFactory, fake_llm: FakeLLM, context: BrowserContext, problems: Problems
) -> None:
    app = await app_factory({**VISION, "media": {"max_bytes": 1024}})
    page = await open_page(context, app, problems)
    await page.locator("#file-input").set_input_files([png_file("big.png", 64, 64)])
    chip = page.locator("#attachments .chip")
    await expect(chip).to_have_attribute("data-state", "error")
    await expect(chip.get_by_role("alert")).to_contain_text("Too large")
    await expect(chip.get_by_role("alert")).to_contain_text("media.max_bytes")
    await say(page, "with the big one")
    await expect(page.locator("#attach-note")).to_contain_text("Remove the file that was refused")
    await expect(page.get_by_role("textbox", name="Message")).to_have_value("with the big one")
    assert await inbox_texts(app) == [] and fake_llm.requests == []
    # Removed: the text goes alone.
    fake_llm.script(Reply(text="fine"))
    await page.get_by_role("button", name="Remove big.png").click()
    await expect(chip).to_have_count(0)
    await page.get_by_role("button", name="Send").click()
    await expect(answers(page)).to_have_count(1)
    assert await inbox_texts(app) == ["with the big one"]
    # The browser reports the refused upload on the console: that one is expected.
    problems.items = [p for p in problems.items if "413" not in p]


async def test_a_message_whose_file_was_uploading_at_a_reload_is_sent_once_after_it(
    app_factory: AppFactory, fake_llm: FakeLLM, context: BrowserContext, problems: Problems
) -> None:
    app = await app_factory(VISION)
    fake_llm.script(Reply(text="got it"))
    page = await open_page(context, app, problems)
    await page.route("**/upload", lambda route: route.abort())  # the upload cannot get through
    await page.locator("#file-input").set_input_files([png_file()])
    await expect(page.locator("#attachments .chip")).to_contain_text("trying again")
    await say(page, "sent across a reload")
    bubble = page.locator('#log .msg[data-role="user"][data-status="sending"]')
    await expect(bubble).to_contain_text("uploading")
    assert await page.evaluate(KEPT_FILES) == 1
    assert await inbox_texts(app) == []  # it had its chance: not sent without its file
    await page.unroute("**/upload")
    await page.reload()
    await expect(answers(page)).to_have_text(["got it"])
    assert await inbox_texts(app) == ["sent across a reload"]  # once
    assert len(fake_llm.requests) == 1 and len(image_parts(user_messages(
        fake_llm.requests[0])[-1])) == 1
    await expect(page.locator(THUMBS)).to_have_count(1)
    await eventually_async(lambda: _zero(page))  # its kept file went with the ack
    assert await page.evaluate("sessionStorage.getItem('ganglion.outbox')") == "[]"
    problems.items = [p for p in problems.items if "ERR_FAILED" not in p]


async def _zero(page: Page) -> bool:
    return await page.evaluate(KEPT_FILES) == 0


async def test_a_hostile_file_name_is_shown_as_text(
    app_factory: AppFactory, fake_llm: FakeLLM, context: BrowserContext, problems: Problems
) -> None:
    app = await app_factory(VISION)
    page = await open_page(context, app, problems)
    evil = '<img src=x onerror="window.pwned=1">.png'
    await page.locator("#file-input").set_input_files([png_file(evil)])
    chip = page.locator("#attachments .chip")
    await expect(chip.locator(".chip-name")).to_have_text(evil)
    await expect(chip).to_have_attribute("data-state", "ready")
    assert await chip.locator("img").count() == 0
    fake_llm.script(Reply(text="ok"))
    await say(page, "named badly")
    await expect(answers(page)).to_have_count(1)
    # Kept under its name (the browser's form escapes the quote as %22: undone), shown as
    # text after a reload too.
    row = await app.db.fetchone("SELECT name FROM media")
    assert row is not None and row["name"] == evil
    await page.reload()
    await expect(page.locator(THUMBS)).to_have_attribute("alt", evil)
    assert await page.locator("#log img").count() == 1
    assert await page.evaluate("typeof window.pwned") == "undefined"


async def test_a_voice_message_is_recorded_uploaded_as_webm_transcribed_and_answered(
    app_factory: AppFactory, fake_llm: FakeLLM, chromium: Browser, problems: Problems
) -> None:
    app = await app_factory({"stt": {"base_url": fake_llm.base_url, "model": "whisper-test"}})
    fake_llm.transcript = "a beep from the fake microphone"
    fake_llm.script(Reply(text="heard you"))
    # Chromium's fake microphone (a beep), allowed without asking.
    browser = await chromium.browser_type.launch(executable_path=chromium_path(), args=[
        "--disable-gpu", "--disable-quic", "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream"])
    try:
        context = await browser.new_context()
        context.set_default_timeout(10_000)
        page = await open_page(context, app, problems)
        uploads: list[str] = []
        page.on("request", lambda r: uploads.append(r.url) if "/upload" in r.url else None)
        # Esc cancels: the bar goes, nothing is uploaded or sent.
        await page.get_by_role("button", name="Record voice message").click()
        bar = page.locator("#recording")
        await expect(bar).to_be_visible()
        await expect(bar).to_contain_text("Recording 0:0")
        await page.keyboard.press("Escape")
        await expect(bar).to_be_hidden()  # the recorder stopped: a kept one would be on its way
        assert uploads == [] and await inbox_texts(app) == []
        # Recorded for a second, stopped: uploaded as WebM (Opus) and sent alone.
        await page.get_by_role("button", name="Record voice message").click()
        await expect(page.locator("#recording-time")).to_have_text("0:01")
        await page.get_by_role("button", name="Stop recording and send it").click()
        await expect(answers(page)).to_have_text(["heard you"])
        assert len(uploads) == 1 and await inbox_texts(app) == [""]
        # The server transcribed the recording as it came, showed the words under it, and
        # the model read them as the message.
        [heard] = fake_llm.transcriptions
        assert heard.model == "whisper-test" and heard.data.startswith(b"\x1a\x45\xdf\xa3")
        await expect(page.locator('#log .msg[data-role="system"]').last).to_contain_text(
            "a beep from the fake microphone")
        user_text = fake_llm.requests[-1]["messages"][-1]["content"]
        assert "[voice message] a beep from the fake microphone" in str(user_text)
        rows = await app.db.fetchall(
            "SELECT m.id, m.type, m.name FROM media_refs r JOIN media m ON m.id = r.media_id")
        assert [r["type"] for r in rows] == ["audio/webm"]
        assert rows[0]["name"].startswith("voice-") and rows[0]["name"].endswith(".webm")
        stored = (app.data_dir / "media" / rows[0]["id"]).read_bytes()
        assert stored.startswith(b"\x1a\x45\xdf\xa3") and b"webm" in stored[:64]  # EBML
        player = page.locator('#log .msg[data-role="user"] audio')
        await expect(player).to_have_attribute("src", BLOB)
    finally:
        await browser.close()


async def test_a_blocked_microphone_is_said_plainly(
    app_factory: AppFactory, context: BrowserContext, problems: Problems
) -> None:
    app = await app_factory()
    page = await open_page(context, app, problems)  # headless, nothing allowed: refused
    await page.get_by_role("button", name="Record voice message").click()
    note = page.locator("#attach-note")
    await expect(note).to_be_visible()
    await expect(note).to_contain_text("microphone")
    await expect(page.locator("#recording")).to_be_hidden()


async def test_a_file_shows_as_a_chip_that_downloads_it_under_its_name(
    app_factory: AppFactory, fake_llm: FakeLLM, context: BrowserContext, problems: Problems
) -> None:
    app = await app_factory()
    fake_llm.script(Reply(text="a table"))
    page = await open_page(context, app, problems)
    data = b"city,people\nOslo,709000\n"
    await page.locator("#file-input").set_input_files(
        [{"name": "cities.csv", "mimeType": "text/csv", "buffer": data}])
    await expect(page.locator('#attachments .chip[data-state="ready"]')).to_have_count(1)
    await say(page, "what is in it?")
    await expect(answers(page)).to_have_count(1)
    await page.reload()  # drawn from the transcript
    chip = page.get_by_role("button", name="Download cities.csv")
    await expect(chip).to_contain_text("cities.csv (24 B)")
    async with page.expect_download() as download:
        await chip.click()
    got = await download.value
    assert got.suggested_filename == "cities.csv"
    assert (await got.path()).read_bytes() == data


async def test_a_message_with_an_uploaded_file_unacknowledged_at_a_reload_is_sent_once(
    app_factory: AppFactory, fake_llm: FakeLLM, context: BrowserContext, problems: Problems
) -> None:
    app = await app_factory(VISION)
    fake_llm.script(Reply(text="got it"))
    page = await context.new_page()
    problems.watch(page)
    dropped = asyncio.Event()
    blocking = True

    async def socket(ws: WebSocketRoute) -> None:  # the page's frames, its send ones lost
        server = ws.connect_to_server()

        def to_server(message: str | bytes) -> None:
            if blocking and isinstance(message, str) and '"type":"send"' in message:
                dropped.set()
            else:
                server.send(message)

        ws.on_message(to_server)

    await page.route_web_socket("**/ws", socket)
    await page.goto(web_of(app).login_url)
    await page.locator("#file-input").set_input_files([png_file()])
    await expect(page.locator('#attachments .chip[data-state="ready"]')).to_have_count(1)
    await say(page, "ack lost")
    await dropped.wait()  # the send frame went and never arrived: no ack
    bubble = page.locator('#log .msg[data-role="user"][data-status="sending"]')
    await expect(bubble.locator(".attachments img")).to_have_attribute("src", BLOB)
    assert await inbox_texts(app) == []
    blocking = False
    await page.reload()
    await expect(answers(page)).to_have_text(["got it"])
    assert await inbox_texts(app) == ["ack lost"]
    assert len(image_parts(user_messages(fake_llm.requests[0])[-1])) == 1
    await expect(page.locator(THUMBS)).to_have_count(1)


async def test_a_message_sent_while_an_earlier_ones_file_uploads_waits_for_it(
    app_factory: AppFactory, fake_llm: FakeLLM, context: BrowserContext, problems: Problems
) -> None:
    app = await app_factory(VISION)
    fake_llm.script(Reply(text="one"), Reply(text="two"))
    page = await open_page(context, app, problems)
    await page.route("**/upload", lambda route: route.abort())  # held up: tried again
    await page.locator("#file-input").set_input_files([png_file()])
    await say(page, "first, with a picture")
    await say(page, "second, text only")
    await expect(page.locator('#log .msg[data-role="user"][data-status="sending"]')
                 ).to_have_count(2)
    await expect(page.locator("#log .file-chip.uploading")).to_have_count(1)
    assert await inbox_texts(app) == []  # the second did not overtake the first
    await page.unroute("**/upload")  # the next try gets through
    await expect(answers(page)).to_have_text(["one", "two"])
    assert await inbox_texts(app) == ["first, with a picture", "second, text only"]
    problems.items = [p for p in problems.items if "ERR_FAILED" not in p]
