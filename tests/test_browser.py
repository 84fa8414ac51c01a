"""The chat page in a real Chromium: login, tabs, reload, streaming, Stop, reconnect, injection,
the visible state (errors too, and back to ready), light and dark."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from typing import Any

import aiohttp
import pytest
from browser_page import ANSWERS, Problems, answers, open_page, say, web_of
from conftest import WEB_TOKEN, AppFactory, eventually
from fake_llm import FakeLLM, Reply
from playwright.async_api import (
    Browser,
    BrowserContext,
    Page,
    expect,
)

from ganglion.interfaces.web_guard import Throttle
from ganglion.messages import ThreadId

pytestmark = pytest.mark.browser

SCREENSHOT = "/tmp/ganglion-web.png"
def echo_slowly(body: dict[str, Any]) -> Reply:
    last = next(m["content"] for m in reversed(body["messages"]) if m["role"] == "user")
    return Reply(text=f"echo: {last}", chunk_delay=0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_login_link_stores_the_token_and_removes_it_from_the_url(
    app_factory: AppFactory, context: BrowserContext, problems: Problems
) -> None:
    app = await app_factory()
    page = await open_page(context, app, problems)
    # The token left the address; the conversation took its place (#/c/<thread>).
    assert WEB_TOKEN not in page.url and "token" not in page.url
    assert re.search(r"/#/c/web_[0-9a-f]{32}$", page.url), page.url
    assert await page.evaluate("localStorage.getItem('ganglion.token')") == WEB_TOKEN
    await say(page, "hello there")
    log = page.get_by_role("log")
    await expect(log.locator('[data-role="user"]')).to_have_text(["hello there"])
    await expect(log.locator(ANSWERS)).to_have_text(["echo: hello there"])
    await expect(page.get_by_role("textbox", name="Message")).to_have_value("")
    await expect(page.get_by_role("button", name="Stop")).to_be_disabled()


async def test_a_page_without_a_token_asks_for_it_and_a_wrong_one_is_forgotten(
    app_factory: AppFactory, context: BrowserContext, problems: Problems
) -> None:
    app = await app_factory()
    page = await open_page(context, app, problems, login=False)
    field = page.get_by_label("Access token")
    await expect(field).to_be_visible()
    await expect(page.get_by_role("textbox", name="Message")).to_be_hidden()
    await field.fill("not-the-token")
    await page.get_by_role("button", name="Log in").click()
    await expect(page.locator("#login-message")).to_contain_text("refused")
    await expect(field).to_be_visible()
    assert await page.evaluate("localStorage.getItem('ganglion.token')") is None
    await field.fill(WEB_TOKEN)
    await page.get_by_role("button", name="Log in").click()
    await expect(page.locator("#status")).to_have_text("ready")
    await expect(field).to_be_hidden()
    await say(page, "in at last")
    await expect(answers(page)).to_have_text(["echo: in at last"])


async def test_a_throttled_wrong_token_says_so_and_retries_after_the_wait(
    app_factory: AppFactory, context: BrowserContext, problems: Problems
) -> None:
    """Once the address is throttled, a wrong token shows "too many failed logins, retry in
    N s" (not "connecting"), and the page tries again by itself after the wait."""
    app = await app_factory()
    web = web_of(app)
    now = [1000.0]  # the throttle's clock, frozen: the window lasts until the test moves it
    web._throttle = Throttle(free=3, cap=10.0, clock=lambda: now[0])
    async with aiohttp.ClientSession() as session:
        for n in range(1, 5):  # the 3rd failure throttles for 1 s, the 4th for 2 s
            async with session.ws_connect(f"{web.url}/ws", origin=web.url) as ws:
                await ws.send_json({"type": "hello", "token": "guess", "thread_id": None})
                assert (await ws.receive_json(timeout=10))["code"] == "unauthorized"
            if n == 3:
                now[0] += 1
    assert web._throttle.retry_after("127.0.0.1") == 2
    page = await context.new_page()
    problems.watch(page)
    await page.goto(web.url + "/#token=not-the-token")
    status = page.locator("#status")
    await expect(status).to_have_text("too many failed logins, retry in 2 s")
    await expect(status).to_have_attribute("data-state", "throttled")
    await expect(page.get_by_label("Access token")).to_be_hidden()
    # It counts down, tries again after the wait, and is still throttled (the clock did not
    # move) ...
    await expect(status).to_have_text("too many failed logins, retry in 1 s")
    await expect(status).to_have_text("too many failed logins, retry in 2 s")
    now[0] += 2  # ... and once the window is over, its next try is checked: refused
    await expect(page.locator("#login-message")).to_contain_text("refused")
    field = page.get_by_label("Access token")
    await field.fill(WEB_TOKEN)
    await page.get_by_role("button", name="Log in").click()
    await expect(status).to_have_text("ready")


