"""The settings view in a real Chromium: a memory file edited in the page reaches the model's
next prompt, a save after the assistant wrote the file is refused and shown (the edit kept),
hostile memory text stays text, a reminder the model set is listed and cancelled (gone from
the database and the scheduler), the tool table, the model picker (the next request uses the
model chosen) and today's token use; Esc and Back return to the chat; at 390 px nothing
scrolls sideways. The frames themselves: tests/test_settings.py."""

from __future__ import annotations

import re

import pytest
from browser_page import Problems, answers, open_page, say
from conftest import AppFactory
from fake_llm import FakeLLM, Reply, system_of
from playwright.async_api import Browser, BrowserContext, Page, expect
from reminder_helpers import FAST, KATHMANDU

from ganglion.toolbox import memory_tools
from ganglion.triggers.reminders import WAKE_JOB, local_text

pytestmark = pytest.mark.browser


async def open_settings(page: Page) -> None:
    await page.get_by_role("button", name="Settings").click()
    await expect(page).to_have_url(re.compile(r"#/settings$"))
    await expect(page.get_by_role("heading", name="Settings")).to_be_focused()
    # The view is drawn once its answer came: the first file's editor holds its text.
    await expect(page.locator("#settings")).to_have_attribute("aria-busy", "false")


async def test_a_memory_edit_reaches_the_model_and_a_stale_save_is_refused(
    app_factory: AppFactory, fake_llm: FakeLLM, context: BrowserContext, problems: Problems
) -> None:
    app = await app_factory()
    hostile = '<img src=x onerror="window.pwned=1"><script>window.pwned=2</script>&amp;'
    (app.data_dir / "HEARTBEATS.txt").write_text(hostile)
    page = await open_page(context, app, problems)
    await say(page, "hello")
    await expect(answers(page)).to_have_text(["echo: hello"])

    # By keyboard: the sidebar's button, then Tab to the way back, its focus drawn.
    await page.get_by_role("button", name="Settings").focus()
    await page.keyboard.press("Enter")
    await expect(page).to_have_url(re.compile(r"#/settings$"))
    await expect(page.get_by_role("heading", name="Settings")).to_be_focused()
    await expect(page.locator("#settings")).to_have_attribute("aria-busy", "false")
    await page.keyboard.press("Tab")
    back = page.get_by_role("button", name="Back to the chat")
    await expect(back).to_be_focused()
    await expect(back).to_have_css("outline-style", "solid")
    await expect(page.get_by_role("log")).to_be_hidden()
    heartbeats = page.get_by_role("textbox", name="HEARTBEATS.txt", exact=True)
    await expect(heartbeats).to_have_value(hostile)  # as text
    assert await page.locator("#settings img, #settings script").count() == 0
    assert await page.evaluate("window.pwned") is None

    memories = page.get_by_role("textbox", name="MEMORIES.txt", exact=True)
    await memories.fill("- likes green tea\n")
    await page.get_by_role("button", name="Save MEMORIES.txt").click()
    await expect(page.get_by_role("status").filter(has_text="Saved MEMORIES.txt.")
                 ).to_be_visible()
    assert (app.data_dir / "MEMORIES.txt").read_text() == "- likes green tea\n"

    await page.keyboard.press("Escape")  # back to the chat, where it was
    await expect(page.locator("#settings")).to_be_hidden()
    await expect(page).to_have_url(re.compile(r"#/c/web_[0-9a-f]+$"))
    await expect(page.get_by_role("button", name="Settings")).to_be_focused()
    await say(page, "what do I like?")
    await expect(answers(page)).to_have_count(2)
    assert "likes green tea" in system_of(fake_llm.requests[-1])

    # The page loaded the file; then the assistant's memory tool appends to it.
    await open_settings(page)
    await expect(memories).to_have_value("- likes green tea\n")
    await memories.fill("- likes coffee\n")
    await memory_tools(app.loaded, app.files).memory_append("MEMORIES.txt", "- has a cat")
    await page.get_by_role("button", name="Save MEMORIES.txt").click()
    await expect(page.get_by_role("alert")).to_contain_text("changed meanwhile")
    await expect(memories).to_have_value("- likes green tea\n- has a cat\n")  # the new text
    mine = page.get_by_role("textbox", name="Your edit of MEMORIES.txt (not saved)")
    await expect(mine).to_have_value("- likes coffee\n")  # the edit is not lost
    assert (app.data_dir / "MEMORIES.txt").read_text() == "- likes green tea\n- has a cat\n"

    # Put back deliberately, it is saved over the version now shown.
    await page.get_by_role("button", name="Put my edit of MEMORIES.txt back").click()
    await page.get_by_role("button", name="Save MEMORIES.txt").click()
    await expect(page.get_by_role("status").filter(has_text="Saved MEMORIES.txt.")
                 ).to_be_visible()
    assert (app.data_dir / "MEMORIES.txt").read_text() == "- likes coffee\n"

    # A new skill, made and deleted from the page.
    await page.get_by_role("textbox", name="New skill").fill("brewing")
    await page.get_by_role("button", name="Create skill").click()
    skill = page.get_by_role("textbox", name="skills/brewing.md", exact=True)
    await expect(skill).to_be_focused()
    await skill.fill("# Brewing\nsteep three minutes\n")
    await page.get_by_role("button", name="Save skills/brewing.md").click()
    await expect(page.get_by_role("status").filter(has_text="Saved skills/brewing.md.")
                 ).to_be_visible()
    brewing = app.data_dir / "skills" / "brewing.md"
    assert brewing.read_text() == "# Brewing\nsteep three minutes\n"
    page.once("dialog", lambda d: d.accept())
    await page.get_by_role("button", name="Delete skills/brewing.md").click()
    await expect(skill).to_have_count(0)
    assert not brewing.exists()

    await page.get_by_role("button", name="Back to the chat").click()
    await expect(page.get_by_role("log")).to_be_visible()


