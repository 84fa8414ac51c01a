"""The chat page in a real Chromium, issue 14: a long answer streams without freezing the page,
the approval card and its buttons, queued messages cancelled."""

from __future__ import annotations

import pytest
from conftest import AppFactory
from fake_llm import FakeLLM, Reply
from playwright.async_api import BrowserContext, expect
from test_browser import Problems, answers, context, open_page, problems, say

pytestmark = pytest.mark.browser
__all__ = ["context", "problems"]  # fixtures of test_browser, used here by name


async def test_a_100_kb_answer_streams_in_few_writes_and_the_page_stays_responsive(
    app_factory: AppFactory, fake_llm: FakeLLM, context: BrowserContext, problems: Problems
) -> None:
    app = await app_factory()
    words = [f"w{i:05d}xxxx" for i in range(10_000)]  # 10,000 deltas, 100 kB
    fake_llm.script(Reply(text=" ".join([*words, "LAST"]), stall_after_chunks=10_001))
    page = await open_page(context, app, problems)
    await say(page, "a long one please")
    streaming = page.locator('#log .msg.streaming[data-role="assistant"]')
    await expect(streaming).to_contain_text("w09999xxxx", timeout=30_000)
    # Still streaming (the model stalls before its end): the composer takes input.
    await expect(page.locator("#status")).to_have_text("streaming")
    box = page.get_by_role("textbox", name="Message")
    await box.fill("typed while it streams")
    await expect(box).to_have_value("typed while it streams")
    stats = await page.evaluate("({...globalThis.ganglionStats})")
    assert stats["deltas"] >= 10_000
    # Buffered: a write per 150 ms at most, not one per delta (each forced a layout).
    assert stats["flushes"] <= stats["deltas"] // 20, stats
    await page.get_by_role("button", name="Stop").click()
    await expect(answers(page)).to_have_count(1)
    assert "w09999xxxx" in await answers(page).inner_text()
