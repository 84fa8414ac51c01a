"""Search in a real Chromium: Ctrl+K focuses the box, typing lists the hits with the match
marked (a hostile snippet shown as text), a click opens the right conversation scrolled to
the message, and Esc clears the box; at phone width Ctrl+K opens the drawer, and a Matrix
room's hit closes it and shows the room read-only."""

from __future__ import annotations

import re

import pytest
from browser_page import Problems, answers, open_page, say
from conftest import AppFactory
from playwright.async_api import Browser, BrowserContext, expect

from ganglion.messages import ThreadId
from ganglion.storage.history import NewMessage

pytestmark = pytest.mark.browser


async def test_a_hit_opens_its_conversation_at_the_message(
    app_factory: AppFactory, context: BrowserContext, problems: Problems
) -> None:
    app = await app_factory()
    older = ThreadId("web_" + "a" * 32)
    await app.conversations.add(older, "Marsupials")
    # The message searched for comes first, then a long exchange: it is far out of view.
    filler = [NewMessage("user" if i % 2 else "assistant", f"line {i}\n\n" + "text " * 40)
              for i in range(60)]
    await app.history.finish_turn(older, None, [
        NewMessage("user", "Where do quokkas live? <img src=x onerror=alert(1)>"), *filler])
    page = await open_page(context, app, problems)
    await say(page, "something else")
    await expect(answers(page)).to_have_text(["echo: something else"])
    current = page.url

    await page.keyboard.press("Control+k")
    box = page.get_by_role("searchbox", name="Search all conversations")
    await expect(box).to_be_focused()
    await page.keyboard.type("quokkas")
    hits = page.get_by_role("list", name="Search results").get_by_role("button")
    await expect(hits).to_have_count(1)
    await expect(hits.locator(".hit-title")).to_have_text("Marsupials")
    await expect(hits.locator("mark")).to_have_text("quokkas")
    await expect(hits.locator(".hit-snippet")).to_contain_text("<img src=x")  # as text
    assert await hits.locator("img").count() == 0

    await hits.click()
    await expect(page).to_have_url(re.compile(rf"#/c/{older}$"))
    found = page.get_by_role("log").locator(".msg", has_text="Where do quokkas live?")
    await expect(found).to_be_in_viewport()
    await expect(page.get_by_role("log").locator(".msg").last).not_to_be_in_viewport()
    assert page.url != current

    await box.focus()
    await page.keyboard.press("Escape")
    await expect(box).to_have_value("")
    await expect(page.get_by_role("list", name="Search results")).to_be_hidden()


async def test_at_phone_width_ctrl_k_opens_the_drawer_and_a_matrix_hit_closes_it(
    app_factory: AppFactory, chromium: Browser, problems: Problems
) -> None:
    app = await app_factory()
    room = ThreadId("!room:example.org")
    await app.history.finish_turn(room, None, [NewMessage("user", "the wombat burrow"),
                                              NewMessage("assistant", "Noted.")])
    ctx = await chromium.new_context(viewport={"width": 390, "height": 740})
    try:
        page = await open_page(ctx, app, problems)
        nav = page.get_by_role("navigation", name="Conversations")
        await expect(nav).to_be_hidden()
        await page.keyboard.press("Control+k")
        await expect(nav).to_be_visible()
        box = page.get_by_role("searchbox", name="Search all conversations")
        await expect(box).to_be_focused()
        await page.keyboard.type("wombat")
        hit = page.get_by_role("list", name="Search results").get_by_role("button")
        await expect(hit.locator(".hit-title")).to_have_text(f"{room} (Matrix)")
        await hit.click()
        await expect(nav).to_be_hidden()
        await expect(page.get_by_role("log").locator(".msg", has_text="the wombat burrow")
                     ).to_be_in_viewport()
        await expect(page.get_by_role("log")).to_have_attribute("data-readonly", "true")
    finally:
        await ctx.close()