async def test_two_tabs_chat_at_once_each_in_its_own_conversation(
    app_factory: AppFactory, fake_llm: FakeLLM, context: BrowserContext, problems: Problems
) -> None:
    app = await app_factory()
    fake_llm.script(echo_slowly, echo_slowly, echo_slowly, echo_slowly)
    first = await open_page(context, app, problems)
    second = await open_page(context, app, problems)
    await say(first, "I am the first tab")
    await say(second, "I am the second tab")
    await say(first, "first again")
    await say(second, "second again")
    for page, name in ((first, "first"), (second, "second")):
        await expect(answers(page)).to_have_count(2)
        texts = await page.locator("#log .msg").all_inner_texts()
        assert all(name in t for t in texts), texts
        assert len(texts) == 4
    threads = {await p.evaluate("sessionStorage.getItem('ganglion.thread')")
               for p in (first, second)}
    assert len(threads) == 2


async def test_reload_resumes_the_conversation_and_new_chat_clears_it(
    app_factory: AppFactory, context: BrowserContext, problems: Problems
) -> None:
    app = await app_factory()
    page = await open_page(context, app, problems)
    await say(page, "remember **this**")
    await expect(answers(page)).to_have_text(["echo: remember this"])
    thread = await page.evaluate("sessionStorage.getItem('ganglion.thread')")
    await page.reload()
    await expect(page.locator("#status")).to_have_text("ready")
    log = page.get_by_role("log")
    await expect(log.locator('[data-role="user"]')).to_have_text(["remember **this**"])
    await expect(log.locator(ANSWERS)).to_have_text(["echo: remember this"])
    assert await log.locator(f"{ANSWERS} strong").inner_text() == "this"  # server Markdown
    await page.get_by_role("button", name="New chat").click()
    await expect(log.locator(".msg")).to_have_count(0)
    await expect(page.locator("#status")).to_have_text("ready")
    assert await page.evaluate("sessionStorage.getItem('ganglion.thread')") != thread
    await say(page, "fresh start")
    await expect(log.locator(".msg")).to_have_count(2)
    await page.reload()
    await expect(log.locator('[data-role="user"]')).to_have_text(["fresh start"])


async def test_a_streamed_answer_shows_partial_text_and_survives_a_reload(
    app_factory: AppFactory, fake_llm: FakeLLM, context: BrowserContext, problems: Problems
) -> None:
    app = await app_factory()
    words = " ".join(f"word{i}" for i in range(30))
    fake_llm.script(Reply(text=f"{words} *done*", chunk_delay=0.1))
    page = await open_page(context, app, problems)
    await say(page, "stream please")
    streaming = page.locator('#log .msg.streaming[data-role="assistant"]')
    await expect(streaming).to_contain_text("word3")
    await expect(page.locator("#status")).to_have_text("streaming")
    await expect(page.get_by_role("button", name="Stop")).to_be_enabled()
    assert await answers(page).count() == 0  # partial text before the final message
    await page.reload()
    await expect(page.locator("#status")).to_have_text("streaming")
    await expect(streaming).to_contain_text("word1")  # the partial text came back
    await expect(answers(page)).to_have_count(1, timeout=15_000)
    await expect(answers(page)).to_have_text(f"{words} done")
    assert await answers(page).locator("em").inner_text() == "done"
    await expect(streaming).to_have_count(0)
    await expect(page.locator("#status")).to_have_text("ready")
    await expect(page.locator('#log [data-role="user"]')).to_have_text(["stream please"])


