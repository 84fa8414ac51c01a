"""The chat page in Chromium, for the browser tests: opening it logged in, its answers, typing a
message, and the console problems every test asserts there were none of (the ``context`` and
``problems`` fixtures are in conftest.py)."""

from __future__ import annotations

from playwright.async_api import BrowserContext, Locator, Page, expect

from ganglion.app import App
from ganglion.interfaces.web import WebInterface

ANSWERS = '.msg[data-role="assistant"]:not(.streaming)'
"""Final answers (a streaming one has the class ``streaming``), inside the log."""


def web_of(app: App) -> WebInterface:
    assert app.web is not None
    return app.web


async def open_page(
    context: BrowserContext, app: App, problems: Problems, *, login: bool = True
) -> Page:
    page = await context.new_page()
    problems.watch(page)
    web = web_of(app)
    await page.goto(web.login_url if login else web.url + "/")
    if login:
        await expect(page.locator("#status")).to_have_text("ready")
    return page


def answers(page: Page) -> Locator:
    return page.get_by_role("log").locator(ANSWERS)


async def say(page: Page, text: str) -> None:
    await page.get_by_role("textbox", name="Message").fill(text)
    await page.get_by_role("button", name="Send").click()




class Problems:
    """Console errors and uncaught exceptions of every page opened through ``open_page``."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def watch(self, page: Page) -> None:
        page.on("console", lambda m: self.items.append(f"console.{m.type}: {m.text}")
                if m.type in ("error", "warning") else None)
        page.on("pageerror", lambda e: self.items.append(f"pageerror: {e}"))
