"""Regenerate and edit-and-resend in a real Chromium (issue 14 item 4): the new answer shows,
the old exchange stays collapsed as replaced (also after a reload, also in a second tab), the
model no longer sees it, and the buttons are there only while no turn runs."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from browser_page import Problems, open_page, say
from conftest import AppFactory
from fake_llm import FakeLLM, Reply
from playwright.async_api import BrowserContext, Page, expect

pytestmark = pytest.mark.browser

STANDING = '#log .msg[data-role="assistant"]:not(.streaming):not([data-replaced])'


def seen_by_model(body: dict[str, Any]) -> list[str]:
    return [m["content"] for m in body["messages"]
            if m["role"] in ("user", "assistant") and isinstance(m.get("content"), str)]


async def second_tab(context: BrowserContext, page: Page, problems: Problems) -> Page:
    other = await context.new_page()
    problems.watch(other)
    await other.goto(page.url)
    await expect(other.locator("#status")).to_have_text("ready")
    return other


async def test_regenerate_shows_a_new_answer_and_keeps_the_old_one_collapsed(
    app_factory: AppFactory, fake_llm: FakeLLM, context: BrowserContext, problems: Problems
) -> None:
    app = await app_factory()
    page = await open_page(context, app, problems)
    await say(page, "tell me about owls")
    await expect(page.locator(STANDING)).to_have_text(["echo: tell me about owls"])
    other = await second_tab(context, page, problems)
    held = asyncio.Event()
    fake_llm.script(Reply(text="owls hunt at night", held=held))
    regenerate = page.get_by_role("button", name="Regenerate")
    await expect(regenerate).to_have_count(1)
    await regenerate.focus()  # reachable from the keyboard
    await page.keyboard.press("Enter")
    # While the new answer is on its way the buttons are gone, in both tabs.
    await expect(page.locator("#status")).to_have_text("thinking")
    for tab in (page, other):
        await expect(tab.get_by_role("button", name="Regenerate")).to_have_count(0)
        await expect(tab.get_by_role("button", name="Edit")).to_have_count(0)
    held.set()
    for tab in (page, other):
        await expect(tab.locator(STANDING)).to_have_text(["owls hunt at night"])
        old = tab.locator('#log .msg[data-replaced="regenerated"]')
        await expect(old).to_have_count(1)
        await expect(old.locator(".body")).to_be_hidden()
        await expect(tab.get_by_role("button", name="Regenerate")).to_have_count(1)
    assert "echo: tell me about owls" not in seen_by_model(fake_llm.requests[-1])
    assert seen_by_model(fake_llm.requests[-1])[-1] == "tell me about owls"
    await page.reload()
    await expect(page.locator("#status")).to_have_text("ready")
    await expect(page.locator(STANDING)).to_have_text(["owls hunt at night"])
    old = page.locator('#log .msg[data-replaced="regenerated"]')
    await expect(old.locator(".body")).to_be_hidden()
    toggle = old.get_by_role("button", name="Replaced")
    await expect(toggle).to_have_attribute("aria-expanded", "false")
    await toggle.click()  # expandable: the old answer is there to read
    await expect(old.locator(".body")).to_have_text("echo: tell me about owls")
    await expect(toggle).to_have_attribute("aria-expanded", "true")
    # The question is stored and shown once.
    await expect(page.locator('#log .msg[data-role="user"]')).to_have_text(
        ["tell me about owls"])


async def test_edit_and_resend_answers_the_new_text_and_keeps_the_old_exchange_as_edited(
    app_factory: AppFactory, fake_llm: FakeLLM, context: BrowserContext, problems: Problems
) -> None:
    app = await app_factory()
    page = await open_page(context, app, problems)
    await say(page, "hello there")
    await expect(page.locator(STANDING)).to_have_text(["echo: hello there"])
    await say(page, "about cats")
    await expect(page.locator(STANDING)).to_have_text(["echo: hello there", "echo: about cats"])
    other = await second_tab(context, page, problems)
    edit = page.get_by_role("button", name="Edit")
    await expect(edit).to_have_count(1)  # on the last question only
    await edit.click()
    box = page.get_by_role("textbox", name="Edit message")
    await expect(box).to_have_value("about cats")
    await box.press("Escape")  # Cancel: nothing changes
    await expect(box).to_have_count(0)
    await expect(page.locator('#log .msg[data-role="user"]')).to_have_text(
        ["hello there", "about cats"])
    await edit.click()
    await box.fill("/new")  # refused: the words stay in the editor, the reason is said
    await page.get_by_role("button", name="Save").click()
    await expect(page.locator("#log .notice")).to_contain_text("an edit cannot be a command")
    await expect(box).to_have_value("/new")
    await box.fill("about <b>dogs</b>")
    await page.get_by_role("button", name="Save").click()
    for tab in (page, other):
        await expect(tab.locator(STANDING)).to_have_text(
            ["echo: hello there", "echo: about <b>dogs</b>"])
        await expect(tab.locator('#log .msg[data-replaced="edited"]')).to_have_count(2)
        await expect(tab.locator('#log .msg[data-role="user"]:not([data-replaced])')).to_have_text(
            ["hello there", "about <b>dogs</b>"])  # shown as text
    assert seen_by_model(fake_llm.requests[-1]) == [
        "hello there", "echo: hello there", "about <b>dogs</b>"]
    await page.reload()
    await expect(page.locator("#status")).to_have_text("ready")
    edited = page.locator('#log .msg[data-replaced="edited"]')
    await expect(edited).to_have_count(2)
    await expect(edited.locator(".body")).to_have_count(2)
    for body in await edited.locator(".body").all():
        await expect(body).to_be_hidden()
    await edited.first.get_by_role("button", name="Edited").click()
    await expect(edited.first.locator(".body")).to_have_text("about cats")
    assert await page.locator("#log b").count() == 0


async def test_a_failed_answer_is_tried_again_with_regenerate(
    app_factory: AppFactory, fake_llm: FakeLLM, context: BrowserContext, problems: Problems
) -> None:
    app = await app_factory()
    fake_llm.script(Reply(status=400))
    page = await open_page(context, app, problems)
    await say(page, "try me")
    failed = page.locator('#log .msg[data-role="system"][data-id]')
    await expect(failed).to_have_count(1)
    await expect(page.locator("#status")).to_have_text("error")
    await failed.get_by_role("button", name="Regenerate").click()
    await expect(page.locator(STANDING)).to_have_text(["echo: try me"])
    await expect(page.locator('#log .msg[data-replaced="regenerated"]')).to_have_count(1)
    await expect(page.locator("#status")).to_have_text("ready")