async def test_tool_calls_show_collapsed_in_the_transcript(
    app_factory: AppFactory, fake_llm: FakeLLM, context: BrowserContext, problems: Problems
) -> None:
    app = await app_factory()

    async def weather(city: str) -> str:
        """The weather in a city.

        Args:
            city: where
        """
        return f"<b>sunny</b> in {city}"

    app.tools.add(weather)
    fake_llm.script(Reply(tool_calls=[("weather", {"city": "Lyon"})]), Reply(text="It is sunny."))
    page = await open_page(context, app, problems)
    await say(page, "weather in Lyon?")
    await expect(answers(page)).to_have_text(["It is sunny."])
    for reload in (False, True):  # shown live as it happens, and again from the transcript
        if reload:
            await page.reload()
        tool = page.locator('#log [data-role="tool"]')
        await expect(tool).to_have_count(1)
        summary = tool.locator("details > summary")
        # The entry's title is the call, said once; its body adds the result
        # (ganglion.tools.policy).
        await expect(summary).to_have_text("weather: city=Lyon")
        body = tool.locator(".body")
        await expect(body).to_be_hidden()
        await summary.click()
        await expect(body).to_contain_text("<b>sunny</b> in Lyon")
        roles = await page.locator("#log .msg").evaluate_all(
            "els => els.map(e => e.dataset.role)")
        assert roles == ["user", "tool", "assistant"]


async def test_stop_ends_a_running_turn(
    app_factory: AppFactory, fake_llm: FakeLLM, context: BrowserContext, problems: Problems
) -> None:
    app = await app_factory()
    fake_llm.script(Reply(hang=True))
    page = await open_page(context, app, problems)
    await say(page, "take forever")
    stop = page.get_by_role("button", name="Stop")
    await expect(stop).to_be_enabled()
    await expect(page.locator("#status")).to_have_text("thinking")
    await stop.click()
    await expect(page.locator('#log [data-role="system"]')).to_have_text(["Stopped."])
    await expect(stop).to_be_disabled()
    await expect(page.locator("#status")).to_have_text("ready")


async def test_the_status_says_summarising_while_a_summary_is_written(
    app_factory: AppFactory, fake_llm: FakeLLM, context: BrowserContext, problems: Problems
) -> None:
    app = await app_factory({"llm": {"context_tokens": 2048}})
    held = asyncio.Event()
    fake_llm.script(Reply(text="SUMMARY: owls.", held=held))  # then the answer: an echo
    page = await open_page(context, app, problems)
    thread = await page.evaluate("sessionStorage.getItem('ganglion.thread')")
    # A summary too large for the budget: the next message compacts it first.
    await app.history.replace_with_summary(ThreadId(thread), 0, "Owls nest in barns. " * 300)
    await say(page, "and now?")
    status = page.locator("#status")
    await expect(status).to_have_text("summarising earlier messages")
    await expect(status).to_have_attribute("data-state", "summarising")
    await expect(page.get_by_role("button", name="Stop")).to_be_enabled()
    await fake_llm.wait_until(lambda: len(fake_llm.requests) == 1)
    held.set()  # the summary comes only now
    await expect(answers(page)).to_have_text(["echo: and now?"])
    await expect(status).to_have_text("ready")


async def test_messages_typed_while_the_daemon_is_down_are_sent_after_it_returns(
    app_factory: AppFactory, context: BrowserContext, problems: Problems
) -> None:
    app = await app_factory({"web": {"port": free_port()}})
    web = web_of(app)
    page = await open_page(context, app, problems)
    await web.stop()
    await expect(page.locator("#status")).to_have_text("connecting")
    await say(page, "sent while you were away")
    await expect(page.locator('#log [data-role="user"][data-status="sending"]')).to_have_count(1)
    await web.start()
    await expect(answers(page)).to_have_text(["echo: sent while you were away"])
    await expect(page.locator('#log [data-role="user"]')).to_have_count(1)
    assert await page.evaluate("sessionStorage.getItem('ganglion.outbox')") == "[]"
    rows = await app.db.fetchall("SELECT text FROM inbox")
    assert [r["text"] for r in rows] == ["sent while you were away"]
    # The refused connections while the server was down are the only console noise.
    problems.items = [p for p in problems.items if "WebSocket connection" not in p]


