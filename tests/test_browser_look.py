"""The chat page in a real Chromium, issue 14 items 4 and 5: code highlighted and copied, bare
URLs linked (and nothing else), jump to latest, log out, the theme toggle, phone width, the
keyboard, and a name for every button."""

from __future__ import annotations

import re

import pytest
from browser_page import Problems, answers, open_page, say, web_of
from conftest import AppFactory
from daemon import free_port
from fake_llm import FakeLLM, Reply
from playwright.async_api import Browser, BrowserContext, Page, expect

pytestmark = pytest.mark.browser

CODE = 'def greet(name):\n    return f"hello {name}"  # a comment'
ANSWER = (f"Here:\n\n```python\n{CODE}\n```\n\nSee https://docs.example.org/a?b=1 for more, "
          "not [this](javascript:window.pwned=1) nor <b>bold</b>.")


async def clipboard(page: Page) -> str:
    return str(await page.evaluate("navigator.clipboard.readText()"))


async def test_code_is_highlighted_and_copied_and_only_http_urls_are_links(
    app_factory: AppFactory, fake_llm: FakeLLM, context: BrowserContext, problems: Problems
) -> None:
    app = await app_factory()
    await context.grant_permissions(["clipboard-read", "clipboard-write"],
                                    origin=web_of(app).url)
    fake_llm.script(Reply(text=ANSWER))
    page = await open_page(context, app, problems)
    await say(page, "show me code")
    answer = answers(page)
    await expect(answer).to_have_count(1)
    code = answer.locator("pre code")
    await expect(code).to_have_class(re.compile(r"\bhljs\b"))
    await expect(code.locator("span.hljs-keyword").first).to_have_text("def")
    await expect(code.locator("span.hljs-comment")).to_have_text("# a comment")
    await expect(code).to_have_text(CODE)  # the spans colour it, the text stays
    # Fenced code at a readable size: pre's own, not shrunk twice.
    size = await code.evaluate("e => parseFloat(getComputedStyle(e).fontSize)")
    assert size >= 14, size

    meta = answer.locator(".meta")  # the message's time and Copy: shown on hover
    await expect(meta).to_have_css("opacity", "0")
    await answer.hover()
    await expect(meta).to_have_css("opacity", "1")
    assert await meta.locator("time").get_attribute("datetime")
    await answer.get_by_role("button", name="Copy code").click()
    assert await clipboard(page) == CODE
    await answer.get_by_role("button", name="Copy message").click()
    assert await clipboard(page) == ANSWER  # the Markdown, as written
    assert "Copy" not in await answer.inner_text()  # button words are not message text

    link = answer.get_by_role("link", name="https://docs.example.org/a?b=1")
    await expect(link).to_have_attribute("href", "https://docs.example.org/a?b=1")
    await expect(link).to_have_attribute("rel", "noopener noreferrer")
    await expect(link).to_have_attribute("target", "_blank")
    await expect(answer.locator("a")).to_have_count(1)  # the javascript: one stays text
    await expect(answer).to_contain_text("[this](javascript:window.pwned=1) nor <b>bold</b>")
    assert await answer.locator("b").count() == 0


async def test_jump_to_latest_appears_when_scrolled_up_and_brings_the_view_down(
    app_factory: AppFactory, fake_llm: FakeLLM, context: BrowserContext, problems: Problems
) -> None:
    app = await app_factory()
    fake_llm.script(Reply(text="\n\n".join(f"paragraph {i}" for i in range(80))))
    page = await open_page(context, app, problems)
    await say(page, "a long one")
    await expect(answers(page)).to_contain_text("paragraph 79")
    jump = page.get_by_role("button", name="Jump to latest")
    await expect(jump).to_be_hidden()  # at the end already: the log followed the answer
    log = page.get_by_role("log")
    await log.evaluate("e => { e.scrollTop = 0; }")
    await expect(jump).to_be_visible()
    await jump.click()
    await expect(jump).to_be_hidden()
    await expect(answers(page).get_by_text("paragraph 79")).to_be_in_viewport()
    at_end = await log.evaluate("e => e.scrollHeight - e.scrollTop - e.clientHeight < 2")
    assert at_end