async def test_reminders_tools_models_and_usage(
    app_factory: AppFactory, fake_llm: FakeLLM, context: BrowserContext, problems: Problems
) -> None:
    fake_llm.models = ["fake-model", "other-model"]
    app = await app_factory(FAST)
    await app.endpoints.discovered.wait()
    page = await open_page(context, app, problems)
    fake_llm.script(Reply(tool_calls=[("set_reminder", {"text": "Water the <b>plants</b>",
                                                        "in_minutes": 600})],
                          usage=(1200, 30)),
                    Reply(text="Noted.", usage=(1300, 4)))
    await say(page, "remind me about the plants")
    await expect(answers(page)).to_have_text(["Noted."])
    [reminder] = await app.reminder_store.active()
    assert reminder.next_at is not None
    assert app.scheduler.get_job(WAKE_JOB) is not None

    # Opened from its address, as a bookmark would.
    await page.goto(page.url.split("#")[0] + "#/settings")
    await expect(page.locator("#settings")).to_have_attribute("aria-busy", "false")
    table = page.get_by_role("table", name="Reminders")
    row = table.locator("tbody tr")
    await expect(row).to_have_count(1)
    await expect(row.locator("td")).to_have_text([
        "Water the <b>plants</b>", local_text(reminder.next_at, KATHMANDU), "once",
        "remind me about the plants (this one)", "Cancel"])
    await expect(page.get_by_text("Times in Asia/Kathmandu.")).to_be_visible()

    tools = page.get_by_role("table", name="Tools and their policy")
    await expect(tools.get_by_role("row", name=re.compile(r"^memory_append built-in on"))
                 ).to_have_count(1)
    await expect(tools.get_by_role("row", name=re.compile(r"^shell built-in ask"))
                 ).to_have_count(1)
    await expect(page.locator("#settings-config")).to_contain_text("source of truth")

    today = page.get_by_role("table", name="Today's token use")
    await expect(today.locator("tbody tr td")).to_have_text(["fake-model", "2", "2,500", "34"])

    endpoints = page.get_by_role("table", name="Endpoints")
    await expect(endpoints.locator("tbody tr td").nth(1)).to_have_text(fake_llm.base_url)
    picker = page.get_by_role("combobox", name="Model for this conversation")
    await expect(picker).to_have_value("default")
    await picker.select_option("other-model")
    await expect(page.locator("#settings-model-line")).to_contain_text("other-model")
    await expect(picker).to_have_value("other-model")

    page.once("dialog", lambda d: d.accept())
    await row.get_by_role("button", name=f"Cancel reminder #{reminder.id}").click()
    await expect(page.get_by_role("status").filter(has_text=f"Reminder #{reminder.id} cancelled")
                 ).to_be_visible()
    await expect(row).to_have_count(0)
    assert (await app.reminder_store.get(reminder.id)).status == "cancelled"  # type: ignore[union-attr]
    assert app.scheduler.get_job(WAKE_JOB) is None  # nothing left to wake up for

    await page.keyboard.press("Escape")
    await say(page, "which model?")
    await expect(answers(page)).to_have_count(2)
    assert fake_llm.requests[-1]["model"] == "other-model"


async def test_at_phone_width_settings_open_from_the_drawer_without_sideways_scroll(
    app_factory: AppFactory, chromium: Browser, problems: Problems
) -> None:
    app = await app_factory()
    (app.data_dir / "MEMORIES.txt").write_text("a-very-long-line-" * 40 + "\n")
    ctx = await chromium.new_context(viewport={"width": 390, "height": 740})
    try:
        page = await open_page(ctx, app, problems)
        await page.get_by_role("button", name="Chats").click()
        nav = page.get_by_role("navigation", name="Conversations")
        await expect(nav).to_be_visible()
        await open_settings(page)
        await expect(nav).to_be_hidden()
        await expect(page.get_by_role("button", name="Back to the chat")).to_be_in_viewport()
        await page.get_by_role("table", name="Endpoints").scroll_into_view_if_needed()
        wide = await page.evaluate(
            "document.scrollingElement.scrollWidth - document.scrollingElement.clientWidth")
        assert wide <= 0
        assert await page.evaluate("document.querySelector('.app').scrollWidth"
                                   " <= document.querySelector('.app').clientWidth")
        await page.keyboard.press("Escape")
        await expect(page.get_by_role("textbox", name="Message")).to_be_focused()
    finally:
        await ctx.close()