async def test_html_and_markdown_injection_render_as_text(
    app_factory: AppFactory, fake_llm: FakeLLM, context: BrowserContext, problems: Problems
) -> None:
    app = await app_factory()
    evil = (
        '<img src=x onerror="window.pwned=1"> <script>window.pwned=2</script>\n\n'
        "[click me](javascript:window.pwned=3) <svg onload=window.pwned=4>\n\n"
        '<a href="javascript:window.pwned=5">raw link</a> ![i](javascript:window.pwned=6)'
    )
    fake_llm.script(Reply(text=evil, chunk_delay=0.02))
    page = await open_page(context, app, problems)
    await say(page, '<img src=y onerror="window.pwned=7"> **not bold?**')
    answer = answers(page)
    await expect(answer).to_have_count(1)
    log = page.get_by_role("log")
    await expect(log.locator('[data-role="user"]')).to_contain_text('<img src=y onerror=')
    await expect(answer).to_contain_text("<script>window.pwned=2</script>")
    await expect(answer).to_contain_text('<img src=x onerror="window.pwned=1">')
    assert await log.locator("img, script, svg, iframe").count() == 0
    hrefs = await log.locator("a").evaluate_all("els => els.map(e => e.getAttribute('href'))")
    assert all(h is None or not h.lower().startswith("javascript") for h in hrefs), hrefs
    for link in await log.locator("a").all():
        await link.click()
    await page.reload()
    await expect(answers(page)).to_have_count(1)
    assert await log.locator("img, script, svg, iframe").count() == 0
    assert await page.evaluate("typeof window.pwned") == "undefined"


async def test_the_page_looks_right_at_375px(
    app_factory: AppFactory, fake_llm: FakeLLM, chromium: Browser, problems: Problems
) -> None:
    app = await app_factory()
    fake_llm.script(Reply(text=(
        "Here is a plan:\n\n1. Read the **config**\n2. Start the `daemon`\n\n"
        "```python\nprint('hello, world')\n```\n\n| key | value |\n|---|---|\n| port | 8080 |"
    )))
    ctx = await chromium.new_context(viewport={"width": 375, "height": 740},
                                     color_scheme="light", device_scale_factor=1)
    try:
        page = await open_page(ctx, app, problems)
        await say(page, "How do I start it? Please keep it short, I am reading on my phone.")
        await expect(answers(page)).to_have_count(1)
        await page.get_by_role("textbox", name="Message").fill("Thanks!")
        overflow = await page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0
        for name in ("Send", "Stop", "New chat"):
            box = await page.get_by_role("button", name=name).bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 375, name
        await page.screenshot(path=SCREENSHOT)
    finally:
        await ctx.close()


# -- the visible state: errors, and back to ready ---------------------------------------------


async def roles_in_log(page: Page) -> list[str | None]:
    """The data-role of every element of the transcript (none may lack one)."""
    roles: list[str | None] = await page.locator("#log > *").evaluate_all(
        "els => els.map(e => e.dataset.role ?? null)")
    return roles


async def test_a_failed_answer_shows_the_error_state_until_a_turn_works(
    app_factory: AppFactory, fake_llm: FakeLLM, context: BrowserContext, problems: Problems
) -> None:
    app = await app_factory({"llm": {"retries": 0}})
    fake_llm.script(Reply(status=500))
    page = await open_page(context, app, problems)
    status = page.locator("#status")
    await say(page, "are you there?")
    await expect(page.locator('#log [data-role="system"]')).to_contain_text(["language model"])
    await expect(status).to_have_text("error")
    await expect(status).to_have_attribute("data-state", "error")
    await expect(page.get_by_role("button", name="Stop")).to_be_disabled()
    await say(page, "and now?")
    await expect(answers(page)).to_have_text(["echo: and now?"])
    await expect(status).to_have_text("ready")
    assert await roles_in_log(page) == ["user", "system", "user", "assistant"]


async def test_a_message_too_long_or_refused_shows_an_error_then_ready_again(
    app_factory: AppFactory, context: BrowserContext, problems: Problems
) -> None:
    app = await app_factory({"web": {"max_message_bytes": 64}})
    page = await open_page(context, app, problems)
    status = page.locator("#status")
    message = page.get_by_role("textbox", name="Message")
    await say(page, "x" * 100)
    notice = page.locator('#log .notice[data-role="system"]')
    await expect(notice).to_have_text(["Message is 100 bytes; the limit is 64. Shorten it and "
                                       "send again."])
    await expect(status).to_have_text("error")
    await expect(message).to_have_value("x" * 100)  # kept, to be shortened
    await say(page, "short")
    await expect(answers(page)).to_have_text(["echo: short"])
    await expect(status).to_have_text("ready")

    # A frame the server refuses: a lone surrogate is not Unicode it can store.
    await message.evaluate("el => { el.value = 'broken \\ud800 text'; }")
    await page.get_by_role("button", name="Send").click()
    failed = page.locator('#log [data-role="user"][data-status="failed"]')
    await expect(failed.locator(".note")).to_contain_text("lone surrogate")
    await expect(status).to_have_text("error")
    assert await page.evaluate("sessionStorage.getItem('ganglion.outbox')") == "[]"
    await say(page, "fine again")
    await expect(answers(page)).to_have_count(2)
    await expect(status).to_have_text("ready")
    assert await roles_in_log(page) == ["system", "user", "assistant", "user", "user",
                                        "assistant"]


