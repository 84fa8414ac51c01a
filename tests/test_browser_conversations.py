"""The conversation list in a real Chromium: open, the address, rename, archive, delete (from
the database and from a second tab), a reminder fired into a closed tab reached again, the
/new divider, hostile titles, the drawer at phone width."""

from __future__ import annotations

import re
import time

import pytest
from browser_page import ANSWERS, Problems, answers, open_page, say
from conftest import AppFactory, eventually_async
from fake_llm import FakeLLM
from playwright.async_api import Browser, BrowserContext, Dialog, Page, expect

from ganglion.messages import ThreadId
from ganglion.storage.history import NewMessage
from ganglion.storage.reminders import NewReminder

pytestmark = pytest.mark.browser


def sidebar(page: Page):  # type: ignore[no-untyped-def]
    return page.get_by_role("navigation", name="Conversations")


def titles(page: Page):  # type: ignore[no-untyped-def]
    return page.get_by_role("list", name="Recent conversations").locator(".conv-title")


def thread_of(page: Page) -> str:
    m = re.search(r"#/c/(web_[0-9a-f]+)$", page.url)
    assert m, page.url
    return m[1]


def answer_dialog(page: Page, text: str | None = None) -> list[str]:
    """Accept the next dialog (with ``text`` for a prompt); returns what it said."""
    said: list[str] = []

    async def on_dialog(dialog: Dialog) -> None:  # Playwright runs it as a task
        said.append(dialog.message)
        await (dialog.accept(text) if text is not None else dialog.accept())

    page.once("dialog", on_dialog)
    return said


async def test_conversations_are_listed_opened_by_address_and_live_in_two_tabs(
    app_factory: AppFactory, context: BrowserContext, problems: Problems
) -> None:
    app = await app_factory()
    page = await open_page(context, app, problems)
    await say(page, "about owls")
    await expect(answers(page)).to_have_text(["echo: about owls"])
    owls = thread_of(page)
    await page.get_by_role("button", name="New chat").click()
    await say(page, "about bees")
    await expect(answers(page)).to_have_text(["echo: about bees"])
    await expect(titles(page)).to_have_text(["about bees", "about owls"])  # newest first
    await sidebar(page).get_by_role("link", name=re.compile("about owls")).click()
    await expect(page.get_by_role("log").locator('[data-role="user"]')).to_have_text(
        ["about owls"])
    assert thread_of(page) == owls
    await expect(sidebar(page).locator('li[aria-current="true"] .conv-title')).to_have_text(
        "about owls")
    # The address opens it in another tab; both stay live.
    other = await context.new_page()
    problems.watch(other)
    await other.goto(page.url)
    await expect(other.locator("#status")).to_have_text("ready")
    await expect(other.get_by_role("log").locator('[data-role="user"]')).to_have_text(
        ["about owls"])
    await say(other, "more owls")
    await expect(answers(page)).to_have_text(["echo: about owls", "echo: more owls"])
    await expect(titles(other)).to_have_text(["about owls", "about bees"])


async def test_rename_archive_and_delete_with_counts_and_a_hostile_title_shown_as_text(
    app_factory: AppFactory, context: BrowserContext, problems: Problems
) -> None:
    app = await app_factory()
    page = await open_page(context, app, problems)
    await say(page, "keep me")
    await expect(answers(page)).to_have_text(["echo: keep me"])
    kept = thread_of(page)
    await page.get_by_role("button", name="New chat").click()
    await say(page, "delete me")
    await expect(answers(page)).to_have_text(["echo: delete me"])
    doomed = thread_of(page)
    await app.reminders.add(NewReminder(ThreadId(doomed), "Doomed", time.time() + 3600))
    other = await context.new_page()  # a second tab, on the conversation to keep
    problems.watch(other)
    await other.goto(f"{app.web.url}/#/c/{kept}")  # type: ignore[union-attr]
    await expect(titles(other)).to_have_text(["delete me", "keep me"])

    hostile = '<img src=x onerror="document.title=\'pwned\'"><script>alert(1)</script>'
    current = sidebar(page).locator('li[aria-current="true"]')
    answer_dialog(page, hostile)
    await current.get_by_role("button", name="Rename").click()
    await expect(titles(page).first).to_have_text(hostile[:80])
    await expect(titles(other).first).to_have_text(hostile[:80])
    assert await sidebar(page).locator("img, script").count() == 0
    assert await page.title() == "Ganglion"

    await current.get_by_role("button", name="Archive").click()
    await expect(titles(page)).to_have_text(["keep me"])
    archived = page.get_by_role("list", name="Archived conversations")
    await page.get_by_text("Archived", exact=True).click()
    await expect(archived.locator(".conv-title")).to_have_text([hostile[:80]])
    await archived.get_by_role("button", name="Unarchive").click()
    await expect(titles(page)).to_have_text([hostile[:80], "keep me"])

    said = answer_dialog(page)
    await current.get_by_role("button", name="Delete").click()
    await expect(titles(page)).to_have_text(["keep me"])
    await expect(titles(other)).to_have_text(["keep me"])
    assert said == [f'Delete "{hostile[:80]}"? This removes 2 messages, 0 pending turns and '
                    "1 reminder, for good."]
    for table in ("messages", "inbox", "reminders", "conversations"):
        row = await app.db.fetchone(f"SELECT count(*) AS n FROM {table} WHERE thread_id = ?",
                                    (doomed,))
        assert row is not None and row["n"] == 0, table
    # The tab that showed it moved on to a new, empty conversation.
    assert thread_of(page) not in (doomed, kept)
    await expect(page.get_by_role("log").locator(".msg")).to_have_count(0)