async def test_log_out_forgets_the_token_and_a_reload_stays_logged_out(
    app_factory: AppFactory, context: BrowserContext, problems: Problems
) -> None:
    app = await app_factory()
    page = await open_page(context, app, problems)
    await say(page, "hello")
    await expect(answers(page)).to_have_text(["echo: hello"])
    await page.get_by_role("button", name="Log out").click()
    token_box = page.get_by_label("Access token")
    await expect(token_box).to_be_visible()
    await expect(page.get_by_role("log")).to_be_hidden()
    await expect(page.locator("#status")).to_have_text("logged out")
    assert await page.evaluate("localStorage.getItem('ganglion.token')") is None
    await page.reload()
    await expect(token_box).to_be_visible()
    await expect(page.get_by_role("textbox", name="Message")).to_be_hidden()
    await token_box.fill(app.web_token)
    await page.get_by_role("button", name="Log in").click()
    await expect(page.locator("#status")).to_have_text("ready")
    await expect(answers(page)).to_have_text(["echo: hello"])


async def background(page: Page) -> str:
    return str(await page.evaluate("getComputedStyle(document.body).backgroundColor"))


@pytest.mark.parametrize("system", ["light", "dark"])
async def test_the_theme_follows_the_system_and_the_toggle_survives_a_reload(
    app_factory: AppFactory, chromium: Browser, problems: Problems, system: str
) -> None:
    app = await app_factory()
    other = "dark" if system == "light" else "light"
    context = await chromium.new_context(color_scheme=system)  # type: ignore[arg-type]
    context.set_default_timeout(10_000)
    try:
        page = await open_page(context, app, problems)
        followed = await background(page)
        toggle = page.get_by_role("button", name=f"Switch to the {other} theme")
        await toggle.click()
        await expect(page.locator("html")).to_have_attribute("data-theme", other)
        switched = await background(page)
        assert switched != followed
        back = page.get_by_role("button", name=f"Switch to the {system} theme")
        await expect(back).to_be_visible()
        await page.reload()
        await expect(page.locator("#status")).to_have_text("ready")
        await expect(page.locator("html")).to_have_attribute("data-theme", other)
        assert await background(page) == switched
    finally:
        await context.close()


async def test_at_390_px_nothing_scrolls_sideways_and_the_composer_and_list_are_reachable(
    app_factory: AppFactory, fake_llm: FakeLLM, chromium: Browser, problems: Problems
) -> None:
    app = await app_factory()
    context = await chromium.new_context(viewport={"width": 390, "height": 844})
    context.set_default_timeout(10_000)
    try:
        fake_llm.script(Reply(text=ANSWER + "\n\n```\n" + "x" * 300 + "\n```"))
        page = await open_page(context, app, problems)
        await say(page, "https://a.example/" + "very-long-path-" * 20)
        await expect(answers(page)).to_have_count(1)
        wide = await page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert wide <= 0
        for name in ("Send", "Log out", "New chat"):
            await expect(page.get_by_role("button", name=name)).to_be_in_viewport()
        await expect(page.get_by_role("textbox", name="Message")).to_be_in_viewport()
        chats = page.get_by_role("button", name="Chats")
        await chats.click()
        await expect(page.get_by_role("navigation", name="Conversations")).to_be_in_viewport()
        await expect(page.get_by_role("list", name="Recent conversations")
                     .get_by_role("link")).to_have_count(1)
        await page.keyboard.press("Escape")  # closes the drawer
        await expect(chats).to_have_attribute("aria-expanded", "false")
    finally:
        await context.close()


