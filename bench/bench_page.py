"""The chat page in Chromium: a long streamed answer, a thread with a long backlog, a list of
many conversations. The app runs in this process on the zero-delay fake LLM; the page in
Debian's Chromium (Playwright). Usage:

    uv run python bench/bench_page.py [--answers 60,100] [--backlog 1000] [--conversations 1000]
                                      [--json out.json]

Figures per case: the server's time (send to the turn stored), the page's (send to the final
answer drawn) and the page's busy time (the sum of its long tasks, > 50 ms each, from the
browser's own Long Tasks timing). Run it on an older tree with PYTHONPATH=<that tree> to
compare (the page is served from the ganglion package that is imported).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from common import report
from fake_llm import FakeLLM, Reply
from playwright.async_api import Page, async_playwright

from ganglion.app import App
from ganglion.config import LoadedConfig, parse_config
from ganglion.config_web import WebConfig
from ganglion.messages import Inbound, Source, ThreadId

TOKEN = "bench-token-0123456789"
LONG_TASKS = """
window.__busy = 0;
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) window.__busy += e.duration;
}).observe({ type: "longtask", buffered: true });
"""
FINAL = '#log .msg[data-role="assistant"]:not(.streaming)'


async def start_app(data: Path, llm: FakeLLM) -> App:
    raw = {
        "llm": {"endpoints": [{"name": "fake", "base_url": llm.base_url, "api_key": "sk-bench",
                               "timeout_seconds": 300}],
                "model": "fake-model", "retries": 0, "max_tokens": 100_000},
        "web": {"port": 0, "token": TOKEN},
        "limits": {"messages_per_minute": None},
        "paths": {"data_dir": str(data / "data"), "log_dir": str(data / "logs")},
    }
    if "titles" in WebConfig.model_fields:  # an older tree has none
        raw["web"]["titles"] = "words"
    app = App(LoadedConfig(parse_config(raw, env={}), None, data))
    await app.start()
    return app


async def open_page(page: Page, app: App, path: str = "/") -> None:
    assert app.web is not None
    await page.goto(app.web.login_url)
    await page.wait_for_function("document.querySelector('#status').textContent === 'ready'")
    if path != "/":
        await page.goto(app.web.url + path)
    await page.evaluate(LONG_TASKS)


async def busy_ms(page: Page) -> float:
    return round(float(await page.evaluate("window.__busy")), 1)


async def stream(app: App, llm: FakeLLM, page: Page, kilobytes: int,
                 limit: float) -> dict[str, Any]:
    words = [f"w{i:06d}x" for i in range(kilobytes * 100)]  # 10 bytes a word with its space
    llm.script(Reply(text=" ".join(words)))
    await open_page(page, app)
    started = time.monotonic()
    await page.get_by_role("textbox", name="Message").fill(f"{kilobytes} kB please")
    await page.get_by_role("button", name="Send").click()
    await llm.wait_until(lambda: bool(llm.requests))  # the turn has begun
    await app.bus.wait_idle()
    server = time.monotonic() - started
    try:
        await page.wait_for_selector(FINAL, timeout=limit * 1000)
        shown: float | str = round(time.monotonic() - started, 2)
    except Exception:  # the page did not get there within the limit (the old page)
        shown = f"> {limit:.0f}"
    return {"server_s": round(server, 2), "page_s": shown, "page_busy_ms": await busy_ms(page)}


async def backlog(app: App, llm: FakeLLM, page: Page, n: int) -> dict[str, Any]:
    held = asyncio.Event()
    llm.script(Reply(text="first", held=held))
    tid = ThreadId("web_" + "b" * 32)
    await app.bus.submit(Inbound(tid, "first", "web", Source.WEB, "q0"))
    await app.bus.submit_many([Inbound(tid, f"queued {i}", "web", Source.WEB, f"q{i}")
                               for i in range(1, n + 1)])
    await open_page(page, app)
    # The address names it; an older page (no addresses) reads the tab's last thread.
    await page.evaluate(f"sessionStorage.setItem('ganglion.thread', '{tid}')")
    await page.add_init_script(LONG_TASKS)
    started = time.monotonic()
    await page.goto(f"{app.web.url}/?open#/c/{tid}")  # type: ignore[union-attr]
    await page.wait_for_function(
        f"document.querySelectorAll('#log .msg[data-role=user]').length >= {min(n, 100)}",
        timeout=300_000)
    opened = round(time.monotonic() - started, 2)
    busy = await busy_ms(page)
    cancelled: float | str = "n/a"
    if await page.get_by_role("button", name="Cancel queued").count():
        started = time.monotonic()
        await page.get_by_role("button", name="Cancel queued").click()
        await page.wait_for_function(
            "document.querySelectorAll('#log .msg[data-status=cancelled]').length >= 100")
        cancelled = round(time.monotonic() - started, 2)
    held.set()
    await app.bus.wait_idle()
    return {"open_s": opened, "open_busy_ms": busy, "cancel_all_s": cancelled}


async def conversation_list(app: App, page: Page, n: int) -> dict[str, Any]:
    now = time.time()
    async with app.db.transaction() as conn:
        await conn.executemany(
            "INSERT INTO conversations (thread_id, title, created_at, last_active)"
            " VALUES (?, ?, ?, ?)",
            [(f"web_{i:032x}", f"Conversation number {i} about things", now - i, now - i)
             for i in range(n)])
    await open_page(page, app)
    await page.wait_for_function(f"document.querySelectorAll('.conv').length >= {n}")
    drawn = await page.evaluate("globalThis.ganglionList")
    return {"conversations": n, "draw_ms": round(float(drawn["drawMs"]), 1)}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--answers", default="60,100", help="answer sizes in kB")
    parser.add_argument("--backlog", type=int, default=1000)
    parser.add_argument("--conversations", type=int, default=1000)
    parser.add_argument("--limit", type=float, default=180.0,
                        help="seconds to wait for the page at most")
    parser.add_argument("--json")
    args = parser.parse_args()
    chromium = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium")
    assert chromium, "Chromium not found (apt-get install --no-install-recommends chromium)"
    results: dict[str, Any] = {}
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=chromium,
                                           args=["--disable-gpu", "--disable-quic"])
        cases: list[tuple[str, Any]] = [
            (f"answer_{kb}kB", lambda a, f, p, kb=int(kb): stream(a, f, p, kb, args.limit))
            for kb in args.answers.split(",") if kb]
        cases.append((f"backlog_{args.backlog}", lambda a, f, p: backlog(a, f, p, args.backlog)))
        cases.append((f"list_{args.conversations}",
                      lambda a, f, p: conversation_list(a, p, args.conversations)))
        for name, case in cases:
            with tempfile.TemporaryDirectory() as tmp:
                llm = FakeLLM()
                await llm.start()
                app = await start_app(Path(tmp), llm)
                # bypass_csp: Playwright's waits evaluate strings, which the page's CSP forbids
                ctx = await browser.new_context(viewport={"width": 1000, "height": 800},
                                                bypass_csp=True)
                try:
                    results[name] = await case(app, llm, await ctx.new_page())
                except Exception as err:  # an older tree may lack what a case needs
                    results[name] = {"error": f"{type(err).__name__}: {err}"[:200]}
                finally:
                    await ctx.close()
                    await app.stop()
                    await llm.stop()
            print(name, results[name], flush=True)
        await browser.close()
    report(results, Path(args.json) if args.json else None)


if __name__ == "__main__":
    asyncio.run(main())