async def test_a_reminder_fired_while_no_tab_was_open_is_read_when_the_list_opens_it(
    app_factory: AppFactory, context: BrowserContext, problems: Problems
) -> None:
    app = await app_factory()
    page = await open_page(context, app, problems)
    await say(page, "remind me about the plants")
    await expect(answers(page)).to_have_text(["echo: remind me about the plants"])
    tid = ThreadId(thread_of(page))
    await page.close()  # the only tab of that conversation
    await app.reminders.add(NewReminder(tid, "Water the plants", time.time() + 0.2))

    async def fired_undelivered() -> bool:
        return [m.content for _, m in await app.outbox.pending(tid)] == [
            "⏰ Reminder: Water the plants"]

    await eventually_async(fired_undelivered, 20)
    page = await open_page(context, app, problems)  # a new tab: a new conversation
    assert thread_of(page) != tid
    await sidebar(page).get_by_role("link", name=re.compile("remind me about")).click()
    await expect(answers(page)).to_have_text(
        ["echo: remind me about the plants", "⏰ Reminder: Water the plants"])

    async def delivered() -> bool:
        return await app.outbox.pending(tid) == []

    await eventually_async(delivered)


async def test_slash_new_shows_a_divider_that_stays_after_a_reload(
    app_factory: AppFactory, fake_llm: FakeLLM, context: BrowserContext, problems: Problems
) -> None:
    app = await app_factory()
    page = await open_page(context, app, problems)
    await say(page, "before")
    await expect(answers(page)).to_have_text(["echo: before"])
    await say(page, "/new")
    divider = page.locator("#log .msg.divider")
    await expect(divider).to_contain_text(
        "earlier messages are no longer in the model's context")
    await say(page, "after")
    await expect(answers(page)).to_have_text(["echo: before", "echo: after"])
    assert [m["content"] for m in fake_llm.requests[-1]["messages"] if m["role"] == "user"] \
        == ["after"]
    await page.reload()
    await expect(page.locator("#status")).to_have_text("ready")
    roles = await page.locator("#log .msg").evaluate_all(
        "els => els.map(e => e.classList.contains('divider') ? 'divider' : e.dataset.role)")
    assert roles == ["user", "assistant", "divider", "user", "assistant"]


async def test_at_phone_width_the_list_is_a_drawer_and_nothing_scrolls_sideways(
    app_factory: AppFactory, chromium: Browser, problems: Problems
) -> None:
    app = await app_factory()
    ctx = await chromium.new_context(viewport={"width": 390, "height": 740})
    try:
        page = await open_page(ctx, app, problems)
        await say(page, "small screen")
        await expect(answers(page)).to_have_text(["echo: small screen"])
        nav = sidebar(page)
        await expect(nav).to_be_hidden()
        assert await page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth") == 0
        await page.get_by_role("button", name="Chats").click()
        await expect(nav).to_be_visible()
        await expect(titles(page)).to_have_text(["small screen"])
        await page.get_by_role("button", name="Close the conversation list").click()
        await expect(nav).to_be_hidden()
        await expect(page.get_by_role("textbox", name="Message")).to_be_in_viewport()
    finally:
        await ctx.close()




async def test_a_matrix_room_is_read_in_the_page_without_a_composer(
    app_factory: AppFactory, context: BrowserContext, problems: Problems
) -> None:
    app = await app_factory()
    room = ThreadId("!room:example.org")
    await app.history.finish_turn(room, None, [NewMessage("user", "hello from matrix"),
                                              NewMessage("assistant", "**hi** there")])
    page = await open_page(context, app, problems)
    await say(page, "a web one")
    await expect(answers(page)).to_have_text(["echo: a web one"])
    await page.get_by_text("Matrix rooms (read-only)").click()
    await page.get_by_role("list", name="Matrix rooms").get_by_role(
        "button", name="!room:example.org").click()
    log = page.get_by_role("log")
    await expect(log.locator('[data-role="user"]')).to_have_text(["hello from matrix"])
    await expect(log.locator(f"{ANSWERS} strong")).to_have_text("hi")
    await expect(page.get_by_role("textbox", name="Message")).to_be_hidden()
    # Back to the web conversation: its own messages and the composer again.
    await sidebar(page).get_by_role("link", name=re.compile("a web one")).click()
    await expect(answers(page)).to_have_text(["echo: a web one"])
    await expect(page.get_by_role("textbox", name="Message")).to_be_visible()