async def test_the_keyboard_sends_breaks_lines_stops_and_starts_a_new_chat(
    app_factory: AppFactory, fake_llm: FakeLLM, context: BrowserContext, problems: Problems
) -> None:
    app = await app_factory()
    page = await open_page(context, app, problems)
    box = page.get_by_role("textbox", name="Message")
    await box.press_sequentially("two")
    await box.press("Shift+Enter")
    await box.press_sequentially("lines")
    await expect(box).to_have_value("two\nlines")
    await expect(page.get_by_role("log").locator('[data-role="user"]')).to_have_count(0)
    await box.press("Enter")
    await expect(answers(page)).to_have_text(["echo: two\nlines"])
    await expect(box).to_have_value("")

    fake_llm.script(Reply(text="one two three never ends", stall_after_chunks=2))
    await box.press_sequentially("go on")
    await box.press("Enter")
    await expect(page.locator("#log .msg.streaming")).to_contain_text("one")
    await expect(page.locator("#status")).to_have_text("streaming")
    await box.press("Escape")
    await expect(page.locator("#status")).to_have_text("ready")
    await expect(page.get_by_role("button", name="Stop")).to_be_disabled()

    before = await page.evaluate("location.hash")
    await page.keyboard.press("Control+Shift+O")
    await expect(page).not_to_have_url(re.compile(re.escape(before) + "$"))
    await expect(page.get_by_role("log").locator(".msg")).to_have_count(0)
    await expect(box).to_be_focused()
    await say(page, "in the new chat")
    await expect(answers(page)).to_have_text(["echo: in the new chat"])


async def test_every_button_has_a_name_and_connecting_and_unsent_are_said_in_words(
    app_factory: AppFactory, fake_llm: FakeLLM, context: BrowserContext, problems: Problems
) -> None:
    app = await app_factory({"web": {"port": free_port()}})  # the same port after a restart
    fake_llm.script(Reply(text=ANSWER))
    page = await open_page(context, app, problems)
    await say(page, "code please")
    await expect(answers(page).locator("pre code.hljs")).to_have_count(1)
    await answers(page).hover()  # its Copy message shows
    buttons = page.locator("button:visible")  # hidden ones are out of the accessibility tree
    names = await buttons.evaluate_all("els => els.map(e => e.id || e.className)")
    assert {"new-chat", "theme", "log-out", "send", "stop", "copy secondary"} <= set(names)
    for button in await buttons.all():
        await expect(button).to_have_accessible_name(re.compile(r"\w"))
    offline = page.locator("#offline")
    await expect(offline).to_be_hidden()
    await web_of(app).stop()
    await expect(offline).to_be_visible()
    await expect(offline).to_contain_text("Not connected")
    await say(page, "kept for later")
    unsent = page.locator('#log [data-role="user"][data-status="sending"]')
    await expect(unsent.locator(".note")).to_have_text(
        "Not sent yet: it goes by itself once connected.")
    await web_of(app).start()
    await expect(offline).to_be_hidden()
    await expect(page.get_by_role("log").locator('[data-role="user"] .note')).to_have_count(0)
    problems.items = [p for p in problems.items if "WebSocket connection" not in p]


async def test_a_tool_entry_says_its_call_once(
    app_factory: AppFactory, fake_llm: FakeLLM, context: BrowserContext, problems: Problems
) -> None:
    app = await app_factory()
    fake_llm.script(Reply(tool_calls=[("list_reminders", {})]), Reply(text="None set."))
    page = await open_page(context, app, problems)
    await say(page, "any reminders?")
    await expect(answers(page)).to_have_text(["None set."])
    for reloaded in (False, True):  # live, then from the transcript (which names the tool)
        if reloaded:
            await page.reload()
            await expect(answers(page)).to_have_text(["None set."])
        tool = page.get_by_role("log").locator('[data-role="tool"]')
        summary = tool.locator("summary")
        await expect(summary).to_have_text("list_reminders:")  # the call's line
        await summary.click()
        await expect(tool.locator(".body")).to_contain_text("No active reminders")
        visible = await tool.inner_text()
        assert visible.count("list_reminders") == 1, visible