async def test_a_message_the_disk_refuses_is_kept_and_sent_once_it_can_be_stored(
    app_factory: AppFactory, fake_llm: FakeLLM, context: BrowserContext, problems: Problems,
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = await app_factory()
    page = await open_page(context, app, problems)
    status = page.locator("#status")
    # The fault as tests/test_faults.py makes it: SQLite refuses every write (SQLITE_READONLY).
    await app.db.conn.execute("PRAGMA query_only = ON")
    await say(page, "typed during the fault")
    bubble = page.locator('#log [data-role="user"]')
    await expect(bubble).to_have_attribute("data-status", "retrying")
    await expect(bubble.locator(".note")).to_contain_text("trying again by itself")
    await expect(status).to_have_text("error")
    refusals = "could not store a message"
    # The page tries again by itself, with backoff: the server's log is what shows a second
    # attempt; it has no event to wait on.
    await eventually(lambda: sum(refusals in r.getMessage() for r in caplog.records) >= 2, 10)
    outbox = json.loads(await page.evaluate("sessionStorage.getItem('ganglion.outbox')"))
    assert [e["text"] for e in outbox] == ["typed during the fault"]
    assert fake_llm.requests == []

    await app.db.conn.execute("PRAGMA query_only = OFF")  # the fault clears
    await expect(answers(page)).to_have_text(["echo: typed during the fault"], timeout=15_000)
    await expect(status).to_have_text("ready")
    await expect(bubble).to_have_attribute("data-status", "sent")
    await expect(bubble.locator(".note")).to_have_count(0)
    assert await page.evaluate("sessionStorage.getItem('ganglion.outbox')") == "[]"
    rows = await app.db.fetchall("SELECT text, status FROM inbox")
    assert [tuple(r) for r in rows] == [("typed during the fault", "done")]


def luminance(css: str) -> float:
    """WCAG relative luminance of an ``rgb(r, g, b)`` colour."""
    channels = [int(c) / 255 for c in re.findall(r"\d+", css)[:3]]
    lin = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def contrast(a: str, b: str) -> float:
    high, low = sorted((luminance(a), luminance(b)), reverse=True)
    return (high + 0.05) / (low + 0.05)


async def test_light_and_dark_follow_the_system_and_stay_readable(
    app_factory: AppFactory, chromium: Browser, problems: Problems
) -> None:
    app = await app_factory()
    colours: dict[str, dict[str, str]] = {}
    for scheme in ("light", "dark"):
        ctx = await chromium.new_context(color_scheme=scheme)
        try:
            page = await open_page(ctx, app, problems)
            await say(page, f"hello in {scheme}")
            await expect(answers(page)).to_have_count(1)
            colours[scheme] = await page.evaluate("""() => {
                const css = (sel) => getComputedStyle(document.querySelector(sel));
                const user = css('#log [data-role="user"]');
                return {bg: css("body").backgroundColor, fg: css("body").color,
                        answer: css('#log [data-role="assistant"]').color,
                        user_bg: user.backgroundColor, user_fg: user.color,
                        input_bg: css("#message").backgroundColor, input_fg: css("#message").color};
            }""")
        finally:
            await ctx.close()
    light, dark = colours["light"], colours["dark"]
    assert light["bg"] != dark["bg"] and light["fg"] != dark["fg"], colours
    assert luminance(dark["bg"]) < luminance(light["bg"]), colours  # dark is dark
    for scheme, c in colours.items():  # WCAG AA for body text, in both
        for fg, bg in (("fg", "bg"), ("answer", "bg"), ("user_fg", "user_bg"),
                       ("input_fg", "input_bg")):
            assert contrast(c[fg], c[bg]) >= 4.5, (scheme, fg, c[fg], c[bg])
